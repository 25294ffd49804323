"""Post-processing: model outputs -> semantic, instance and panoptic segmentations.

Pure functions over the two prediction tensors, with the names, arguments, defaults and outputs of the
``transformers`` ``Mask2FormerImageProcessor.post_process_*_segmentation`` methods, following the inference of the
original code (``semantic_inference``, ``instance_inference`` and ``panoptic_inference`` in ``maskformer_model.py``):

- semantic: class probabilities without "no object" times mask probabilities, summed over queries, argmax.
- instance: the top-Q (query, class) pairs; a mask is the pixels above ``mask_threshold``; the score is the class
  probability times the mean mask probability inside the mask.
- panoptic: queries whose best class is not "no object" and scores above ``threshold``; each pixel goes to the query
  with the highest score x mask probability; a segment survives if enough of its own mask is left.

Where the masks are evaluated. ``transformers`` first resizes every mask to a hard-coded 384x384 (the input size of
the released checkpoints) and resizes from there to ``target_sizes``. ``mask_size=(384, 384)``, the default, does
the same, so that results are identical to ``transformers``; ``mask_size=None`` resizes the mask logits once,
straight to the output size, and binarizes and mixes them there, as the original code does (the original goes through
the padded input size first, two bilinear steps where we take one). ``input_sizes`` (each image's size inside the
padded ``pixel_values``) crops the padding before resizing to the output size, as the original does;
``transformers`` never crops. Output size: ``target_sizes[i]``, else ``input_sizes[i]``, else the mask frame
(``mask_size``, or the mask logits' own size when ``mask_size`` is None).

Speed: exact shortcuts. The answers are ``transformers``' (the same labels, up to float rounding at exact ties)
without resizing every query to 384x384 and every class or query map to the target size:

- Only queries that can pass ``threshold`` are looked at (instance: class probability >= threshold, as the mask
  score is at most 1; panoptic: the kept queries).
- Bilinear weights are convex. So (1) on the frame pixels of a mask-logit *cell* (the 2x2 logits a tap reads) a
  query's probability lies between the sigmoids of the cell's smallest and largest logit, which bounds every score
  there (semantic: class scores; panoptic: score x probability); where one label's lower bound beats every other
  upper bound, it wins the whole cell. (2) When the four frame pixels around an output pixel share a label, that
  label wins the output pixel. Only the rest (near boundaries) is evaluated exactly, pixel by pixel, with the same
  formulas. Semantic "no object" queries are only bounded (their total contribution per cell) unless that bound
  could change the answer; panoptic own areas are bounded by counting cells, and counted exactly only for the
  segments whose overlap test the bounds leave open (densely on a box, or pixel by pixel on the band between the
  bounds, whichever evaluates fewer pixels).
- When more than ``_SPARSE_LIMIT`` of the pixels would need exact evaluation (noise-like masks), the dense
  computation runs instead. Tests force each path and check both against ``transformers``.

``transformers`` quirks and what we do:

1. Masks resized to 384x384 first: kept as the default ``mask_size`` (identical results); ``mask_size=None`` is the
   original's full-resolution path.
2. Padding not cropped: kept by default; ``input_sizes`` crops it.
3. Instance post-processing ignores ``mask_threshold`` (masks are ``logit > 0``, i.e. probability > 0.5, as in the
   original) and ``overlap_mask_area_threshold``: a bug; ours binarizes at ``mask_threshold`` (identical at the
   default 0.5) and drops an instance when less than ``overlap_mask_area_threshold`` of its mask stays visible in
   ``segmentation`` after the later instances are painted over it (the panoptic rule, with ``>=`` so that 0 keeps
   every instance, which reproduces ``transformers``; the dropped instance's pixels become -1 and the remaining ids
   stay consecutive). The drop applies to all three output forms, so ``segments_info`` does not depend on the form.
4. Panoptic segment ids: when a fused label (``label_ids_to_fuse``) reappears, ``transformers`` sets its id counter
   back to that label's id, so the next new segment reuses an id already given to another segment, and it lists the
   fused segment once per query. A bug: ours gives every new segment the next unused id and lists each segment once
   (``score``: the highest score among the fused queries). Identical when no fused label appears twice.
5. Panoptic ``mask_threshold`` compared with score x mask probability, and a pixel painted by argmax alone: the
   original counts a query's own area with the unweighted probability >= 0.5 and also requires the painted pixels
   to reach it. Both are conventions of how strict the overlap test is, not errors; we keep ``transformers``' rule
   (identical results). Likewise ``area / own area > overlap_mask_area_threshold`` (the original: ``<`` rejects).
6. Empty panoptic result: ``transformers`` returns a map of -1 (a float tensor, with 0 meaning "no segment"
   everywhere else); ours returns 0, the value of unassigned pixels, as the original does.
7. Empty instance result with ``return_binary_maps``: ``transformers`` returns the (H, W) map of -1 instead of a
   stack; ours returns an empty (0, H, W) stack.
8. ``return_coco_annotation``: ``transformers`` returns, per distinct value of the painted map (background -1
   included), a row-major list of (1-based start, length) pairs, which is not COCO's format; ours returns one COCO
   RLE (``{"size": [H, W], "counts": str}``, column-major, from ``pycocotools.mask.encode``) per entry of
   ``segments_info``, of that instance's whole mask (overlaps kept, as COCO evaluation expects).
9. dtypes: ``transformers`` returns float32 instance maps, int32 panoptic maps and float binary maps; ours are int64
   maps and bool binary maps (same values). ``label_ids_to_fuse=None`` fuses nothing, without a warning.
10. ``topk(sorted=False)`` for the instance candidates, as both ``transformers`` and the original: the order of
    ``segments_info`` (and which instance is painted last) is that op's order, identical to ``transformers`` on the
    same device.
11. Instance scores are the original's (class probability x mean mask probability inside the mask, over the top-Q
    (query, class) pairs). The original keeps all Q pairs, with no score threshold (``threshold=0`` here, which
    still drops empty masks as ``transformers`` does), and for panoptic-trained models only thing classes (no class
    metadata here: filter ``segments_info`` by label).

Shape letters: B batch, Q queries, K classes (without "no object"), N selected queries, h/w mask logits, H/W output.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "post_process_instance_segmentation",
    "post_process_panoptic_segmentation",
    "post_process_semantic_segmentation",
]

# Above this fraction of pixels needing the exact per-pixel evaluation, the dense computation is cheaper.
_SPARSE_LIMIT = 0.25
# Relative margin a bound must clear before it decides a label without exact evaluation; float32 sums over 100-200
# queries are accurate to about 1e-6 relative, so a decided label is the one float arithmetic gives as well.
_BOUND_MARGIN = 1e-4
# Semantic: queries whose class probabilities are all below this ("no object" ones) are bounded, not evaluated,
# wherever the bound decides the argmax.
_RELEVANT_PROBABILITY = 0.01
# Bounds keep clear of float32's subnormal range (below ~1.2e-38), where CPU arithmetic is many times slower (mask
# logits of -100 are common far from an object): lower bounds are lowered by this (probabilities below it become 0),
# upper bounds are at least this, so products stay normal and the bounds stay bounds, looser by far less than the
# margins above.
_TINY = 1e-18
_TINY_LOGIT = math.log(_TINY)  # sigmoid(logit) < _TINY below it
# Panoptic exact own areas: densely on a box of output pixels while it has fewer than this many pixels plus this many
# per pixel of the band (the other way's pixels, each evaluated at 16 logits; measured on 2 cores).
_BOX_PIXELS = 90_000
_BOX_PIXELS_PER_BAND_PIXEL = 25

Size = tuple[int, int]


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------


def _read_outputs(outputs: Any) -> tuple[Tensor, Tensor]:
    """The class logits (B, Q, K+1) and mask logits (B, Q, h, w) of a model output, an object or a dict."""
    names = ("class_queries_logits", "masks_queries_logits")
    if isinstance(outputs, Mapping):
        values = [outputs.get(name) for name in names]
    else:
        values = [getattr(outputs, name, None) for name in names]
    missing = [name for name, value in zip(names, values) if value is None]
    if missing:
        raise TypeError(
            f"outputs must have {' and '.join(names)} (a model output or a dict); "
            f"{type(outputs).__name__} lacks {', '.join(missing)}"
        )
    class_logits, mask_logits = values
    if not isinstance(class_logits, Tensor) or class_logits.dim() != 3 or class_logits.shape[-1] < 2:
        raise ValueError(
            "outputs.class_queries_logits must be a (batch, queries, classes + 1) tensor with at least one class, "
            f"got {getattr(class_logits, 'shape', type(class_logits).__name__)}"
        )
    if not isinstance(mask_logits, Tensor) or mask_logits.dim() != 4:
        raise ValueError(
            "outputs.masks_queries_logits must be a (batch, queries, height, width) tensor, "
            f"got {getattr(mask_logits, 'shape', type(mask_logits).__name__)}"
        )
    if class_logits.shape[:2] != mask_logits.shape[:2]:
        raise ValueError(
            "outputs.class_queries_logits and outputs.masks_queries_logits disagree on (batch, queries): "
            f"{tuple(class_logits.shape[:2])} and {tuple(mask_logits.shape[:2])}"
        )
    return class_logits.float(), mask_logits.float()


def _as_size(value: Any, name: str) -> Size:
    try:
        height, width = (int(v) for v in (value.tolist() if isinstance(value, Tensor) else value))
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (height, width) pair, got {value!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"{name} must be positive, got {(height, width)}")
    return height, width


def _as_sizes(values: Any, name: str, batch_size: int) -> list[Size] | None:
    if values is None:
        return None
    if isinstance(values, Tensor):
        values = values.tolist()
    if len(values) != batch_size:
        raise ValueError(f"{name} must have one (height, width) per image: {batch_size} expected, got {len(values)}")
    return [_as_size(value, f"{name}[{index}]") for index, value in enumerate(values)]


# ----------------------------------------------------------------------------------------------------------------------
# Resampling: PyTorch's bilinear (align_corners=False) and nearest as tables; cells; bounds
# ----------------------------------------------------------------------------------------------------------------------


class _Taps(NamedTuple):
    """1-D linear interpolation: output i = weight0[i] * input[index0[i]] + weight1[i] * input[index1[i]].

    ``index0`` never decreases, and ``index1 = min(index0 + 1, last)``: output i reads the *cell* ``index0[i]``, the
    pair of inputs (index0, index0 + 1).
    """

    index0: Tensor  # (n,) int64
    index1: Tensor  # (n,) int64
    weight0: Tensor  # (n,) float32
    weight1: Tensor  # (n,) float32


def _linear_taps(in_size: int, out_size: int, device: torch.device, extent: float | None = None) -> _Taps:
    """The taps of ``F.interpolate(mode="bilinear", align_corners=False)`` from ``in_size`` to ``out_size``.

    With ``extent``, the output spans only the first ``extent`` input pixels (a crop with a fractional border).
    """
    scale = np.float32(in_size) / np.float32(out_size) if extent is None else np.float32(extent / out_size)
    # PyTorch evaluates scale * (i + 0.5) - 0.5 with a single rounding (a fused multiply-add); float64 matches it.
    source = (float(scale) * (torch.arange(out_size, dtype=torch.float64) + 0.5) - 0.5).clamp(min=0).float()
    index0 = source.floor().long().clamp(max=in_size - 1)
    weight1 = (source - index0).clamp(0, 1)
    index1 = (index0 + 1).clamp(max=in_size - 1)
    return _Taps(*(t.to(device) for t in (index0, index1, 1 - weight1, weight1)))


def _nearest_index(in_size: int, out_size: int, device: torch.device) -> Tensor:
    """The source index of each output pixel of ``F.interpolate(mode="nearest")``: floor(i * in / out)."""
    if in_size == out_size:
        return torch.arange(out_size, device=device)
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    index = (torch.arange(out_size, dtype=torch.float32) * scale).floor().long().clamp(max=in_size - 1)
    return index.to(device)


def _take_columns(values: Tensor, index: Tensor) -> Tensor:
    """``values.index_select(-1, index)``, through ``gather`` (several times faster on CPU)."""
    return values.gather(-1, index.expand(*values.shape[:-1], len(index)))


def _take_grid(grid: Tensor, rows: Tensor, columns: Tensor) -> Tensor:
    """(..., h, w) -> (..., len(rows), len(columns)): the grid's ``rows`` and ``columns``."""
    return _take_columns(grid.index_select(-2, rows), columns)


