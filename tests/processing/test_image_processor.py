"""The image processor against ``transformers.Mask2FormerImageProcessor``: sizes, pixels, targets, files, errors.

``transformers`` gives its PIL backend when torchvision is missing (as in this project's environment) and its
torchvision backend otherwise. Our uint8 resize is PyTorch's uint8 kernel, which is what the torchvision backend
calls: against it pixel values agree to float rounding (1e-5). The PIL backend rounds its fixed-point weights
differently: one intensity level on 0 to 25 % of the pixels depending on the size pair, two at most, i.e.
2 * rescale_factor / std after normalization. Sizes, pixel masks, mask order, class labels and resized segmentation
maps are identical.
"""

from __future__ import annotations

import inspect
import json
import logging
import warnings

import numpy as np
import PIL.Image
import pytest
import torch

from mask2former.processing import Mask2FormerImageProcessor, MaskFormerImageProcessor
from mask2former.processing.image_processor import pil_nearest_indices, resized_image_size

transformers = pytest.importorskip("transformers")

RELEASED = {"height": 384, "width": 384}
DETECTRON2 = {"shortest_edge": 800, "longest_edge": 1333}
STD = (0.229, 0.224, 0.225)
TIGHT = 1e-5
LEVEL = 1 / 255 / min(STD)  # one uint8 level of the resized image, after rescale and normalize (at most)
PIL_BACKEND_TOLERANCE = 2 * LEVEL + TIGHT


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def smooth_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 (H, W, 3) image with structure at several scales, like a photograph."""
    generator = rng(seed)
    coarse = generator.uniform(0, 255, (max(2, height // 16), max(2, width // 16), 3)).astype(np.uint8)
    base = np.array(PIL.Image.fromarray(coarse).resize((width, height), PIL.Image.BICUBIC), dtype=np.int16)
    noise = generator.integers(-20, 21, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def label_map(height: int, width: int, labels: list[int], seed: int = 0) -> np.ndarray:
    """Blocky (H, W) labels: rectangles of the given ids on a field of the first."""
    generator = rng(seed)
    result = np.full((height, width), labels[0], dtype=np.int64)
    for label in labels[1:]:
        top, left = generator.integers(0, height - 4), generator.integers(0, width - 4)
        result[
            top : top + generator.integers(4, height // 2 + 5), left : left + generator.integers(4, width // 2 + 5)
        ] = label
    return result


def theirs(**settings) -> object:
    return transformers.Mask2FormerImageProcessor(**settings)


def is_pil_backend(processor) -> bool:
    return type(processor).__name__.endswith("Pil")


def assert_pixels_close(mine: torch.Tensor, reference: torch.Tensor, pil_backend: bool) -> None:
    assert mine.shape == reference.shape and mine.dtype == reference.dtype == torch.float32
    difference = (mine - reference).abs()
    if not pil_backend:  # float32 rounding of the multiply-add grows with the magnitude (no normalization: ~1000)
        assert (difference <= TIGHT + 1e-6 * reference.abs()).all(), difference.max()
        return
    assert difference.max() <= PIL_BACKEND_TOLERANCE, difference.max()
    assert difference.mean() <= 0.3 * LEVEL, difference.mean() / LEVEL  # (500, 350) -> 384x384: 0.23 levels


def compare(settings: dict, images, segmentation_maps=None, instance_id_to_semantic_id=None, loose=False, **their_call):
    """Run both processors with the same settings; check every output; return ours and transformers'.

    Pixels are compared with the class ``transformers`` gives (PIL backend here, torchvision backend where it is
    installed), targets with the PIL backend, whose NEAREST rule ours reproduces. ``loose``: the PIL backend's
    tolerance whatever the backend (for inputs where ours follows the PIL backend: whole-number floats, RGBA arrays).
    """
    reference_processor = theirs(**settings)
    mine = Mask2FormerImageProcessor(**settings)(images, segmentation_maps, instance_id_to_semantic_id)
    call = dict(instance_id_to_semantic_id=instance_id_to_semantic_id, return_tensors="pt", **their_call)
    reference = reference_processor(images, segmentation_maps=segmentation_maps, **call)
    if segmentation_maps is not None and not is_pil_backend(reference_processor):
        targets = transformers.Mask2FormerImageProcessorPil(**settings)(
            images, segmentation_maps=segmentation_maps, **call
        )
        reference["mask_labels"], reference["class_labels"] = targets["mask_labels"], targets["class_labels"]
    reference_pixels = reference["pixel_values"]
    if not (settings.get("do_rescale", True) or settings.get("do_normalize", True)):
        assert reference_pixels.dtype == torch.uint8  # transformers' quirk: no float conversion; ours stays float32
        reference_pixels = reference_pixels.float()
    assert_pixels_close(mine["pixel_values"], reference_pixels, loose or is_pil_backend(reference_processor))
    assert mine["pixel_mask"].dtype == torch.int64
    assert torch.equal(mine["pixel_mask"], reference["pixel_mask"])
    if segmentation_maps is not None:
        assert len(mine["mask_labels"]) == len(reference["mask_labels"])
        for index, (masks, classes) in enumerate(zip(mine["mask_labels"], mine["class_labels"])):
            their_masks, their_classes = reference["mask_labels"][index], reference["class_labels"][index]
            assert classes.dtype == torch.int64 and masks.dtype == torch.float32
            assert torch.equal(classes, their_classes)
            assert masks.shape == their_masks.shape
            real = mine["pixel_mask"][index].bool()
            assert torch.equal(masks[:, real], their_masks[:, real])  # identical masks on the image
            assert not masks[:, ~real].any()  # ours: padding is 0 (theirs: ignore_index, see below)
    return mine, reference


# ---------------------------------------------------------------------- sizes


def test_size_rule_matches_transformers():
    from transformers.image_transforms import get_size_with_aspect_ratio

    generator = rng(1)
    shapes = [tuple(shape) for shape in generator.integers(1, 3000, (3000, 2))] + [(480, 640), (640, 480), (800, 800)]
    for height, width in shapes:
        for shortest, longest in [(800, 1333), (384, 640), (512, 2048)]:
            expected = get_size_with_aspect_ratio((height, width), shortest, longest)
            expected = tuple(-(-side // 32) * 32 for side in expected)
            size = {"shortest_edge": shortest, "longest_edge": longest}
            assert resized_image_size(height, width, size, 32) == expected, (height, width, shortest, longest)
    processor = Mask2FormerImageProcessor(size=RELEASED)
    assert processor.resized_size(480, 640) == (384, 384)
    assert Mask2FormerImageProcessor().resized_size(480, 640) == (800, 1088)  # 1067 rounded up to 32
    assert Mask2FormerImageProcessor(do_resize=False).resized_size(37, 53) == (37, 53)


def test_pixel_mask_marks_the_resized_image():
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    images = [smooth_image(40, 60), smooth_image(60, 40, seed=1)]
    inputs = processor(images)
    for index, image in enumerate(images):
        height, width = processor.resized_size(*image.shape[:2])
        mask = inputs["pixel_mask"][index]
        assert mask[:height, :width].all() and mask.sum() == height * width
        assert (
            not inputs["pixel_values"][index][:, height:].any()
            and not inputs["pixel_values"][index][:, :, width:].any()
        )


def test_nearest_indices_match_pillow():
    generator = rng(2)
    for in_size, out_size in [tuple(pair) for pair in generator.integers(1, 1500, (200, 2))] + [
        (480, 384),
        (640, 1088),
    ]:
        row = np.arange(in_size, dtype=np.int32)[None].repeat(2, axis=0)
        expected = np.array(PIL.Image.fromarray(row, mode="I").resize((int(out_size), 2), PIL.Image.NEAREST))[0]
        np.testing.assert_array_equal(pil_nearest_indices(int(in_size), int(out_size)), expected)


# ---------------------------------------------------------------------- pixels


@pytest.mark.parametrize("size", [RELEASED, DETECTRON2], ids=["384x384", "800-1333"])
def test_batch_of_different_sizes(size):
    images = [
        smooth_image(480, 640),
        smooth_image(300, 500, seed=1),
        smooth_image(384, 384, seed=2),
        smooth_image(500, 350, seed=3),
    ]
    compare({"size": size}, images)


@pytest.mark.parametrize("size", [RELEASED, DETECTRON2], ids=["384x384", "800-1333"])
def test_pil_numpy_and_torch_inputs(size):
    image = smooth_image(240, 320)
    as_pil = PIL.Image.fromarray(image)
    chw_tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
    hwc_tensor = torch.from_numpy(smooth_image(200, 260, seed=4))
    mine, _ = compare({"size": size}, [as_pil, chw_tensor, image, hwc_tensor])
    # The same pixels in three containers give the same result.
    assert torch.equal(mine["pixel_values"][0], mine["pixel_values"][1])
    assert torch.equal(mine["pixel_values"][0], mine["pixel_values"][2])


def test_a_4d_array_is_a_batch():
    batch = np.stack([smooth_image(64, 96), smooth_image(64, 96, seed=1)])
    processor = Mask2FormerImageProcessor(size={"height": 64, "width": 64})
    assert torch.equal(processor(batch)["pixel_values"], processor(list(batch))["pixel_values"])
    assert torch.equal(processor(torch.from_numpy(batch))["pixel_values"], processor(list(batch))["pixel_values"])


def test_resampling_variants():
    images = [smooth_image(300, 400)]
    compare({"size": RELEASED, "resample": 3}, images)  # bicubic
    mine, reference = compare({"size": RELEASED, "resample": 0}, images)  # nearest: exact with either backend
    torch.testing.assert_close(mine["pixel_values"], reference["pixel_values"], atol=TIGHT, rtol=0)


def test_float_images():
    image = smooth_image(200, 300)
    # Whole numbers in [0, 255] stored as floats are the uint8 image (as in the PIL backend; torchvision's resizes
    # them in float).
    compare({"size": RELEASED}, [image.astype(np.float32)], loose=True)
    mine = Mask2FormerImageProcessor(size=RELEASED)
    assert torch.equal(mine(image.astype(np.float64))["pixel_values"], mine(image)["pixel_values"])
    # Already rescaled [0, 1] floats, not resized: exact.
    unit = image.astype(np.float32) / 255 * 0.99 + 0.001  # not whole numbers, within [0, 1]
    compare({"do_resize": False, "do_rescale": False}, [unit])
    # Resized: ours in float (the torchvision backend does too); the PIL backend truncates to uint8 first.
    settings = {"size": RELEASED, "do_rescale": False}
    difference = (
        Mask2FormerImageProcessor(**settings)(unit)["pixel_values"]
        - theirs(**settings)(unit, return_tensors="pt")["pixel_values"]
    )
    bound = TIGHT if not is_pil_backend(theirs()) else 3 * LEVEL
    assert difference.abs().max() <= bound


def test_float_image_in_unit_range_warns_when_rescaled():
    with pytest.warns(UserWarning, match=r"images is a float image with values in \[0, 1\]"):
        Mask2FormerImageProcessor(size=RELEASED)(np.full((8, 8, 3), 0.5, dtype=np.float32))


def test_grayscale_and_rgba():
    gray = smooth_image(120, 160)[..., 0]
    rgba = np.concatenate([smooth_image(120, 160, seed=1), rng(3).integers(0, 256, (120, 160, 1), dtype=np.uint8)], -1)
    images = [PIL.Image.fromarray(gray), gray[..., None], PIL.Image.fromarray(rgba), rgba]
    # RGBA arrays are blended with rounding as the PIL backend does (the torchvision backend truncates).
    mine, _ = compare({"size": RELEASED}, images, loose=True, do_convert_rgb=True)
    # Grayscale is replicated; PIL and numpy grayscale agree.
    assert torch.equal(mine["pixel_values"][0], mine["pixel_values"][1])
    processor = Mask2FormerImageProcessor(size=RELEASED)
    assert torch.equal(processor(gray)["pixel_values"], mine["pixel_values"][:1])
    assert torch.equal(processor(np.repeat(gray[..., None], 3, -1))["pixel_values"], mine["pixel_values"][:1])
    # RGBA from PIL (Pillow's compositing) and from numpy (rounded blend) are within one level.
    assert (mine["pixel_values"][2] - mine["pixel_values"][3]).abs().max() <= LEVEL + TIGHT


def test_torchvision_backend_is_matched_exactly():
    pytest.importorskip("torchvision")
    from transformers.models.mask2former.image_processing_mask2former import Mask2FormerImageProcessor as Reference

    images = [smooth_image(480, 640), smooth_image(300, 500, seed=1)]
    for size in (RELEASED, DETECTRON2):
        mine = Mask2FormerImageProcessor(size=size)(images)
        reference = Reference(size=size)(images, return_tensors="pt")
        torch.testing.assert_close(mine["pixel_values"], reference["pixel_values"], atol=TIGHT, rtol=0)


def test_batch_equals_images_alone():
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    images = [smooth_image(40, 60), smooth_image(60, 40, seed=1), smooth_image(40, 60, seed=2)]
    batch = processor(images)
    for index, image in enumerate(images):
        alone = processor(image)
        height, width = alone["pixel_values"].shape[-2:]
        assert torch.equal(batch["pixel_values"][index, :, :height, :width], alone["pixel_values"][0])


def test_worker_threads_do_not_change_the_result():
    images = [smooth_image(50, 70, seed=seed) for seed in range(5)] + [smooth_image(70, 50)]
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 64, "longest_edge": 128})
    assert torch.equal(_with_threads(1, processor, images), _with_threads(2, processor, images))


def _with_threads(threads: int, processor: Mask2FormerImageProcessor, images) -> torch.Tensor:
    """``pixel_values`` of ``processor(images)`` computed with PyTorch set to ``threads`` threads."""
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        return processor(images)["pixel_values"]
    finally:
        torch.set_num_threads(previous)


@pytest.mark.parametrize("resample", [2, 3])
def test_one_image_resized_in_two_bands_is_bit_identical(resample):
    # On 2 threads a single uint8 image is resized as two overlapping bands, one per thread; on 1 thread whole.
    generator = rng(3)
    cases = [((480, 640), RELEASED), ((640, 480), RELEASED), ((480, 640), DETECTRON2), ((640, 480), DETECTRON2),
             ((375, 500), DETECTRON2), ((612, 612), {"height": 512, "width": 512})]
    cases += [((int(generator.integers(60, 700)), int(generator.integers(60, 700))), DETECTRON2) for _ in range(12)]
    split = 0
    for (height, width), size in cases:
        processor = Mask2FormerImageProcessor(size=size, resample=resample)
        image = generator.integers(0, 256, (height, width, 3), dtype=np.uint8)
        image[: height // 3] = image[: height // 3] // 128 * 255  # saturated hard edges too
        jobs = processor._resize_jobs(image, processor.resized_size(height, width), 0, split=True)
        split += len(jobs) == 2
        whole = _with_threads(1, processor, image)
        bands = _with_threads(2, processor, image)
        assert torch.equal(whole, bands), ((height, width), size)
    assert split >= 6  # the COCO-like sizes above all split


def test_band_plan_of_the_common_sizes():
    from mask2former.processing.image_processor import _band_plan

    # (input length, output length) -> (band input L, band output M, cut): 480 -> 384 is 5/4 -> bands of 245 -> 196
    assert _band_plan(480, 384, "bilinear") == (245, 196, 192)
    length, band_size, cut = _band_plan(640, 1088, "bilinear")  # 10/17
    assert band_size % 17 == 0 and length == band_size * 10 // 17 and cut % 17 == 0
    assert _band_plan(500, 384, "bilinear") is None  # 125/96: bands would cover most of the image
    small = Mask2FormerImageProcessor(size={"height": 24, "width": 32})
    assert len(small._resize_jobs(smooth_image(30, 40), (24, 32), 0, split=True)) == 1  # too small to gain


def test_preprocessing_in_a_forked_child():
    import multiprocessing

    processor = Mask2FormerImageProcessor(size=RELEASED)
    image = smooth_image(480, 640)
    expected = _with_threads(2, processor, image)  # the parent's worker pool now exists
    context = multiprocessing.get_context("fork")
    with context.Pool(1) as pool:
        result = pool.apply(_preprocess_with_two_threads, (processor, image))
    assert torch.equal(torch.from_numpy(result), expected)


def _preprocess_with_two_threads(processor, image):
    torch.set_num_threads(2)
    return processor(image)["pixel_values"].numpy()


def test_rescale_and_normalize_switches():
    image = smooth_image(64, 64)
    for settings in [{"do_normalize": False}, {"do_rescale": False}, {"do_rescale": False, "do_normalize": False},
                     {"image_mean": 0.5, "image_std": 0.5, "rescale_factor": 0.01}]:  # fmt: skip
        compare({"size": {"height": 64, "width": 64}, **settings}, [image])


# ---------------------------------------------------------------------- targets


@pytest.mark.parametrize("size", [RELEASED, DETECTRON2], ids=["384x384", "800-1333"])
def test_semantic_targets_with_ignore_index(size):
    images = [smooth_image(240, 320), smooth_image(200, 150, seed=1)]
    maps = [label_map(240, 320, [0, 3, 7, 255]), label_map(200, 150, [2, 255, 5], seed=1).astype(np.uint8)]
    mine, reference = compare({"size": size, "ignore_index": 255}, images, maps)
    assert mine["class_labels"][0].tolist() == [0, 3, 7]  # increasing label order, 255 dropped
    # transformers pads the binary masks with ignore_index; ours with 0 (see the class docstring).
    padded = ~reference["pixel_mask"][1].bool()
    if padded.any():
        assert (reference["mask_labels"][1][:, padded] == 255).all()


@pytest.mark.parametrize("size", [RELEASED, DETECTRON2], ids=["384x384", "800-1333"])
def test_reduce_labels(size):
    images = [smooth_image(240, 320), smooth_image(200, 150, seed=1)]
    maps = [label_map(240, 320, [0, 1, 4, 150]), label_map(200, 150, [3, 0, 2], seed=1)]
    mine, _ = compare({"size": size, "ignore_index": 255, "do_reduce_labels": True}, images, maps)
    assert mine["class_labels"][0].tolist() == [0, 3, 149]  # 0 became 255 (ignored), the rest minus 1


def test_instance_id_to_semantic_id():
    images = [smooth_image(120, 160), smooth_image(100, 90, seed=1)]
    maps = [label_map(120, 160, [0, 1, 2, 3]), label_map(100, 90, [0, 5, 6], seed=1)]
    per_image = [{0: 0, 1: 7, 2: 7, 3: 2}, {0: 0, 5: 1, 6: 9}]
    # transformers needs an ignore_index to pad the masks of a batch ("Unsupported format: None" otherwise).
    settings = {"size": {"shortest_edge": 96, "longest_edge": 160}, "ignore_index": 255}
    mine, _ = compare(settings, images, maps, per_image)
    assert mine["class_labels"][0].tolist() == [0, 7, 7, 2]
    shared = {**per_image[0], **per_image[1]}
    compare({**settings, "ignore_index": 0}, images, maps, shared)
    compare({**settings, "ignore_index": 255, "do_reduce_labels": True}, images, maps, per_image)


def test_labels_above_255_and_empty_targets():
    processor = Mask2FormerImageProcessor(size={"height": 32, "width": 32}, ignore_index=255)
    instances = label_map(40, 40, [1000, 1001, 70000])
    inputs = processor(smooth_image(40, 40), instances, {1000: 3, 1001: 4, 70000: 5})
    assert inputs["class_labels"][0].tolist() == [3, 4, 5]
    assert torch.equal(inputs["mask_labels"][0].sum(0), torch.ones(32, 32))  # a partition of the image
    empty = processor(smooth_image(40, 40), np.full((40, 40), 255))
    assert empty["mask_labels"][0].shape == (0, 32, 32) and empty["class_labels"][0].shape == (0,)
    assert empty["class_labels"][0].dtype == torch.int64


def test_segmentation_map_containers():
    processor = Mask2FormerImageProcessor(size={"height": 32, "width": 32}, ignore_index=255)
    labels = label_map(40, 48, [0, 1, 2]).astype(np.uint8)
    reference = processor(smooth_image(40, 48), labels)
    for container in (PIL.Image.fromarray(labels), torch.from_numpy(labels), labels.astype(np.float32), labels[None]):
        other = processor(smooth_image(40, 48), container)
        assert torch.equal(other["mask_labels"][0], reference["mask_labels"][0])
        assert torch.equal(other["class_labels"][0], reference["class_labels"][0])


# ---------------------------------------------------------------------- outputs and the model


def test_output_container_and_numpy():
    processor = Mask2FormerImageProcessor(size={"height": 32, "width": 32}, ignore_index=255)
    inputs = processor(smooth_image(40, 48), label_map(40, 48, [0, 1]))
    assert isinstance(inputs, dict) and inputs.pixel_values is inputs["pixel_values"]
    with pytest.raises(AttributeError, match="no key 'labels'"):
        _ = inputs.labels
    half = inputs.to(dtype=torch.float16)
    assert half["pixel_values"].dtype == torch.float16 and half["mask_labels"][0].dtype == torch.float16
    assert half["pixel_mask"].dtype == torch.int64 and half["class_labels"][0].dtype == torch.int64
    arrays = processor(smooth_image(40, 48), label_map(40, 48, [0, 1]), return_tensors="np")
    assert isinstance(arrays["pixel_values"], np.ndarray) and arrays["pixel_values"].dtype == np.float32
    assert isinstance(arrays["mask_labels"][0], np.ndarray) and arrays["class_labels"][0].dtype == np.int64


def test_inputs_feed_the_model():
    from mask2former import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from tests.conftest import TINY_MASK2FORMER, TINY_SWIN

    config = Mask2FormerConfig(backbone_config=SwinConfig(**TINY_SWIN), num_labels=4, **TINY_MASK2FORMER)
    model = Mask2FormerForUniversalSegmentation.from_config(config).eval()
    processor = Mask2FormerImageProcessor(size={"height": 64, "width": 64})
    with torch.no_grad():
        outputs = model(**processor([smooth_image(50, 70), smooth_image(80, 60, seed=1)]))
    assert outputs.class_queries_logits.shape == (2, TINY_MASK2FORMER["num_queries"], 5)
    training = processor(smooth_image(50, 70), label_map(50, 70, [0, 1]), ignore_index=255)
    assert set(training) <= set(inspect.signature(model.forward).parameters)


def test_per_call_settings_and_the_maskformer_name():
    assert MaskFormerImageProcessor is Mask2FormerImageProcessor
    processor = Mask2FormerImageProcessor()
    image = smooth_image(40, 60)
    once = processor(image, size={"height": 32, "width": 32}, do_normalize=False)
    assert torch.equal(
        once["pixel_values"], Mask2FormerImageProcessor(size=(32, 32), do_normalize=False)(image)["pixel_values"]
    )
    assert processor.size == DETECTRON2 and processor.do_normalize  # unchanged
    assert Mask2FormerImageProcessor(size=512).size == {"shortest_edge": 512, "longest_edge": 1333}
    assert Mask2FormerImageProcessor(size=512, max_size=1024).size == {"shortest_edge": 512, "longest_edge": 1024}


# ---------------------------------------------------------------------- preprocessor_config.json


def their_settings(processor) -> dict:
    data = processor.to_dict()
    return {
        "do_resize": data["do_resize"], "size": dict(data["size"]), "size_divisor": data["size_divisor"],
        "resample": int(data["resample"]), "do_rescale": data["do_rescale"], "rescale_factor": data["rescale_factor"],
        "do_normalize": data["do_normalize"], "image_mean": [float(v) for v in data["image_mean"]],
        "image_std": [float(v) for v in data["image_std"]], "ignore_index": data.get("ignore_index"),
        "do_reduce_labels": data["do_reduce_labels"], "num_labels": data.get("num_labels"),
    }  # fmt: skip


def test_ours_writes_what_transformers_reads(tmp_path):
    for settings in [
        {"size": RELEASED, "ignore_index": 255, "num_labels": 150, "do_reduce_labels": True},
        {"size": DETECTRON2, "size_divisor": 0, "resample": 3, "image_mean": (0.5, 0.5, 0.5), "do_normalize": False},
    ]:
        ours = Mask2FormerImageProcessor(**settings)
        ours.save_pretrained(tmp_path)
        loaded = transformers.Mask2FormerImageProcessor.from_pretrained(tmp_path)
        assert their_settings(loaded) == their_settings(ours)
        assert their_settings(loaded) == their_settings(transformers.Mask2FormerImageProcessor(**settings))
        assert Mask2FormerImageProcessor.from_pretrained(tmp_path / "preprocessor_config.json") == ours


def test_ours_reads_what_transformers_writes(tmp_path):
    settings = {"size": RELEASED, "ignore_index": 255, "num_labels": 80, "do_reduce_labels": True, "size_divisor": 64}
    reference = transformers.Mask2FormerImageProcessor(**settings)
    reference.save_pretrained(tmp_path)
    assert Mask2FormerImageProcessor.from_pretrained(tmp_path) == Mask2FormerImageProcessor(**settings)
    assert Mask2FormerImageProcessor.from_dict(reference.to_dict()) == Mask2FormerImageProcessor(**settings)


def test_released_style_config(tmp_path, caplog):
    released = {
        "_max_size": 1333, "do_normalize": True, "do_resize": True, "ignore_index": 255,
        "image_mean": [0.48500001430511475, 0.4560000002384186, 0.4059999883174896],
        "image_processor_type": "Mask2FormerImageProcessor",
        "image_std": [0.2290000021457672, 0.2239999920129776, 0.22499999403953552],
        "num_labels": 150, "reduce_labels": True, "resample": 2, "rescale_factor": 0.00392156862745098,
        "size": {"height": 384, "width": 384}, "size_divisibility": 32,
    }  # fmt: skip
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(released))
    processor = Mask2FormerImageProcessor.from_pretrained(tmp_path)
    assert processor.do_reduce_labels and processor.ignore_index == 255 and processor.num_labels == 150
    assert processor.size == RELEASED and processor.size_divisor == 32
    assert processor.resized_size(480, 640) == (384, 384)
    # Older still: an int size with max_size, the feature extractor's name.
    old = {
        "feature_extractor_type": "MaskFormerFeatureExtractor",
        "size": 800,
        "max_size": 1024,
        "size_divisibility": 16,
    }
    processor = Mask2FormerImageProcessor.from_dict(old)
    assert processor.size == {"shortest_edge": 800, "longest_edge": 1024} and processor.size_divisor == 16
    with caplog.at_level(logging.WARNING):
        Mask2FormerImageProcessor.from_dict({"size": 800, "made_up_setting": 1})
    assert "made_up_setting" in caplog.text
    # from_pretrained takes overrides.
    assert Mask2FormerImageProcessor.from_pretrained(tmp_path, ignore_index=0).ignore_index == 0


def test_missing_processor_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json in the folder"):
        Mask2FormerImageProcessor.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing file or folder nor a Hugging Face hub id"):
        Mask2FormerImageProcessor.from_pretrained(tmp_path / "no" / "such" / "folder")


# ---------------------------------------------------------------------- bad input


GOOD = smooth_image(16, 16)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda p: p([GOOD, np.zeros((0, 16, 3), np.uint8)]), ValueError, r"images\[1\] is empty"),
        (
            lambda p: p([GOOD, np.zeros((16, 16, 2), np.uint8)]),
            ValueError,
            r"images\[1\] has shape \(16, 16, 2\): expected 1, 3 or 4 channels",
        ),
        (
            lambda p: p(np.zeros((16, 16, 5), np.uint8), input_data_format="channels_last"),
            ValueError,
            r"images has 5 channels",
        ),
        (
            lambda p: p([GOOD, np.full((16, 16, 3), 300.5)]),
            ValueError,
            r"images\[1\] is a float image with values in \[.*300.5\]",
        ),
        (lambda p: p([GOOD, np.full((16, 16, 3), -1.0)]), ValueError, r"images\[1\] is a float image"),
        (lambda p: p(np.full((16, 16, 3), np.nan)), ValueError, r"images contains NaN"),
        (
            lambda p: p(np.full((16, 16, 3), 256, dtype=np.int32)),
            ValueError,
            r"images is an integer image with values in \[256, 256\]",
        ),
        (lambda p: p(np.zeros((16, 16, 3), bool)), TypeError, r"images has dtype bool"),
        (lambda p: p("photo.jpg"), TypeError, r"images is a path .*PIL.Image.open"),
        (lambda p: p([[GOOD]]), TypeError, r"images\[0\] is a list; give a flat list"),
        (lambda p: p([]), ValueError, r"images is an empty list"),
        (
            lambda p: p(np.zeros((2, 3, 16, 16, 1))),
            ValueError,
            r"images must have shape \(H, W\), \(H, W, C\) or \(C, H, W\)",
        ),
        (lambda p: p(GOOD, return_tensors="tf"), ValueError, r"return_tensors must be one of \('pt', 'np'\), got 'tf'"),
        (lambda p: p(GOOD, input_data_format="first"), ValueError, r"input_data_format must be one of"),
        (lambda p: p([GOOD, GOOD], [np.zeros((16, 16))]), ValueError, r"got 2 image\(s\) but 1 segmentation map\(s\)"),
        (
            lambda p: p([GOOD, GOOD], [np.zeros((16, 16)), np.zeros((16, 17))]),
            ValueError,
            r"segmentation_maps\[1\] has size 16x17 but images\[1\] is 16x16",
        ),
        (lambda p: p([GOOD], [np.zeros((16, 16, 3))]), ValueError, r"segmentation_maps\[0\] must be a \(H, W\) map"),
        (
            lambda p: p(GOOD, np.full((16, 16), 0.5)),
            ValueError,
            r"segmentation_maps is a float map with non-integer values",
        ),
        (
            lambda p: p(GOOD, np.ones((16, 16)), {0: 1}),
            ValueError,
            r"no class for instance id 1, which occurs in segmentation map 0",
        ),
        (
            lambda p: p([GOOD, GOOD], [np.ones((16, 16))] * 2, [{1: 1}]),
            ValueError,
            r"instance_id_to_semantic_id has 1 dicts for 2 image",
        ),
        (
            lambda p: p(GOOD, instance_id_to_semantic_id={1: 1}),
            ValueError,
            r"instance_id_to_semantic_id was given without segmentation_maps",
        ),
        (
            lambda p: p(GOOD, np.ones((16, 16)), do_reduce_labels=True),
            ValueError,
            r"do_reduce_labels=True needs an ignore_index",
        ),
        (lambda p: p(GOOD, sizes=32), TypeError, r"unknown preprocessing argument\(s\) \['sizes'\]"),
        (
            lambda p: p(np.zeros((1, 2000, 3), np.uint8), input_data_format="channels_last"),
            ValueError,
            r"images of size 1x2000 would be resized to 0x64",
        ),
        (lambda p: Mask2FormerImageProcessor(size={"longest_edge": 1333}), ValueError, r"size must have the keys"),
        (lambda p: Mask2FormerImageProcessor(resample=1), ValueError, r"resample must be a PIL resampling code"),
        (
            lambda p: Mask2FormerImageProcessor(image_mean=(0.5, 0.5)),
            ValueError,
            r"image_mean must be a float or 3 floats",
        ),
        (lambda p: Mask2FormerImageProcessor(size_divisor=-1), ValueError, r"size_divisor must be a non-negative int"),
    ],
)
def test_bad_input(call, error, message):
    processor = Mask2FormerImageProcessor(size={"shortest_edge": 32, "longest_edge": 64})
    with pytest.raises(error, match=message):
        call(processor)


def test_read_only_and_reversed_arrays():
    image = smooth_image(40, 60)
    expected = Mask2FormerImageProcessor(size={"height": 32, "width": 32})(image)["pixel_values"]
    read_only = image.copy()
    read_only.flags.writeable = False
    reversed_twice = image[::-1, ::-1][::-1, ::-1]  # negative strides in between
    flipped = np.ascontiguousarray(image[:, ::-1])[:, ::-1]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for array in (read_only, reversed_twice, flipped):
            result = Mask2FormerImageProcessor(size={"height": 32, "width": 32})(array)["pixel_values"]
            assert torch.equal(result, expected)
