"""Panoptic quality (PQ = SQ x RQ), following panopticapi's ``pq_compute`` to the letter.

Conventions: segment id 0 is void; a ground-truth and a predicted segment of the same class match iff their IoU is
above 0.5, where the predicted segment's pixels on void are left out of the union; crowd ground truth is neither
matched nor counted as a miss; an unmatched prediction lying more than half on void or on a crowd region of its class
is not a false positive. PQ per class = sum of matched IoUs / (TP + FP/2 + FN/2); classes with no TP, FP or FN leave
the mean. Ground-truth areas come from the annotation JSON (as panopticapi reads them), predicted areas from the PNG.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.datasets import read_json, read_label_png
from ..visualize import rgb_to_id

VOID = 0
OFFSET = 256 * 256 * 256


@dataclass
class _ClassCounts:
    iou: float = 0.0
    tp: int = 0
    fp: int = 0
    fn: int = 0


class PanopticQuality:
    """Accumulate PQ statistics image by image (memory: one counter per class).

    Args:
        categories: ``{category_id: {"isthing": 0 or 1, "name": ...}}`` as in the panoptic JSON's categories.
    """

    def __init__(self, categories: Mapping[int, Mapping]) -> None:
        self.categories = {int(k): dict(v) for k, v in categories.items()}
        self.counts = {category: _ClassCounts() for category in self.categories}

    def update(
        self,
        gt_ids: np.ndarray,
        gt_segments: Sequence[Mapping],
        pred_ids: np.ndarray,
        pred_segments: Sequence[Mapping],
        image: str = "",
    ) -> None:
        """Add one image.

        Args:
            gt_ids, pred_ids: (H, W) segment-id maps (0 = void).
            gt_segments: the ground truth's ``segments_info`` (``id``, ``category_id``, ``area``, ``iscrowd``).
            pred_segments: the prediction's ``segments_info`` (``id``, ``category_id``).
            image: a name for error messages.
        """
        gt_ids = np.asarray(gt_ids).astype(np.uint64)
        pred_ids = np.asarray(pred_ids).astype(np.uint64)
        if gt_ids.shape != pred_ids.shape:
            raise ValueError(f"{image}: ground truth has shape {gt_ids.shape}, prediction {pred_ids.shape}")
        gt = {int(s["id"]): s for s in gt_segments}
        pred = {int(s["id"]): dict(s) for s in pred_segments}

        labels, areas = np.unique(pred_ids, return_counts=True)
        unseen = set(pred)
        for label, area in zip(labels.tolist(), areas.tolist()):
            if label not in pred:
                if label == VOID:
                    continue
                raise KeyError(f"{image}: segment {label} is in the prediction PNG but not in its segments_info")
            pred[label]["area"] = area
            unseen.discard(label)
            if pred[label]["category_id"] not in self.categories:
                raise KeyError(f"{image}: segment {label} has unknown category_id {pred[label]['category_id']}")
        if unseen:
            raise KeyError(f"{image}: segments {sorted(unseen)} are in segments_info but not in the prediction PNG")

        pairs, intersections = np.unique(gt_ids * OFFSET + pred_ids, return_counts=True)
        overlap = {(int(p // OFFSET), int(p % OFFSET)): int(n) for p, n in zip(pairs, intersections)}

        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in overlap.items():
            if gt_label not in gt or pred_label not in pred:
                continue
            if gt[gt_label].get("iscrowd", 0) == 1:
                continue
            if gt[gt_label]["category_id"] != pred[pred_label]["category_id"]:
                continue
            union = (
                pred[pred_label]["area"] + gt[gt_label]["area"] - intersection - overlap.get((VOID, pred_label), 0)
            )
            iou = intersection / union
            if iou > 0.5:
                counts = self.counts[gt[gt_label]["category_id"]]
                counts.tp += 1
                counts.iou += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)

        crowd_of_class = {}
        for gt_label, info in gt.items():
            if gt_label in gt_matched:
                continue
            if info.get("iscrowd", 0) == 1:
                crowd_of_class[info["category_id"]] = gt_label
                continue
            self.counts[info["category_id"]].fn += 1

        for pred_label, info in pred.items():
            if pred_label in pred_matched:
                continue
            ignored = overlap.get((VOID, pred_label), 0)
            if info["category_id"] in crowd_of_class:
                ignored += overlap.get((crowd_of_class[info["category_id"]], pred_label), 0)
            if ignored / info["area"] > 0.5:
                continue
            self.counts[info["category_id"]].fp += 1

    def average(self, isthing: bool | None = None) -> tuple[dict[str, float], dict[int, dict[str, float]]]:
        """Mean PQ/SQ/RQ over the classes of a kind (None: all) that occur, and the per-class values."""
        pq = sq = rq = 0.0
        n = 0
        per_class = {}
        for category, info in self.categories.items():
            if isthing is not None and (info.get("isthing", 0) == 1) != isthing:
                continue
            counts = self.counts[category]
            if counts.tp + counts.fp + counts.fn == 0:
                per_class[category] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            denominator = counts.tp + 0.5 * counts.fp + 0.5 * counts.fn
            class_pq = counts.iou / denominator
            class_sq = counts.iou / counts.tp if counts.tp else 0.0
            class_rq = counts.tp / denominator
            per_class[category] = {"pq": class_pq, "sq": class_sq, "rq": class_rq}
            pq, sq, rq = pq + class_pq, sq + class_sq, rq + class_rq
        if n == 0:
            return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}, per_class
        return {"pq": pq / n, "sq": sq / n, "rq": rq / n, "n": n}, per_class

    def compute(self) -> dict:
        """panopticapi's result: ``{"All", "Things", "Stuff": {"pq", "sq", "rq", "n"}, "per_class": {...}}``."""
        results: dict = {}
        for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
            results[name], per_class = self.average(isthing)
            if name == "All":
                results["per_class"] = per_class
        return results


