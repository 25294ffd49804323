"""Post-processors: parity with ``transformers`` where it is right, the fixed bugs where it is not, our options.

The parity inputs are random but shaped like a model's: ``smooth`` outputs (a partition of the image into regions,
each predicted by a confident query, weaker duplicate queries on shifted regions, "no object" queries with blobs;
overlapping masks) take our bound-based shortcuts, ``noise`` outputs (i.i.d. logits) the dense computation; each is
also forced through the other path.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mask2former.modeling.outputs import Mask2FormerForUniversalSegmentationOutput
from mask2former.processing import postprocess
from mask2former.processing.postprocess import (
    post_process_instance_segmentation,
    post_process_panoptic_segmentation,
    post_process_semantic_segmentation,
)

NUM_CLASSES = 6
TARGETS = {"none": None, "480x640": [(480, 640), (480, 640)], "per-image": [(50, 70), (33, 41)]}


@pytest.fixture(scope="module")
def processor():
    transformers = pytest.importorskip("transformers")
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # the torchvision fallback notice and the label_ids_to_fuse warning
    return transformers.Mask2FormerImageProcessor()


@pytest.fixture(params=["sparse", "dense"])
def path(request, monkeypatch):
    """Force our exact-per-pixel shortcuts (sparse) or the dense computation."""
    monkeypatch.setattr(postprocess, "_SPARSE_LIMIT", 1.0 if request.param == "sparse" else -1.0)
    return request.param


@pytest.fixture(params=["sparse", "sparse, band", "dense"])
def panoptic_path(request, monkeypatch):
    """``path``, and for the shortcuts both ways of counting exact own areas: on a box or on a band."""
    monkeypatch.setattr(postprocess, "_SPARSE_LIMIT", -1.0 if request.param == "dense" else 1.0)
    monkeypatch.setattr(postprocess, "_BOX_PIXELS", -(10**9) if request.param == "sparse, band" else 10**9)
    return request.param


def smooth_outputs(seed: int, batch: int = 2, size: tuple[int, int] = (24, 32)) -> dict[str, torch.Tensor]:
    """Model-like outputs: 6 region queries, 3 duplicates, 3 "no object" blobs; classes 0..5, 6 = no object."""
    generator = torch.Generator().manual_seed(seed)
    height, width = size
    grid = torch.stack(torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij"), -1).float()
    class_logits, mask_logits = [], []
    for _ in range(batch):
        centers = torch.rand(6, 2, generator=generator) * torch.tensor([height, width])
        distance = (grid[None] - centers[:, None, None]).norm(dim=-1)  # (6, h, w)
        others = torch.stack([torch.cat([distance[:k], distance[k + 1 :]]).amin(0) for k in range(6)])
        regions = 1.5 * (others - distance)  # positive inside each query's region
        duplicates = regions[:3].roll(shifts=(1, 2), dims=(1, 2)) * 0.8
        radii = 2 + torch.rand(3, generator=generator) * 6
        blob_centers = torch.rand(3, 2, generator=generator) * torch.tensor([height, width])
        blobs = 2.0 * (radii[:, None, None] - (grid[None] - blob_centers[:, None, None]).norm(dim=-1))
        mask_logits.append(torch.cat([regions, duplicates, blobs]))
        logits = torch.randn(12, NUM_CLASSES + 1, generator=generator)
        labels = torch.randint(0, NUM_CLASSES, (6,), generator=generator)
        logits[torch.arange(6), labels] += 7
        logits[6 + torch.arange(3), labels[:3]] += torch.tensor([1.5, 2.5, 3.5])
        logits[9:, -1] += 6
        class_logits.append(logits)
    return {"class_queries_logits": torch.stack(class_logits), "masks_queries_logits": torch.stack(mask_logits)}


def noise_outputs(seed: int, batch: int = 2, size: tuple[int, int] = (24, 32)) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    class_logits = torch.randn(batch, 12, NUM_CLASSES + 1, generator=generator) * 3
    return {
        "class_queries_logits": class_logits,
        "masks_queries_logits": torch.randn(batch, 12, *size, generator=generator) * 3,
    }


OUTPUTS = {"smooth": smooth_outputs, "noise": noise_outputs}


def as_object(outputs: dict) -> SimpleNamespace:
    return SimpleNamespace(**outputs)


def assert_same_segments(ours: list[dict], theirs: list[dict]) -> None:
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs):
        assert [{k: v for k, v in s.items() if k != "score"} for s in mine] == [
            {k: v for k, v in s.items() if k != "score"} for s in reference
        ]
        np.testing.assert_allclose([s["score"] for s in mine], [s["score"] for s in reference], atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------------------------------------------------
# Parity with transformers
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", OUTPUTS)
def test_semantic_matches_transformers(processor, path, kind, target):
    outputs = OUTPUTS[kind](seed=0)
    ours = post_process_semantic_segmentation(outputs, target_sizes=TARGETS[target])
    theirs = processor.post_process_semantic_segmentation(as_object(outputs), target_sizes=TARGETS[target])
    for mine, reference in zip(ours, theirs):
        assert mine.dtype == torch.long
        assert torch.equal(mine, reference)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("kind", OUTPUTS)
def test_instance_matches_transformers(processor, kind, threshold, target):
    """transformers ignores overlap_mask_area_threshold: 0 (keep every instance) is its behaviour."""
    outputs = OUTPUTS[kind](seed=1)
    ours = post_process_instance_segmentation(
        outputs, threshold=threshold, overlap_mask_area_threshold=0.0, target_sizes=TARGETS[target]
    )
    theirs = processor.post_process_instance_segmentation(
        as_object(outputs), threshold=threshold, target_sizes=TARGETS[target]
    )
    for mine, reference in zip(ours, theirs):
        assert mine["segmentation"].dtype == torch.long
        assert torch.equal(mine["segmentation"], reference["segmentation"].long())
    assert_same_segments([r["segments_info"] for r in ours], [r["segments_info"] for r in theirs])
    if threshold < 0.8:
        assert all(len(r["segments_info"]) >= 2 for r in ours)  # the comparison is not vacuous


@pytest.mark.parametrize("target", ["none", "per-image"])
@pytest.mark.parametrize("kind", OUTPUTS)
def test_instance_binary_maps_match_transformers(processor, kind, target):
    outputs = OUTPUTS[kind](seed=2)
    ours = post_process_instance_segmentation(
        outputs, threshold=0.3, overlap_mask_area_threshold=0.0, target_sizes=TARGETS[target], return_binary_maps=True
    )
    theirs = processor.post_process_instance_segmentation(
        as_object(outputs), threshold=0.3, target_sizes=TARGETS[target], return_binary_maps=True
    )
    for mine, reference in zip(ours, theirs):
        assert mine["segmentation"].dtype == torch.bool
        assert mine["segmentation"].shape[0] == len(mine["segments_info"]) >= 2
        assert torch.equal(mine["segmentation"], reference["segmentation"].bool())
    assert_same_segments([r["segments_info"] for r in ours], [r["segments_info"] for r in theirs])


def decode_transformers_rle(runs: list, height: int, width: int) -> np.ndarray:
    """transformers' format: row-major (1-based start, length) pairs."""
    flat = np.zeros(height * width, dtype=bool)
    for start, length in zip(runs[::2], runs[1::2]):
        flat[int(start) - 1 : int(start) - 1 + int(length)] = True
    return flat.reshape(height, width)


