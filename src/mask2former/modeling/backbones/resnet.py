"""ResNet backbone (He et al., 2016) with frozen BatchNorm, as the original Mask2Former uses it.

The layout is detectron2's (``stem.conv1``, ``res2`` ... ``res5``, blocks with ``conv1``/``conv2``/``conv3`` and a
``shortcut``, each convolution carrying its ``norm``), so the original model zoo's weights need no renaming; the
network is the one of torchvision and ``transformers.ResNetBackbone``: a 7x7 stride-2 stem convolution, a 3x3
stride-2 max pool, then stages of bottleneck (or basic) blocks, the first block of every stage but the first
downsampling by 2.

Differences that are choices, not accidents:

- BatchNorm is frozen (:class:`FrozenBatchNorm2d`): the running statistics and the affine terms are buffers that
  neither the optimizer nor train mode changes, as in the original Mask2Former (``MODEL.RESNETS.NORM: FrozenBN``).
  ``transformers`` uses ``nn.BatchNorm2d``; in eval mode both compute the same function.
- Where a stage downsamples, the stride sits on the 3x3 convolution (torchvision "v1.5", detectron2
  ``STRIDE_IN_1X1: False``, ``transformers`` ``downsample_in_bottleneck=False``) unless ``stride_in_1x1=True``.
- As in ``transformers``, ``activation`` applies after the stem convolution and after each residual sum; the
  activations inside a block are always ReLU.

:func:`resnet_keys_from_transformers` and :func:`resnet_keys_to_transformers` translate to and from the checkpoint
layout ``transformers`` writes (``embedder.embedder.convolution``, ``encoder.stages.{s}.layers.{b}.layer.{k}``, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mask2former.modeling.backbones import FeatureInfo

# Activation names of transformers' ``hidden_act`` that we support (the released checkpoints all use "relu").
_ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "swish": nn.SiLU}
RESNET_ACTIVATIONS = tuple(_ACTIVATIONS)
BLOCK_TYPES = ("bottleneck", "basic")


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine terms: ``(x - running_mean) / sqrt(running_var + eps) * w + b``.

    The four tensors are buffers, so no optimizer updates them and train mode does not change them. The names are
    those of ``nn.BatchNorm2d``, so its state dict loads; its ``num_batches_tracked`` is accepted and ignored.

    Args:
        num_features: Channels C of the ``(B, C, H, W)`` input.
        eps: Added to the variance (``nn.BatchNorm2d``'s default, which ``transformers`` uses).
    """

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        # training=False: normalize with the stored statistics and never update them, whatever the module's mode.
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class _ConvNorm(nn.Conv2d):
    """A bias-free convolution followed by its frozen BatchNorm, named as detectron2 names them (``conv.norm``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False)
        self.norm = FrozenBatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(super().forward(x))


class _Stem(nn.Module):
    """7x7 stride-2 convolution, norm, activation, 3x3 stride-2 max pool: ``(B, C_in, H, W) -> (B, C, H/4, W/4)``."""

    def __init__(self, in_channels: int, out_channels: int, activation: str) -> None:
        super().__init__()
        self.conv1 = _ConvNorm(in_channels, out_channels, kernel_size=7, stride=2)
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activation(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class _BottleneckBlock(nn.Module):
    """1x1 reduce to ``out_channels / 4``, 3x3, 1x1 expand; plus the input (projected where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, stride_in_1x1: bool, activation: str) -> None:
        super().__init__()
        bottleneck = out_channels // 4
        self.conv1 = _ConvNorm(in_channels, bottleneck, kernel_size=1, stride=stride if stride_in_1x1 else 1)
        self.conv2 = _ConvNorm(bottleneck, bottleneck, kernel_size=3, stride=1 if stride_in_1x1 else stride)
        self.conv3 = _ConvNorm(bottleneck, out_channels, kernel_size=1)
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = _ConvNorm(in_channels, out_channels, kernel_size=1, stride=stride) if needs_projection else None
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.conv1(x))
        out = F.relu(self.conv2(out))
        out = self.conv3(out)
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.activation(out + residual)


