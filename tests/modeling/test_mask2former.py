"""Parity of the whole model with ``transformers`` on the same random weights (fp32, max abs diff <= 1e-4)."""

from __future__ import annotations

import pytest
import torch

from mask2former import Mask2FormerForUniversalSegmentation, Mask2FormerModel
from tests.conftest import make_transformers_checkpoint

TOLERANCE = 1e-4


def assert_same_outputs(ours, theirs) -> None:
    torch.testing.assert_close(ours.class_queries_logits, theirs.class_queries_logits, atol=TOLERANCE, rtol=0)
    torch.testing.assert_close(ours.masks_queries_logits, theirs.masks_queries_logits, atol=TOLERANCE, rtol=0)
    assert len(ours.auxiliary_logits) == len(theirs.auxiliary_logits)
    for mine, reference in zip(ours.auxiliary_logits, theirs.auxiliary_logits):
        for key in ("class_queries_logits", "masks_queries_logits"):
            torch.testing.assert_close(mine[key], reference[key], atol=TOLERANCE, rtol=0)


def run_both(directory, reference, pixel_values):
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    with torch.no_grad():
        mine = ours(pixel_values, output_auxiliary_logits=True)
        theirs = reference(pixel_values, output_auxiliary_logits=True)
    return mine, theirs


@pytest.mark.parametrize("size", [(64, 64), (70, 100), (96, 160)])
def test_tiny_matches_transformers(tiny_checkpoint, size):
    directory, reference = tiny_checkpoint
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    mine, theirs = run_both(directory, reference, pixel_values)
    assert mine.class_queries_logits.shape == (2, 10, 6)
    assert mine.masks_queries_logits.shape == (2, 10, (size[0] + 3) // 4, (size[1] + 3) // 4)
    assert len(mine.auxiliary_logits) == 3
    assert_same_outputs(mine, theirs)


def test_padded_batch_matches_transformers(tiny_checkpoint):
    """Two images of different sizes padded into one batch, with the pixel mask (which both ignore)."""
    directory, reference = tiny_checkpoint
    pixel_values = torch.zeros(2, 3, 96, 128)
    pixel_mask = torch.zeros(2, 96, 128, dtype=torch.long)
    pixel_values[0] = torch.randn(3, 96, 128)
    pixel_values[1, :, :70, :90] = torch.randn(3, 70, 90)
    pixel_mask[0] = 1
    pixel_mask[1, :70, :90] = 1
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    with torch.no_grad():
        mine = ours(pixel_values, pixel_mask=pixel_mask, output_auxiliary_logits=True)
        theirs = reference(pixel_values, pixel_mask=pixel_mask, output_auxiliary_logits=True)
    assert_same_outputs(mine, theirs)


def test_hidden_states_match_transformers(tiny_checkpoint):
    directory, reference = tiny_checkpoint
    pixel_values = torch.randn(1, 3, 64, 96)
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    with torch.no_grad():
        mine = ours(pixel_values, output_hidden_states=True)
        theirs = reference(pixel_values, output_hidden_states=True)
    pairs = [
        (mine.encoder_hidden_states, theirs.encoder_hidden_states),
        (mine.pixel_decoder_hidden_states, theirs.pixel_decoder_hidden_states),
        # transformers gives the decoder states as (Q, B, C); ours are (B, Q, C).
        (mine.transformer_decoder_hidden_states, [h.transpose(0, 1) for h in theirs.transformer_decoder_hidden_states]),
    ]
    for ours_states, their_states in pairs:
        assert len(ours_states) == len(their_states)
        for a, b in zip(ours_states, their_states):
            torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)
    for name in ("encoder_last_hidden_state", "pixel_decoder_last_hidden_state", "transformer_decoder_last_hidden_state"):
        torch.testing.assert_close(getattr(mine, name), getattr(theirs, name), atol=TOLERANCE, rtol=0)
    assert mine.auxiliary_logits is None


