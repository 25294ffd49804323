"""Configs read the released config.json files (with their quirks) and write what transformers reads back."""

from __future__ import annotations

import json

import pytest

from mask2former import Mask2FormerConfig, SwinConfig


def released_style_config() -> dict:
    """A config.json shaped like the released ones, quirks included."""
    return {
        "model_type": "mask2former",
        "architectures": ["Mask2FormerForUniversalSegmentation"],
        "backbone_config": {
            "model_type": "maskformer-swin",
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "drop_path_rate": 0.3,
            "path_norm": True,
            "out_features": ["stage1", "stage2", "stage3", "stage4"],
            "out_indices": [1, 2, 3, 4],
        },
        "enforce_input_proj": False,
        "id2label": {"0": "person", "1": "bicycle", "2": "car"},
        "label2id": {"person": 0, "bicycle": 1, "car": 2},
        "num_queries": 100,
        "torch_dtype": "float32",
        "transformers_version": "4.26.0.dev0",
    }


def test_reads_released_quirks(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(released_style_config()))
    config = Mask2FormerConfig.from_pretrained(tmp_path)
    assert config.num_labels == 3
    assert config.id2label == {0: "person", 1: "bicycle", 2: "car"}
    assert config.enforce_input_projection is False
    assert config.backbone_config.model_type == "maskformer-swin"
    assert config.backbone_config.depths == [2, 2, 6, 2]
    assert config.backbone_config.extra["path_norm"] is True
    assert config.extra["architectures"] == ["Mask2FormerForUniversalSegmentation"]


def test_enforce_input_proj_legacy_spelling_is_honoured():
    data = released_style_config()
    data["enforce_input_proj"] = True
    assert Mask2FormerConfig.from_dict(data).enforce_input_projection is True


def test_defaults_match_transformers():
    import transformers

    ours = Mask2FormerConfig().to_dict()
    theirs = transformers.Mask2FormerConfig().to_dict()
    for key, value in ours.items():
        if key in ("backbone_config", "extra", "id2label", "label2id"):
            continue
        if key in theirs:
            expected = theirs[key]
            assert (list(value) if isinstance(value, tuple) else value) == (
                list(expected) if isinstance(expected, tuple) else expected
            ), key
    for key in ("embed_dim", "depths", "num_heads", "window_size", "drop_path_rate", "mlp_ratio", "layer_norm_eps"):
        assert ours["backbone_config"][key] == theirs["backbone_config"][key], key


def test_written_config_reads_back_in_transformers(tmp_path):
    import transformers

    config = Mask2FormerConfig.from_dict(released_style_config())
    config.num_queries = 200
    config.save_pretrained(tmp_path)
    theirs = transformers.Mask2FormerConfig.from_pretrained(tmp_path)
    assert theirs.num_queries == 200
    assert theirs.num_labels == 3
    assert theirs.id2label == {0: "person", 1: "bicycle", 2: "car"}
    assert list(theirs.backbone_config.depths) == [2, 2, 6, 2]
    assert theirs.backbone_config.model_type == "maskformer-swin"
    assert list(theirs.backbone_config.out_features) == ["stage1", "stage2", "stage3", "stage4"]
    for field in ("hidden_dim", "decoder_layers", "dim_feedforward", "no_object_weight", "train_num_points"):
        assert getattr(theirs, field) == getattr(config, field), field
    # And ours reads its own file back unchanged.
    assert Mask2FormerConfig.from_pretrained(tmp_path) == config


def test_reads_what_transformers_writes(tmp_path):
    import transformers

    theirs = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(
            embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12,
            out_features=["stage1", "stage2", "stage3", "stage4"],
        ),
        num_labels=133,
        num_queries=200,
    )
    theirs.save_pretrained(tmp_path)
    ours = Mask2FormerConfig.from_pretrained(tmp_path)
    assert ours.num_labels == 133 and ours.num_queries == 200
    assert ours.backbone_config.window_size == 12 and ours.backbone_config.embed_dim == 128


def test_other_model_type_is_rejected(tmp_path):
    data = released_style_config()
    data["model_type"] = "detr"
    (tmp_path / "config.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="model_type 'detr'"):
        Mask2FormerConfig.from_pretrained(tmp_path)


def test_bad_backbone_is_rejected():
    with pytest.raises(ValueError, match="backbone_config.model_type"):
        SwinConfig(model_type="resnet")
    with pytest.raises(ValueError, match="same length"):
        SwinConfig(depths=[2, 2], num_heads=[3, 6, 12, 24])


def test_missing_config_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        Mask2FormerConfig.from_pretrained(tmp_path)
