"""Mask AP through pycocotools ``COCOeval`` (iouType "segm"), reported as detectron2's COCOEvaluator does.

IoU thresholds 0.50:0.05:0.95, 101 recall points, at most 100 detections per image, small/medium/large areas; values
in percent, per-class AP from the precision table. Only compressed RLEs are kept between images.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def to_rle(segmentation: Any, height: int, width: int) -> dict:
    """A COCO segmentation (polygons, uncompressed or compressed RLE, or an (H, W) binary mask) -> compressed RLE."""
    from pycocotools import mask as mask_utils

    if isinstance(segmentation, np.ndarray):
        if segmentation.shape != (height, width):
            raise ValueError(f"mask has shape {segmentation.shape}, the image is {(height, width)}")
        rle = mask_utils.encode(np.asfortranarray(segmentation.astype(np.uint8)))
    elif isinstance(segmentation, list):  # polygons
        rle = mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    elif isinstance(segmentation, Mapping) and isinstance(segmentation.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(dict(segmentation), height, width)
    elif isinstance(segmentation, Mapping) and "counts" in segmentation:
        rle = dict(segmentation)
        if isinstance(rle["counts"], str):
            rle["counts"] = rle["counts"].encode("ascii")
    else:
        raise ValueError(f"unsupported segmentation of type {type(segmentation).__name__}")
    return rle


class MaskAP:
    """Accumulate ground truth and detections image by image, then run ``COCOeval``.

    Args:
        categories: the dataset's categories, each with ``id`` and ``name``.
    """

    def __init__(self, categories: Sequence[Mapping]) -> None:
        self.categories = [{"id": int(c["id"]), "name": str(c.get("name", c["id"]))} for c in categories]
        self.images: list[dict] = []
        self.ground_truth: list[dict] = []
        self.detections: list[dict] = []

    def update(
        self,
        image_id: int,
        height: int,
        width: int,
        ground_truth: Sequence[Mapping],
        detections: Sequence[Mapping],
    ) -> None:
        """Add one image.

        Args:
            ground_truth: annotations with ``category_id``, ``segmentation`` and optionally ``iscrowd``.
            detections: results with ``category_id``, ``segmentation`` and ``score``.
        """
        from pycocotools import mask as mask_utils

        self.images.append({"id": image_id, "height": height, "width": width})
        for annotation in ground_truth:
            rle = to_rle(annotation["segmentation"], height, width)
            self.ground_truth.append(
                {
                    "id": len(self.ground_truth) + 1,
                    "image_id": image_id,
                    "category_id": int(annotation["category_id"]),
                    "segmentation": rle,
                    "area": float(mask_utils.area(rle)),
                    "bbox": mask_utils.toBbox(rle).tolist(),
                    "iscrowd": int(annotation.get("iscrowd", 0)),
                }
            )
        for detection in detections:
            self.detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(detection["category_id"]),
                    "segmentation": to_rle(detection["segmentation"], height, width),
                    "score": float(detection["score"]),
                }
            )

    def compute(self) -> dict[str, Any]:
        """``AP``, ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` and ``per_class`` (name -> AP), in percent."""
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        if not self.detections:
            return {**{key: float("nan") for key in AP_KEYS}, "per_class": {}}
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO()
            gt.dataset = {"images": self.images, "annotations": self.ground_truth, "categories": self.categories}
            gt.createIndex()
            dt = gt.loadRes([dict(d) for d in self.detections])
            evaluator = COCOeval(gt, dt, iouType="segm")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        result: dict[str, Any] = {key: 100 * float(value) for key, value in zip(AP_KEYS, evaluator.stats[:6])}
        precision = evaluator.eval["precision"]  # (IoU thresholds, recall points, classes, areas, max dets)
        per_class = {}
        for index, category in enumerate(self.categories):
            values = precision[:, :, index, 0, -1]
            values = values[values > -1]
            per_class[category["name"]] = 100 * float(values.mean()) if values.size else float("nan")
        result["per_class"] = per_class
        return result
