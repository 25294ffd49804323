"""Original detectron2 checkpoints: the ``model_final_*.pkl`` files of the Mask2Former and MaskFormer model zoos.

**The file.** A pickled dict ``{"model": {name: numpy array}, "__author__": ..., "matching_heuristics": ...}`` (or the
same layout as a ``.pth`` written by ``torch.save``, with tensors). A pickle can run any code while it loads, so
``.pkl`` files are read with :class:`RestrictedUnpickler`, which rebuilds plain containers and numpy arrays and
refuses to import anything else (the error names the file and the global it asked for); ``.pth`` files go through
``torch.load(weights_only=True)``. Nothing from a checkpoint is ever executed.

**The keys.** The original names (``backbone.*``, ``sem_seg_head.pixel_decoder.*``, ``sem_seg_head.predictor.*``,
``criterion.empty_weight``) map onto ours through one explicit table per architecture, ``MASK2FORMER_RENAMES`` and
``MASKFORMER_RENAMES`` (original prefix, our prefix), read in both directions. They follow the mapping of the
``transformers`` conversion scripts (``convert_mask2former_original_pytorch_checkpoint_to_pytorch.py``,
``convert_maskformer_original_pytorch_checkpoint_to_pytorch.py``, ``convert_maskformer_resnet_to_pytorch.py``); where
those split packed projections for their own layout, ours stay packed like the original's (Swin ``attn.qkv``,
``nn.MultiheadAttention``'s ``in_proj_weight``), so the tables are pure renames. The backbones already use the
original names (Swin ``patch_embed``/``layers``; ResNet ``stem``/``res2``...), except the Swin output norms
(``norm{i}`` -> ``output_norms.{i}``).

Besides the weights an original file holds what the model derives: the Swin ``relative_position_index`` buffers
(recomputed from the window size) and the loss's ``criterion.empty_weight`` (from ``no_object_weight``); both are
optional on load and their shapes are checked. MaskFormer files written before its head's ``_version = 2`` keep the
pixel decoder directly under ``sem_seg_head.`` (``sem_seg_head.layer_4``); they load as the original code loads them.

Every key and shape is checked in the original names before loading; a file of another architecture or size raises
one ``ValueError`` that names the file and lists the missing, unexpected and wrongly shaped keys.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..config import CONFIG_NAME, Mask2FormerConfig, MaskFormerConfig, SwinConfig
from ..modeling.backbones.swin import _relative_position_index
from .hf import _compile, _rename

logger = logging.getLogger(__name__)

DETECTRON2_SUFFIXES = (".pkl", ".pth")

# (original key prefix, our key prefix); "{n}" stands for a number. The first match wins, in both directions.
_BACKBONE_RENAMES: list[tuple[str, str]] = [
    ("backbone.norm{n}.", "backbone.output_norms.{n}."),  # Swin: one LayerNorm per output stage
    ("backbone.", "backbone."),  # everything else has the original names (Swin and detectron2 ResNet)
]
MASK2FORMER_RENAMES: list[tuple[str, str]] = _BACKBONE_RENAMES + [
    # MSDeformAttn pixel decoder
    ("sem_seg_head.pixel_decoder.transformer.level_embed", "pixel_decoder.level_embed"),
    ("sem_seg_head.pixel_decoder.transformer.encoder.layers.{n}.", "pixel_decoder.encoder.{n}."),
    ("sem_seg_head.pixel_decoder.input_proj.", "pixel_decoder.input_projections."),
    ("sem_seg_head.pixel_decoder.adapter_1.norm.", "pixel_decoder.lateral_convs.0.1."),  # the FPN step to stride 4
    ("sem_seg_head.pixel_decoder.adapter_1.", "pixel_decoder.lateral_convs.0.0."),
    ("sem_seg_head.pixel_decoder.layer_1.norm.", "pixel_decoder.output_convs.0.1."),
    ("sem_seg_head.pixel_decoder.layer_1.", "pixel_decoder.output_convs.0.0."),
    ("sem_seg_head.pixel_decoder.mask_features.", "pixel_decoder.mask_projection."),
    # masked-attention transformer decoder
    ("sem_seg_head.predictor.query_feat.", "transformer_decoder.query_features."),
    ("sem_seg_head.predictor.query_embed.", "transformer_decoder.query_positions."),
    ("sem_seg_head.predictor.level_embed.", "transformer_decoder.level_embed."),
    ("sem_seg_head.predictor.input_proj.", "transformer_decoder.input_projections."),
    ("sem_seg_head.predictor.transformer_cross_attention_layers.{n}.multihead_attn.", "transformer_decoder.layers.{n}.cross_attn."),
    ("sem_seg_head.predictor.transformer_cross_attention_layers.{n}.norm.", "transformer_decoder.layers.{n}.norm1."),
    ("sem_seg_head.predictor.transformer_self_attention_layers.{n}.self_attn.", "transformer_decoder.layers.{n}.self_attn."),
    ("sem_seg_head.predictor.transformer_self_attention_layers.{n}.norm.", "transformer_decoder.layers.{n}.norm2."),
    ("sem_seg_head.predictor.transformer_ffn_layers.{n}.linear1.", "transformer_decoder.layers.{n}.linear1."),
    ("sem_seg_head.predictor.transformer_ffn_layers.{n}.linear2.", "transformer_decoder.layers.{n}.linear2."),
    ("sem_seg_head.predictor.transformer_ffn_layers.{n}.norm.", "transformer_decoder.layers.{n}.norm3."),
    ("sem_seg_head.predictor.decoder_norm.", "transformer_decoder.norm."),
    ("sem_seg_head.predictor.mask_embed.layers.{n}.", "transformer_decoder.mask_head.layers.{n}."),
    # class head
    ("sem_seg_head.predictor.class_embed.", "class_head."),
]  # fmt: skip
MASKFORMER_RENAMES: list[tuple[str, str]] = _BACKBONE_RENAMES + [
    # FPN pixel decoder: the original numbers its levels from the finest (adapter_1 on res2, layer_4 on res5), ours
    # from the coarsest below the stem (lateral_convs.0 on res4)
    ("sem_seg_head.pixel_decoder.layer_4.norm.", "pixel_decoder.stem.1."),
    ("sem_seg_head.pixel_decoder.layer_4.", "pixel_decoder.stem.0."),
    ("sem_seg_head.pixel_decoder.adapter_3.norm.", "pixel_decoder.lateral_convs.0.1."),
    ("sem_seg_head.pixel_decoder.adapter_3.", "pixel_decoder.lateral_convs.0.0."),
    ("sem_seg_head.pixel_decoder.layer_3.norm.", "pixel_decoder.output_convs.0.1."),
    ("sem_seg_head.pixel_decoder.layer_3.", "pixel_decoder.output_convs.0.0."),
    ("sem_seg_head.pixel_decoder.adapter_2.norm.", "pixel_decoder.lateral_convs.1.1."),
    ("sem_seg_head.pixel_decoder.adapter_2.", "pixel_decoder.lateral_convs.1.0."),
    ("sem_seg_head.pixel_decoder.layer_2.norm.", "pixel_decoder.output_convs.1.1."),
    ("sem_seg_head.pixel_decoder.layer_2.", "pixel_decoder.output_convs.1.0."),
    ("sem_seg_head.pixel_decoder.adapter_1.norm.", "pixel_decoder.lateral_convs.2.1."),
    ("sem_seg_head.pixel_decoder.adapter_1.", "pixel_decoder.lateral_convs.2.0."),
    ("sem_seg_head.pixel_decoder.layer_1.norm.", "pixel_decoder.output_convs.2.1."),
    ("sem_seg_head.pixel_decoder.layer_1.", "pixel_decoder.output_convs.2.0."),
    ("sem_seg_head.pixel_decoder.mask_features.", "pixel_decoder.mask_projection."),
    # DETR transformer decoder (self_attn, norm1..3 and linear1/2 keep their names)
    ("sem_seg_head.predictor.input_proj.", "transformer_decoder.input_projection."),
    ("sem_seg_head.predictor.query_embed.", "transformer_decoder.query_positions."),
    ("sem_seg_head.predictor.transformer.decoder.layers.{n}.multihead_attn.", "transformer_decoder.layers.{n}.cross_attn."),
    ("sem_seg_head.predictor.transformer.decoder.layers.{n}.", "transformer_decoder.layers.{n}."),
    ("sem_seg_head.predictor.transformer.decoder.norm.", "transformer_decoder.norm."),
    # heads
    ("sem_seg_head.predictor.class_embed.", "class_head."),
    ("sem_seg_head.predictor.mask_embed.layers.{n}.", "mask_head.layers.{n}."),
]  # fmt: skip

# In the original files, derived from the config: optional on load, shape-checked, written by the inverse.
_RELATIVE_POSITION_INDEX = re.compile(r"backbone\.layers\.\d+\.blocks\.\d+\.attn\.relative_position_index$")
_EMPTY_WEIGHT = "criterion.empty_weight"
# Non-persistent in the original code; tolerated if an older file has them.
_IGNORED = ("pixel_mean", "pixel_std")

# What a key tells about the architecture of a file that does not fit the one asked for.
_HINTS: list[tuple[str, str]] = [
    (
        "sem_seg_head.predictor.transformer.decoder.",
        "a MaskFormer checkpoint: load it with MaskFormerForInstanceSegmentation and a maskformer-* preset",
    ),
    (
        "sem_seg_head.predictor.transformer_self_attention_layers.",
        "a Mask2Former checkpoint: load it with Mask2FormerForUniversalSegmentation and a mask2former-* preset",
    ),
    ("backbone.stem.conv2.", 'a ResNet-c backbone ("deeplab" stem of three 3x3 convolutions), not implemented here'),
    (
        "sem_seg_head.pixel_decoder.transformer.encoder.",
        'a pixel decoder with transformer encoder layers (MaskFormer\'s "+ 6 Enc" models are not implemented here)',
    ),
    ("backbone.res2.", "a ResNet backbone"),
    ("backbone.patch_embed.", "a Swin backbone"),
]


_TABLES = {"mask2former": MASK2FORMER_RENAMES, "maskformer": MASKFORMER_RENAMES}
_FORWARD = {name: [(_compile(original), ours) for original, ours in table] for name, table in _TABLES.items()}
_BACKWARD = {name: [(_compile(ours), original) for original, ours in table] for name, table in _TABLES.items()}


def architecture_of(config: Mask2FormerConfig | MaskFormerConfig) -> str:
    """``"maskformer"`` or ``"mask2former"``: which rename table a config's model uses."""
    if isinstance(config, MaskFormerConfig):
        return "maskformer"
    if isinstance(config, Mask2FormerConfig):
        return "mask2former"
    raise TypeError(f"config must be a Mask2FormerConfig or a MaskFormerConfig, got {type(config).__name__}")


