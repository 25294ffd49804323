"""The Mask2Former pixel decoder: a deformable-attention encoder over strides 8/16/32, then one FPN step to stride 4.

Follows ``MSDeformAttnPixelDecoder`` of the original code: 1x1 conv + GroupNorm input projections, sine position
encoding plus a learned level embedding, post-norm encoder layers, a lateral 1x1 conv and a 3x3 output conv per FPN
level, and a 1x1 ``mask_projection`` that gives the per-pixel embeddings.

Shape letters: B batch, C channels, L levels, S flattened positions over all levels, H/W height/width.
"""

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .ms_deform_attn import MultiScaleDeformableAttention
from .position_encoding import sine_position_encoding


def _conv_norm(in_channels: int, out_channels: int, kernel_size: int, *, bias: bool = True) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=bias),
        nn.GroupNorm(32, out_channels),
    )


class DeformableEncoderLayer(nn.Module):
    """Deformable self-attention over all levels, then a ReLU FFN; post-norm, residual connections."""

    def __init__(
        self, *, dim: int, num_heads: int, feedforward_dim: int, num_levels: int, num_points: int, dropout: float
    ) -> None:
        super().__init__()
        self.self_attn = MultiScaleDeformableAttention(
            embed_dim=dim, num_heads=num_heads, num_levels=num_levels, num_points=num_points
        )
        self.norm1 = nn.LayerNorm(dim)
        self.linear1 = nn.Linear(dim, feedforward_dim)
        self.linear2 = nn.Linear(feedforward_dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        hidden: Tensor,
        position: Tensor,
        reference_points: Tensor,
        spatial_shapes: list[tuple[int, int]],
        padding_mask: Tensor | None = None,
    ) -> Tensor:
        """(B, S, C) -> (B, S, C)."""
        attended = self.self_attn(hidden + position, reference_points, hidden, spatial_shapes, padding_mask)
        hidden = self.norm1(hidden + self.dropout(attended))
        feedforward = self.linear2(self.dropout(F.relu(self.linear1(hidden))))
        return self.norm2(hidden + self.dropout(feedforward))


