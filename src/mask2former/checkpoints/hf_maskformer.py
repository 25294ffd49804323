"""Hugging Face MaskFormer checkpoints: load the ``transformers`` layout into our modules and save it back.

The translation is one explicit table of key prefixes (``_RENAMES``), read in both directions, plus:

- the DETR decoder's separate q/k/v projections of self- and cross-attention (``in_proj`` packed in ours, the layout
  of :class:`~mask2former.modeling.transformer_decoder.Attention`);
- the backbone. ``transformers`` always builds MaskFormer's Swin as ``MaskFormerSwinBackbone`` (also when the
  config's backbone ``model_type`` is "swin", as in the released files), whose keys are those of ``SwinBackbone``
  under an extra ``model.`` (``encoder.model.embeddings``, ``encoder.model.encoder.layers``), with the output norms
  as ``hidden_states_norms.{i}``, the ``relative_position_index`` buffers saved, and an unused final
  ``model.layernorm``. Both layouts load (told by the keys); we save the MaskFormerSwin one, which is what
  ``transformers`` loads. A ResNet backbone has the layout of Mask2Former's (see ``checkpoints/hf.py``).

The helpers shared with Mask2Former (prefix rules, key check, hub resolution, file reading) come from
:mod:`mask2former.checkpoints.hf`.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import MaskFormerConfig, SwinConfig
from ..modeling.backbones.swin import _relative_position_index
from ..modeling.maskformer import MaskFormerForInstanceSegmentation
from .hf import (
    _compile,
    _rename,
    backbone_keys_from_transformers,
    backbone_keys_to_transformers,
    check_state_dict,
    resolve_checkpoint,
)
from .io import SAFETENSORS_NAME, load_weights, save_safetensors

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "model.pixel_level_module.encoder."
_DECODER = "model.transformer_module.decoder.layers.{n}."

# (transformers key prefix, our key prefix); "{n}" stands for a layer number. The first match wins.
_RENAMES: list[tuple[str, str]] = [
    # FPN pixel decoder
    ("model.pixel_level_module.decoder.fpn.stem.", "pixel_decoder.stem."),
    ("model.pixel_level_module.decoder.fpn.layers.{n}.proj.", "pixel_decoder.lateral_convs.{n}."),
    ("model.pixel_level_module.decoder.fpn.layers.{n}.block.", "pixel_decoder.output_convs.{n}."),
    ("model.pixel_level_module.decoder.mask_projection.", "pixel_decoder.mask_projection."),
    # DETR transformer decoder (q_proj/k_proj/v_proj are packed after renaming)
    ("model.transformer_module.input_projection.", "transformer_decoder.input_projection."),
    ("model.transformer_module.queries_embedder.", "transformer_decoder.query_positions."),
    (_DECODER + "self_attn.", "transformer_decoder.layers.{n}.self_attn."),
    (_DECODER + "self_attn_layer_norm.", "transformer_decoder.layers.{n}.norm1."),
    (_DECODER + "encoder_attn.", "transformer_decoder.layers.{n}.cross_attn."),
    (_DECODER + "encoder_attn_layer_norm.", "transformer_decoder.layers.{n}.norm2."),
    (_DECODER + "fc1.", "transformer_decoder.layers.{n}.linear1."),
    (_DECODER + "fc2.", "transformer_decoder.layers.{n}.linear2."),
    (_DECODER + "final_layer_norm.", "transformer_decoder.layers.{n}.norm3."),
    ("model.transformer_module.decoder.layernorm.", "transformer_decoder.norm."),
    # heads
    ("class_predictor.", "class_head."),
    ("mask_embedder.{n}.0.", "mask_head.layers.{n}."),
]

# Saved by transformers, not part of the network: the loss's class weights (derived from the config).
_IGNORED_ON_LOAD = ("criterion.empty_weight",)

_FORWARD = [(_compile(theirs), ours) for theirs, ours in _RENAMES]
_BACKWARD = [(_compile(ours), theirs) for theirs, ours in _RENAMES]

_PROJECTION = re.compile(r"(transformer_decoder\.layers\.\d+\.(?:self|cross)_attn)\.([qkv])_proj\.(weight|bias)$")
_PACKED = re.compile(r"(transformer_decoder\.layers\.\d+\.(?:self|cross)_attn)\.in_proj_(weight|bias)$")
_MASKFORMER_SWIN_NORM = re.compile(r"hidden_states_norms\.stage(\d+)\.")


def _backbone_from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Our backbone keys (without ``backbone.``) for the entries under ``BACKBONE_PREFIX``, either Swin layout."""
    backbone = {}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX + "model."):  # MaskFormerSwinBackbone: its SwinModel is "model"
            key = BACKBONE_PREFIX + "swin." + key[len(BACKBONE_PREFIX + "model.") :]
        backbone[key] = value
    return backbone_keys_from_transformers(backbone, BACKBONE_PREFIX)


