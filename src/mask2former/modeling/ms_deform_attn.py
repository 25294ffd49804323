"""Multi-scale deformable attention (Deformable DETR), the attention of the Mask2Former pixel decoder.

Each query predicts, per head, level and point, a 2D offset from its reference point and an attention weight; the
output is the weighted sum of the value maps bilinearly sampled at those locations.

Two implementations compute the same thing:
- ``multi_scale_deformable_attention``: the readable reference of the original code (``ms_deform_attn_core_pytorch``),
  one ``grid_sample`` per level, then a weighted sum.
- ``multi_scale_deformable_attention_gather``: the fast path. Bilinear sampling with zero padding is a weighted sum of
  the four neighbouring pixels, so the whole operation is, for every (query, head), one weighted sum of
  L * P * 4 rows of the value table; ``F.embedding_bag`` with per-sample weights does exactly that in one fused
  kernel, with no (Q, L * P) intermediate of sampled values. Its backward (:class:`_DeformableSampling`) is
  written out: one sampled matrix product gives the gradients of the locations and of the attention weights, and
  four ``embedding_bag`` gathers over the locations sorted by their top-left tap the values' (autograd through the
  index arithmetic and ``embedding_bag``'s own backward, which sorts all four taps' indices, were 2x slower in all).

Shape letters: B batch, Q queries, S flattened positions over all levels (sum of H_l * W_l), M heads, D channels per
head, L levels, P points per level.
"""

import math
import warnings
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


def _level_vector(spatial_shapes: list[tuple[int, int]], num_points: int, values: Any, device, dtype) -> Tensor:
    """(L * P * 2,) ``values(height, width)`` = an (x, y) pair per level, repeated for each point: the innermost
    layout of ``(..., L, P, 2)`` tensors, so that per-level constants broadcast over one contiguous run."""
    pairs = torch.tensor([values(height, width) for height, width in spatial_shapes], device=device, dtype=dtype)
    return pairs[:, None, :].expand(-1, num_points, -1).reshape(-1)


def _row_dots(table: Tensor, rows: Tensor, grad: Tensor) -> Tensor:
    """(N, K): ``<table[rows[i, k]], grad[i]>`` for a (T, D) table, (N, K) rows and (N, D) grad.

    On the CPU a sampled matrix product (``sampled_addmm``) over the sparsity pattern of ``rows``, 2.5x faster than
    a gather; elsewhere :func:`_gathered_row_dots`.
    """
    if table.device.type != "cpu":
        return _gathered_row_dots(table, rows, grad)
    num_rows, bag_size = rows.shape
    index_dtype = torch.int64 if rows.dtype == torch.int64 else torch.int32
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR tensor support is in beta state"
        pattern = torch.sparse_csr_tensor(
            torch.arange(0, num_rows * bag_size + 1, bag_size, device=rows.device, dtype=index_dtype),
            rows.reshape(-1).to(index_dtype),
            table.new_zeros(num_rows * bag_size),
            (num_rows, table.shape[0]),
            check_invariants=False,
        )
        return torch.sparse.sampled_addmm(pattern, grad, table.t(), beta=0.0).values().view(num_rows, bag_size)


