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
    return directory


DATASETS = {
    "panoptic": ["--dataset", "coco-panoptic", "--annotations", "{root}/panoptic.json"],
    "instance": ["--dataset", "coco-instances", "--annotations", "{root}/instances.json"],
    "semantic": ["--dataset", "semantic", "--annotations", "{root}/semantic", "--categories", "{root}/categories.json"],
}


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_evaluate_a_model(synthetic, model, tmp_path, task, capsys):
    dataset = [a.format(root=synthetic) for a in DATASETS[task]]
    out = tmp_path / "report.json"
    code = main(["evaluate", "--model", str(model), "--task", task, *dataset, "--images", str(synthetic / "images"),
                 "--batch-size", "2", "--out", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["images"] == 5
    assert {"panoptic": "PQ", "instance": "AP50", "semantic": "mIoU"}[task] in capsys.readouterr().out


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
