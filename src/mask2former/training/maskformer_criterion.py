"""The MaskFormer training loss (``SetCriterion`` of the original MaskFormer code), separate from the model.

It differs from the Mask2Former loss (:mod:`~mask2former.training.criterion`) in how masks are compared, not in
its structure, so :class:`MaskFormerCriterion` reuses that class and replaces two pieces:

1. Matching (:class:`MaskFormerMatcher`) compares whole masks, not random points: the target masks are resized
   (nearest) to the predicted masks' resolution; the cost is ``-p(class)`` + ``mask_weight`` * sigmoid focal loss
   + ``dice_weight`` * dice, the class weight being 1 whatever ``cross_entropy_weight`` is (as in the original code and
   ``transformers``).
2. ``loss_mask`` and ``loss_dice`` are the sigmoid focal loss (alpha 0.25, gamma 2) and the dice loss of each matched
   mask upsampled (bilinear) to the targets' full resolution, summed over masks and divided by the number of targets.

``loss_cross_entropy`` is the same as Mask2Former's (the "no object" class weighted ``no_object_weight``). Each term is
multiplied by its weight (``mask_weight``, ``dice_weight``, ``cross_entropy_weight``); auxiliary predictions add the
same terms with suffix ``_i``. No random numbers are drawn.

Shape letters: B batch, Q queries, K classes (without "no object"), N targets of one image, R matched pairs of the
batch, P pixels of a mask, H/W height/width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .criterion import Mask2FormerCriterion, dice_loss
from .matcher import HungarianMatcher


def sigmoid_focal_loss(
    mask_logits: Tensor, targets: Tensor, num_masks: Tensor | float, alpha: float = 0.25, gamma: float = 2.0
) -> Tensor:
    """Sigmoid focal loss (Lin et al., 2017) averaged over the pixels of each mask, summed, divided by ``num_masks``.

    Args:
        mask_logits: (R, P) predicted logits.
        targets: (R, P) target values in [0, 1].
        num_masks: the normalizer (a scalar).
        alpha: weight of the positive pixels (1 - alpha for the negative ones); negative: no weighting.
        gamma: exponent of the modulating factor (1 - p_t).
    """
    probabilities = mask_logits.sigmoid()  # (R, P)
    cross_entropy = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")  # (R, P)
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    loss = cross_entropy * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss.mean(1).sum() / num_masks


def pairwise_sigmoid_focal(mask_logits: Tensor, targets: Tensor, alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Mean sigmoid focal loss of every predicted mask against every target mask.

    Args:
        mask_logits: (Q, P) predicted logits.
        targets: (N, P) target values in [0, 1].

    Returns:
        (Q, N) costs.
    """
    probabilities = mask_logits.sigmoid()  # (Q, P)
    positive = alpha * (1 - probabilities) ** gamma * F.softplus(-mask_logits)  # (Q, P) loss if the target is 1
    negative = (1 - alpha) * probabilities**gamma * F.softplus(mask_logits)  # (Q, P) loss if the target is 0
    return (positive @ targets.T + negative @ (1 - targets).T) / mask_logits.shape[1]  # (Q, N)


