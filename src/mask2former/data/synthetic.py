"""Synthetic scenes for all three tasks, written in the COCO panoptic format.

Each image has "stuff" regions (a sky above a tilted horizon; ground and/or water below) with textures, and 0 to
``max_objects`` "thing" objects of five shape classes, with varied size, colour and rotation, occluding each other
and partly outside the frame. The panoptic ground truth (PNG of segment ids, R + 256 G + 256^2 B, and a JSON with
``segments_info``) also gives instance masks (the things) and semantic maps (the category of every pixel).
Everything is deterministic for a seed: image i is drawn from ``numpy.random.default_rng([seed, i])``.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..visualize import id_to_rgb

CATEGORIES = [
    {"id": 1, "name": "sky", "isthing": 0, "color": [120, 180, 235]},
    {"id": 2, "name": "ground", "isthing": 0, "color": [110, 150, 70]},
    {"id": 3, "name": "water", "isthing": 0, "color": [40, 90, 160]},
    {"id": 4, "name": "disc", "isthing": 1, "color": [220, 60, 50]},
    {"id": 5, "name": "square", "isthing": 1, "color": [240, 200, 40]},
    {"id": 6, "name": "triangle", "isthing": 1, "color": [60, 60, 200]},
    {"id": 7, "name": "star", "isthing": 1, "color": [230, 120, 220]},
    {"id": 8, "name": "ring", "isthing": 1, "color": [250, 140, 30]},
]
THING_IDS = [c["id"] for c in CATEGORIES if c["isthing"]]


@dataclass
class Scene:
    """One generated image and its panoptic ground truth.

    Attributes:
        image: (H, W, 3) uint8.
        segment_ids: (H, W) int64, 0 nowhere (every pixel belongs to a segment).
        segments: ``segments_info`` entries (``id``, ``category_id``, ``area``, ``bbox``, ``iscrowd``).
    """

    image: np.ndarray
    segment_ids: np.ndarray
    segments: list[dict]


def _texture(rng: np.random.Generator, height: int, width: int, color, kind: str) -> np.ndarray:
    """(H, W, 3) float texture around ``color``: noise plus a gradient (sky), waves (water) or speckles (ground)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.asarray(color, np.float32) + rng.normal(0, 12, 3)
    noise = rng.normal(0, 6, (height, width, 1)).astype(np.float32)
    if kind == "sky":
        pattern = (ys / height * 40 - 20)[..., None]
    elif kind == "water":
        pattern = (12 * np.sin(ys / rng.uniform(3, 7) + np.sin(xs / rng.uniform(8, 20))))[..., None]
    else:
        pattern = rng.normal(0, 14, (height, width, 1)).astype(np.float32)
    return base + pattern + noise


def _shape_polygon(category_id: int, cx: float, cy: float, size: float, angle: float) -> list[tuple[float, float]]:
    """Outline of a thing: disc and ring as 40-gons, square, triangle, five-pointed star; rotated by ``angle``."""
    if category_id in (4, 8):
        points = [(math.cos(2 * math.pi * k / 40), math.sin(2 * math.pi * k / 40)) for k in range(40)]
    elif category_id == 5:
        points = [(-0.8, -0.8), (0.8, -0.8), (0.8, 0.8), (-0.8, 0.8)]
    elif category_id == 6:
        points = [(math.cos(a), math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    else:
        points = [
            ((1.0 if k % 2 == 0 else 0.45) * math.cos(math.pi * k / 5 - math.pi / 2),
             (1.0 if k % 2 == 0 else 0.45) * math.sin(math.pi * k / 5 - math.pi / 2))
            for k in range(10)
        ]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + size * (x * cos - y * sin), cy + size * (x * sin + y * cos)) for x, y in points]


def _polygon_mask(points, height: int, width: int) -> np.ndarray:
    canvas = Image.new("L", (width, height), 0)
    ImageDraw.Draw(canvas).polygon(points, fill=1)
    return np.asarray(canvas, dtype=bool)


def _bbox(mask: np.ndarray) -> list[int]:
    ys, xs = np.nonzero(mask)
    return [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]