def _resize_separable(values: Tensor, taps_y: _Taps, taps_x: _Taps) -> Tensor:
    """Bilinear resize of (..., h, w) with the given taps -> (..., len(taps_y), len(taps_x)); columns, then rows."""
    columns = _take_columns(values, taps_x.index0) * taps_x.weight0
    columns += _take_columns(values, taps_x.index1) * taps_x.weight1
    resized = columns.index_select(-2, taps_y.index0) * taps_y.weight0[:, None]
    resized += columns.index_select(-2, taps_y.index1) * taps_y.weight1[:, None]
    return resized


def _divmod(values: Tensor, divisor: int | Tensor) -> tuple[Tensor, Tensor]:
    """``values // divisor`` and ``values % divisor`` for non-negative int64 ``values`` and positive divisors,
    through a float64 division: exact below 2**52 (a quotient that is not an integer is at least 1 / divisor away
    from one), and several times faster than int64 division, which CPUs do not vectorize. Other devices (some have
    no float64) divide the integers."""
    if values.device.type != "cpu":
        quotient = torch.div(values, divisor, rounding_mode="floor")
    else:
        quotient = values.double().div_(divisor).floor_().long()
    return quotient, values - quotient * divisor


def _pixel_table(grid: Tensor) -> Tensor:
    """(C, h, w) -> (h*w, C) contiguous, a row per grid pixel (a 3-D permute copies several times faster than the
    transpose of the flattened (C, h*w) on CPU)."""
    if grid.shape[0] == 0:
        return grid.flatten(1).T  # (embedding_bag rejects the (h*w, 0) tensor that the copy would give)
    return grid.permute(1, 2, 0).contiguous().view(-1, grid.shape[0])


def _take(values: Tensor, index: Tensor) -> Tensor:
    """``values[index]`` for a 1-D ``values``, through ``index_select`` (much faster on CPU)."""
    return values.index_select(0, index.reshape(-1)).view(index.shape)


@functools.lru_cache(maxsize=256)
def _corner_taps(taps: _Taps, stride: int, rows: bool) -> tuple[Tensor, Tensor]:
    """Per output position (n, 4): the input index (times ``stride``) and the weight that each of the four corners
    (y0 x0, y0 x1, y1 x0, y1 x1) takes along this axis: taps (0, 0, 1, 1) for ``rows``, else (0, 1, 0, 1).
    Remembered: plans are, and these tables make a lookup two gathers."""
    order = [0, 0, 1, 1] if rows else [0, 1, 0, 1]
    indices, weights = _tap_pairs(taps)  # (2, n) each
    return (indices.T * stride)[:, order].contiguous(), weights.T[:, order].contiguous()


