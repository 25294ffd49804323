"""Hungarian matching of predicted queries to target masks, as in Mask2Former's ``HungarianMatcher``.

Each image is matched on its own: the cost of giving target j to query i is

    class_weight * (-p_i(class_j)) + mask_weight * BCE(mask_i, mask_j) + dice_weight * dice(mask_i, mask_j)

with p the softmax over the K + 1 classes and the two mask costs read at ``num_points`` uniform random points shared
by all pairs of the image (as the original code does; ``transformers`` draws them the same way). The costs are
computed in float32 whatever the autocast dtype; NaN and inf become the largest float32 so that such pairs are only
matched when nothing else can be. The cost matrices of all images go to the CPU in one transfer for scipy's
``linear_sum_assignment``: the only host synchronization of the loss.

Shape letters: B batch, Q queries, K classes (without "no object"), N targets of one image, P points, H/W height/width.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from .point_sampling import point_sample, sample_maps_at_points


def _pairwise_dots(values: Tensor, targets: Tensor) -> Tensor:
    """(Q, N) dot products of (Q, P) ``values`` with (N, P) ``targets``, computed as the transposed (N, Q) product:
    with N small, ``values @ targets.T`` is ~3x slower, most of all when ``values`` is the matcher's (P, Q)-major
    table read transposed."""
    return (targets @ values.T).T


def pairwise_sigmoid_bce(mask_logits: Tensor, targets: Tensor) -> Tensor:
    """Mean sigmoid binary cross-entropy of every predicted mask against every target mask.

    Args:
        mask_logits: (Q, P) predicted logits at P points.
        targets: (N, P) target values in [0, 1] at the same points.

    Returns:
        (Q, N) costs.
    """
    num_points = mask_logits.shape[1]
    negative = F.softplus(mask_logits)  # (Q, P) BCE if the target is 0
    # The BCE if the target is 1 is softplus(-x) = softplus(x) - x, so sum_p t * softplus(-x) + (1 - t) * softplus(x)
    # = sum_p softplus(x) - x . t: one softplus and one product instead of two each.
    return (negative.sum(-1, keepdim=True) - _pairwise_dots(mask_logits, targets)) / num_points  # (Q, N)


def pairwise_dice(mask_logits: Tensor, targets: Tensor) -> Tensor:
    """Dice loss 1 - (2|x y| + 1) / (|x| + |y| + 1) of every predicted mask (sigmoid) against every target mask.

    Args:
        mask_logits: (Q, P) predicted logits at P points.
        targets: (N, P) target values in [0, 1] at the same points.

    Returns:
        (Q, N) costs.
    """
    probabilities = mask_logits.sigmoid()  # (Q, P)
    intersection = 2 * _pairwise_dots(probabilities, targets)  # (Q, N)
    total = probabilities.sum(-1)[:, None] + targets.sum(-1)[None, :]  # (Q, N)
    return 1 - (intersection + 1) / (total + 1)


class HungarianMatcher:
    """One-to-one assignment of queries to targets minimizing the weighted class + mask + dice cost.

    Holds no tensors, so it follows its inputs to any device. A subclass that compares masks otherwise replaces
    ``cost_matrix`` (see :class:`~mask2former.training.maskformer_criterion.MaskFormerMatcher`).

    Args:
        class_weight: weight of the class cost (-probability of the target class).
        mask_weight: weight of the point-sampled sigmoid BCE cost.
        dice_weight: weight of the point-sampled dice cost.
        num_points: P, uniform random points per image at which masks are compared.
    """

    def __init__(
        self,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        num_points: int = 12544,
    ) -> None:
        if class_weight == 0 and mask_weight == 0 and dice_weight == 0:
            raise ValueError("at least one of class_weight, mask_weight and dice_weight must be non-zero")
        if num_points < 1:
            raise ValueError(f"num_points must be >= 1, got {num_points}")
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.num_points = num_points

    def cost_matrix(
        self, class_logits: Tensor, mask_logits: Tensor, mask_labels: Tensor, class_labels: Tensor
    ) -> Tensor:
        """The float32 (Q, N) cost of one image; draws its P points with ``torch.rand``.

        Args:
            class_logits: (Q, K + 1) class logits.
            mask_logits: (Q, h, w) mask logits (any resolution: points are in normalized coordinates).
            mask_labels: (N, H, W) target masks.
            class_labels: (N,) target classes.
        """
        device = mask_logits.device
        # Drawn also for an image without targets, so that the random stream stays that of transformers.
        points = torch.rand(1, self.num_points, 2, device=device)  # (1, P, 2), shared by all pairs
        if class_labels.numel() == 0:
            return mask_logits.new_empty(mask_logits.shape[0], 0, dtype=torch.float32)
        with torch.autocast(device_type=device.type, enabled=False):
            predicted = sample_maps_at_points(mask_logits.float(), points[0])  # (Q, P)
            targets = point_sample(mask_labels.to(device, torch.float32).unsqueeze(0), points).squeeze(0)  # (N, P)
            return self._weighted_cost(class_logits, class_labels, predicted, targets, pairwise_sigmoid_bce)

    def _weighted_cost(
        self,
        class_logits: Tensor,
        class_labels: Tensor,
        predicted: Tensor,
        targets: Tensor,
        pairwise_mask_cost: Callable[[Tensor, Tensor], Tensor],
    ) -> Tensor:
        """mask_weight * mask cost + class_weight * (-p(class)) + dice_weight * dice, in float32, the non-finite
        entries replaced by the largest float32.

        Args:
            class_logits: (Q, K + 1) class logits.
            class_labels: (N,) target classes.
            predicted: (Q, P) float32 mask logits at the P compared points (or pixels).
            targets: (N, P) float32 target values there.
            pairwise_mask_cost: (Q, P), (N, P) -> (Q, N) mask cost.
        """
        probabilities = class_logits.float().softmax(-1)  # (Q, K + 1)
        cost = (
            self.mask_weight * pairwise_mask_cost(predicted, targets)
            - self.class_weight * probabilities[:, class_labels]
            + self.dice_weight * pairwise_dice(predicted, targets)
        )  # (Q, N)
        largest = torch.finfo(cost.dtype).max
        return torch.nan_to_num(cost, nan=largest, posinf=largest, neginf=largest)

    @torch.no_grad()
    def __call__(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
    ) -> list[tuple[Tensor, Tensor]]:
        """Match the queries of each image to its targets.

        Args:
            class_queries_logits: (B, Q, K + 1) class logits.
            masks_queries_logits: (B, Q, h, w) mask logits.
            mask_labels: B tensors (N_i, H, W), the target masks (0/1; float, bool or integer).
            class_labels: B tensors (N_i,) int64, the target classes in [0, K).

        Returns:
            B pairs ``(query_indices, target_indices)`` of int64 CPU tensors of length min(Q, N_i), query indices
            increasing: query ``query_indices[k]`` predicts target ``target_indices[k]``.
        """
        costs = [
            self.cost_matrix(class_logits, mask_logits, masks, labels.to(class_logits.device))
            for class_logits, mask_logits, masks, labels in zip(
                class_queries_logits, masks_queries_logits, mask_labels, class_labels
            )
        ]
        # One device-to-host transfer for the whole batch.
        flat = torch.cat([cost.reshape(-1) for cost in costs]).cpu()  # (sum_i Q * N_i,)
        matches = []
        for cost, host in zip(costs, flat.split([cost.numel() for cost in costs])):
            rows, columns = linear_sum_assignment(host.view(cost.shape).numpy())
            matches.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(columns, dtype=torch.int64)))
        return matches
