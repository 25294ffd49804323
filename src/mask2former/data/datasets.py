"""Dataset readers for the standard layouts: COCO panoptic, COCO instances, ADE20K-style folders, Cityscapes.

Every reader is a ``torch.utils.data.Dataset`` that reads one image at a time from disk (use
``DataLoader(dataset, collate_fn=list, num_workers=...)``) and yields a dict:

- ``image``: (H, W, 3) uint8 array; ``image_id``; ``file_name``;
- ``segmentation_map``: (H, W) int32. Semantic readers: the contiguous class id per pixel. Panoptic and instance
  readers: a segment id per pixel, with ``instance_id_to_semantic_id`` giving each segment's contiguous class id.
  Void, crowd and ignored pixels are ``IGNORE_INDEX`` (255) everywhere, and no segment uses that id, so the item
  goes straight into the image processor with ``ignore_index=255``;
- ``segments_info`` (panoptic, instance): ``id``, ``category_id`` (contiguous), ``iscrowd``, ``area``, ``bbox``.

``dataset.categories`` lists the classes in contiguous order: ``id`` (0..K-1), ``name``, ``isthing``, ``color``
and, for COCO, ``dataset_id`` (the id used in the annotation files). Category lists of datasets whose annotation
files carry none (ADE20K, Cityscapes) are JSON files in ``mask2former/data/categories``.
A malformed file raises an error that names its path and the reason.
"""

from __future__ import annotations

import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..visualize import color_for, rgb_to_id

