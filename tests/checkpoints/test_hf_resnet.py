"""Mask2Former with a ResNet backbone in the Hugging Face layout: load, parity, save, config.json both ways."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mask2former import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, Mask2FormerModel
from mask2former.checkpoints.hf import state_dict_from_transformers, state_dict_to_transformers
from mask2former.config import ResNetConfig, SwinConfig
from mask2former.modeling.backbones.resnet import ResNetBackbone
from tests.conftest import TINY_MASK2FORMER, TINY_RESNET, make_transformers_resnet_checkpoint

transformers = pytest.importorskip("transformers")

TOLERANCE = 1e-4
PIXELS = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    directory = tmp_path_factory.mktemp("resnet")
    return directory, make_transformers_resnet_checkpoint(directory)


def assert_same_outputs(ours, theirs, pixel_values=PIXELS) -> None:
    with torch.no_grad():
        mine = ours(pixel_values, output_auxiliary_logits=True)
        reference = theirs(pixel_values, output_auxiliary_logits=True)
    pairs = [(mine.class_queries_logits, reference.class_queries_logits)]
    pairs.append((mine.masks_queries_logits, reference.masks_queries_logits))
    assert len(mine.auxiliary_logits) == len(reference.auxiliary_logits) == 3
    for a, b in zip(mine.auxiliary_logits, reference.auxiliary_logits):
        pairs += [
            (a["class_queries_logits"], b["class_queries_logits"]),
            (a["masks_queries_logits"], b["masks_queries_logits"]),
        ]
    for a, b in pairs:
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=TOLERANCE, rtol=0)


def test_loads_and_matches_transformers(resnet_checkpoint):
    directory, reference = resnet_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    assert isinstance(ours.backbone, ResNetBackbone)
    assert isinstance(ours.config.backbone_config, ResNetConfig)
    assert_same_outputs(ours, reference)
    # The backbone maps themselves, too.
    with torch.no_grad():
        mine = ours(PIXELS[:1], output_hidden_states=True).encoder_hidden_states
        theirs = reference(PIXELS[:1], output_hidden_states=True).encoder_hidden_states
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_round_trip_through_transformers(resnet_checkpoint, tmp_path):
    """ours -> save_pretrained -> transformers loads every key (none missing) -> same outputs."""
    directory, _ = resnet_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    ours.save_pretrained(tmp_path)
    theirs, info = transformers.Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    assert isinstance(theirs.config.backbone_config, transformers.ResNetConfig)
    assert_same_outputs(ours, theirs.eval())
    # Same key set as the file transformers wrote, and ours reads its own file back bit for bit.
    assert set(load_file(tmp_path / "model.safetensors")) == set(load_file(directory / "model.safetensors"))
    again = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, again.state_dict()[key]), key


def test_translation_is_invertible(resnet_checkpoint):
    directory, _ = resnet_checkpoint
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(directory)
    state = ours.state_dict()
    back = state_dict_from_transformers(state_dict_to_transformers(state, ours.config))
    assert set(back) == set(state)
    for key in state:
        assert torch.equal(back[key], state[key]), key


def test_base_model_round_trip(resnet_checkpoint, tmp_path):
    directory, _ = resnet_checkpoint
    base = Mask2FormerModel.from_pretrained(directory)
    base.save_pretrained(tmp_path)
    theirs = transformers.Mask2FormerModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        mine = base(PIXELS).masks_queries_logits[-1]
        reference = theirs(PIXELS).masks_queries_logits[-1]
    torch.testing.assert_close(mine, reference, atol=TOLERANCE, rtol=0)


def test_resnet50_layout_matches_transformers(tmp_path):
    """The real ResNet-50 backbone (transformers' ResNetConfig defaults) under a tiny decoder, at 64x64."""
    reference = make_transformers_resnet_checkpoint(tmp_path, resnet={}, seed=1)
    ours = Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path)
    assert ours.config.backbone_config.depths == [3, 4, 6, 3]
    assert [info.channels for info in ours.backbone.feature_info] == [256, 512, 1024, 2048]
    assert_same_outputs(ours, reference, torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(2)))


