"""The Mask2Former training loss (``SetCriterion`` of the original code), separate from the model.

For each prediction (the last one, then each auxiliary one, every prediction matched on its own):

1. Hungarian matching of queries to target masks (:class:`~mask2former.training.matcher.HungarianMatcher`).
2. ``loss_cross_entropy``: softmax cross-entropy over K + 1 classes for every query, unmatched queries having the
   target "no object" (the last class), weighted ``no_object_weight`` (weighted mean over queries and images).
3. ``loss_mask`` and ``loss_dice``: sigmoid BCE and dice of each matched mask at ``num_points`` importance-sampled
   points (:func:`~mask2former.training.point_sampling.sample_uncertain_points`), summed over matched masks and
   divided by the number of target masks (averaged over processes, at least 1).

Each term is multiplied by its weight (``class_weight``, ``mask_weight``, ``dice_weight``), as
``transformers``' ``get_loss_dict`` does; the keys of auxiliary prediction i end in ``_i``. The total loss is the sum
of the dict's values. Everything is computed in float32 whatever the autocast dtype.

Shape letters: B batch, Q queries, K classes (without "no object"), N targets of one image, R matched pairs of the
batch, P points, H/W height/width.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from .matcher import HungarianMatcher
from .point_sampling import point_sample, sample_uncertain_points


def sigmoid_bce_loss(mask_logits: Tensor, targets: Tensor, num_masks: Tensor | float) -> Tensor:
    """Sigmoid BCE averaged over the points of each mask, summed over masks, divided by ``num_masks``.

    Args:
        mask_logits: (R, P) predicted logits.
        targets: (R, P) target values in [0, 1].
        num_masks: the normalizer (a scalar).
    """
    per_point = F.binary_cross_entropy_with_logits(mask_logits, targets, reduction="none")  # (R, P)
    return per_point.mean(1).sum() / num_masks


def dice_loss(mask_logits: Tensor, targets: Tensor, num_masks: Tensor | float) -> Tensor:
    """Dice loss 1 - (2|x y| + 1) / (|x| + |y| + 1) per mask (x the sigmoid), summed over masks, / ``num_masks``.

    Args:
        mask_logits: (R, P) predicted logits.
        targets: (R, P) target values in [0, 1].
        num_masks: the normalizer (a scalar).
    """
    probabilities = mask_logits.sigmoid()  # (R, P)
    intersection = 2 * (probabilities * targets).sum(-1)  # (R,)
    total = probabilities.sum(-1) + targets.sum(-1)  # (R,)
    return (1 - (intersection + 1) / (total + 1)).sum() / num_masks


def matched_mask_logits(
    masks_queries_logits: Tensor,
    mask_embeddings: Tensor,
    mask_features: Tensor,
    matches: Sequence[tuple[Tensor, Tensor]],
) -> Tensor:
    """The (R, h, w) mask logits of the matched queries, image after image, with a gradient that reaches the
    embeddings and features through these R masks only.

    Indexing ``masks_queries_logits`` would send back a dense (B, Q, h, w) gradient, zero outside the R matched rows,
    through the full (B, Q, E) x (B, E, h * w) product (most of the mask head's backward time). Here the values are
    taken from ``masks_queries_logits`` (bit for bit the same), and ``recomputed - recomputed.detach()``, exactly zero,
    adds the gradient of the R recomputed masks (one (B, max R_b, E) x (B, E, h * w) product).

    Args:
        masks_queries_logits: (B, Q, h, w), the product of ``mask_embeddings`` (B, Q, E) and ``mask_features``
            (B, E, h, w).
        matches: per image (query indices, target indices), the matcher's output (CPU tensors).
    """
    device = masks_queries_logits.device
    counts = [len(queries) for queries, _ in matches]
    most = max(counts, default=0)
    # (B, most) matched queries per image, padded with query 0; the flat positions of the R real ones.
    padded = torch.zeros(len(matches), most, dtype=torch.int64)
    for image, (queries, _) in enumerate(matches):
        padded[image, : len(queries)] = queries
    kept = torch.cat([image * most + torch.arange(count) for image, count in enumerate(counts)])  # (R,)
    padded, kept = padded.to(device), kept.to(device)
    images = kept // max(most, 1)
    values = masks_queries_logits.detach()[images, padded.flatten()[kept]]  # (R, h, w)
    # One batched product for all images: per-image products would each send back a zero-filled (B, E, h, w).
    embeddings = mask_embeddings.gather(1, padded[..., None].expand(-1, -1, mask_embeddings.shape[-1]))  # (B, most, E)
    recomputed = torch.bmm(embeddings, mask_features.flatten(2)).flatten(0, 1)[kept]  # (R, h * w)
    recomputed = recomputed.view(values.shape)
    return values + (recomputed - recomputed.detach())


def validate_targets(
    mask_labels: Any,
    class_labels: Any,
    *,
    batch_size: int,
    num_labels: int,
    image_size: tuple[int, int] | None = None,
) -> None:
    """Raise a clear error for targets that the loss cannot use.

    Args:
        mask_labels: should be B tensors (N_i, H, W).
        class_labels: should be B integer tensors (N_i,) with values in [0, num_labels).
        batch_size: B.
        num_labels: K.
        image_size: (H, W) the masks must have (the size of ``pixel_values``); None: only equal within the batch.

    Raises:
        TypeError: an argument is not a list/tuple of tensors.
        ValueError: one is given without the other, a length, shape or dtype is wrong or a class is out of range;
            the message names the argument and the batch index.
    """
    if (mask_labels is None) != (class_labels is None):
        given, missing = ("mask_labels", "class_labels") if class_labels is None else ("class_labels", "mask_labels")
        raise ValueError(f"{given} was given without {missing}: the loss needs both (or neither, for inference)")
    for name, value in (("mask_labels", mask_labels), ("class_labels", class_labels)):
        if not isinstance(value, (list, tuple)):
            raise TypeError(f"{name} must be a list of B={batch_size} tensors, got {type(value).__name__}")
        if len(value) != batch_size:
            raise ValueError(f"{name} must have one entry per image (B={batch_size}), got {len(value)}")
        for index, item in enumerate(value):
            if not isinstance(item, Tensor):
                raise TypeError(f"{name}[{index}] must be a torch.Tensor, got {type(item).__name__}")
    for index, (masks, classes) in enumerate(zip(mask_labels, class_labels)):
        if classes.dim() != 1:
            raise ValueError(f"class_labels[{index}] must have shape (N,), got {tuple(classes.shape)}")
        if classes.is_floating_point() or classes.is_complex() or classes.dtype == torch.bool:
            raise ValueError(f"class_labels[{index}] must hold integer class ids, got dtype {classes.dtype}")
        if masks.dim() != 3:
            raise ValueError(f"mask_labels[{index}] must have shape (N, H, W), got {tuple(masks.shape)}")
        if masks.shape[0] != classes.shape[0]:
            raise ValueError(
                f"mask_labels[{index}] has {masks.shape[0]} masks but class_labels[{index}] has {classes.shape[0]} "
                "classes; there must be one class per mask"
            )
        expected = image_size if image_size is not None else tuple(mask_labels[0].shape[1:])
        if tuple(masks.shape[1:]) != tuple(expected):
            what = "pixel_values' size" if image_size is not None else "the size of mask_labels[0]"
            raise ValueError(
                f"mask_labels[{index}] must have shape (N, {expected[0]}, {expected[1]}) ({what}), "
                f"got {tuple(masks.shape)}"
            )
    flat = [classes.reshape(-1) for classes in class_labels if classes.numel() > 0]
    if not flat:
        return
    # One host read for the whole batch (free for CPU labels, one synchronization otherwise).
    labels = torch.cat([classes.to(flat[0].device) for classes in flat])  # (sum_i N_i,)
    low, high = torch.stack(torch.aminmax(labels)).tolist()
    if low >= 0 and high < num_labels:
        return
    for index, classes in enumerate(class_labels):
        bad = classes[(classes < 0) | (classes >= num_labels)]
        if bad.numel() > 0:
            raise ValueError(
                f"class_labels[{index}] must hold class ids in [0, {num_labels}) (num_labels={num_labels}), "
                f"got {bad.tolist()}"
            )


def _num_masks(class_labels: Sequence[Tensor], device: torch.device) -> Tensor:
    """Number of target masks per process (summed over processes / world size when distributed), at least 1."""
    count = torch.tensor(float(sum(len(classes) for classes in class_labels)), device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(count)
        count = count / dist.get_world_size()
    return count.clamp(min=1)


class Mask2FormerCriterion:
    """The Mask2Former loss: Hungarian matching, then weighted class, mask and dice losses per prediction.

    Holds no tensors (the class weights are made on the logits' device), so it follows its inputs to any device.

    Args:
        num_labels: K, classes without "no object".
        class_weight: weight of ``loss_cross_entropy`` (and of the class cost in the matching).
        mask_weight: weight of ``loss_mask`` (and of the BCE cost).
        dice_weight: weight of ``loss_dice`` (and of the dice cost).
        no_object_weight: weight of the "no object" class in the cross-entropy.
        num_points: P, points per mask for the matching and the mask losses.
        oversample_ratio: candidate points per point for importance sampling.
        importance_sample_ratio: share of the loss points chosen by uncertainty.
    """

    def __init__(
        self,
        *,
        num_labels: int,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
    ) -> None:
        if num_labels < 1:
            raise ValueError(f"num_labels must be >= 1, got {num_labels}")
        self.num_labels = num_labels
        self.class_weight = class_weight
        self.mask_weight = mask_weight
        self.dice_weight = dice_weight
        self.no_object_weight = no_object_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.matcher = HungarianMatcher(
            class_weight=class_weight, mask_weight=mask_weight, dice_weight=dice_weight, num_points=num_points
        )

    @classmethod
    def from_config(cls, config: Any) -> Mask2FormerCriterion:
        """The criterion a :class:`~mask2former.config.Mask2FormerConfig` describes (``transformers``' field names)."""
        return cls(
            num_labels=config.num_labels,
            class_weight=config.class_weight,
            mask_weight=config.mask_weight,
            dice_weight=config.dice_weight,
            no_object_weight=config.no_object_weight,
            num_points=config.train_num_points,
            oversample_ratio=config.oversample_ratio,
            importance_sample_ratio=config.importance_sample_ratio,
        )

    def __call__(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        auxiliary_predictions: Sequence[dict[str, Tensor]] | None = None,
        mask_embeddings: Tensor | None = None,
        mask_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """The weighted loss terms of the last prediction and of each auxiliary one.

        Args:
            class_queries_logits: (B, Q, K + 1) class logits of the last prediction.
            masks_queries_logits: (B, Q, h, w) mask logits of the last prediction (any resolution).
            mask_labels: B tensors (N_i, H, W) of 0/1 target masks (all of one size).
            class_labels: B int64 tensors (N_i,), classes in [0, K).
            auxiliary_predictions: earlier predictions, dicts with ``class_queries_logits`` and
                ``masks_queries_logits`` (the model's ``auxiliary_logits``), optionally also ``mask_embeddings`` and
                ``mask_features``.
            mask_embeddings, mask_features: optional, (B, Q, E) and (B, E, h, w) whose product
                ``masks_queries_logits`` is. With them the mask losses' gradient goes through the R matched queries
                only (:func:`matched_mask_logits`), not through all B * Q masks; the values are the same.

        Returns:
            ``{"loss_mask", "loss_dice", "loss_cross_entropy"}`` then the same with suffix ``_i`` for auxiliary
            prediction i; scalar float32 tensors, already multiplied by their weights. The loss is their sum.
        """
        num_masks = _num_masks(class_labels, masks_queries_logits.device)
        losses = self.prediction_losses(
            class_queries_logits, masks_queries_logits, mask_labels, class_labels, num_masks,
            mask_embeddings, mask_features,
        )
        for index, prediction in enumerate(auxiliary_predictions or ()):
            auxiliary = self.prediction_losses(
                prediction["class_queries_logits"],
                prediction["masks_queries_logits"],
                mask_labels,
                class_labels,
                num_masks,
                prediction.get("mask_embeddings"),
                prediction.get("mask_features"),
            )
            losses.update({f"{name}_{index}": value for name, value in auxiliary.items()})
        return losses

    def prediction_losses(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        num_masks: Tensor | float,
        mask_embeddings: Tensor | None = None,
        mask_features: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Match one prediction to the targets; its weighted ``loss_mask``, ``loss_dice`` and ``loss_cross_entropy``.

        Args: as :meth:`__call__`, plus ``num_masks``, the normalizer of the mask losses.
        """
        device = masks_queries_logits.device
        class_labels = [classes.to(device) for classes in class_labels]
        matches = self.matcher(class_queries_logits, masks_queries_logits, mask_labels, class_labels)
        # Flat indices of the R matched pairs (built on the CPU from the matcher's output, then moved once).
        images = torch.cat([torch.full_like(queries, index) for index, (queries, _) in enumerate(matches)]).to(device)
        queries = torch.cat([queries for queries, _ in matches]).to(device)  # (R,)
        target_indices = [indices.to(device) for _, indices in matches]  # per image (min(Q, N_i),)
        with torch.autocast(device_type=device.type, enabled=False):
            if mask_embeddings is not None and mask_features is not None:
                predicted = matched_mask_logits(masks_queries_logits, mask_embeddings, mask_features, matches)
            else:
                predicted = masks_queries_logits[images, queries]
            predicted = predicted.float()  # (R, h, w)
            target_masks = torch.cat(
                [masks.to(device)[index] for masks, index in zip(mask_labels, target_indices)]
            ).float()  # (R, H, W)
            mask_loss, dice = self._mask_losses(predicted, target_masks, num_masks)
            cross_entropy = self._class_loss(class_queries_logits, class_labels, images, queries, target_indices)
        return {
            "loss_mask": mask_loss * self.mask_weight,
            "loss_dice": dice * self.dice_weight,
            "loss_cross_entropy": cross_entropy * self.class_weight,
        }

    def _class_loss(
        self,
        class_queries_logits: Tensor,
        class_labels: Sequence[Tensor],
        images: Tensor,
        queries: Tensor,
        target_indices: Sequence[Tensor],
    ) -> Tensor:
        batch_size, num_queries, num_classes = class_queries_logits.shape
        device = class_queries_logits.device
        weight = torch.ones(num_classes, device=device)  # (K + 1,)
        weight[-1] = self.no_object_weight
        target_classes = torch.full((batch_size, num_queries), self.num_labels, dtype=torch.int64, device=device)
        matched_classes = torch.cat([classes[index] for classes, index in zip(class_labels, target_indices)])  # (R,)
        target_classes[images, queries] = matched_classes.to(torch.int64)
        logits = class_queries_logits.float().transpose(1, 2)  # (B, K + 1, Q)
        return F.cross_entropy(logits, target_classes, weight=weight)

    def _mask_losses(
        self, predicted: Tensor, target_masks: Tensor, num_masks: Tensor | float
    ) -> tuple[Tensor, Tensor]:
        """``loss_mask`` and ``loss_dice`` (unweighted) of the matched masks: predicted (R, h, w) float32 logits
        against target_masks (R, H, W), at importance-sampled points."""
        points = sample_uncertain_points(
            predicted, self.num_points, self.oversample_ratio, self.importance_sample_ratio
        )  # (R, P, 2)
        with torch.no_grad():
            point_targets = point_sample(target_masks.unsqueeze(1), points).squeeze(1)  # (R, P)
        point_logits = point_sample(predicted.unsqueeze(1), points).squeeze(1)  # (R, P)
        mask_loss = sigmoid_bce_loss(point_logits, point_targets, num_masks)
        return mask_loss, dice_loss(point_logits, point_targets, num_masks)
