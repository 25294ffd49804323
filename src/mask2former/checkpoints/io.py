"""Reading and atomically writing weight files (safetensors, sharded safetensors, PyTorch ``.bin``)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

SAFETENSORS_NAME = "model.safetensors"
SAFETENSORS_INDEX_NAME = "model.safetensors.index.json"
PYTORCH_NAME = "pytorch_model.bin"
PYTORCH_INDEX_NAME = "pytorch_model.bin.index.json"


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it into place only if the block finishes.

    A crash or Ctrl-C while writing leaves the previous file (if any) untouched and no partial file behind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: dict[str, Tensor], path: str | os.PathLike) -> None:
    """Write ``state_dict`` as safetensors (with the ``format: pt`` metadata ``transformers`` expects), atomically."""
    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    with atomic_path(path) as temporary:
        save_file(tensors, str(temporary), metadata={"format": "pt"})


def load_weights(folder: str | os.PathLike) -> dict[str, Tensor]:
    """Read the weights of a checkpoint folder, whichever of the standard file layouts it uses.

    Looks for, in order: ``model.safetensors``, sharded safetensors (``model.safetensors.index.json``),
    ``pytorch_model.bin`` (read with ``weights_only=True``), sharded ``.bin``.
    """
    folder = Path(folder)
    if (folder / SAFETENSORS_NAME).is_file():
        return load_file(str(folder / SAFETENSORS_NAME))
    if (folder / SAFETENSORS_INDEX_NAME).is_file():
        return _load_sharded(folder, SAFETENSORS_INDEX_NAME, lambda file: load_file(str(file)))
    if (folder / PYTORCH_NAME).is_file():
        return _torch_load(folder / PYTORCH_NAME)
    if (folder / PYTORCH_INDEX_NAME).is_file():
        return _load_sharded(folder, PYTORCH_INDEX_NAME, _torch_load)
    raise FileNotFoundError(
        f"no weights in {str(folder)!r}: expected {SAFETENSORS_NAME}, {SAFETENSORS_INDEX_NAME}, {PYTORCH_NAME} or "
        f"{PYTORCH_INDEX_NAME}"
    )


def _torch_load(file: Path) -> dict[str, Tensor]:
    return torch.load(file, map_location="cpu", weights_only=True)


def _load_sharded(folder: Path, index_name: str, load) -> dict[str, Tensor]:
    with open(folder / index_name, encoding="utf-8") as handle:
        weight_map: dict[str, str] = json.load(handle)["weight_map"]
    state: dict[str, Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (folder / shard).is_file():
            raise FileNotFoundError(f"{index_name} in {str(folder)!r} names the shard {shard!r}, which is missing")
        state.update(load(folder / shard))
    return state
