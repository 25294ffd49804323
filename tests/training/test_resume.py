"""Checkpoints lose nothing: 6 steps in one run equal 3 + 3 with a resume in between, bit for bit; a signal stops a
run cleanly with a checkpoint; a checkpoint of another architecture is refused before any step."""

import json
import signal

import pytest
import torch
from safetensors.torch import load_file

from mask2former.training.checkpoint import list_checkpoints, load_checkpoint
from mask2former.training.trainer import Trainer, train

from .test_trainer import one_thread, synthetic_run, write_tiny_model_config  # noqa: F401 (fixture)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same 6-step schedule run straight through, and stopped after step 3 then resumed with --resume auto."""
    root = tmp_path_factory.mktemp("resume")
    model = write_tiny_model_config(root / "model")
    # Crosses an epoch boundary (8 images, batch 2) and uses augmentation; the interrupted run loads with workers.
    options = dict(max_steps=6, synthetic_image_size=80, color_jitter=0.2)
    straight = train(synthetic_run(model, root / "straight", **options))
    first = train(synthetic_run(model, root / "resumed", num_workers=2, save_every=2, **options), stop_at_step=3)
    second = train(synthetic_run(model, root / "resumed", resume="auto", **options))
    return root, model, straight, first, second


def test_resume_is_exact(runs):
    root, _, straight, first, second = runs
    assert first.interrupted and first.step == 3 and first.final_dir is None
    assert first.checkpoint == root / "resumed" / "checkpoints" / "checkpoint-00000003.pt"
    assert second.step == 6 and len(second.losses) == 3
    assert first.losses + second.losses == straight.losses  # bit-identical losses at every step
    logged = [json.loads(line) for line in (root / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged] == [1, 2, 3, 4, 5, 6]
    a = load_file(root / "straight" / "final" / "model.safetensors")
    b = load_file(root / "resumed" / "final" / "model.safetensors")
    assert all(torch.equal(a[key], b[key]) for key in a)


def test_checkpoint_contents(runs):
    root, *_ = runs
    assert [p.name for p in list_checkpoints(root / "resumed")] == ["checkpoint-00000003.pt", "checkpoint-00000006.pt"]
    state = load_checkpoint(root / "resumed" / "checkpoints" / "checkpoint-00000006.pt")  # weights_only=True
    assert state["step"] == 6 and state["config"]["max_steps"] == 6
    assert {"model", "model_config", "optimizer", "scheduler", "scaler", "rng"} <= set(state)
    assert {"python", "numpy", "torch", "cuda"} == set(state["rng"][0])
    assert state["data"] == {"epoch": 1, "batch_in_epoch": 2, "dataset_size": 8, "batch_size": 2}
    assert not list((root / "resumed" / "checkpoints").glob("*.tmp"))  # atomic writes leave no temporary file


def test_wrong_checkpoints_are_refused_before_any_step(runs, tmp_path):
    root, model, *_ = runs
    checkpoint = str(root / "resumed" / "checkpoints" / "checkpoint-00000003.pt")
    other = write_tiny_model_config(tmp_path / "other", num_queries=8)
    with pytest.raises(ValueError, match=r"another architecture(.|\n)*num_queries: checkpoint 6, model 8"):
        Trainer(synthetic_run(other, tmp_path / "a", resume=checkpoint))
    with pytest.raises(ValueError, match="is a model folder"):
        Trainer(synthetic_run(model, tmp_path / "b", resume=str(root / "straight" / "final")))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a mask2former training checkpoint"):
        Trainer(synthetic_run(model, tmp_path / "c", resume=str(garbage)))
    torch.save({"weights": torch.zeros(1)}, garbage)
    with pytest.raises(ValueError, match="not a mask2former training checkpoint"):
        Trainer(synthetic_run(model, tmp_path / "d", resume=str(garbage)))
    assert not (tmp_path / "a" / "log.jsonl").exists()
    # a longer run continues on the longer schedule
    longer = Trainer(synthetic_run(model, tmp_path / "f", max_steps=12, resume=checkpoint))
    for group, base_lr in zip(longer.optimizer.param_groups, longer.scheduler.base_lrs):
        assert group["lr"] == pytest.approx(base_lr * (1 - 3 / 12) ** 0.9)
    # "auto" without a checkpoint starts from scratch
    assert Trainer(synthetic_run(model, tmp_path / "e", resume="auto")).step == 0


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_and_stops(runs, tmp_path, monkeypatch, signum):
    """The signal arrives during step 2 (raised from inside the step); the run finishes that step, saves a
    checkpoint, and `mask2former train` exits with status 130."""
    from mask2former.cli.main import main

    _, model, *_ = runs
    original = Trainer._train_step

    def step_with_signal(self, batch):
        if self.step == 1:
            signal.raise_signal(signum)
        return original(self, batch)

    monkeypatch.setattr(Trainer, "_train_step", step_with_signal)
    out = tmp_path / "run"
    arguments = [
        "train", "--model", model, "--dataset", "synthetic", "--synthetic-train-images", "8",
        "--synthetic-val-images", "0", "--synthetic-image-size", "64", "--crop-size", "64", "--batch-size", "2",
        "--max-steps", "50", "--log-every", "1", "--num-workers", "1", "--no-progress", "--output-dir", str(out),
    ]
    handlers = {number: signal.getsignal(number) for number in (signal.SIGINT, signal.SIGTERM)}
    assert main(arguments) == 130
    assert [json.loads(line)["step"] for line in (out / "log.jsonl").read_text().splitlines()] == [1, 2]
    assert [load_checkpoint(path)["step"] for path in list_checkpoints(out)] == [2]
    assert not (out / "final").exists()
    # the handlers are given back (whatever they were: a background shell starts Python with SIGINT ignored)
    assert {number: signal.getsignal(number) for number in handlers} == handlers
    assert Trainer(synthetic_run(model, out, max_steps=50, resume="auto")).step == 2
