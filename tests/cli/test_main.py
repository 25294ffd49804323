"""The mask2former command: --help everywhere, and real runs."""

import json

import pytest

from mask2former.cli.main import build_parser, main


def subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


@pytest.mark.parametrize("command", [[]] + [[name] for name in subcommands()])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(command + ["--help"])
    assert exit_info.value.code == 0
    assert "usage: mask2former" in capsys.readouterr().out


def test_demo_runs(tiny_checkpoint, tmp_path, capsys):
    directory, _ = tiny_checkpoint
    out = tmp_path / "demo"
    assert main(["demo", "--model", str(directory), "--out", str(out), "--num-images", "2"]) == 0
    printed = capsys.readouterr().out
    assert "ground truth:" in printed and "panoptic:" in printed and "semantic:" in printed
    for task in ("panoptic", "instance", "semantic"):
        assert len(list((out / task).glob("*.overlay.png"))) == 2


def test_make_synthetic(tmp_path):
    assert main(["make-synthetic", "--out", str(tmp_path), "--num-images", "3", "--height", "48", "--width", "64"]) == 0
    document = json.loads((tmp_path / "panoptic.json").read_text())
    assert [image["height"] for image in document["images"]] == [48, 48, 48]
