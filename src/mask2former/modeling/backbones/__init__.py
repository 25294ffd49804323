"""Backbones: image (B, 3, H, W) -> feature maps at strides 4, 8, 16, 32.

Every backbone declares what it emits in ``feature_info`` (channels and stride per map), the way timm does.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class FeatureInfo:
    """One output map of a backbone: its channel count and its stride relative to the input image."""

    channels: int
    stride: int


__all__ = ["FeatureInfo"]
