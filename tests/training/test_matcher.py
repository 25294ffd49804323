"""Hungarian matcher: same assignments as ``transformers``, hand-checkable cases, invalid values, float32 costs."""

from __future__ import annotations

import pytest
import torch

from mask2former.training import HungarianMatcher, pairwise_dice, pairwise_sigmoid_bce

NUM_LABELS = 5


def random_batch(seed: int = 0, queries: int = 10, size: int = 16, image: int = 48):
    """Logits of B=4 images and targets with 3, 0 (no object), 12 (> Q) and 1 masks."""
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(4, queries, NUM_LABELS + 1, generator=generator)
    mask_logits = 3 * torch.randn(4, queries, size, size, generator=generator)
    counts = [3, 0, 12, 1]
    mask_labels = [(torch.rand(n, image, image, generator=generator) > 0.6).float() for n in counts]
    class_labels = [torch.randint(0, NUM_LABELS, (n,), generator=generator) for n in counts]
    return class_logits, mask_logits, mask_labels, class_labels


def transformers_matcher(**weights):
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerHungarianMatcher

    return Mask2FormerHungarianMatcher(**weights)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_assignments_match_transformers(seed):
    class_logits, mask_logits, mask_labels, class_labels = random_batch(seed)
    reference = transformers_matcher(cost_class=2.0, cost_mask=5.0, cost_dice=5.0, num_points=300)
    torch.manual_seed(seed)
    expected = reference(mask_logits, class_logits, mask_labels, class_labels)
    torch.manual_seed(seed)
    matches = HungarianMatcher(num_points=300)(class_logits, mask_logits, mask_labels, class_labels)
    assert len(matches) == len(expected) == 4
    for (queries, targets), (their_queries, their_targets), labels in zip(matches, expected, class_labels):
        assert queries.dtype == targets.dtype == torch.int64
        assert torch.equal(queries, their_queries) and torch.equal(targets, their_targets)
        assert len(queries) == min(10, len(labels))  # DETR's invariant
        assert torch.equal(queries, queries.sort().values)


def test_cost_terms_match_transformers():
    from transformers.models.mask2former.modeling_mask2former import (
        pair_wise_dice_loss,
        pair_wise_sigmoid_cross_entropy_loss,
    )

    logits, targets = 4 * torch.randn(10, 200), (torch.rand(7, 200) > 0.5).float()
    torch.testing.assert_close(pairwise_dice(logits, targets), pair_wise_dice_loss(logits, targets), atol=1e-6, rtol=0)
    torch.testing.assert_close(
        pairwise_sigmoid_bce(logits, targets), pair_wise_sigmoid_cross_entropy_loss(logits, targets), atol=1e-6, rtol=0
    )


def test_pairwise_costs_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [20.0, 20.0, -20.0, -20.0]])  # p = 0.5 / ~(1, 1, 0, 0)
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    dice = pairwise_dice(logits, targets)
    # 1 - (2 * intersection + 1) / (sum p + sum target + 1): query 0 -> 1 - 3/5, 1 - 5/7; query 1 -> 1 - 5/5, 1 - 5/7
    torch.testing.assert_close(dice, torch.tensor([[0.4, 2 / 7], [0.0, 2 / 7]]), atol=1e-6, rtol=0)
    bce = pairwise_sigmoid_bce(logits, targets)
    log2 = torch.log(torch.tensor(2.0))
    torch.testing.assert_close(bce, torch.tensor([[log2, log2], [0.0, 10.0]]), atol=1e-6, rtol=0)


def test_perfect_queries_are_found():
    image = 32
    masks = torch.zeros(3, image, image)
    masks[0, :16], masks[1, 16:, :16], masks[2, 16:, 16:] = 1, 1, 1
    classes = torch.tensor([4, 1, 1])
    owner = {7: 0, 2: 1, 5: 2}  # query -> target it predicts perfectly
    mask_logits = torch.full((1, 10, image, image), -20.0)
    class_logits = torch.zeros(1, 10, NUM_LABELS + 1)
    class_logits[0, :, -1] = 5.0
    for query, target in owner.items():
        mask_logits[0, query] = 40 * masks[target] - 20
        class_logits[0, query, classes[target]] = 10.0
    ((queries, targets),) = HungarianMatcher(num_points=500)(class_logits, mask_logits, [masks], [classes])
    assert queries.tolist() == [2, 5, 7] and targets.tolist() == [1, 2, 0]


def test_no_targets_at_all():
    class_logits, mask_logits = torch.randn(2, 10, 6), torch.randn(2, 10, 8, 8)
    empty = [torch.zeros(0, 32, 32), torch.zeros(0, 32, 32)]
    matches = HungarianMatcher(num_points=50)(class_logits, mask_logits, empty, [torch.zeros(0, dtype=torch.long)] * 2)
    assert all(len(queries) == len(targets) == 0 for queries, targets in matches)


def test_invalid_values_are_matched_last():
    class_logits, mask_logits, mask_labels, class_labels = random_batch(3)
    mask_logits[0, :4] = float("nan")  # 4 broken queries, 3 targets and 6 valid queries in image 0
    class_logits[3, 1] = float("inf")
    matches = HungarianMatcher(num_points=200)(class_logits, mask_logits, mask_labels, class_labels)
    assert len(matches[0][0]) == 3 and (matches[0][0] >= 4).all()
    assert 1 not in matches[3][0].tolist()


def test_costs_are_float32_under_autocast():
    class_logits, mask_logits, mask_labels, class_labels = random_batch(4)
    matcher = HungarianMatcher(num_points=300)
    torch.manual_seed(0)
    expected = matcher(class_logits.bfloat16().float(), mask_logits.bfloat16().float(), mask_labels, class_labels)
    cost = matcher.cost_matrix(class_logits[0].bfloat16(), mask_logits[0].bfloat16(), mask_labels[0], class_labels[0])
    assert cost.dtype == torch.float32 and cost.shape == (10, 3)
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        matches = matcher(class_logits.bfloat16(), mask_logits.bfloat16(), mask_labels, class_labels)
    for (queries, targets), (their_queries, their_targets) in zip(matches, expected):
        assert torch.equal(queries, their_queries) and torch.equal(targets, their_targets)


def test_all_weights_zero_is_an_error():
    with pytest.raises(ValueError, match="must be non-zero"):
        HungarianMatcher(class_weight=0, mask_weight=0, dice_weight=0)
