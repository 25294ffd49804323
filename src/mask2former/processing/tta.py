"""Semantic test-time augmentation: multi-scale and flipped views, their class probabilities averaged.

Follows the original Mask2Former's ``SemanticSegmentorWithTTA`` with detectron2's ``DatasetMapperTTA``
(``TEST.AUG.MIN_SIZES``, ``MAX_SIZE``, ``FLIP``): every image is resized from the original to each test scale and,
with ``flip``, also mirrored left-right after resizing; each view's semantic probability map (the sum over queries
of softmax(class)[:-1] x sigmoid(mask)) is computed at the original image size, padding cropped first, mirrored
back, and the maps of all views are averaged. The argmax of the average is the segmentation (probabilities are
averaged, not votes).

Scales are factors of the image processor's configured ``size``. The original's semantic configs test at 0.5, 0.75,
..., 1.75 times the test size (ADE20K: ``MIN_SIZES`` 256..896 for ``MIN_SIZE_TEST`` 512 and 320..1120 for 640;
Cityscapes: 512..1792 for 1024), :data:`DEFAULT_SCALES` here, with one maximum size for every view, 1.75 times the
test one (ADE20K: ``MAX_SIZE`` 3584 for 2048, 4480 for 2560): the processor's ``longest_edge`` times the largest
scale, likewise.

Where we differ, without changing what is averaged: the original runs one view at a time; here each scale is one
forward pass over the batch's images and their mirror images (all padded to one size). The mask logits go to the
original size in one bilinear step, as :func:`post_process_semantic_segmentation` with ``mask_size=None`` does (the
original takes two, through the padded input size), so one scale of 1.0 without flip gives exactly the plain
semantic result.

Shape letters: B batch, Q queries, K classes (without "no object"), h/w mask logits, H/W original image.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from .image_processor import Mask2FormerImageProcessor
from .postprocess import _plans, _read_outputs

__all__ = ["DEFAULT_SCALES", "check_scales", "scaled_processor", "semantic_probabilities", "semantic_tta"]

# The original's multi-scale semantic test (TEST.AUG.MIN_SIZES of the ADE20K and Cityscapes configs / MIN_SIZE_TEST).
DEFAULT_SCALES = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)

Size = tuple[int, int]


def check_scales(scales: Any, name: str = "tta_scales") -> tuple[float, ...]:
    """``scales`` as a tuple of floats; a ``ValueError``/``TypeError`` naming ``name`` unless it is a non-empty
    sequence of positive finite numbers."""
    if isinstance(scales, (str, bytes)) or not isinstance(scales, Sequence):
        raise TypeError(f"{name} must be a sequence of positive numbers such as {DEFAULT_SCALES}, got {scales!r}")
    if len(scales) == 0:
        raise ValueError(f"{name} must hold at least one scale, got {scales!r}")
    checked = []
    for scale in scales:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"{name} must hold numbers, got {scale!r} in {scales!r}")
        if not (math.isfinite(scale) and scale > 0):
            raise ValueError(f"{name} must hold positive finite numbers, got {scale!r} in {scales!r}")
        checked.append(float(scale))
    return tuple(checked)


def scaled_processor(
    processor: Mask2FormerImageProcessor, scale: float, largest_scale: float | None = None
) -> Mask2FormerImageProcessor:
    """The processor whose target size is ``scale`` times ``processor``'s.

    Exact sizes (``height``/``width``, ``max_height``/``max_width``) and ``shortest_edge`` are scaled by ``scale``;
    ``longest_edge`` by ``largest_scale`` (default ``scale``), so that, as in the original, every view has the same
    maximum size.
    """
    if scale == 1.0 and largest_scale in (None, 1.0):
        return processor
    if not processor.do_resize:
        raise ValueError("test-time scales need an image processor that resizes (do_resize=True)")
    largest_scale = scale if largest_scale is None else largest_scale
    size = {
        key: max(1, round(value * (largest_scale if key == "longest_edge" else scale)))
        for key, value in processor.size.items()
    }
    return processor._with({"size": size})


def semantic_probabilities(
    outputs: Any, target_sizes: Sequence[Size], input_sizes: Sequence[Size], padded_size: Size
) -> list[Tensor]:
    """Per-class probability maps at ``target_sizes``, the padding cropped first: the scores whose argmax
    :func:`post_process_semantic_segmentation` (``mask_size=None``) takes, with the same resampling.

    Args:
        outputs: model output with ``class_queries_logits`` (B, Q, K+1) and ``masks_queries_logits`` (B, Q, h, w).
        target_sizes: one (H, W) per image: the output size.
        input_sizes: one (height, width) per image: its size inside the padded ``pixel_values``.
        padded_size: (height, width) of ``pixel_values``.

    Returns:
        One (K, H, W) float32 tensor per image: sum over queries of p(class) x sigmoid(mask logit).
    """
    class_logits, mask_logits = _read_outputs(outputs)
    plans = _plans(mask_logits, target_sizes, None, input_sizes, padded_size)
    class_probs = class_logits.softmax(-1)[..., :-1]  # (B, Q, K)
    return [
        torch.einsum("qk,qhw->khw", class_probs[index], plan.frame_logits(mask_logits[index]).sigmoid_())
        for index, plan in enumerate(plans)
    ]


def _mirror(pixel_values: Tensor, input_sizes: Sequence[Size]) -> Tensor:
    """Each image of (B, 3, H, W) mirrored left-right inside its own (unpadded) region; the padding stays where it
    is, bottom and right, as the processor puts it."""
    mirrored = pixel_values.clone()
    for index, (height, width) in enumerate(input_sizes):
        mirrored[index, :, :height, :width] = pixel_values[index, :, :height, :width].flip(-1)
    return mirrored


def _device_of(model: Any) -> torch.device:
    parameters = getattr(model, "parameters", None)
    if callable(parameters):
        first = next(iter(parameters()), None)
        if first is not None:
            return first.device
    return torch.device("cpu")


@torch.inference_mode()
def semantic_tta(
    model: Callable[[Tensor], Any],
    processor: Mask2FormerImageProcessor,
    images: Sequence[Any],
    image_sizes: Sequence[Size],
    *,
    scales: Sequence[float] = DEFAULT_SCALES,
    flip: bool = True,
    device: str | torch.device | None = None,
) -> list[Tensor]:
    """Average the semantic probabilities of every (scale, flip) view of each image, at the image's own size.

    Args:
        model: maps ``pixel_values`` (B, 3, H, W) to an output with ``class_queries_logits`` and
            ``masks_queries_logits`` (a Mask2Former or MaskFormer model, or any callable).
        processor: the model's image processor; each view uses it with its size scaled (:func:`scaled_processor`).
        images: anything the processor takes, one per image (PIL images, arrays, tensors).
        image_sizes: (height, width) of each image: the size of the averaged maps.
        scales: factors of the processor's size, one view (two with ``flip``) per scale.
        flip: also run every scale mirrored left-right, and mirror its map back.
        device: where to run (default: the model's device, CPU for a plain callable).

    Returns:
        One (K, H, W) float32 tensor per image on ``device``: the mean over views of the class probabilities;
        its argmax over K is the semantic map.
    """
    scales = check_scales(scales, "scales")
    if not isinstance(flip, bool):
        raise TypeError(f"flip must be True or False, got {flip!r}")
    if len(image_sizes) != len(images):
        raise ValueError(f"image_sizes must have one (height, width) per image: {len(images)}, got {len(image_sizes)}")
    device = _device_of(model) if device is None else torch.device(device)
    batch_size, views, largest = len(images), 2 if flip else 1, max(scales)
    if batch_size == 0:
        return []
    sums: list[Tensor] | None = None
    for scale in scales:
        view_processor = scaled_processor(processor, scale, largest)
        pixel_values = view_processor(list(images), return_tensors="pt")["pixel_values"].to(device)  # (B, 3, H, W)
        input_sizes = [view_processor.resized_size(*size) for size in image_sizes]
        if flip:  # one forward pass for the images and their mirror images
            pixel_values = torch.cat([pixel_values, _mirror(pixel_values, input_sizes)])  # (2B, 3, H, W)
        probabilities = semantic_probabilities(
            model(pixel_values),
            target_sizes=list(image_sizes) * views,
            input_sizes=input_sizes * views,
            padded_size=tuple(pixel_values.shape[-2:]),
        )
        per_image = [  # (K, H, W) each: this scale's views summed
            probabilities[index] + probabilities[batch_size + index].flip(-1) if flip else probabilities[index]
            for index in range(batch_size)
        ]
        sums = per_image if sums is None else [total.add_(view) for total, view in zip(sums, per_image)]
    count = len(scales) * views
    return [total / count for total in sums]