class _BasicBlock(nn.Module):
    """Two 3x3 convolutions (the first strided); plus the input (projected where the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, stride_in_1x1: bool, activation: str) -> None:
        super().__init__()
        self.conv1 = _ConvNorm(in_channels, out_channels, kernel_size=3, stride=stride)
        self.conv2 = _ConvNorm(out_channels, out_channels, kernel_size=3)
        needs_projection = in_channels != out_channels or stride != 1
        self.shortcut = _ConvNorm(in_channels, out_channels, kernel_size=1, stride=stride) if needs_projection else None
        self.activation = _ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv2(F.relu(self.conv1(x)))
        residual = x if self.shortcut is None else self.shortcut(x)
        return self.activation(out + residual)


class ResNetBackbone(nn.Module):
    """ResNet feature extractor: ``(B, in_channels, H, W)`` -> the maps of the stages named by ``out_indices``.

    ResNet-50 is ``depths=[3, 4, 6, 3]``, ResNet-101 ``[3, 4, 23, 3]``, both with
    ``hidden_sizes=[256, 512, 1024, 2048]``, ``embedding_size=64`` and bottleneck blocks.

    Args:
        depths: Blocks per stage.
        hidden_sizes: Output channels per stage (for bottleneck blocks, 4x the inner width).
        embedding_size: Channels of the stem.
        in_channels: Channels of the input image.
        block_type: ``"bottleneck"`` (ResNet-50 and deeper) or ``"basic"`` (ResNet-18/34).
        stride_in_1x1: Put a bottleneck's stride on its first 1x1 convolution instead of the 3x3 one.
        downsample_in_first_stage: Let the first stage downsample by 2 too (output strides 8, 16, 32, 64).
        activation: Activation after the stem convolution and after every residual sum (``"relu"``, ``"gelu"``,
            ``"silu"``).
        out_indices: Which maps to return, in increasing order: 0 is the stem (after the max pool), ``i`` the
            output of stage ``i``.
    """

    def __init__(
        self,
        *,
        depths: Sequence[int],
        hidden_sizes: Sequence[int],
        embedding_size: int = 64,
        in_channels: int = 3,
        block_type: str = "bottleneck",
        stride_in_1x1: bool = False,
        downsample_in_first_stage: bool = False,
        activation: str = "relu",
        out_indices: Sequence[int] = (1, 2, 3, 4),
    ) -> None:
        super().__init__()
        if len(depths) != len(hidden_sizes):
            raise ValueError(
                f"depths and hidden_sizes must have the same length, got {list(depths)} and {list(hidden_sizes)}"
            )
        if block_type not in BLOCK_TYPES:
            raise ValueError(f"block_type must be one of {BLOCK_TYPES}, got {block_type!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        out_indices = [int(i) for i in out_indices]
        if (
            not out_indices
            or out_indices != sorted(set(out_indices))
            or not 0 <= out_indices[0] <= out_indices[-1] <= len(depths)
        ):
            raise ValueError(
                f"out_indices must be increasing indices in [0, {len(depths)}] (0 is the stem), got {out_indices}"
            )
        self.in_channels = in_channels
        self.out_indices = out_indices
        self.stem = _Stem(in_channels, embedding_size, activation)
        block_class = _BottleneckBlock if block_type == "bottleneck" else _BasicBlock
        channels = [embedding_size, *hidden_sizes]
        strides = [4]
        self.stage_names: list[str] = []
        for index, (depth, width) in enumerate(zip(depths, hidden_sizes)):
            stride = 2 if index > 0 or downsample_in_first_stage else 1
            blocks = [block_class(channels[index], width, stride, stride_in_1x1, activation)]
            blocks += [block_class(width, width, 1, stride_in_1x1, activation) for _ in range(depth - 1)]
            name = f"res{index + 2}"  # detectron2's names: res2 has stride 4, res5 stride 32
            self.add_module(name, nn.Sequential(*blocks))
            self.stage_names.append(name)
            strides.append(strides[-1] * stride)
        self.feature_info: list[FeatureInfo] = [
            FeatureInfo(channels=channels[i], stride=strides[i]) for i in out_indices
        ]

    def forward(self, pixel_values: Tensor) -> list[Tensor]:
        """Compute the feature maps.

        Args:
            pixel_values: ``(B, in_channels, H, W)`` images.

        Returns:
            One ``(B, C_i, H / s_i, W / s_i)`` map per entry of ``out_indices`` (channels and strides as in
            ``feature_info``; sizes rounded up at every stride-2 step).
        """
        x = self.stem(pixel_values)  # (B, embedding_size, H/4, W/4)
        features = [x] if 0 in self.out_indices else []
        for index, name in enumerate(self.stage_names, start=1):
            if index > self.out_indices[-1]:
                break
            x = getattr(self, name)(x)  # (B, hidden_sizes[index - 1], H_i, W_i)
            if index in self.out_indices:
                features.append(x)
        return features


# --------------------------------------------------------------------------------------------------------------------
# Checkpoint key conversion (transformers <-> ours)
# --------------------------------------------------------------------------------------------------------------------

# transformers' saved names (without the model's prefix) -> ours. Stage s and conv k count from 0 there; detectron2
# counts stages from res2 and convolutions from conv1. Every BatchNorm leaf is one of _NORM_LEAVES.
_NORM_LEAVES = "weight|bias|running_mean|running_var"
_FROM_TRANSFORMERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^embedder\.embedder\.convolution\.weight$"), "stem.conv1.weight"),
    (re.compile(rf"^embedder\.embedder\.normalization\.({_NORM_LEAVES})$"), "stem.conv1.norm.{0}"),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.convolution\.weight$"),
        "res{s}.{1}.conv{k}.weight",
    ),
    (
        re.compile(rf"^encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d+)\.normalization\.({_NORM_LEAVES})$"),
        "res{s}.{1}.conv{k}.norm.{3}",
    ),
    (
        re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.convolution\.weight$"),
        "res{s}.{1}.shortcut.weight",
    ),
    (
        re.compile(rf"^encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.normalization\.({_NORM_LEAVES})$"),
        "res{s}.{1}.shortcut.norm.{2}",
    ),
]
_TO_TRANSFORMERS: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^stem\.conv1\.weight$"), "embedder.embedder.convolution.weight"),
    (re.compile(rf"^stem\.conv1\.norm\.({_NORM_LEAVES})$"), "embedder.embedder.normalization.{0}"),
    (re.compile(r"^res(\d+)\.(\d+)\.conv(\d+)\.weight$"), "encoder.stages.{s}.layers.{1}.layer.{k}.convolution.weight"),
    (
        re.compile(rf"^res(\d+)\.(\d+)\.conv(\d+)\.norm\.({_NORM_LEAVES})$"),
        "encoder.stages.{s}.layers.{1}.layer.{k}.normalization.{3}",
    ),
    (re.compile(r"^res(\d+)\.(\d+)\.shortcut\.weight$"), "encoder.stages.{s}.layers.{1}.shortcut.convolution.weight"),
    (
        re.compile(rf"^res(\d+)\.(\d+)\.shortcut\.norm\.({_NORM_LEAVES})$"),
        "encoder.stages.{s}.layers.{1}.shortcut.normalization.{2}",
    ),
]


def _apply(rules: list[tuple[re.Pattern[str], str]], key: str, stage_shift: int, conv_shift: int) -> str | None:
    """Rename ``key`` by the first matching rule, or None.

    In a template ``{i}`` is the rule's i-th group, ``{s}`` group 0 plus ``stage_shift`` and ``{k}`` group 2 plus
    ``conv_shift``.
    """
    for pattern, template in rules:
        match = pattern.match(key)
        if match:
            groups = match.groups()
            if "{s}" in template:
                template = template.replace("{s}", str(int(groups[0]) + stage_shift))
            if "{k}" in template:
                template = template.replace("{k}", str(int(groups[2]) + conv_shift))
            return template.format(*groups)
    return None


def resnet_keys_from_transformers(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Convert the ResNet part of a transformers checkpoint to :class:`ResNetBackbone` keys.

    Args:
        state_dict: Full checkpoint state dict.
        prefix: Prefix of the ResNet entries, e.g. ``"model.pixel_level_module.encoder."`` (``""`` for a saved
            ``transformers.ResNetBackbone``; ``"resnet."`` for a ``ResNetModel``/classification checkpoint). Keys not
            starting with it are ignored.

    Returns:
        Our keys without prefix. ``num_batches_tracked`` is dropped (frozen BatchNorm has no use for it); keys under
        ``prefix`` that no rule knows come back unchanged (minus the prefix) so the key check reports them.
    """
    out: dict[str, Tensor] = {}
    for full_key, value in state_dict.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        if key.endswith(".num_batches_tracked"):
            continue
        out[_apply(_FROM_TRANSFORMERS, key, 2, 1) or key] = value
    return out


def resnet_keys_to_transformers(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """Convert a :class:`ResNetBackbone` state dict to the layout transformers saves, under ``prefix``.

    Every BatchNorm also gets the ``num_batches_tracked`` counter ``nn.BatchNorm2d`` saves (0: frozen statistics
    are not counted), so ``transformers`` loads the file with no missing keys.

    Args:
        state_dict: :class:`ResNetBackbone` state dict (no prefix).
        prefix: Prefix to put in front of every output key.

    Returns:
        The transformers-layout state dict.

    Raises:
        ValueError: A key that is not a ResNetBackbone key.
    """
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        renamed = _apply(_TO_TRANSFORMERS, key, -2, -1)
        if renamed is None:
            raise ValueError(f"no transformers name for the ResNet backbone key {key!r}")
        out[prefix + renamed] = value
        if renamed.endswith(".normalization.running_var"):
            counter = renamed.removesuffix("running_var") + "num_batches_tracked"
            out[prefix + counter] = torch.zeros((), dtype=torch.long)
    return out


__all__ = [
    "RESNET_ACTIVATIONS",
    "FrozenBatchNorm2d",
    "ResNetBackbone",
    "resnet_keys_from_transformers",
    "resnet_keys_to_transformers",
]