# --------------------------------------------------------------------------------------------------------------------
# Reading the file
# --------------------------------------------------------------------------------------------------------------------


def _reconstructors() -> dict[tuple[str, str], Any]:
    """The globals a pickled numpy array needs, under the module names numpy 1 and 2 write."""
    try:
        from numpy._core import multiarray, numeric
    except ImportError:  # numpy 1
        from numpy.core import multiarray, numeric
    import _codecs

    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _codecs.encode,  # how protocol 2 stores an array's bytes
        ("collections", "OrderedDict"): OrderedDict,
    }
    for module in ("numpy.core", "numpy._core"):
        allowed[(f"{module}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{module}.numeric", "_frombuffer")] = numeric._frombuffer  # protocol 5
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds plain containers and numpy arrays, and refuses every other global.

    ``find_class`` is where a pickle asks for the callables it calls while loading (``os.system`` in a malicious
    file); anything outside the numpy array reconstructors raises :class:`pickle.UnpicklingError` before it is
    imported or called.
    """

    _allowed: dict[tuple[str, str], Any] | None = None

    def find_class(self, module: str, name: str) -> Any:
        if RestrictedUnpickler._allowed is None:
            RestrictedUnpickler._allowed = _reconstructors()
        try:
            return RestrictedUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused to import {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refused a persistent id (not a plain pickle of arrays)")


def is_detectron2_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a ``.pkl``/``.pth`` file (which ``from_pretrained`` reads as a detectron2 checkpoint)."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    path = Path(path)
    return path.suffix.lower() in DETECTRON2_SUFFIXES and not path.is_dir()


def read_detectron2_checkpoint(path: str | os.PathLike) -> dict[str, Tensor]:
    """The named weights of a detectron2 checkpoint file, as tensors, in the original names.

    Args:
        path: a ``.pkl`` (read with :class:`RestrictedUnpickler`) or a ``.pth`` (``torch.load(weights_only=True)``)
            holding a dict with a ``"model"`` entry of named arrays.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a detectron2 checkpoint, or its pickle asks to import anything but numpy arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no detectron2 checkpoint file {str(path)!r}")
    if path.suffix.lower() == ".pth":
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises several types for refused globals, zip and pickle errors
            raise ValueError(f"{str(path)!r} is not a loadable detectron2 checkpoint: {error}") from None
    else:
        try:
            with open(path, "rb") as handle:
                # latin1: what detectron2 uses, so that the Python 2 pickles of the first model zoos load too
                data = RestrictedUnpickler(handle, encoding="latin1").load()
        except pickle.UnpicklingError as error:
            if str(error).startswith("refused"):
                raise ValueError(
                    f"{str(path)!r} is not a plain pickle of arrays: its pickle {error}. A detectron2 checkpoint "
                    "holds only named numpy arrays; nothing else is loaded, and nothing from the file was run."
                ) from None
            raise ValueError(f"{str(path)!r} is not a readable pickle: {error}") from None
        except Exception as error:  # truncated or garbage files raise EOFError, ValueError, ...
            raise ValueError(f"{str(path)!r} is not a readable pickle ({type(error).__name__}: {error})") from None
    model = data.get("model") if isinstance(data, Mapping) else None
    if not isinstance(model, Mapping):
        got = f"a dict with the keys {sorted(map(str, data))[:8]}" if isinstance(data, Mapping) else type(data).__name__
        raise ValueError(
            f"{str(path)!r} is not a detectron2 checkpoint: expected a dict with a 'model' entry of named arrays, "
            f"got {got}"
        )
    state: dict[str, Tensor] = {}
    for key, value in model.items():
        state[str(key)] = _to_tensor(value, key, path)
    if not any(key.startswith(("backbone.", "sem_seg_head.")) for key in state):
        raise ValueError(
            f"{str(path)!r} is not a Mask2Former or MaskFormer detectron2 checkpoint: none of its "
            f"{len(state)} weights is under backbone. or sem_seg_head."
        )
    return state


