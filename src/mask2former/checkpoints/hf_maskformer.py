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

Loading, saving and the translation steps shared with Mask2Former (prefix rules, q/k/v packing, key check, hub
resolution) are :class:`mask2former.checkpoints.hf.TransformersLayout`; this module gives it MaskFormer's pieces.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from torch import Tensor, nn

from ..config import MaskFormerConfig, SwinConfig
from ..modeling.backbones.swin import _relative_position_index
from .hf import BACKBONE_PREFIX, TransformersLayout, backbone_keys_from_transformers, backbone_keys_to_transformers

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


LAYOUT = TransformersLayout(
    config_class=MaskFormerConfig,
    renames=_RENAMES,
    packed_attention=r"transformer_decoder\.layers\.\d+\.(?:self|cross)_attn",
    backbone_from_transformers=_backbone_from_transformers,
    backbone_to_transformers=_backbone_to_transformers,
)


def state_dict_from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Translate a ``transformers`` MaskFormer state dict (saved layout) into our key layout.

    Keys that no rule knows are kept as they are, so the key check reports them as unexpected.
    """
    return LAYOUT.from_transformers(state)


def state_dict_to_transformers(state: dict[str, Tensor], config: MaskFormerConfig) -> dict[str, Tensor]:
    """Translate our state dict into the layout ``transformers`` saves and loads."""
    return LAYOUT.to_transformers(state, config)


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
    return LAYOUT.load(
        cls,
        path_or_hub_id,
        num_labels=num_labels,
        id2label=id2label,
        revision=revision,
        cache_dir=cache_dir,
        map_location=map_location,
    )


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` in the ``transformers`` layout."""
    LAYOUT.save(model, directory)
