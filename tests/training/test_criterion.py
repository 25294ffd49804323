"""Mask2Former criterion: the keys and values of ``transformers``' ``get_loss_dict``, hand-computed cases, empty
targets, autocast, the distributed normalizer and target validation."""

from __future__ import annotations

import math

import pytest
import torch

from mask2former import Mask2FormerConfig
from mask2former.training import (
    Mask2FormerCriterion,
    dice_loss,
    sigmoid_bce_loss,
    validate_targets,
)
from mask2former.training import criterion as criterion_module

NUM_LABELS = 5
WEIGHTS = {"loss_cross_entropy": 2.0, "loss_mask": 5.0, "loss_dice": 5.0}


def random_predictions(seed: int = 0, batch: int = 3, queries: int = 10, size: int = 16, auxiliary: int = 2):
    generator = torch.Generator().manual_seed(seed)

    def prediction():
        return {
            "class_queries_logits": torch.randn(batch, queries, NUM_LABELS + 1, generator=generator),
            "masks_queries_logits": 3 * torch.randn(batch, queries, size, size, generator=generator),
        }

    return prediction(), [prediction() for _ in range(auxiliary)]


def random_targets(counts, seed: int = 0, image: int = 64):
    generator = torch.Generator().manual_seed(seed)
    mask_labels = [(torch.rand(n, image, image, generator=generator) > 0.6).float() for n in counts]
    class_labels = [torch.randint(0, NUM_LABELS, (n,), generator=generator) for n in counts]
    return mask_labels, class_labels


def transformers_loss_dict(last, auxiliary, mask_labels, class_labels, num_points):
    """``transformers``' criterion output weighted as ``Mask2FormerForUniversalSegmentation.get_loss_dict`` does."""
    from transformers import Mask2FormerConfig as TransformersConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    config = TransformersConfig(num_labels=NUM_LABELS, train_num_points=num_points)
    losses = Mask2FormerLoss(config, WEIGHTS)(
        last["masks_queries_logits"], last["class_queries_logits"], mask_labels, class_labels, auxiliary
    )
    for key, weight in WEIGHTS.items():
        for name in losses:
            if key in name:
                losses[name] = losses[name] * weight
    return losses


@pytest.mark.parametrize("counts", [[3, 0, 12], [0, 0, 0], [1, 4, 2]], ids=["empty-and-more-than-Q", "none", "some"])
def test_loss_dict_matches_transformers(counts):
    last, auxiliary = random_predictions(seed=len(counts) + sum(counts))
    mask_labels, class_labels = random_targets(counts)
    torch.manual_seed(0)
    expected = transformers_loss_dict(last, auxiliary, mask_labels, class_labels, num_points=400)
    torch.manual_seed(0)
    losses = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=400)(
        last["class_queries_logits"], last["masks_queries_logits"], mask_labels, class_labels, auxiliary
    )
    assert list(losses) == list(expected)  # same keys, same order: loss_mask, loss_dice, loss_cross_entropy, ..._0
    assert len(losses) == 9 and list(losses)[-1] == "loss_cross_entropy_1"
    for name, value in losses.items():
        assert value.shape == () and value.dtype == torch.float32
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=0, msg=name)
    torch.testing.assert_close(sum(losses.values()), sum(expected.values()), atol=1e-5, rtol=0)


