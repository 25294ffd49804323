"""mIoU, fwIoU, mean and pixel accuracy from a confusion matrix, with detectron2's ``SemSegEvaluator`` conventions.

The ignore label is excluded; a class that never occurs in the ground truth is left out of the means (its IoU and
accuracy are NaN); all values are percentages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class SemSegMetric:
    """Accumulate a confusion matrix image by image, then compute the semantic segmentation metrics.

    Args:
        num_classes: K; predictions and ground truth hold class ids 0..K-1.
        ignore_label: ground-truth value excluded from every metric.
        class_names: optional names, adding ``IoU-{name}`` and ``ACC-{name}`` keys to the result.
    """

    def __init__(self, num_classes: int, ignore_label: int = 255, class_names: Sequence[str] | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"class_names has {len(class_names)} names for num_classes={num_classes}")
        self.num_classes = num_classes
        self.ignore_label = ignore_label
        self.class_names = list(class_names) if class_names is not None else None
        self.reset()

    def reset(self) -> None:
        # Rows: prediction, columns: ground truth; the last column collects ignored ground-truth pixels.
        self.confusion = np.zeros((self.num_classes + 1, self.num_classes + 1), dtype=np.int64)

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        """Add one image: ``pred`` and ``gt`` are (H, W) integer maps of the same size."""
        pred = _to_numpy(pred, "pred")
        gt = _to_numpy(gt, "gt")
        if pred.shape != gt.shape:
            raise ValueError(f"pred has shape {pred.shape} but gt has shape {gt.shape}")
        gt = gt.astype(np.int64)
        pred = pred.astype(np.int64)
        ignored = gt == self.ignore_label
        if pred.size and (pred.min() < 0 or pred.max() >= self.num_classes):
            raise ValueError(f"pred holds class ids outside [0, {self.num_classes}): {pred.min()}..{pred.max()}")
        valid_gt = gt[~ignored]
        if valid_gt.size and (valid_gt.min() < 0 or valid_gt.max() >= self.num_classes):
            raise ValueError(
                f"gt holds ids outside [0, {self.num_classes}) that are not the ignore label {self.ignore_label}: "
                f"{sorted(set(np.unique(valid_gt)) - set(range(self.num_classes)))[:10]}"
            )
        gt = np.where(ignored, self.num_classes, gt)
        size = self.num_classes + 1
        self.confusion += np.bincount(size * pred.reshape(-1) + gt.reshape(-1), minlength=size**2).reshape(size, size)

    def compute(self) -> dict[str, float | list[float]]:
        """``mIoU``, ``fwIoU``, ``mACC``, ``pACC`` and per-class ``IoU`` / ``ACC`` lists (NaN for absent classes)."""
        confusion = self.confusion[:-1, :-1].astype(np.float64)
        true_positive = confusion.diagonal()
        gt_pixels = confusion.sum(axis=0)
        pred_pixels = confusion.sum(axis=1)
        present = gt_pixels > 0
        accuracy = np.full(self.num_classes, np.nan)
        iou = np.full(self.num_classes, np.nan)
        accuracy[present] = true_positive[present] / gt_pixels[present]
        union = gt_pixels + pred_pixels - true_positive
        valid = present & (union > 0)
        iou[valid] = true_positive[valid] / union[valid]
        total = gt_pixels.sum()
        weights = gt_pixels / total if total > 0 else np.zeros_like(gt_pixels)
        result: dict[str, float | list[float]] = {
            "mIoU": 100 * float(iou[valid].mean()) if valid.any() else float("nan"),
            "fwIoU": 100 * float((iou[valid] * weights[valid]).sum()) if valid.any() else float("nan"),
            "mACC": 100 * float(accuracy[present].mean()) if present.any() else float("nan"),
            "pACC": 100 * float(true_positive.sum() / total) if total > 0 else float("nan"),
            "IoU": (100 * iou).tolist(),
            "ACC": (100 * accuracy).tolist(),
        }
        if self.class_names is not None:
            for name, value in zip(self.class_names, iou):
                result[f"IoU-{name}"] = 100 * float(value)
            for name, value in zip(self.class_names, accuracy):
                result[f"ACC-{name}"] = 100 * float(value)
        return result


def _to_numpy(array: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != 2:
        raise ValueError(f"{name} must be an (H, W) map, got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must hold integer class ids, got dtype {array.dtype}")
    return array
