"""Run a model over a dataset and score it the way the original code does for each metric.

Inference follows the original Mask2Former evaluation: full-resolution post-processing with the padding cropped;
for PQ the stuff classes are merged (``label_ids_to_fuse``); for mask AP the top instances are kept with no score
threshold (``threshold=0``) and no overlap filtering. The dataset is one of the readers in :mod:`mask2former.data.datasets`, whose
contiguous class ids must be the model's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..data.datasets import IGNORE_INDEX
from .instance import MaskAP
from .panoptic import PanopticQuality
from .semantic import SemSegMetric

TASKS = ("panoptic", "instance", "semantic")


def _ground_truth_panoptic(item: dict) -> tuple[np.ndarray, list[dict]]:
    """Reader item -> (segment ids with 0 = void, segments_info with areas), as panopticapi expects."""
    segmentation = item["segmentation_map"].astype(np.int64)
    ids = np.where(segmentation == IGNORE_INDEX, 0, segmentation + 1)
    segments = [
        {"id": s["id"] + 1, "category_id": s["category_id"], "area": int((segmentation == s["id"]).sum()), "iscrowd": 0}
        for s in item["segments_info"]
    ]
    return ids, segments


def _ground_truth_instances(item: dict, to_contiguous: dict[int, int] | None) -> list[dict]:
    if "annotations" in item and to_contiguous is not None:  # raw COCO annotations: crowd and overlaps kept
        return [
            {"category_id": to_contiguous[int(a["category_id"])], "segmentation": a["segmentation"], "iscrowd": a.get("iscrowd", 0)}
            for a in item["annotations"]
        ]
    segmentation = item["segmentation_map"]
    return [
        {"category_id": s["category_id"], "segmentation": segmentation == s["id"], "iscrowd": 0}
        for s in item["segments_info"]
    ]


def evaluate(
    segmenter: Any,
    dataset: Any,
    task: str,
    *,
    batch_size: int = 1,
    limit: int | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Score ``segmenter`` (a :class:`mask2former.Segmenter` or a model with a class head) on ``dataset``.

    Returns:
        The metric's result (``pq_compute``'s structure for panoptic, ``MaskAP.compute()`` for instance,
        ``SemSegMetric.compute()`` for semantic) plus ``images`` and ``seconds`` (total and model-only).
    """
    from ..segmenter import Segmenter

    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not isinstance(segmenter, Segmenter):
        segmenter = Segmenter(segmenter)
    categories = dataset.categories
    num_labels = len(segmenter.id2label)
    if num_labels and num_labels != len(categories):
        raise ValueError(f"the model has {num_labels} classes but the dataset has {len(categories)} categories")
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total == 0:
        raise ValueError("the dataset is empty: nothing to evaluate")

    if task == "semantic":
        metric: Any = SemSegMetric(len(categories), ignore_label=IGNORE_INDEX, class_names=[c["name"] for c in categories])
    elif task == "panoptic":
        metric = PanopticQuality({c["id"]: c for c in categories})
    else:
        metric = MaskAP([{"id": c["id"], "name": c["name"]} for c in categories])
    stuff = [c["id"] for c in categories if not c.get("isthing", 0)]
    to_contiguous = getattr(dataset, "to_contiguous", None)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="image", desc=f"evaluate {task}")
    start = time.perf_counter()
    model_seconds = 0.0
    for first in range(0, total, batch_size):
        items = [dataset[index] for index in range(first, min(first + batch_size, total))]
        tick = time.perf_counter()
        if task == "panoptic":
            results = segmenter.segment([i["image"] for i in items], task, batch_size=len(items), label_ids_to_fuse=stuff)
        elif task == "instance":
            # The original's AP protocol: top instances, no score threshold, overlapping masks all kept.
            results = segmenter.segment(
                [i["image"] for i in items], task, batch_size=len(items), threshold=0.0, overlap_mask_area_threshold=0.0
            )
        else:
            results = segmenter.segment([i["image"] for i in items], task, batch_size=len(items))
        model_seconds += time.perf_counter() - tick
        for item, result in zip(items, results):
            if task == "semantic":
                metric.update(result.segmentation, item["segmentation_map"])
            elif task == "panoptic":
                gt_ids, gt_segments = _ground_truth_panoptic(item)
                predicted = [{"id": s.id, "category_id": s.label_id} for s in result.segments if s.area > 0]
                present = set(np.unique(result.segmentation).tolist()) - {0}
                metric.update(gt_ids, gt_segments, result.segmentation, [p for p in predicted if p["id"] in present],
                              image=item["file_name"])
            else:
                height, width = item["image"].shape[:2]
                detections = [
                    {"category_id": s.label_id, "segmentation": mask, "score": s.score}
                    for s, mask in zip(result.segments, result.masks)
                ]
                metric.update(item["image_id"], height, width, _ground_truth_instances(item, to_contiguous), detections)
        if bar is not None:
            bar.update(len(items))
    if bar is not None:
        bar.close()
    report = metric.compute()
    report["images"] = total
    report["seconds"] = {"total": time.perf_counter() - start, "model": model_seconds}
    return report
