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

import functools
import itertools
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


class MatchedMasks:
    """The matched queries' mask logits of every prediction of one loss call, with one gradient product for all.

    Indexing ``masks_queries_logits`` would send back, per prediction, a dense (B, Q, h, w) gradient, zero outside
    the R matched rows, through the full (B, Q, E) x (B, E, h * w) product (most of the mask head's backward time).
    Here the values are read from ``masks_queries_logits`` (bit for bit the same), and their (R, h, w) gradients are
    held until every prediction's has arrived; then, per image, one product sends all of them to ``mask_features``
    and one to the embeddings (a (B, E, h, w) gradient per prediction, summed, cost more than the products).

    Args:
        mask_embeddings: T tensors (B, Q, E), one per prediction, whose product with ``mask_features`` (B, E, h, w)
            the predictions' mask logits are.
    """

    def __init__(self, mask_embeddings: Sequence[Tensor], mask_features: Tensor) -> None:
        self._gradients: dict[int, tuple[list[int], Tensor, Tensor]] = {}
        self._anchor = _SendMaskGradients.apply(self._gradients, mask_features, *mask_embeddings)

    def select(
        self, prediction: int, masks_queries_logits: Tensor, images: Tensor, queries: Tensor, counts: list[int]
    ) -> Tensor:
        """(R, h, w): ``masks_queries_logits[images, queries]`` of prediction ``prediction`` (B, Q, h, w), the matched
        pairs image after image, ``counts`` of them per image."""
        return _HoldMaskGradient.apply(
            self._anchor, self._gradients, prediction, counts, masks_queries_logits.detach(), images, queries
        )


class _HoldMaskGradient(torch.autograd.Function):
    """Forward: ``masks[images, queries]``. Backward: keeps the gradient for :class:`_SendMaskGradients`."""

    @staticmethod
    def forward(ctx: Any, anchor: Tensor, gradients: dict, prediction: int, counts: list[int], masks: Tensor,
                images: Tensor, queries: Tensor) -> Tensor:  # fmt: skip
        ctx.hold = (gradients, prediction, counts)
        ctx.save_for_backward(queries)
        return masks[images, queries]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        gradients, prediction, counts = ctx.hold
        (queries,) = ctx.saved_tensors
        gradients[prediction] = (counts, queries, grad)
        return grad.new_zeros(()), None, None, None, None, None, None


