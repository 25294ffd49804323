"""Training augmentations in torch: random resize + crop, large-scale jitter, horizontal flip, color jitter.

They follow the original Mask2Former data mappers (detectron2 transforms):

- ``resize-crop`` (ADE20K, Cityscapes: ``ResizeShortestEdge`` + ``RandomCrop``): the shortest edge is resized to
  ``crop_size x scale``, ``scale`` uniform in ``scale_range``; then a random crop of at most ``crop_size``.
- ``lsj``, large-scale jitter (COCO: ``ResizeScale`` + ``FixedSizeCrop``): the image is resized to fit inside
  ``crop_size x scale`` (aspect ratio kept), ``scale`` uniform in ``scale_range`` (0.1 to 2.0 in the original); then
  a random crop of at most ``crop_size``.
- then a horizontal flip with probability ``flip_prob`` and, if ``color_jitter`` > 0, brightness, contrast and
  saturation factors uniform in [1 - s, 1 + s] (on the image only);
- finally both are padded at the bottom and right to ``crop_size`` (image: the ImageNet mean colour, which
  normalizes to about 0 like the batch padding; map: ``ignore_index``) and a ``valid`` map marks the real pixels.

Images are resized bilinearly (antialiased when shrinking, as PIL does) and label maps by nearest neighbour on the
same pixel-centre grid, so both stay aligned. All randomness comes from the ``torch.Generator`` passed in.

Shape letters: H/W height/width.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

IMAGENET_MEAN_RGB = (124, 116, 104)  # round(255 x (0.485, 0.456, 0.406))
MODES = ("resize-crop", "lsj", "none")


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()


def resize(image: Tensor, label: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Resize a (3, H, W) uint8 image bilinearly and an (H, W) label map by nearest neighbour to ``size``."""
    height, width = label.shape
    if (height, width) == tuple(size):
        return image, label
    antialias = size[0] < height or size[1] < width
    resized = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias)
    image = resized[0].round_().clamp_(0, 255).to(torch.uint8)  # (3, h, w)
    rows = nearest_indices(height, size[0])
    columns = nearest_indices(width, size[1])
    return image, label[rows[:, None], columns]  # (h, w)


def nearest_indices(in_size: int, out_size: int) -> Tensor:
    """Source index of each output pixel: the one whose centre the output pixel's centre falls in (the grid of
    ``align_corners=False``, so that maps line up with bilinearly resized images)."""
    positions = (torch.arange(out_size, dtype=torch.float64) + 0.5) * (in_size / out_size)
    return positions.floor().long().clamp_(max=in_size - 1)


