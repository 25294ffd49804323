"""Training checkpoints that lose nothing: model, optimizer, scheduler, gradient scaler, step, every process's RNG
states and the resolved config, written atomically (a temporary file beside the target, then ``os.replace``).

A checkpoint is one ``torch.save`` file, ``OUTPUT_DIR/checkpoints/checkpoint-STEP.pt``, made of tensors and plain
Python values only, so it loads with ``torch.load(weights_only=True)``. It is not the model's published format: the
trainer also writes ``OUTPUT_DIR/final`` with ``save_pretrained`` (the ``transformers`` layout).
"""

from __future__ import annotations

import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoints.io import atomic_path

FORMAT = "mask2former-training-checkpoint"
VERSION = 1
CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"checkpoint-(\d+)\.pt$")
# Config fields that name things rather than shape the network or its training.
_NOT_ARCHITECTURE = {"id2label", "label2id", "output_auxiliary_logits"}


def checkpoint_path(output_dir: str | os.PathLike, step: int) -> Path:
    return Path(output_dir) / CHECKPOINT_DIR / f"checkpoint-{step:08d}.pt"


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The training checkpoints in ``output_dir``, oldest step first."""
    folder = Path(output_dir) / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(match[1]), path) for path in folder.iterdir() if (match := _NAME.fullmatch(path.name))]
    return [path for _, path in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint file ``--resume`` names: None, "auto" (the latest in ``output_dir``, None if there is none),
    a checkpoint file, or a folder holding checkpoints (its latest)."""
    if resume is None:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if path.is_dir():
        found = list_checkpoints(path)  # an output folder
        if not found and path.name == CHECKPOINT_DIR:  # its checkpoints folder
            found = list_checkpoints(path.parent)
        if found:
            return found[-1]
        if (path / "config.json").is_file():
            raise ValueError(
                f"--resume {resume!r} is a model folder (config.json), not a training checkpoint; to fine-tune it, "
                "pass it as --model"
            )
        raise FileNotFoundError(f"--resume {resume!r}: no {CHECKPOINT_DIR}/checkpoint-STEP.pt in this folder")
    if not path.is_file():
        raise FileNotFoundError(f"--resume {resume!r}: no such checkpoint file")
    return path


# ---------------------------------------------------------------------- RNG states


def capture_rng_state() -> dict[str, Any]:
    """The states of Python's, numpy's and torch's (CPU and CUDA) global generators, as tensors and plain values."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "key": torch.from_numpy(numpy_state[1].astype(np.int64)),
            "pos": int(numpy_state[2]),
            "has_gauss": int(numpy_state[3]),
            "gauss": float(numpy_state[4]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global generators back to a :func:`capture_rng_state` result."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"].tolist()), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state(("MT19937", numpy["key"].numpy().astype(np.uint32), numpy["pos"], numpy["has_gauss"], numpy["gauss"]))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------- saving and loading


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (see :func:`training_state`) to ``path`` atomically."""
    path = Path(path)
    with atomic_path(path) as temporary:
        torch.save(state, temporary)
    return path


def training_state(
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    rng_states: list[dict[str, Any]],
    config: dict[str, Any],
    data: dict[str, int] | None = None,
) -> dict[str, Any]:
    """The contents of a checkpoint (``rng_states``: one per process, in rank order; ``data``: where the data
    order stands, e.g. epoch, position in it, dataset size, global batch size)."""
    model_config = getattr(model, "config", None)
    return {
        "format": FORMAT,
        "version": VERSION,
        "step": step,
        "model": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "model_config": model_config.to_dict() if model_config is not None else None,
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_states,
        "data": data or {},
        "config": config,
    }


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a training checkpoint (tensors on the CPU); anything else raises a ValueError naming the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint not found: {str(path)!r}") from None
    except Exception as error:  # noqa: BLE001 (pickle, zip and weights_only errors alike: not one of our files)
        raise ValueError(f"{str(path)!r} is not a mask2former training checkpoint: {type(error).__name__}: {error}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{str(path)!r} is not a mask2former training checkpoint (no {FORMAT!r} marker)")
    if state.get("version", 0) > VERSION:
        raise ValueError(f"{str(path)!r} was written by a newer version (format {state['version']} > {VERSION})")
    return state


def check_architecture(state: dict[str, Any], model: nn.Module, source: str) -> None:
    """Raise a ValueError if the checkpoint's model is not the architecture of ``model``: differing config fields
    (names of classes aside) or differing weight keys and shapes, all listed."""
    from ..checkpoints.hf import check_state_dict

    saved = state.get("model_config") or {}
    current = model.config.to_dict() if getattr(model, "config", None) is not None else {}
    differences = [
        f"  {key}: checkpoint {saved.get(key)!r}, model {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if key not in _NOT_ARCHITECTURE and saved.get(key) != current.get(key)
    ]
    if differences:
        raise ValueError(
            f"the checkpoint {source} holds another architecture than the model built from --model:\n"
            + "\n".join(differences)
            + "\nresume with the --model (and --num-labels) of the run that wrote it"
        )
    try:
        check_state_dict(model, state["model"], source)
    except ValueError as error:
        raise ValueError(f"the checkpoint {source} does not fit the model built from --model: {error}") from None


def prune_checkpoints(output_dir: str | os.PathLike, keep: int) -> None:
    """Delete all but the ``keep`` latest checkpoints."""
    for path in list_checkpoints(output_dir)[:-keep]:
        path.unlink(missing_ok=True)