class _SendMaskGradients(torch.autograd.Function):
    """Forward: a scalar every :class:`_HoldMaskGradient` takes, so that this backward runs after all of theirs.
    Backward: the held gradients' products with the embeddings and the features, one per image."""

    @staticmethod
    def forward(ctx: Any, gradients: dict, features: Tensor, *embeddings: Tensor) -> Tensor:
        ctx.gradients = gradients
        ctx.save_for_backward(features, *embeddings)
        return features.new_zeros(())

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, _: Tensor) -> tuple[Tensor | None, ...]:
        features, *embeddings = ctx.saved_tensors
        held = sorted(ctx.gradients.items())
        ctx.gradients.clear()
        batch_size = features.shape[0]
        flat_features = features.flatten(2)  # (B, E, h * w)
        grad_features = torch.empty_like(flat_features) if ctx.needs_input_grad[1] else None  # each image written once
        grad_embeddings = [
            torch.zeros_like(embeddings[index]) if ctx.needs_input_grad[2 + index] else None
            for index in range(len(embeddings))
        ]
        starts = {prediction: [0, *itertools.accumulate(counts)] for prediction, (counts, _, _) in held}
        for image in range(batch_size):
            # The (n, E) embeddings and (n, h * w) gradients of this image's matched masks over all predictions.
            parts = [
                (prediction, queries[starts[prediction][image] : starts[prediction][image + 1]],
                 grad[starts[prediction][image] : starts[prediction][image + 1]])
                for prediction, (_, queries, grad) in held
            ]  # fmt: skip
            parts = [(prediction, queries, grad) for prediction, queries, grad in parts if len(queries)]
            if not parts:
                if grad_features is not None:
                    grad_features[image].zero_()
                continue
            grads = torch.cat([grad.flatten(1) for _, _, grad in parts]).to(features.dtype)  # (n, h * w)
            if grad_features is not None:
                rows = torch.cat([embeddings[prediction][image, queries] for prediction, queries, _ in parts]).to(grads.dtype)
                torch.mm(rows.t(), grads, out=grad_features[image])  # (E, h * w)
            if any(grad is not None for grad in grad_embeddings):
                grad_rows = torch.mm(grads, flat_features[image].t()).split([len(q) for _, q, _ in parts])  # (n, E)
                for (prediction, queries, _), rows in zip(parts, grad_rows):
                    if grad_embeddings[prediction] is not None:
                        grad_embeddings[prediction][image, queries] = rows.to(embeddings[prediction].dtype)
        if grad_features is not None:
            grad_features = grad_features.view_as(features)
        return (None, grad_features, *grad_embeddings)


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
                only (:class:`MatchedMasks`), not through all B * Q masks; the values are the same.

        Returns:
            ``{"loss_mask", "loss_dice", "loss_cross_entropy"}`` then the same with suffix ``_i`` for auxiliary
            prediction i; scalar float32 tensors, already multiplied by their weights. The loss is their sum.
        """
        num_masks = _num_masks(class_labels, masks_queries_logits.device)
        predictions = [
            {"class_queries_logits": class_queries_logits, "masks_queries_logits": masks_queries_logits,
             "mask_embeddings": mask_embeddings, "mask_features": mask_features},
            *(auxiliary_predictions or ()),
        ]  # fmt: skip
        factored = [
            index
            for index, prediction in enumerate(predictions)
            if prediction.get("mask_embeddings") is not None and prediction.get("mask_features") is not None
        ]
        # One MatchedMasks per set of predictions that share their features (all of them, from the model).
        groups: dict[int, list[int]] = {}
        for index in factored:
            groups.setdefault(id(predictions[index]["mask_features"]), []).append(index)
        selectors: dict[int, Any] = {}
        for indices in groups.values():
            matched = MatchedMasks(
                [predictions[index]["mask_embeddings"] for index in indices], predictions[indices[0]]["mask_features"]
            )
            for position, index in enumerate(indices):
                selectors[index] = functools.partial(matched.select, position)
        losses: dict[str, Tensor] = {}
        for index, prediction in enumerate(predictions):
            terms = self.prediction_losses(
                prediction["class_queries_logits"],
                prediction["masks_queries_logits"],
                mask_labels,
                class_labels,
                num_masks,
                selectors.get(index),
            )
            suffix = "" if index == 0 else f"_{index - 1}"
            losses.update({f"{name}{suffix}": value for name, value in terms.items()})
        return losses

    def prediction_losses(
        self,
        class_queries_logits: Tensor,
        masks_queries_logits: Tensor,
        mask_labels: Sequence[Tensor],
        class_labels: Sequence[Tensor],
        num_masks: Tensor | float,
        select_masks: Any = None,
    ) -> dict[str, Tensor]:
        """Match one prediction to the targets; its weighted ``loss_mask``, ``loss_dice`` and ``loss_cross_entropy``.

        Args: as :meth:`__call__`, plus ``num_masks``, the normalizer of the mask losses, and optionally
            ``select_masks(masks_queries_logits, images, queries, counts)`` that returns the matched masks
            (R, h, w) (default: indexing, whose gradient is dense over all B * Q masks).
        """
        device = masks_queries_logits.device
        class_labels = [classes.to(device) for classes in class_labels]
        matches = self.matcher(class_queries_logits, masks_queries_logits, mask_labels, class_labels)
        # Flat indices of the R matched pairs (built on the CPU from the matcher's output, then moved once).
        images = torch.cat([torch.full_like(queries, index) for index, (queries, _) in enumerate(matches)]).to(device)
        queries = torch.cat([queries for queries, _ in matches]).to(device)  # (R,)
        target_indices = [indices.to(device) for _, indices in matches]  # per image (min(Q, N_i),)
        with torch.autocast(device_type=device.type, enabled=False):
            if select_masks is not None:
                predicted = select_masks(masks_queries_logits, images, queries, [len(index) for index in target_indices])
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
