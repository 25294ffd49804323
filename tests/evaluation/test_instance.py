"""MaskAP through COCOeval: perfect detections give 100, a missed object and a wrong class move AP as expected."""

import math

import numpy as np
import pytest

from mask2former.evaluation import MaskAP

CATEGORIES = [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}]


def objects():
    cat = np.zeros((64, 64), bool)
    cat[5:30, 5:30] = True
    dog = np.zeros((64, 64), bool)
    dog[35:60, 30:60] = True
    return cat, dog


def test_perfect_detections_score_100():
    cat, dog = objects()
    metric = MaskAP(CATEGORIES)
    gt = [{"category_id": 1, "segmentation": cat}, {"category_id": 2, "segmentation": dog}]
    metric.update(1, 64, 64, gt, [{**g, "score": 0.9} for g in gt])
    result = metric.compute()
    assert result["AP"] == pytest.approx(100) and result["AP50"] == pytest.approx(100)
    assert result["per_class"] == {"cat": pytest.approx(100), "dog": pytest.approx(100)}


def test_missed_dog_gives_zero_for_dog():
    cat, dog = objects()
    metric = MaskAP(CATEGORIES)
    gt = [{"category_id": 1, "segmentation": cat}, {"category_id": 2, "segmentation": dog}]
    metric.update(1, 64, 64, gt, [{"category_id": 1, "segmentation": cat, "score": 0.9}])
    result = metric.compute()
    assert result["per_class"]["cat"] == pytest.approx(100)
    assert result["per_class"]["dog"] == pytest.approx(0)
    assert result["AP"] == pytest.approx(50)


def test_polygons_and_rle_inputs_and_no_detections():
    metric = MaskAP(CATEGORIES)
    polygon = [[5.0, 5.0, 30.0, 5.0, 30.0, 30.0, 5.0, 30.0]]
    metric.update(1, 64, 64, [{"category_id": 1, "segmentation": polygon}], [])
    assert math.isnan(metric.compute()["AP"])
    with pytest.raises(ValueError, match="mask has shape"):
        metric.update(2, 64, 64, [{"category_id": 1, "segmentation": np.zeros((8, 8), bool)}], [])
