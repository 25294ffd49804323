"""ResNet backbone: parity with transformers.ResNetBackbone, frozen BatchNorm, feature_info, key conversion.

Weights travel the real path: transformers' ``save_pretrained`` writes ``model.safetensors`` (BatchNorm statistics
perturbed, ``num_batches_tracked`` included), ``resnet_keys_from_transformers`` converts it and a strict
``load_state_dict`` loads it. Parity is checked in fp32, eval mode, at an absolute tolerance of 1e-5.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mask2former.config import ResNetConfig
from mask2former.modeling.backbones import FeatureInfo
from mask2former.modeling.backbones.resnet import (
    FrozenBatchNorm2d,
    ResNetBackbone,
    resnet_keys_from_transformers,
    resnet_keys_to_transformers,
)
from mask2former.modeling.build import build_resnet_backbone
from tests.conftest import TINY_RESNET, randomize_, randomize_batchnorm_

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
ALL_OUTPUTS = ["stem", "stage1", "stage2", "stage3", "stage4"]

CASES = {
    "bottleneck": dict(TINY_RESNET),
    # Stride on the first 1x1, a downsampling first stage, GELU (which transformers applies only at the stem and
    # after the residual sums) and a deeper last stage.
    "bottleneck-variants": dict(
        TINY_RESNET,
        depths=[1, 1, 1, 2],
        downsample_in_bottleneck=True,
        downsample_in_first_stage=True,
        hidden_act="gelu",
    ),
    # ResNet-18 style: basic blocks, first stage without a shortcut.
    "basic": dict(embedding_size=8, depths=[2, 1, 1, 1], hidden_sizes=[8, 16, 32, 64], layer_type="basic"),
}


def saved_transformers_backbone(tmp_path, seed: int, **config):
    """A random transformers ResNetBackbone emitting every map, and the state dict its save_pretrained wrote."""
    torch.manual_seed(seed)
    theirs = transformers.ResNetBackbone(transformers.ResNetConfig(out_features=ALL_OUTPUTS, **config)).eval()
    randomize_(theirs, seed, scale=0.2)
    randomize_batchnorm_(theirs, seed)
    theirs.save_pretrained(tmp_path)
    return theirs, load_file(tmp_path / "model.safetensors")


def ours_for(**config) -> ResNetBackbone:
    return build_resnet_backbone(ResNetConfig(out_features=ALL_OUTPUTS, **config)).eval()


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(case, tmp_path):
    config = CASES[case]
    theirs, saved = saved_transformers_backbone(tmp_path, seed=3, **config)
    assert any(key.endswith("num_batches_tracked") for key in saved)
    ours = ours_for(**config)
    ours.load_state_dict(resnet_keys_from_transformers(saved, ""), strict=True)
    pixel_values = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        mine = ours(pixel_values)
        reference = theirs(pixel_values).feature_maps
    assert len(mine) == len(reference) == 5
    for info, a, b in zip(ours.feature_info, mine, reference):
        assert a.shape == b.shape
        assert a.shape[1] == info.channels
        assert a.shape[2] == -(-70 // info.stride) and a.shape[3] == -(-100 // info.stride)
        assert b.abs().mean() > 1e-3  # the comparison is not between vanishing maps
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_keys_convert_both_ways(tmp_path):
    _, saved = saved_transformers_backbone(tmp_path, seed=0, **TINY_RESNET)
    ours = resnet_keys_from_transformers(saved, "")
    assert "stem.conv1.weight" in ours and "res3.1.conv3.norm.running_var" in ours and "res5.0.shortcut.weight" in ours
    assert not any(key.endswith("num_batches_tracked") for key in ours)
    back = resnet_keys_to_transformers(ours, "")
    assert set(back) == set(saved)
    for key, value in saved.items():
        assert torch.equal(back[key], value) or key.endswith("num_batches_tracked"), key
    with pytest.raises(ValueError, match="no transformers name"):
        resnet_keys_to_transformers({"head.weight": torch.zeros(1)}, "")


@pytest.mark.parametrize("depths", [[3, 4, 6, 3], [3, 4, 23, 3]], ids=["resnet50", "resnet101"])
def test_real_layouts_match_key_for_key(depths):
    """ResNet-50/101 (transformers' default widths): every key and shape translates, built on the meta device."""
    with torch.device("meta"):
        theirs = transformers.ResNetBackbone(transformers.ResNetConfig(depths=depths, out_features=ALL_OUTPUTS[1:]))
        ours = build_resnet_backbone(ResNetConfig(depths=depths))
    translated = resnet_keys_from_transformers(theirs.state_dict(), "")
    expected = ours.state_dict()
    assert set(translated) == set(expected)
    for key, value in expected.items():
        assert translated[key].shape == value.shape, key
    assert ours.feature_info == [FeatureInfo(256, 4), FeatureInfo(512, 8), FeatureInfo(1024, 16), FeatureInfo(2048, 32)]
    assert ours.in_channels == 3
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for name, p in theirs.named_parameters() if "normalization" not in name
    )


