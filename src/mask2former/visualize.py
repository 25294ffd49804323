"""Pictures of segmentations: overlays with stable colours, contours and class names; COCO panoptic PNG encoding."""

from __future__ import annotations

import colorsys
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import distance_transform_edt

_GOLDEN_RATIO = 0.618033988749895


def color_for(index: int) -> tuple[int, int, int]:
    """A stable, well-separated RGB colour for a class or instance index (hues spaced by the golden ratio)."""
    hue = (index * _GOLDEN_RATIO + 0.1) % 1.0
    saturation = 0.65 + 0.25 * ((index * 7) % 3) / 2
    value = 0.95 - 0.2 * ((index * 5) % 2)
    red, green, blue = colorsys.hsv_to_rgb(hue, saturation, value)
    return int(red * 255), int(green * 255), int(blue * 255)


def id_to_rgb(segmentation: np.ndarray) -> np.ndarray:
    """COCO panoptic PNG encoding: segment id = R + 256 * G + 256**2 * B. (H, W) int -> (H, W, 3) uint8."""
    ids = np.asarray(segmentation).astype(np.int64).clip(min=0)
    return np.stack([ids % 256, ids // 256 % 256, ids // 256**2 % 256], axis=-1).astype(np.uint8)


def rgb_to_id(rgb: np.ndarray) -> np.ndarray:
    """Inverse of :func:`id_to_rgb`: (H, W, 3) uint8 -> (H, W) int64."""
    rgb = np.asarray(rgb).astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]


def _boundaries(segmentation: np.ndarray) -> np.ndarray:
    """(H, W) bool: pixels whose right or lower neighbour belongs to another segment (a 1-2 pixel contour)."""
    edges = np.zeros(segmentation.shape, dtype=bool)
    horizontal = segmentation[:, 1:] != segmentation[:, :-1]
    vertical = segmentation[1:, :] != segmentation[:-1, :]
    edges[:, 1:] |= horizontal
    edges[:, :-1] |= horizontal
    edges[1:, :] |= vertical
    edges[:-1, :] |= vertical
    return edges


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_overlay(
    image: Image.Image | np.ndarray,
    segmentation: np.ndarray,
    segments: Sequence[dict],
    *,
    alpha: float = 0.55,
    color_key: str = "id",
) -> Image.Image:
    """Blend segment colours onto an image, outline each segment and write its name at its centre.

    Args:
        image: the original image (PIL or (H, W, 3) uint8).
        segmentation: (H, W) int map of segment ids; pixels whose id is not in ``segments`` stay as they are.
        segments: one dict per segment with ``id``, ``label`` (class name) and optionally ``score``.
        alpha: opacity of the colours.
        color_key: ``"id"`` colours each segment apart (instances, panoptic), ``"label_id"`` colours by class.

    Returns:
        An RGB PIL image of the image's size.
    """
    base = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.uint8)
    if base.shape[:2] != segmentation.shape:
        raise ValueError(f"segmentation has shape {segmentation.shape}, the image {base.shape[:2]}")
    segmentation = np.asarray(segmentation)
    ids = np.array([segment["id"] for segment in segments], dtype=np.int64)
    colors = np.array([color_for(int(segment[color_key])) for segment in segments], dtype=np.float32).reshape(-1, 3)
    # Map each pixel's segment id to its row in `segments` (or -1) through a lookup over the sorted ids.
    rows = np.full(segmentation.shape, -1, dtype=np.int64)
    if len(ids):
        order = np.argsort(ids)
        position = np.searchsorted(ids[order], segmentation).clip(0, len(ids) - 1)
        rows = np.where(ids[order][position] == segmentation, order[position], -1)

    blended = base.astype(np.float32)
    covered = rows >= 0
    blended[covered] = (1 - alpha) * blended[covered] + alpha * colors[rows[covered]]
    labelled = np.where(covered, segmentation, np.iinfo(np.int64).min)
    edges = _boundaries(labelled) & covered
    blended[edges] = 0.5 * colors[rows[edges]]  # darker outline in the segment's colour
    picture = Image.fromarray(blended.clip(0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(picture)
    height, width = segmentation.shape
    font = _font(max(10, min(height, width) // 30))
    step = max(1, min(height, width) // 160)  # label placement works on a subsampled grid: fast on large images
    for row, segment in enumerate(segments):
        region = rows[::step, ::step] == row
        if not region.any():
            continue
        text = str(segment.get("label", segment.get("label_id", "")))
        if segment.get("score") is not None:
            text += f" {segment['score']:.2f}"
        # Put the name at the segment's point farthest from its border, so it sits well inside any shape.
        depth = distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
        y, x = np.unravel_index(np.argmax(depth), depth.shape)
        y, x = y * step, x * step
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        x = int(np.clip(x - (right - left) / 2, 0, max(width - (right - left), 0)))
        y = int(np.clip(y - (bottom - top) / 2, 0, max(height - (bottom - top), 0)))
        draw.rectangle((x - 2, y - 1, x + right - left + 2, y + bottom - top + 3), fill=(0, 0, 0))
        draw.text((x - left, y - top + 1), text, fill=(255, 255, 255), font=font)
    return picture
