"""Augmentations keep images and label maps aligned, pad with the ignore value, and are reproducible."""

import pytest
import torch

from mask2former.training.augment import (
    IMAGENET_MEAN_RGB,
    TrainAugmentation,
    hflip,
    nearest_indices,
    resize,
)


def blocks(height=48, width=64, block=16):
    """A label map of 16x16 blocks with distinct ids and an image whose pixels encode the label: R = 4 x label."""
    rows = torch.arange(height)[:, None] // block
    columns = torch.arange(width)[None, :] // block
    label = rows * (width // block) + columns  # (H, W), ids 0..11
    image = torch.stack([label * 4, 255 - label * 4, torch.full_like(label, 50)]).to(torch.uint8)  # (3, H, W)
    return image, label


def agreement(image, label, ignore_index=255):
    """Share of the interior pixels (labelled, with the same label on their 8 neighbours) whose image value decodes
    to their label; bilinear blur only reaches pixels next to a border, so with aligned maps this is 1."""
    padded = torch.nn.functional.pad(label[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
    windows = padded.unfold(0, 3, 1).unfold(1, 3, 1)  # (H, W, 3, 3)
    interior = (windows == label[..., None, None]).all(-1).all(-1) & (label != ignore_index)
    decoded = (image[0].float() / 4).round().long()
    assert interior.any()
    return (decoded[interior] == label[interior]).float().mean().item()


def test_flip_flips_image_and_map():
    image, label = blocks()
    flipped_image, flipped_label = hflip(image, label)
    assert torch.equal(flipped_label[:, 0], label[:, -1])
    assert torch.equal(flipped_image[:, :, 0], image[:, :, -1])
    augment = TrainAugmentation(mode="none", flip_prob=1.0)
    out_image, out_label, valid = augment(image, label, torch.Generator().manual_seed(0))
    assert torch.equal(out_label, label.flip(-1)) and torch.equal(out_image, image.flip(-1)) and valid.all()


@pytest.mark.parametrize("mode", ["resize-crop", "lsj"])
def test_crop_and_resize_keep_alignment(mode):
    image, label = blocks()
    augment = TrainAugmentation(mode=mode, crop_size=32, scale_range=(0.5, 2.0), flip_prob=0.5)
    for seed in range(6):
        out_image, out_label, valid = augment(image, label, torch.Generator().manual_seed(seed))
        assert out_image.shape == (3, 32, 32) and out_label.shape == (32, 32)
        assert agreement(out_image, out_label) == 1.0
        assert torch.equal(out_label[~valid], torch.full_like(out_label[~valid], 255))
        assert (out_label[valid] != 255).all()
        padded = out_image.permute(1, 2, 0)[~valid]
        assert torch.equal(padded, torch.tensor(IMAGENET_MEAN_RGB, dtype=torch.uint8).expand_as(padded))


def test_scale_one_crop_is_exact():
    image, label = blocks()
    augment = TrainAugmentation(mode="resize-crop", crop_size=32, scale_range=(1.5, 1.5), flip_prob=0.0)
    # shortest edge 48 -> 32 x 1.5 = 48: no resize, a pure crop
    out_image, out_label, valid = augment(image, label, torch.Generator().manual_seed(3))
    assert valid.all() and agreement(out_image, out_label) == 1.0


def test_lsj_fits_inside_the_scaled_size():
    image, label = blocks(height=40, width=80)
    augment = TrainAugmentation(mode="lsj", crop_size=64, scale_range=(0.5, 0.5), flip_prob=0.0)
    _, out_label, valid = augment(image, label, torch.Generator().manual_seed(0))
    # fit 40x80 into 32x32: 16x32, then padded to 64x64
    assert valid.sum(0).max() == 16 and valid.sum(1).max() == 32 and out_label.shape == (64, 64)


def test_seeded_and_varied():
    image, label = blocks()
    augment = TrainAugmentation(mode="resize-crop", crop_size=32, color_jitter=0.4)
    first = augment(image, label, torch.Generator().manual_seed(5))
    again = augment(image, label, torch.Generator().manual_seed(5))
    other = augment(image, label, torch.Generator().manual_seed(6))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_color_jitter_leaves_the_map():
    image, label = blocks()
    augment = TrainAugmentation(mode="none", flip_prob=0.0, color_jitter=0.5)
    out_image, out_label, _ = augment(image, label, torch.Generator().manual_seed(1))
    assert torch.equal(out_label, label) and not torch.equal(out_image, image)


def test_nearest_matches_the_bilinear_grid():
    assert nearest_indices(4, 8).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    assert nearest_indices(8, 4).tolist() == [1, 3, 5, 7]
    image, label = blocks()
    resized_image, resized_label = resize(image, label, (96, 128))
    assert agreement(resized_image, resized_label) == 1.0
    shrunk_image, shrunk_label = resize(image, label, (32, 40))
    assert agreement(shrunk_image, shrunk_label) == 1.0


def test_bad_inputs():
    image, label = blocks()
    augment = TrainAugmentation()
    with pytest.raises(ValueError, match="label map is 63x48"):
        augment(image, label[:, :63], torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        augment(image.float(), label, torch.Generator())
    with pytest.raises(ValueError, match="mode"):
        TrainAugmentation(mode="mosaic")