def test_coco_rle_decodes_to_the_same_masks_as_transformers_rle(processor):
    """Ours: one COCO RLE per instance (its whole mask). transformers: its own run-length format, one per distinct
    value of the painted map, background included. Painting our decoded masks in order gives their map."""
    from pycocotools import mask as mask_utils

    outputs = smooth_outputs(seed=3)
    target = TARGETS["per-image"]
    ours = post_process_instance_segmentation(
        outputs, threshold=0.3, overlap_mask_area_threshold=0.0, target_sizes=target, return_coco_annotation=True
    )
    binary = post_process_instance_segmentation(
        outputs, threshold=0.3, overlap_mask_area_threshold=0.0, target_sizes=target, return_binary_maps=True
    )
    theirs = processor.post_process_instance_segmentation(
        as_object(outputs), threshold=0.3, target_sizes=target, return_coco_annotation=True
    )
    their_maps = processor.post_process_instance_segmentation(as_object(outputs), threshold=0.3, target_sizes=target)
    for mine, masks, reference, their_map, (height, width) in zip(ours, binary, theirs, their_maps, target):
        rles = mine["segmentation"]
        assert len(rles) == len(mine["segments_info"]) >= 2
        assert all(set(rle) == {"size", "counts"} and rle["size"] == [height, width] for rle in rles)
        assert all(isinstance(rle["counts"], str) for rle in rles)  # JSON-ready
        decoded = mask_utils.decode(rles)  # (H, W, N) uint8
        assert np.array_equal(decoded.transpose(2, 0, 1).astype(bool), masks["segmentation"].numpy())
        painted = np.full((height, width), -1)
        for index in range(decoded.shape[-1]):
            painted[decoded[..., index] == 1] = index
        # Their RLE list follows the sorted distinct values of their map; it is not COCO's format.
        values = torch.unique(their_map["segmentation"]).long().tolist()
        assert len(reference["segmentation"]) == len(values) and isinstance(reference["segmentation"][0], list)
        for value, runs in zip(values, reference["segmentation"]):
            assert np.array_equal(decode_transformers_rle(runs, height, width), painted == value)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.8])
