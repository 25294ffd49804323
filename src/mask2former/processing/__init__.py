"""Preprocessing (resize, normalize, pad, training targets) and post-processing of model outputs."""

from .image_processor import Mask2FormerImageProcessor, MaskFormerImageProcessor

__all__ = ["Mask2FormerImageProcessor", "MaskFormerImageProcessor"]
