"""MaskFormer's pixel decoder: a feature pyramid network (FPN) from stride 32 down to stride 4.

Follows ``BasePixelDecoder`` of the original MaskFormer code (and ``MaskFormerPixelDecoder`` of ``transformers``): a
3x3 conv + GroupNorm + ReLU on the stride-32 map, then for each finer backbone map a 1x1 lateral conv + GroupNorm,
added to the nearest-upsampled coarser map, and a 3x3 conv + GroupNorm + ReLU; a 3x3 ``mask_projection`` of the
stride-4 map gives the per-pixel embeddings. The convolutions followed by GroupNorm have no bias.

Shape letters: B batch, C channels, H/W height/width of the input image.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from .pixel_decoder import _conv_norm


def _conv_norm_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3x3 conv (no bias) -> GroupNorm(32) -> ReLU."""
    return nn.Sequential(*_conv_norm(in_channels, out_channels, 3, bias=False), nn.ReLU(inplace=True))


class FPNPixelDecoder(nn.Module):
    """Pixel decoder of MaskFormer.

    Args:
        in_channels: channels of the backbone maps, finest first (strides 4, 8, 16, 32).
        dim: channels of every FPN map (``fpn_feature_size``); a multiple of 32 (GroupNorm groups).
        mask_dim: channels of the per-pixel embeddings (``mask_feature_size``).
    """

    def __init__(self, *, in_channels: Sequence[int], dim: int = 256, mask_dim: int = 256) -> None:
        super().__init__()
        if len(in_channels) < 2:
            raise ValueError(f"in_channels must name at least 2 backbone maps, got {list(in_channels)}")
        if dim % 32 != 0:
            raise ValueError(f"dim (fpn_feature_size) must be a multiple of 32 (GroupNorm groups), got {dim}")
        self.stem = _conv_norm_relu(in_channels[-1], dim)
        # Coarsest first: lateral_convs[0] reads the stride-16 map, lateral_convs[-1] the stride-4 one.
        finer = list(in_channels[:-1])[::-1]
        self.lateral_convs = nn.ModuleList(_conv_norm(channels, dim, 1, bias=False) for channels in finer)
        self.output_convs = nn.ModuleList(_conv_norm_relu(dim, dim) for _ in finer)
        self.mask_projection = nn.Conv2d(dim, mask_dim, kernel_size=3, padding=1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Build the pyramid.

        Args:
            features: the backbone maps (B, C_i, H_i, W_i), finest first.

        Returns:
            ``(mask_features, pyramid)``: the per-pixel embeddings (B, mask_dim, H_0, W_0) and the FPN maps
            (B, dim, H_i, W_i) from the second coarsest to the finest (strides 16, 8, 4 for a 4-map backbone).
        """
        output = self.stem(features[-1])  # (B, dim, H/32, W/32)
        pyramid = []
        for lateral_conv, output_conv, feature in zip(self.lateral_convs, self.output_convs, features[-2::-1]):
            lateral = lateral_conv(feature)  # (B, dim, H_i, W_i)
            upsampled = F.interpolate(output, size=lateral.shape[-2:], mode="nearest")  # (B, dim, H_i, W_i)
            output = output_conv(upsampled + lateral)
            pyramid.append(output)
        return self.mask_projection(output), pyramid