@pytest.mark.parametrize("kind", OUTPUTS)
def test_panoptic_matches_transformers(processor, panoptic_path, kind, threshold, target):
    outputs = OUTPUTS[kind](seed=4)
    # Fuse the labels predicted by exactly one kept query: fusion then cannot trigger transformers' id bug.
    probabilities, labels = outputs["class_queries_logits"].softmax(-1).max(-1)
    kept = labels[(labels != NUM_CLASSES) & (probabilities > threshold)].tolist()
    fuse = {label for label in kept if kept.count(label) == 1}
    for label_ids_to_fuse in (None, fuse):
        ours = post_process_panoptic_segmentation(
            outputs, threshold=threshold, label_ids_to_fuse=label_ids_to_fuse, target_sizes=TARGETS[target]
        )
        theirs = processor.post_process_panoptic_segmentation(
            as_object(outputs), threshold=threshold, label_ids_to_fuse=label_ids_to_fuse, target_sizes=TARGETS[target]
        )
        for mine, reference in zip(ours, theirs):
            assert mine["segmentation"].dtype == torch.long
            assert torch.equal(mine["segmentation"], reference["segmentation"].long())
        assert_same_segments([r["segments_info"] for r in ours], [r["segments_info"] for r in theirs])
    if kind == "smooth":
        assert all(len(r["segments_info"]) >= 3 for r in ours)  # the comparison is not vacuous
        assert any(s["was_fused"] for r in ours for s in r["segments_info"])


@pytest.mark.parametrize("target", ["none", "480x640"])
def test_steep_masks_match_transformers(processor, panoptic_path, target):
    """Mask logits down to about -400: sigmoids far in float32's subnormal range, which our bounds keep out of."""
    outputs = smooth_outputs(seed=5)
    outputs["masks_queries_logits"] = outputs["masks_queries_logits"] * 5
    assert float(outputs["masks_queries_logits"].min()) < -200
    ours = post_process_semantic_segmentation(outputs, target_sizes=TARGETS[target])
    theirs = processor.post_process_semantic_segmentation(as_object(outputs), target_sizes=TARGETS[target])
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine, reference)
    ours = post_process_panoptic_segmentation(outputs, target_sizes=TARGETS[target])
    theirs = processor.post_process_panoptic_segmentation(as_object(outputs), target_sizes=TARGETS[target])
    for mine, reference in zip(ours, theirs):
        assert torch.equal(mine["segmentation"], reference["segmentation"].long())
    assert_same_segments([r["segments_info"] for r in ours], [r["segments_info"] for r in theirs])


def test_semantic_class_that_wins_only_between_frame_pixels(processor):
    """A class can lose at every 384x384 pixel and still win output pixels between two of them: query 0 (class 0)
    and query 1 (class 1) switch sharply within one frame pixel, query 2 (class 2) is 0.85 everywhere; at an output
    pixel 80% of the way to query 0's last pixel, class 0 scores 0.8 and class 1 0.2."""
    a = torch.full((32,), -1000.0)
    a[:16], a[16] = 1000.0, math.log(0.97 / 0.03)
    b = torch.full((32,), 1000.0)
    b[:16], b[16] = -1000.0, math.log(0.9 / 0.1)
    c = torch.full((32,), math.log(0.85 / 0.15))
    masks = torch.stack([a, b, c, torch.full((32,), -1000.0)])[None, :, None, :].expand(1, 4, 8, 32).clone()
    class_logits = torch.full((1, 4, 4), -50.0)
    class_logits[0, torch.arange(4), torch.arange(4)] = 50.0
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": masks}
    theirs = processor.post_process_semantic_segmentation(as_object(outputs), target_sizes=[(48, 640)])[0]
    assert bool((theirs == 2).any())
    assert not bool((post_process_semantic_segmentation(outputs)[0] == 2).any())  # not on the 384x384 frame
    assert torch.equal(post_process_semantic_segmentation(outputs, target_sizes=[(48, 640)])[0], theirs)


