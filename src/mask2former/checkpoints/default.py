"""The model that ships inside the package: a small Mask2Former trained on synthetic scenes (``make demo``'s model).

It is what ``Segmenter.from_pretrained()`` and ``mask2former predict`` use when no model is given. How it was made
(the exact ``mask2former train`` command) is in README.md, "The bundled default model".
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_FOLDER = "assets/default_model"


def default_model_path() -> Path:
    """The folder of the bundled model (``config.json``, ``model.safetensors``, ``preprocessor_config.json``)."""
    folder = Path(str(resources.files("mask2former").joinpath(DEFAULT_MODEL_FOLDER)))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the bundled default model is missing from this installation (expected {folder}/config.json); "
            "reinstall the package, or pass a checkpoint folder or hub id"
        )
    return folder