class MSDeformAttnPixelDecoder(nn.Module):
    """Pixel decoder of Mask2Former.

    Args:
        in_channels: channels of the backbone maps, finest first (strides ``in_strides``).
        in_strides: strides of the backbone maps, e.g. (4, 8, 16, 32).
        dim: channels of the decoder (``feature_size``).
        mask_dim: channels of the per-pixel mask embeddings (``mask_feature_size``).
        num_heads: heads of deformable attention.
        num_layers: deformable encoder layers.
        feedforward_dim: hidden width of the encoder FFN.
        dropout: dropout in the encoder layers.
        common_stride: stride of the mask features (FPN levels are added down to it).
        num_levels: how many of the coarsest backbone maps enter the deformable encoder.
        num_points: sampling points per level and head.
    """

    def __init__(
        self,
        *,
        in_channels: Sequence[int],
        in_strides: Sequence[int] = (4, 8, 16, 32),
        dim: int = 256,
        mask_dim: int = 256,
        num_heads: int = 8,
        num_layers: int = 6,
        feedforward_dim: int = 1024,
        dropout: float = 0.0,
        common_stride: int = 4,
        num_levels: int = 3,
        num_points: int = 4,
    ) -> None:
        super().__init__()
        if len(in_channels) != len(in_strides):
            raise ValueError(f"in_channels {list(in_channels)} and in_strides {list(in_strides)} differ in length")
        self.num_levels = num_levels
        # Coarsest first, as the encoder and the transformer decoder consume them.
        self.input_projections = nn.ModuleList(
            _conv_norm(channels, dim, 1) for channels in list(in_channels)[-num_levels:][::-1]
        )
        self.level_embed = nn.Parameter(torch.randn(num_levels, dim))
        self.encoder = nn.ModuleList(
            DeformableEncoderLayer(
                dim=dim,
                num_heads=num_heads,
                feedforward_dim=feedforward_dim,
                num_levels=num_levels,
                num_points=num_points,
                dropout=dropout,
            )
            for _ in range(num_layers)
        )
        smallest_encoder_stride = min(list(in_strides)[-num_levels:])
        self.num_fpn_levels = int(math.log2(smallest_encoder_stride) - math.log2(common_stride))
        # Index i works on backbone map i (finest first).
        self.lateral_convs = nn.ModuleList(
            _conv_norm(channels, dim, 1, bias=False) for channels in in_channels[: self.num_fpn_levels]
        )
        self.output_convs = nn.ModuleList(
            _conv_norm(dim, dim, 3, bias=False) for _ in range(self.num_fpn_levels)
        )
        self.mask_projection = nn.Conv2d(dim, mask_dim, kernel_size=1)

    def forward(self, features: Sequence[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """Run the encoder and the FPN.

        Args:
            features: backbone maps, finest first, each (B, C_i, H_i, W_i).

        Returns:
            ``(mask_features, multi_scale_features)``: (B, mask_dim, H_0, W_0) per-pixel embeddings at the finest
            stride (channels-last in memory when gradients are enabled), and the ``num_levels`` encoder outputs
            (B, dim, H_l, W_l), coarsest first.
        """
        coarse = list(features)[-self.num_levels :][::-1]
        projected = [projection(x) for projection, x in zip(self.input_projections, coarse)]
        spatial_shapes = [(x.shape[2], x.shape[3]) for x in projected]
        batch_size, dim = projected[0].shape[:2]
        device, dtype = projected[0].device, projected[0].dtype

        hidden = torch.cat([x.flatten(2).transpose(1, 2) for x in projected], dim=1)  # (B, S, C)
        position = torch.cat(
            [
                sine_position_encoding(1, height, width, dim, device=device, dtype=dtype).flatten(2).transpose(1, 2)
                + self.level_embed[level].to(dtype)
                for level, (height, width) in enumerate(spatial_shapes)
            ],
            dim=1,
        )  # (1, S, C)
        reference_points = _reference_points(spatial_shapes, self.num_levels, device, dtype)  # (1, S, L, 2)
        reference_points = reference_points.expand(batch_size, -1, -1, -1)
        for layer in self.encoder:
            hidden = layer(hidden, position, reference_points, spatial_shapes)

        outputs = [
            level_hidden.transpose(1, 2).reshape(batch_size, dim, height, width)  # (B, C, H_l, W_l)
            for level_hidden, (height, width) in zip(
                hidden.split([height * width for height, width in spatial_shapes], dim=1), spatial_shapes
            )
        ]
        # In training the FPN runs channels-last: there CPU convolutions, GroupNorm and above all the bilinear resize
        # and its backward are faster (the resize 5-10x). Inference keeps the usual layout, whose rounding is
        # transformers' (the masked attention downstream turns last-bit differences near a logit of 0 into visible ones).
        training_layout = torch.is_grad_enabled()
        fpn = outputs[-1].contiguous(memory_format=torch.channels_last) if training_layout else outputs[-1]
        for index in reversed(range(self.num_fpn_levels)):
            feature = features[index]
            if training_layout:
                feature = feature.contiguous(memory_format=torch.channels_last)
            lateral = self.lateral_convs[index](feature)
            upsampled = F.interpolate(fpn, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fpn = F.relu(self.output_convs[index](lateral + upsampled))
        return self.mask_projection(fpn), outputs


def _reference_points(
    spatial_shapes: list[tuple[int, int]], num_levels: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """Pixel centres of every level in [0, 1] coordinates (x, y), repeated for each level: (1, S, L, 2)."""
    points = []
    for height, width in spatial_shapes:
        y, x = torch.meshgrid(
            torch.linspace(0.5, height - 0.5, height, device=device, dtype=dtype) / height,
            torch.linspace(0.5, width - 0.5, width, device=device, dtype=dtype) / width,
            indexing="ij",
        )
        points.append(torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1))  # (H_l*W_l, 2)
    return torch.cat(points, dim=0)[None, :, None, :].expand(1, -1, num_levels, -1)
