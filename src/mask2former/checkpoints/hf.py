"""Hugging Face checkpoints: load the released ``transformers`` layout into our modules and save it back.

The translation is one explicit table of key prefixes (``_RENAMES``), read in both directions, plus two structural
steps: the Swin backbone's separate query/key/value (fused ``qkv`` in ours, see ``backbones/swin.py``) and the
decoder self-attention's separate q/k/v projections (packed ``in_proj`` in ours). A ResNet backbone's keys follow the
table in ``backbones/resnet.py`` (``num_batches_tracked`` dropped on load, written as 0 on save). After translation
every key and shape is checked against the model and a mismatch raises one error that lists all offenders.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import CONFIG_NAME, Mask2FormerConfig
from ..modeling.mask2former import Mask2FormerForUniversalSegmentation
from ..modeling.backbones.resnet import resnet_keys_from_transformers, resnet_keys_to_transformers
from ..modeling.backbones.swin import swin_keys_from_transformers, swin_keys_to_transformers
from .io import SAFETENSORS_NAME, load_weights, save_safetensors

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "model.pixel_level_module.encoder."

# (transformers key prefix, our key prefix); "{n}" stands for a layer number. The first match wins.
_RENAMES: list[tuple[str, str]] = [
    # pixel decoder
    ("model.pixel_level_module.decoder.level_embed", "pixel_decoder.level_embed"),
    ("model.pixel_level_module.decoder.input_projections.", "pixel_decoder.input_projections."),
    ("model.pixel_level_module.decoder.encoder.layers.{n}.self_attn.", "pixel_decoder.encoder.{n}.self_attn."),
    ("model.pixel_level_module.decoder.encoder.layers.{n}.self_attn_layer_norm.", "pixel_decoder.encoder.{n}.norm1."),
    ("model.pixel_level_module.decoder.encoder.layers.{n}.fc1.", "pixel_decoder.encoder.{n}.linear1."),
    ("model.pixel_level_module.decoder.encoder.layers.{n}.fc2.", "pixel_decoder.encoder.{n}.linear2."),
    ("model.pixel_level_module.decoder.encoder.layers.{n}.final_layer_norm.", "pixel_decoder.encoder.{n}.norm2."),
    ("model.pixel_level_module.decoder.mask_projection.", "pixel_decoder.mask_projection."),
    ("model.pixel_level_module.decoder.adapter_1.", "pixel_decoder.lateral_convs.0."),
    ("model.pixel_level_module.decoder.layer_1.", "pixel_decoder.output_convs.0."),
    # transformer decoder
    ("model.transformer_module.queries_embedder.", "transformer_decoder.query_positions."),
    ("model.transformer_module.queries_features.", "transformer_decoder.query_features."),
    ("model.transformer_module.level_embed.", "transformer_decoder.level_embed."),
    ("model.transformer_module.input_projections.", "transformer_decoder.input_projections."),
    ("model.transformer_module.decoder.layers.{n}.cross_attn.", "transformer_decoder.layers.{n}.cross_attn."),
    ("model.transformer_module.decoder.layers.{n}.cross_attn_layer_norm.", "transformer_decoder.layers.{n}.norm1."),
    ("model.transformer_module.decoder.layers.{n}.self_attn.", "transformer_decoder.layers.{n}.self_attn."),
    ("model.transformer_module.decoder.layers.{n}.self_attn_layer_norm.", "transformer_decoder.layers.{n}.norm2."),
    ("model.transformer_module.decoder.layers.{n}.fc1.", "transformer_decoder.layers.{n}.linear1."),
    ("model.transformer_module.decoder.layers.{n}.fc2.", "transformer_decoder.layers.{n}.linear2."),
    ("model.transformer_module.decoder.layers.{n}.final_layer_norm.", "transformer_decoder.layers.{n}.norm3."),
    ("model.transformer_module.decoder.layernorm.", "transformer_decoder.norm."),
    ("model.transformer_module.decoder.mask_predictor.mask_embedder.{n}.0.", "transformer_decoder.mask_head.layers.{n}."),
    # class head
    ("class_predictor.", "class_head."),
]

# Saved by transformers, not part of the network: the loss's class weights (derived from the config).
_IGNORED_ON_LOAD = ("criterion.empty_weight",)


def backbone_keys_from_transformers(state: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Our backbone keys (without ``backbone.``) for the entries under ``prefix``: ResNet or Swin, told by the keys.

    transformers' ResNet is the only backbone with an ``embedder.``; see ``backbones/resnet.py`` and
    ``backbones/swin.py`` for the tables.
    """
    if any(key.startswith(prefix + "embedder.") for key in state):
        return resnet_keys_from_transformers(state, prefix)
    return swin_keys_from_transformers(state, prefix)


