"""The high-level API: images in (paths, PIL, arrays), numpy answers out in original coordinates."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from mask2former.segmenter import Segmenter


@pytest.fixture(scope="module")
def segmenter(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    return Segmenter.from_pretrained(directory)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    paths = []
    for index, (height, width) in enumerate([(50, 70), (64, 48), (33, 90)]):
        path = folder / f"image_{index}.png"
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_results_are_in_original_coordinates(segmenter, images, task):
    results = segmenter.segment(images, task=task, batch_size=2, threshold=0.0)
    assert len(results) == 3
    for path, result in zip(images, results):
        width, height = Image.open(path).size
        assert result.segmentation.shape == (height, width)
        assert result.task == task
        for segment in result.segments:
            assert segment.label == segmenter.id2label[segment.label_id]
            assert segment.area == int(result.mask(segment.id).sum())
        if task == "instance":
            assert result.masks.shape == (len(result.segments), height, width)
        picture = result.overlay(Image.open(path))
        assert picture.size == (width, height)
        assert np.asarray(result.label_image()).shape[:2] == (height, width)


def test_single_image_and_batch_agree(segmenter, images):
    one = segmenter.segment(images[1], task="semantic")
    batch = segmenter.segment(images, task="semantic", batch_size=3)[1]
    np.testing.assert_array_equal(one.segmentation, batch.segmentation)


def test_accepts_pil_and_numpy(segmenter, images):
    image = Image.open(images[0]).convert("RGB")
    from_pil = segmenter.segment(image, task="semantic")
    from_numpy = segmenter.segment(np.asarray(image), task="semantic")
    np.testing.assert_array_equal(from_pil.segmentation, from_numpy.segmentation)


def test_to_coco(segmenter, images):
    from pycocotools import mask as mask_utils

    result = segmenter.segment(images[0], task="instance", threshold=0.0)
    coco = result.to_coco(image_id=7)
    assert len(coco) == len(result.segments)
    for entry, mask in zip(coco, result.masks):
        assert entry["image_id"] == 7
        rle = dict(entry["segmentation"], counts=entry["segmentation"]["counts"].encode())
        np.testing.assert_array_equal(mask_utils.decode(rle).astype(bool), mask)
    panoptic = segmenter.segment(images[0], task="panoptic", threshold=0.0).to_coco(image_id=7, file_name="a.png")
    assert panoptic["file_name"] == "a.png" and isinstance(panoptic["segments_info"], list)


def test_bad_task_and_unreadable_file(segmenter, tmp_path):
    with pytest.raises(ValueError, match="task must be one of"):
        segmenter.segment(np.zeros((8, 8, 3), np.uint8), task="depth")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with pytest.raises(ValueError, match="broken.png"):
        segmenter.segment(broken)


def test_no_segments_found(segmenter, images):
    """A threshold nothing reaches gives empty results in every task, not an error."""
    for task in ("panoptic", "instance"):
        result = segmenter.segment(images[0], task, threshold=1.0)
        assert result.segments == []
        assert result.segmentation.shape == (50, 70)