def pixel_centre_points(monkeypatch, height: int, width: int) -> None:
    """Make the loss read every mask at all its pixel centres (exact values, no interpolation)."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    centres = torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=-1)  # (H * W, 2)

    def sample(mask_logits, *args, **kwargs):
        return centres.expand(mask_logits.shape[0], -1, -1)

    monkeypatch.setattr(criterion_module, "sample_uncertain_points", sample)


def three_masks(size: int = 16):
    masks = torch.zeros(3, size, size)
    masks[0, :8], masks[1, 8:, :4], masks[2, 8:, 4:] = 1, 1, 1
    return masks


def test_perfect_prediction_has_near_zero_loss(monkeypatch):
    pixel_centre_points(monkeypatch, 16, 16)
    masks, classes = three_masks(), torch.tensor([4, 0, 0])
    mask_logits = torch.full((1, 6, 16, 16), -30.0)
    class_logits = torch.full((1, 6, NUM_LABELS + 1), -30.0)
    class_logits[0, :, -1] = 30.0  # "no object" everywhere but in the three queries below
    for query, target in {4: 0, 1: 1, 3: 2}.items():
        mask_logits[0, query] = 60 * masks[target] - 30
        class_logits[0, query] = -30.0
        class_logits[0, query, classes[target]] = 30.0
    losses = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=256)(class_logits, mask_logits, [masks], [classes])
    for name, value in losses.items():
        assert 0 <= value < 1e-6, name


def test_uninformed_prediction_by_hand(monkeypatch):
    """Logits 0 everywhere: BCE is ln 2 at every point, dice 1 - (|A| + 1) / (n / 2 + |A| + 1), CE ln(K + 1)."""
    pixel_centre_points(monkeypatch, 16, 16)
    masks, classes = three_masks(), torch.tensor([4, 0, 0])
    criterion = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=256, class_weight=2.0, dice_weight=3.0)
    losses = criterion(
        torch.zeros(2, 6, NUM_LABELS + 1), torch.zeros(2, 6, 8, 8), [masks, masks[:1]], [classes, classes[:1]]
    )
    num_masks = 4
    areas = [128, 32, 96, 128]
    dice = sum(1 - (area + 1) / (256 / 2 + area + 1) for area in areas) / num_masks
    assert losses["loss_mask"].item() == pytest.approx(5.0 * math.log(2), abs=1e-5)
    assert losses["loss_dice"].item() == pytest.approx(3.0 * dice, abs=1e-5)
    assert losses["loss_cross_entropy"].item() == pytest.approx(2.0 * math.log(NUM_LABELS + 1), abs=1e-5)


def test_pointwise_losses_by_hand():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [30.0, 30.0, -30.0, -30.0]])
    targets = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    # dice per mask: 1 - (2 * 1 + 1) / (2 + 2 + 1) = 0.4 and ~0; summed and divided by 2
    assert dice_loss(logits, targets, 2.0).item() == pytest.approx(0.2, abs=1e-6)
    assert sigmoid_bce_loss(logits, targets, 2.0).item() == pytest.approx(math.log(2) / 2, abs=1e-6)


def test_no_targets_every_query_is_no_object():
    last, _ = random_predictions(seed=5, batch=2, auxiliary=0)
    class_logits = last["class_queries_logits"].requires_grad_()
    mask_logits = last["masks_queries_logits"].requires_grad_()
    empty_masks, empty_classes = [torch.zeros(0, 64, 64)] * 2, [torch.zeros(0, dtype=torch.long)] * 2
    losses = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=100)(
        class_logits, mask_logits, empty_masks, empty_classes
    )
    assert losses["loss_mask"].item() == 0 and losses["loss_dice"].item() == 0
    no_object = torch.nn.functional.cross_entropy(class_logits.flatten(0, 1), torch.full((20,), NUM_LABELS))
    torch.testing.assert_close(losses["loss_cross_entropy"], 2.0 * no_object)
    sum(losses.values()).backward()
    assert torch.isfinite(class_logits.grad).all() and class_logits.grad.abs().sum() > 0
    assert torch.isfinite(mask_logits.grad).all() and mask_logits.grad.abs().sum() == 0


def test_autocast_bfloat16_losses_are_float32_and_close():
    last, auxiliary = random_predictions(seed=6, auxiliary=1)
    mask_labels, class_labels = random_targets([2, 0, 5])
    criterion = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=300)
    low = {name: value.bfloat16() for name, value in last.items()}
    low_auxiliary = [{name: value.bfloat16() for name, value in prediction.items()} for prediction in auxiliary]
    torch.manual_seed(0)
    expected = criterion(
        low["class_queries_logits"].float(),
        low["masks_queries_logits"].float(),
        mask_labels,
        class_labels,
        [{name: value.float() for name, value in prediction.items()} for prediction in low_auxiliary],
    )
    torch.manual_seed(0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = criterion(
            low["class_queries_logits"], low["masks_queries_logits"], mask_labels, class_labels, low_auxiliary
        )
    for name, value in losses.items():
        assert value.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(value, expected[name], atol=1e-5, rtol=0)


def test_number_of_masks_is_averaged_over_processes(tmp_path):
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        assert criterion_module._num_masks([torch.zeros(3), torch.zeros(4)], torch.device("cpu")).item() == 7
        assert criterion_module._num_masks([torch.zeros(0)], torch.device("cpu")).item() == 1  # clamped
    finally:
        dist.destroy_process_group()


def test_from_config():
    config = Mask2FormerConfig(
        num_labels=7, class_weight=1.5, dice_weight=4.0, train_num_points=99, oversample_ratio=2.0, no_object_weight=0.2
    )
    criterion = Mask2FormerCriterion.from_config(config)
    assert (criterion.num_labels, criterion.class_weight, criterion.mask_weight, criterion.dice_weight) == (
        7,
        1.5,
        5.0,
        4.0,
    )
    assert (criterion.num_points, criterion.oversample_ratio, criterion.importance_sample_ratio) == (99, 2.0, 0.75)
    assert criterion.no_object_weight == 0.2
    assert criterion.matcher.class_weight == 1.5 and criterion.matcher.num_points == 99


MASKS = [torch.zeros(2, 8, 8), torch.zeros(0, 8, 8)]
CLASSES = [torch.tensor([0, 3]), torch.zeros(0, dtype=torch.long)]


@pytest.mark.parametrize(
    "mask_labels, class_labels, error, message",
    [
        (MASKS, None, ValueError, "mask_labels was given without class_labels"),
        (None, CLASSES, ValueError, "class_labels was given without mask_labels"),
        (MASKS[0], CLASSES, TypeError, "mask_labels must be a list of B=2 tensors, got Tensor"),
        (MASKS[:1], CLASSES, ValueError, r"mask_labels must have one entry per image \(B=2\), got 1"),
        (MASKS, [CLASSES[0], [1]], TypeError, r"class_labels\[1\] must be a torch.Tensor, got list"),
        (MASKS, [CLASSES[0], torch.zeros(0)], ValueError, r"class_labels\[1\] must hold integer class ids"),
        (MASKS, [CLASSES[0], torch.zeros(1, 1, dtype=torch.long)], ValueError, r"class_labels\[1\] must have shape"),
        (MASKS, [torch.tensor([0, 5]), CLASSES[1]], ValueError, r"class_labels\[0\] must hold class ids in \[0, 5\)"),
        (MASKS, [torch.tensor([-1, 2]), CLASSES[1]], ValueError, r"class_labels\[0\] .* got \[-1\]"),
        ([MASKS[0], torch.zeros(8, 8)], CLASSES, ValueError, r"mask_labels\[1\] must have shape \(N, H, W\)"),
        ([MASKS[0], torch.zeros(1, 8, 8)], CLASSES, ValueError, r"mask_labels\[1\] has 1 masks but class_labels\[1\]"),
        ([MASKS[0], torch.zeros(0, 8, 9)], CLASSES, ValueError, r"mask_labels\[1\] must have shape \(N, 8, 8\)"),
    ],
)
def test_bad_targets(mask_labels, class_labels, error, message):
    with pytest.raises(error, match=message):
        validate_targets(mask_labels, class_labels, batch_size=2, num_labels=5)


def test_good_targets_pass():
    validate_targets(MASKS, CLASSES, batch_size=2, num_labels=5, image_size=(8, 8))
    with pytest.raises(ValueError, match=r"mask_labels\[0\] must have shape \(N, 16, 16\) \(pixel_values' size\)"):
        validate_targets(MASKS, CLASSES, batch_size=2, num_labels=5, image_size=(16, 16))


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_gradient_through_matched_masks_only_equals_the_dense_one(layout):
    """With the mask embeddings and features, the losses are the same floats and the gradients of the embeddings and
    features those of indexing the full (B, Q, h, w) logits, for the last and the auxiliary predictions (counts include
    an image without targets); also for channels-last features (the pixel decoder's in training)."""
    generator = torch.Generator().manual_seed(8)
    batch, queries, channels, size, num_predictions = 3, 10, 6, 16, 3
    class_logits = torch.randn(num_predictions, batch, queries, NUM_LABELS + 1, generator=generator)
    embeddings = torch.randn(num_predictions, batch, queries, channels, generator=generator)
    features = torch.randn(batch, channels, size, size, generator=generator)
    mask_labels, class_labels = random_targets([3, 0, 5], seed=8)
    results = []
    for factored in (False, True):
        leaves = [embeddings.clone().requires_grad_(True), features.contiguous(memory_format=layout).requires_grad_(True)]
        logits = [torch.einsum("bqc,bchw->bqhw", leaves[0][index], leaves[1]) for index in range(num_predictions)]
        predictions = [
            {"class_queries_logits": class_logits[index], "masks_queries_logits": logits[index]}
            for index in range(num_predictions)
        ]
        if factored:
            for index, prediction in enumerate(predictions):
                prediction.update(mask_embeddings=leaves[0][index], mask_features=leaves[1])
        criterion = Mask2FormerCriterion(num_labels=NUM_LABELS, num_points=50)
        torch.manual_seed(0)
        last, *auxiliary = predictions[::-1]
        losses = criterion(
            last.pop("class_queries_logits"), last.pop("masks_queries_logits"), mask_labels, class_labels,
            auxiliary_predictions=auxiliary, **last,
        )  # fmt: skip
        assert len(losses) == 3 * num_predictions
        sum(losses.values()).backward()
        results.append((losses, [leaf.grad for leaf in leaves]))
    (dense_losses, dense_grads), (sparse_losses, sparse_grads) = results
    for name, value in dense_losses.items():
        assert torch.equal(sparse_losses[name], value), name
    for dense, sparse in zip(dense_grads, sparse_grads):
        assert dense.abs().sum() > 0
        torch.testing.assert_close(sparse, dense, atol=1e-6, rtol=1e-5)
    assert all(dense_grads[0][index].abs().sum() > 0 for index in range(num_predictions))
