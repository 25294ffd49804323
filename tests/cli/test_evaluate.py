"""mask2former evaluate: a saved tiny model on 5 synthetic images, and saved predictions without a model."""

from __future__ import annotations

import json
import shutil

import pytest

from mask2former.cli.main import main
from mask2former.data.synthetic import write_synthetic_dataset
from tests.conftest import make_transformers_checkpoint


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 5, seed=11, height=64, width=64)
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("model")
    make_transformers_checkpoint(directory, num_labels=8)
    # The processor's default resizes 64x64 images to 800x800; at 64x64 the tests run in a fraction of the time.
    (directory / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64}}))
    return directory


DATASETS = {
    "panoptic": ["--dataset", "coco-panoptic", "--annotations", "{root}/panoptic.json"],
    "instance": ["--dataset", "coco-instances", "--annotations", "{root}/instances.json"],
    "semantic": ["--dataset", "semantic", "--annotations", "{root}/semantic", "--categories", "{root}/categories.json"],
}


METRICS = {"panoptic": ["All", "Things", "Stuff", "per_class"], "instance": ["AP", "AP50", "AP75", "per_class"],
           "semantic": ["mIoU", "fwIoU", "mACC", "pACC", "IoU"]}


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_evaluate_a_model_save_and_rescore(synthetic, model, tmp_path, task, capsys):
    dataset = [a.format(root=synthetic) for a in DATASETS[task]] + ["--images", str(synthetic / "images")]
    out = tmp_path / "report.json"
    code = main(["evaluate", "--model", str(model), "--task", task, *dataset, "--batch-size", "2", "--out", str(out),
                 "--save-predictions", str(tmp_path / "saved")])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 5 and report["skipped"]["count"] == 0
    printed = capsys.readouterr()
    assert {"panoptic": "PQ", "instance": "AP50", "semantic": "mIoU"}[task] in printed.out
    assert {"panoptic": "PQ=", "instance": "detections=", "semantic": "mIoU="}[task] in printed.err  # the tqdm bar
    # The saved predictions, scored without the model, give the same metrics.
    code = main(["evaluate", "--predictions", str(tmp_path / "saved"), "--task", task, *dataset, "--out", str(out)])
    assert code == 0
    rescored = json.loads(out.read_text())
    for key in METRICS[task]:
        assert json.dumps(rescored[key]) == json.dumps(report[key]), key


def test_strict_false_skips_and_counts(synthetic, tmp_path, capsys):
    document = json.loads((synthetic / "panoptic.json").read_text())
    document["annotations"][2]["segments_info"][0]["category_id"] = 99  # unknown category
    document["annotations"][3]["file_name"] = "gone.png"  # missing PNG
    (tmp_path / "gt.json").write_text(json.dumps(document))
    common = ["evaluate", "--predictions", str(synthetic / "panoptic.json"), "--task", "panoptic",
              "--dataset", "coco-panoptic", "--annotations", str(tmp_path / "gt.json"),
              "--panoptic-root", str(synthetic / "panoptic"), "--images", str(synthetic / "images"),
              "--out", str(tmp_path / "report.json")]
    assert main(common) == 1
    assert "unknown category_id 99" in capsys.readouterr().err
    assert main([*common, "--strict", "false"]) == 0
    printed = capsys.readouterr().out
    assert "3 images scored, 2 malformed images skipped" in printed and "gone.png" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["skipped"]["count"] == 2 and report["All"]["pq"] == 1.0
    assert "000002.png" in report["skipped"]["examples"][0]["reason"]


def test_score_saved_panoptic_predictions(synthetic, tmp_path, capsys):
    shutil.copy(synthetic / "panoptic.json", tmp_path / "pred.json")
    shutil.copytree(synthetic / "panoptic", tmp_path / "pred")
    out = tmp_path / "report.json"
    code = main(["evaluate", "--predictions", str(tmp_path / "pred.json"), "--task", "panoptic",
                 "--dataset", "coco-panoptic", "--annotations", str(synthetic / "panoptic.json"),
                 "--images", str(synthetic / "images"), "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["All"]["pq"] == 1.0


def test_score_saved_semantic_predictions(synthetic, tmp_path):
    import numpy as np
    from PIL import Image

    (tmp_path / "pred").mkdir()
    for path in sorted((synthetic / "semantic").iterdir()):
        values = np.asarray(Image.open(path)).astype(np.int32) - 1  # stored as class + 1
        Image.fromarray(values.astype(np.uint8)).save(tmp_path / "pred" / path.name)
    out = tmp_path / "report.json"
    code = main(["evaluate", "--predictions", str(tmp_path / "pred"), "--task", "semantic", "--dataset", "semantic",
                 "--annotations", str(synthetic / "semantic"), "--categories", str(synthetic / "categories.json"),
                 "--images", str(synthetic / "images"), "--out", str(out)])
    assert code == 0
    assert json.loads(out.read_text())["mIoU"] == pytest.approx(100)


def test_missing_annotation_file_is_reported(synthetic, tmp_path, capsys):
    code = main(["evaluate", "--predictions", "x.json", "--task", "panoptic", "--dataset", "coco-panoptic",
                 "--annotations", str(tmp_path / "nope.json"), "--images", str(synthetic / "images")])
    assert code == 1
    assert "nope.json" in capsys.readouterr().err
