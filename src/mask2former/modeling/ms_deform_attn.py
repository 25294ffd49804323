"""Multi-scale deformable attention (Deformable DETR), the attention of the Mask2Former pixel decoder.

Each query predicts, per head, level and point, a 2D offset from its reference point and an attention weight; the
output is the weighted sum of the value maps bilinearly sampled at those locations. The sampling is the pure-PyTorch
reference of the original code (``ms_deform_attn_core_pytorch``): one ``grid_sample`` per level.

Shape letters: B batch, Q queries, S flattened positions over all levels (sum of H_l * W_l), M heads, D channels per
head, L levels, P points per level.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def multi_scale_deformable_attention(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Sample the value maps at the given locations and take the weighted sum (reference implementation).

    Args:
        value: (B, S, M, D) values of all levels, flattened and concatenated level after level.
        spatial_shapes: the (H_l, W_l) of each level, in the order of ``value``.
        sampling_locations: (B, Q, M, L, P, 2) locations as (x, y) in [0, 1] of each level's map.
        attention_weights: (B, Q, M, L, P) weights, normalized over L * P.

    Returns:
        (B, Q, M * D) attended values.
    """
    batch_size, _, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value_per_level = value.split([height * width for height, width in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    sampled = []
    for level, (height, width) in enumerate(spatial_shapes):
        level_value = (
            value_per_level[level]  # (B, H*W, M, D)
            .permute(0, 2, 3, 1)  # (B, M, D, H*W)
            .reshape(batch_size * num_heads, head_dim, height, width)  # (B*M, D, H, W)
        )
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*M, Q, P, 2)
        sampled.append(
            F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        )  # (B*M, D, Q, P)
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*M, D, Q, L*P)
    weights = attention_weights.transpose(1, 2).reshape(batch_size * num_heads, 1, num_queries, num_levels * num_points)
    output = (stacked * weights).sum(-1)  # (B*M, D, Q)
    return output.view(batch_size, num_heads * head_dim, num_queries).transpose(1, 2)  # (B, Q, M*D)


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels with P sampling points per level and head.

    Args:
        embed_dim: channels C of queries and values.
        num_heads: attention heads M; C must be divisible by M.
        num_levels: feature levels L.
        num_points: sampling points P per level and head.
    """

    def __init__(self, *, embed_dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4) -> None:
        super().__init__()
        if embed_dim % num_heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads = num_heads
        self.num_levels = num_levels
        self.num_points = num_points
        self.sampling_offsets = nn.Linear(embed_dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = nn.Linear(embed_dim, num_heads * num_levels * num_points)
        self.value_proj = nn.Linear(embed_dim, embed_dim)
        self.output_proj = nn.Linear(embed_dim, embed_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialization: zero offset weights, offset biases on a ring of directions per head."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.num_heads, dtype=torch.float32) * (2.0 * math.pi / self.num_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
        directions = directions / directions.abs().max(-1, keepdim=True)[0]
        grid = directions.view(self.num_heads, 1, 1, 2).repeat(1, self.num_levels, self.num_points, 1)  # (M, L, P, 2)
        grid = grid * torch.arange(1, self.num_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(
        self,
        query: Tensor,
        reference_points: Tensor,
        value: Tensor,
        spatial_shapes: list[tuple[int, int]],
        value_padding_mask: Tensor | None = None,
    ) -> Tensor:
        """Attend from each query to its sampled locations.

        Args:
            query: (B, Q, C) queries, position encoding already added.
            reference_points: (B, Q, L, 2) reference (x, y) in [0, 1] per level.
            value: (B, S, C) the flattened maps of all levels.
            spatial_shapes: (H_l, W_l) per level.
            value_padding_mask: optional (B, S) bool, True where a position is padding (its value is zeroed).

        Returns:
            (B, Q, C).
        """
        batch_size, num_queries, _ = query.shape
        value = self.value_proj(value)
        if value_padding_mask is not None:
            value = value.masked_fill(value_padding_mask[..., None], 0.0)
        value = value.view(batch_size, value.shape[1], self.num_heads, -1)  # (B, S, M, D)
        offsets = self.sampling_offsets(query).view(
            batch_size, num_queries, self.num_heads, self.num_levels, self.num_points, 2
        )  # (B, Q, M, L, P, 2)
        weights = self.attention_weights(query).view(
            batch_size, num_queries, self.num_heads, self.num_levels * self.num_points
        )
        weights = weights.softmax(-1).view(
            batch_size, num_queries, self.num_heads, self.num_levels, self.num_points
        )  # (B, Q, M, L, P)
        # Offsets are in pixels of each level: divide by (W_l, H_l) to get [0, 1] coordinates.
        normalizer = torch.tensor(
            [[width, height] for height, width in spatial_shapes], dtype=query.dtype, device=query.device
        )  # (L, 2)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        output = multi_scale_deformable_attention(value, spatial_shapes, locations, weights)
        return self.output_proj(output)
