"""The decoder's masked attention: the written-out training path against PyTorch's fused kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.transformer_decoder import Attention, _masked_attention


@pytest.mark.parametrize("mask_heads", [1, 4])
def test_masked_attention_matches_the_fused_kernel_with_a_query_that_may_attend_nowhere(mask_heads):
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, n, 8, generator=generator, dtype=torch.float64, requires_grad=True) for n in (7, 9, 9))
    mask = torch.rand(2, mask_heads, 7, 9, generator=generator) > 0.5
    mask[0, 0, 3] = False  # the fused kernel gives such a query zeros
    ours, reference = _masked_attention(q, k, v, mask, 0.0), F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(ours, reference, atol=1e-12, rtol=0)
    assert torch.equal(ours[0, 0, 3], torch.zeros(8, dtype=torch.float64))
    grad = torch.randn_like(ours)
    for mine, theirs in zip(torch.autograd.grad(ours, [q, k, v], grad), torch.autograd.grad(reference, [q, k, v], grad)):
        torch.testing.assert_close(mine, theirs, atol=1e-12, rtol=0)


def test_attention_takes_the_written_out_path_only_with_gradients_and_a_mask(monkeypatch):
    from mask2former.modeling import transformer_decoder

    calls = []
    monkeypatch.setattr(transformer_decoder, "_masked_attention", lambda *args: calls.append(1) or _masked_attention(*args))
    torch.manual_seed(1)
    attention = Attention(dim=16, num_heads=2)
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 12, 16)
    mask = torch.rand(2, 1, 5, 12) > 0.3
    trained = attention(query, memory, memory, mask)
    with torch.no_grad():
        inferred = attention(query, memory, memory, mask)
        attention(query, memory, memory)
    assert len(calls) == 1
    torch.testing.assert_close(trained, inferred, atol=1e-6, rtol=0)