def test_200_queries_pre_norm_and_input_projection(tmp_path):
    reference = make_transformers_checkpoint(
        tmp_path, num_queries=200, pre_norm=True, enforce_input_projection=True, num_labels=8, seed=3
    )
    mine, theirs = run_both(tmp_path, reference, torch.randn(1, 3, 64, 80))
    assert mine.class_queries_logits.shape == (1, 200, 9)
    assert_same_outputs(mine, theirs)


def test_swin_tiny_shaped_with_80_labels(tmp_path):
    swin = dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, drop_path_rate=0.3)
    reference = make_transformers_checkpoint(tmp_path, swin=swin, num_labels=80, seed=4)
    mine, theirs = run_both(tmp_path, reference, torch.randn(1, 3, 160, 224))
    assert mine.class_queries_logits.shape == (1, 100, 81)
    assert_same_outputs(mine, theirs)


def test_swin_base_shaped_window_12_with_133_labels(tmp_path):
    swin = dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, drop_path_rate=0.3)
    reference = make_transformers_checkpoint(tmp_path, swin=swin, num_labels=133, seed=5)
    mine, theirs = run_both(tmp_path, reference, torch.randn(1, 3, 200, 136))
    assert mine.class_queries_logits.shape == (1, 100, 134)
    assert_same_outputs(mine, theirs)


def test_base_model_outputs_every_prediction(tiny_checkpoint):
    directory, reference = tiny_checkpoint
    model = Mask2FormerModel.from_pretrained(directory)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert len(outputs.masks_queries_logits) == 4  # initial prediction + 3 layers
    assert outputs.transformer_decoder_last_hidden_state.shape == (1, 10, 32)
    assert "masks_queries_logits" in outputs.keys()


# ---------------------------------------------------------------------- training loss


def training_targets(seed: int = 0, size: int = 64):
    """Targets of a batch of 2: three objects, then an image with no object."""
    generator = torch.Generator().manual_seed(seed)
    mask_labels = [(torch.rand(3, size, size, generator=generator) > 0.5).float(), torch.zeros(0, size, size)]
    class_labels = [torch.tensor([0, 2, 4]), torch.zeros(0, dtype=torch.long)]
    return mask_labels, class_labels


