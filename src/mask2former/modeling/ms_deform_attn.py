"""Multi-scale deformable attention (Deformable DETR), the attention of the Mask2Former pixel decoder.

Each query predicts, per head, level and point, a 2D offset from its reference point and an attention weight; the
output is the weighted sum of the value maps bilinearly sampled at those locations.

Two implementations compute the same thing:
- ``multi_scale_deformable_attention``: the readable reference of the original code (``ms_deform_attn_core_pytorch``),
  one ``grid_sample`` per level, then a weighted sum.
- ``multi_scale_deformable_attention_gather``: the fast path. Bilinear sampling with zero padding is a weighted sum of
  the four neighbouring pixels, so the whole operation is, for every (query, head), one weighted sum of
  L * P * 4 rows of the value table; ``F.embedding_bag`` with per-sample weights does exactly that in one fused
  kernel, with no (Q, L * P) intermediate of sampled values. Its backward (:class:`_WeightedRowSum`) scatters the
  gradient into the table with ``index_add_`` and reads the weights' gradient with a gather and a batched dot
  product, in chunks (``embedding_bag``'s own backward sorts all indices first and is slower than ``grid_sample``'s).

Shape letters: B batch, Q queries, S flattened positions over all levels (sum of H_l * W_l), M heads, D channels per
head, L levels, P points per level.
"""

import math
from typing import Any

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


