"""MaskFormer checkpoints in the Hugging Face layout: round trip through transformers, both Swin layouts, errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from mask2former import Mask2FormerForUniversalSegmentation, MaskFormerForInstanceSegmentation, MaskFormerModel
from mask2former.checkpoints.hf_maskformer import (
    BACKBONE_PREFIX,
    state_dict_from_transformers,
    state_dict_to_transformers,
)
from mask2former.modeling.backbones.swin import swin_keys_to_transformers

PIXELS = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))


def outputs_of(model, pixel_values=PIXELS):
    with torch.no_grad():
        outputs = model(pixel_values)
    return outputs.class_queries_logits, outputs.masks_queries_logits


def test_round_trip_through_transformers(tiny_maskformer_checkpoint, tmp_path):
    """ours -> save_pretrained -> transformers loads every key -> same outputs; ours reads it back bit for bit."""
    import transformers

    directory, _ = tiny_maskformer_checkpoint
    ours = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    ours.save_pretrained(tmp_path)
    assert set(load_file(str(tmp_path / "model.safetensors"))) == set(load_file(str(directory / "model.safetensors")))
    theirs, info = transformers.MaskFormerForInstanceSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    for mine, reference in zip(outputs_of(ours), outputs_of(theirs.eval())):
        torch.testing.assert_close(mine, reference, atol=1e-5, rtol=0)
    again = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_translation_is_invertible(tiny_maskformer_checkpoint):
    directory, _ = tiny_maskformer_checkpoint
    ours = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    state = ours.state_dict()
    back = state_dict_from_transformers(state_dict_to_transformers(state, ours.config))
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_swin_backbone_key_layout_loads(tiny_maskformer_checkpoint, tmp_path):
    """Weights whose backbone has transformers' SwinBackbone layout (no ``model.``, ``hidden_states_norms.stage{k}``)
    load to the same model as the MaskFormerSwin layout."""
    directory, _ = tiny_maskformer_checkpoint
    expected = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    state = load_file(str(directory / "model.safetensors"))
    backbone = {
        key[len("backbone.") :]: value for key, value in expected.state_dict().items() if key.startswith("backbone.")
    }
    rewritten = {key: value for key, value in state.items() if not key.startswith(BACKBONE_PREFIX)}
    rewritten.update(swin_keys_to_transformers(backbone, BACKBONE_PREFIX))
    assert any(".hidden_states_norms.stage1." in key for key in rewritten)
    assert not any(key.startswith(BACKBONE_PREFIX + "model.") for key in rewritten)
    save_file(rewritten, str(tmp_path / "model.safetensors"))
    config = json.loads((directory / "config.json").read_text())
    config["backbone_config"]["model_type"] = "swin"
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    for mine, reference in zip(outputs_of(loaded), outputs_of(expected)):
        assert torch.equal(mine, reference)


def test_base_model_loads_and_saves_without_heads(tiny_maskformer_checkpoint, tmp_path):
    import transformers

    directory, _ = tiny_maskformer_checkpoint
    model = MaskFormerModel.from_pretrained(directory)
    assert not any(key.startswith(("class_head.", "mask_head.")) for key in model.state_dict())
    model.save_pretrained(tmp_path)
    saved = load_file(str(tmp_path / "model.safetensors"))
    assert not any(key.startswith("model.") for key in saved)  # transformers' base model has no "model." prefix
    theirs = transformers.MaskFormerModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(PIXELS).transformer_decoder_last_hidden_state,
            theirs(PIXELS).transformer_decoder_last_hidden_state,
            atol=1e-5,
            rtol=0,
        )
    assert set(MaskFormerModel.from_pretrained(tmp_path).state_dict()) == set(model.state_dict())


def test_wrong_architecture_is_named(tiny_maskformer_checkpoint, tiny_checkpoint):
    maskformer_directory, _ = tiny_maskformer_checkpoint
    mask2former_directory, _ = tiny_checkpoint
    with pytest.raises(ValueError, match="Mask2Former checkpoint: load it with Mask2FormerForUniversalSegmentation"):
        MaskFormerForInstanceSegmentation.from_pretrained(mask2former_directory)
    with pytest.raises(ValueError, match="MaskFormer checkpoint: load it with MaskFormerForInstanceSegmentation"):
        Mask2FormerForUniversalSegmentation.from_pretrained(maskformer_directory)


def test_new_labels_reinitialize_the_class_head(tiny_maskformer_checkpoint, caplog):
    directory, _ = tiny_maskformer_checkpoint
    original = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    with caplog.at_level(logging.WARNING):
        model = MaskFormerForInstanceSegmentation.from_pretrained(directory, id2label={0: "cat", 1: "dog"})
    assert "re-initializing the class head" in caplog.text and "5 classes, 2 were asked for" in caplog.text
    assert model.num_labels == 2 and model.config.id2label == {0: "cat", 1: "dog"}
    assert torch.equal(model.mask_head.layers[0].weight, original.mask_head.layers[0].weight)


def test_weights_that_do_not_fit_are_listed(tiny_maskformer_checkpoint, tmp_path):
    directory, _ = tiny_maskformer_checkpoint
    shutil.copy(directory / "config.json", tmp_path)
    state = load_file(str(directory / "model.safetensors"))
    del state["model.transformer_module.queries_embedder.weight"]
    state["class_predictor.bias"] = torch.zeros(3)
    state["model.transformer_module.decoder.layers.0.self_attn.extra.weight"] = torch.zeros(1)
    save_file(state, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError) as error:
        MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing (1)" in message and "transformer_decoder.query_positions.weight" in message
    assert "class_head.bias: checkpoint (3,), model (6,)" in message
    assert "self_attn.extra.weight" in message
