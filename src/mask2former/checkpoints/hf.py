"""Hugging Face checkpoints: load the released ``transformers`` layout into our modules and save it back.

The translation is one explicit table of key prefixes (``_RENAMES``), read in both directions, plus two structural
steps: the Swin backbone's separate query/key/value (fused ``qkv`` in ours, see ``backbones/swin.py``) and the
decoder self-attention's separate q/k/v projections (packed ``in_proj`` in ours). A ResNet backbone's keys follow the
table in ``backbones/resnet.py`` (``num_batches_tracked`` dropped on load, written as 0 on save). After translation
every key and shape is checked against the model and a mismatch raises one error that lists all offenders.

The load and save path itself (:class:`TransformersLayout`) is shared with MaskFormer (``hf_maskformer.py``), which
gives it its own table, packed attention modules and backbone layout.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import CONFIG_NAME, Mask2FormerConfig
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

# Our heads' key prefixes: a model without them (a base model) leaves the checkpoint's out.
_HEADS = ("class_head.", "mask_head.")


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


def _rename(key: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            return template.replace("{n}", match.groupdict().get("n") or "") + key[match.end() :]
    return None


class TransformersLayout:
    """How one architecture's ``transformers`` checkpoint maps onto our modules, and the one load and save path that
    Mask2Former (here) and MaskFormer (``hf_maskformer.py``) share.

    Args:
        config_class: the config class that reads and writes ``config.json``.
        renames: (transformers key prefix, our key prefix) pairs outside the backbone; "{n}" stands for a layer
            number; the first match wins.
        packed_attention: regex of our attention modules whose q/k/v projections are packed in ``in_proj_weight``
            and ``in_proj_bias`` (rows ordered q, k, v); ``transformers`` has separate ``{q,k,v}_proj``.
        backbone_from_transformers: the checkpoint's state -> our backbone keys (without ``backbone.``) for the
            entries under ``BACKBONE_PREFIX``.
        backbone_to_transformers: (our backbone state without ``backbone.``, config) -> transformers' keys.
    """

    def __init__(
        self,
        *,
        config_class: type,
        renames: list[tuple[str, str]],
        packed_attention: str,
        backbone_from_transformers: Callable[[dict[str, Tensor]], dict[str, Tensor]],
        backbone_to_transformers: Callable[[dict[str, Tensor], Any], dict[str, Tensor]],
    ) -> None:
        self.config_class = config_class
        self.backbone_from_transformers = backbone_from_transformers
        self.backbone_to_transformers = backbone_to_transformers
        self._forward = [(_compile(theirs), ours) for theirs, ours in renames]
        self._backward = [(_compile(ours), theirs) for theirs, ours in renames]
        self._projection = re.compile(rf"({packed_attention})\.([qkv])_proj\.(weight|bias)$")
        self._packed = re.compile(rf"({packed_attention})\.in_proj_(weight|bias)$")

    def from_transformers(self, state: dict[str, Tensor]) -> dict[str, Tensor]:
        """Translate a ``transformers`` state dict (saved layout) into our key layout.

        Keys that no rule knows are kept as they are, so the key check reports them as unexpected.
        """
        if not any(key.startswith("model.") for key in state):  # a base model's checkpoint: no "model." prefix
            state = {f"model.{key}": value for key, value in state.items()}
        ours = {f"backbone.{key}": value for key, value in self.backbone_from_transformers(state).items()}
        parts: dict[tuple[str, str], dict[str, Tensor]] = {}
        for key, value in state.items():
            if key.startswith(BACKBONE_PREFIX) or key in _IGNORED_ON_LOAD:
                continue
            key = _rename(key, self._forward) or key
            match = self._projection.match(key)
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

    def to_transformers(self, state: dict[str, Tensor], config: Any) -> dict[str, Tensor]:
        """Translate our state dict into the layout ``transformers`` saves and loads."""
        backbone = {key[len("backbone.") :]: value for key, value in state.items() if key.startswith("backbone.")}
        theirs = self.backbone_to_transformers(backbone, config)
        for key, value in state.items():
            if key.startswith("backbone."):
                continue
            match = self._packed.match(key)
            pieces = zip("qkv", value.chunk(3)) if match else [(None, value)]
            for name, piece in pieces:
                ours = f"{match[1]}.{name}_proj.{match[2]}" if match else key
                renamed = _rename(ours, self._backward)
                if renamed is None:
                    raise ValueError(f"no transformers name for our parameter {key!r}")
                theirs[renamed] = piece.clone() if match else piece
        if "class_predictor.weight" in theirs:
            empty_weight = torch.ones(config.num_labels + 1)
            empty_weight[-1] = config.no_object_weight
            theirs["criterion.empty_weight"] = empty_weight
        else:  # a base model: transformers' base model has no "model." prefix
            theirs = {key.removeprefix("model."): value for key, value in theirs.items()}
        return theirs

    def load(
        self,
        cls: type,
        path_or_hub_id: str | os.PathLike,
        *,
        num_labels: int | None = None,
        id2label: dict[int, str] | None = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        map_location: str | torch.device | None = None,
    ) -> Any:
        """Build ``cls`` from a checkpoint folder or hub id and load its weights (see :func:`load_pretrained`)."""
        folder = resolve_checkpoint(path_or_hub_id, revision=revision, cache_dir=cache_dir)
        try:
            config = self.config_class.from_pretrained(folder)
        except ValueError as error:
            raise ValueError(f"cannot load {str(path_or_hub_id)!r} as {cls.__name__}: {error}") from error
        state = self.from_transformers(load_weights(folder))
        checkpoint_labels = config.num_labels
        if id2label is not None or (num_labels is not None and num_labels != config.num_labels):
            if id2label is None:
                id2label = {i: f"LABEL_{i}" for i in range(num_labels)}
            id2label = {int(k): v for k, v in id2label.items()}
            if num_labels is not None and num_labels != len(id2label):
                raise ValueError(f"num_labels={num_labels} does not match id2label with {len(id2label)} entries")
            config.id2label, config.num_labels = id2label, len(id2label)
        model = cls.from_config(config)
        expected = model.state_dict()
        absent = tuple(prefix for prefix in _HEADS if not any(key.startswith(prefix) for key in expected))
        state = {key: value for key, value in state.items() if not key.startswith(absent)}
        if "class_head.weight" in expected and config.num_labels != checkpoint_labels:
            logger.warning(
                "re-initializing the class head of %s: the checkpoint has %d classes, %d were asked for",
                path_or_hub_id,
                checkpoint_labels,
                config.num_labels,
            )
            state.update({f"class_head.{key}": value for key, value in model.class_head.state_dict().items()})
        check_state_dict(model, state, str(folder))
        model.load_state_dict(state, strict=True)
        model.eval()
        if map_location is not None:
            model.to(map_location)
        return model

    def save(self, model: nn.Module, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` into ``directory`` in the ``transformers`` layout."""
        config = getattr(model, "config", None)
        if not isinstance(config, self.config_class):
            name = self.config_class.__name__
            raise ValueError(f"the model has no {name}: build it with from_config or from_pretrained to save it")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_safetensors(self.to_transformers(model.state_dict(), config), directory / SAFETENSORS_NAME)
        config.save_pretrained(directory)


LAYOUT = TransformersLayout(
    config_class=Mask2FormerConfig,
    renames=_RENAMES,
    packed_attention=r"transformer_decoder\.layers\.\d+\.self_attn",
    backbone_from_transformers=lambda state: backbone_keys_from_transformers(state, BACKBONE_PREFIX),
    backbone_to_transformers=lambda state, config: backbone_keys_to_transformers(
        state, BACKBONE_PREFIX, config.backbone_config.model_type
    ),
)


def state_dict_from_transformers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Translate a ``transformers`` Mask2Former state dict (saved layout) into our key layout.

    Keys that no rule knows are kept as they are, so the key check reports them as unexpected.
    """
    return LAYOUT.from_transformers(state)


def state_dict_to_transformers(state: dict[str, Tensor], config: Mask2FormerConfig) -> dict[str, Tensor]:
    """Translate our state dict into the layout ``transformers`` saves and loads."""
    return LAYOUT.to_transformers(state, config)


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

    Raises:
        ValueError: the checkpoint is not a Mask2Former one (e.g. a MaskFormer ``config.json``), or its weights do
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
