"""Mask2Former and MaskFormer for universal image segmentation (semantic, instance, panoptic).

The public names follow ``transformers``, so that switching is one import line::

    from mask2former import Mask2FormerForUniversalSegmentation
    model = Mask2FormerForUniversalSegmentation.from_pretrained("facebook/mask2former-swin-tiny-coco-instance")
"""

from .config import Mask2FormerConfig, MaskFormerConfig, SwinConfig
from .modeling.mask2former import Mask2FormerForUniversalSegmentation, Mask2FormerModel
from .modeling.maskformer import MaskFormerForInstanceSegmentation, MaskFormerModel
from .modeling.outputs import Mask2FormerForUniversalSegmentationOutput, Mask2FormerModelOutput
from .presets import list_models
from .processing.image_processor import Mask2FormerImageProcessor, MaskFormerImageProcessor
from .segmenter import Segmenter, SegmentationResult

__version__ = "0.1.0"

__all__ = [
    "Mask2FormerConfig",
    "SwinConfig",
    "Mask2FormerModel",
    "Mask2FormerForUniversalSegmentation",
    "Mask2FormerModelOutput",
    "MaskFormerConfig",
    "MaskFormerModel",
    "MaskFormerForInstanceSegmentation",
    "Mask2FormerForUniversalSegmentationOutput",
    "Mask2FormerImageProcessor",
    "MaskFormerImageProcessor",
    "Segmenter",
    "SegmentationResult",
    "list_models",
]
