"""Tests for the Swin backbone: parity with transformers.SwinBackbone and checkpoint key conversion.

Parity is checked in fp32, eval mode, with fixed seeds, at an absolute tolerance of 1e-5. Weights always travel the
real path: transformers' ``save_pretrained`` writes ``model.safetensors`` in its saved (legacy) layout, which
``swin_keys_from_transformers`` converts and ``load_state_dict(strict=True)`` loads.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mask2former.modeling.backbones import FeatureInfo
from mask2former.modeling.backbones.swin import (
    SwinBackbone,
    swin_keys_from_transformers,
    swin_keys_to_transformers,
)

transformers = pytest.importorskip("transformers")

ATOL = 1e-5
STAGES = ["stage1", "stage2", "stage3", "stage4"]
M2F_PREFIX = "model.pixel_level_module.encoder."

TINY = dict(embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8])
# Window 12 with odd depths, no qkv bias and a non-default block eps.
WIN12 = dict(embed_dim=32, depths=[1, 3, 1, 2], num_heads=[1, 2, 4, 8], window_size=12, qkv_bias=False,
             layer_norm_eps=1e-6)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Give every parameter (LayerNorms and bias tables included) non-trivial random values."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=gen) * (0.2 if param.ndim > 1 else 0.5))


def _ours_for(config: "transformers.SwinConfig", **kwargs) -> SwinBackbone:
    return SwinBackbone(
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias,
        patch_size=config.patch_size,
        in_channels=config.num_channels,
        layer_norm_eps=config.layer_norm_eps,
        **kwargs,
    ).eval()


def _saved_swin(tmp_path: Path, seed: int, **config_kwargs):
    """A random transformers SwinBackbone and the state dict its save_pretrained wrote."""
    torch.manual_seed(seed)
    stages = [f"stage{i + 1}" for i in range(len(config_kwargs["depths"]))]
    config = transformers.SwinConfig(out_features=stages, **config_kwargs)
    theirs = transformers.SwinBackbone(config).eval()
    _randomize(theirs, seed)
    theirs.save_pretrained(tmp_path)
    return theirs, load_file(os.path.join(tmp_path, "model.safetensors"))


@pytest.fixture(scope="module")
def tiny_pair(tmp_path_factory):
    """(transformers backbone, ours), tiny config; ours loaded from the saved file under the Mask2Former prefix."""
    theirs, saved = _saved_swin(tmp_path_factory.mktemp("tiny"), seed=0, **TINY)
    # Embed in a Mask2Former-like checkpoint: other modules' keys and a legacy relative_position_index must be ignored.
    checkpoint = {M2F_PREFIX + k: v for k, v in saved.items()}
    checkpoint["model.pixel_level_module.decoder.mask_projection.weight"] = torch.zeros(3)
    checkpoint["class_predictor.weight"] = torch.zeros(3)
    checkpoint[M2F_PREFIX + "encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(
        49, 49, dtype=torch.long
    )
    ours = _ours_for(theirs.config)
    ours.load_state_dict(swin_keys_from_transformers(checkpoint, M2F_PREFIX), strict=True)
    return theirs, ours


def _assert_maps_close(ours: list[torch.Tensor], theirs) -> None:
    assert len(ours) == len(theirs)
    for stage, (a, b) in enumerate(zip(ours, theirs)):
        assert a.shape == b.shape, (stage, a.shape, b.shape)
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0, msg=lambda m: f"stage {stage + 1}: {m}")


@pytest.mark.parametrize("size", [(64, 64), (96, 160), (70, 100)])
def test_parity_tiny(tiny_pair, size):
    theirs, ours = tiny_pair
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, *size)
    with torch.no_grad():
        _assert_maps_close(ours(pixels), theirs(pixels).feature_maps)


def test_parity_window12_shrink_and_pad(tmp_path):
    # 200x136 -> stages 50x34, 25x17, 13x9, 7x5: padding to the window everywhere, maps below the window late.
    theirs, saved = _saved_swin(tmp_path, seed=2, **WIN12)
    ours = _ours_for(theirs.config)
    ours.load_state_dict(swin_keys_from_transformers(saved, ""), strict=True)
    pixels = torch.randn(2, 3, 200, 136)
    with torch.no_grad():
        _assert_maps_close(ours(pixels), theirs(pixels).feature_maps)


def test_parity_inside_mask2former(tmp_path):
    config = transformers.Mask2FormerConfig(
        backbone_config=transformers.SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2],
                                                out_features=STAGES),
        feature_size=32, mask_feature_size=32, hidden_dim=32, num_queries=10, encoder_layers=1, decoder_layers=2,
        dim_feedforward=64, num_labels=3,
    )
    torch.manual_seed(3)
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    encoder = model.model.pixel_level_module.encoder
    _randomize(encoder, 3)
    model.save_pretrained(tmp_path)
    saved = load_file(os.path.join(tmp_path, "model.safetensors"))

    ours = _ours_for(encoder.config)
    ours.load_state_dict(swin_keys_from_transformers(saved, M2F_PREFIX), strict=True)
    pixels = torch.randn(1, 3, 72, 96)
    with torch.no_grad():
        _assert_maps_close(ours(pixels), encoder(pixels).feature_maps)

    # The inverse conversion reproduces the saved Swin entries exactly (minus the unused final swin.layernorm).
    back = swin_keys_to_transformers(ours.state_dict(), M2F_PREFIX)
    expected = {k: v for k, v in saved.items() if k.startswith(M2F_PREFIX) and ".swin.layernorm." not in k}
    assert set(back) == set(expected)
    for key, value in expected.items():
        assert torch.equal(back[key], value), key


def test_round_trip_to_transformers(tmp_path):
    torch.manual_seed(4)
    ours = SwinBackbone(**TINY, drop_path_rate=0.0).eval()
    _randomize(ours, 4)
    config = transformers.SwinConfig(out_features=STAGES, **TINY)
    config.save_pretrained(tmp_path)
    save_file(swin_keys_to_transformers(ours.state_dict(), ""), os.path.join(tmp_path, "model.safetensors"),
              metadata={"format": "pt"})
    theirs, info = transformers.SwinBackbone.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert all(k.startswith("swin.layernorm.") for k in info["missing_keys"]), info["missing_keys"]
    pixels = torch.randn(2, 3, 70, 100)
    with torch.no_grad():
        _assert_maps_close(ours(pixels), theirs.eval()(pixels).feature_maps)


def test_from_in_memory_transformers_state_dict(tiny_pair):
    theirs, ours = tiny_pair
    converted = swin_keys_from_transformers(theirs.state_dict(), "")
    assert set(converted) == set(ours.state_dict())
    for key, value in ours.state_dict().items():
        assert torch.equal(converted[key], value), key


def test_unknown_keys_are_kept(tiny_pair):
    _, ours = tiny_pair
    saved = swin_keys_to_transformers(ours.state_dict(), "p.")
    saved["p.embeddings.position_embeddings"] = torch.zeros(1)
    saved["p.hidden_states_norms.0.weight"] = torch.ones(32)  # older layout: index instead of stage name
    del saved["p.encoder.layers.1.blocks.0.attention.self.key.weight"]
    converted = swin_keys_from_transformers(saved, "p.")
    assert "embeddings.position_embeddings" in converted
    assert torch.equal(converted["output_norms.0.weight"], torch.ones(32))
    # A query/key/value triple with a part missing is left unconverted, so strict loading flags it.
    assert "layers.1.blocks.0.attn.qkv.weight" not in converted
    assert "encoder.layers.1.blocks.0.attention.self.query.weight" in converted
    with pytest.raises(RuntimeError):
        SwinBackbone(**TINY).load_state_dict(converted, strict=True)


def test_state_dict_names():
    model = SwinBackbone(**TINY)
    keys = set(model.state_dict())
    assert keys == {name for name, _ in model.named_parameters()}  # no buffers are saved
    allowed = re.compile(
        r"^(patch_embed\.(proj|norm)\.(weight|bias)"
        r"|layers\.\d\.blocks\.\d\.(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
        r"|layers\.\d\.blocks\.\d\.attn\.relative_position_bias_table"
        r"|layers\.[0-2]\.downsample\.(reduction\.weight|norm\.weight|norm\.bias)"
        r"|output_norms\.[0-3]\.(weight|bias))$"
    )
    assert all(allowed.match(k) for k in keys), sorted(k for k in keys if not allowed.match(k))
    assert model.state_dict()["layers.3.blocks.1.attn.relative_position_bias_table"].shape == (13 * 13, 8)
    assert model.state_dict()["layers.1.blocks.0.attn.qkv.weight"].shape == (3 * 64, 64)
    assert model.state_dict()["layers.2.downsample.reduction.weight"].shape == (256, 4 * 128)
    assert "layers.3.downsample.norm.weight" not in keys


@pytest.mark.parametrize("size", [(64, 64), (70, 100), (33, 47)])
def test_feature_info_matches_outputs(size):
    model = SwinBackbone(**TINY, patch_size=4).eval()
    assert model.feature_info == [FeatureInfo(32, 4), FeatureInfo(64, 8), FeatureInfo(128, 16), FeatureInfo(256, 32)]
    with torch.no_grad():
        maps = model(torch.randn(1, 3, *size))
    for info, fmap in zip(model.feature_info, maps):
        assert fmap.shape[1] == info.channels
        # Each stage is the ceil-division of the previous one (padding to the patch, then to even sizes).
        expected = (-(-size[0] // 4), -(-size[1] // 4))
        stride = 4
        while stride < info.stride:
            expected = (-(-expected[0] // 2), -(-expected[1] // 2))
            stride *= 2
        assert fmap.shape[2:] == expected


def test_shrink_window_to_fit_differs_only_on_small_maps():
    torch.manual_seed(5)
    plain = SwinBackbone(**TINY).eval()
    _randomize(plain, 5)
    shrink = SwinBackbone(**TINY, shrink_window_to_fit=True).eval()
    shrink.load_state_dict(plain.state_dict(), strict=True)
    # 64x64, window 7: stages 16, 8 (> 7) agree; stages 4 and 2 (<= 7) use a 4- and 2-wide unshifted window.
    pixels = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a, b = plain(pixels), shrink(pixels)
    for stage in (0, 1):
        torch.testing.assert_close(a[stage], b[stage], atol=0, rtol=0)
    for stage in (2, 3):
        assert (a[stage] - b[stage]).abs().max() > 1e-3
    # Every map larger than the window: identical.
    plain3 = SwinBackbone(**TINY, window_size=3).eval()
    shrink3 = SwinBackbone(**TINY, window_size=3, shrink_window_to_fit=True).eval()
    _randomize(plain3, 6)
    shrink3.load_state_dict(plain3.state_dict(), strict=True)
    pixels = torch.randn(1, 3, 128, 136)  # stage 4 is 4x5
    with torch.no_grad():
        for x, y in zip(plain3(pixels), shrink3(pixels)):
            torch.testing.assert_close(x, y, atol=0, rtol=0)


def test_shrink_window_matches_transformers_swin_model_rule(tmp_path):
    # transformers' SwinModel (always_partition=False) shrinks the window when min(H, W) <= window; it only runs when
    # min(H, W) == window (else its bias has the wrong size), which here is stage 3 (4x6, window 4: no shift).
    config = dict(embed_dim=16, depths=[2, 2, 2], num_heads=[1, 2, 2], window_size=4)
    theirs, saved = _saved_swin(tmp_path, seed=7, **config)
    ours = SwinBackbone(**config, shrink_window_to_fit=True).eval()
    ours.load_state_dict(swin_keys_from_transformers(saved, ""), strict=True)
    pixels = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        hidden = theirs.swin(pixels, always_partition=False, output_hidden_states=True,
                             output_hidden_states_before_downsampling=True).reshaped_hidden_states[1:]
        expected = [
            norm(h.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
            for h, norm in zip(hidden, theirs.hidden_states_norms.values())
        ]
        _assert_maps_close(ours(pixels), expected)


def test_shrunk_window_reads_bias_by_offset():
    model = SwinBackbone(**TINY, window_size=5)
    attn = model.layers[0].blocks[0].attn
    _randomize(attn, 8)
    full = attn._position_bias(5)  # (heads, 25, 25)
    small = attn._position_bias(3)  # (heads, 9, 9)
    tokens = torch.tensor([r * 5 + c for r in range(3) for c in range(3)])  # top-left 3x3 sub-window of 5x5
    torch.testing.assert_close(small, full[:, tokens][:, :, tokens], atol=0, rtol=0)


def test_drop_path_identity_in_eval_random_in_train():
    torch.manual_seed(9)
    model = SwinBackbone(**TINY, drop_path_rate=0.5)
    _randomize(model, 9)
    pixels = torch.randn(4, 3, 64, 64)
    reference = SwinBackbone(**TINY, drop_path_rate=0.0).eval()
    reference.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        expected = reference(pixels)
        model.eval()
        for x, y in zip(model(pixels), expected):
            torch.testing.assert_close(x, y, atol=0, rtol=0)
        model.train()
        torch.manual_seed(10)
        first = model(pixels)
        torch.manual_seed(11)
        second = model(pixels)
    assert any((x - y).abs().max() > 1e-3 for x, y in zip(first, second))
    assert any((x - y).abs().max() > 1e-3 for x, y in zip(first, expected))


def test_drop_path_residual_is_the_sum_with_the_dropped_branch():
    from mask2former.modeling.backbones.swin import _DropPath

    drop = _DropPath(0.5).train()
    x, branch = torch.randn(6, 3, 4, 5, requires_grad=True), torch.randn(6, 3, 4, 5, requires_grad=True)
    torch.manual_seed(4)
    fused = drop.residual(x, branch)
    torch.manual_seed(4)
    reference = x + drop(branch)
    torch.testing.assert_close(fused, reference, atol=1e-6, rtol=0)
    grad = torch.randn_like(fused)
    for ours, theirs in zip(torch.autograd.grad(fused, [x, branch], grad), torch.autograd.grad(reference, [x, branch], grad)):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=0)
    assert torch.equal(drop.eval().residual(x, branch), x + branch)


def test_bf16_autocast_runs():
    torch.manual_seed(12)
    model = SwinBackbone(**TINY, shrink_window_to_fit=False).eval()
    pixels = torch.randn(2, 3, 70, 100)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        maps = model(pixels)
    assert [m.shape[1] for m in maps] == [32, 64, 128, 256]
    assert all(torch.isfinite(m).all() for m in maps)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert all(torch.isfinite(m).all() for m in SwinBackbone(**TINY, shrink_window_to_fit=True).eval()(pixels))


def test_shift_mask_weight_is_exactly_zero_not_denormal():
    """exp(-100) is a float32 denormal (CPU arithmetic on denormals is ~30x slower); the mask value must underflow the
    softmax weight to exactly zero in float32 and fit in float16."""
    from mask2former.modeling.backbones.swin import _SHIFT_MASK_VALUE

    scores = torch.tensor([[0.0, _SHIFT_MASK_VALUE], [5.0, 5.0 + _SHIFT_MASK_VALUE]])
    assert torch.equal(scores.softmax(-1)[:, 1], torch.zeros(2))
    assert torch.isfinite(torch.tensor(_SHIFT_MASK_VALUE, dtype=torch.float16))


@pytest.mark.parametrize("shifted", [False, True])
def test_training_attention_is_the_fused_kernels_reference_path_to_the_bit(shifted):
    """With gradients on, window attention is written out (scaled_dot_product_attention falls back to its slower
    reference path when the mask needs a gradient); values and gradients must be that path's, bit for bit."""
    from mask2former.modeling.backbones.swin import _shift_mask, _WindowAttention

    torch.manual_seed(13)
    attention = _WindowAttention(32, 2, 4, True)
    x = torch.randn(2 * 9, 16, 32, requires_grad=True)  # 2 images of 3 x 3 windows of 4 x 4 tokens
    mask = _shift_mask(12, 12, 4, 2, x.device, x.dtype) if shifted else None
    ours = attention(x, 4, mask)
    grad = torch.randn_like(ours)
    ours_grads = torch.autograd.grad(ours, [x, attention.relative_position_bias_table, attention.qkv.weight], grad)

    # The reference: the fused op (which falls back to its reference path) with the mask expanded over the images.
    q, k, v = attention.qkv(x).view(18, 16, 3, 2, 16).permute(2, 0, 3, 1, 4).unbind(0)
    bias = attention._position_bias(4).unsqueeze(0)
    if mask is not None:
        bias = (bias + mask.unsqueeze(1)).repeat(2, 1, 1, 1)
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=16**-0.5)
    reference = attention.proj(out.transpose(1, 2).reshape(18, 16, 32))
    reference_grads = torch.autograd.grad(
        reference, [x, attention.relative_position_bias_table, attention.qkv.weight], grad
    )
    assert torch.equal(ours, reference)
    for mine, theirs in zip(ours_grads, reference_grads):
        assert torch.equal(mine, theirs)
    with torch.no_grad():  # inference takes the fused kernel itself: the same values up to its rounding
        torch.testing.assert_close(attention(x, 4, mask), ours, atol=1e-5, rtol=0)


