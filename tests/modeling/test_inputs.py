"""Bad input gets a clear error; the model runs under autocast, in bfloat16 and after .to()."""

from __future__ import annotations

import pytest
import torch

from mask2former import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
from tests.conftest import TINY_MASK2FORMER, TINY_SWIN


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    config = Mask2FormerConfig(backbone_config=SwinConfig(**TINY_SWIN), num_labels=4, **TINY_MASK2FORMER)
    return Mask2FormerForUniversalSegmentation.from_config(config).eval()


@pytest.mark.parametrize(
    "pixel_values, message",
    [
        (torch.randn(3, 64, 64), r"pixel_values must have shape \(B, C, H, W\), got \(3, 64, 64\)"),
        (torch.randn(1, 1, 64, 64), r"pixel_values must have 3 channels"),
        (torch.zeros(1, 3, 64, 64, dtype=torch.uint8), r"pixel_values must be a floating-point tensor"),
    ],
)
def test_bad_pixel_values(model, pixel_values, message):
    with pytest.raises(ValueError, match=message):
        model(pixel_values)


def test_pixel_values_of_the_wrong_type(model):
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor"):
        model([[0.0]])


def test_bad_pixel_mask(model):
    with pytest.raises(ValueError, match=r"pixel_mask must have shape \(1, 64, 64\)"):
        model(torch.randn(1, 3, 64, 64), pixel_mask=torch.ones(1, 32, 32))


def test_float_class_labels_are_rejected(model):
    with pytest.raises(ValueError, match=r"class_labels\[0\] must hold integer class ids, got dtype torch.float32"):
        model(torch.randn(1, 3, 64, 64), mask_labels=[torch.zeros(1, 64, 64)], class_labels=[torch.zeros(1)])


def test_autocast_bfloat16_is_close_to_fp32(model):
    pixel_values = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        reference = model(pixel_values)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(pixel_values)
    assert torch.isfinite(mixed.masks_queries_logits).all()
    assert torch.isfinite(mixed.class_queries_logits).all()
    assert (mixed.class_queries_logits.float() - reference.class_queries_logits).abs().max() < 0.5


def test_whole_model_in_bfloat16(model):
    """transformers gives NaN here (bf16 grid_sample); ours must stay finite."""
    half = Mask2FormerForUniversalSegmentation.from_config(model.config).eval()
    half.load_state_dict(model.state_dict())
    half.to(torch.bfloat16)
    with torch.no_grad():
        outputs = half(torch.randn(1, 3, 64, 96, dtype=torch.bfloat16))
    assert outputs.masks_queries_logits.dtype == torch.bfloat16
    assert torch.isfinite(outputs.masks_queries_logits).all()


def test_drop_path_is_active_only_in_training(model):
    config = Mask2FormerConfig(
        backbone_config=SwinConfig(**{**TINY_SWIN, "drop_path_rate": 0.5}), num_labels=4, **TINY_MASK2FORMER
    )
    net = Mask2FormerForUniversalSegmentation.from_config(config)
    pixel_values = torch.randn(1, 3, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(pixel_values).masks_queries_logits, net(pixel_values).masks_queries_logits)
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(pixel_values).masks_queries_logits, net(pixel_values).masks_queries_logits)
