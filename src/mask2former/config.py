"""Model configs: dataclasses that read and write the Hugging Face ``config.json``.

Field names and defaults are those of ``transformers`` (``Mask2FormerConfig``, ``SwinConfig``) so that the released
checkpoints' files load unchanged and the files we write load in ``transformers``. Keys we do not model are kept in
``extra`` and written back, so a read/write round trip loses nothing.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_NAME = "config.json"

# Backbone model types whose config.json we read as a Swin config. "maskformer-swin" is what the MaskFormer
# checkpoints (and some converted Mask2Former ones) declare; the architecture is the same.
SWIN_MODEL_TYPES = ("swin", "maskformer-swin")

# Keys that transformers derives or writes for bookkeeping; we recompute them on write and never need them on read.
_DERIVED_KEYS = {"num_layers", "hidden_size", "stage_names", "out_indices", "num_labels", "transformers_version"}


@dataclass
class SwinConfig:
    """Swin Transformer backbone config (``transformers.SwinConfig`` fields and defaults)."""

    image_size: int = 224
    patch_size: int = 4
    num_channels: int = 3
    embed_dim: int = 96
    depths: list[int] = field(default_factory=lambda: [2, 2, 6, 2])
    num_heads: list[int] = field(default_factory=lambda: [3, 6, 12, 24])
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    hidden_dropout_prob: float = 0.0
    attention_probs_dropout_prob: float = 0.0
    drop_path_rate: float = 0.1
    hidden_act: str = "gelu"
    use_absolute_embeddings: bool = False
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-5
    encoder_stride: int = 32
    out_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "stage4"])
    model_type: str = "swin"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in SWIN_MODEL_TYPES:
            raise ValueError(f"backbone_config.model_type must be one of {SWIN_MODEL_TYPES}, got {self.model_type!r}")
        if len(self.depths) != len(self.num_heads):
            raise ValueError(
                f"backbone_config.depths and num_heads must have the same length, got {self.depths} and {self.num_heads}"
            )
        self.depths = [int(d) for d in self.depths]
        self.num_heads = [int(h) for h in self.num_heads]

    @property
    def hidden_size(self) -> int:
        """Channels of the last stage."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SwinConfig:
        """Build from a ``backbone_config`` dict as found in ``config.json``."""
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The ``backbone_config`` dict that ``transformers`` reads."""
        data = _to_dict(self)
        stage_names = ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]
        data["num_layers"] = len(self.depths)
        data["hidden_size"] = self.hidden_size
        data["stage_names"] = stage_names
        data["out_indices"] = [stage_names.index(name) for name in self.out_features]
        return data


class _ModelConfig:
    """What the Mask2Former and MaskFormer configs share: their classes (``id2label``, ``num_labels``) and reading and
    writing ``config.json`` through their ``from_dict`` and ``to_dict``."""

    def _check_labels(self) -> None:
        """``num_labels`` follows ``id2label`` when that is given (else 2); ``id2label`` defaults to ``LABEL_i``."""
        self.id2label = {int(k): str(v) for k, v in self.id2label.items()}
        if self.num_labels is None:
            self.num_labels = len(self.id2label) if self.id2label else 2
        if not self.id2label:
            self.id2label = {i: f"LABEL_{i}" for i in range(self.num_labels)}
        if len(self.id2label) != self.num_labels:
            raise ValueError(f"num_labels={self.num_labels} does not match id2label with {len(self.id2label)} entries")

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in self.id2label.items()}

    @staticmethod
    def _labels_from_dict(data: dict[str, Any]) -> None:
        id2label = data.get("id2label")
        if id2label is not None and "num_labels" not in data:
            data["num_labels"] = len(id2label)

    def _labels_to_dict(self, data: dict[str, Any]) -> None:
        data["id2label"] = {str(i): name for i, name in sorted(self.id2label.items())}
        data["label2id"] = {name: i for i, name in sorted(self.id2label.items())}
        data.pop("num_labels")

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> Any:
        """Read ``config.json`` from a folder (or the file itself)."""
        path = Path(path)
        file = path / CONFIG_NAME if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {str(path)!r}: expected a checkpoint folder with a config.json")
        with open(file, encoding="utf-8") as handle:
            return cls.from_dict(json.load(handle))

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``config.json`` into ``directory`` (created if needed); returns the file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / CONFIG_NAME
        with open(file, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return file


@dataclass
class Mask2FormerConfig(_ModelConfig):
    """Mask2Former config (``transformers.Mask2FormerConfig`` fields and defaults).

    The default backbone is the one ``transformers`` uses (Swin-S shaped: depths [2, 2, 18, 2], drop path 0.3).
    ``num_labels`` is the number of classes K without "no object"; it follows ``id2label`` when that is given.
    """

    backbone_config: SwinConfig | ResNetConfig = field(
        default_factory=lambda: SwinConfig(depths=[2, 2, 18, 2], drop_path_rate=0.3)
    )
    feature_size: int = 256
    mask_feature_size: int = 256
    hidden_dim: int = 256
    encoder_feedforward_dim: int = 1024
    activation_function: str = "relu"
    encoder_layers: int = 6
    decoder_layers: int = 10
    num_attention_heads: int = 8
    dropout: float = 0.0
    dim_feedforward: int = 2048
    pre_norm: bool = False
    enforce_input_projection: bool = False
    common_stride: int = 4
    ignore_value: int = 255
    num_queries: int = 100
    no_object_weight: float = 0.1
    class_weight: float = 2.0
    mask_weight: float = 5.0
    dice_weight: float = 5.0
    train_num_points: int = 12544
    oversample_ratio: float = 3.0
    importance_sample_ratio: float = 0.75
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    use_auxiliary_loss: bool = True
    feature_strides: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    output_auxiliary_logits: bool | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    num_labels: int | None = None
    model_type: str = "mask2former"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "mask2former":
            raise ValueError(f"model_type must be 'mask2former', got {self.model_type!r}")
        if isinstance(self.backbone_config, dict):
            self.backbone_config = backbone_config_from_dict(self.backbone_config)
        self._check_labels()
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_layers must be >= 1 (the initial prediction counts), got {self.decoder_layers}")
        self.feature_strides = [int(s) for s in self.feature_strides]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Mask2FormerConfig:
        """Build from the contents of a ``config.json``, tolerating the quirks of the released files."""
        data = dict(data)
        model_type = data.get("model_type", "mask2former")
        if model_type != "mask2former":
            hint = " (a MaskFormer checkpoint: load it with MaskFormerForInstanceSegmentation)"
            raise ValueError(
                f"config.json has model_type {model_type!r}; expected 'mask2former'"
                + (hint if model_type == "maskformer" else "")
            )
        # Older files spell enforce_input_projection as enforce_input_proj.
        if "enforce_input_proj" in data:
            legacy = data.pop("enforce_input_proj")
            data.setdefault("enforce_input_projection", legacy)
        backbone = data.get("backbone_config")
        if backbone is None:
            data.pop("backbone_config", None)
        elif isinstance(backbone, dict):
            data["backbone_config"] = backbone_config_from_dict(backbone)
        cls._labels_from_dict(data)
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents that ``transformers.Mask2FormerConfig`` reads back to the same values."""
        data = _to_dict(self)
        data["backbone_config"] = self.backbone_config.to_dict()
        self._labels_to_dict(data)
        return data