def test_config_json_reads_back_in_transformers(resnet_checkpoint, tmp_path):
    directory, _ = resnet_checkpoint
    config = Mask2FormerConfig.from_pretrained(directory)
    backbone = config.backbone_config
    assert isinstance(backbone, ResNetConfig)
    assert backbone.depths == TINY_RESNET["depths"] and backbone.hidden_sizes == TINY_RESNET["hidden_sizes"]
    assert backbone.out_features == ["stage1", "stage2", "stage3", "stage4"]
    config.save_pretrained(tmp_path)
    theirs = transformers.Mask2FormerConfig.from_pretrained(tmp_path).backbone_config
    original = transformers.Mask2FormerConfig.from_pretrained(directory).backbone_config
    assert isinstance(theirs, transformers.ResNetConfig)
    for name in (
        "num_channels",
        "embedding_size",
        "hidden_sizes",
        "depths",
        "layer_type",
        "hidden_act",
        "downsample_in_first_stage",
        "downsample_in_bottleneck",
        "out_features",
        "out_indices",
        "stage_names",
    ):
        assert getattr(theirs, name) == getattr(original, name), name
    # And ours reads its own file back unchanged.
    assert Mask2FormerConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_resnet_config_fields_and_defaults_match_transformers():
    ours = ResNetConfig().to_dict()
    theirs = transformers.ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]).to_dict()
    for key, value in ours.items():
        assert theirs[key] == value, key
    varied = dict(
        TINY_RESNET,
        layer_type="basic",
        downsample_in_bottleneck=True,
        downsample_in_first_stage=True,
        hidden_act="gelu",
        out_features=["stem", "stage2"],
    )
    reread = transformers.ResNetConfig(
        **{k: v for k, v in ResNetConfig(**varied).to_dict().items() if k != "model_type"}
    )
    assert reread.out_indices == [0, 2]
    assert ResNetConfig.from_dict(reread.to_dict()) == ResNetConfig(
        **varied, extra=ResNetConfig.from_dict(reread.to_dict()).extra
    )


def test_backbone_model_type_dispatch():
    data = {
        "backbone_config": {"model_type": "resnet", "depths": [2, 2], "hidden_sizes": [8, 16], "out_indices": [1, 2]}
    }
    config = Mask2FormerConfig.from_dict(data)
    assert isinstance(config.backbone_config, ResNetConfig)
    assert config.backbone_config.out_features == ["stage1", "stage2"]  # read through out_indices
    assert isinstance(
        Mask2FormerConfig.from_dict({"backbone_config": {"model_type": "maskformer-swin"}}).backbone_config, SwinConfig
    )
    assert isinstance(Mask2FormerConfig(backbone_config={"model_type": "resnet"}).backbone_config, ResNetConfig)
    with pytest.raises(ValueError, match="model_type 'convnext' is not supported"):
        Mask2FormerConfig.from_dict({"backbone_config": {"model_type": "convnext"}})


def test_from_config_builds_a_random_resnet_model():
    config = Mask2FormerConfig(backbone_config=ResNetConfig(**TINY_RESNET), num_labels=4, **TINY_MASK2FORMER)
    model = Mask2FormerForUniversalSegmentation.from_config(config).eval()
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.class_queries_logits.shape == (1, 10, 5)
    assert torch.isfinite(outputs.masks_queries_logits).all()
    wrong = Mask2FormerConfig(
        backbone_config=ResNetConfig(**TINY_RESNET, downsample_in_first_stage=True), num_labels=4, **TINY_MASK2FORMER
    )
    with pytest.raises(ValueError, match="feature_strides"):
        Mask2FormerForUniversalSegmentation.from_config(wrong)
