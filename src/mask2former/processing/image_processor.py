"""Image processor: resize, rescale, normalize and pad images; turn segmentation maps into mask and class targets.

Follows the preprocessing of ``transformers``' ``Mask2FormerImageProcessor`` (the same as its
``MaskFormerImageProcessor``), with which the released checkpoints were converted and evaluated, and reads and writes
its ``preprocessor_config.json``. No PIL round trip and no torchvision: PyTorch's resize kernels, numpy for the rest.

The steps, per image:

1. load: PIL images, numpy arrays and torch tensors, (H, W), (H, W, C) or (C, H, W) with C in 1, 3, 4, become an
   (H, W, 3) uint8 array (float32 for non-integer float images). Grayscale is repeated to RGB; an alpha channel is
   composited onto white (what ``transformers`` does with ``do_convert_rgb``). EXIF orientation is the caller's:
   apply ``PIL.ImageOps.exif_transpose`` first if it matters.
2. resize to :meth:`Mask2FormerImageProcessor.resized_size`: the ``size`` rule, then both sides rounded *up* to a
   multiple of ``size_divisor`` (the image is stretched by less than ``size_divisor`` pixels, as in ``transformers``).
   uint8 images go through PyTorch's uint8 antialiased kernel (a port of Pillow-SIMD's fixed-point resampling, and
   exactly what ``transformers``' torchvision backend calls), float images through the float one. The kernel runs
   on one core per image, so images are resized side by side on PyTorch's thread count, and a lone uint8 image is
   cut into two overlapping bands whose weights are checked to be exactly the whole image's (bit-identical output).
3. rescale and normalize folded into one multiply-add per channel, written straight into the padded batch.
4. pad at the bottom and right to the largest image of the batch (zeros); ``pixel_mask`` is 1 on real pixels.

Segmentation maps are resized with Pillow's NEAREST rule (reproduced exactly, for any integer label), optionally
reduced (``do_reduce_labels``: 0 becomes ``ignore_index``, the rest minus 1), and split into one binary mask per
label present, in increasing label order; ``ignore_index`` gets no mask; ``instance_id_to_semantic_id`` turns
instance ids into class ids.

Shape letters: B batch, N masks (targets) of one image, H/W height/width.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from . import postprocess

try:  # Pillow is a dependency of the package; keep the module importable without it all the same
    import PIL.Image
except ImportError:  # pragma: no cover
    PIL = None

logger = logging.getLogger(__name__)

PROCESSOR_CONFIG_NAME = "preprocessor_config.json"
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_SIZE = {"shortest_edge": 800, "longest_edge": 1333}
DEFAULT_MAX_SIZE = 1333  # longest edge for an int ``size``, as ``transformers`` 4.x did

# PIL resampling codes we implement; the others (LANCZOS 1, BOX 4, HAMMING 5) are refused.
NEAREST, BILINEAR, BICUBIC = 0, 2, 3
_RESAMPLE_NAMES = {NEAREST: "nearest", BILINEAR: "bilinear", BICUBIC: "bicubic"}

_SIZE_KEY_SETS = (
    {"height", "width"},
    {"shortest_edge", "longest_edge"},
    {"shortest_edge"},
    {"max_height", "max_width"},
)
_RETURN_TENSORS = ("pt", "np")
_CHANNEL_FORMATS = ("channels_first", "channels_last")
# Keys of preprocessor_config.json files that carry no preprocessing setting of ours.
_METADATA_KEYS = {
    "image_processor_type",
    "feature_extractor_type",
    "processor_class",
    "_processor_class",
    "auto_map",
    "do_convert_rgb",  # we always convert to RGB
    "pad_size",
    "do_pad",  # always on: a batch is padded to its largest image
    "default_to_square",
    "input_data_format",
    "data_format",
    "device",
    "return_tensors",
    "disable_grouping",
}


class BatchFeature(dict):
    """What the processor returns: a ``dict`` (so ``model(**inputs)`` works) whose keys are also attributes.

    Keys: ``pixel_values`` (B, 3, H, W) float32, ``pixel_mask`` (B, H, W) int64 and, with segmentation maps,
    ``mask_labels`` (list of B (N, H, W) float32) and ``class_labels`` (list of B (N,) int64).
    """

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} has no key {name!r}; keys: {sorted(self)}") from None

    def to(
        self, device: str | torch.device | None = None, dtype: torch.dtype | None = None, non_blocking: bool = False
    ) -> BatchFeature:
        """Move every tensor (also inside the label lists) to ``device``; ``dtype`` casts floating tensors only.

        Returns this object, changed in place (as ``transformers.BatchFeature.to`` does).
        """

        def move(value: Any) -> Any:
            if isinstance(value, Tensor):
                cast = dtype if dtype is not None and value.is_floating_point() else None
                return value.to(device=device, dtype=cast, non_blocking=non_blocking)
            if isinstance(value, (list, tuple)):
                return type(value)(move(item) for item in value)
            return value

        for key in list(self):
            self[key] = move(self[key])
        return self


def resized_image_size(height: int, width: int, size: Mapping[str, int], size_divisor: int = 0) -> tuple[int, int]:
    """The (height, width) an image gets from the ``size`` rule, both rounded up to a multiple of ``size_divisor``.

    ``size`` is one of ``{"height", "width"}`` (exact), ``{"shortest_edge", "longest_edge"}`` (scale the short side to
    ``shortest_edge`` unless the long side would pass ``longest_edge``), ``{"shortest_edge"}`` (no cap) or
    ``{"max_height", "max_width"}`` (largest size that fits). The float arithmetic and truncations are those of
    ``transformers`` (``get_size_with_aspect_ratio``), so the sizes agree to the pixel.
    """
    if "height" in size:
        new_height, new_width = size["height"], size["width"]
    elif "shortest_edge" in size:
        new_height, new_width = _shortest_edge_size(height, width, size["shortest_edge"], size.get("longest_edge"))
    else:
        scale = min(size["max_height"] / height, size["max_width"] / width)
        new_height, new_width = int(height * scale), int(width * scale)
    if size_divisor > 0:
        new_height = -(-new_height // size_divisor) * size_divisor
        new_width = -(-new_width // size_divisor) * size_divisor
    return new_height, new_width


def _shortest_edge_size(height: int, width: int, shortest_edge: int, longest_edge: int | None) -> tuple[int, int]:
    # The evaluation order of every float expression matters for ties: it is kept as in transformers.
    target, exact_target = shortest_edge, None
    if longest_edge is not None:
        short, long = float(min(height, width)), float(max(height, width))
        if long / short * target > longest_edge:
            exact_target = longest_edge * short / long
            target = int(round(exact_target))
    if (height <= width and height == target) or (width <= height and width == target):
        return height, width
    numerator = exact_target if exact_target is not None else target
    if width < height:
        return int(numerator * height / width), target
    return target, int(numerator * width / height)


def pil_nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """Source index of every output pixel of Pillow's NEAREST resize along one axis, (out_size,) int64.

    Pillow (``ImagingScaleAffine``) samples at pixel centres and steps the source coordinate by repeated addition of
    the scale in double precision; the repeated addition (not ``floor((i + 0.5) * scale)``, which is PyTorch's
    ``nearest-exact``) decides the rounding at about one size pair in five, so it is reproduced as is.
    """
    scale = in_size / out_size
    steps = np.full(out_size, scale)
    steps[0] = scale * 0.5
    coordinates = np.add.accumulate(steps)  # sequential additions, as Pillow's loop
    return np.minimum(np.floor(coordinates).astype(np.int64), in_size - 1)


class Mask2FormerImageProcessor:
    """Prepare images (and optionally segmentation targets) for Mask2Former and MaskFormer.

    The settings and their defaults are those of ``transformers.Mask2FormerImageProcessor``; a processor saved by
    either library loads in the other. Settings can be overridden per call: ``processor(images, size=...)``.

    Args:
        do_resize: resize images (and maps) to :meth:`resized_size`.
        size: ``{"height": h, "width": w}`` (the released checkpoints: 384 x 384), ``{"shortest_edge": s,
            "longest_edge": l}`` (detectron2's 800 / 1333, the default), ``{"shortest_edge": s}`` (no cap) or
            ``{"max_height": h, "max_width": w}``; an int ``s`` means ``{"shortest_edge": s, "longest_edge":
            max_size}``; a pair ``(h, w)`` means height and width.
        size_divisor: the resized height and width are rounded up to a multiple of it (0: not rounded).
        resample: PIL resampling code for images: 2 bilinear (default), 3 bicubic or 0 nearest.
        do_rescale, rescale_factor: multiply pixel values by ``rescale_factor`` (1/255). Applied to float images too,
            as in ``transformers``: pass ``do_rescale=False`` for images already in [0, 1] (a warning says so).
        do_normalize, image_mean, image_std: ``(x - mean) / std`` per channel (ImageNet statistics by default).
        ignore_index: label of pixels that get no mask (e.g. 255); padding of segmentation maps never gets one.
        do_reduce_labels: map label 0 to ``ignore_index`` and subtract 1 from the others (ADE20K); needs
            ``ignore_index``.
        num_labels: number of classes, stored for the post-processing; preprocessing does not use it.
        max_size: longest edge used with an int ``size`` (default 1333); ``transformers``' old name.
        reduce_labels: old name of ``do_reduce_labels`` (wins when given).

    Input rules (``transformers``' where it has one):
        - Images: a PIL image, a numpy array or torch tensor of shape (H, W), (H, W, C) or (C, H, W) with C in 1, 3,
          4 (channels first when both ends could be channels, unless ``input_data_format`` says otherwise), a 4-D
          array as a batch, or a list of these. Tensors are processed on the CPU.
        - uint8 and other integer images hold values in [0, 255]. Float images are pixel values too: those whose
          values are all whole numbers in [0, 255] are handled exactly as uint8; the others must lie in [0, 255]
          (this range is only checked when resizing or rescaling) and are resized in float.
        - Segmentation maps: (H, W) integer labels (a PIL image of mode L, P or I; a 3-D array is a batch), the same
          size as their image. Any integer label works (``transformers`` needs them in [0, 255]).

    Deliberate differences from ``transformers`` (5.x):
        - Padding of ``mask_labels`` is 0; ``transformers`` fills the padded area of the binary masks with
          ``ignore_index`` (255), so that a loss computed there sees 255 as a target (and it fails outright when
          ``ignore_index`` is None).
        - uint8 images are resized by PyTorch's uint8 kernel, identical to ``transformers``' torchvision backend
          (its default); its PIL backend (what you get without torchvision) rounds its 22-bit fixed-point weights
          differently and differs by one intensity level (two at most, i.e. 2/255 before normalization) on 0 to 25 %
          of the pixels, depending on the sizes.
        - Segmentation maps follow the PIL backend's NEAREST rule; the torchvision backend uses PyTorch's
          ``nearest-exact``, which picks the neighbouring source row or column at some positions.
        - Non-integer float images are resized in float (as the torchvision backend does); the PIL backend first
          truncates them to uint8.
        - The old keys ``reduce_labels`` and ``size_divisibility`` of released ``preprocessor_config.json`` files are
          read (``transformers`` 5.x ignores them).
    """

    model_input_names = ("pixel_values", "pixel_mask")

    def __init__(
        self,
        *,
        do_resize: bool = True,
        size: int | Sequence[int] | Mapping[str, int] | None = None,
        size_divisor: int = 32,
        resample: int = BILINEAR,
        do_rescale: bool = True,
        rescale_factor: float = 1 / 255,
        do_normalize: bool = True,
        image_mean: float | Sequence[float] = IMAGENET_DEFAULT_MEAN,
        image_std: float | Sequence[float] = IMAGENET_DEFAULT_STD,
        ignore_index: int | None = None,
        do_reduce_labels: bool = False,
        num_labels: int | None = None,
        max_size: int | None = None,
        reduce_labels: bool | None = None,
    ) -> None:
        if reduce_labels is not None:  # the old name wins when given
            do_reduce_labels = bool(reduce_labels)
        self.do_resize = bool(do_resize)
        self.size = _normalize_size(size, max_size)
        self.size_divisor = _non_negative_int(size_divisor, "size_divisor")
        self.resample = _check_resample(resample)
        self.do_rescale = bool(do_rescale)
        self.rescale_factor = float(rescale_factor)
        self.do_normalize = bool(do_normalize)
        self.image_mean = _per_channel(image_mean, "image_mean")
        self.image_std = _per_channel(image_std, "image_std")
        if any(value == 0 for value in self.image_std):
            raise ValueError(f"image_std must not contain 0, got {self.image_std}")
        if ignore_index is not None and (
            isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer))
        ):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.do_reduce_labels = bool(do_reduce_labels)
        self.num_labels = None if num_labels is None else _non_negative_int(num_labels, "num_labels")

    # ------------------------------------------------------------------ settings and files

    def to_dict(self) -> dict[str, Any]:
        """The ``preprocessor_config.json`` contents; ``transformers.Mask2FormerImageProcessor`` reads them back to
        the same settings."""
        data: dict[str, Any] = {
            "do_normalize": self.do_normalize,
            "do_reduce_labels": self.do_reduce_labels,
            "do_rescale": self.do_rescale,
            "do_resize": self.do_resize,
            "image_mean": list(self.image_mean),
            "image_processor_type": "Mask2FormerImageProcessor",
            "image_std": list(self.image_std),
            "resample": self.resample,
            "rescale_factor": self.rescale_factor,
            "size": dict(self.size),
            "size_divisor": self.size_divisor,
        }
        if self.ignore_index is not None:
            data["ignore_index"] = self.ignore_index
        if self.num_labels is not None:
            data["num_labels"] = self.num_labels
        return dict(sorted(data.items()))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], **overrides: Any) -> Mask2FormerImageProcessor:
        """Build from ``preprocessor_config.json`` contents, old keys included; ``overrides`` win over the file.

        Old keys: ``reduce_labels`` (``do_reduce_labels``), ``size_divisibility`` (``size_divisor``), ``max_size``
        and ``_max_size`` (the longest edge of an int ``size``). Keys that describe no setting (such as
        ``image_processor_type``) are skipped; unknown keys are skipped with a warning.
        """
        data = {**data, **overrides}
        settings: dict[str, Any] = {}
        names = cls._setting_names()
        for key, value in data.items():
            if key in names:
                settings[key] = value
        if "do_reduce_labels" not in data and "reduce_labels" in data:
            settings["do_reduce_labels"] = bool(data["reduce_labels"])
        if "size_divisor" not in data and data.get("size_divisibility") is not None:
            settings["size_divisor"] = data["size_divisibility"]
        max_size = data.get("max_size", data.get("_max_size"))
        if max_size is not None:
            settings["max_size"] = max_size
        known = names | _METADATA_KEYS | {"reduce_labels", "size_divisibility", "max_size", "_max_size"}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("%s: ignoring unknown preprocessor settings %s", cls.__name__, unknown)
        return cls(**settings)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        *,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        **overrides: Any,
    ) -> Mask2FormerImageProcessor:
        """Read ``preprocessor_config.json`` from a folder, the file itself, or a Hugging Face hub id.

        Args:
            path_or_hub_id: a folder (a checkpoint folder, or one holding only the processor file), the JSON file,
                or a hub id such as ``facebook/mask2former-swin-tiny-coco-instance`` (the local Hugging Face cache
                first, then the network).
            revision, cache_dir: passed to ``huggingface_hub`` for hub ids.
            overrides: settings that replace the file's (``size=...``, ``ignore_index=...``).
        """
        file = resolve_processor_file(path_or_hub_id, revision=revision, cache_dir=cache_dir)
        try:
            with open(file, encoding="utf-8") as handle:
                data = json.load(handle)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(file)!r} is not valid JSON: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{str(file)!r} must hold a JSON object, got {type(data).__name__}")
        return cls.from_dict(data, **overrides)

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write ``preprocessor_config.json`` into ``directory`` (created if needed); returns the file's path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        file = directory / PROCESSOR_CONFIG_NAME
        with open(file, "w", encoding="utf-8") as handle:
            json.dump(self.to_dict(), handle, indent=2, sort_keys=True)
            handle.write("\n")
        return file

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={value!r}" for key, value in self._settings().items())
        return f"{type(self).__name__}({settings})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mask2FormerImageProcessor):
            return NotImplemented
        return self._settings() == other._settings()

    @classmethod
    def _setting_names(cls) -> set[str]:
        return {
            "do_resize", "size", "size_divisor", "resample", "do_rescale", "rescale_factor", "do_normalize",
            "image_mean", "image_std", "ignore_index", "do_reduce_labels", "num_labels",
        }  # fmt: skip

    def _settings(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in sorted(self._setting_names())}

    def _with(self, overrides: Mapping[str, Any]) -> Mask2FormerImageProcessor:
        allowed = self._setting_names() | {"max_size", "reduce_labels"}
        unknown = sorted(set(overrides) - allowed)
        if unknown:
            raise TypeError(f"unknown preprocessing argument(s) {unknown}; settings are {sorted(allowed)}")
        settings = self._settings()
        if "max_size" in overrides and "size" not in overrides and "shortest_edge" in self.size:
            settings["size"] = {"shortest_edge": self.size["shortest_edge"]}  # max_size becomes its longest edge
        return type(self)(**{**settings, **overrides})

    # ------------------------------------------------------------------ sizes

    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """The (height, width) an image of this size has after resizing, before padding (itself if ``do_resize``
        is False)."""
        if not self.do_resize:
            return int(height), int(width)
        return resized_image_size(int(height), int(width), self.size, self.size_divisor)

    # ------------------------------------------------------------------ preprocessing

    def preprocess(
        self,
        images: Any,
        segmentation_maps: Any = None,
        instance_id_to_semantic_id: Mapping[int, int] | Sequence[Mapping[int, int] | None] | None = None,
        *,
        return_tensors: str = "pt",
        input_data_format: str | None = None,
        **overrides: Any,
    ) -> BatchFeature:
        """Resize, rescale, normalize and pad a batch; turn segmentation maps into mask and class targets.

        Args:
            images: one image or a list (see the class docstring for the accepted forms).
            segmentation_maps: optional, one (H, W) label map per image, each the size of its image.
            instance_id_to_semantic_id: optional, the class of each instance id of the maps: one dict for all images
                or one per image. Without it the labels of the maps are the classes.
            return_tensors: "pt" (torch tensors) or "np" (numpy arrays).
            input_data_format: "channels_first" or "channels_last" for arrays whose channel axis is ambiguous.
            overrides: any setting of the constructor, for this call only.

        Returns:
            :class:`BatchFeature` with ``pixel_values`` (B, 3, H, W) float32, padded to the largest resized image
            of the batch, ``pixel_mask`` (B, H, W) int64 (1 on real pixels) and, with maps, ``mask_labels`` (list of
            B (N, H, W) float32, zero on padding) and ``class_labels`` (list of B (N,) int64).
        """
        if overrides:
            return self._with(overrides).preprocess(
                images,
                segmentation_maps,
                instance_id_to_semantic_id,
                return_tensors=return_tensors,
                input_data_format=input_data_format,
            )
        if return_tensors not in _RETURN_TENSORS:
            raise ValueError(f"return_tensors must be one of {_RETURN_TENSORS}, got {return_tensors!r}")
        if input_data_format is not None and input_data_format not in _CHANNEL_FORMATS:
            raise ValueError(f"input_data_format must be one of {_CHANNEL_FORMATS} or None, got {input_data_format!r}")

        items, names = _flatten(images, "images", batch_ndim=4)
        check_range = self.do_resize or self.do_rescale
        loaded = [
            _load_image(item, name, input_data_format, check_range, self.do_rescale) for item, name in zip(items, names)
        ]
        maps = None
        if segmentation_maps is not None:
            maps = self._load_segmentation_maps(segmentation_maps, loaded, names)
        per_image_ids = _per_image_id_maps(instance_id_to_semantic_id, len(loaded), maps is not None)

        sizes = []
        for image, name in zip(loaded, names):
            height, width = self.resized_size(*image.shape[:2])
            if height < 1 or width < 1:
                raise ValueError(
                    f"{name} of size {image.shape[0]}x{image.shape[1]} would be resized to {height}x{width} pixels "
                    f"with size={self.size}; its aspect ratio is too extreme"
                )
            sizes.append((height, width))
        padded_size = (max(height for height, _ in sizes), max(width for _, width in sizes))

        pixel_mask = np.empty((len(loaded), *padded_size), dtype=np.int64)  # (B, H, W), each element written once
        pixel_values = self._pixel_values(loaded, sizes, padded_size, pixel_mask)
        result = BatchFeature(pixel_values=pixel_values, pixel_mask=pixel_mask)
        if maps is not None:
            targets = [
                self._targets(label_map, size, padded_size, per_image_ids[index], index)
                for index, (label_map, size) in enumerate(zip(maps, sizes))
            ]
            result["mask_labels"] = [masks for masks, _ in targets]
            result["class_labels"] = [classes for _, classes in targets]
        if return_tensors == "pt":
            for key, value in result.items():
                result[key] = (
                    [torch.from_numpy(item) for item in value] if isinstance(value, list) else torch.from_numpy(value)
                )
        return result

    __call__ = preprocess

    # The arithmetic below is numpy (vectorized, releases the GIL): on small CPU machines PyTorch's intra-op threads
    # cost more in synchronization than they save on these memory-bound steps. Only the resize kernels are PyTorch's.

    def _pixel_values(
        self,
        images: list[np.ndarray],
        sizes: list[tuple[int, int]],
        padded_size: tuple[int, int],
        pixel_mask: np.ndarray,
    ) -> np.ndarray:
        """Resize the images, then rescale and normalize each straight into its place of the padded (B, 3, H, W)
        float32 batch; write the (B, H, W) ``pixel_mask`` (1 on each job's pixels, 0 on the padding).

        The work is cut into jobs: one per image or, when there are fewer images than threads, one per band of an
        image (:func:`_band_plan`). PyTorch's resize kernel runs on one core for one image, so the jobs run side by
        side on ``torch.get_num_threads()`` threads, each resizing its input and normalizing the result into its own
        part of the batch (no other shared state).
        """
        pixel_values = np.empty((len(images), 3, *padded_size), dtype=np.float32)
        scale, bias = self._affine()
        threads = torch.get_num_threads()
        jobs = [
            job
            for index, (image, size) in enumerate(zip(images, sizes))
            for job in self._resize_jobs(image, size, index, split=len(images) < threads)
        ]

        def run(job: _ResizeJob) -> None:
            source = self._resize(job.image, job.size)[:, job.rows, job.columns]  # (3, h, w), any strides
            target = pixel_values[
                job.index, :, job.top : job.top + source.shape[1], job.left : job.left + source.shape[2]
            ]
            if scale is not None:
                np.multiply(source, scale, out=target)  # uint8 * float32 -> float32, converted on the fly
            else:
                target[...] = source
            if bias is not None:
                np.add(target, bias, out=target)
            pixel_mask[job.index, job.top : job.top + source.shape[1], job.left : job.left + source.shape[2]] = 1

        _run_in_threads(run, jobs, threads)
        for index, (height, width) in enumerate(sizes):
            pixel_values[index, :, height:, :] = 0
            pixel_values[index, :, :height, width:] = 0
            pixel_mask[index, height:] = 0
            pixel_mask[index, :height, width:] = 0
        return pixel_values

    def _affine(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Rescale and normalize folded into x * scale + bias, per channel, each (3, 1, 1) float32 or None."""
        return _affine_factors(
            self.do_rescale, self.rescale_factor, self.do_normalize, tuple(self.image_mean), tuple(self.image_std)
        )

    def _resize_jobs(self, image: np.ndarray, size: tuple[int, int], index: int, split: bool) -> list[_ResizeJob]:
        """The whole image as one job or, with ``split`` and an exact band plan for a uint8 image, two bands whose
        kept outputs tile the resized image, bit-identical to resizing it whole."""
        whole = [_ResizeJob(image, size, index)]
        height, width = image.shape[:2]
        if (
            not split
            or not self.do_resize
            or self.resample == NEAREST
            or image.dtype != np.uint8
            or (height, width) == tuple(size)
            or max(height * width, size[0] * size[1]) < _MIN_SPLIT_PIXELS
        ):
            return whole
        mode = _RESAMPLE_NAMES[self.resample]
        rows = _band_plan(height, size[0], mode)
        if rows is not None:
            length, band_size, cut = rows
            start = cut - (size[0] - band_size)  # first kept output of the lower band
            return [
                _ResizeJob(image[:length], (band_size, size[1]), index, rows=slice(0, cut)),
                _ResizeJob(image[height - length :], (band_size, size[1]), index, cut, 0, slice(start, None)),
            ]
        columns = _band_plan(width, size[1], mode)
        if columns is not None:
            length, band_size, cut = columns
            start = cut - (size[1] - band_size)
            return [
                _ResizeJob(image[:, :length], (size[0], band_size), index, columns=slice(0, cut)),
                _ResizeJob(image[:, width - length :], (size[0], band_size), index, 0, cut, columns=slice(start, None)),
            ]
        return whole

    def _resize(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) -> (3, *size) of the same dtype, any strides.

        uint8 goes through PyTorch's uint8 antialiased kernel (a port of Pillow-SIMD's fixed-point resampling);
        float through the float one. Both are what ``transformers``' torchvision backend calls.
        """
        height, width = image.shape[:2]
        if not self.do_resize or (height, width) == tuple(size):
            return image.transpose(2, 0, 1)
        if self.resample == NEAREST:
            rows, columns = pil_nearest_indices(height, size[0]), pil_nearest_indices(width, size[1])
            return image[rows[:, None], columns].transpose(2, 0, 1)
        # A channels-last (1, 3, H, W) view of the (H, W, 3) array, its batch stride H * W * 3 so that the kernel
        # writes a channels-last output too: its fast path both ways. A channels-first output costs the kernel a
        # strided repacking that takes longer than the resampling; the normalization reads the interleaved channels.
        batch = torch.from_numpy(_torch_compatible(image)).unsqueeze(0).permute(0, 3, 1, 2)
        # Pillow's filters widen with the downscaling factor; antialias=True is PyTorch's port of that.
        mode = _RESAMPLE_NAMES[self.resample]
        return F.interpolate(batch, size=tuple(size), mode=mode, antialias=True, align_corners=False)[0].numpy()

    # ------------------------------------------------------------------ targets

    def _load_segmentation_maps(
        self, segmentation_maps: Any, images: list[np.ndarray], image_names: list[str]
    ) -> list[np.ndarray]:
        items, names = _flatten(segmentation_maps, "segmentation_maps", batch_ndim=3)
        if len(items) != len(images):
            raise ValueError(f"got {len(images)} image(s) but {len(items)} segmentation map(s); give one map per image")
        maps = []
        for item, name, image, image_name in zip(items, names, images, image_names):
            label_map = _load_segmentation_map(item, name)
            if label_map.shape != image.shape[:2]:
                raise ValueError(
                    f"{name} has size {label_map.shape[0]}x{label_map.shape[1]} but {image_name} is "
                    f"{image.shape[0]}x{image.shape[1]}; a segmentation map must have the size of its image"
                )
            maps.append(label_map)
        return maps

    def _targets(
        self,
        label_map: np.ndarray,
        size: tuple[int, int],
        padded_size: tuple[int, int],
        instance_to_class: Mapping[int, int] | None,
        index: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """One (H, W) int64 label map -> (N, H_pad, W_pad) float32 binary masks and (N,) int64 classes."""
        if self.do_resize and label_map.shape != tuple(size):
            rows, columns = (
                pil_nearest_indices(label_map.shape[0], size[0]),
                pil_nearest_indices(label_map.shape[1], size[1]),
            )
            label_map = label_map[rows[:, None], columns]
        if self.do_reduce_labels:
            if self.ignore_index is None:
                raise ValueError("do_reduce_labels=True needs an ignore_index (the label that 0 becomes), e.g. 255")
            label_map = np.where(label_map == 0, self.ignore_index, label_map - 1)
        labels = np.unique(label_map)  # sorted: the masks come in increasing label order
        if self.ignore_index is not None:
            labels = labels[labels != self.ignore_index]
        masks = np.zeros((len(labels), *padded_size), dtype=np.float32)  # (N, H, W)
        height, width = label_map.shape
        masks[:, :height, :width] = label_map[None] == labels[:, None, None]
        if instance_to_class is None:
            return masks, labels.astype(np.int64)
        offset = 1 if self.do_reduce_labels else 0  # the mapping is keyed by the ids of the map as given
        classes = []
        for label in labels.tolist():
            try:
                class_id = instance_to_class[label + offset]
            except KeyError:
                raise ValueError(
                    f"instance_id_to_semantic_id has no class for instance id {label + offset}, which occurs in "
                    f"segmentation map {index}"
                ) from None
            classes.append(int(class_id) - offset)
        return masks, np.array(classes, dtype=np.int64)

    # ------------------------------------------------------------------ post-processing
    # Thin methods over the pure functions of processing/postprocess.py, so that code written for transformers'
    # processor runs unchanged. The arguments, defaults and outputs are those functions'.

    def post_process_semantic_segmentation(
        self, outputs: Any, target_sizes: Sequence[tuple[int, int]] | None = None, **kwargs: Any
    ) -> list[torch.Tensor]:
        """(H, W) class-id maps; see :func:`mask2former.processing.postprocess.post_process_semantic_segmentation`."""
        return postprocess.post_process_semantic_segmentation(outputs, target_sizes, **kwargs)

    def post_process_instance_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        target_sizes: Sequence[tuple[int, int]] | None = None,
        return_coco_annotation: bool = False,
        return_binary_maps: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Instances per image; see :func:`mask2former.processing.postprocess.post_process_instance_segmentation`."""
        return postprocess.post_process_instance_segmentation(
            outputs,
            threshold,
            mask_threshold,
            overlap_mask_area_threshold,
            target_sizes,
            return_coco_annotation,
            return_binary_maps,
            **kwargs,
        )

    def post_process_panoptic_segmentation(
        self,
        outputs: Any,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: set[int] | None = None,
        target_sizes: Sequence[tuple[int, int]] | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        """Panoptic segments per image; see :func:`mask2former.processing.postprocess.post_process_panoptic_segmentation`."""
        return postprocess.post_process_panoptic_segmentation(
            outputs, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, target_sizes, **kwargs
        )


MaskFormerImageProcessor = Mask2FormerImageProcessor
"""MaskFormer's preprocessing is the same as Mask2Former's (also in ``transformers``): one class, two names."""


# ---------------------------------------------------------------------- files, settings and inputs


def resolve_processor_file(
    path_or_hub_id: str | os.PathLike, *, revision: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Path:
    """The ``preprocessor_config.json`` of a folder, the file itself, or a hub id's (local cache, then network)."""
    path = Path(path_or_hub_id)
    if path.is_file():
        return path
    if path.is_dir():
        file = path / PROCESSOR_CONFIG_NAME
        if not file.is_file():
            raise FileNotFoundError(f"no {PROCESSOR_CONFIG_NAME} in the folder {str(path)!r}")
        return file
    hub_id = str(path_or_hub_id)
    if not re.fullmatch(r"[\w.\-]+/[\w.\-]+", hub_id):
        raise FileNotFoundError(
            f"{hub_id!r} is neither an existing file or folder nor a Hugging Face hub id (org/name)"
        )
    from huggingface_hub import hf_hub_download

    options = dict(repo_id=hub_id, filename=PROCESSOR_CONFIG_NAME, revision=revision, cache_dir=cache_dir)
    try:
        return Path(hf_hub_download(**options, local_files_only=True))
    except Exception:  # not in the cache: try the network below
        pass
    try:
        return Path(hf_hub_download(**options))
    except Exception as error:
        raise FileNotFoundError(
            f"could not find {PROCESSOR_CONFIG_NAME} of {hub_id!r} in the Hugging Face cache, nor download it "
            f"({type(error).__name__}: {error}). Download it where there is network access (`hf download {hub_id}`) "
            f"and pass the folder's path, or set HF_HUB_CACHE."
        ) from error


def _normalize_size(size: Any, max_size: int | None) -> dict[str, int]:
    if max_size is not None:
        max_size = _positive_int(max_size, "max_size")
    if size is None:
        size = {
            "shortest_edge": DEFAULT_SIZE["shortest_edge"],
            "longest_edge": max_size or DEFAULT_SIZE["longest_edge"],
        }
    elif isinstance(size, int) and not isinstance(size, bool):
        size = {"shortest_edge": size, "longest_edge": max_size or DEFAULT_MAX_SIZE}
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    elif isinstance(size, Mapping):
        size = {key: value for key, value in size.items() if value is not None}
        if set(size) == {"shortest_edge"} and max_size is not None:
            size["longest_edge"] = max_size
    else:
        raise TypeError(f"size must be an int, a (height, width) pair or a dict, got {size!r}")
    if set(size) not in _SIZE_KEY_SETS:
        expected = " or ".join("{" + ", ".join(sorted(keys)) + "}" for keys in _SIZE_KEY_SETS)
        raise ValueError(f"size must have the keys {expected}; got {sorted(size)}")
    return {key: _positive_int(value, f"size[{key!r}]") for key, value in sorted(size.items())}


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def _non_negative_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return int(value)


def _check_resample(resample: Any) -> int:
    if (
        isinstance(resample, bool)
        or not isinstance(resample, (int, np.integer))
        or int(resample) not in _RESAMPLE_NAMES
    ):
        names = ", ".join(f"{code} ({name})" for code, name in _RESAMPLE_NAMES.items())
        raise ValueError(f"resample must be a PIL resampling code among {names}; got {resample!r}")
    return int(resample)


def _per_channel(value: Any, name: str) -> tuple[float, float, float]:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value),) * 3
    values = tuple(float(item) for item in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be a float or 3 floats (R, G, B), got {value!r}")
    return values  # type: ignore[return-value]


def _per_image_id_maps(
    instance_id_to_semantic_id: Any, batch_size: int, have_maps: bool
) -> list[Mapping[int, int] | None]:
    if instance_id_to_semantic_id is None:
        return [None] * batch_size
    if not have_maps:
        raise ValueError("instance_id_to_semantic_id was given without segmentation_maps")
    if isinstance(instance_id_to_semantic_id, Mapping):
        return [instance_id_to_semantic_id] * batch_size
    if isinstance(instance_id_to_semantic_id, Sequence) and not isinstance(instance_id_to_semantic_id, str):
        if len(instance_id_to_semantic_id) != batch_size:
            raise ValueError(
                f"instance_id_to_semantic_id has {len(instance_id_to_semantic_id)} dicts for {batch_size} image(s); "
                "give one dict for all images or one per image"
            )
        for index, item in enumerate(instance_id_to_semantic_id):
            if item is not None and not isinstance(item, Mapping):
                raise TypeError(
                    f"instance_id_to_semantic_id[{index}] must be a dict or None, got {type(item).__name__}"
                )
        return list(instance_id_to_semantic_id)
    raise TypeError(
        f"instance_id_to_semantic_id must be a dict or a list of dicts, got {type(instance_id_to_semantic_id).__name__}"
    )


def _flatten(value: Any, name: str, batch_ndim: int) -> tuple[list[Any], list[str]]:
    """One item, a list of items, or an array/tensor with ``batch_ndim`` dims (a batch) -> items and their names."""
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"{name} is an empty list")
        for index, item in enumerate(value):
            if isinstance(item, (list, tuple)):
                raise TypeError(f"{name}[{index}] is a {type(item).__name__}; give a flat list")
        return list(value), [f"{name}[{index}]" for index in range(len(value))]
    if isinstance(value, (np.ndarray, Tensor)) and value.ndim == batch_ndim:
        if value.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch of shape {tuple(value.shape)}")
        return list(value), [f"{name}[{index}]" for index in range(value.shape[0])]
    return [value], [name]


def _to_numpy(item: Any, name: str) -> np.ndarray:
    if isinstance(item, np.ndarray):
        return item
    if isinstance(item, Tensor):
        item = item.detach().cpu()
        if item.dtype in (torch.bfloat16, torch.float16):
            item = item.float()
        return item.numpy()
    if isinstance(item, (str, os.PathLike)):
        raise TypeError(f"{name} is a path ({str(item)!r}); load it first, e.g. PIL.Image.open(path)")
    raise TypeError(f"{name} must be a PIL image, a numpy array or a torch tensor, got {type(item).__name__}")


def _pil_to_rgb(image: PIL.Image.Image) -> np.ndarray:
    """(H, W, 3) uint8; transparency composited onto white (``transformers.image_transforms.convert_to_rgb``)."""
    if image.mode == "RGB":
        return np.array(image)
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = PIL.Image.alpha_composite(background, image)
    return np.array(image.convert("RGB"))


def _load_image(item: Any, name: str, channel_format: str | None, check_range: bool, do_rescale: bool) -> np.ndarray:
    """Any accepted image -> (H, W, 3) uint8, or float32 for non-integer float images (a view where possible)."""
    if PIL is not None and isinstance(item, PIL.Image.Image):
        if item.width == 0 or item.height == 0:
            raise ValueError(f"{name} is an empty image of size {item.width}x{item.height}")
        return _pil_to_rgb(item)
    array = _to_numpy(item, name)
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.ndim == 2:
        array = array[:, :, None]
    elif array.ndim == 3:
        array = _channels_last(array, name, channel_format)
    else:
        raise ValueError(f"{name} must have shape (H, W), (H, W, C) or (C, H, W), got {array.shape}")
    array = _pixel_dtype(array, name, check_range)
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = _composite_on_white(array)
    if array.dtype != np.uint8 and do_rescale and array.max() <= 1:
        warnings.warn(
            f"{name} is a float image with values in [0, 1] and do_rescale=True multiplies it by rescale_factor "
            "again (as transformers does); pass do_rescale=False if it is already rescaled",
            stacklevel=4,
        )
    return array


@functools.lru_cache(maxsize=16)
def _affine_factors(
    do_rescale: bool,
    rescale_factor: float,
    do_normalize: bool,
    image_mean: tuple[float, float, float],
    image_std: tuple[float, float, float],
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """:meth:`Mask2FormerImageProcessor._affine`, cached (read-only arrays: every call of a processor shares them)."""
    # Python floats are float64, as the division needs; the factors are cast to float32 once at the end.
    scale = [rescale_factor if do_rescale else 1.0] * 3
    bias = [0.0] * 3
    if do_normalize:
        scale = [factor / std for factor, std in zip(scale, image_std)]
        bias = [-mean / std for mean, std in zip(image_mean, image_std)]
    factors = (
        np.array(scale, dtype=np.float32).reshape(3, 1, 1) if any(factor != 1 for factor in scale) else None,
        np.array(bias, dtype=np.float32).reshape(3, 1, 1) if do_normalize else None,
    )
    for array in factors:
        if array is not None:
            array.flags.writeable = False
    return factors


_TAPS = {"bilinear": 2, "bicubic": 4}  # width of each resampling filter, in input pixels at scale 1
_MIN_SPLIT_PIXELS = 1 << 16  # smaller images are resized whole: a thread hand-off would cost more than it saves


@functools.lru_cache(maxsize=256)
def _band_plan(in_size: int, out_size: int, mode: str) -> tuple[int, int, int] | None:
    """How to resize one axis as two equal overlapping bands that get exactly the whole axis's weights, or None.

    Returns (L, M, cut): band one maps input [0, L) to output [0, M) and keeps output [0, cut); band two maps input
    [in - L, in) to output [out - M, out) and keeps output [cut, out). With in / out = p / q in lowest terms, a band
    starting at a multiple of q outputs (p inputs) has the whole axis's windows shifted, its edges included, so its
    weights agree up to floating-point rounding; :func:`_kernel_taps` recomputes both in the kernel's arithmetic and
    the plan is kept only if the quantized weights and their precision come out identical.
    """
    ratio = Fraction(in_size, out_size)
    period = ratio.denominator
    scale = in_size / out_size
    support = max(scale, 1.0) * _TAPS[mode] / 2  # half window, in input pixels
    margin = -(-math.ceil((support + 2) / scale) // period) * period  # outputs whose windows stay inside a band
    cut = out_size // 2 // period * period
    band_size = max(cut, out_size - cut) + margin
    if cut < 2 * period or band_size > 0.7 * out_size:  # too little gained, or a band could miss some weights
        return None
    band_in = band_size * ratio.numerator // period
    whole = _kernel_taps(in_size, out_size, mode)
    band = _kernel_taps(band_in, band_size, mode)
    offset_out, offset_in = out_size - band_size, in_size - band_in
    if band[2] != whole[2]:  # the quantization precision
        return None
    for band_kept, kept, shift in (
        (slice(0, cut), slice(0, cut), 0),
        (slice(cut - offset_out, band_size), slice(cut, out_size), offset_in),
    ):
        if not (
            np.array_equal(band[0][band_kept] + shift, whole[0][kept])
            and np.array_equal(band[1][band_kept], whole[1][kept])
        ):
            return None
    return band_in, band_size, cut


def _kernel_taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray, int]:
    """The windows and fixed-point weights of PyTorch's antialiased uint8 resize along one axis: (first input per
    output (out,), int weights (out, taps) with zeros past each window, precision in bits), computed in float64 in
    the order the kernel computes them."""
    taps = _TAPS[mode]
    scale = in_size / out_size
    support = (taps * 0.5) * scale if scale >= 1.0 else taps * 0.5
    max_taps = math.ceil(support) * 2 + 1
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    center = scale * (np.arange(out_size) + 0.5)
    starts = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    sizes = np.clip(np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - starts, 0, max_taps)
    offsets = np.arange(max_taps)
    x = np.abs((starts[:, None] + offsets).astype(np.float64) - center[:, None] + 0.5) * invscale
    if mode == "bilinear":
        weights = np.where(x < 1.0, 1.0 - x, 0.0)
    else:  # Keys cubic, a = -0.5
        a = -0.5
        weights = np.where(
            x < 1.0,
            ((a + 2) * x - (a + 3)) * x * x + 1,
            np.where(x < 2.0, ((a * x - 5 * a) * x + 8 * a) * x - 4 * a, 0.0),
        )
    weights = np.where(offsets < sizes[:, None], weights, 0.0)
    total = np.zeros(out_size)
    for column in range(max_taps):  # in order, as the kernel sums
        total = total + weights[:, column]
    weights = np.divide(weights, total[:, None], out=weights.copy(), where=total[:, None] != 0)
    largest = weights.max()
    precision = 0
    while precision < 22 and int(0.5 + largest * (1 << (precision + 1))) < (1 << 15):
        precision += 1
    scaled = weights * (1 << precision)
    return starts, np.trunc(np.where(scaled < 0, scaled - 0.5, scaled + 0.5)).astype(np.int64), precision


class _ResizeJob(NamedTuple):
    """Resize ``image`` (h, w, 3) to ``size`` and write the kept ``rows`` and ``columns`` of the result at
    (``top``, ``left``) of image ``index`` of the batch."""

    image: np.ndarray
    size: tuple[int, int]
    index: int
    top: int = 0
    left: int = 0
    rows: slice = slice(None)
    columns: slice = slice(None)


_pool: tuple[int, ThreadPoolExecutor] | None = None  # (workers, pool), made on first use


def _forget_pool() -> None:
    global _pool
    _pool = None  # a forked child has none of the parent's threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _run_in_threads(function: Any, jobs: list[Any], threads: int) -> None:
    """``function(job)`` for each job, in up to ``threads`` contiguous chunks: the first on the calling thread, the
    others on a pool kept for the process (starting threads on every call costs more than small jobs take)."""
    global _pool
    chunks = _split(jobs, threads)
    if len(chunks) < 2:
        for job in jobs:
            function(job)
        return
    if _pool is None or _pool[0] < len(chunks) - 1:
        if _pool is not None:
            _pool[1].shutdown(wait=False)  # its threads finish their (no) work and exit
        _pool = (len(chunks) - 1, ThreadPoolExecutor(len(chunks) - 1, thread_name_prefix="mask2former-preprocess"))
    futures = [_pool[1].submit(lambda chunk=chunk: [function(job) for job in chunk]) for chunk in chunks[1:]]
    for job in chunks[0]:
        function(job)
    for future in futures:
        future.result()  # re-raises a worker's exception


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    """``items`` cut into at most ``parts`` contiguous chunks of near-equal length."""
    parts = min(parts, len(items))
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
    return [items[bounds[i] : bounds[i + 1]] for i in range(parts)]


def _torch_compatible(array: np.ndarray) -> np.ndarray:
    """``torch.from_numpy`` wants a writeable array with non-negative strides in native byte order."""
    if not array.flags.writeable or any(stride < 0 for stride in array.strides) or not array.dtype.isnative:
        return np.array(array, dtype=array.dtype.newbyteorder("="), order="C", copy=True)
    return array


def _channels_last(array: np.ndarray, name: str, channel_format: str | None) -> np.ndarray:
    if channel_format is None:
        # transformers' rule: channels first when both ends could be channels
        if array.shape[0] in (1, 3, 4):
            channel_format = "channels_first"
        elif array.shape[-1] in (1, 3, 4):
            channel_format = "channels_last"
        else:
            raise ValueError(
                f"{name} has shape {array.shape}: expected 1, 3 or 4 channels in the first or last dimension"
            )
    if channel_format == "channels_first":
        array = np.moveaxis(array, 0, -1)
    if array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} has {array.shape[-1]} channels ({channel_format}); expected 1, 3 or 4")
    return array


def _pixel_dtype(array: np.ndarray, name: str, check_range: bool) -> np.ndarray:
    """uint8 as is; integers and whole-number floats in [0, 255] -> uint8; other floats -> float32."""
    if array.dtype == np.uint8:
        return array
    if array.dtype == np.bool_ or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} has dtype {array.dtype}; expected uint8, another integer type or a float type")
    low, high = array.min(), array.max()
    if np.issubdtype(array.dtype, np.integer):
        if low < 0 or high > 255:
            raise ValueError(f"{name} is an integer image with values in [{low}, {high}]; expected [0, 255]")
        return array.astype(np.uint8)
    if not np.isfinite(low) or not np.isfinite(high):
        raise ValueError(f"{name} contains NaN or infinite values")
    if check_range and (low < 0 or high > 255):
        raise ValueError(
            f"{name} is a float image with values in [{low}, {high}]; expected pixel values in [0, 255] (or in "
            "[0, 1] with do_rescale=False)"
        )
    if low >= 0 and high <= 255 and np.array_equal(array, np.round(array)):
        return array.astype(np.uint8)  # whole numbers: exactly the uint8 image (transformers treats it so too)
    return array.astype(np.float32)


def _composite_on_white(array: np.ndarray) -> np.ndarray:
    """(H, W, 4) RGBA -> (H, W, 3) RGB over a white background, rounding as ``transformers`` does."""
    white = 255.0 if array.dtype == np.uint8 or array.max() > 1 else 1.0
    alpha = array[..., 3:4].astype(np.float64) / white
    composite = alpha * array[..., :3] + (1 - alpha) * white
    if array.dtype == np.uint8:
        return np.round(composite).astype(np.uint8)
    return composite.astype(np.float32)


def _load_segmentation_map(item: Any, name: str) -> np.ndarray:
    """Any accepted map -> (H, W) int64."""
    if PIL is not None and isinstance(item, PIL.Image.Image):
        array = np.array(item)
    else:
        array = _to_numpy(item, name)
    if array.size == 0:
        raise ValueError(f"{name} is empty: shape {array.shape}")
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (H, W) map of labels, got shape {array.shape}")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)) or not np.array_equal(array, np.round(array)):
            raise ValueError(f"{name} is a float map with non-integer values; labels must be whole numbers")
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_):
        raise TypeError(f"{name} has dtype {array.dtype}; expected integer labels")
    return array.astype(np.int64)
