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
        monkeypatch.setattr(ms_deform_attn, "_CHUNK_ELEMENTS", chunk_elements)
        leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
        (multi_scale_deformable_attention_gather(leaves[0], SHAPES, leaves[1], leaves[2]) ** 2).sum().backward()
        gradients.append([leaf.grad for leaf in leaves])
    for one, chunked in zip(*gradients):
        torch.testing.assert_close(chunked, one, atol=1e-6, rtol=1e-6)


def test_backward_across_sizes_and_dtypes():
    """Calls of other sizes and dtypes in between leave a call's gradients unchanged (no state kept between calls)."""

    def gradients(inputs, function=multi_scale_deformable_attention_gather):
        leaves = [tensor.clone().requires_grad_(True) for tensor in inputs]
        (function(leaves[0], SHAPES, leaves[1], leaves[2]) ** 2).sum().backward()
        return [leaf.grad for leaf in leaves]

    large = random_inputs(batch_size=3, seed=6)
    small = random_inputs(batch_size=1, num_queries=5, seed=7)
    first = gradients(large)
    small_after_large = gradients(small)
    small_float32 = gradients([tensor.float() for tensor in small])  # another dtype
    again = gradients(large)
    for one, two in zip(first, again):
        torch.testing.assert_close(two, one, atol=1e-12, rtol=0)
    for actual, expected in zip(small_after_large, gradients(small, multi_scale_deformable_attention)):
        torch.testing.assert_close(actual, expected, atol=1e-10, rtol=0)
    for actual, expected in zip(small_float32, small_after_large):
        torch.testing.assert_close(actual.double(), expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_row_dots_sparse_and_gathered_agree(monkeypatch, index_dtype):
    """The CPU's sampled matrix product and the gather used on other devices (chunked here) give the same dots."""
    from mask2former.modeling import ms_deform_attn

    generator = torch.Generator().manual_seed(5)
    table = torch.randn(40, 8, generator=generator, dtype=torch.float64)
    rows = torch.randint(0, 40, (23, 12), generator=generator).to(index_dtype)  # repeated rows included
    grad = torch.randn(23, 8, generator=generator, dtype=torch.float64)
    expected = (table[rows.long()] * grad[:, None, :]).sum(-1)
    torch.testing.assert_close(ms_deform_attn._row_dots(table, rows, grad), expected)
    monkeypatch.setattr(ms_deform_attn, "_CHUNK_ELEMENTS", 100)
    torch.testing.assert_close(ms_deform_attn._gathered_row_dots(table, rows, grad), expected)


def test_locations_across_the_map_borders_match_grid_sample():
    """Locations a quarter pixel off the pixel grid from two pixels outside the map to one beyond its far edge, so
    that every mix of taps inside and outside occurs: the zero padding of the explicit backward agrees with
    grid_sample's. (Exactly on the grid the gradient has a kink and either side is right.)"""
    value, _, weights = random_inputs(seed=6)
    generator = torch.Generator().manual_seed(6)
    # pixel coordinate c in {-1.25, -0.75, ..., size + 0.75} -> location (c + 0.5) / size
    steps = torch.randint(-3, 2 * max(max(shape) for shape in SHAPES) + 2, weights.shape + (2,), generator=generator)
    sizes = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float64).view(1, 1, 1, len(SHAPES), 1, 2)
    locations = (steps.double() / 2 + 0.25 + 0.5) / sizes
    gradients = []
    for function in (multi_scale_deformable_attention, multi_scale_deformable_attention_gather):
        leaves = [tensor.clone().requires_grad_(True) for tensor in (value, locations, weights)]
        output = function(leaves[0], SHAPES, leaves[1], leaves[2])
        (output**2).sum().backward()
        gradients.append([output.detach()] + [leaf.grad for leaf in leaves])
    for reference, fast, name in zip(*gradients, ("output", "value", "locations", "weights")):
        torch.testing.assert_close(fast, reference, atol=1e-8, rtol=1e-6, msg=name)


def test_short_softmax_matches_softmax_in_values_and_gradients():
    from mask2former.modeling.ms_deform_attn import _ShortSoftmax

    logits = (10 * torch.randn(7, 5, 12, dtype=torch.float64)).requires_grad_()
    torch.testing.assert_close(_ShortSoftmax.apply(logits), logits.softmax(-1), atol=1e-12, rtol=0)
    grad = torch.randn(7, 5, 12, dtype=torch.float64)
    torch.testing.assert_close(
        torch.autograd.grad(_ShortSoftmax.apply(logits), logits, grad)[0],
        torch.autograd.grad(logits.softmax(-1), logits, grad)[0],
        atol=1e-12, rtol=0,
    )
    assert torch.autograd.gradcheck(_ShortSoftmax.apply, (logits,))


def test_training_path_matches_inference_path_in_values_and_gradients():
    """In training both query projections run as one product and the softmax is written out; inference keeps the
    separate products and PyTorch's softmax. Values and gradients must agree."""
    torch.manual_seed(5)
    module = MultiScaleDeformableAttention(embed_dim=32, num_heads=4, num_levels=3, num_points=4).double()
    with torch.no_grad():  # non-trivial offsets and weights
        for linear in (module.sampling_offsets, module.attention_weights):
            linear.weight.normal_(0, 0.2)
    value = torch.randn(2, sum(h * w for h, w in SHAPES), 32, dtype=torch.float64)
    query = torch.randn(2, 11, 32, dtype=torch.float64, requires_grad=True)
    reference_points = torch.rand(2, 11, 3, 2, dtype=torch.float64)
    checked = [query, module.sampling_offsets.weight, module.sampling_offsets.bias, module.value_proj.weight]

    fused = module(query, reference_points, value, SHAPES)
    grad = torch.randn_like(fused)
    fused_grads = torch.autograd.grad(fused, checked, grad)
    module.attention_weights.weight.requires_grad_(False)  # -> the separate (inference) path, still differentiable
    separate = module(query, reference_points, value, SHAPES)
    torch.testing.assert_close(fused, separate, atol=1e-12, rtol=0)
    for ours, theirs in zip(fused_grads, torch.autograd.grad(separate, checked, grad)):
        torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=0)
    with torch.no_grad():
        torch.testing.assert_close(module(query, reference_points, value, SHAPES), separate, atol=1e-12, rtol=0)