def test_accepts_dicts_objects_and_our_model_output(processor):
    outputs = smooth_outputs(seed=5)
    ours = Mask2FormerForUniversalSegmentationOutput(**outputs)
    expected = post_process_semantic_segmentation(outputs)
    for variant in (as_object(outputs), ours):
        assert all(torch.equal(a, b) for a, b in zip(post_process_semantic_segmentation(variant), expected))


# ----------------------------------------------------------------------------------------------------------------------
# transformers bugs, fixed
# ----------------------------------------------------------------------------------------------------------------------


def half_plane_logits(height: int, width: int, columns: slice) -> torch.Tensor:
    logits = torch.full((height, width), -10.0)
    logits[:, columns] = 10.0
    return logits


def test_panoptic_fused_label_reappearing_keeps_ids_unique(processor):
    """Queries: sky (fused) left, person, sky again right, car. transformers gives car the person's id 2 and lists
    sky twice; ours: sky 1 (both parts), person 2, car 3."""
    sky, person, car = 0, 1, 2  # 3: "no object"
    class_logits = torch.full((1, 4, 4), -10.0)
    for query, label in enumerate([sky, person, sky, car]):
        class_logits[0, query, label] = 10.0
    masks = torch.stack([half_plane_logits(8, 16, slice(c, c + 4)) for c in (0, 4, 8, 12)])[None]  # 4 bands
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": masks}
    theirs = processor.post_process_panoptic_segmentation(as_object(outputs), label_ids_to_fuse={sky})[0]
    their_ids = [s["id"] for s in theirs["segments_info"]]
    assert their_ids == [1, 2, 1, 2]  # the bug: car reuses person's id, sky listed twice
    their_bands = theirs["segmentation"].view(384, 4, 96)[:, :, 1:-1]
    assert [int(their_bands[:, band].unique().item()) for band in range(4)] == [1, 2, 1, 2]  # person == car
    ours = post_process_panoptic_segmentation(outputs, label_ids_to_fuse={sky})[0]
    assert [(s["id"], s["label_id"], s["was_fused"]) for s in ours["segments_info"]] == [
        (1, sky, True),
        (2, person, False),
        (3, car, False),
    ]
    bands = ours["segmentation"].view(384, 4, 96)[:, :, 1:-1]  # the four bands, away from their borders
    assert [int(bands[:, band].unique().item()) for band in range(4)] == [1, 2, 1, 3]


def test_instance_honours_mask_threshold(processor):
    """transformers always binarizes at probability 0.5."""
    class_logits = torch.tensor([[[10.0, -10.0]]])
    ramp = torch.linspace(-3, 3, 16).expand(8, 16)  # probabilities from 0.05 to 0.95, left to right
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": ramp[None, None].clone()}
    probabilities = F.interpolate(ramp[None, None], size=(384, 384), mode="bilinear", align_corners=False)[0, 0]
    probabilities = probabilities.sigmoid()
    ours = post_process_instance_segmentation(outputs, threshold=0.1, mask_threshold=0.8)[0]["segmentation"]
    theirs = processor.post_process_instance_segmentation(as_object(outputs), threshold=0.1, mask_threshold=0.8)
    assert torch.equal(ours == 0, probabilities > 0.8)
    assert torch.equal(theirs[0]["segmentation"] == 0, probabilities > 0.5)  # mask_threshold ignored


def test_instance_honours_overlap_mask_area_threshold(processor):
    """Two confident instances, one almost inside the other: whichever is painted last hides the other (at least
    90% of it); ours drops the hidden one at 0.8, transformers keeps both; at 0 ours keeps both too."""
    class_logits = torch.tensor([[[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0]]])
    masks = torch.stack([half_plane_logits(8, 32, slice(0, 20)), half_plane_logits(8, 32, slice(2, 20))])[None]
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": masks}
    theirs = processor.post_process_instance_segmentation(as_object(outputs))[0]
    assert len(theirs["segments_info"]) == 2
    kept = post_process_instance_segmentation(outputs, overlap_mask_area_threshold=0.0)[0]
    assert len(kept["segments_info"]) == 2 and torch.equal(kept["segmentation"], theirs["segmentation"].long())
    ours = post_process_instance_segmentation(outputs)[0]
    assert len(ours["segments_info"]) == 1 and ours["segments_info"][0]["id"] == 0
    top = theirs["segments_info"][1]  # painted last, fully visible
    assert ours["segments_info"][0]["label_id"] == top["label_id"]
    assert torch.equal(ours["segmentation"], torch.where(theirs["segmentation"] == 1, 0, -1))
    binary = post_process_instance_segmentation(outputs, return_binary_maps=True)[0]["segmentation"]
    assert binary.shape == (1, 384, 384)