@functools.lru_cache(maxsize=256)
def _runs(index0: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """For each of ``size`` inputs, how many consecutive outputs start at it (``index0`` (n,) never decreases) and
    the first of them: (size,) int64 counts and starts. Remembered: plans are."""
    counts = torch.bincount(index0, minlength=size)
    return counts, counts.cumsum(0) - counts


@functools.lru_cache(maxsize=64)
def _run_areas(index0_y: Tensor, index0_x: Tensor, height: int, width: int) -> Tensor:
    """(height * width,) float64: how many outputs start at each grid pixel (:func:`_runs` of both axes)."""
    return (_runs(index0_y, height)[0][:, None] * _runs(index0_x, width)[0]).double().view(-1)


def _rectangle_pixels(
    first_rows: Tensor, rows: Tensor, first_columns: Tensor, columns: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The pixels of rectangles, ``rows`` x ``columns`` (m,) from (``first_rows``, ``first_columns``) (m,), one
    rectangle after the other, row-major within each: (n,) rectangle, row and column of each."""
    sizes = rows * columns
    rectangle = torch.repeat_interleave(torch.arange(len(sizes), device=sizes.device), sizes)  # (n,)
    within = torch.arange(len(rectangle), device=sizes.device) - _take(sizes.cumsum(0) - sizes, rectangle)
    within_rows, within_columns = _divmod(within, _take(columns, rectangle))
    return rectangle, _take(first_rows, rectangle) + within_rows, _take(first_columns, rectangle) + within_columns


def _pixels_of_cells(
    cell_y: Tensor, cell_x: Tensor, taps_y: _Taps, taps_x: _Taps, size: Size, limit: float
) -> tuple[Tensor, Tensor] | None:
    """The output pixels (ys, xs) whose taps start at the cells (cell_y, cell_x) (m,) of a grid of ``size``: per
    cell a rectangle (``index0`` never decreases), cell after cell; None when they are more than ``limit``."""
    counts_y, starts_y = _runs(taps_y.index0, size[0])
    counts_x, starts_x = _runs(taps_x.index0, size[1])
    rows, columns = _take(counts_y, cell_y), _take(counts_x, cell_x)
    if int((rows * columns).sum()) > limit:
        return None
    _, ys, xs = _rectangle_pixels(_take(starts_y, cell_y), rows, _take(starts_x, cell_x), columns)
    return ys, xs


def _bilinear_rows(width: int, taps_y: _Taps, taps_x: _Taps, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor]:
    """The flat indices (n, 4) of the four grid pixels (grid ``width`` wide) that output pixels (ys, xs) read, and
    their bilinear weights (n, 4), in the order (y0, x0), (y0, x1), (y1, x0), (y1, x1)."""
    row_index, row_weight = _corner_taps(taps_y, width, True)
    column_index, column_weight = _corner_taps(taps_x, 1, False)
    indices = row_index.index_select(0, ys) + column_index.index_select(0, xs)
    return indices, row_weight.index_select(0, ys) * column_weight.index_select(0, xs)


def _sample(table: Tensor, width: int, taps_y: _Taps, taps_x: _Taps, ys: Tensor, xs: Tensor) -> Tensor:
    """Bilinear values at output pixels (ys, xs) of a grid stored as ``table`` (h * w, C) -> (n, C): a weighted sum
    of four table rows per pixel, one ``embedding_bag``."""
    indices, weights = _bilinear_rows(width, taps_y, taps_x, ys, xs)
    return F.embedding_bag(indices, table, per_sample_weights=weights, mode="sum")


def _interpolate_at(values_at: Any, width: int, taps_y: _Taps, taps_x: _Taps, ys: Tensor, xs: Tensor) -> Tensor:
    """Bilinear values at output pixels (ys, xs): ``values_at(flat)`` gives the (n, C) values at flat indices of a
    grid ``width`` wide."""
    indices, weights = _bilinear_rows(width, taps_y, taps_x, ys, xs)
    if isinstance(values_at, _Remembered):  # sum the rows of its table in place: no (4n, C) copy
        table, rows = values_at.table(indices.flatten())
        return F.embedding_bag(rows.view(-1, 4), table, per_sample_weights=weights, mode="sum")
    corners = values_at(indices.flatten())  # (4n, C)
    bags = torch.arange(corners.shape[0], device=corners.device).view(-1, 4)
    return F.embedding_bag(bags, corners, per_sample_weights=weights, mode="sum")


def _extend(grid: Tensor, dim: int, pair: Any) -> Tensor:
    """``pair`` of each element of (..., h, w) with its next neighbour along ``dim`` (-2 or -1), the last one with
    itself."""
    length = grid.shape[dim]
    extended = torch.empty_like(grid)
    pair(grid.narrow(dim, 0, length - 1), grid.narrow(dim, 1, length - 1), out=extended.narrow(dim, 0, length - 1))
    extended.narrow(dim, length - 1, 1).copy_(grid.narrow(dim, length - 1, 1))
    return extended


def _cell_reduce(grid: Tensor, pair: Any) -> Tensor:
    """``pair`` (minimum, maximum, logical and/or) over the four corners of every cell of (..., h, w): the grid
    pixels (i or i + 1, j or j + 1) that a bilinear tap starting at (i, j) reads -> (..., h, w)."""
    return _extend(_extend(grid, -2, pair), -1, pair)


def _lower(probabilities: Tensor) -> Tensor:
    """Lower bounds (in place): those below ``_TINY`` become 0."""
    return probabilities.masked_fill_(probabilities < _TINY, 0)


def _upper(probabilities: Tensor) -> Tensor:
    """Upper bounds (in place): at least ``_TINY``."""
    return probabilities.clamp_(min=_TINY)


def _sigmoid_lower(logits: Tensor) -> Tensor:
    """sigmoid (in place) as a lower bound: less ``_TINY``, so that subnormal values become normal negative ones."""
    return logits.sigmoid_().sub_(_TINY)


def _sigmoid_upper(logits: Tensor) -> Tensor:
    """sigmoid (in place) as an upper bound: at least about ``_TINY``, and never subnormal on the way."""
    return logits.clamp_(min=_TINY_LOGIT).sigmoid_()


def _cell_agree(labels: Tensor) -> Tensor:
    """(h, w) bool: whether the four corners of each cell of the (h, w) ``labels`` carry the same label."""
    same_right = labels[:, :-1] == labels[:, 1:]  # (h, w - 1)
    same_down = labels[:-1, :] == labels[1:, :]  # (h - 1, w)
    agree = torch.ones_like(labels, dtype=torch.bool)
    agree[:-1, :-1] = same_down[:, :-1] & same_right[:-1] & same_right[1:]
    agree[-1, :-1] = same_right[-1]
    agree[:-1, -1] = same_down[:, -1]
    return agree


def _sure_argmax(low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
    """For (C, n) scores known only to lie between ``low`` and ``high``: the argmax of ``low`` over the channels
    (n,), and whether it is the argmax whatever the scores (its lower bound beats every other channel's upper
    bound) (n,)."""
    best_low, best = low.max(0)  # the first maximum, as argmax(0); reductions over dim 0 are the fast ones here
    rival = high.scatter(0, best[None], -math.inf).amax(0)
    return best, best_low > rival + _BOUND_MARGIN * rival.abs() + 1e-7


def _sure_top(values: Tensor, slack: Tensor) -> tuple[Tensor, Tensor]:
    """argmax of (n, C) ``values`` (n,), and whether it stays the argmax when any channel gains up to ``slack`` (n,)."""
    best = values.argmax(1)
    first = values.gather(1, best[:, None]).squeeze(1)
    second = values.scatter(1, best[:, None], -math.inf).amax(1)
    return best, first - second > slack + _BOUND_MARGIN * second.abs() + 1e-7


def _count_in_cells(inside: Tensor, plan: _Plan) -> Tensor:
    """Per channel, how many output pixels read only cells that are ``inside`` (C, h, w) bool or 0/1 float.

    An output row reads the cell rows from its first to its last (``plan.output_cells``), likewise for columns; rows
    that read d + 1 cell rows are counted against ``inside`` extended over d more rows (a minimum of 0/1 floats: a
    logical and). Per row span, the columns are weighted by how many output columns read each block of cell columns
    (float32 sums of at most W per row: exact), then the rows by how many output rows read each block of cell rows
    (float64: exact at any output size).
    """
    channels, height, width = inside.shape
    (row_counts, _), (column_counts, _) = plan.cell_blocks
    row_weights, column_weights = row_counts.double(), column_counts.float()
    total = None
    over_rows = inside.float()  # (C, h, w); no copy when it is float already
    for row_span in range(len(row_counts)):
        if row_span:
            over_rows = _extend(over_rows, -2, torch.minimum)
        over_both, per_row = over_rows, None
        for column_span in range(len(column_counts)):
            if column_span:
                over_both = _extend(over_both, -1, torch.minimum)
            counted = over_both.view(-1, width) @ column_weights[column_span]  # (C*h,)
            per_row = counted if per_row is None else per_row.add_(counted)
        counted = per_row.view(channels, height).double() @ row_weights[row_span]  # (C,)
        total = counted if total is None else total.add_(counted)
    return total.round().long()


def _frame_labels(best: Tensor, decided: Tensor, plan: _Plan, exact_argmax: Any) -> Tensor | None:
    """Labels (frame) int32 from per-cell labels ``best`` (h*w,) where ``decided`` (h*w,), and
    ``exact_argmax(flat)`` (n,) at the frame pixels of the other cells; None when those are too many."""
    height, width = plan.cells
    cell_y, cell_x = _divmod((~decided).nonzero().squeeze(1), width)  # the undecided cells
    limit = _SPARSE_LIMIT * plan.frame[0] * plan.frame[1]
    pixels = _pixels_of_cells(cell_y, cell_x, plan.frame_y, plan.frame_x, plan.cells, limit)  # their frame pixels
    if pixels is None:
        return None
    ys, xs = pixels
    # int32 label maps: the gathers and comparisons over the frame and the output move half the bytes of int64.
    cells = torch.where(decided, best.to(torch.int32), -1).view(height, width)
    labels = _take_grid(cells, plan.frame_y.index0, plan.frame_x.index0)  # (frame), -1 in the undecided cells
    if ys.numel():
        flat = ys * plan.frame[1] + xs
        labels.view(-1)[flat] = exact_argmax(flat).to(labels.dtype)
    return labels


class _Remembered:
    """``compute(flat)`` (n, C) values at flat grid indices, remembering every value computed: later calls (the
    output stage reads mostly the frame pixels that the frame stage evaluated) compute only the missing ones."""

    def __init__(self, compute: Any, size: int):
        self.compute = compute
        self.size = size
        self.values: Tensor | None = None  # (m, C) the values computed so far
        self.rows: Tensor | None = None  # (size,) int32: the row of each grid pixel in ``values``, -1 if none

    def __call__(self, flat: Tensor) -> Tensor:
        if self.values is None:
            return self._first(flat)
        table, rows = self.table(flat)
        return table.index_select(0, rows)

    def _first(self, flat: Tensor) -> Tensor:
        self.values = self.compute(flat)
        self.rows = torch.full((self.size,), -1, dtype=torch.int32, device=flat.device)
        self.rows[flat] = torch.arange(flat.numel(), dtype=torch.int32, device=flat.device)
        return self.values

    def table(self, flat: Tensor) -> tuple[Tensor, Tensor]:
        """The values so far (m, C) and the row (n,) int32 of each of ``flat`` in them, computing the missing ones."""
        if self.values is None:
            self._first(flat)
        rows = _take(self.rows, flat)
        missing = (rows < 0).nonzero().squeeze(1)
        if missing.numel():
            new = flat.index_select(0, missing).unique()
            start = self.values.shape[0]
            self.rows[new] = torch.arange(start, start + new.numel(), dtype=torch.int32, device=flat.device)
            self.values = torch.cat([self.values, self.compute(new)])
            rows = _take(self.rows, flat)
        return self.values, rows


class _ResizedLabels(NamedTuple):
    """Labels of a resized map, kept as the grid's labels (used where a cell's output pixels all take its label)
    plus the labels of the other output pixels."""

    labels: Tensor  # (h, w) the argmax on the grid
    open_y: Tensor  # (n,) the output pixels of the other cells
    open_x: Tensor
    open_labels: Tensor  # (n,)
    taps_y: _Taps
    taps_x: _Taps

    def map(self, values: Tensor) -> Tensor:
        """The output map (H, W) of ``values[label]`` (values' dtype)."""
        resized = _take_grid(_take(values, self.labels), self.taps_y.index0, self.taps_x.index0)
        resized[self.open_y, self.open_x] = _take(values, self.open_labels)
        return resized

    def counts(self, minlength: int) -> Tensor:
        """How many output pixels take each label (minlength,) int64, counted on the grid: a grid pixel stands for
        the output pixels whose taps start at it, less the open ones, counted with their own labels."""
        height, width = self.labels.shape
        weights = _run_areas(self.taps_y.index0, self.taps_x.index0, height, width)
        counts = torch.bincount(self.labels.view(-1), weights=weights, minlength=minlength)  # exact below 2**53
        replaced = self.labels[_take(self.taps_y.index0, self.open_y), _take(self.taps_x.index0, self.open_x)]
        counts = counts.round().long() - torch.bincount(replaced, minlength=minlength)
        return counts + torch.bincount(self.open_labels, minlength=minlength)


def _resize_labels(
    labels: Tensor,
    values_at: Any,
    taps_y: _Taps,
    taps_x: _Taps,
    *,
    remainder: Any = None,
) -> _ResizedLabels | None:
    """argmax over channels of a bilinearly resized (C, h, w) map, from its argmax ``labels`` (h, w).

    Where the four neighbours of an output pixel share a label, that label wins there too (a convex combination
    keeps the order). Elsewhere the channel values are interpolated: ``values_at(flat)`` gives the (n, C) values at
    flat grid indices. With ``remainder``, those values are only a part of the total: the rest is between 0 and
    ``remainder.slack(ys, xs)`` (n,) at output pixels, and ``remainder.at(flat)`` gives it at grid pixels,
    interpolated only where the slack leaves the argmax open. Returns None when too many pixels need interpolating.
    """
    width = labels.shape[1]
    cell_y, cell_x = (~_cell_agree(labels)).nonzero(as_tuple=True)
    limit = _SPARSE_LIMIT * len(taps_y.index0) * len(taps_x.index0)
    pixels = _pixels_of_cells(cell_y, cell_x, taps_y, taps_x, labels.shape, limit)  # the output pixels reading them
    if pixels is None:
        return None
    ys, xs = pixels
    best = ys
    if ys.numel():
        interpolated = _interpolate_at(values_at, width, taps_y, taps_x, ys, xs)  # (n, C)
        if remainder is None:
            best = interpolated.argmax(1)
        else:
            best, sure = _sure_top(interpolated, remainder.slack(ys, xs))
            unsure = (~sure).nonzero().squeeze(1)
            if unsure.numel():
                rest = _interpolate_at(remainder.at, width, taps_y, taps_x, ys[unsure], xs[unsure])
                best[unsure] = (interpolated[unsure] + rest).argmax(1)
    return _ResizedLabels(labels, ys, xs, best, taps_y, taps_x)


# ----------------------------------------------------------------------------------------------------------------------
# Geometry: mask logits -> frame (binarize / mix here) -> output
# ----------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """Where one image's masks go: the frame they are evaluated on, then the output size."""

    frame_y: _Taps  # mask-logit rows -> frame rows (padding already cropped)
    frame_x: _Taps
    dense_size: Size | None  # F.interpolate size whose top-left crop is the frame; None: resize with the taps
    frame: Size  # frame size after the crop
    output: Size
    output_y: _Taps | None  # frame -> output; None when the frame is the output
    output_x: _Taps | None
    nearest_y: Tensor | None  # nearest-neighbour frame row of each output row (binary masks)
    nearest_x: Tensor | None
    cells: Size  # (h, w) of the mask logits: their cells

    @functools.cached_property
    def span(self) -> int:
        """The most cells that two neighbouring frame pixels can be apart (1 when the frame is not smaller)."""
        steps = [taps.index0.diff() for taps in (self.frame_y, self.frame_x)]
        return max([1] + [int(step.max()) for step in steps if step.numel()])

    @functools.cached_property
    def output_cells(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """For each output row, the first and last mask-logit cell row it reads through the frame (both never
        decrease); same for columns."""
        ranges = []
        for frame_taps, output_taps in ((self.frame_y, self.output_y), (self.frame_x, self.output_x)):
            if output_taps is None:
                ranges.append((frame_taps.index0, frame_taps.index0))
            else:
                ranges.append((frame_taps.index0[output_taps.index0], frame_taps.index0[output_taps.index1]))
        return ranges[0], ranges[1]

    def frame_logits(self, mask_logits: Tensor) -> Tensor:
        """(N, h, w) mask logits -> (N, frame height, frame width)."""
        if self.dense_size is None:
            return _resize_separable(mask_logits, self.frame_y, self.frame_x)
        resized = F.interpolate(mask_logits[None], size=self.dense_size, mode="bilinear", align_corners=False)[0]
        return resized[:, : self.frame[0], : self.frame[1]]

    @functools.cached_property
    def cell_blocks(self) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
        """Output rows by the cell rows they read: ``counts[d, i]``, how many read exactly the cell rows i to
        i + d, and ``starts[d, i]``, the first of them (they are consecutive); (d + 1, h) int64 each, d up to the
        largest span. Then the same for columns."""
        blocks = []
        for (first, last), size in zip(self.output_cells, self.cells):
            spans = last - first
            counts = torch.stack([torch.bincount(first[spans == d], minlength=size) for d in range(int(spans.max()) + 1)])
            # Rows reading cell row i first are consecutive, those reading fewer cells first: the first row of span d
            # follows the rows of smaller spans after the rows that start at earlier cells.
            starts = (counts.sum(0).cumsum(0) - counts.sum(0))[None] + counts.cumsum(0) - counts
            blocks.append((counts, starts))
        return blocks[0], blocks[1]

    @functools.cached_property
    def nearest_counts(self) -> tuple[Tensor, Tensor]:
        """How many output rows (columns) each frame row (column) becomes under nearest resizing."""
        if self.nearest_y is None:
            device = self.frame_y.index0.device
            return torch.ones(self.frame[0], dtype=torch.long, device=device), torch.ones(
                self.frame[1], dtype=torch.long, device=device
            )
        return (
            torch.bincount(self.nearest_y, minlength=self.frame[0]),
            torch.bincount(self.nearest_x, minlength=self.frame[1]),
        )

    @functools.cached_property
    def nearest_areas(self) -> Tensor:
        """(frame height * frame width,) float64: how many output pixels each frame pixel becomes under nearest
        resizing."""
        rows, columns = self.nearest_counts
        return (rows[:, None] * columns).view(-1).double()

    def output_nearest(self, grid: Tensor) -> Tensor:
        """Nearest-neighbour resize of (..., frame height, frame width) to the output size."""
        if self.nearest_y is None:
            return grid
        return _take_grid(grid, self.nearest_y, self.nearest_x)


def _plans(
    mask_logits: Tensor,
    target_sizes: Any,
    mask_size: Any,
    input_sizes: Any,
    padded_size: Any,
) -> list[_Plan]:
    batch_size, _, height, width = mask_logits.shape
    targets = _as_sizes(target_sizes, "target_sizes", batch_size)
    inputs = _as_sizes(input_sizes, "input_sizes", batch_size)
    frame_size = None if mask_size is None else _as_size(mask_size, "mask_size")
    padded = (4 * height, 4 * width) if padded_size is None else _as_size(padded_size, "padded_size")
    if inputs is not None:
        for index, size in enumerate(inputs):
            if size[0] > padded[0] or size[1] > padded[1]:
                raise ValueError(f"input_sizes[{index}] = {size} is larger than padded_size {padded}")
    return [
        _plan(
            (height, width),
            None if targets is None else targets[index],
            None if inputs is None else inputs[index],
            frame_size,
            padded,
            mask_logits.device,
        )
        for index in range(batch_size)
    ]


@functools.lru_cache(maxsize=64)
def _plan(
    cells: Size, target: Size | None, image: Size | None, frame_size: Size | None, padded: Size, device: torch.device
) -> _Plan:
    """The plan of one image (remembered: the same sizes come back image after image, and a plan is immutable)."""
    height, width = cells
    if frame_size is not None:  # transformers' path: a fixed frame standing for the padded input
        frame = frame_size
        if image is not None:
            frame = (
                max(1, min(frame_size[0], round(image[0] * frame_size[0] / padded[0]))),
                max(1, min(frame_size[1], round(image[1] * frame_size[1] / padded[1]))),
            )
        output = target or image or frame
        frame_y = _linear_taps(height, frame_size[0], device)
        frame_x = _linear_taps(width, frame_size[1], device)
        frame_y = _Taps(*(t[: frame[0]] for t in frame_y))
        frame_x = _Taps(*(t[: frame[1]] for t in frame_x))
        dense_size = frame_size
    else:  # the original's path: the mask logits go straight to the output size
        output = target or image or (height, width)
        frame = output
        if image is None:
            frame_y = _linear_taps(height, output[0], device)
            frame_x = _linear_taps(width, output[1], device)
            dense_size = output
        else:
            frame_y = _linear_taps(height, output[0], device, extent=image[0] * height / padded[0])
            frame_x = _linear_taps(width, output[1], device, extent=image[1] * width / padded[1])
            dense_size = None
    resize = output != frame
    return _Plan(
        frame_y=frame_y,
        frame_x=frame_x,
        dense_size=dense_size,
        frame=frame,
        output=output,
        output_y=_linear_taps(frame[0], output[0], device) if resize else None,
        output_x=_linear_taps(frame[1], output[1], device) if resize else None,
        nearest_y=_nearest_index(frame[0], output[0], device) if resize else None,
        nearest_x=_nearest_index(frame[1], output[1], device) if resize else None,
        cells=cells,
    )


# ----------------------------------------------------------------------------------------------------------------------
# Semantic
# ----------------------------------------------------------------------------------------------------------------------


class _SemanticScores:
    """Class scores sum_q p(class | q) * sigmoid(mask logit of q) on the frame: bounds per mask-logit cell, exact
    values at chosen frame pixels.

    Bilinear weights are convex, so on the frame pixels of a mask-logit cell (the pixels whose taps start at that
    cell) each query's probability lies between the sigmoids of the cell's smallest and largest corner logit; mixed
    by the class probabilities these bound every class score there. The queries are split in two: the relevant ones
    (some class probability >= ``_RELEVANT_PROBABILITY``) are evaluated exactly where needed; the others (confident
    "no object") add at most ``slack`` = sum_q max_k p(k | q) * sigmoid(largest logit of q in the cell) to any class
    and are evaluated only where that could change the argmax. Classes whose upper bound is beaten everywhere by
    another class's lower bound are left out (``classes`` are the candidates; labels index into it).
    """

    def __init__(self, mask_logits: Tensor, class_probs: Tensor, plan: _Plan):
        relevant = class_probs.amax(1) >= _RELEVANT_PROBABILITY  # (Q,)
        self.plan = plan
        self.width = mask_logits.shape[-1]
        relevant, other = relevant.nonzero().squeeze(1), (~relevant).nonzero().squeeze(1)
        relevant_logits, other_logits = mask_logits.index_select(0, relevant), mask_logits.index_select(0, other)
        relevant_probs, other_probs = class_probs.index_select(0, relevant), class_probs.index_select(0, other)
        low = _sigmoid_lower(_cell_reduce(relevant_logits, torch.minimum)).flatten(1)  # (R, h*w)
        high = _sigmoid_upper(_cell_reduce(relevant_logits, torch.maximum)).flatten(1)
        other_high = _sigmoid_upper(_cell_reduce(other_logits, torch.maximum)).flatten(1)  # (Q - R, h*w)
        # Candidate classes, from looser bounds that need no (K, R) x (R, h*w) product: each relevant query counted
        # for its top class only (lower), plus its second-best probability for every class (upper). An output pixel
        # reads frame pixels from the block of cells (i..i + span, j..j + span) (span: the largest step of the frame
        # taps; 1 when the frame is larger than the mask logits); there every class b scores at least its smallest
        # lower bound over the block, so a class can win the pixel only if its largest upper bound over the block
        # reaches max_b (min over the block of b's lower bound).
        top_probs, top_classes = relevant_probs.topk(min(2, relevant_probs.shape[1]), dim=1)  # (R, 2)
        second = _upper(top_probs[:, -1].clone()) if top_probs.shape[1] > 1 else torch.zeros_like(top_probs[:, 0])
        tops, top_of_query = top_classes[:, 0].unique(return_inverse=True)  # (T,): the classes some query prefers
        rough_lower = low.new_zeros(len(tops), low.shape[1]).index_add_(0, top_of_query, top_probs[:, :1] * low)
        rough_upper = low.new_zeros(len(tops), low.shape[1]).index_add_(0, top_of_query, top_probs[:, :1] * high)
        other_top = _upper(other_probs.amax(1))  # (Q - R,)
        shared = second @ high + other_top @ other_high  # (h*w,): upper bound of any other class
        block_upper, block_shared = self._blocks(rough_upper, torch.maximum), self._blocks(shared[None], torch.maximum)
        reach = self._blocks(rough_lower, torch.minimum).amax(0) if len(tops) else torch.zeros_like(shared)
        candidate = torch.zeros(class_probs.shape[1], dtype=torch.bool, device=low.device)
        candidate[:] = bool((block_shared[0] >= reach).any())
        candidate[tops] = (block_upper + block_shared >= reach).any(1)
        self.classes = candidate.nonzero().squeeze(1)  # (K*,)
        self.relevant_probs, self.other_probs = relevant_probs[:, self.classes], other_probs[:, self.classes]
        # Score bounds of the candidate classes on each cell's frame pixels, and the other queries' slack.
        self.lower = _lower(self.relevant_probs.T.clone()) @ low  # (K*, h*w)
        self.upper = _upper(self.relevant_probs.T.clone()) @ high
        self.cell_slack = _upper(self.other_probs.amax(1)) @ other_high  # (h*w,)
        self.block_slack = self._blocks(self.cell_slack[None], torch.maximum)[0]  # (h*w,)
        self.relevant_table = _pixel_table(relevant_logits)  # (h*w, R)
        self.other_table = _pixel_table(other_logits)  # (h*w, Q - R)
        self.relevant = _Remembered(self._relevant, plan.frame[0] * plan.frame[1])

    def _blocks(self, per_cell: Tensor, reduce: Any) -> Tensor:
        """(C, h*w) per-cell values -> reduced over each block of cells (i..i + span, j..j + span) -> (C, h*w)."""
        grid = per_cell.view(-1, *self.plan.cells)
        for _ in range(self.plan.span):
            grid = _cell_reduce(grid, reduce)
        return grid.flatten(1)

    def _cells(self, frame_y: Tensor, frame_x: Tensor) -> Tensor:
        """Flat mask-logit cell of frame pixels (frame_y, frame_x)."""
        return _take(self.plan.frame_y.index0, frame_y) * self.width + _take(self.plan.frame_x.index0, frame_x)

    def _scores(self, table: Tensor, class_probs: Tensor, flat: Tensor) -> Tensor:
        frame_width = self.plan.frame[1]
        ys, xs = _divmod(flat, frame_width)
        logits = _sample(table, self.width, self.plan.frame_y, self.plan.frame_x, ys, xs)  # (n, queries)
        return logits.sigmoid_() @ class_probs  # (n, K*)

    def _relevant(self, flat: Tensor) -> Tensor:
        """(n,) flat frame indices -> (n, K*) scores of the relevant queries (read through ``relevant``)."""
        return self._scores(self.relevant_table, self.relevant_probs, flat)

    def at(self, flat: Tensor) -> Tensor:
        """(n,) flat frame indices -> (n, K*) scores of the other queries."""
        return self._scores(self.other_table, self.other_probs, flat)

    def slack(self, output_y: Tensor, output_x: Tensor) -> Tensor:
        """Upper bound (n,) of the other queries' score of any class at output pixels (output_y, output_x)."""
        cells = self._cells(_take(self.plan.output_y.index0, output_y), _take(self.plan.output_x.index0, output_x))
        return _take(self.block_slack, cells)

    def _exact_argmax(self, flat: Tensor) -> Tensor:
        scores = self.relevant(flat)  # (n, K*)
        cells = self._cells(*_divmod(flat, self.plan.frame[1]))
        best, sure = _sure_top(scores, _take(self.cell_slack, cells))
        unsure = (~sure).nonzero().squeeze(1)
        if unsure.numel():
            best[unsure] = (scores[unsure] + self.at(flat[unsure])).argmax(1)
        return best

    def frame_labels(self) -> Tensor | None:
        """The argmax on the frame (indices into ``classes``), or None when most of it needs exact evaluation."""
        if len(self.classes) == 1:
            return torch.zeros(self.plan.frame, dtype=torch.long, device=self.lower.device)
        best, decided = _sure_argmax(self.lower, self.upper + self.cell_slack)
        return _frame_labels(best, decided, self.plan, self._exact_argmax)


def _semantic_image(mask_logits: Tensor, class_probs: Tensor, plan: _Plan) -> Tensor:
    scores = _SemanticScores(mask_logits, class_probs, plan)
    labels = scores.frame_labels()  # indices into scores.classes
    if labels is not None:
        if plan.output_y is None:
            return _take(scores.classes, labels)
        if len(scores.classes) == 1:
            return scores.classes.expand(plan.output).clone()
        resized = _resize_labels(labels, scores.relevant, plan.output_y, plan.output_x, remainder=scores)
        if resized is not None:
            return resized.map(scores.classes)
    # The dense computation, as transformers does it (noise-like masks: the shortcuts would not save anything).
    dense = torch.einsum("qc,qhw->chw", class_probs, plan.frame_logits(mask_logits).sigmoid_())  # (K, frame)
    if plan.output_y is not None:
        dense = F.interpolate(dense[None], size=plan.output, mode="bilinear", align_corners=False)[0]
    return dense.max(0).indices  # argmax(0), the first maximum on ties, faster


@torch.no_grad()
def post_process_semantic_segmentation(
    outputs: Any,
    target_sizes: Sequence[Size] | None = None,
    *,
    mask_size: Size | None = (384, 384),
    input_sizes: Sequence[Size] | None = None,
    padded_size: Size | None = None,
) -> list[Tensor]:
    """Semantic segmentation maps: per pixel, the class with the highest sum over queries of p(class) x p(mask).

    Args:
        outputs: the model output, or any object or dict with ``class_queries_logits`` (B, Q, K+1) and
            ``masks_queries_logits`` (B, Q, h, w).
        target_sizes: one (height, width) per image: the output size. None: ``input_sizes`` if given, else the
            mask frame.
        mask_size: the size every mask is first resized to, as ``transformers`` does (384x384); None: the mask
            logits are resized straight to the output size and mixed there (the original code).
        input_sizes: one (height, width) per image: its size inside the padded ``pixel_values``; the padding is
            cropped before resizing to the output size. None: nothing is cropped (``transformers``).
        padded_size: (height, width) of ``pixel_values``; default 4x the mask logits' size.

    Returns:
        One (H, W) int64 tensor of class ids per image.
    """
    class_logits, mask_logits = _read_outputs(outputs)
    plans = _plans(mask_logits, target_sizes, mask_size, input_sizes, padded_size)
    class_probs = class_logits.softmax(-1)[..., :-1]  # (B, Q, K)
    return [_semantic_image(mask_logits[i], class_probs[i], plan) for i, plan in enumerate(plans)]


# ----------------------------------------------------------------------------------------------------------------------
# Instance
# ----------------------------------------------------------------------------------------------------------------------


def _logit(probability: float) -> float:
    """The mask logit above which sigmoid(logit) > probability (0 for 0.5, exactly ``logit > 0``)."""
    if probability <= 0:
        return -math.inf
    if probability >= 1:
        return math.inf
    return math.log(probability / (1 - probability))


def _to_coco_rle(masks: Tensor) -> list[dict]:
    """(N, H, W) bool -> N COCO RLEs ``{"size": [H, W], "counts": str}`` (pycocotools, column-major)."""
    from pycocotools import mask as mask_utils

    if masks.shape[0] == 0:
        return []
    fortran = np.asfortranarray(masks.permute(1, 2, 0).to(torch.uint8).cpu().numpy())  # (H, W, N)
    encoded = mask_utils.encode(fortran)
    return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in encoded]


def _instance_image(
    class_logits: Tensor,
    mask_logits: Tensor,
    plan: _Plan,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    return_coco_annotation: bool,
    return_binary_maps: bool,
) -> dict[str, Any]:
    device = mask_logits.device
    num_queries, num_classes = class_logits.shape[0], class_logits.shape[1] - 1
    class_probs = class_logits.softmax(-1)[:, :-1]  # (Q, K)
    # The top-Q (query, class) pairs, in topk(sorted=False) order as transformers and the original take them.
    candidate_scores, flat = class_probs.flatten().topk(num_queries, sorted=False)  # (Q,)
    # A mask score is at most 1, so a pair whose class probability misses the threshold cannot reach it.
    candidate = (candidate_scores >= threshold).nonzero().squeeze(1)
    candidate_scores, flat = candidate_scores[candidate], flat[candidate]  # (N,)
    if candidate.numel() == 0:
        empty = torch.zeros((0, *plan.output), dtype=torch.bool, device=device)
        segmentation = _to_coco_rle(empty) if return_coco_annotation else empty
        if not (return_coco_annotation or return_binary_maps):
            segmentation = torch.full(plan.output, -1, dtype=torch.long, device=device)
        return {"segmentation": segmentation, "segments_info": []}
    queries, inverse = torch.div(flat, num_classes, rounding_mode="floor").unique(return_inverse=True)
    logits = plan.frame_logits(mask_logits.index_select(0, queries))  # (U, frame): each distinct query once
    binary = torch.gt(logits, _logit(mask_threshold), out=torch.empty_like(logits))  # 0/1 floats, as transformers
    # Per query: its mask area, and its own area at the output size (frame pixel (i, j) becomes rows[i] x
    # columns[j] output pixels when nearest-resized): one pass over the masks, exact in float32 (at most W per row).
    rows, columns = plan.nearest_counts
    per_row = binary.view(-1, binary.shape[-1]) @ torch.stack([torch.ones_like(columns), columns], 1).float()
    per_row = per_row.view(len(queries), -1, 2)  # (U, h, 2)
    mask_area, own = per_row[..., 0].sum(1), (per_row[..., 1].long() * rows).sum(1)[inverse]  # (U,), (N,)
    mask_scores = logits.sigmoid_().mul_(binary).flatten(1).sum(1) / (mask_area + 1e-6)  # mean probability inside
    scores = candidate_scores * mask_scores[inverse]  # (N,)
    # transformers tests for emptiness at the output size: a thin mask can vanish when nearest-resized down.
    kept = ((scores >= threshold) & (own > 0)).nonzero().squeeze(1)
    labels, scores, own, kept_query = flat[kept] % num_classes, scores[kept], own[kept], inverse[kept]
    instance_masks = binary[kept_query] > 0 if return_binary_maps or return_coco_annotation else None

    # Paint in order, later instances over earlier ones: each pixel takes the last instance covering it, and the
    # entries of one query share its mask, so a query paints with the rank of its last kept entry.
    rank = torch.zeros(len(queries), device=device)
    rank.scatter_reduce_(0, kept_query, torch.arange(1, kept.numel() + 1, device=device, dtype=rank.dtype), "amax")
    painted = binary.mul_(rank.view(-1, 1, 1)).amax(0).to(torch.int32)  # (frame): 1 + the instance on top, 0: none
    # Keep an instance if enough of its own (output-size) mask is still visible: its frame pixels counted with the
    # output pixels each becomes.
    visible = torch.bincount(painted.view(-1), weights=plan.nearest_areas, minlength=kept.numel() + 1)[1:]
    survives = visible >= overlap_mask_area_threshold * own.double()
    ids = torch.arange(-1, kept.numel(), device=device)  # segment id of each painted value
    if not bool(survives.all()):
        ids[1:] = torch.where(survives, survives.long().cumsum(0) - 1, -1)
        labels, scores = labels[survives], scores[survives]
        instance_masks = None if instance_masks is None else instance_masks[survives]
    segmentation = plan.output_nearest(_take(ids, painted))  # (H, W), -1 where no instance
    segments_info = [
        {"id": index, "label_id": label, "was_fused": False, "score": round(score, 6)}
        for index, (label, score) in enumerate(zip(labels.tolist(), scores.tolist()))
    ]
    if return_binary_maps or return_coco_annotation:
        binary_maps = plan.output_nearest(instance_masks)  # (N, H, W) bool
        segmentation = _to_coco_rle(binary_maps) if return_coco_annotation else binary_maps
    return {"segmentation": segmentation, "segments_info": segments_info}


@torch.no_grad()
def post_process_instance_segmentation(
    outputs: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    target_sizes: Sequence[Size] | None = None,
    return_coco_annotation: bool = False,
    return_binary_maps: bool = False,
    *,
    mask_size: Size | None = (384, 384),
    input_sizes: Sequence[Size] | None = None,
    padded_size: Size | None = None,
) -> list[dict[str, Any]]:
    """Instance segmentation: the top-Q (query, class) pairs scoring at least ``threshold``.

    Args:
        outputs: the model output, or any object or dict with ``class_queries_logits`` (B, Q, K+1) and
            ``masks_queries_logits`` (B, Q, h, w).
        threshold: minimum score (class probability x mean mask probability inside the mask) of a kept instance.
            0 keeps all Q pairs with a non-empty mask (the original keeps all, for COCO AP).
        mask_threshold: mask probability above which a pixel belongs to the mask.
        overlap_mask_area_threshold: minimum fraction of an instance's mask that must stay visible in
            ``segmentation`` after later instances are painted over it; 0 keeps every instance.
        target_sizes: one (height, width) per image: the output size. None: ``input_sizes`` if given, else the
            mask frame.
        return_coco_annotation: return one COCO RLE per instance instead of the map.
        return_binary_maps: return the (N, H, W) bool stack of instance masks instead of the map.
        mask_size: the size every mask is first resized to, as ``transformers`` does (384x384); None: the mask
            logits are resized straight to the output size and binarized there (the original code).
        input_sizes: one (height, width) per image inside the padded ``pixel_values``; crops the padding.
        padded_size: (height, width) of ``pixel_values``; default 4x the mask logits' size.

    Returns:
        One dict per image: ``segmentation``, an (H, W) int64 map of instance ids (-1: none; later instances
        drawn over earlier ones), or the list of COCO RLEs, or the (N, H, W) bool masks; ``segments_info``, one
        dict per instance: ``id`` (0, 1, ...), ``label_id``, ``was_fused`` (False) and ``score``.
    """
    if return_coco_annotation and return_binary_maps:
        raise ValueError("return_coco_annotation and return_binary_maps cannot both be True")
    class_logits, mask_logits = _read_outputs(outputs)
    plans = _plans(mask_logits, target_sizes, mask_size, input_sizes, padded_size)
    return [
        _instance_image(
            class_logits[i],
            mask_logits[i],
            plan,
            threshold,
            mask_threshold,
            overlap_mask_area_threshold,
            return_coco_annotation,
            return_binary_maps,
        )
        for i, plan in enumerate(plans)
    ]


# ----------------------------------------------------------------------------------------------------------------------
# Panoptic
# ----------------------------------------------------------------------------------------------------------------------


class _WeightedMasks:
    """score x sigmoid(mask logit) of the kept queries on the frame: bounds per mask-logit cell, exact values at
    chosen frame pixels (the bounds of :class:`_SemanticScores`)."""

    def __init__(self, mask_logits: Tensor, scores: Tensor, plan: _Plan):
        self.plan = plan
        self.mask_logits = mask_logits  # (N, h, w)
        self.scores = scores  # (N,)
        self.width = mask_logits.shape[-1]
        self.table = _pixel_table(mask_logits)  # (h*w, N)
        weights = scores[:, None, None]
        self.low = _sigmoid_lower(_cell_reduce(mask_logits, torch.minimum)).mul_(weights)  # (N, h, w)
        self.high = _sigmoid_upper(_cell_reduce(mask_logits, torch.maximum)).mul_(weights)
        self.at = _Remembered(self._at, plan.frame[0] * plan.frame[1])

    def _at(self, flat: Tensor) -> Tensor:
        """(n,) flat frame indices -> (n, N) values (read through ``at``)."""
        frame_width = self.plan.frame[1]
        ys, xs = _divmod(flat, frame_width)
        return _sample(self.table, self.width, self.plan.frame_y, self.plan.frame_x, ys, xs).sigmoid_() * self.scores

    def owner(self) -> Tensor | None:
        """The argmax query on the frame, or None when most of it needs the exact evaluation."""
        best, decided = _sure_argmax(self.low.flatten(1), self.high.flatten(1))
        return _frame_labels(best, decided, self.plan, lambda flat: self.at(flat).argmax(1))

    def _surely(
        self, threshold: float, queries: Tensor | None = None, out: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """(N or n, h, w): the cells whose frame pixels are surely above ``threshold``, and surely below it (with a
        margin for the rounding of the interpolations); bool, or 0/1 written into the two halves of ``out``."""
        low, high = (self.low, self.high) if queries is None else (self.low[queries], self.high[queries])
        margin = _BOUND_MARGIN * abs(threshold) + 1e-7
        above, below = (None, None) if out is None else out.chunk(2)
        return torch.ge(low, threshold + margin, out=above), torch.lt(high, threshold - margin, out=below)

    def own_area_bounds(self, threshold: float) -> tuple[Tensor, Tensor]:
        """Per query, bounds (N,) on how many output pixels reach ``threshold``: those reading only cells surely
        above it, and all but those reading only cells surely below it."""
        both = self.low.new_empty((2 * len(self.low), *self.low.shape[1:]))  # 0/1 floats straight from the tests
        self._surely(threshold, out=both)
        return self._bounds(both)

    def _bounds(self, both: Tensor) -> tuple[Tensor, Tensor]:
        """The own-area bounds (n,) from the cells surely above and surely below the threshold (2n, h, w), stacked."""
        inside, outside = _count_in_cells(both, self.plan).chunk(2)
        return inside, self.plan.output[0] * self.plan.output[1] - outside

    def own_areas(self, queries: Tensor, threshold: float, bounds: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The exact own areas (n,) of ``queries``, as transformers counts them (``bounds``: theirs from
        :meth:`own_area_bounds`, if known). Two ways, the cheaper one by the number of pixels each evaluates: densely
        on the box of output pixels where one of the queries may reach ``threshold``, or pixel by pixel on the band
        between the output pixels reading only cells surely above it (counted by the lower bound) and those reading
        only cells surely below."""
        box = self._box(queries, threshold)
        if box is None:  # no output pixel reads a cell where one of them may reach the threshold
            return torch.zeros(len(queries), dtype=torch.long, device=queries.device)
        surely = None if bounds is not None else self._surely(threshold, queries)  # the cell tests, when needed
        lower, upper = self._bounds(torch.cat(surely)) if surely is not None else bounds
        (frame_y, output_y), (frame_x, output_x) = box
        box_pixels = len(queries) * len((output_y or frame_y).index0) * len((output_x or frame_x).index0)
        if box_pixels < _BOX_PIXELS + _BOX_PIXELS_PER_BAND_PIXEL * int((upper - lower).sum()):
            return self._own_areas_on_box(queries, threshold, box)
        above, below = surely if surely is not None else self._surely(threshold, queries)
        band, ys, xs = _band_pixels(above, below, self.plan)
        values = self._output_values(queries[band], ys, xs)
        return lower + torch.bincount(band[values >= threshold], minlength=len(queries))

    def _box(self, queries: Tensor, threshold: float) -> tuple[tuple[_Taps, _Taps | None], tuple[_Taps, _Taps | None]] | None:
        """The frame and output taps (rows, then columns) of the box of output pixels that read a cell where one of
        ``queries`` may reach ``threshold``; None when there is none."""
        reach = (self.high[queries] * (1 + _BOUND_MARGIN) >= threshold).any(0)  # (h, w)
        (first_rows, last_rows), (first_columns, last_columns) = self.plan.output_cells
        rows = _crop_taps(self.plan.frame_y, self.plan.output_y, first_rows, last_rows, reach.any(1))
        columns = _crop_taps(self.plan.frame_x, self.plan.output_x, first_columns, last_columns, reach.any(0))
        return None if rows is None or columns is None else (rows, columns)

    def _own_areas_on_box(self, queries: Tensor, threshold: float, box: Any) -> Tensor:
        """The exact own areas (n,) of ``queries``, evaluated densely on ``box`` (:meth:`_box`)."""
        (frame_y, output_y), (frame_x, output_x) = box
        logits = self.mask_logits.index_select(0, queries)
        probs = _resize_separable(logits, frame_y, frame_x).sigmoid_()  # (n, frame box)
        if output_y is not None:
            probs = _resize_separable(probs, output_y, output_x)  # (n, output box)
        return (probs.mul_(self.scores[queries, None, None]) >= threshold).flatten(1).sum(1)

    def _output_values(self, queries: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """score x probability (n,) of ``queries`` at output pixels (ys, xs), rounded as the dense resizes (columns,
        then rows; a sum of two products is the same in either order)."""
        if self.plan.output_y is None:  # the frame is the output
            return self._frame_values(queries, ys, xs) * _take(self.scores, queries)
        (rows, row_weights), (columns, column_weights) = _tap_pairs(self.plan.output_y), _tap_pairs(self.plan.output_x)
        rows, row_weights = _take_columns(rows, ys), _take_columns(row_weights, ys)  # (2, n): frame rows, weights
        columns, column_weights = _take_columns(columns, xs), _take_columns(column_weights, xs)
        corners = self._frame_values(
            queries.expand(2, 2, -1), rows[:, None].expand(-1, 2, -1), columns[None].expand(2, -1, -1)
        )  # (2, 2, n): row, column, pixel
        probabilities = ((corners * column_weights).sum(1) * row_weights).sum(0)
        return probabilities * _take(self.scores, queries)

    def _frame_values(self, queries: Tensor, ys: Tensor, xs: Tensor) -> Tensor:
        """sigmoid of the frame logits of ``queries`` at frame pixels (ys, xs) (any equal shapes), rounded as
        :func:`_resize_separable`."""
        shape = ys.shape
        queries, ys, xs = queries.reshape(-1), ys.reshape(-1), xs.reshape(-1)
        (rows, row_weights), (columns, column_weights) = _tap_pairs(self.plan.frame_y), _tap_pairs(self.plan.frame_x)
        height, width = self.plan.cells
        rows = _take_columns(rows, ys) * width + queries * (height * width)  # (2, n) flat row starts
        columns, column_weights = _take_columns(columns, xs), _take_columns(column_weights, xs)
        corners = _take(self.mask_logits.reshape(-1), rows[:, None] + columns[None])  # (2, 2, n): row, column, pixel
        logits = ((corners * column_weights).sum(1) * _take_columns(row_weights, ys)).sum(0)
        return logits.sigmoid_().view(shape)


def _crop_taps(
    frame_taps: _Taps, output_taps: _Taps | None, first: Tensor, last: Tensor, wanted: Tensor
) -> tuple[_Taps, _Taps | None] | None:
    """The frame and output taps (one axis) of the output pixels from the first to the last that reads a ``wanted``
    (h,) mask-logit cell; output pixel i reads the cells ``first[i]`` to ``last[i]``. The output taps then index
    into the cropped frame. None when no output pixel reads a wanted cell."""
    wanted = wanted.nonzero().squeeze(1)
    if wanted.numel() == 0:
        return None
    inside = ((last >= wanted[0]) & (first <= wanted[-1])).nonzero().squeeze(1)
    if inside.numel() == 0:
        return None
    start, stop = int(inside[0]), int(inside[-1]) + 1
    if output_taps is None:  # the frame is the output
        return _Taps(*(t[start:stop] for t in frame_taps)), None
    frame_start, frame_stop = int(output_taps.index0[start]), int(output_taps.index1[stop - 1]) + 1
    output_taps = _Taps(*(t[start:stop] for t in output_taps))
    output_taps = output_taps._replace(index0=output_taps.index0 - frame_start, index1=output_taps.index1 - frame_start)
    return _Taps(*(t[frame_start:frame_stop] for t in frame_taps)), output_taps


@functools.lru_cache(maxsize=256)
def _tap_pairs(taps: _Taps) -> tuple[Tensor, Tensor]:
    """(2, n) indices (index0, index1) and (2, n) weights of ``taps`` (remembered: plans are)."""
    return torch.stack([taps.index0, taps.index1]), torch.stack([taps.weight0, taps.weight1])


def _band_pixels(above: Tensor, below: Tensor, plan: _Plan) -> tuple[Tensor, Tensor, Tensor]:
    """The output pixels whose cells are neither all ``above`` nor all ``below`` (n, h, w) bool, per channel:
    (m,) channel, row and column of each.

    An output pixel reads the block of cells from its first row and column to its last: per block shape (d more
    rows, e more columns) the blocks starting at cell (i, j) that are mixed, then their output pixels, a rectangle
    of ``counts`` rows and columns from ``starts`` (:attr:`_Plan.cell_blocks`).
    """
    (row_counts, row_starts), (column_counts, column_starts) = plan.cell_blocks
    mixed = []
    above_rows, below_rows = above, below
    for row_span in range(len(row_counts)):
        if row_span:
            above_rows = _extend(above_rows, -2, torch.logical_and)
            below_rows = _extend(below_rows, -2, torch.logical_and)
        above_both, below_both = above_rows, below_rows
        for column_span in range(len(column_counts)):
            if column_span:
                above_both = _extend(above_both, -1, torch.logical_and)
                below_both = _extend(below_both, -1, torch.logical_and)
            mixed.append(~(above_both | below_both))
    shape, channel, row, column = torch.stack(mixed).nonzero(as_tuple=True)  # the mixed blocks
    row_span, column_span = _divmod(shape, len(column_counts))
    rows, columns = row_counts[row_span, row], column_counts[column_span, column]
    first_row, first_column = row_starts[row_span, row], column_starts[column_span, column]
    block, ys, xs = _rectangle_pixels(first_row, rows, first_column, columns)
    return _take(channel, block), ys, xs


def _panoptic_owner_and_area(
    mask_logits: Tensor,
    scores: Tensor,
    plan: _Plan,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
) -> tuple[Any, Tensor, Tensor] | None:
    """The kept query owning each output pixel ((H, W), or resized labels), and per query its won area and its own
    area (N,), the own area exact only where it decides the overlap test; None when the dense computation is
    cheaper."""
    masks = _WeightedMasks(mask_logits, scores, plan)
    owner = masks.owner()
    if owner is None:
        return None
    if plan.output_y is None:
        area = torch.bincount(owner.view(-1), minlength=len(scores))  # (N,)
    else:
        owner = _resize_labels(owner, masks.at, plan.output_y, plan.output_x)
        if owner is None:
            return None
        area = owner.counts(len(scores))

    def passes(own_area: Tensor) -> Tensor:  # the overlap test, with transformers' float32 division
        ratio = (area.float() / own_area.float()).double()
        return (area > 0) & (own_area > 0) & (ratio > overlap_mask_area_threshold)

    def needed(lower: Tensor, upper: Tensor) -> Tensor:  # whether the test can differ for own areas in between
        same = (lower == upper) | (area == 0) | ((lower > 0) & (passes(lower) == passes(upper)))
        return ~same

    # Not on a second thread: torch ops from two threads ran two OpenMP teams on two cores, each slowing the other.
    lower, upper = masks.own_area_bounds(mask_threshold)
    own_area = lower.clone()  # enough where the test cannot tell own areas between the bounds apart
    exact = needed(lower, upper).nonzero().squeeze(1)
    if exact.numel():
        own_area[exact] = masks.own_areas(exact, mask_threshold, (lower[exact], upper[exact]))
    return owner, area, own_area


def _panoptic_image(
    class_logits: Tensor,
    mask_logits: Tensor,
    plan: _Plan,
    threshold: float,
    mask_threshold: float,
    overlap_mask_area_threshold: float,
    label_ids_to_fuse: set[int],
) -> dict[str, Any]:
    device = mask_logits.device
    num_classes = class_logits.shape[1] - 1
    scores, labels = class_logits.softmax(-1).max(-1)  # (Q,)
    kept = ((labels != num_classes) & (scores > threshold)).nonzero().squeeze(1)
    if kept.numel() == 0:
        return {"segmentation": torch.zeros(plan.output, dtype=torch.long, device=device), "segments_info": []}
    scores, labels, mask_logits = scores[kept], labels[kept], mask_logits.index_select(0, kept)  # (N,), (N, h, w)
    found = _panoptic_owner_and_area(mask_logits, scores, plan, mask_threshold, overlap_mask_area_threshold)
    if found is not None:
        owner, area, own_area = found
    else:  # the dense computation, as transformers does it
        probs = plan.frame_logits(mask_logits).sigmoid_()  # (N, frame)
        if plan.output_y is not None:
            probs = F.interpolate(probs[None], size=plan.output, mode="bilinear", align_corners=False)[0]
        weighted = probs.mul_(scores[:, None, None])
        owner = weighted.max(0).indices  # (H, W) index into the kept queries; max(0) is argmax(0), faster
        area = torch.bincount(owner.flatten(), minlength=kept.numel())  # (N,)
        own_area = (weighted >= mask_threshold).flatten(1).sum(1)
    ratio = area.float() / own_area.float()  # float32, as transformers divides
    valid = (area > 0) & (own_area > 0) & (ratio.double() > overlap_mask_area_threshold)

    # Segment ids 1, 2, ... in query order; queries of a fused label share their label's first segment.
    segment_of_query = [0] * kept.numel()
    segments_info: list[dict[str, Any]] = []
    fused_segment: dict[int, dict[str, Any]] = {}
    valid_list, labels_list, scores_list = valid.tolist(), labels.tolist(), scores.tolist()
    for index, (is_valid, label, score) in enumerate(zip(valid_list, labels_list, scores_list)):
        if not is_valid:
            continue
        score = round(score, 6)
        segment = fused_segment.get(label)
        if segment is not None:
            segment["score"] = max(segment["score"], score)
        else:
            segment = {"id": len(segments_info) + 1, "label_id": label, "was_fused": label in label_ids_to_fuse}
            segment["score"] = score
            segments_info.append(segment)
            if label in label_ids_to_fuse:
                fused_segment[label] = segment
        segment_of_query[index] = segment["id"]
    segment_ids = torch.tensor(segment_of_query, dtype=torch.long, device=device)
    segmentation = owner.map(segment_ids) if isinstance(owner, _ResizedLabels) else _take(segment_ids, owner)
    return {"segmentation": segmentation, "segments_info": segments_info}


@torch.no_grad()
def post_process_panoptic_segmentation(
    outputs: Any,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
    overlap_mask_area_threshold: float = 0.8,
    label_ids_to_fuse: set[int] | None = None,
    target_sizes: Sequence[Size] | None = None,
    *,
    mask_size: Size | None = (384, 384),
    input_sizes: Sequence[Size] | None = None,
    padded_size: Size | None = None,
) -> list[dict[str, Any]]:
    """Panoptic segmentation: each pixel goes to the kept query with the highest score x mask probability.

    Args:
        outputs: the model output, or any object or dict with ``class_queries_logits`` (B, Q, K+1) and
            ``masks_queries_logits`` (B, Q, h, w).
        threshold: a query is kept if its best class is not "no object" and its probability exceeds this.
        mask_threshold: a pixel is in a query's own mask where score x mask probability reaches this.
        overlap_mask_area_threshold: a segment survives if the pixels it wins over its own mask's area exceed this.
        label_ids_to_fuse: classes whose queries merge into one segment (stuff). None: none.
        target_sizes: one (height, width) per image: the output size. None: ``input_sizes`` if given, else the
            mask frame.
        mask_size: the size every mask is first resized to, as ``transformers`` does (384x384); None: the mask
            logits are resized straight to the output size (the original code).
        input_sizes: one (height, width) per image inside the padded ``pixel_values``; crops the padding.
        padded_size: (height, width) of ``pixel_values``; default 4x the mask logits' size.

    Returns:
        One dict per image: ``segmentation``, an (H, W) int64 map of segment ids (1, 2, ...; 0: no segment), and
        ``segments_info``, one dict per segment: ``id``, ``label_id``, ``was_fused`` and ``score``.
    """
    class_logits, mask_logits = _read_outputs(outputs)
    plans = _plans(mask_logits, target_sizes, mask_size, input_sizes, padded_size)
    fuse = set() if label_ids_to_fuse is None else {int(label) for label in label_ids_to_fuse}
    return [
        _panoptic_image(
            class_logits[i], mask_logits[i], plan, threshold, mask_threshold, overlap_mask_area_threshold, fuse
        )
        for i, plan in enumerate(plans)
    ]
