"""Point sampling: exact reads at pixel centres, importance sampling, and the same points as ``transformers``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mask2former.training import point_sample, sample_uncertain_points


def pixel_centres(height: int, width: int) -> torch.Tensor:
    """(1, H * W, 2) the (x, y) centres of all pixels, row by row, in [0, 1] coordinates."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([(xs.flatten() + 0.5) / width, (ys.flatten() + 0.5) / height], dim=-1)[None]


def test_point_sample_reads_pixel_centres_exactly():
    features = torch.randn(2, 3, 5, 7)
    points = pixel_centres(5, 7).expand(2, -1, -1)
    sampled = point_sample(features, points)  # (2, 3, 35)
    assert sampled.shape == (2, 3, 35)
    torch.testing.assert_close(sampled, features.flatten(2), atol=1e-6, rtol=0)


def test_point_sample_interpolates_bilinearly_between_centres():
    features = torch.tensor([[[[0.0, 4.0], [8.0, 12.0]]]])  # (1, 1, 2, 2), centres at 0.25 and 0.75
    points = torch.tensor([[[0.5, 0.25], [0.5, 0.5], [0.25, 0.625]]])
    torch.testing.assert_close(point_sample(features, points), torch.tensor([[[2.0, 6.0, 6.0]]]))


def test_point_sample_matches_transformers():
    from transformers.models.mask2former.modeling_mask2former import sample_point

    features, points = torch.randn(4, 2, 9, 11), torch.rand(4, 50, 2)
    expected = sample_point(features, points, align_corners=False)
    torch.testing.assert_close(point_sample(features, points), expected, atol=0, rtol=0)


def test_point_sample_bfloat16_features():
    features = torch.randn(1, 1, 8, 8)
    sampled = point_sample(features.bfloat16(), pixel_centres(8, 8))
    assert sampled.dtype == torch.bfloat16
    torch.testing.assert_close(sampled.float(), features.bfloat16().float().flatten(2))


def test_uncertain_points_lie_where_the_logit_is_near_zero():
    logits = torch.full((2, 32, 32), 10.0)
    logits[:, :, 8:24] = 0.0  # a band of uncertain pixels, half the image
    logits[1] *= -1
    torch.manual_seed(0)
    points = sample_uncertain_points(logits, 100, oversample_ratio=3.0, importance_sample_ratio=0.5)
    assert points.shape == (2, 100, 2) and points.dtype == torch.float32
    assert ((points >= 0) & (points <= 1)).all()
    # ~150 of the 300 candidates fall between the band's first and last pixel centres, where the logit is exactly 0:
    # the 50 importance-sampled points are all there (the image border, read with zero padding, is less uncertain).
    chosen = points[:, :50]
    assert (point_sample(logits[:, None], chosen) == 0).all()
    x = chosen[..., 0] * 32
    assert ((x >= 8.5) & (x <= 23.5)).all()
    others = point_sample(logits[:, None], points[:, 50:])  # the uniform half lands anywhere
    assert (others != 0).any()


def test_uncertain_points_match_transformers():
    from transformers import Mask2FormerConfig
    from transformers.models.mask2former.modeling_mask2former import Mask2FormerLoss

    reference = Mask2FormerLoss(Mask2FormerConfig(num_labels=3), {})
    logits = torch.randn(5, 16, 16)
    for num_points, ratio, importance in [(200, 3.0, 0.75), (101, 2.5, 1.0), (64, 1.0, 0.0)]:
        torch.manual_seed(1)
        expected = reference.sample_points_using_uncertainty(
            logits[:, None], reference.calculate_uncertainty, num_points, ratio, importance
        )
        torch.manual_seed(1)
        points = sample_uncertain_points(logits, num_points, ratio, importance)
        # The same points; the uncertain ones (first) may come in another order, as the loss is a mean over points.
        num_uncertain = int(importance * num_points)
        torch.testing.assert_close(points[:, num_uncertain:], expected[:, num_uncertain:], atol=0, rtol=0)
        torch.testing.assert_close(
            _sorted_points(points[:, :num_uncertain]), _sorted_points(expected[:, :num_uncertain]), atol=0, rtol=0
        )


def _sorted_points(points: torch.Tensor) -> torch.Tensor:
    """(R, P, 2) -> the same points, sorted by x then y within each mask."""
    order = np.lexsort((points[..., 1].numpy(), points[..., 0].numpy()), axis=-1)
    return torch.from_numpy(np.take_along_axis(points.numpy(), order[..., None], axis=1))


def test_no_masks_gives_no_points():
    points = sample_uncertain_points(torch.zeros(0, 8, 8), 40)
    assert points.shape == (0, 40, 2)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"oversample_ratio": 0.5}, "oversample_ratio must be >= 1"),
        ({"importance_sample_ratio": 1.5}, r"importance_sample_ratio must be in \[0, 1\]"),
    ],
)
def test_bad_ratios(options, message):
    with pytest.raises(ValueError, match=message):
        sample_uncertain_points(torch.zeros(1, 8, 8), 10, **options)


@pytest.mark.parametrize("size", [(16, 16), (7, 12)])
def test_sampling_many_maps_at_shared_points_matches_grid_sample(size):
    """The matcher's embedding_bag sampling against grid_sample, points on the borders and outside included."""
    from mask2former.training.point_sampling import sample_maps_at_points

    generator = torch.Generator().manual_seed(3)
    maps = 3 * torch.randn(20, *size, generator=generator)
    points = torch.rand(500, 2, generator=generator) * 1.2 - 0.1  # some outside [0, 1]
    points[:4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5 / size[1], 0.5 / size[0]], [1.0, 0.0]])
    expected = point_sample(maps[None], points[None])[0]  # (C, P)
    actual = sample_maps_at_points(maps, points)
    assert actual.shape == (20, 500)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5)