def _gathered_row_dots(table: Tensor, rows: Tensor, grad: Tensor) -> Tensor:
    """:func:`_row_dots` as a gather and a batched product, in chunks that bound the (chunk, K, D) temporary."""
    num_rows, bag_size = rows.shape
    dots = table.new_empty(num_rows, bag_size)
    step = max(1, _CHUNK_ELEMENTS // (bag_size * table.shape[1]))
    for start in range(0, num_rows, step):
        gathered = F.embedding(rows[start : start + step].long(), table)  # (n, K, D)
        dots[start : start + step] = torch.bmm(gathered, grad[start : start + step, :, None]).squeeze(2)
    return dots


_CHUNK_ELEMENTS = 1 << 21  # elements of one (chunk, ..., D) temporary of the backward: 8 MB in float32


def _table_rows(in_level: Tensor, level_sizes: list[int], batch_size: int, num_heads: int) -> Tensor:
    """(N, L*P) row offsets within each level -> rows of a table in which every (image, head) holds its levels'
    ``level_sizes`` rows one after another; N = B * Q * M (heads innermost), same integer dtype."""
    num_bags, num_samples = in_level.shape
    num_levels = len(level_sizes)
    device, dtype = in_level.device, in_level.dtype
    starts = [sum(level_sizes[:level]) for level in range(num_levels)]
    first_rows = (
        torch.arange(batch_size * num_heads, device=device, dtype=dtype).view(batch_size, 1, num_heads, 1, 1)
        * sum(level_sizes)
        + torch.tensor(starts, device=device, dtype=dtype).view(1, 1, 1, num_levels, 1)
    ).expand(-1, -1, -1, -1, num_samples // num_levels)  # (B, 1, M, L, P): row of each level's first pixel
    first_rows = first_rows.reshape(batch_size, 1, num_heads * num_samples)
    return (in_level.reshape(batch_size, -1, num_heads * num_samples) + first_rows).view(num_bags, num_samples)


def _tap_weights(attention: Tensor, weight_low: Tensor, weight_high: Tensor, corners: tuple[Tensor, ...]) -> None:
    """Write each location's four tap weights (attention x y weight x x weight) into ``corners``, four (N, L*P)
    outputs in the order (y0 x0, y0 x1, y1 x0, y1 x1); the forward and the backward use the same products."""
    upper = attention * weight_low[..., 1]  # (N, L*P) attention times the y weights
    lower = attention * weight_high[..., 1]
    for out, (y, x) in zip(corners, ((upper, weight_low), (upper, weight_high), (lower, weight_low),
                                     (lower, weight_high))):
        torch.mul(y, x[..., 0], out=out)


def _scatter_taps(
    grad: Tensor,
    attention: Tensor,
    weight_low: Tensor,
    weight_high: Tensor,
    low: Tensor,
    spatial_shapes: list[tuple[int, int]],
    batch_size: int,
    num_heads: int,
) -> Tensor:
    """The table's gradient (B * M * S, D): the tap weight times ``grad[i]`` added at the row of every tap of bag i.

    Written as gathers, not as a scatter: the sampling locations are sorted by the row of their top-left tap in maps
    padded by one pixel on the top and left (a top-left tap at -1 lands on the padding), and then, for each of the
    four corners, one ``embedding_bag`` sums per padded row the weighted gradients of the locations whose top-left
    tap it is; the four shifted maps are then added. (An ``index_add_`` of the four taps per chunk of locations
    took 10% longer, and each of its calls sorts its indices in several parallel passes that all wait whenever
    another process holds a core: one layer's forward and backward took 2x longer than this beside one busy
    process.)

    Args:
        grad: (N, D) gradient of the bags, N = B * Q * M (heads innermost).
        attention: (N, L*P) attention weights.
        weight_low, weight_high: (N, L*P, 2) bilinear (x, y) weights of the low and high neighbours (0 outside).
        low: (N, L*P*2) the (x, y) pixel coordinates of each location's top-left tap (may lie outside the map).
        spatial_shapes: (H_l, W_l) per level.
    """
    num_bags, head_dim = grad.shape
    num_samples = attention.shape[1]
    num_levels = len(spatial_shapes)
    num_points = num_samples // num_levels
    device = grad.device
    padded_sizes = [(height + 1) * (width + 1) for height, width in spatial_shapes]
    padded_starts = [sum(padded_sizes[:level]) for level in range(num_levels)]
    num_rows = batch_size * num_heads * sum(padded_sizes)
    sizes = _level_vector(spatial_shapes, num_points, lambda h, w: (w, h), device, low.dtype)
    strides = _level_vector(spatial_shapes, num_points, lambda h, w: (1, w + 1), device, low.dtype)
    # Row of the top-left tap within its padded level, then plus the first row of the (image, head, level).
    offsets = ((low.clamp(min=-1).minimum(sizes - 1) + 1) * strides).view(num_bags, num_samples, 2)
    in_level = offsets[..., 0] + offsets[..., 1]  # x + y * (W + 1); a sum over a last dim of 2 is much slower
    index_dtype = torch.int32 if num_rows < 2**31 else torch.int64
    top_left = _table_rows(in_level.to(index_dtype), padded_sizes, batch_size, num_heads)  # (N, L*P)
    rows, order = torch.sort(top_left.reshape(-1), stable=True)  # stable: a fixed order of summation
    counts = torch.bincount(rows, minlength=num_rows)
    starts = counts.cumsum(0) - counts  # (rows,) where each padded row's locations start in the sorted order
    # The bag of each sorted location: order // (L*P), as a float division (exact below 2**24 locations; an integer
    # division is several times slower).
    if order.numel() < 2**24:
        sources = order.to(torch.float32).div_(num_samples).floor_().long()
    else:
        sources = torch.div(order, num_samples, rounding_mode="floor")
    accumulate_dtype = torch.promote_types(grad.dtype, torch.float32)
    table = grad.to(accumulate_dtype)
    # The tap weights corner by corner (the forward's products), then in the sorted order.
    corner_weights = torch.empty(4, num_bags, num_samples, device=device, dtype=accumulate_dtype)
    _tap_weights(attention, weight_low, weight_high, corner_weights.unbind(0))
    corner_weights = corner_weights.view(4, -1).index_select(1, order)  # (4, N * L*P)
    taps = [
        F.embedding_bag(sources, table, starts, mode="sum", per_sample_weights=corner_weights[corner]).view(
            batch_size * num_heads, -1, head_dim
        )
        for corner in range(4)
    ]  # per corner (B*M, padded rows, D)
    grad_table = grad.new_empty(batch_size * num_heads, sum(h * w for h, w in spatial_shapes), head_dim)
    start = 0
    for (height, width), padded_start, padded_size in zip(spatial_shapes, padded_starts, padded_sizes):
        upper_left, upper_right, lower_left, lower_right = (
            tap[:, padded_start : padded_start + padded_size].view(-1, height + 1, width + 1, head_dim) for tap in taps
        )
        level = grad_table[:, start : start + height * width].view(-1, height, width, head_dim)
        # pixel (y, x) is the upper-left tap of the location at padded (y+1, x+1), the upper-right of (y+1, x), ...
        level.copy_(
            upper_left[:, 1:, 1:] + upper_right[:, 1:, :-1] + lower_left[:, :-1, 1:] + lower_right[:, :-1, :-1]
        )
        start += height * width
    return grad_table.view(-1, head_dim)


class _DeformableSampling(torch.autograd.Function):
    """The bilinear taps of every sampling location, weighted by the attention weights and summed, with an explicit
    backward (the same arithmetic as ``grid_sample``'s, with no autograd graph over the (B, Q, M, L, P, 4) index and
    weight tensors).

    Forward: ``output[i] = sum_k weights[i, k] * table[rows[i, k]]`` as one ``embedding_bag`` over the
    N = B * Q * M bags of K = L * P * 4 taps. Backward: ``s[i, k] = <table[rows[i, k]], grad[i]>`` (one sampled
    matrix product) gives the attention weights' gradient (bilinear weights times s) and the locations' (the
    bilinear weights' derivatives times s); the table's gradient is gathered: per corner, one ``embedding_bag`` over
    the locations sorted by their top-left tap in maps padded by one pixel, then the four shifted maps are added
    (:func:`_scatter_taps`).
    """

    @staticmethod
    def forward(
        ctx: Any,
        table: Tensor,
        locations: Tensor,
        attention_weights: Tensor,
        spatial_shapes: list[tuple[int, int]],
        num_values: int,
    ) -> Tensor:
        batch_size, num_queries, num_heads, num_levels, num_points, _ = locations.shape
        input_dtypes = (locations.dtype, attention_weights.dtype)
        num_bags, num_samples = batch_size * num_queries * num_heads, num_levels * num_points
        device, dtype = locations.device, torch.promote_types(locations.dtype, torch.float32)  # geometry precision
        locations, attention_weights = locations.to(dtype), attention_weights.to(dtype)
        sizes = _level_vector(spatial_shapes, num_points, lambda h, w: (w, h), device, dtype)  # (L*P*2,)
        # grid_sample(align_corners=False) reads location x in [0, 1] at pixel coordinate x * W - 0.5.
        pixel = locations.reshape(num_bags, num_samples * 2) * sizes - 0.5  # (N, L*P*2), (x, y) pairs
        low = pixel.floor()
        fraction = pixel - low
        last = sizes - 1
        valid_low = (low >= 0) & (low <= last)  # the low neighbour is inside the map (else zero padding)
        valid_high = (low >= -1) & (low <= last - 1)
        weight_low = (1 - fraction).mul_(valid_low)  # (N, L*P*2) bilinear weights, 0 outside the map
        weight_high = fraction.mul(valid_high)
        # In-level offsets x and y * W of both neighbours, clamped into the map (their weight is 0 when clamped).
        strides = _level_vector(spatial_shapes, num_points, lambda h, w: (1, w), device, dtype)
        index_dtype = torch.int32 if batch_size * num_heads * num_values < 2**31 else torch.int64
        offset_low = (low.clamp(min=0).minimum(last) * strides).to(index_dtype).view(num_bags, num_samples, 2)
        offset_high = ((low + 1).clamp(min=0).minimum(last) * strides).to(index_dtype).view(num_bags, num_samples, 2)
        level_sizes = [height * width for height, width in spatial_shapes]
        x_low = _table_rows(offset_low[..., 0], level_sizes, batch_size, num_heads)  # (N, L*P) with the x offset
        x_high = _table_rows(offset_high[..., 0], level_sizes, batch_size, num_heads)
        y_low, y_high = offset_low[..., 1], offset_high[..., 1]
        rows = torch.empty(num_bags, num_samples, 4, device=device, dtype=index_dtype)  # (N, L*P, 4) taps
        for corner, (x, y) in enumerate(((x_low, y_low), (x_high, y_low), (x_low, y_high), (x_high, y_high))):
            torch.add(x, y, out=rows[..., corner])  # written in place: no stack of four temporaries
        attention = attention_weights.reshape(num_bags, num_samples)
        weight_low, weight_high = weight_low.view(num_bags, num_samples, 2), weight_high.view(num_bags, num_samples, 2)
        weights = torch.empty(num_bags, num_samples, 4, device=device, dtype=dtype)  # tap weights in the order of rows
        _tap_weights(attention, weight_low, weight_high, weights.unbind(-1))
        weights = weights.to(table.dtype)
        ctx.geometry = (spatial_shapes, (batch_size, num_heads, num_samples), input_dtypes)
        ctx.save_for_backward(table, rows, attention, weight_low, weight_high, valid_low, valid_high, low)
        return F.embedding_bag(
            rows.view(num_bags, -1), table, per_sample_weights=weights.view(num_bags, -1), mode="sum"
        )  # (N, D)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None, None, None]:
        table, rows, attention, weight_low, weight_high, valid_low, valid_high, low = ctx.saved_tensors
        spatial_shapes, (batch_size, num_heads, num_samples), (locations_dtype, attention_dtype) = ctx.geometry
        locations_shape = (batch_size, -1, num_heads, len(spatial_shapes), num_samples // len(spatial_shapes), 2)
        num_bags = grad.shape[0]
        grad_table = grad_locations = grad_attention = None
        if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
            compute_dtype = attention.dtype
            dots = _row_dots(table.to(compute_dtype), rows.view(num_bags, -1), grad.to(compute_dtype))
            dots = dots.view(num_bags, num_samples, 4)  # taps in the order (y0 x0, y0 x1, y1 x0, y1 x1)
            upper_left, upper_right, lower_left, lower_right = dots.unbind(-1)
            x_low, y_low = weight_low.unbind(-1)
            x_high, y_high = weight_high.unbind(-1)
            # The taps combined along y (per x neighbour) and along x (per y neighbour): every gradient is a
            # two-term sum of them.
            left = torch.addcmul(y_low * upper_left, y_high, lower_left)
            right = torch.addcmul(y_low * upper_right, y_high, lower_right)
            if ctx.needs_input_grad[2]:
                grad_attention = torch.addcmul(x_low * left, x_high, right)
                grad_attention = grad_attention.view(locations_shape[:-1]).to(attention_dtype)
            if ctx.needs_input_grad[1]:
                upper = torch.addcmul(x_low * upper_left, x_high, upper_right)
                lower = torch.addcmul(x_low * lower_left, x_high, lower_right)
                # as floats once (they only multiply; saved as bools, a quarter of the memory)
                in_x_low, in_y_low = valid_low.to(compute_dtype).view(num_bags, num_samples, 2).unbind(-1)
                in_x_high, in_y_high = valid_high.to(compute_dtype).view(num_bags, num_samples, 2).unbind(-1)
                # d(bilinear weight)/d(fraction) is -1 or +1 times the other axis' weight, for taps inside the map
                sizes = _level_vector(spatial_shapes, num_samples // len(spatial_shapes), lambda h, w: (w, h),
                                      attention.device, attention.dtype)
                grad_locations = torch.empty(num_bags, num_samples, 2, device=attention.device, dtype=attention.dtype)
                grad_x, grad_y = grad_locations.unbind(-1)
                torch.mul(torch.addcmul(in_x_high * right, in_x_low, left, value=-1), attention, out=grad_x)
                torch.mul(torch.addcmul(in_y_high * lower, in_y_low, upper, value=-1), attention, out=grad_y)
                grad_locations = grad_locations.view(num_bags, -1).mul_(sizes)
                grad_locations = grad_locations.view(locations_shape).to(locations_dtype)
        if ctx.needs_input_grad[0]:
            grad_table = _scatter_taps(
                grad, attention, weight_low, weight_high, low, spatial_shapes, batch_size, num_heads
            ).to(table.dtype)
        return grad_table, grad_locations, grad_attention, None, None


def multi_scale_deformable_attention_gather(
    value: Tensor,
    spatial_shapes: list[tuple[int, int]],
    sampling_locations: Tensor,
    attention_weights: Tensor,
) -> Tensor:
    """Same contract as :func:`multi_scale_deformable_attention`, computed as one ``embedding_bag`` over a table of
    the value rows (:class:`_DeformableSampling`)."""
    batch_size, num_values, num_heads, head_dim = value.shape
    num_queries = sampling_locations.shape[1]
    table = value.permute(0, 2, 1, 3).reshape(batch_size * num_heads * num_values, head_dim)  # (B*M*S, D)
    output = _DeformableSampling.apply(
        table, sampling_locations, attention_weights, spatial_shapes, num_values
    )  # (B*Q*M, D)
    return output.view(batch_size, num_queries, num_heads * head_dim)


class _ShortSoftmax(torch.autograd.Function):
    """Softmax over a short last dimension (the L * P weights of a head), written out: PyTorch's CPU kernel reduces
    each 12-wide row on its own and took 3x longer forward and 2x longer backward. Same values up to rounding."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor) -> Tensor:
        weights = (logits - logits.amax(-1, keepdim=True)).exp_()
        weights = weights.div_(weights.sum(-1, keepdim=True))
        ctx.save_for_backward(weights)
        return weights

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (weights,) = ctx.saved_tensors
        weighted = grad * weights
        return weighted.sub_(weights * weighted.sum(-1, keepdim=True))


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
        location_shape = (batch_size, num_queries, self.num_heads, self.num_levels, self.num_points, 2)
        training = torch.is_grad_enabled() and self.attention_weights.weight.requires_grad
        if training:  # both projections of the queries as one product (and one in the backward)
            offsets, weights = F.linear(
                query,
                torch.cat([self.sampling_offsets.weight, self.attention_weights.weight]),
                torch.cat([self.sampling_offsets.bias, self.attention_weights.bias]),
            ).split([self.sampling_offsets.out_features, self.attention_weights.out_features], -1)
        else:  # inference keeps the separate products and PyTorch's softmax, whose rounding is transformers'
            offsets, weights = self.sampling_offsets(query), self.attention_weights(query)
        weights = weights.view(batch_size, num_queries, self.num_heads, self.num_levels * self.num_points)
        weights = _ShortSoftmax.apply(weights) if training else weights.softmax(-1)
        weights = weights.view(location_shape[:-1])  # (B, Q, M, L, P)
        # Offsets are in pixels of each level: divided by (W_l, H_l) they are in [0, 1] coordinates. Both operands laid
        # out flat (B, Q, M*L*P*2): broadcasting over the small trailing dimensions is several times slower.
        sizes = _level_vector(spatial_shapes, self.num_points, lambda h, w: (w, h), query.device, query.dtype)
        reference = reference_points[:, :, None, :, None, :].expand(location_shape).reshape(batch_size, num_queries, -1)
        locations = torch.addcdiv(reference, offsets, sizes.repeat(self.num_heads))
        locations = locations.view(location_shape)  # (B, Q, M, L, P, 2)
        output = IMPLEMENTATIONS[self.implementation](value, spatial_shapes, locations, weights)
        return self.output_proj(output)