def pq_compute(
    gt_json_file: str | os.PathLike,
    pred_json_file: str | os.PathLike,
    gt_folder: str | os.PathLike | None = None,
    pred_folder: str | os.PathLike | None = None,
) -> dict:
    """Score COCO panoptic predictions against ground truth; panopticapi's signature and result structure.

    The folders default to the JSON file's path without ``.json``, as in panopticapi. Every ground-truth image
    needs a prediction.
    """
    gt_json_file, pred_json_file = Path(gt_json_file), Path(pred_json_file)
    gt_json = read_json(gt_json_file)
    pred_json = read_json(pred_json_file)
    gt_folder = Path(gt_folder) if gt_folder is not None else gt_json_file.with_suffix("")
    pred_folder = Path(pred_folder) if pred_folder is not None else pred_json_file.with_suffix("")
    for folder, what in ((gt_folder, "gt_folder"), (pred_folder, "pred_folder")):
        if not folder.is_dir():
            raise FileNotFoundError(f"{what} {str(folder)!r} is not a folder")
    metric = PanopticQuality({c["id"]: c for c in gt_json["categories"]})
    predictions = {a["image_id"]: a for a in pred_json["annotations"]}
    for gt_annotation in gt_json["annotations"]:
        image_id = gt_annotation["image_id"]
        if image_id not in predictions:
            raise KeyError(f"{pred_json_file}: no prediction for the image with id {image_id!r}")
        pred_annotation = predictions[image_id]
        metric.update(
            _read_ids(gt_folder / gt_annotation["file_name"]),
            gt_annotation["segments_info"],
            _read_ids(pred_folder / pred_annotation["file_name"]),
            pred_annotation["segments_info"],
            image=str(pred_folder / pred_annotation["file_name"]),
        )
    return metric.compute()


def _read_ids(path: Path) -> np.ndarray:
    return rgb_to_id(read_label_png(path)[..., :3])
