"""SemSegMetric against hand-computed values (detectron2 SemSegEvaluator conventions)."""

import math

import numpy as np
import pytest

from mask2former.evaluation import SemSegMetric


def test_perfect_prediction_scores_100():
    gt = np.array([[0, 0, 1], [2, 2, 255]])
    metric = SemSegMetric(num_classes=4)
    metric.update(np.where(gt == 255, 3, gt), gt)
    result = metric.compute()
    assert result["mIoU"] == result["pACC"] == result["mACC"] == result["fwIoU"] == 100
    assert math.isnan(result["IoU"][3])  # class 3 never in the ground truth: left out


def test_hand_computed_case():
    gt = np.array([[0, 0, 0, 1], [1, 1, 255, 255]])
    pred = np.array([[0, 0, 1, 1], [1, 0, 2, 0]])
    metric = SemSegMetric(num_classes=3, class_names=["a", "b", "c"])
    metric.update(pred, gt)
    result = metric.compute()
    # class 0: gt 3 px, pred (on non-ignored) 3 px, tp 2 -> IoU 2/4; class 1: gt 3, pred 3, tp 2 -> 2/4
    assert result["IoU"][0] == pytest.approx(50) and result["IoU"][1] == pytest.approx(50)
    assert math.isnan(result["IoU"][2])
    assert result["mIoU"] == pytest.approx(50)
    assert result["pACC"] == pytest.approx(100 * 4 / 6)
    assert result["mACC"] == pytest.approx(100 * (2 / 3 + 2 / 3) / 2)
    assert result["fwIoU"] == pytest.approx(50)
    assert result["IoU-a"] == pytest.approx(50)


def test_accumulates_over_images():
    metric = SemSegMetric(num_classes=2)
    metric.update(np.zeros((2, 2), int), np.zeros((2, 2), int))
    metric.update(np.zeros((2, 2), int), np.ones((2, 2), int))
    result = metric.compute()
    assert result["IoU"] == [pytest.approx(50), pytest.approx(0)]


def test_bad_input():
    metric = SemSegMetric(num_classes=2)
    with pytest.raises(ValueError, match="pred has shape"):
        metric.update(np.zeros((2, 2), int), np.zeros((3, 2), int))
    with pytest.raises(ValueError, match="outside"):
        metric.update(np.full((2, 2), 5), np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="integer"):
        metric.update(np.zeros((2, 2)), np.zeros((2, 2), int))
