"""Dataset readers for the standard layouts: COCO panoptic, COCO instances, ADE20K-style folders, Cityscapes.

Every reader is a ``torch.utils.data.Dataset`` that reads one image at a time from disk (use
``DataLoader(dataset, collate_fn=list, num_workers=...)``) and yields a dict:

- ``image``: (H, W, 3) uint8 array; ``image_id``; ``file_name``;
- ``segmentation_map``: (H, W) int32. Semantic readers: the contiguous class id per pixel. Panoptic and instance
  readers: a segment id per pixel, with ``instance_id_to_semantic_id`` giving each segment's contiguous class id.
  Void, crowd and ignored pixels are ``IGNORE_INDEX`` (255) everywhere, and no segment uses that id, so the item
  goes straight into the image processor with ``ignore_index=255``;
- ``segments_info`` (panoptic, instance): ``id``, ``category_id`` (contiguous), ``iscrowd``, ``area``, ``bbox``;
- COCO panoptic only, for PQ as panopticapi computes it: ``panoptic_ids`` (H, W) int64, the PNG's segment ids as
  stored (0 = void, crowd segments included), and ``panoptic_segments_info``, the JSON's ``segments_info`` as stored
  (dataset category ids, JSON areas, ``iscrowd``).

``dataset.categories`` lists the classes in contiguous order: ``id`` (0..K-1), ``name``, ``isthing``, ``color``
and, for COCO, ``dataset_id`` (the id used in the annotation files). Category lists of datasets whose annotation
files carry none (ADE20K, Cityscapes), and the COCO lists (``coco_panoptic``: 133 classes, ``coco_instance``: 80), are
JSON files in ``mask2former/data/categories`` (:func:`load_categories`).

Bad input: a missing or unreadable file, a PNG with segment ids its JSON does not list, an unknown category id, or an
image whose annotation has another size raises an error naming the path and the reason (``FileNotFoundError`` for a
missing file, ``ValueError`` otherwise). With ``strict=False`` such an item is returned as ``{"image_id",
"file_name", "error"}`` (no ``image``) so that a ``DataLoader`` keeps going and the caller counts it (see
:func:`is_skipped`). An empty dataset is an error in both modes, when the reader is built.
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
    """A packaged category list or a JSON file path: ``{"name", "categories": [{"id", "name", ...}], ...}``.

    Packaged: ``"ade20k"`` (150, contiguous ids), ``"cityscapes"`` (19 train ids, plus ``labels``: label id -> train
    id), ``"coco_panoptic"`` (133: ``id``, ``name``, ``isthing``, ``color``, ``supercategory``, exactly panopticapi's
    ``panoptic_coco_categories.json``), ``"coco_instance"`` (80 things, dataset ids 1..90 with gaps), and the others
    that :func:`packaged_categories` lists.
    """
    if os.path.isfile(name):
        with open(name, encoding="utf-8") as handle:
            return json.load(handle)
    try:
        text = resources.files("mask2former.data").joinpath(f"categories/{name}.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no packaged category list {name!r} and no such file; packaged: {', '.join(packaged_categories())}"
        ) from None
    return json.loads(text)


def packaged_categories() -> list[str]:
    """Names of the category lists shipped in ``mask2former/data/categories``."""
    folder = resources.files("mask2former.data").joinpath("categories")
    return sorted(entry.name.removesuffix(".json") for entry in folder.iterdir() if entry.name.endswith(".json"))


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


def is_skipped(item: dict[str, Any]) -> bool:
    """True for the placeholder a ``strict=False`` reader returns instead of a malformed item."""
    return "error" in item


class _Reader(Dataset):
    """Shared by the readers: ``strict`` decides whether a malformed item raises or comes back as a placeholder."""

    strict: bool = True

    def __getitem__(self, index: int) -> dict[str, Any]:
        try:
            return self.load(index)
        except (FileNotFoundError, ValueError) as error:
            if self.strict:
                raise
            image_id, file_name = self.describe(index)
            return {"image_id": image_id, "file_name": str(file_name), "error": str(error)}

    def load(self, index: int) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self, index: int) -> tuple[Any, Any]:
        """(image_id, image path) of an item, without reading it."""
        raise NotImplementedError


class COCOPanopticDataset(_Reader):
    """COCO panoptic: ``panoptic_*.json`` + a folder of segment-id PNGs (R + 256 G + 256^2 B) + the images.

    Args:
        json_file: the panoptic annotation JSON.
        image_root: folder of the images (``file_name`` of the JSON's ``images``).
        panoptic_root: folder of the PNGs (default: the JSON's path without ``.json``, as panopticapi does).
        strict: raise on a malformed item (default) or return it as a placeholder with its ``error``.
    """

    def __init__(
        self,
        json_file: str | os.PathLike,
        image_root: str | os.PathLike,
        panoptic_root: str | os.PathLike | None = None,
        *,
        strict: bool = True,
    ) -> None:
        self.json_file = Path(json_file)
        document = read_json(self.json_file)
        for key in ("categories", "annotations"):
            if key not in document:
                raise ValueError(f"{str(self.json_file)!r} has no {key!r}: not a COCO panoptic annotation file")
        self.image_root = Path(image_root)
        self.panoptic_root = Path(panoptic_root) if panoptic_root is not None else self.json_file.with_suffix("")
        self.categories, self.to_contiguous = _contiguous_categories(document["categories"])
        images = {image["id"]: image for image in document.get("images", [])}
        self.annotations = document["annotations"]
        if not self.annotations:
            raise ValueError(f"{str(self.json_file)!r} has no annotations: the dataset is empty")
        self.images = [images.get(a.get("image_id"), {"id": a.get("image_id")}) for a in self.annotations]
        self.strict = strict

    def __len__(self) -> int:
        return len(self.annotations)

    def image_file(self, index: int) -> Path:
        annotation, image = self.annotations[index], self.images[index]
        name = image.get("file_name") or Path(annotation.get("file_name", f"{image['id']}")).with_suffix(".jpg").name
        return self.image_root / name

    def describe(self, index: int) -> tuple[Any, Path]:
        return self.annotations[index].get("image_id"), self.image_file(index)

    def load(self, index: int) -> dict[str, Any]:
        annotation = self.annotations[index]
        for key in ("image_id", "file_name", "segments_info"):
            if key not in annotation:
                raise ValueError(f"{str(self.json_file)!r}: annotation {index} has no {key!r}")
        image_path = self.image_file(index)
        label_path = self.panoptic_root / annotation["file_name"]
        segments_info = annotation["segments_info"]
        for segment in segments_info:
            if int(segment["category_id"]) not in self.to_contiguous:
                raise ValueError(
                    f"{str(label_path)!r}: segment {segment['id']} has unknown category_id {segment['category_id']} "
                    f"(not in the categories of {str(self.json_file)!r})"
                )
        image = read_image(image_path)
        ids = rgb_to_id(read_label_png(label_path)[..., :3])
        _check_size(image, ids, image_path, label_path)

        # One pass over the map: the ids present and, per pixel, the index of its id among them.
        present, inverse = np.unique(ids, return_inverse=True)
        known = {int(s["id"]) for s in segments_info}
        unknown = [label for label in present.tolist() if label != 0 and label not in known]
        if unknown:
            raise ValueError(f"{str(label_path)!r} has segment ids {unknown[:5]} that its JSON entry does not list")
        areas = np.bincount(inverse.reshape(-1), minlength=len(present))
        position = {label: i for i, label in enumerate(present.tolist())}
        # Crowd and void pixels are IGNORE_INDEX for the processor; crowd stays in panoptic_segments_info for PQ.
        kept = [s for s in segments_info if not s.get("iscrowd", 0) and int(s["id"]) in position]
        table = np.full(len(present), IGNORE_INDEX, dtype=np.int32)
        mapping, segments = {}, []
        for number, segment in zip(_segment_numbers(len(kept)), kept):
            category = self.to_contiguous[int(segment["category_id"])]
            table[position[int(segment["id"])]] = number
            mapping[number] = category
            segments.append(
                {
                    "id": number,
                    "category_id": category,
                    "iscrowd": 0,
                    "area": int(areas[position[int(segment["id"])]]),
                    "bbox": segment.get("bbox"),
                }
            )
        return {
            "image": image,
            "image_id": annotation["image_id"],
            "file_name": str(image_path),
            "segmentation_map": table[inverse].reshape(ids.shape),
            "instance_id_to_semantic_id": mapping,
            "segments_info": segments,
            "panoptic_ids": ids,
            "panoptic_segments_info": segments_info,
        }


class COCOInstanceDataset(_Reader):
    """COCO instances: ``instances_*.json`` (polygons, RLE, crowd) + the images, through pycocotools.

    Overlapping instances are painted largest first, so a smaller object in front stays visible; crowd regions are
    ``IGNORE_INDEX``. ``annotations`` of an item keeps the raw ground truth for mask AP.

    Args:
        json_file: the instances annotation JSON.
        image_root: folder of the images.
        strict: raise on a malformed item (default) or return it as a placeholder with its ``error``.
    """

    def __init__(self, json_file: str | os.PathLike, image_root: str | os.PathLike, *, strict: bool = True) -> None:
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
        self.strict = strict

    def __len__(self) -> int:
        return len(self.image_ids)

    def describe(self, index: int) -> tuple[Any, Path]:
        info = self.coco.imgs[self.image_ids[index]]
        return info["id"], self.image_root / str(info.get("file_name", info["id"]))

    def load(self, index: int) -> dict[str, Any]:
        info = self.coco.imgs[self.image_ids[index]]
        if "file_name" not in info:
            raise ValueError(f"{str(self.json_file)!r}: image {info['id']} has no 'file_name'")
        image_path = self.image_root / info["file_name"]
        annotations = self.coco.imgToAnns.get(info["id"], [])
        for annotation in annotations:
            if int(annotation["category_id"]) not in self.to_contiguous:
                raise ValueError(
                    f"{str(self.json_file)!r}: annotation {annotation.get('id')} of {str(image_path)!r} has unknown "
                    f"category_id {annotation['category_id']}"
                )
        image = read_image(image_path)
        height, width = image.shape[:2]
        if (info.get("height", height), info.get("width", width)) != (height, width):
            raise ValueError(
                f"size mismatch: {str(image_path)!r} is {width}x{height}, {str(self.json_file)!r} says "
                f"{info.get('width')}x{info.get('height')}"
            )
        segmentation = np.full((height, width), IGNORE_INDEX, dtype=np.int32)
        crowd = np.zeros((height, width), dtype=bool)
        things = [a for a in annotations if not a.get("iscrowd", 0)]
        numbers = dict(zip((id(a) for a in things), _segment_numbers(len(things))))
        mapping, segments = {}, []
        for annotation in sorted(annotations, key=lambda a: -float(a.get("area", 0))):
            category = int(annotation["category_id"])
            try:
                mask = self.coco.annToMask(annotation).astype(bool)
            except (KeyError, TypeError, IndexError, ValueError) as error:
                raise ValueError(
                    f"{str(self.json_file)!r}: annotation {annotation.get('id')} of {str(image_path)!r} has an "
                    f"unreadable segmentation: {error!r}"
                ) from None
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


class SemanticFolderDataset(_Reader):
    """ADE20K layout: ``image_dir/NAME.jpg`` with ``annotation_dir/NAME.png`` of class values.

    Args:
        image_dir, annotation_dir: the two folders (matched by file stem).
        categories: a packaged category list name or a JSON file (default "ade20k").
        reduce_labels: value 0 ("other") becomes ``IGNORE_INDEX`` and k becomes k - 1 (ADE20K's convention).
        strict: raise on a malformed item (default) or return it as a placeholder with its ``error``.
    """

    def __init__(
        self,
        image_dir: str | os.PathLike,
        annotation_dir: str | os.PathLike,
        categories: str = "ade20k",
        reduce_labels: bool = True,
        *,
        strict: bool = True,
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
        self.strict = strict

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> tuple[Any, Path]:
        return self.images[index].stem, self.images[index]

    def load(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        label_path = self.annotation_dir / f"{image_path.stem}.png"
        image = read_image(image_path)
        label = read_label_png(label_path)
        if label.ndim != 2:
            raise ValueError(f"{str(label_path)!r} must be a single-channel PNG of class values, got shape {label.shape}")
        _check_size(image, label, image_path, label_path)
        if label.dtype.kind not in "ui":
            label = label.astype(np.int64)
        if label.size and label.min() < 0:
            raise ValueError(f"{str(label_path)!r} has negative class values")
        # A lookup table maps stored values to class ids (IGNORE_INDEX for 0 with reduce_labels, and for 255).
        values = np.bincount(label.reshape(-1), minlength=1)
        num_classes = len(self.categories)
        table = np.arange(max(len(values), IGNORE_INDEX + 1), dtype=np.int32)
        if self.reduce_labels:
            table[0], table[1:] = IGNORE_INDEX, table[1:] - 1
            table[IGNORE_INDEX] = IGNORE_INDEX  # 255 stays the ignore label rather than becoming 254
        present = np.flatnonzero(values)
        unknown = [int(v) for v in present if table[v] != IGNORE_INDEX and table[v] >= num_classes]
        if unknown:
            raise ValueError(
                f"{str(label_path)!r} has class values {unknown[:5]} outside the category list ({num_classes} classes)"
            )
        return {"image": image, "image_id": image_path.stem, "file_name": str(image_path), "segmentation_map": table[label]}


class CityscapesSemanticDataset(_Reader):
    """Cityscapes ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``,
    label ids mapped to the 19 train ids (others ``IGNORE_INDEX``).

    Args:
        root: the Cityscapes folder (holding ``leftImg8bit`` and ``gtFine``).
        split: "train", "val" or "test".
        strict: raise on a malformed item (default) or return it as a placeholder with its ``error``.
    """

    def __init__(self, root: str | os.PathLike, split: str = "val", *, strict: bool = True) -> None:
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
        self.strict = strict

    def __len__(self) -> int:
        return len(self.images)

    def describe(self, index: int) -> tuple[Any, Path]:
        return self.images[index].name.removesuffix("_leftImg8bit.png"), self.images[index]

    def load(self, index: int) -> dict[str, Any]:
        image_path = self.images[index]
        stem = image_path.name.removesuffix("_leftImg8bit.png")
        label_path = self.root / "gtFine" / self.split / image_path.parent.name / f"{stem}_gtFine_labelIds.png"
        image = read_image(image_path)
        label = read_label_png(label_path)
        if label.ndim != 2 or label.dtype != np.uint8:
            raise ValueError(
                f"{str(label_path)!r} must be an 8-bit single-channel PNG of label ids, got {label.dtype} {label.shape}"
            )
        _check_size(image, label, image_path, label_path)
        return {"image": image, "image_id": stem, "file_name": str(image_path), "segmentation_map": self.lookup[label]}