class MaskFormerMatcher(HungarianMatcher):
    """One-to-one assignment of queries to targets minimizing the class + focal + dice cost on whole masks.

    Called as :class:`~mask2former.training.matcher.HungarianMatcher`, whose ``num_points`` it does not use. Holds no
    tensors, so it follows its inputs to any device.

    Args:
        class_weight: weight of the class cost (-probability of the target class).
        mask_weight: weight of the sigmoid focal cost.
        dice_weight: weight of the dice cost.
    """

    def __init__(self, *, class_weight: float = 1.0, mask_weight: float = 20.0, dice_weight: float = 1.0) -> None:
        super().__init__(class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight)

    def cost_matrix(
        self, class_logits: Tensor, mask_logits: Tensor, mask_labels: Tensor, class_labels: Tensor
    ) -> Tensor:
        """The float32 (Q, N) cost of one image.

        Args:
            class_logits: (Q, K + 1) class logits.
            mask_logits: (Q, h, w) mask logits.
            mask_labels: (N, H, W) target masks, resized (nearest) to (h, w) here.
            class_labels: (N,) target classes.
        """
        if class_labels.numel() == 0:
            return mask_logits.new_empty(mask_logits.shape[0], 0, dtype=torch.float32)
        device = mask_logits.device
        with torch.autocast(device_type=device.type, enabled=False):
            targets = mask_labels.to(device, torch.float32)[:, None]  # (N, 1, H, W)
            targets = F.interpolate(targets, size=mask_logits.shape[-2:], mode="nearest").flatten(1)  # (N, h*w)
            predicted = mask_logits.float().flatten(1)  # (Q, h*w)
            return self._weighted_cost(class_logits, class_labels, predicted, targets, pairwise_sigmoid_focal)


class MaskFormerCriterion(Mask2FormerCriterion):
    """The MaskFormer loss: Hungarian matching on whole masks, then weighted class, focal and dice losses.

    Call it as :class:`~mask2former.training.Mask2FormerCriterion`: ``criterion(class_queries_logits,
    masks_queries_logits, mask_labels, class_labels, auxiliary_predictions=None)`` returns ``{"loss_mask",
    "loss_dice", "loss_cross_entropy"}`` (then ``_i`` suffixed terms per auxiliary prediction), float32 scalars
    already multiplied by their weights. The point-sampling settings of the parent class are not used.

    Args:
        num_labels: K, classes without "no object".
        cross_entropy_weight: weight of ``loss_cross_entropy`` (not of the class cost in the matching, which is 1).
        mask_weight: weight of ``loss_mask`` and of the focal cost.
        dice_weight: weight of ``loss_dice`` and of the dice cost.
        no_object_weight: weight of the "no object" class in the cross-entropy.
    """

    def __init__(
        self,
        *,
        num_labels: int,
        cross_entropy_weight: float = 1.0,
        mask_weight: float = 20.0,
        dice_weight: float = 1.0,
        no_object_weight: float = 0.1,
    ) -> None:
        super().__init__(
            num_labels=num_labels,
            class_weight=cross_entropy_weight,
            mask_weight=mask_weight,
            dice_weight=dice_weight,
            no_object_weight=no_object_weight,
        )
        self.matcher = MaskFormerMatcher(class_weight=1.0, mask_weight=mask_weight, dice_weight=dice_weight)

    @property
    def cross_entropy_weight(self) -> float:
        """The weight of ``loss_cross_entropy`` (``class_weight`` of the parent class)."""
        return self.class_weight

    @classmethod
    def from_config(cls, config: Any) -> MaskFormerCriterion:
        """The criterion a :class:`~mask2former.config.MaskFormerConfig` describes (``transformers``' field names)."""
        return cls(
            num_labels=config.num_labels,
            cross_entropy_weight=config.cross_entropy_weight,
            mask_weight=config.mask_weight,
            dice_weight=config.dice_weight,
            no_object_weight=config.no_object_weight,
        )

    def _mask_losses(
        self, predicted: Tensor, target_masks: Tensor, num_masks: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """``loss_mask`` (focal) and ``loss_dice`` (unweighted) of the matched masks: predicted (R, h, w) float32
        logits upsampled to the targets' full resolution (R, H, W)."""
        predicted = predicted[:, None]  # (R, 1, h, w)
        predicted = F.interpolate(predicted, size=target_masks.shape[-2:], mode="bilinear", align_corners=False)
        predicted = predicted.flatten(1)  # (R, H*W)
        target_masks = target_masks.flatten(1)  # (R, H*W)
        return sigmoid_focal_loss(predicted, target_masks, num_masks), dice_loss(predicted, target_masks, num_masks)
