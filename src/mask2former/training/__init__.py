"""Training: the Mask2Former loss (matching, point sampling, criterion)."""

from .criterion import Mask2FormerCriterion, dice_loss, sigmoid_bce_loss, validate_targets
from .matcher import HungarianMatcher, pairwise_dice, pairwise_sigmoid_bce
from .point_sampling import point_sample, sample_uncertain_points, uncertainty
from .config import TrainConfig
from .trainer import Trainer, TrainResult, train

__all__ = [
    "HungarianMatcher",
    "Mask2FormerCriterion",
    "dice_loss",
    "pairwise_dice",
    "pairwise_sigmoid_bce",
    "point_sample",
    "sample_uncertain_points",
    "sigmoid_bce_loss",
    "uncertainty",
    "validate_targets",
    "TrainConfig",
    "Trainer",
    "TrainResult",
    "train",
]