class _WeightedRowSum(torch.autograd.Function):
    """``output[i] = sum_k weights[i, k] * table[rows[i, k]]``: (N, K) rows and weights, (T, D) table -> (N, D).

    Forward: one ``embedding_bag``. Backward, in chunks of rows that bound the (chunk, K, D) temporaries:
    ``grad_table[rows[i, k]] += weights[i, k] * grad[i]`` with ``index_add_`` and
    ``grad_weights[i, k] = <table[rows[i, k]], grad[i]>`` with a gather and a batched dot product.
    """

    CHUNK_ELEMENTS = 1 << 21  # elements of one (chunk, K, D) temporary: 8 MB in float32

    @staticmethod
    def forward(ctx: Any, table: Tensor, rows: Tensor, weights: Tensor) -> Tensor:
        ctx.save_for_backward(table, rows, weights)
        return F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
        table, rows, weights = ctx.saved_tensors
        num_bags, bag_size = rows.shape
        grad = grad.to(table.dtype)
        grad_table = torch.zeros_like(table) if ctx.needs_input_grad[0] else None
        grad_weights = torch.empty_like(weights) if ctx.needs_input_grad[2] else None
        step = max(1, _WeightedRowSum.CHUNK_ELEMENTS // (bag_size * table.shape[1]))
        for start in range(0, num_bags, step):
            # int64: index_add_ and embedding take a slow path with int32 indices on the CPU
            chunk_rows, chunk_grad = rows[start : start + step].long(), grad[start : start + step]  # (n, K), (n, D)
            if grad_weights is not None:
                gathered = F.embedding(chunk_rows, table)  # (n, K, D)
                grad_weights[start : start + step] = torch.bmm(gathered, chunk_grad.unsqueeze(2)).squeeze(2)
            if grad_table is not None:
                contributions = weights[start : start + step, :, None] * chunk_grad[:, None, :]  # (n, K, D)
                grad_table.index_add_(0, chunk_rows.reshape(-1), contributions.reshape(-1, table.shape[1]))
        return grad_table, None, grad_weights


def multi_scale_deformable_attention_gather(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same contract as :func:`multi_scale_deformable_attention`, computed as one ``embedding_bag``.

    ``grid_sample`` with ``align_corners=False`` reads location x in [0, 1] at pixel coordinate ``x * W - 0.5``; the
    four neighbours get the bilinear weights and those outside the map get weight 0 (zero padding).
    """
    batch_size, num_values, num_heads, head_dim = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    device, dtype = value.device, sampling_locations.dtype
    level_view = (1, 1, 1, num_levels, 1, 1)  # broadcasts a per-level value over (B, Q, M, L, P, 2)
    widths = torch.tensor([width for _, width in spatial_shapes], device=device, dtype=dtype).view(level_view)
    heights = torch.tensor([height for height, _ in spatial_shapes], device=device, dtype=dtype).view(level_view)
    starts = [0]
    for height, width in spatial_shapes[:-1]:
        starts.append(starts[-1] + height * width)
    index_dtype = torch.int32 if batch_size * num_heads * num_values < 2**31 else torch.int64
    first_rows = (
        torch.arange(batch_size * num_heads, device=device, dtype=index_dtype).view(batch_size, 1, num_heads, 1, 1)
        * num_values
        + torch.tensor(starts, device=device, dtype=index_dtype).view(1, 1, 1, num_levels, 1)
    )  # (B, 1, M, L, 1): row of each (image, head, level)'s first pixel in the table

    def neighbours(coordinate: Tensor, size: Tensor) -> tuple[Tensor, Tensor]:
        """Pixel indices (clamped into the map) and bilinear weights (0 outside) of the 2 neighbours on one axis."""
        pixel = coordinate[..., None] * size - 0.5  # (B, Q, M, L, P, 1)
        low = pixel.floor()
        high_weight = pixel - low
        index = torch.cat((low, low + 1), dim=-1)  # (B, Q, M, L, P, 2)
        weight = torch.cat((1 - high_weight, high_weight), dim=-1) * ((index >= 0) & (index <= size - 1))
        return torch.minimum(index.clamp(min=0), size - 1), weight

    x_index, x_weight = neighbours(sampling_locations[..., 0], widths)
    y_index, y_weight = neighbours(sampling_locations[..., 1], heights)
    # Pixel index y * W + x of the 4 neighbours, exact in floating point for any map below 2**24 pixels.
    in_level = (y_index * widths)[..., :, None] + x_index[..., None, :]  # (B, Q, M, L, P, 2, 2)
    rows = first_rows[..., None, None] + in_level.to(index_dtype)  # (B, Q, M, L, P, 2, 2)
    weights = y_weight[..., :, None] * x_weight[..., None, :] * attention_weights[..., None, None]  # (B, Q, M, L, P, 2, 2)
    table = value.permute(0, 2, 1, 3).reshape(batch_size * num_heads * num_values, head_dim)  # (B*M*S, D)
    bag_size = num_levels * num_points * 4
    output = _WeightedRowSum.apply(
        table, rows.reshape(-1, bag_size), weights.reshape(-1, bag_size).to(table.dtype)
    )  # (B*Q*M, D), rows and weights (B*Q*M, L*P*4)
    return output.view(batch_size, num_queries, num_heads * head_dim)


IMPLEMENTATIONS = {"grid_sample": multi_scale_deformable_attention, "gather": multi_scale_deformable_attention_gather}


class MultiScaleDeformableAttention(nn.Module):
    """Deformable attention over L feature levels with P sampling points per level and head.

    Args:
        embed_dim: channels C of queries and values.
        num_heads: attention heads M; C must be divisible by M.
        num_levels: feature levels L.
        num_points: sampling points P per level and head.
        implementation: "gather" (default: one ``embedding_bag``, the faster in both directions) or "grid_sample"
            (the original's reference); tested to agree in values and gradients.
    """

    def __init__(
        self,
        *,
        embed_dim: int = 256,
        num_heads: int = 8,
        num_levels: int = 3,
        num_points: int = 4,
        implementation: str = "gather",
    ) -> None:
        super().__init__()
        if implementation not in IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {sorted(IMPLEMENTATIONS)}, got {implementation!r}")
        self.implementation = implementation
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
        output = IMPLEMENTATIONS[self.implementation](value, spatial_shapes, locations, weights)
        return self.output_proj(output)