def backbone_keys_to_transformers(state: dict[str, Tensor], prefix: str, model_type: str) -> dict[str, Tensor]:
    """transformers' keys (under ``prefix``) for our backbone state (without ``backbone.``) of ``model_type``."""
    if model_type == "resnet":
        return resnet_keys_to_transformers(state, prefix)
    return swin_keys_to_transformers(state, prefix)


def _compile(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(r"\{n\}", r"(?P<n>\d+)"))


_FORWARD = [(_compile(theirs), ours) for theirs, ours in _RENAMES]
_BACKWARD = [(_compile(ours), theirs) for theirs, ours in _RENAMES]


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.replace("{n}", match.groupdict().get("n") or "") + key[match.end() :]
    return None


def state_dict_from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Translate a ``transformers`` Mask2Former state dict (saved layout) into our key layout.

    Keys that no rule knows are kept as they are, so the key check reports them as unexpected.
    """
    if not any(key.startswith("model.") for key in state):  # a Mask2FormerModel checkpoint: no "model." prefix
        state = {f"model.{key}": value for key, value in state.items()}
    ours = {f"backbone.{key}": value for key, value in backbone_keys_from_transformers(state, BACKBONE_PREFIX).items()}
    for key, value in state.items():
        if key.startswith(BACKBONE_PREFIX) or key in _IGNORED_ON_LOAD:
            continue
        ours[_rename(key, _FORWARD) or key] = value
    return _pack_self_attention(ours)


def state_dict_to_transformers(state: dict[str, Tensor], config: Mask2FormerConfig) -> dict[str, Tensor]:
    """Translate our state dict into the layout ``transformers`` saves and loads."""
    backbone = {key[len("backbone.") :]: value for key, value in state.items() if key.startswith("backbone.")}
    theirs = backbone_keys_to_transformers(backbone, BACKBONE_PREFIX, config.backbone_config.model_type)
    for key, value in _unpack_self_attention(state).items():
        if key.startswith("backbone."):
            continue
        renamed = _rename(key, _BACKWARD)
        if renamed is None:
            raise ValueError(f"no transformers name for our parameter {key!r}")
        theirs[renamed] = value
    if "class_predictor.weight" in theirs:
        empty_weight = torch.ones(config.num_labels + 1)
        empty_weight[-1] = config.no_object_weight
        theirs["criterion.empty_weight"] = empty_weight
    else:  # a Mask2FormerModel: transformers' base model has no "model." prefix
        theirs = {key.removeprefix("model."): value for key, value in theirs.items()}
    return theirs


_SELF_ATTENTION = re.compile(r"(transformer_decoder\.layers\.\d+\.self_attn)\.([qkv])_proj\.(weight|bias)$")


def _pack_self_attention(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """q_proj/k_proj/v_proj -> packed in_proj_weight/in_proj_bias (rows ordered q, k, v)."""
    packed: dict[str, Tensor] = {}
    parts: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        match = _SELF_ATTENTION.match(key)
        if match:
            parts.setdefault((match[1], match[3]), {})[match[2]] = value
        else:
            packed[key] = value
    for (module, kind), pieces in parts.items():
        if set(pieces) != {"q", "k", "v"}:
            for name, value in pieces.items():  # incomplete: keep as is so the key check reports it
                packed[f"{module}.{name}_proj.{kind}"] = value
            continue
        packed[f"{module}.in_proj_{kind}"] = torch.cat([pieces["q"], pieces["k"], pieces["v"]])
    return packed


def _unpack_self_attention(state: dict[str, Tensor]) -> dict[str, Tensor]:
    unpacked: dict[str, Tensor] = {}
    for key, value in state.items():
        match = re.match(r"(transformer_decoder\.layers\.\d+\.self_attn)\.in_proj_(weight|bias)$", key)
        if match:
            for name, piece in zip("qkv", value.chunk(3)):
                unpacked[f"{match[1]}.{name}_proj.{match[2]}"] = piece.clone()
        else:
            unpacked[key] = value
    return unpacked


def check_state_dict(model: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Raise one ValueError listing missing, unexpected and wrongly shaped keys, if there are any."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{key}: checkpoint {tuple(state[key].shape)}, model {tuple(expected[key].shape)}"
        for key in set(state) & set(expected)
        if state[key].shape != expected[key].shape
    )
    if missing or unexpected or wrong_shape:
        lines = [f"the weights in {source} do not fit the model built from its config:"]
        for title, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}):")
                lines.extend(f"    {key}" for key in keys)
        raise ValueError("\n".join(lines))


def resolve_checkpoint(
    path_or_hub_id: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """A local folder as is, or a Hugging Face hub id resolved through the local cache, then the network."""
    path = Path(path_or_hub_id)
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{str(path)!r} is a file; expected a checkpoint folder with {CONFIG_NAME}")
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in the checkpoint folder {str(path)!r}")
        return path
    hub_id = str(path_or_hub_id)
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", hub_id):
        raise FileNotFoundError(f"{hub_id!r} is neither an existing folder nor a Hugging Face hub id (org/name)")
    from huggingface_hub import snapshot_download

    patterns = [CONFIG_NAME, "preprocessor_config.json", "*.safetensors", "*.safetensors.index.json", "*.bin", "*.bin.index.json"]
    try:
        return Path(
            snapshot_download(hub_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns, local_files_only=True)
        )
    except Exception:  # not cached: try the network below
        pass
    try:
        return Path(snapshot_download(hub_id, revision=revision, cache_dir=cache_dir, allow_patterns=patterns))
    except Exception as error:
        raise FileNotFoundError(
            f"could not find {hub_id!r} in the Hugging Face cache, nor download it ({type(error).__name__}: {error}). "
            f"Download it on a machine with network access, e.g. `hf download {hub_id}` (or "
            f"`huggingface-cli download {hub_id}`), and copy the cache or the folder here; then pass the folder's path "
            f"or set HF_HUB_CACHE."
        ) from error


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
    """Build ``cls`` from a checkpoint folder or hub id in the Hugging Face layout and load its weights.

    Args:
        cls: ``Mask2FormerForUniversalSegmentation`` or ``Mask2FormerModel``.
        path_or_hub_id: a folder with ``config.json`` and weights, or a hub id such as
            ``facebook/mask2former-swin-tiny-coco-instance``.
        num_labels, id2label: fine-tune on other classes: the class head is re-initialized (and a warning says so)
            when they change the number of classes.
        revision, cache_dir: passed to ``huggingface_hub`` for hub ids.
        map_location: device for the model (default: CPU).
    """
    folder = resolve_checkpoint(path_or_hub_id, revision=revision, cache_dir=cache_dir)
    config = Mask2FormerConfig.from_pretrained(folder)
    state = state_dict_from_transformers(load_weights(folder))
    has_class_head = issubclass(cls, Mask2FormerForUniversalSegmentation)
    if not has_class_head:
        state = {key: value for key, value in state.items() if not key.startswith("class_head.")}
    new_labels = id2label is not None or (num_labels is not None and num_labels != config.num_labels)
    if new_labels:
        id2label = {int(k): v for k, v in id2label.items()} if id2label else {i: f"LABEL_{i}" for i in range(num_labels)}
        if num_labels is not None and num_labels != len(id2label):
            raise ValueError(f"num_labels={num_labels} does not match id2label with {len(id2label)} entries")
        if len(id2label) != config.num_labels and has_class_head:
            logger.warning(
                "re-initializing the class head of %s: the checkpoint has %d classes, %d were asked for",
                path_or_hub_id,
                config.num_labels,
                len(id2label),
            )
            state = {key: value for key, value in state.items() if not key.startswith("class_head.")}
        config.id2label = id2label
        config.num_labels = len(id2label)
    model = cls.from_config(config)
    if new_labels and has_class_head and "class_head.weight" not in state:
        state.update({f"class_head.{key}": value for key, value in model.class_head.state_dict().items()})
    check_state_dict(model, state, str(folder))
    model.load_state_dict(state, strict=True)
    model.eval()
    if map_location is not None:
        model.to(map_location)
    return model


def save_pretrained(model: nn.Module, directory: str | os.PathLike) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``directory`` in the ``transformers`` layout."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no config: build it with from_config or from_pretrained to save it")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_safetensors(state_dict_to_transformers(model.state_dict(), config), directory / SAFETENSORS_NAME)
    config.save_pretrained(directory)