def crop(image: Tensor, label: Tensor, top: int, left: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    return image[:, top : top + height, left : left + width], label[top : top + height, left : left + width]


def random_crop(
    image: Tensor, label: Tensor, size: tuple[int, int], generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A random window of at most ``size`` (smaller sides are kept whole)."""
    height, width = label.shape
    crop_height, crop_width = min(size[0], height), min(size[1], width)
    top = round(_uniform(generator, 0, height - crop_height))
    left = round(_uniform(generator, 0, width - crop_width))
    return crop(image, label, top, left, crop_height, crop_width)


def hflip(image: Tensor, label: Tensor) -> tuple[Tensor, Tensor]:
    """Mirror the image (3, H, W) and the map (H, W) left to right."""
    return image.flip(-1), label.flip(-1)


def color_jitter(image: Tensor, strength: float, generator: torch.Generator) -> Tensor:
    """Brightness, contrast and saturation, each a factor uniform in [1 - strength, 1 + strength], in that order."""
    factors = [_uniform(generator, 1 - strength, 1 + strength) for _ in range(3)]
    pixels = image.float()  # (3, H, W)
    pixels = pixels * factors[0]
    gray = pixels.mul(torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)  # (1, H, W)
    pixels = (pixels - gray.mean()) * factors[1] + gray.mean()
    gray = pixels.mul(torch.tensor([0.299, 0.587, 0.114])[:, None, None]).sum(0, keepdim=True)
    pixels = (pixels - gray) * factors[2] + gray
    return pixels.round_().clamp_(0, 255).to(torch.uint8)


def pad(
    image: Tensor, label: Tensor, size: tuple[int, int], ignore_index: int, fill: Sequence[int] = IMAGENET_MEAN_RGB
) -> tuple[Tensor, Tensor, Tensor]:
    """Pad at the bottom and right to ``size``: image with ``fill``, map with ``ignore_index``.

    Returns:
        image (3, H, W) uint8, label (H, W), valid (H, W) bool (True on the real pixels).
    """
    height, width = label.shape
    padded_image = torch.tensor(fill, dtype=torch.uint8)[:, None, None].repeat(1, *size)  # (3, H, W)
    padded_image[:, :height, :width] = image
    padded_label = torch.full(size, ignore_index, dtype=label.dtype)
    padded_label[:height, :width] = label
    valid = torch.zeros(size, dtype=torch.bool)
    valid[:height, :width] = True
    return padded_image, padded_label, valid


class TrainAugmentation:
    """The training transform of one image and its label map.

    Args:
        mode: "resize-crop", "lsj" or "none" (see the module docstring).
        crop_size: (height, width) of the output (the crops are padded to it; "none": no crop, no padding).
        scale_range: (min, max) of the random scale.
        flip_prob: probability of a horizontal flip.
        color_jitter: strength of the brightness/contrast/saturation jitter (0: off).
        ignore_index: label of padded pixels.
    """

    def __init__(
        self,
        *,
        mode: str = "resize-crop",
        crop_size: int | tuple[int, int] = 512,
        scale_range: tuple[float, float] = (0.5, 2.0),
        flip_prob: float = 0.5,
        color_jitter: float = 0.0,
        ignore_index: int = 255,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode
        self.crop_size = (crop_size, crop_size) if isinstance(crop_size, int) else tuple(crop_size)
        self.scale_range = tuple(scale_range)
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must satisfy 0 < min <= max, got {scale_range}")
        self.flip_prob = flip_prob
        self.color_jitter = color_jitter
        self.ignore_index = ignore_index

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(mode={self.mode!r}, crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"flip_prob={self.flip_prob}, color_jitter={self.color_jitter}, ignore_index={self.ignore_index})"
        )

    def __call__(self, image: Tensor, label: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
        """Transform one example.

        Args:
            image: (3, H, W) uint8.
            label: (H, W) integer map (segment or class ids).
            generator: the source of every random choice.

        Returns:
            image (3, h, w) uint8, label (h, w), valid (h, w) bool; (h, w) is ``crop_size`` except for mode "none".
        """
        if image.dim() != 3 or image.shape[0] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"image must be a (3, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
        if tuple(label.shape) != tuple(image.shape[1:]):
            raise ValueError(
                f"the label map is {label.shape[1]}x{label.shape[0]} but its image is {image.shape[2]}x{image.shape[1]}"
            )
        height, width = label.shape
        if self.mode != "none":
            scale = _uniform(generator, *self.scale_range)
            if self.mode == "resize-crop":
                factor = min(self.crop_size) * scale / min(height, width)
            else:  # lsj: fit inside the scaled crop size
                factor = min(self.crop_size[0] * scale / height, self.crop_size[1] * scale / width)
            size = (max(1, round(height * factor)), max(1, round(width * factor)))
            image, label = resize(image, label, size)
            image, label = random_crop(image, label, self.crop_size, generator)
        if self.flip_prob > 0 and torch.rand((), generator=generator).item() < self.flip_prob:
            image, label = hflip(image, label)
        if self.color_jitter > 0:
            image = color_jitter(image, self.color_jitter, generator)
        if self.mode == "none":
            return image, label, torch.ones(label.shape, dtype=torch.bool)
        return pad(image, label, self.crop_size, self.ignore_index)
