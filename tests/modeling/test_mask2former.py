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