# ----------------------------------------------------------------------------------------------------------------------
# Empty results
# ----------------------------------------------------------------------------------------------------------------------


def test_empty_results(processor):
    """No query passes: instance map all -1, empty stack, no RLE; panoptic all 0 (transformers: -1)."""
    outputs = smooth_outputs(seed=6)
    outputs["class_queries_logits"][..., -1] += 100  # everything "no object"
    target = [(40, 50), (30, 20)]
    instance = post_process_instance_segmentation(outputs, target_sizes=target)
    assert [r["segments_info"] for r in instance] == [[], []]
    assert all(torch.equal(r["segmentation"], torch.full(size, -1)) for r, size in zip(instance, target))
    binary = post_process_instance_segmentation(outputs, target_sizes=target, return_binary_maps=True)
    assert [tuple(r["segmentation"].shape) for r in binary] == [(0, 40, 50), (0, 30, 20)]
    assert [r["segmentation"] for r in post_process_instance_segmentation(outputs, return_coco_annotation=True)] == [
        [],
        [],
    ]
    panoptic = post_process_panoptic_segmentation(outputs, target_sizes=target)
    assert [r["segments_info"] for r in panoptic] == [[], []]
    assert all(torch.equal(r["segmentation"], torch.zeros(size, dtype=torch.long)) for r, size in zip(panoptic, target))
    theirs = processor.post_process_panoptic_segmentation(as_object(outputs), target_sizes=target)
    assert all(bool((r["segmentation"] == -1).all()) for r in theirs)
    their_instance = processor.post_process_instance_segmentation(as_object(outputs), target_sizes=target)
    assert all(torch.equal(r["segmentation"].long(), torch.full(size, -1)) for r, size in zip(their_instance, target))


# ----------------------------------------------------------------------------------------------------------------------
# Full resolution and padding
# ----------------------------------------------------------------------------------------------------------------------


def two_region_outputs(height: int, width: int, left_columns: int) -> dict[str, torch.Tensor]:
    """Query 0 (class 0) owns columns [0, left_columns), query 1 (class 1) the rest; query 2 is "no object"."""
    class_logits = torch.tensor([[[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0], [-10.0, -10.0, 10.0]]])
    left = half_plane_logits(height, width, slice(0, left_columns))
    masks = torch.stack([left, -left, torch.full((height, width), -10.0)])[None]
    return {"class_queries_logits": class_logits, "masks_queries_logits": masks}


@pytest.mark.parametrize("sparse", [True, False])
def test_full_resolution_known_answer(monkeypatch, sparse):
    """mask_size=None at 2x the mask logits: logits +-10 change sign exactly between columns 15 and 16, i.e.
    between output columns 31 and 32."""
    monkeypatch.setattr(postprocess, "_SPARSE_LIMIT", 1.0 if sparse else -1.0)
    outputs = two_region_outputs(12, 32, 16)
    expected = torch.zeros(24, 64, dtype=torch.long)
    expected[:, 32:] = 1
    semantic = post_process_semantic_segmentation(outputs, target_sizes=[(24, 64)], mask_size=None)[0]
    assert torch.equal(semantic, expected)
    instance = post_process_instance_segmentation(outputs, target_sizes=[(24, 64)], mask_size=None)[0]
    assert torch.equal(instance["segmentation"], expected)  # instance ids 0 and 1 in class order here
    assert [s["label_id"] for s in instance["segments_info"]] == [0, 1]
    panoptic = post_process_panoptic_segmentation(outputs, target_sizes=[(24, 64)], mask_size=None)[0]
    assert torch.equal(panoptic["segmentation"], expected + 1)
    # Without target sizes the output is the mask logits' own size.
    assert post_process_semantic_segmentation(outputs, mask_size=None)[0].shape == (12, 32)


