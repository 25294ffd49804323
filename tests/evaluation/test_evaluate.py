"""End to end: ground truth as predictions scores 100; a tiny random model runs through evaluate()."""

from __future__ import annotations

import pytest

from mask2former.data.datasets import COCOInstanceDataset, COCOPanopticDataset, SemanticFolderDataset
from mask2former.data.synthetic import write_synthetic_dataset
from mask2former.evaluation import MaskAP, SemSegMetric
from mask2former.evaluation.evaluate import evaluate
from tests.conftest import make_transformers_checkpoint


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 5, seed=9, height=64, width=64)
    return root


def test_ground_truth_as_predictions_scores_100(synthetic):
    semantic = SemanticFolderDataset(synthetic / "images", synthetic / "semantic", categories=str(synthetic / "categories.json"))
    metric = SemSegMetric(len(semantic.categories))
    for item in semantic:
        metric.update(item["segmentation_map"], item["segmentation_map"])
    assert metric.compute()["mIoU"] == pytest.approx(100)

    instances = COCOInstanceDataset(synthetic / "instances.json", synthetic / "images")
    ap = MaskAP(instances.categories)
    for item in instances:
        height, width = item["image"].shape[:2]
        truth = [{"category_id": s["category_id"], "segmentation": item["segmentation_map"] == s["id"]} for s in item["segments_info"]]
        ap.update(item["image_id"], height, width, truth, [{**t, "score": 1.0} for t in truth])
    assert ap.compute()["AP"] == pytest.approx(100)


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_tiny_model_runs_through_evaluate(synthetic, tmp_path, task):
    from mask2former.segmenter import Segmenter

    make_transformers_checkpoint(tmp_path, num_labels=8)
    segmenter = Segmenter.from_pretrained(tmp_path)
    if task == "semantic":
        dataset = SemanticFolderDataset(synthetic / "images", synthetic / "semantic", categories=str(synthetic / "categories.json"))
    elif task == "panoptic":
        dataset = COCOPanopticDataset(synthetic / "panoptic.json", synthetic / "images")
    else:
        dataset = COCOInstanceDataset(synthetic / "instances.json", synthetic / "images")
    report = evaluate(segmenter, dataset, task, batch_size=2, limit=4, progress=False)
    assert report["images"] == 4
    key = {"panoptic": "All", "instance": "AP", "semantic": "mIoU"}[task]
    assert key in report
    if task == "panoptic":
        assert 0.0 <= report["All"]["pq"] <= 1.0


def test_class_count_mismatch_is_reported(synthetic, tmp_path):
    from mask2former.segmenter import Segmenter

    make_transformers_checkpoint(tmp_path, num_labels=3)
    dataset = COCOPanopticDataset(synthetic / "panoptic.json", synthetic / "images")
    with pytest.raises(ValueError, match="3 classes but the dataset has 8"):
        evaluate(Segmenter.from_pretrained(tmp_path), dataset, "panoptic", progress=False)