@pytest.mark.parametrize(("height", "width", "window", "shift"), [(10, 13, 7, 3), (14, 14, 7, 3), (14, 7, 7, 0), (3, 5, 4, 2)])
def test_window_gather_is_pad_roll_partition_to_the_bit(height, width, window, shift):
    """Tokens move into and out of windows as one gather each way; values and gradients must be those of the
    original's zero padding, cyclic shift and partition (and of their inverses and the crop)."""
    import torch.nn.functional as F

    from mask2former.modeling.backbones.swin import (
        _from_windows,
        _to_windows,
        _window_partition,
    )

    torch.manual_seed(3)
    x = torch.randn(2, height, width, 5, requires_grad=True)
    padded_h, padded_w = -(-height // window) * window, -(-width // window) * window

    def reference_to(x):
        y = F.pad(x, (0, 0, 0, padded_w - width, 0, padded_h - height))
        return _window_partition(torch.roll(y, shifts=(-shift, -shift), dims=(1, 2)), window)

    def reference_from(windows):
        y = windows.view(2, padded_h // window, padded_w // window, window, window, -1)
        y = y.permute(0, 1, 3, 2, 4, 5).reshape(2, padded_h, padded_w, -1)
        return torch.roll(y, shifts=(shift, shift), dims=(1, 2))[:, :height, :width]

    ours, reference = _to_windows(x, window, shift), reference_to(x)
    assert torch.equal(ours, reference)
    scale = torch.randn_like(ours)  # a different weight per slot, so that every slot's gradient path is checked
    back, reference_back = _from_windows(ours * scale, window, shift, 2, height, width), reference_from(reference * scale)
    assert torch.equal(back, reference_back)
    grad = torch.randn_like(back)
    assert torch.equal(torch.autograd.grad(back, x, grad)[0], torch.autograd.grad(reference_back, x, grad)[0])