def test_feature_info_follows_the_config():
    assert ours_for(**TINY_RESNET).feature_info == [
        FeatureInfo(8, 4),
        FeatureInfo(16, 4),
        FeatureInfo(32, 8),
        FeatureInfo(64, 16),
        FeatureInfo(128, 32),
    ]
    shifted = build_resnet_backbone(ResNetConfig(**CASES["bottleneck-variants"]))
    assert [info.stride for info in shifted.feature_info] == [8, 16, 32, 64]
    basic = build_resnet_backbone(ResNetConfig(**CASES["basic"], out_features=["stage2", "stage4"], num_channels=1))
    assert basic.feature_info == [FeatureInfo(16, 8), FeatureInfo(64, 32)]
    assert basic.in_channels == 1
    assert [tuple(f.shape) for f in basic(torch.zeros(1, 1, 64, 64))] == [(1, 16, 8, 8), (1, 64, 2, 2)]


def test_frozen_batchnorm_does_not_change_in_train_mode():
    backbone = ours_for(**TINY_RESNET)
    randomize_batchnorm_(backbone, seed=1)
    before = {key: value.clone() for key, value in backbone.state_dict().items()}
    pixel_values = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        evaluated = backbone.eval()(pixel_values)
    backbone.train()
    trained = backbone(pixel_values)
    sum(feature.sum() for feature in trained).backward()
    for a, b in zip(evaluated, trained):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    for key, value in backbone.state_dict().items():
        assert torch.equal(value, before[key]), key
    # Only the convolutions learn; the norms have buffers, no parameters.
    assert all(name.endswith(".weight") and ".norm." not in name for name, _ in backbone.named_parameters())
    assert all(parameter.grad is not None for parameter in backbone.parameters())


def test_frozen_batchnorm_loads_batchnorm2d_and_computes_its_eval_function():
    reference = torch.nn.BatchNorm2d(6)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
        reference.running_mean.normal_()
        reference.running_var.uniform_(0.5, 2.0)
    reference.num_batches_tracked.fill_(7)
    frozen = FrozenBatchNorm2d(6)
    frozen.load_state_dict(reference.state_dict(), strict=True)  # num_batches_tracked accepted and ignored
    assert set(frozen.state_dict()) == {"weight", "bias", "running_mean", "running_var"}
    x = torch.randn(2, 6, 5, 7)
    torch.testing.assert_close(frozen(x), reference.eval()(x), atol=1e-6, rtol=0)
    assert frozen.eps == reference.eps == 1e-5


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="block_type"):
        ResNetBackbone(depths=[1], hidden_sizes=[8], block_type="wide")
    with pytest.raises(ValueError, match="same length"):
        ResNetBackbone(depths=[1, 1], hidden_sizes=[8])
    with pytest.raises(ValueError, match="out_indices"):
        ResNetBackbone(depths=[1, 1], hidden_sizes=[8, 16], out_indices=[2, 1])
    with pytest.raises(ValueError, match="hidden_act"):
        build_resnet_backbone(ResNetConfig(**TINY_RESNET, hidden_act="tanh"))
    with pytest.raises(ValueError, match="layer_type"):
        ResNetConfig(layer_type="wide")
    with pytest.raises(ValueError, match="out_features"):
        ResNetConfig(depths=[1, 1], hidden_sizes=[8, 16], out_features=["stage3"])