def test_loss_matches_transformers(tiny_checkpoint):
    directory, reference = tiny_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory).eval()
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask_labels, class_labels = training_targets()
    with torch.no_grad():
        torch.manual_seed(1)
        theirs = reference(pixel_values, mask_labels=mask_labels, class_labels=class_labels, output_auxiliary_logits=True)
        torch.manual_seed(1)  # the forward pass draws no random numbers in eval mode: same points as in the forward
        expected = reference.get_loss_dict(
            theirs.masks_queries_logits, theirs.class_queries_logits, mask_labels, class_labels, theirs.auxiliary_logits
        )
        torch.manual_seed(1)
        mine = ours(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    torch.testing.assert_close(mine.loss, theirs.loss, atol=1e-4, rtol=0)
    assert list(mine.loss_dict) == list(expected) and len(expected) == 3 * 4  # last + 3 auxiliary predictions
    for name, value in mine.loss_dict.items():
        torch.testing.assert_close(value, expected[name], atol=1e-4, rtol=0, msg=name)
    assert "loss" in mine.keys() and "loss_dict" in mine.keys()


def test_loss_backward_gives_finite_gradients(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    model = Mask2FormerForUniversalSegmentation.from_pretrained(directory).train()
    mask_labels, class_labels = training_targets(1)
    torch.manual_seed(0)
    outputs = model(torch.randn(2, 3, 64, 64), mask_labels=mask_labels, class_labels=class_labels)
    assert torch.isfinite(outputs.loss)
    outputs.loss.backward()
    unused = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert unused == []
    for name, parameter in model.named_parameters():
        assert torch.isfinite(parameter.grad).all(), name
    assert model.class_head.weight.grad.abs().sum() > 0


def test_loss_under_autocast_bfloat16_with_an_image_without_objects(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    model = Mask2FormerForUniversalSegmentation.from_pretrained(directory).train()
    mask_labels, class_labels = training_targets(2)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model(torch.randn(2, 3, 64, 64), mask_labels=mask_labels, class_labels=class_labels)
    assert outputs.loss.dtype == torch.float32 and torch.isfinite(outputs.loss)
    assert all(torch.isfinite(value) for value in outputs.loss_dict.values())
    outputs.loss.backward()
    grads = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)


def test_loss_without_auxiliary_predictions_and_without_config():
    from mask2former import Mask2FormerConfig, SwinConfig
    from mask2former.modeling.build import build_mask2former_parts
    from mask2former.training import Mask2FormerCriterion
    from tests.conftest import TINY_MASK2FORMER, TINY_SWIN

    config = Mask2FormerConfig(
        backbone_config=SwinConfig(**TINY_SWIN), num_labels=5, use_auxiliary_loss=False, **TINY_MASK2FORMER
    )
    torch.manual_seed(0)
    model = Mask2FormerForUniversalSegmentation.from_config(config).eval()
    pixel_values, (mask_labels, class_labels) = torch.randn(2, 3, 64, 64), training_targets()
    with torch.no_grad():
        outputs = model(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    assert list(outputs.loss_dict) == ["loss_mask", "loss_dice", "loss_cross_entropy"]
    torch.testing.assert_close(outputs.loss, sum(outputs.loss_dict.values()))
    assert outputs.auxiliary_logits is None

    bare = Mask2FormerForUniversalSegmentation(**build_mask2former_parts(config), num_labels=5, hidden_dim=32)
    with torch.no_grad():
        outputs = bare.eval()(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
    assert len(outputs.loss_dict) == 12  # no config: the paper's defaults, auxiliary losses included
    assert isinstance(bare.criterion, Mask2FormerCriterion) and bare.criterion.class_weight == 2.0
    assert bare.criterion.num_labels == 5


@pytest.mark.parametrize(
    "targets, message",
    [
        ({"mask_labels": [torch.zeros(1, 64, 64)]}, "mask_labels was given without class_labels"),
        ({"class_labels": [torch.tensor([1])]}, "class_labels was given without mask_labels"),
        (
            {"mask_labels": [torch.zeros(1, 64, 64)], "class_labels": [torch.tensor([1])]},
            r"mask_labels must have one entry per image \(B=2\), got 1",
        ),
        (
            {"mask_labels": [torch.zeros(1, 64, 64)] * 2, "class_labels": [torch.tensor([1]), torch.tensor([5])]},
            r"class_labels\[1\] must hold class ids in \[0, 5\)",
        ),
        (
            {"mask_labels": [torch.zeros(1, 64, 64), torch.zeros(1, 32, 32)], "class_labels": [torch.tensor([1])] * 2},
            r"mask_labels\[1\] must have shape \(N, 64, 64\) \(pixel_values' size\), got \(1, 32, 32\)",
        ),
        (
            {"mask_labels": [torch.zeros(2, 64, 64)] * 2, "class_labels": [torch.tensor([1])] * 2},
            r"mask_labels\[0\] has 2 masks but class_labels\[0\] has 1 classes",
        ),
    ],
)
def test_bad_targets_are_reported_before_running(tiny_checkpoint, targets, message, monkeypatch):
    directory, _ = tiny_checkpoint
    model = Mask2FormerForUniversalSegmentation.from_pretrained(directory)

    def fail(*args, **kwargs):
        raise AssertionError("the network ran before the targets were checked")

    monkeypatch.setattr(model.backbone, "forward", fail)
    with pytest.raises(ValueError, match=message):
        model(torch.randn(2, 3, 64, 64), **targets)
