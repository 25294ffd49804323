"""Point sampling for the mask losses: read masks at a few points instead of at every pixel.

Follows PointRend's ``point_features.py`` as Mask2Former uses it (section 3.2 of the paper, "importance sampling"):
the matcher compares masks at ``num_points`` uniform random points; the loss reads them at points that are mostly
where the prediction is uncertain (logit near 0) plus a few uniform ones.

Shape letters: R masks (one per matched pair), C channels, P points, H/W height/width. Points are (x, y) in
[0, 1] x [0, 1], (0, 0) the top-left corner of the top-left pixel, as ``grid_sample(align_corners=False)`` reads them.
Points are drawn with ``torch.rand`` in the order ``transformers`` draws them, so one seed gives the same points.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def point_sample(features: Tensor, points: Tensor) -> Tensor:
    """Bilinearly read ``features`` at ``points`` (zeros outside the map).

    Args:
        features: (B, C, H, W) maps.
        points: (B, P, 2) (x, y) coordinates in [0, 1]; cast to the dtype of ``features`` (``grid_sample`` needs one
            dtype).

    Returns:
        (B, C, P) the features at the points.
    """
    grid = (2.0 * points - 1.0).to(features.dtype).unsqueeze(2)  # (B, P, 1, 2) in [-1, 1]
    sampled = F.grid_sample(features, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B, C, P, 1)
    return sampled.squeeze(3)  # (B, C, P)


def sample_maps_at_points(maps: Tensor, points: Tensor) -> Tensor:
    """:func:`point_sample` of many maps at one set of points, as ``grid_sample`` reads them (bilinear, zeros
    outside), up to rounding.

    The four taps of every point are computed once and the maps, as rows of a (H * W, C) table, are summed with
    ``embedding_bag``: 2-3x faster than ``grid_sample`` for the matcher's 100 maps (it loops over channels).

    Args:
        maps: (C, H, W).
        points: (P, 2) (x, y) in [0, 1].

    Returns:
        (C, P), a transposed view.
    """
    channels, height, width = maps.shape
    # Per axis on (P,) columns: on (P, 2) or (P, 2, 2) tensors the broadcasts over tiny inner dims cost more than
    # the gather itself.
    x = points[:, 0].to(maps.dtype) * width - 0.5  # (P,) pixel coordinates, as grid_sample(align_corners=False)
    y = points[:, 1].to(maps.dtype) * height - 0.5
    x_low, y_low = x.floor(), y.floor()
    x_high_weight, y_high_weight = x - x_low, y - y_low
    # Bilinear weights, zero for a neighbour outside the map (zero padding).
    x_weights = ((1 - x_high_weight) * ((x_low >= 0) & (x_low <= width - 1)),
                 x_high_weight * ((x_low >= -1) & (x_low <= width - 2)))  # fmt: skip
    y_weights = ((1 - y_high_weight) * ((y_low >= 0) & (y_low <= height - 1)),
                 y_high_weight * ((y_low >= -1) & (y_low <= height - 2)))  # fmt: skip
    x_index = (x_low.clamp(0, width - 1).long(), (x_low + 1).clamp(0, width - 1).long())
    y_offset = ((y_low.clamp(0, height - 1) * width).long(), ((y_low + 1).clamp(0, height - 1) * width).long())
    rows = torch.stack([y_offset[i] + x_index[j] for i in (0, 1) for j in (0, 1)], 1)  # (P, 4): y * W + x
    tap_weights = torch.stack([y_weights[i] * x_weights[j] for i in (0, 1) for j in (0, 1)], 1)  # (P, 4)
    table = maps.reshape(channels, height * width).T.contiguous()  # (H * W, C)
    return F.embedding_bag(rows, table, per_sample_weights=tap_weights, mode="sum").T


def uncertainty(mask_logits: Tensor) -> Tensor:
    """Mask2Former's uncertainty of a mask logit: -|logit|, highest where the prediction is closest to 0.5."""
    return -mask_logits.abs()


def sample_uncertain_points(
    mask_logits: Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
) -> Tensor:
    """Points for the mask losses, most of them where each predicted mask is uncertain.

    Draws ``int(num_points * oversample_ratio)`` uniform candidates per mask, keeps the
    ``int(importance_sample_ratio * num_points)`` most uncertain (see :func:`uncertainty`) and adds uniform points up
    to ``num_points``. Not differentiable (the points are data, not a function of the weights).

    Args:
        mask_logits: (R, H, W) predicted mask logits.
        num_points: P, points per mask.
        oversample_ratio: candidates drawn per point (>= 1).
        importance_sample_ratio: share of the points chosen by uncertainty, in [0, 1].

    Returns:
        (R, P, 2) float32 (x, y) points in [0, 1]: the uncertain ones first, then the uniform ones.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be >= 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    num_masks = mask_logits.shape[0]
    device = mask_logits.device
    num_candidates = int(num_points * oversample_ratio)
    num_uncertain = int(importance_sample_ratio * num_points)
    num_uniform = num_points - num_uncertain
    with torch.no_grad():
        candidates = torch.rand(num_masks, num_candidates, 2, device=device)  # (R, P * ratio, 2)
        candidate_logits = point_sample(mask_logits.detach().unsqueeze(1), candidates).squeeze(1)  # (R, P * ratio)
        # Unsorted: the loss is a mean over the points, so their order does not matter, and sorting 9408 of 37632
        # per mask took longer than selecting them (same points as transformers' sorted topk, in another order).
        chosen = uncertainty(candidate_logits).topk(num_uncertain, dim=1, sorted=False).indices  # (R, P_uncertain)
        points = candidates.gather(1, chosen.unsqueeze(2).expand(-1, -1, 2))  # (R, P_uncertain, 2)
        if num_uniform > 0:
            uniform = torch.rand(num_masks, num_uniform, 2, device=device)  # (R, P_uniform, 2)
            points = torch.cat([points, uniform], dim=1)  # (R, P, 2)
    return points
