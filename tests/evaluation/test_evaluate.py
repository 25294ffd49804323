"""End to end: ground truth as predictions scores 100; a tiny random model runs through evaluate(); strict mode, crowd
handling (evaluate() == pq_compute on the saved files), saving and re-scoring predictions with a stub segmenter."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from mask2former.data.datasets import COCOInstanceDataset, COCOPanopticDataset, SemanticFolderDataset
from mask2former.data.synthetic import write_synthetic_dataset
from mask2former.evaluation import MaskAP, SemSegMetric, pq_compute
from mask2former.evaluation.evaluate import _PanopticScorer, _prediction, evaluate, score_predictions
from mask2former.segmenter import Segment, SegmentationResult
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
    # The processor's default resizes 64x64 images to 800x800; at 64x64 the test runs in a fraction of the time.
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64}}))
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


# A stub segmenter that answers from the ground truth (perturbed): the metric, strict, crowd and saving paths
# without a model.


class OracleSegmenter:
    """Answers each image (found by its bytes) with a prepared SegmentationResult."""

    def __init__(self, results: dict[bytes, object], num_labels: int) -> None:
        self.results = results
        self.id2label = {i: str(i) for i in range(num_labels)}

    def segment(self, images, task, **options):
        return [self.results[image.tobytes()] for image in images]


def panoptic_oracle(dataset, rng):
    """Ground truth as predictions, with changes where crowd regions are: predicted as the crowd's class (not an
    FP), as another thing class (an FP), or given to a neighbouring segment (a larger union)."""
    results = {}
    for index in range(len(dataset)):
        item = dataset[index]
        ids = item["panoptic_ids"].astype(np.int32).copy()
        category = {s["id"]: dataset.to_contiguous[s["category_id"]] for s in item["panoptic_segments_info"]}
        for segment in item["panoptic_segments_info"]:
            if not segment["iscrowd"]:
                continue
            region = ids == segment["id"]
            mode = index % 3
            if mode == 1:  # another thing class on the crowd
                category[segment["id"]] = 3 + (category[segment["id"]] - 3 + 1) % 5
            elif mode == 2:  # the first (stuff) segment takes the crowd's pixels
                ids[region] = item["panoptic_segments_info"][0]["id"]
        # and a random block of pixels given to the first segment, so that IoUs are not all 1
        y, x = rng.integers(0, 48), rng.integers(0, 48)
        ids[y : y + 16, x : x + 16] = item["panoptic_segments_info"][0]["id"]
        labels, areas = np.unique(ids, return_counts=True)
        segments = [
            Segment(id=int(label), label_id=category[int(label)], label="", area=int(area), score=0.9)
            for label, area in zip(labels, areas)
        ]
        results[item["image"].tobytes()] = SegmentationResult("panoptic", ids, segments, {})
    return OracleSegmenter(results, len(dataset.categories))


@pytest.fixture()
def crowd_dataset(synthetic, tmp_path):
    """The synthetic dataset with its last thing of every image marked iscrowd."""
    shutil.copytree(synthetic, tmp_path / "crowd")
    root = tmp_path / "crowd"
    document = json.loads((root / "panoptic.json").read_text())
    crowds = 0
    for annotation in document["annotations"]:
        things = [s for s in annotation["segments_info"] if s["category_id"] >= 4]
        if things:
            things[-1]["iscrowd"] = 1
            crowds += 1
    assert crowds >= 3
    (root / "panoptic.json").write_text(json.dumps(document))
    return root


def test_panoptic_evaluate_equals_pq_compute_with_crowd(crowd_dataset, tmp_path):
    dataset = COCOPanopticDataset(crowd_dataset / "panoptic.json", crowd_dataset / "images")
    oracle = panoptic_oracle(dataset, np.random.default_rng(0))
    report = evaluate(oracle, dataset, "panoptic", progress=False, save_predictions=tmp_path / "saved")
    reference = pq_compute(crowd_dataset / "panoptic.json", tmp_path / "saved" / "panoptic.json")
    for key in ("All", "Things", "Stuff", "per_class"):
        assert report[key] == reference[key]  # exactly, per class keyed by the dataset's category ids
    assert 0 < report["Things"]["pq"] < 1 and set(report["per_class"]) == {c["dataset_id"] for c in dataset.categories}
    # Scoring the saved files through the dataset gives the same again.
    again = score_predictions(tmp_path / "saved", dataset, "panoptic")
    assert again["All"] == report["All"] and again["images"] == 5


def test_crowd_rule_is_not_the_void_rule(crowd_dataset):
    """A thing of another class on a crowd region: panopticapi counts a false positive (only crowd of the same class
    is forgiven); treating crowd as void, as the processor's map does, would forgive it."""
    dataset = COCOPanopticDataset(crowd_dataset / "panoptic.json", crowd_dataset / "images")
    oracle = panoptic_oracle(dataset, np.random.default_rng(0))
    item = dataset[1]  # the oracle puts another class on this image's crowd
    assert any(s["iscrowd"] for s in item["panoptic_segments_info"])
    crowd_rule, void_rule = _PanopticScorer(dataset.categories), _PanopticScorer(dataset.categories)
    prediction = _prediction("panoptic", oracle.segment([item["image"]], "panoptic")[0], crowd_rule.dataset_ids)
    crowd_rule.add(item, prediction)
    void_rule.add({k: v for k, v in item.items() if not k.startswith("panoptic_")}, prediction)
    false_positives = [sum(c.fp for c in s.metric.counts.values()) for s in (crowd_rule, void_rule)]
    assert false_positives[0] > false_positives[1]