IGNORE_INDEX = 255
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def load_categories(name: str) -> dict[str, Any]:
    """A packaged category file (``"ade20k"``, ``"cityscapes"``) or a JSON file path."""
    if os.path.isfile(name):
        with open(name, encoding="utf-8") as handle:
            return json.load(handle)
    try:
        text = resources.files("mask2former.data").joinpath(f"categories/{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"no packaged category list {name!r} and no such file") from None
    return json.loads(text)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB."""
    return _read(path, "RGB")


def read_label_png(path: str | os.PathLike) -> np.ndarray:
    """A label PNG as stored: (H, W) for one channel, (H, W, 3) for RGB."""
    return _read(path, None)


def _read(path: str | os.PathLike, mode: str | None) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            if mode is not None:
                image = image.convert(mode)
            return np.asarray(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing file: {str(path)!r}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read {str(path)!r}: {error}") from None


def read_json(path: str | os.PathLike) -> dict:
    """A JSON file; a missing or malformed file raises an error naming it."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except FileNotFoundError:
        raise FileNotFoundError(f"missing annotation file: {str(path)!r}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None


def _segment_numbers(count: int) -> list[int]:
    """``count`` segment ids 0, 1, ... skipping ``IGNORE_INDEX``."""
    return [i if i < IGNORE_INDEX else i + 1 for i in range(count)]


def _check_size(image: np.ndarray, label: np.ndarray, image_path: Any, label_path: Any) -> None:
    if image.shape[:2] != label.shape[:2]:
        raise ValueError(
            f"size mismatch: image {str(image_path)!r} is {image.shape[1]}x{image.shape[0]} but its annotation "
            f"{str(label_path)!r} is {label.shape[1]}x{label.shape[0]}"
        )


def _contiguous_categories(raw: list[dict]) -> tuple[list[dict], dict[int, int]]:
    categories, to_contiguous = [], {}
    for index, category in enumerate(sorted(raw, key=lambda c: c["id"])):
        to_contiguous[int(category["id"])] = index
        categories.append(
            {
                "id": index,
                "dataset_id": int(category["id"]),
                "name": category.get("name", str(category["id"])),
                "isthing": int(category.get("isthing", 1)),
                "color": list(category.get("color", color_for(index))),
            }
        )
    return categories, to_contiguous


class COCOPanopticDataset(Dataset):
    """COCO panoptic: ``panoptic_*.json`` + a folder of segment-id PNGs (R + 256 G + 256^2 B) + the images.

    Args:
        json_file: the panoptic annotation JSON.
        image_root: folder of the images (``file_name`` of the JSON's ``images``).
        panoptic_root: folder of the PNGs (default: the JSON's path without ``.json``, as panopticapi does).
    """

    def __init__(
        self, json_file: str | os.PathLike, image_root: str | os.PathLike, panoptic_root: str | os.PathLike | None = None
    ) -> None:
        self.json_file = Path(json_file)
        document = read_json(self.json_file)
        self.image_root = Path(image_root)
        self.panoptic_root = Path(panoptic_root) if panoptic_root is not None else self.json_file.with_suffix("")
        self.categories, self.to_contiguous = _contiguous_categories(document["categories"])
        images = {image["id"]: image for image in document.get("images", [])}
        self.annotations = document["annotations"]
        if not self.annotations:
            raise ValueError(f"{str(self.json_file)!r} has no annotations: the dataset is empty")
        self.images = [images.get(a["image_id"], {"id": a["image_id"]}) for a in self.annotations]

    def __len__(self) -> int:
        return len(self.annotations)

    def image_file(self, index: int) -> Path:
        annotation, image = self.annotations[index], self.images[index]
        name = image.get("file_name") or Path(annotation["file_name"]).with_suffix(".jpg").name
        return self.image_root / name

    def __getitem__(self, index: int) -> dict[str, Any]:
        annotation = self.annotations[index]
        image_path = self.image_file(index)
        label_path = self.panoptic_root / annotation["file_name"]
        image = read_image(image_path)
        ids = rgb_to_id(read_label_png(label_path)[..., :3])
        _check_size(image, ids, image_path, label_path)
        known = {int(s["id"]): s for s in annotation["segments_info"]}
        present = set(np.unique(ids).tolist()) - {0}
        if present - set(known):
            raise ValueError(f"{str(label_path)!r} has segment ids {sorted(present - set(known))[:5]} not in the JSON")
        segmentation = np.full(ids.shape, IGNORE_INDEX, dtype=np.int32)
        mapping, segments = {}, []
        kept = [s for s in annotation["segments_info"] if not s.get("iscrowd", 0) and int(s["id"]) in present]
        for number, segment in zip(_segment_numbers(len(kept)), kept):
            category = int(segment["category_id"])
            if category not in self.to_contiguous:
                raise ValueError(f"{str(self.json_file)!r}: segment {segment['id']} has unknown category_id {category}")
            region = ids == int(segment["id"])
            segmentation[region] = number
            mapping[number] = self.to_contiguous[category]
            segments.append(
                {
                    "id": number,
                    "category_id": self.to_contiguous[category],
                    "iscrowd": 0,
                    "area": int(region.sum()),
                    "bbox": segment.get("bbox"),
                }
            )
        return {
            "image": image,
            "image_id": annotation["image_id"],
            "file_name": str(image_path),
            "segmentation_map": segmentation,
            "instance_id_to_semantic_id": mapping,
            "segments_info": segments,
        }


class COCOInstanceDataset(Dataset):
    """COCO instances: ``instances_*.json`` (polygons, RLE, crowd) + the images, through pycocotools.

    Overlapping instances are painted largest first, so a smaller object in front stays visible; crowd regions are
    ``IGNORE_INDEX``. ``annotations`` of an item keeps the raw ground truth for mask AP.
    """

    def __init__(self, json_file: str | os.PathLike, image_root: str | os.PathLike) -> None:
        import contextlib
        import io

        from pycocotools.coco import COCO

        self.json_file = Path(json_file)
        document = read_json(self.json_file)
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco = COCO()
            self.coco.dataset = document
            self.coco.createIndex()
        self.image_root = Path(image_root)
        self.categories, self.to_contiguous = _contiguous_categories(document["categories"])
        self.image_ids = sorted(self.coco.imgs)
        if not self.image_ids:
            raise ValueError(f"{str(self.json_file)!r} has no images: the dataset is empty")

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        info = self.coco.imgs[self.image_ids[index]]
        image_path = self.image_root / info["file_name"]
        image = read_image(image_path)
        height, width = image.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise ValueError(
                f"size mismatch: {str(image_path)!r} is {width}x{height}, {str(self.json_file)!r} says "
                f"{info.get('width')}x{info.get('height')}"
            )
        annotations = self.coco.imgToAnns.get(info["id"], [])
        segmentation = np.full((height, width), IGNORE_INDEX, dtype=np.int32)
        crowd = np.zeros((height, width), dtype=bool)
        things = [a for a in annotations if not a.get("iscrowd", 0)]
        numbers = dict(zip((id(a) for a in things), _segment_numbers(len(things))))
        mapping, segments = {}, []
        for annotation in sorted(annotations, key=lambda a: -float(a.get("area", 0))):
            category = int(annotation["category_id"])
            if category not in self.to_contiguous:
                raise ValueError(f"{str(self.json_file)!r}: annotation {annotation.get('id')} has unknown category_id {category}")
            mask = self.coco.annToMask(annotation).astype(bool)
            if annotation.get("iscrowd", 0):
                crowd |= mask
                continue
            number = numbers[id(annotation)]
            segmentation[mask] = number
            mapping[number] = self.to_contiguous[category]
            segments.append(
                {"id": number, "category_id": self.to_contiguous[category], "iscrowd": 0,
                 "area": int(mask.sum()), "bbox": annotation.get("bbox")}
            )
        segmentation[crowd] = IGNORE_INDEX
        return {
            "image": image,
            "image_id": info["id"],
            "file_name": str(image_path),
            "segmentation_map": segmentation,
            "instance_id_to_semantic_id": mapping,
            "segments_info": sorted(segments, key=lambda s: s["id"]),
            "annotations": annotations,
        }


class SemanticFolderDataset(Dataset):
    """ADE20K layout: ``image_dir/NAME.jpg`` with ``annotation_dir/NAME.png`` of class values.

    Args:
        image_dir, annotation_dir: the two folders (matched by file stem).
        categories: a packaged category list name or a JSON file (default "ade20k").
        reduce_labels: value 0 ("other") becomes ``IGNORE_INDEX`` and k becomes k - 1 (ADE20K's convention).
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_dir: str | os.PathLike,
        categories: str = "ade20k",
        reduce_labels: bool = True,
    ) -> None:
        self.image_dir, self.annotation_dir = Path(image_dir), Path(annotation_dir)
        for folder, what in ((self.image_dir, "image_dir"), (self.annotation_dir, "annotation_dir")):
            if not folder.is_dir():
                raise FileNotFoundError(f"{what} {str(folder)!r} is not a folder")
        self.categories = [
            {"id": c["id"], "name": c["name"], "isthing": c.get("isthing", 0), "color": c.get("color", color_for(c["id"]))}
            for c in load_categories(categories)["categories"]
        ]
        self.reduce_labels = reduce_labels
        self.images = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not self.images:
            raise ValueError(f"no images in {str(self.image_dir)!r}: the dataset is empty")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        label_path = self.annotation_dir / f"{image_path.stem}.png"
        image = read_image(image_path)
        label = read_label_png(label_path)
        if label.ndim != 2:
            raise ValueError(f"{str(label_path)!r} must be a single-channel PNG of class values, got shape {label.shape}")
        _check_size(image, label, image_path, label_path)
        label = label.astype(np.int32)
        if self.reduce_labels:
            label = np.where(label == 0, IGNORE_INDEX, label - 1)
        unknown = set(np.unique(label).tolist()) - set(range(len(self.categories))) - {IGNORE_INDEX}
        if unknown:
            raise ValueError(f"{str(label_path)!r} has class values {sorted(unknown)[:5]} outside the category list")
        return {"image": image, "image_id": image_path.stem, "file_name": str(image_path), "segmentation_map": label}


class CityscapesSemanticDataset(Dataset):
    """Cityscapes ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``,
    label ids mapped to the 19 train ids (others ``IGNORE_INDEX``)."""

    def __init__(self, root: str | os.PathLike, split: str = "val") -> None:
        self.root = Path(root)
        table = load_categories("cityscapes")
        self.categories = [dict(c) for c in table["categories"]]
        self.lookup = np.full(256, IGNORE_INDEX, dtype=np.int32)
        for label in table["labels"]:
            self.lookup[label["id"]] = label["train_id"]
        image_root = self.root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise FileNotFoundError(f"no folder {str(image_root)!r}: expected ROOT/leftImg8bit/{split}/CITY/*.png")
        self.images = sorted(image_root.glob("*/*_leftImg8bit.png"))
        if not self.images:
            raise ValueError(f"no *_leftImg8bit.png images under {str(image_root)!r}: the dataset is empty")
        self.split = split

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        stem = image_path.name.removesuffix("_leftImg8bit.png")
        label_path = self.root / "gtFine" / self.split / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
        image = read_image(image_path)
        label = read_label_png(label_path)
        _check_size(image, label, image_path, label_path)
        return {"image": image, "image_id": stem, "file_name": str(image_path), "segmentation_map": self.lookup[label]}