def _backbone_to_transformers(state: dict[str, Tensor], config: MaskFormerConfig) -> dict[str, Tensor]:
    """transformers' keys (under ``BACKBONE_PREFIX``) for our backbone state (without ``backbone.``)."""
    backbone_config = config.backbone_config
    theirs = backbone_keys_to_transformers(state, "", backbone_config.model_type)
    if not isinstance(backbone_config, SwinConfig):
        return {BACKBONE_PREFIX + key: value for key, value in theirs.items()}
    out = {}
    for key, value in theirs.items():
        match = _MASKFORMER_SWIN_NORM.match(key)
        if match:  # hidden_states_norms.stage{k} -> hidden_states_norms.{k - 1}
            key = f"hidden_states_norms.{int(match[1]) - 1}." + key[match.end() :]
        else:
            key = "model." + key
        out[BACKBONE_PREFIX + key] = value
    # What MaskFormerSwinBackbone also saves, so that transformers finds every key: the (persistent) relative
    # position indices and the final LayerNorm of its SwinModel, which the backbone does not use.
    index = _relative_position_index(backbone_config.window_size)
    for stage, depth in enumerate(backbone_config.depths):
        for block in range(depth):
            name = f"model.encoder.layers.{stage}.blocks.{block}.attention.self.relative_position_index"
            out[BACKBONE_PREFIX + name] = index.clone()
    out[BACKBONE_PREFIX + "model.layernorm.weight"] = torch.ones(backbone_config.hidden_size)
    out[BACKBONE_PREFIX + "model.layernorm.bias"] = torch.zeros(backbone_config.hidden_size)
    return out


