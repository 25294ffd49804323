"""mask2former predict on a folder of images with a saved model: overlays, label PNGs, COCO JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from mask2former.cli.main import main
from mask2former.visualize import rgb_to_id


@pytest.fixture()
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for name, size in (("a.png", (40, 60)), ("b.jpg", (64, 64))):
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(images / name)
    (images / "c.png").write_bytes(b"not an image")
    return images


@pytest.mark.parametrize("task", ["panoptic", "instance", "semantic"])
def test_predict_writes_everything_and_reports_bad_files(tiny_checkpoint, folder, tmp_path, task, capsys):
    directory, _ = tiny_checkpoint
    out = tmp_path / "out"
    code = main(["predict", str(folder), "--model", str(directory), "--task", task, "--out", str(out),
                 "--threshold", "0.0", "--batch-size", "2"])
    assert code == 1  # c.png is unreadable
    assert "c.png" in capsys.readouterr().err
    for name, (height, width) in (("a", (40, 60)), ("b", (64, 64))):
        assert Image.open(out / f"{name}.overlay.png").size == (width, height)
        label = np.asarray(Image.open(out / f"{name}.label.png"))
        assert label.shape[:2] == (height, width)
    document = json.loads((out / "predictions.json").read_text())
    assert document["task"] == task and len(document["images"]) == 2
    if task == "panoptic":
        entry = document["annotations"][0]
        ids = rgb_to_id(np.asarray(Image.open(out / entry["file_name"])))
        assert set(np.unique(ids)) - {0} == {s["id"] for s in entry["segments_info"]}


def test_predict_with_nothing_to_read(tiny_checkpoint, tmp_path, capsys):
    directory, _ = tiny_checkpoint
    assert main(["predict", str(tmp_path / "missing*.png"), "--model", str(directory)]) == 1
    assert "no such file" in capsys.readouterr().err