def test_save_and_rescore_instance_and_semantic(synthetic, tmp_path):
    rng = np.random.default_rng(1)
    instances = COCOInstanceDataset(synthetic / "instances.json", synthetic / "images")
    results = {}
    for item in instances:
        masks = [item["segmentation_map"] == s["id"] for s in item["segments_info"]]
        labels = [s["category_id"] for s in item["segments_info"]]
        masks.append(np.zeros((64, 64), bool))  # a false detection
        masks[-1][:20, :20] = True
        labels.append(4)
        masks = np.stack(masks)
        masks[0, 30:, 30:] |= rng.random((34, 34)) < 0.5  # a worse mask
        segments = [
            Segment(id=i, label_id=label, label="", area=int(mask.sum()), score=float(rng.random()))
            for i, (label, mask) in enumerate(zip(labels, masks))
        ]
        results[item["image"].tobytes()] = SegmentationResult("instance", masks.argmax(0), segments, {}, masks=masks)
    oracle = OracleSegmenter(results, len(instances.categories))
    report = evaluate(oracle, instances, "instance", progress=False, save_predictions=tmp_path / "saved")
    again = score_predictions(tmp_path / "saved", instances, "instance")
    assert 0 < report["AP"] < 100 and again["AP"] == report["AP"]
    assert json.dumps(again["per_class"]) == json.dumps(report["per_class"])  # NaN for the stuff classes
    saved = json.loads((tmp_path / "saved" / "instances_results.json").read_text())
    assert {"image_id", "category_id", "segmentation", "score"} <= set(saved[0]) and "counts" in saved[0]["segmentation"]

    semantic = SemanticFolderDataset(synthetic / "images", synthetic / "semantic", categories=str(synthetic / "categories.json"))
    results = {}
    for item in semantic:
        prediction = item["segmentation_map"].copy()
        prediction[rng.random(prediction.shape) < 0.1] = 3
        results[item["image"].tobytes()] = SegmentationResult("semantic", prediction, [], {})
    oracle = OracleSegmenter(results, len(semantic.categories))
    report = evaluate(oracle, semantic, "semantic", progress=False, save_predictions=tmp_path / "saved")
    again = score_predictions(tmp_path / "saved", semantic, "semantic")
    assert 0 < report["mIoU"] < 100 and again["mIoU"] == report["mIoU"]
    assert json.dumps(again["IoU"]) == json.dumps(report["IoU"])


def test_strict_and_lenient_evaluate(synthetic, tmp_path):
    shutil.copytree(synthetic, tmp_path / "bad")
    root = tmp_path / "bad"
    Image.fromarray(np.ones((10, 12), np.uint8)).save(root / "semantic" / "000002.png")  # size mismatch
    (root / "semantic" / "000004.png").unlink()  # missing file
    dataset = SemanticFolderDataset(root / "images", root / "semantic", categories=str(root / "categories.json"))
    results = {item["image"].tobytes(): SegmentationResult("semantic", item["segmentation_map"], [], {})
               for item in (dataset[i] for i in (0, 1, 3))}
    oracle = OracleSegmenter(results, len(dataset.categories))
    with pytest.raises(ValueError, match="000002.png"):
        evaluate(oracle, dataset, "semantic", progress=False)
    report = evaluate(oracle, dataset, "semantic", progress=False, strict=False)
    assert report["images"] == 3 and report["skipped"]["count"] == 2 and report["mIoU"] == pytest.approx(100)
    examples = report["skipped"]["examples"]
    assert "size mismatch" in examples[0]["reason"] and examples[0]["file_name"].endswith("000002.png")
    assert "000004.png" in examples[1]["reason"]
    # A reader built with strict=False hands placeholders over; evaluate's strict decides.
    lenient = SemanticFolderDataset(root / "images", root / "semantic", categories=str(root / "categories.json"), strict=False)
    assert evaluate(oracle, lenient, "semantic", progress=False, strict=False)["skipped"]["count"] == 2
    with pytest.raises(ValueError, match="size mismatch"):
        evaluate(oracle, lenient, "semantic", progress=False)
    # Every image malformed: a clear error rather than a score of nothing.
    for name in ("000000.png", "000001.png", "000003.png"):
        (root / "images" / name).unlink()
    with pytest.raises(ValueError, match="all 2 images were malformed"):
        evaluate(oracle, SemanticFolderDataset(root / "images", root / "semantic", categories=str(root / "categories.json")),
                 "semantic", progress=False, strict=False)


def test_progress_bar_shows_running_metric(synthetic, capsys):
    dataset = SemanticFolderDataset(synthetic / "images", synthetic / "semantic", categories=str(synthetic / "categories.json"))
    results = {item["image"].tobytes(): SegmentationResult("semantic", item["segmentation_map"], [], {}) for item in dataset}
    evaluate(OracleSegmenter(results, len(dataset.categories)), dataset, "semantic", progress=True)
    assert "mIoU=100.0" in capsys.readouterr().err
