"""The fast (embedding_bag) deformable attention against the grid_sample reference: values and gradients."""

from __future__ import annotations

import pytest
import torch

from mask2former.modeling.ms_deform_attn import (
    MultiScaleDeformableAttention,
    multi_scale_deformable_attention,
    multi_scale_deformable_attention_gather,
)

SHAPES = [(6, 9), (3, 5), (2, 2)]


def random_inputs(batch_size=2, num_queries=17, num_heads=4, head_dim=8, num_points=3, spread=0.3, seed=0):
    generator = torch.Generator().manual_seed(seed)
    num_values = sum(h * w for h, w in SHAPES)
    value = torch.randn(batch_size, num_values, num_heads, head_dim, generator=generator, dtype=torch.float64)
    # Locations spill outside [0, 1] so the zero padding at the borders is exercised.
    locations = torch.rand(batch_size, num_queries, num_heads, len(SHAPES), num_points, 2, generator=generator)
    locations = (locations * (1 + 2 * spread) - spread).double()
    weights = torch.rand(batch_size, num_queries, num_heads, len(SHAPES), num_points, generator=generator).double()
    return value, locations, weights / weights.sum((-1, -2), keepdim=True)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_matches_grid_sample(seed):
    value, locations, weights = random_inputs(seed=seed)
    expected = multi_scale_deformable_attention(value, SHAPES, locations, weights)
    actual = multi_scale_deformable_attention_gather(value, SHAPES, locations, weights)
    assert actual.shape == expected.shape == (2, 17, 32)
    torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)


def test_gather_gradients_match_grid_sample():
    inputs = random_inputs(seed=3)
    gradients = []
    for function in (multi_scale_deformable_attention, multi_scale_deformable_attention_gather):
        leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
        value, locations, weights = leaves
        (function(value, SHAPES, locations, weights) ** 2).sum().backward()
        gradients.append([leaf.grad for leaf in leaves])
    for reference, fast, name in zip(*gradients, ("value", "locations", "weights")):
        torch.testing.assert_close(fast, reference, atol=1e-8, rtol=1e-6, msg=name)


def test_module_implementations_agree_and_bad_name_is_rejected():
    torch.manual_seed(0)
    fast = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=4, implementation="gather")
    reference = MultiScaleDeformableAttention(
        embed_dim=32, num_heads=4, num_levels=3, num_points=4, implementation="grid_sample"
    )
    reference.load_state_dict(fast.state_dict())
    num_values = sum(h * w for h, w in SHAPES)
    value = torch.randn(2, num_values, 32)
    query = torch.randn(2, 11, 32)
    reference_points = torch.rand(2, 11, 3, 2)
    torch.testing.assert_close(
        fast(query, reference_points, value, SHAPES), reference(query, reference_points, value, SHAPES),
        atol=1e-5, rtol=0,
    )
    with pytest.raises(ValueError, match="implementation must be one of"):
        MultiScaleDeformableAttention(implementation="cuda")


def test_default_implementation_is_gather_in_training_and_inference(monkeypatch):
    from mask2former.modeling import ms_deform_attn

    calls = []
    for name, function in list(ms_deform_attn.IMPLEMENTATIONS.items()):
        monkeypatch.setitem(
            ms_deform_attn.IMPLEMENTATIONS, name, lambda *args, _f=function, _n=name: calls.append(_n) or _f(*args)
        )
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=4)
    value = torch.randn(1, sum(h * w for h, w in SHAPES), 32)
    inputs = (torch.randn(1, 5, 32), torch.rand(1, 5, 3, 2), value, SHAPES)
    with torch.no_grad():
        module(*inputs)
    module(*inputs).sum().backward()
    assert calls == ["gather", "gather"]


def test_gather_backward_in_chunks_equals_one_chunk(monkeypatch):
    from mask2former.modeling import ms_deform_attn

    inputs = random_inputs(seed=4)
    gradients = []
    for chunk_elements in (1 << 30, 1000):  # one chunk; chunks of a few bags
        monkeypatch.setattr(ms_deform_attn._WeightedRowSum, "CHUNK_ELEMENTS", chunk_elements)
        leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
        (multi_scale_deformable_attention_gather(leaves[0], SHAPES, leaves[1], leaves[2]) ** 2).sum().backward()
        gradients.append([leaf.grad for leaf in leaves])
    for one, chunked in zip(*gradients):
        torch.testing.assert_close(chunked, one, atol=1e-6, rtol=1e-6)
