"""PanopticQuality / pq_compute against hand-computed values (panopticapi conventions)."""

import json

import numpy as np
import pytest
from PIL import Image

from mask2former.evaluation import PanopticQuality, pq_compute
from mask2former.visualize import id_to_rgb

CATEGORIES = {1: {"id": 1, "name": "sky", "isthing": 0}, 2: {"id": 2, "name": "cat", "isthing": 1}}


def scene():
    """10x10: sky (id 1) on the top 4 rows, a cat (id 2) 4x4 at rows 5-8, void elsewhere."""
    ids = np.zeros((10, 10), np.int64)
    ids[:4] = 1
    ids[5:9, 2:6] = 2
    segments = [
        {"id": 1, "category_id": 1, "area": 40, "iscrowd": 0},
        {"id": 2, "category_id": 2, "area": 16, "iscrowd": 0},
    ]
    return ids, segments


def test_perfect_prediction_scores_1():
    ids, segments = scene()
    metric = PanopticQuality(CATEGORIES)
    metric.update(ids, segments, ids, segments)
    result = metric.compute()
    assert result["All"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": 2}
    assert result["Things"]["n"] == 1 and result["Stuff"]["n"] == 1


def test_missing_segment_and_false_positive():
    ids, segments = scene()
    pred = ids.copy()
    pred[pred == 2] = 0  # the cat is missed: FN for cat
    pred[9, 7:10] = 7  # a 3-pixel cat where there is none: on void entirely -> ignored (not an FP)
    pred[4, 0:10] = 8  # a 10-pixel cat on void row 4 -> ignored too
    pred[5:9, 7:10] = 9  # 12-pixel cat on void -> ignored
    pred_segments = [segments[0]] + [{"id": i, "category_id": 2} for i in (7, 8, 9)]
    metric = PanopticQuality(CATEGORIES)
    metric.update(ids, segments, pred, pred_segments)
    per_class = metric.compute()["per_class"]
    assert per_class[2] == {"pq": 0.0, "sq": 0.0, "rq": 0.0}  # tp 0, fn 1, fp 0
    assert per_class[1]["pq"] == 1.0

    # Now a real false positive: a cat prediction on the sky.
    pred2 = ids.copy()
    pred2[0:2, 0:5] = 5
    metric = PanopticQuality(CATEGORIES)
    metric.update(ids, segments, pred2, segments + [{"id": 5, "category_id": 2}])
    per_class = metric.compute()["per_class"]
    # sky: intersection 30, union 40 (pred area 30 + gt area 40 - 30) -> IoU 0.75, TP
    assert per_class[1]["pq"] == pytest.approx(0.75)
    # cat: TP (IoU 1) + FP -> PQ = 1 / (1 + 0.5)
    assert per_class[2]["pq"] == pytest.approx(1 / 1.5)
    assert per_class[2]["rq"] == pytest.approx(1 / 1.5) and per_class[2]["sq"] == pytest.approx(1.0)


def test_void_pixels_leave_the_union():
    ids, segments = scene()
    pred = ids.copy()
    pred[9, 2:6] = 2  # the predicted cat spills 4 pixels onto void
    metric = PanopticQuality(CATEGORIES)
    metric.update(ids, segments, pred, segments)
    assert metric.compute()["per_class"][2]["sq"] == pytest.approx(1.0)


def test_crowd_region_is_ignored():
    ids, segments = scene()
    gt = ids.copy()
    gt[5:9, 7:10] = 3  # a crowd of cats
    gt_segments = segments + [{"id": 3, "category_id": 2, "area": 12, "iscrowd": 1}]
    pred = ids.copy()
    pred[5:9, 7:10] = 4  # predicting a cat on the crowd: not an FP; the crowd is not an FN
    metric = PanopticQuality(CATEGORIES)
    metric.update(gt, gt_segments, pred, segments + [{"id": 4, "category_id": 2}])
    assert metric.compute()["per_class"][2]["pq"] == pytest.approx(1.0)


def test_pq_compute_reads_files(tmp_path):
    ids, segments = scene()
    for name in ("gt", "pred"):
        (tmp_path / name).mkdir()
        Image.fromarray(id_to_rgb(ids)).save(tmp_path / name / "a.png")
        document = {
            "categories": list(CATEGORIES.values()),
            "annotations": [{"image_id": 1, "file_name": "a.png", "segments_info": segments}],
        }
        (tmp_path / f"{name}.json").write_text(json.dumps(document))
    result = pq_compute(tmp_path / "gt.json", tmp_path / "pred.json")
    assert result["All"]["pq"] == 1.0


def test_inconsistent_prediction_is_reported():
    ids, segments = scene()
    metric = PanopticQuality(CATEGORIES)
    with pytest.raises(KeyError, match="not in its segments_info"):
        metric.update(ids, segments, ids, segments[:1], image="x.png")
    with pytest.raises(KeyError, match="unknown category_id"):
        metric.update(ids, segments, ids, [segments[0], {"id": 2, "category_id": 99}])