def _to_tensor(value: Any, key: Any, path: Path) -> Tensor:
    if isinstance(value, Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        array = value.astype(value.dtype.newbyteorder("="), copy=False)  # torch reads native byte order only
        return torch.from_numpy(np.ascontiguousarray(array))
    kind = f"an array of dtype {value.dtype}" if isinstance(value, np.ndarray) else type(value).__name__
    raise ValueError(f"{str(path)!r}: the weight {key!r} is {kind}, not a numeric array")


# --------------------------------------------------------------------------------------------------------------------
# Translating the keys
# --------------------------------------------------------------------------------------------------------------------


def _current_layout(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Move a pre-``_version 2`` head's pixel decoder (``sem_seg_head.layer_4``) under ``sem_seg_head.pixel_decoder.``,
    as the original ``MaskFormerHead._load_from_state_dict`` does."""
    out = {}
    for key, value in state.items():
        if key.startswith("sem_seg_head.") and not key.startswith(
            ("sem_seg_head.predictor.", "sem_seg_head.pixel_decoder.")
        ):
            key = "sem_seg_head.pixel_decoder." + key[len("sem_seg_head.") :]
        out[key] = value
    return out


def state_dict_from_detectron2(state: Mapping[str, Tensor], architecture: str) -> dict[str, Tensor]:
    """Translate original detectron2 weights into our key layout.

    The derived entries (``relative_position_index``, ``criterion.empty_weight``, ``pixel_mean``/``pixel_std``) are
    dropped; keys that no rule knows are kept as they are, so a key check reports them.

    Args:
        state: the ``"model"`` entry of an original checkpoint.
        architecture: ``"mask2former"`` or ``"maskformer"``.
    """
    rules = _FORWARD[architecture]
    ours = {}
    for key, value in _current_layout(state).items():
        if _RELATIVE_POSITION_INDEX.match(key) or key == _EMPTY_WEIGHT or key in _IGNORED:
            continue
        ours[_rename(key, rules) or key] = value
    return ours


def state_dict_to_detectron2(
    state: Mapping[str, Tensor], config: Mask2FormerConfig | MaskFormerConfig
) -> dict[str, Tensor]:
    """Our state dict in the original detectron2 names, with the entries the original derives (the Swin
    ``relative_position_index`` buffers, ``criterion.empty_weight`` when there is a class head).

    Raises:
        ValueError: a key with no original name.
    """
    architecture = architecture_of(config)
    rules = _BACKWARD[architecture]
    original: dict[str, Tensor] = {}
    for key, value in state.items():
        renamed = _rename(key, rules)
        if renamed is None:
            raise ValueError(f"no detectron2 name for our parameter {key!r}")
        original[renamed] = value
    backbone = config.backbone_config
    if isinstance(backbone, SwinConfig):
        index = _relative_position_index(backbone.window_size)
        for stage, depth in enumerate(backbone.depths):
            for block in range(depth):
                original[f"backbone.layers.{stage}.blocks.{block}.attn.relative_position_index"] = index.clone()
    if "sem_seg_head.predictor.class_embed.weight" in original:
        empty_weight = torch.ones(config.num_labels + 1)
        empty_weight[-1] = config.no_object_weight
        original[_EMPTY_WEIGHT] = empty_weight
    return original


def _optional(key: str) -> bool:
    return key == _EMPTY_WEIGHT or bool(_RELATIVE_POSITION_INDEX.match(key))


def check_detectron2_state_dict(
    expected: Mapping[str, Tensor], state: Mapping[str, Tensor], source: str, wanted: str
) -> None:
    """Raise one ValueError listing the missing, unexpected and wrongly shaped keys, in the original names.

    Args:
        expected: the original-layout state of the model to load into (:func:`state_dict_to_detectron2`).
        state: the file's weights (current layout).
        source: the file, for the message.
        wanted: what was asked for (a preset name or a config description), for the message.
    """
    missing = sorted(key for key in set(expected) - set(state) if not _optional(key))
    unexpected = sorted(key for key in set(state) - set(expected) if key not in _IGNORED)
    wrong_shape = sorted(
        f"{key}: file {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(state) & set(expected)
        if tuple(state[key].shape) != tuple(expected[key].shape)
    )
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"the weights in {source} do not fit {wanted}:"]
    hints = [hint for prefix, hint in _HINTS if any(key.startswith(prefix) for key in unexpected)]
    if hints:
        lines.append(f"  the file looks like {hints[0]}")
    for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
        if keys:
            lines.append(f"  {title} ({len(keys)}):")
            lines.extend(f"    {key}" for key in keys[:40])
            if len(keys) > 40:
                lines.append(f"    ... and {len(keys) - 40} more")
    raise ValueError("\n".join(lines))


# --------------------------------------------------------------------------------------------------------------------
# Loading a model
# --------------------------------------------------------------------------------------------------------------------


def resolve_detectron2_config(config: Any, path: str | os.PathLike) -> tuple[Mask2FormerConfig | MaskFormerConfig, Any]:
    """The config (and the preset, if one names it) that a detectron2 file is to be loaded with.

    Args:
        config: a preset name, a :class:`~mask2former.config.Mask2FormerConfig` /
            :class:`~mask2former.config.MaskFormerConfig`, a ``config.json`` file or a folder holding one; None: the
            preset whose original file has ``path``'s file name.
        path: the checkpoint file.

    Returns:
        (config, preset or None).
    """
    from ..presets import find_preset, find_preset_by_file, get_preset

    if config is None:
        preset = find_preset_by_file(path)
        if preset is None:
            raise ValueError(
                f"which model is {str(path)!r}? Pass config= a preset name (mask2former.list_models() lists them, "
                "with their original file names) or a Mask2FormerConfig/MaskFormerConfig or config.json"
            )
        return preset.config(), preset
    if isinstance(config, (Mask2FormerConfig, MaskFormerConfig)):
        return config, None
    if not isinstance(config, (str, os.PathLike)):
        raise TypeError(
            "config must be a preset name, a Mask2FormerConfig/MaskFormerConfig or a config.json path, got "
            f"{type(config).__name__}"
        )
    candidate = Path(config)
    if candidate.exists():
        import json

        file = candidate / CONFIG_NAME if candidate.is_dir() else candidate
        with open(file, encoding="utf-8") as handle:
            data = json.load(handle)
        if data.get("model_type") == "maskformer":
            return MaskFormerConfig.from_dict(data), None
        return Mask2FormerConfig.from_dict(data), None
    preset = find_preset(str(config))
    if preset is None:
        get_preset(str(config))  # raises with the closest names
    return preset.config(), preset


def load_detectron2_checkpoint(
    cls: type | None,
    path: str | os.PathLike,
    *,
    config: Any = None,
    map_location: str | torch.device | None = None,
) -> nn.Module:
    """Build a model and load an original detectron2 checkpoint into it.

    Args:
        cls: the model class (``Mask2FormerForUniversalSegmentation``, ``Mask2FormerModel``,
            ``MaskFormerForInstanceSegmentation``, ``MaskFormerModel``), or None for the one with heads that
            ``config`` describes. A base model (no heads) leaves the file's head weights out.
        path: the ``model_final_*.pkl`` (or a ``.pth`` of the same layout).
        config: a preset name (``"mask2former-swin-tiny-coco-panoptic"``), a config, or a ``config.json``; None: the
            preset whose original file has this file name.
        map_location: device for the model (default: CPU).

    Raises:
        ValueError: the file is not a detectron2 checkpoint, tries to import code, or does not fit the config (the
            message lists the missing, unexpected and wrongly shaped keys in the original names); or ``cls`` is of
            the other architecture than ``config``.
    """
    from ..modeling.mask2former import Mask2FormerForUniversalSegmentation
    from ..modeling.maskformer import MaskFormerForInstanceSegmentation, MaskFormerModel

    config, preset = resolve_detectron2_config(config, path)
    architecture = architecture_of(config)
    if cls is None:
        cls = MaskFormerForInstanceSegmentation if architecture == "maskformer" else Mask2FormerForUniversalSegmentation
    if issubclass(cls, MaskFormerModel) != (architecture == "maskformer"):
        right = (
            "MaskFormerForInstanceSegmentation"
            if architecture == "maskformer"
            else "Mask2FormerForUniversalSegmentation"
        )
        raise ValueError(f"{cls.__name__} cannot load a {architecture} config: use {right}")
    wanted = f"preset {preset.name!r}" if preset is not None else f"the given {type(config).__name__}"
    state = _current_layout(read_detectron2_checkpoint(path))
    with torch.device("meta"):  # only the names and shapes: no memory, no initialization
        skeleton = cls.from_config(config).state_dict()
    expected = state_dict_to_detectron2(skeleton, config)
    state = _without_absent_heads(state, skeleton, architecture)
    check_detectron2_state_dict(expected, state, repr(str(path)), wanted)
    model = cls.from_config(config)
    model.load_state_dict(state_dict_from_detectron2(state, architecture), strict=True)
    model.eval()
    if map_location is not None:
        model.to(map_location)
    return model


def _without_absent_heads(
    state: Mapping[str, Tensor], skeleton: Mapping[str, Tensor], architecture: str
) -> dict[str, Tensor]:
    """The file's weights less the heads (and the loss weights) that a base model (no heads) does not have."""
    absent = tuple(
        prefix for prefix in ("class_head.", "mask_head.") if not any(k.startswith(prefix) for k in skeleton)
    )
    if not absent:
        return dict(state)
    kept = {}
    for key, value in state.items():
        renamed = _rename(key, _FORWARD[architecture]) or key
        if key == _EMPTY_WEIGHT or renamed.startswith(absent):
            continue
        kept[key] = value
    return kept