def _from_dict(cls: type, data: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
    known = {k: v for k, v in data.items() if k in names}
    extra = {k: v for k, v in data.items() if k not in names and k not in _DERIVED_KEYS and k != "label2id"}
    return cls(**known, extra=extra)


def _to_dict(config: Any) -> dict[str, Any]:
    data = dict(config.extra)
    for f in dataclasses.fields(config):
        if f.name != "extra":
            data[f.name] = getattr(config, f.name)
    return data


RESNET_MODEL_TYPES = ("resnet",)


@dataclass
class ResNetConfig:
    """ResNet backbone config (``transformers.ResNetConfig`` fields and defaults: ResNet-50).

    ``layer_type`` is ``"bottleneck"`` or ``"basic"``; ``downsample_in_bottleneck`` puts a stage's stride on the first
    1x1 convolution of its first block instead of the 3x3 one. As for :class:`SwinConfig`, ``out_features`` defaults
    to the four stages Mask2Former reads (``transformers``: the last stage only); a file that gives only
    ``out_indices`` is read through them.
    """

    num_channels: int = 3
    embedding_size: int = 64
    hidden_sizes: list[int] = field(default_factory=lambda: [256, 512, 1024, 2048])
    depths: list[int] = field(default_factory=lambda: [3, 4, 6, 3])
    layer_type: str = "bottleneck"
    hidden_act: str = "relu"
    downsample_in_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    out_features: list[str] = field(default_factory=lambda: ["stage1", "stage2", "stage3", "stage4"])
    model_type: str = "resnet"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type not in RESNET_MODEL_TYPES:
            raise ValueError(f"backbone_config.model_type must be 'resnet', got {self.model_type!r}")
        if self.layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"backbone_config.layer_type must be 'basic' or 'bottleneck', got {self.layer_type!r}")
        if len(self.depths) != len(self.hidden_sizes):
            raise ValueError(
                f"backbone_config.depths and hidden_sizes must have the same length, got {self.depths} and "
                f"{self.hidden_sizes}"
            )
        self.depths = [int(d) for d in self.depths]
        self.hidden_sizes = [int(h) for h in self.hidden_sizes]
        self.out_features = list(self.out_features)
        unknown = [name for name in self.out_features if name not in self.stage_names]
        if unknown:
            raise ValueError(f"backbone_config.out_features {unknown} are not among the stages {self.stage_names}")

    @property
    def stage_names(self) -> list[str]:
        return ["stem"] + [f"stage{i}" for i in range(1, len(self.depths) + 1)]

    @property
    def out_indices(self) -> list[int]:
        return [self.stage_names.index(name) for name in self.out_features]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResNetConfig:
        """Build from a ``backbone_config`` dict as found in ``config.json``."""
        data = dict(data)
        if data.get("out_features") is None:
            data.pop("out_features", None)
            if data.get("out_indices") is not None:
                stages = ["stem"] + [f"stage{i}" for i in range(1, len(data.get("depths", [3, 4, 6, 3])) + 1)]
                data["out_features"] = [stages[i] for i in data["out_indices"]]
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The ``backbone_config`` dict that ``transformers`` reads."""
        data = _to_dict(self)
        data["stage_names"] = self.stage_names
        data["out_indices"] = self.out_indices
        return data


def backbone_config_from_dict(data: dict[str, Any]) -> SwinConfig | ResNetConfig:
    """The backbone config class that a ``backbone_config`` dict's ``model_type`` names (Swin when absent)."""
    model_type = data.get("model_type", "swin")
    if model_type in SWIN_MODEL_TYPES:
        return SwinConfig.from_dict(data)
    if model_type in RESNET_MODEL_TYPES:
        return ResNetConfig.from_dict(data)
    raise ValueError(
        f"backbone_config.model_type {model_type!r} is not supported; expected one of "
        f"{SWIN_MODEL_TYPES + RESNET_MODEL_TYPES}"
    )


