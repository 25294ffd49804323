"""mask2former train: --help names every field, a real fine-tuning run on COCO-format files whose model predicts,
every dataset format, and clear errors (exit status 1) for bad input before any step."""

from __future__ import annotations

import json
import re
import runpy
import sys

import pytest
import torch

from mask2former.cli.main import main
from mask2former.training.config import field_names

from ..training.test_trainer import write_tiny_model_config


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """make-synthetic's COCO panoptic, COCO instances and semantic-folder files of 4 scenes of 64x64."""
    root = tmp_path_factory.mktemp("synthetic")
    assert main(["make-synthetic", "--out", str(root), "--num-images", "4", "--height", "64", "--width", "64"]) == 0
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_tiny_model_config(tmp_path_factory.mktemp("model"))


def common(out) -> list[str]:
    return ["--crop-size", "64", "--batch-size", "2", "--log-every", "1", "--num-workers", "0", "--no-progress",
            "--output-dir", str(out)]


def test_help_names_every_field(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for name in field_names():
        assert "--" + name.replace("_", "-") in text
    assert "--config FILE" in text and "torchrun" in text


def test_python_dash_m(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["mask2former", "train", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("mask2former", run_name="__main__")
    assert exit_info.value.code == 0 and "usage: mask2former train" in capsys.readouterr().out


def test_fine_tune_on_coco_panoptic_files_then_predict(data, model, tmp_path):
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"lr": 0.0003, "max_steps": 5, "augmentation": "lsj", "scale_range": [0.5, 1.5]}))
    out = tmp_path / "run"
    arguments = [
        "train", "--config", str(config), "--model", model, "--dataset", "coco-panoptic",
        "--train-annotations", str(data / "panoptic.json"), "--train-images", str(data / "images"),
        "--val-annotations", str(data / "panoptic.json"), "--val-images", str(data / "images"), "--max-steps", "2",
        *common(out),
    ]
    assert main(arguments) == 0
    resolved = json.loads((out / "train_config.json").read_text())
    assert (resolved["lr"], resolved["max_steps"], resolved["scale_range"]) == (0.0003, 2, [0.5, 1.5])  # flag wins
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {p.name for p in (out / "final").iterdir()}
    assert main(["predict", str(data / "images" / "000000.png"), "--model", str(out / "final"), "--out", str(tmp_path / "p")]) == 0
    assert (tmp_path / "p" / "000000.overlay.png").is_file()


@pytest.mark.parametrize(
    "dataset, task, paths",
    [
        ("coco-instances", "instance", ["--train-annotations", "instances.json", "--train-images", "images"]),
        ("semantic", "semantic", ["--train-annotations", "semantic", "--train-images", "images", "--categories",
                                  "categories.json"]),
    ],
)
def test_other_formats(data, model, tmp_path, dataset, task, paths):
    paths = [str(data / p) if not p.startswith("--") else p for p in paths]
    arguments = ["train", "--model", model, "--dataset", dataset, "--task", task, *paths, "--max-steps", "1"]
    assert main(arguments + common(tmp_path / "run")) == 0


def test_bad_input_is_reported_before_any_step(data, model, tmp_path, capsys):
    base = ["train", "--model", model, "--dataset", "coco-panoptic", "--train-annotations", str(data / "panoptic.json"),
            "--train-images", str(data / "images"), "--max-steps", "2"]
    config = tmp_path / "bad.json"
    config.write_text(json.dumps({"weight_decya": 0.1}))
    cases = [
        (["--config", str(config)], "unknown config field 'weight_decya'.*did you mean 'weight_decay'"),
        (["--num-labels", "5"], "class id 5 .*num_labels is 5"),
        (["--batch-size", "8"], "fewer than one batch"),
        (["--resume", str(tmp_path / "missing.pt")], "no such checkpoint"),
        (["--amp", "fp16", "--device", "cpu"], "fp16 needs CUDA"),
    ]
    for extra, message in cases:
        out = tmp_path / "out"
        assert main(base + common(out) + extra) == 1  # the later flag wins
        assert re.search(message, capsys.readouterr().err), message
        assert not (out / "log.jsonl").exists()
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}))
    assert main(["train", "--model", model, "--dataset", "coco-panoptic", "--train-annotations", str(empty),
                 "--train-images", str(data / "images")]) == 1
    assert "empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "pascal"])  # argparse's own error for a choice