@pytest.mark.parametrize("sparse", [True, False])
def test_full_resolution_matches_dense_reference(monkeypatch, sparse):
    """mask_size=None semantic: logits resized to the output size, then sigmoid, mix, argmax."""
    monkeypatch.setattr(postprocess, "_SPARSE_LIMIT", 1.0 if sparse else -1.0)
    outputs = smooth_outputs(seed=7)
    target = [(100, 90), (37, 120)]
    ours = post_process_semantic_segmentation(outputs, target_sizes=target, mask_size=None)
    class_probs = outputs["class_queries_logits"].softmax(-1)[..., :-1]
    for index, size in enumerate(target):
        logits = F.interpolate(outputs["masks_queries_logits"][index : index + 1], size=size, mode="bilinear")[0]
        expected = torch.einsum("qc,qhw->chw", class_probs[index], logits.sigmoid()).argmax(0)
        assert torch.equal(ours[index], expected)


@pytest.mark.parametrize("image_size", [(64, 128), (96, 96)])  # padding below, padding on the right
@pytest.mark.parametrize("mask_size", [(384, 384), None])
def test_padding_is_cropped(processor, mask_size, image_size):
    """Padded input 96x128 (mask logits 24x32) holding the image in its top-left corner: query 0 (class 0) covers
    exactly the image, query 1 (class 1) the padding. Cropped, the whole output is query 0's."""
    class_logits = torch.tensor([[[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0]]])
    image = torch.full((24, 32), -10.0)
    image[: image_size[0] // 4, : image_size[1] // 4] = 10.0
    outputs = {"class_queries_logits": class_logits, "masks_queries_logits": torch.stack([image, -image])[None]}
    crop = {"mask_size": mask_size, "input_sizes": [image_size], "padded_size": (96, 128)}
    target = [(2 * image_size[0], 2 * image_size[1])]
    semantic = post_process_semantic_segmentation(outputs, target_sizes=target, **crop)[0]
    assert torch.equal(semantic, torch.zeros(target[0], dtype=torch.long))
    instance = post_process_instance_segmentation(outputs, target_sizes=target, **crop)[0]
    assert [s["label_id"] for s in instance["segments_info"]] == [0]
    assert torch.equal(instance["segmentation"], torch.zeros(target[0], dtype=torch.long))
    panoptic = post_process_panoptic_segmentation(outputs, target_sizes=target, **crop)[0]
    assert torch.equal(panoptic["segmentation"], torch.ones(target[0], dtype=torch.long))
    # Without a target size the output is the image's size; transformers, not cropping, keeps class 1 in it.
    assert post_process_semantic_segmentation(outputs, **crop)[0].shape == image_size
    theirs = processor.post_process_semantic_segmentation(as_object(outputs), target_sizes=target)[0]
    assert bool((theirs == 1).any())


# ----------------------------------------------------------------------------------------------------------------------
# Shortcuts against the dense computation, on unusual geometries
# ----------------------------------------------------------------------------------------------------------------------

CROP = {"input_sizes": [(96, 100), (70, 128)], "target_sizes": [(120, 90), (61, 77)]}
GEOMETRIES = {
    "384 -> per-image": {"target_sizes": [(50, 70), (33, 41)]},
    "frame smaller than the logits": {"mask_size": (10, 12), "target_sizes": [(40, 30), (40, 30)]},
    "no target, small frame": {"mask_size": (7, 9)},
    "anisotropic": {"mask_size": (12, 200), "target_sizes": [(100, 30), (100, 30)]},
    "cropped": CROP,
    "full resolution, cropped": {"mask_size": None, **CROP},
}


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_shortcuts_match_dense_computation(monkeypatch, geometry):
    outputs = smooth_outputs(seed=9)
    options = GEOMETRIES[geometry]
    results = {}
    for path, limit in (("sparse", 1.0), ("dense", -1.0)):
        monkeypatch.setattr(postprocess, "_SPARSE_LIMIT", limit)
        results[path] = (
            post_process_semantic_segmentation(outputs, **options),
            post_process_panoptic_segmentation(outputs, threshold=0.3, **options),
        )
    for sparse, dense in zip(results["sparse"][0], results["dense"][0]):
        assert torch.equal(sparse, dense)
    for sparse, dense in zip(results["sparse"][1], results["dense"][1]):
        assert torch.equal(sparse["segmentation"], dense["segmentation"])
        assert sparse["segments_info"] == dense["segments_info"]


@pytest.mark.parametrize("way", ["box", "band"])
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_own_areas_bounded_and_counted_on_a_box_or_band(monkeypatch, geometry, way):
    """Panoptic own areas are bounded from cells, and counted exactly only on the box of output pixels that may reach
    the threshold or pixel by pixel on the band between the bounds: the bounds must hold the count of transformers'
    dense way, and the exact count must equal it."""
    monkeypatch.setattr(postprocess, "_BOX_PIXELS", 10**9 if way == "box" else -(10**9))
    outputs = smooth_outputs(seed=10)
    options = GEOMETRIES[geometry]
    plans = postprocess._plans(
        outputs["masks_queries_logits"],
        options.get("target_sizes"),
        options.get("mask_size", (384, 384)),
        options.get("input_sizes"),
        None,
    )
    scores = torch.linspace(0.5, 1.0, 12)
    for index, plan in enumerate(plans):
        logits = outputs["masks_queries_logits"][index]
        masks = postprocess._WeightedMasks(logits, scores, plan)
        probabilities = plan.frame_logits(logits).sigmoid()
        if plan.output_y is not None:
            probabilities = F.interpolate(probabilities[None], size=plan.output, mode="bilinear")[0]
        for threshold in (0.3, 0.5, 0.7):
            lower, upper = masks.own_area_bounds(threshold)
            exact = (probabilities * scores[:, None, None] >= threshold).flatten(1).sum(1)
            assert bool((lower <= exact).all() and (exact <= upper).all())
            assert bool((upper - lower < exact.clamp(min=1)).any())  # the bounds are not vacuous
            assert torch.equal(masks.own_areas(torch.arange(12), threshold), exact)
            for query in (0, 5, 11):  # one query: a smaller box
                assert torch.equal(masks.own_areas(torch.tensor([query]), threshold), exact[query : query + 1])


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_cell_blocks_list_every_output_row_once(geometry):
    """The rows (columns) reading exactly the cells i to i + d are ``counts[d, i]`` consecutive ones from
    ``starts[d, i]``: the band and the own-area bounds rely on it."""
    options = GEOMETRIES[geometry]
    outputs = smooth_outputs(seed=12)
    for plan in postprocess._plans(
        outputs["masks_queries_logits"],
        options.get("target_sizes"),
        options.get("mask_size", (384, 384)),
        options.get("input_sizes"),
        None,
    ):
        for (first, last), (counts, starts) in zip(plan.output_cells, plan.cell_blocks):
            covered = torch.full_like(first, -1)
            for span, cell in (counts > 0).nonzero().tolist():
                rows = torch.arange(int(starts[span, cell]), int(starts[span, cell] + counts[span, cell]))
                assert bool((covered[rows] == -1).all())
                covered[rows] = 1
                assert bool((first[rows] == cell).all()) and bool((last[rows] == cell + span).all())
            assert bool((covered == 1).all())


def test_single_class():
    outputs = smooth_outputs(seed=11)
    outputs["class_queries_logits"] = outputs["class_queries_logits"][..., -2:]  # one class and "no object"
    for semantic in post_process_semantic_segmentation(outputs, target_sizes=TARGETS["per-image"]):
        assert bool((semantic == 0).all())


# ----------------------------------------------------------------------------------------------------------------------
# Resampling helpers and bad input
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(24, 384), (96, 384), (384, 480), (384, 100), (7, 5), (5, 5)])
def test_resampling_tables_match_interpolate(sizes):
    in_size, out_size = sizes
    values = torch.randn(3, in_size, in_size + 3, generator=torch.Generator().manual_seed(0))
    device = values.device
    taps_y = postprocess._linear_taps(in_size, out_size, device)
    taps_x = postprocess._linear_taps(in_size + 3, out_size + 1, device)
    expected = F.interpolate(values[None], size=(out_size, out_size + 1), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(postprocess._resize_separable(values, taps_y, taps_x), expected, atol=1e-5, rtol=0)
    nearest = F.interpolate(values[None], size=(out_size, out_size + 1), mode="nearest")[0]
    rows = postprocess._nearest_index(in_size, out_size, device)
    columns = postprocess._nearest_index(in_size + 3, out_size + 1, device)
    assert torch.equal(values[:, rows][:, :, columns], nearest)


def test_bad_input():
    outputs = smooth_outputs(seed=8)
    with pytest.raises(ValueError, match="target_sizes"):
        post_process_semantic_segmentation(outputs, target_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="target_sizes"):
        post_process_panoptic_segmentation(outputs, target_sizes=[(10, 10), (10, 10), (10, 10)])
    with pytest.raises(ValueError, match="target_sizes"):
        post_process_instance_segmentation(outputs, target_sizes=[(10, 10), (0, 10)])
    with pytest.raises(ValueError, match="input_sizes"):
        post_process_instance_segmentation(outputs, input_sizes=[(10, 10)])
    with pytest.raises(ValueError, match="input_sizes"):
        post_process_semantic_segmentation(outputs, input_sizes=[(10, 10), (100, 10)], padded_size=(96, 128))
    with pytest.raises(ValueError, match="mask_size"):
        post_process_semantic_segmentation(outputs, mask_size=384)
    with pytest.raises(TypeError, match="outputs.*masks_queries_logits"):
        post_process_semantic_segmentation(SimpleNamespace(class_queries_logits=outputs["class_queries_logits"]))
    with pytest.raises(TypeError, match="outputs"):
        post_process_panoptic_segmentation(torch.zeros(2, 12, 7))
    with pytest.raises(ValueError, match="masks_queries_logits"):
        post_process_panoptic_segmentation({**outputs, "masks_queries_logits": torch.zeros(2, 12, 8)})
    with pytest.raises(ValueError, match="disagree"):
        post_process_instance_segmentation({**outputs, "masks_queries_logits": torch.zeros(2, 11, 8, 8)})
    with pytest.raises(ValueError, match="return_coco_annotation and return_binary_maps"):
        post_process_instance_segmentation(outputs, return_coco_annotation=True, return_binary_maps=True)


def test_processor_methods_match_the_functions_and_transformers(processor):
    """Our processor carries the three post-processors as methods, so code written for transformers' runs as is."""
    from mask2former import Mask2FormerImageProcessor

    ours = Mask2FormerImageProcessor()
    outputs = as_object(smooth_outputs(seed=5))
    target = TARGETS["per-image"]
    for mine, reference in zip(
        ours.post_process_semantic_segmentation(outputs, target_sizes=target),
        processor.post_process_semantic_segmentation(outputs, target_sizes=target),
    ):
        assert torch.equal(mine, reference)
    mine = ours.post_process_instance_segmentation(outputs, 0.4, overlap_mask_area_threshold=0.0, target_sizes=target)
    reference = processor.post_process_instance_segmentation(outputs, 0.4, target_sizes=target)
    assert_same_segments([r["segments_info"] for r in mine], [r["segments_info"] for r in reference])
    mine = ours.post_process_panoptic_segmentation(outputs, label_ids_to_fuse={1}, target_sizes=target)
    reference = processor.post_process_panoptic_segmentation(outputs, label_ids_to_fuse={1}, target_sizes=target)
    for a, b in zip(mine, reference):
        assert torch.equal(a["segmentation"], b["segmentation"].long())
    full = ours.post_process_panoptic_segmentation(outputs, mask_size=None, input_sizes=[(80, 100), (96, 128)])
    expected = post_process_panoptic_segmentation(outputs, mask_size=None, input_sizes=[(80, 100), (96, 128)])
    assert [r["segments_info"] for r in full] == [r["segments_info"] for r in expected]


def test_divmod_through_float64_is_exact():
    """The float64 quotient is exact: multiples of the divisor and their neighbours, small and large values, scalar
    and per-element divisors."""
    divisors = torch.tensor([1, 2, 3, 7, 383, 384, 640, 4095, 2**20 + 7])
    multiples = torch.tensor([0, 1, 2, 5, 383, 2**20, 2**30 + 3])
    values = (multiples[:, None] * divisors[None]).flatten()
    values = torch.cat([values, values + 1, (values - 1).clamp(min=0), torch.randint(0, 2**40, (1000,))])
    for divisor in divisors.tolist():
        quotient, remainder = postprocess._divmod(values, divisor)
        assert torch.equal(quotient, values // divisor) and torch.equal(remainder, values % divisor)
    per_element = divisors[torch.randint(0, len(divisors), values.shape)]
    quotient, remainder = postprocess._divmod(values, per_element)
    assert torch.equal(quotient, values // per_element) and torch.equal(remainder, values % per_element)
    assert quotient.dtype == remainder.dtype == torch.int64
