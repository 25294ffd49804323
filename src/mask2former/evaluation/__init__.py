"""Metrics as the field reports them: PQ (panopticapi), mask AP (COCOeval), mIoU (detectron2's SemSegEvaluator)."""

from .instance import MaskAP
from .panoptic import PanopticQuality, pq_compute
from .semantic import SemSegMetric

__all__ = ["MaskAP", "PanopticQuality", "pq_compute", "SemSegMetric"]
