"""Overlays and the COCO panoptic PNG encoding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mask2former.visualize import color_for, draw_overlay, id_to_rgb, rgb_to_id


def test_colors_are_stable_and_distinct():
    assert color_for(3) == color_for(3)
    colors = {color_for(i) for i in range(50)}
    assert len(colors) == 50


def test_panoptic_rgb_round_trip():
    ids = np.array([[0, 1, 255], [256, 65536 + 7, 1000]])
    rgb = id_to_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb.shape == (2, 3, 3)
    assert tuple(rgb[1, 0]) == (0, 1, 0)
    np.testing.assert_array_equal(rgb_to_id(rgb), ids)


def test_overlay_colors_segments_and_leaves_background():
    image = np.full((40, 60, 3), 200, dtype=np.uint8)
    segmentation = np.full((40, 60), -1)
    segmentation[5:20, 5:30] = 0
    segmentation[22:38, 30:58] = 1
    segments = [{"id": 0, "label": "cat", "score": 0.9}, {"id": 1, "label": "dog", "score": 0.8}]
    picture = np.asarray(draw_overlay(Image.fromarray(image), segmentation, segments))
    assert picture.shape == image.shape
    assert (picture[0, 59] == 200).all()  # background untouched
    assert not (picture[10, 10] == 200).all()  # inside a segment: coloured
    # The two segments get different colours away from their labels and outlines.
    assert not np.array_equal(picture[6, 6], picture[36, 56])


def test_overlay_rejects_mismatched_sizes():
    with pytest.raises(ValueError, match="segmentation has shape"):
        draw_overlay(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 5), int), [])