def state_dict_from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Translate a ``transformers`` MaskFormer state dict (saved layout) into our key layout.

    Keys that no rule knows are kept as they are, so the key check reports them as unexpected.
    """
    if not any(key.startswith("model.") for key in state):  # a MaskFormerModel checkpoint: no "model." prefix
        state = {f"model.{key}": value for key, value in state.items()}
    ours = {f"backbone.{key}": value for key, value in _backbone_from_transformers(state).items()}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX) or key in _IGNORED_ON_LOAD:
            continue
        key = _rename(key, _FORWARD) or key
        match = _PROJECTION.match(key)
        if match:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            ours[key] = value
    for (module, kind), pieces in parts.items():
        if set(pieces) == {"q", "k", "v"}:
            ours[f"{module}.in_proj_{kind}"] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])  # rows q, k, v
        else:  # incomplete: keep as is so that the key check reports it
            ours.update({f"{module}.{name}_proj.{kind}": value for name, value in pieces.items()})
    return ours


def state_dict_to_transformers(state: dict[str, Tensor], config: MaskFormerConfig) -> dict[str, Tensor]:
    """Translate our state dict into the layout ``transformers`` saves and loads."""
    backbone = {key[len("backbone.") :]: value for key, value in state.items() if key.startswith("backbone.")}
    theirs = _backbone_to_transformers(backbone, config)
    for key, value in state.items():
        if key.startswith("backbone."):
            continue
        match = _PACKED.match(key)
        pieces = zip("qkv", value.chunk(3)) if match else [(None, value)]
        for name, piece in pieces:
            ours = f"{match[1]}.{name}_proj.{match[2]}" if match else key
            renamed = _rename(ours, _BACKWARD)
            if renamed is None:
                raise ValueError(f"no transformers name for our parameter {key!r}")
            theirs[renamed] = piece.clone() if match else piece
    if "class_predictor.weight" in theirs:
        empty_weight = torch.ones(config.num_labels + 1)
        empty_weight[-1] = config.no_object_weight
        theirs["criterion.empty_weight"] = empty_weight
    else:  # a MaskFormerModel: transformers' base model has no "model." prefix
        theirs = {key.removeprefix("model."): value for key, value in theirs.items()}
    return theirs


def load_pretrained(
    cls: type,
    path_or_hub_id: str | os.PathLike,
    *,
    num_labels: int | None = None,
    id2label: dict[int, str] | None = None,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    map_location: str | torch.device | None = None,
) -> Any:
    """Build ``cls`` from a MaskFormer checkpoint folder or hub id in the Hugging Face layout and load its weights.

    Args:
        cls: ``MaskFormerForInstanceSegmentation`` or ``MaskFormerModel``.
        path_or_hub_id: a folder with ``config.json`` and weights, or a hub id such as
            ``facebook/maskformer-swin-base-ade``.
        num_labels, id2label: fine-tune on other classes: the class head is re-initialized (and a warning says so)
            when they change the number of classes.
        revision, cache_dir: passed to ``huggingface_hub`` for hub ids.
        map_location: device for the model (default: CPU).

    Raises:
        ValueError: the checkpoint is not a MaskFormer one (e.g. a Mask2Former ``config.json``), or its weights do
            not fit its config (the message lists the missing, unexpected and wrongly shaped keys).
    """
    folder = resolve_checkpoint(path_or_hub_id, revision=revision, cache_dir=cache_dir)
    try:
        config = MaskFormerConfig.from_pretrained(folder)
    except ValueError as error:
        raise ValueError(f"cannot load {str(path_or_hub_id)!r} as {cls.__name__}: {error}") from error
    state = state_dict_from_transformers(load_weights(folder))
    has_heads = issubclass(cls, MaskFormerForInstanceSegmentation)
    if not has_heads:
        state = {key: value for key, value in state.items() if not key.startswith(("class_head.", "mask_head."))}
    if id2label is not None or (num_labels is not None and num_labels != config.num_labels):
        if id2label is None:
            id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
        id2label = {int(k): v for k, v in id2label.items()}
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"num_labels={num_labels} does not match id2label with {len(id2label)} entries")
        checkpoint_labels = config.num_labels
        reinitialize = has_heads and len(id2label) != checkpoint_labels
        config.id2label, config.num_labels = id2label, len(id2label)
        model = cls.from_config(config)
        if reinitialize:
            logger.warning(
                "re-initializing the class head of %s: the checkpoint has %d classes, %d were asked for",
                path_or_hub_id,
                checkpoint_labels,
                len(id2label),
            )
            state.update({f"class_head.{key}": value for key, value in model.class_head.state_dict().items()})
    else:
        model = cls.from_config(config)
    check_state_dict(model, state, str(folder))
    model.load_state_dict(state, strict=True)
    model.eval()
    if map_location is not None:
        model.to(map_location)
    return model


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` in the ``transformers`` layout."""
    config = getattr(model, "config", None)
    if not isinstance(config, MaskFormerConfig):
        raise ValueError("the model has no MaskFormerConfig: build it with from_config or from_pretrained to save it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict_to_transformers(model.state_dict(), config), directory / SAFETENSORS_NAME)
    config.save_pretrained(directory)
