"""Metrics as the field reports them: PQ (panopticapi), mIoU (detectron2's SemSegEvaluator)."""

from .panoptic import PanopticQuality, pq_compute
from .semantic import SemSegMetric

__all__ = ["PanopticQuality", "pq_compute", "SemSegMetric"]