def generate_scene(
    rng: np.random.Generator, height: int = 256, width: int = 256, max_objects: int = 5, min_area: int = 30
) -> Scene:
    """Draw one scene (see the module docstring)."""
    colors = {c["id"]: c["color"] for c in CATEGORIES}
    ys, xs = np.mgrid[0:height, 0:width]
    horizon = rng.uniform(0.25, 0.6) * height + rng.uniform(-0.2, 0.2) * (xs - width / 2)
    category = np.where(ys < horizon, 1, 2)
    layout = rng.integers(3)  # 0: ground only, 1: water only, 2: water on one side
    if layout == 1:
        category[category == 2] = 3
    elif layout == 2:
        split = rng.uniform(0.3, 0.7) * width
        water = xs < split if rng.random() < 0.5 else xs >= split
        category[(category == 2) & water] = 3
    image = np.zeros((height, width, 3), np.float32)
    for stuff, kind in ((1, "sky"), (2, "ground"), (3, "water")):
        region = category == stuff
        if region.any():
            image[region] = _texture(rng, height, width, colors[stuff], kind)[region]

    # Things, painted back to front; a later one occludes an earlier one.
    objects = []
    for _ in range(int(rng.integers(0, max_objects + 1))):
        category_id = int(rng.choice(THING_IDS))
        size = rng.uniform(0.06, 0.22) * min(height, width)
        cx, cy = rng.uniform(-0.05, 1.05) * width, rng.uniform(0.1, 1.05) * height
        mask = _polygon_mask(_shape_polygon(category_id, cx, cy, size, rng.uniform(0, 2 * math.pi)), height, width)
        if category_id == 8:  # a ring: a disc with a hole
            mask &= ~_polygon_mask(_shape_polygon(4, cx, cy, size * 0.5, 0.0), height, width)
        hue_shift = rng.normal(0, 25, 3)
        color = np.clip(np.asarray(colors[category_id], np.float32) + hue_shift, 0, 255)
        shade = (1 - 0.25 * (ys - cy) / max(size, 1))[..., None].clip(0.6, 1.3)  # light from above
        objects.append((category_id, mask, color * shade))

    owner = np.full((height, width), -1)
    for index, (_, mask, _) in enumerate(objects):
        owner[mask] = index
    kept = [i for i in range(len(objects)) if (owner == i).sum() >= min_area]
    segment_ids = np.zeros((height, width), np.int64)
    segments = []
    next_id = 1
    for stuff in (1, 2, 3):
        region = (category == stuff) & ~np.isin(owner, kept)
        if region.any():
            segment_ids[region] = next_id
            segments.append({"id": next_id, "category_id": stuff, "area": int(region.sum()), "bbox": _bbox(region), "iscrowd": 0})
            next_id += 1
    for index in kept:
        category_id, _, color = objects[index]
        region = owner == index
        image[region] = color[region] + rng.normal(0, 4, (int(region.sum()), 3))
        segment_ids[region] = next_id
        segments.append({"id": next_id, "category_id": category_id, "area": int(region.sum()), "bbox": _bbox(region), "iscrowd": 0})
        next_id += 1
    return Scene(np.clip(image, 0, 255).astype(np.uint8), segment_ids, segments)


def write_synthetic_dataset(
    out: str | os.PathLike,
    num_images: int,
    *,
    seed: int = 0,
    height: int = 256,
    width: int = 256,
    max_objects: int = 5,
    progress: bool = False,
) -> Path:
    """Write ``num_images`` scenes as a COCO panoptic dataset and return the JSON's path.

    Layout: ``out/images/NNNNNN.png``, ``out/panoptic/NNNNNN.png`` (segment ids as RGB) and ``out/panoptic.json``
    (``images``, ``annotations`` with ``segments_info``, ``categories`` with ``isthing`` and ``color``); the same
    ground truth as COCO instances (``out/instances.json``, the things as RLE) and as an ADE20K-style semantic
    folder (``out/semantic/NNNNNN.png`` with value = contiguous class + 1, 0 unused, and ``out/categories.json``).
    """
    from pycocotools import mask as mask_utils

    if num_images < 1:
        raise ValueError(f"num_images must be >= 1, got {num_images}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "panoptic").mkdir(parents=True, exist_ok=True)
    (out / "semantic").mkdir(parents=True, exist_ok=True)
    contiguous = {c["id"]: index for index, c in enumerate(CATEGORIES)}
    images, annotations, instances = [], [], []
    indices = range(num_images)
    if progress:
        from tqdm.auto import tqdm

        indices = tqdm(indices, unit="image", desc="make-synthetic")
    for index in indices:
        scene = generate_scene(np.random.default_rng([seed, index]), height, width, max_objects)
        name = f"{index:06d}.png"
        Image.fromarray(scene.image).save(out / "images" / name)
        Image.fromarray(id_to_rgb(scene.segment_ids)).save(out / "panoptic" / name)
        images.append({"id": index, "file_name": name, "height": height, "width": width})
        annotations.append({"image_id": index, "file_name": name, "segments_info": scene.segments})
        semantic = np.zeros((height, width), np.uint8)
        for segment in scene.segments:
            region = scene.segment_ids == segment["id"]
            semantic[region] = contiguous[segment["category_id"]] + 1
            if segment["category_id"] in THING_IDS:
                rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                instances.append(
                    {"id": len(instances) + 1, "image_id": index, "category_id": segment["category_id"],
                     "segmentation": rle, "area": segment["area"], "bbox": segment["bbox"], "iscrowd": 0}
                )
        Image.fromarray(semantic).save(out / "semantic" / name)
    _write_json(out / "instances.json", {"images": images, "annotations": instances, "categories": CATEGORIES})
    categories = [{"id": contiguous[c["id"]], "name": c["name"], "isthing": c["isthing"], "color": c["color"]} for c in CATEGORIES]
    _write_json(out / "categories.json", {"name": "synthetic", "categories": categories})
    path = out / "panoptic.json"
    _write_json(path, {"images": images, "annotations": annotations, "categories": CATEGORIES})
    return path


def _write_json(path: Path, document: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(document, handle)