@dataclass
class DetrDecoderConfig:
    """The ``decoder_config`` of MaskFormer (``model_type`` "detr"; ``transformers.MaskFormerDetrConfig`` defaults).

    Only the fields MaskFormer's transformer decoder uses are modelled; the others (the DETR encoder's, the box losses',
    the DETR backbone's) are kept in ``extra`` and written back unchanged. ``auxiliary_loss=True`` makes
    ``transformers`` feed each layer the LayerNorm-ed output of the previous one; we do the same for parity.
    """

    num_queries: int = 100
    d_model: int = 256
    decoder_layers: int = 6
    decoder_attention_heads: int = 8
    decoder_ffn_dim: int = 2048
    activation_function: str = "relu"
    dropout: float = 0.1
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    auxiliary_loss: bool = False
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    model_type: str = "detr"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "detr":
            raise ValueError(f"decoder_config.model_type must be 'detr', got {self.model_type!r}")
        if self.decoder_layers < 1:
            raise ValueError(f"decoder_config.decoder_layers must be >= 1, got {self.decoder_layers}")
        if self.d_model % self.decoder_attention_heads != 0:
            raise ValueError(
                f"decoder_config.d_model ({self.d_model}) must be divisible by decoder_attention_heads "
                f"({self.decoder_attention_heads})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetrDecoderConfig:
        """Build from a ``decoder_config`` dict as found in ``config.json``."""
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The ``decoder_config`` dict that ``transformers`` reads."""
        return _to_dict(self)


# What transformers' MaskFormerConfig derives from its decoder_config and writes; recomputed there on read.
_MASKFORMER_DERIVED_KEYS = ("num_attention_heads", "num_hidden_layers")


def _maskformer_default_backbone() -> SwinConfig:
    # transformers' default: Swin-B shaped at 384 (facebook/maskformer-swin-base-ade).
    return SwinConfig(
        image_size=384, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
        drop_path_rate=0.3,
    )


@dataclass
class MaskFormerConfig(_ModelConfig):
    """MaskFormer config (``transformers.MaskFormerConfig`` fields and defaults).

    ``backbone_config`` is a :class:`SwinConfig` (``model_type`` "swin" or "maskformer-swin": the released files say
    "swin", ``transformers`` writes "maskformer-swin"; the network is the same) or a :class:`ResNetConfig`. As in
    ``transformers``, a Swin backbone always emits its four stages. ``num_labels`` is K without "no object".
    """

    backbone_config: SwinConfig | ResNetConfig = field(default_factory=_maskformer_default_backbone)
    decoder_config: DetrDecoderConfig = field(default_factory=DetrDecoderConfig)
    fpn_feature_size: int = 256
    mask_feature_size: int = 256
    no_object_weight: float = 0.1
    use_auxiliary_loss: bool = False
    init_std: float = 0.02
    init_xavier_std: float = 1.0
    dice_weight: float = 1.0
    cross_entropy_weight: float = 1.0
    mask_weight: float = 20.0
    output_auxiliary_logits: bool | None = None
    id2label: dict[int, str] = field(default_factory=dict)
    num_labels: int | None = None
    model_type: str = "maskformer"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.model_type != "maskformer":
            raise ValueError(f"model_type must be 'maskformer', got {self.model_type!r}")
        if isinstance(self.backbone_config, dict):
            self.backbone_config = backbone_config_from_dict(self.backbone_config)
        if isinstance(self.decoder_config, dict):
            self.decoder_config = DetrDecoderConfig.from_dict(self.decoder_config)
        if isinstance(self.backbone_config, SwinConfig):
            self.backbone_config.out_features = ["stage1", "stage2", "stage3", "stage4"]
        self._check_labels()

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MaskFormerConfig:
        """Build from the contents of a ``config.json`` (released files and what ``transformers`` writes)."""
        data = dict(data)
        model_type = data.get("model_type", "maskformer")
        if model_type != "maskformer":
            hint = " (a Mask2Former checkpoint: load it with Mask2FormerForUniversalSegmentation)"
            raise ValueError(
                f"config.json has model_type {model_type!r}; expected 'maskformer'"
                + (hint if model_type == "mask2former" else "")
            )
        for key in _MASKFORMER_DERIVED_KEYS:
            data.pop(key, None)
        for key in ("backbone_config", "decoder_config"):
            if data.get(key, ...) is None:  # transformers' defaults
                data.pop(key)
        cls._labels_from_dict(data)
        return _from_dict(cls, data)

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents that ``transformers.MaskFormerConfig`` reads back to the same values."""
        data = _to_dict(self)
        data["backbone_config"] = self.backbone_config.to_dict()
        data["decoder_config"] = self.decoder_config.to_dict()
        self._labels_to_dict(data)
        return data


__all__ = [
    "Mask2FormerConfig",
    "MaskFormerConfig",
    "DetrDecoderConfig",
    "SwinConfig",
    "ResNetConfig",
    "backbone_config_from_dict",
    "CONFIG_NAME",
]
