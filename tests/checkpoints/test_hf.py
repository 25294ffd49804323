"""Loading and saving the Hugging Face layout: file variants, the hub cache, fine-tuning heads, clear errors."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from mask2former import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerModel
from mask2former.checkpoints.hf import state_dict_from_transformers, state_dict_to_transformers

PIXELS = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(7))


def outputs_of(model, pixel_values=PIXELS):
    with torch.no_grad():
        outputs = model(pixel_values)
    return outputs.class_queries_logits, outputs.masks_queries_logits


def test_round_trip_through_transformers(tiny_checkpoint, tmp_path):
    """ours -> save_pretrained -> transformers loads every key -> same outputs."""
    import transformers

    directory, reference = tiny_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    ours.save_pretrained(tmp_path)
    theirs, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert info["unexpected_keys"] == [] or not info["unexpected_keys"]
    # transformers 5 declares an unused final Swin LayerNorm that no released checkpoint has either.
    assert all("swin.layernorm" in key for key in info["missing_keys"]), info["missing_keys"]
    assert not info["mismatched_keys"]
    for mine, reference_output in zip(outputs_of(ours), outputs_of(theirs.eval())):
        torch.testing.assert_close(mine, reference_output, atol=1e-5, rtol=0)
    # And ours reads its own file back bit for bit.
    again = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_translation_is_invertible(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    state = ours.state_dict()
    back = state_dict_from_transformers(state_dict_to_transformers(state, ours.config))
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_pytorch_bin_and_sharded_safetensors(tiny_checkpoint, tmp_path):
    directory, reference = tiny_checkpoint
    expected = outputs_of(Mask2FormerForUniversalSegmentation.from_pretrained(directory))

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(directory / "config.json", bin_dir)
    from safetensors.torch import load_file

    torch.save(load_file(directory / "model.safetensors"), bin_dir / "pytorch_model.bin")
    sharded_dir = tmp_path / "sharded"
    reference.save_pretrained(sharded_dir, max_shard_size="100KB")
    assert (sharded_dir / "model.safetensors.index.json").is_file()

    for folder in (bin_dir, sharded_dir):
        for mine, theirs in zip(outputs_of(Mask2FormerForUniversalSegmentation.from_pretrained(folder)), expected):
            torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


def test_hub_id_resolves_from_the_local_cache(tiny_checkpoint, tmp_path):
    """A hub id loads offline from a Hugging Face cache folder (the layout huggingface_hub writes)."""
    directory, _ = tiny_checkpoint
    repo = tmp_path / "models--facebook--mask2former-tiny-test"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        shutil.copy(directory / name, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    model = Mask2FormerForUniversalSegmentation.from_pretrained("facebook/mask2former-tiny-test", cache_dir=tmp_path)
    expected = outputs_of(Mask2FormerForUniversalSegmentation.from_pretrained(directory))
    for mine, theirs in zip(outputs_of(model), expected):
        torch.testing.assert_close(mine, theirs, atol=0, rtol=0)


def test_hub_id_without_cache_or_network_names_the_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match=r"facebook/mask2former-swin-tiny-coco-instance.*download"):
        Mask2FormerForUniversalSegmentation.from_pretrained(
            "facebook/mask2former-swin-tiny-coco-instance", cache_dir=tmp_path
        )


def test_new_num_labels_reinitializes_the_class_head(tiny_checkpoint, caplog):
    directory, _ = tiny_checkpoint
    original = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    with caplog.at_level(logging.WARNING):
        model = Mask2FormerForUniversalSegmentation.from_pretrained(directory, num_labels=3)
    assert "re-initializing the class head" in caplog.text
    assert model.class_head.out_features == 4
    assert model.config.num_labels == 3
    # Everything but the class head is loaded.
    torch.testing.assert_close(model.transformer_decoder.norm.weight, original.transformer_decoder.norm.weight)
    named = Mask2FormerForUniversalSegmentation.from_pretrained(directory, id2label={0: "a", 1: "b"})
    assert named.config.id2label == {0: "a", 1: "b"}


def test_same_num_labels_keeps_the_class_head(tiny_checkpoint):
    directory, _ = tiny_checkpoint
    original = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    renamed = Mask2FormerForUniversalSegmentation.from_pretrained(
        directory, id2label={i: f"thing_{i}" for i in range(5)}
    )
    assert torch.equal(original.class_head.weight, renamed.class_head.weight)


def test_base_model_round_trip(tiny_checkpoint, tmp_path):
    import transformers

    directory, _ = tiny_checkpoint
    base = Mask2FormerModel.from_pretrained(directory)
    base.save_pretrained(tmp_path)
    theirs = transformers.Mask2FormerModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        mine = base(PIXELS).masks_queries_logits[-1]
        reference = theirs(PIXELS).masks_queries_logits[-1]
    torch.testing.assert_close(mine, reference, atol=1e-4, rtol=0)


def test_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither an existing folder nor"):
        Mask2FormerForUniversalSegmentation.from_pretrained(str(tmp_path / "nowhere"))


def test_folder_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)


def test_folder_without_weights(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    shutil.copy(directory / "config.json", tmp_path)
    with pytest.raises(FileNotFoundError, match="no weights"):
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)


def test_config_of_another_model_type(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    config = json.loads((directory / "config.json").read_text())
    config["model_type"] = "maskformer"
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(directory / "model.safetensors", tmp_path)
    with pytest.raises(ValueError, match="model_type 'maskformer'"):
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)


def test_weights_that_do_not_fit_the_config(tiny_checkpoint, tmp_path):
    directory, _ = tiny_checkpoint
    config = json.loads((directory / "config.json").read_text())
    config["num_queries"] = 12
    config["decoder_layers"] = 5
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(directory / "model.safetensors", tmp_path)
    with pytest.raises(ValueError) as error:
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    message = str(error.value)
    assert "missing (" in message and "transformer_decoder.layers.3." in message
    assert "wrong shape (" in message and "transformer_decoder.query_features.weight" in message


def test_save_is_atomic_on_failure(tiny_checkpoint, tmp_path, monkeypatch):
    """A crash while writing leaves the previous file intact and no temporary file behind."""
    directory, _ = tiny_checkpoint
    model = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    import mask2former.checkpoints.io as io

    def broken_save(tensors, path, metadata=None):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(io, "save_file", broken_save)
    with pytest.raises(KeyboardInterrupt):
        model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]


def test_from_config_builds_a_random_model():
    from tests.conftest import TINY_MASK2FORMER, TINY_SWIN
    from mask2former import SwinConfig

    config = Mask2FormerConfig(backbone_config=SwinConfig(**TINY_SWIN), num_labels=4, **TINY_MASK2FORMER)
    model = Mask2FormerForUniversalSegmentation.from_config(config)
    class_logits, mask_logits = outputs_of(model.eval())
    assert class_logits.shape == (1, 10, 5)
    assert torch.isfinite(mask_logits).all()
