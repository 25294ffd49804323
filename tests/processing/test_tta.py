"""Semantic test-time augmentation: views, un-flipping, averaging of probabilities, Segmenter and CLI plumbing."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mask2former import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    SwinConfig,
)
from mask2former.cli.main import main
from mask2former.processing import Mask2FormerImageProcessor
from mask2former.processing.tta import (
    DEFAULT_SCALES,
    check_scales,
    scaled_processor,
    semantic_tta,
)
from mask2former.segmenter import Segmenter
from tests.conftest import TINY_MASK2FORMER, TINY_SWIN, randomize_

SMALL = {"size": {"shortest_edge": 64, "longest_edge": 128}}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random model (5 classes) saved with a 64x64 processor, so that runs of several scales stay fast."""
    torch.manual_seed(0)
    config = Mask2FormerConfig(backbone_config=SwinConfig(**TINY_SWIN), num_labels=5, **TINY_MASK2FORMER)
    model = Mask2FormerForUniversalSegmentation.from_config(config).eval()
    randomize_(model)
    directory = tmp_path_factory.mktemp("tta_model")
    model.save_pretrained(directory)
    (directory / "preprocessor_config.json").write_text(json.dumps({"size": {"height": 64, "width": 64}}))
    return directory, model


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter(checkpoint[1], Mask2FormerImageProcessor(**SMALL))


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, size, dtype=np.uint8) for size in ((50, 70, 3), (64, 48, 3))]


class MirrorSymmetricStub:
    """A "model" that commutes with left-right mirroring: each query's mask logit is a per-pixel mix of the colour
    channels (on 4x4 cells, as the real mask logits are), and the class logits are fixed."""

    def __init__(self, queries: int = 4, classes: int = 3, seed: int = 0) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.mix = torch.randn(queries, 3, generator=generator) * 3
        self.class_logits = torch.randn(queries, classes + 1, generator=generator) * 2

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        cells = torch.nn.functional.avg_pool2d(pixel_values, 4)  # (B, 3, H/4, W/4)
        masks = torch.einsum("qc,bchw->bqhw", self.mix, cells)  # (B, Q, H/4, W/4)
        return SimpleNamespace(
            class_queries_logits=self.class_logits.expand(len(pixel_values), -1, -1), masks_queries_logits=masks
        )


class WidthDependentStub:
    """One query covering the whole image whose class probabilities depend on the input width: (0.55, 0.45) at widths
    below 64, (0, 1) at 64 and above."""

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        batch, _, height, width = pixel_values.shape
        probabilities = torch.tensor([0.55, 0.45, 1e-9]) if width < 64 else torch.tensor([1e-9, 1.0, 1e-9])
        return SimpleNamespace(
            class_queries_logits=probabilities.log().expand(batch, 1, 3),
            masks_queries_logits=torch.full((batch, 1, height // 4, width // 4), 30.0),
        )


class LeftRightStub:
    """Ignores the image: class 0 on the left half of the input, class 1 on the right half."""

    def __call__(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        batch, _, height, width = pixel_values.shape
        masks = torch.full((batch, 2, height // 4, width // 4), -30.0)
        masks[:, 0, :, : width // 8] = 30.0
        masks[:, 1, :, width // 8 :] = 30.0
        class_logits = torch.tensor([[10.0, -10.0, -10.0], [-10.0, 10.0, -10.0]])
        return SimpleNamespace(class_queries_logits=class_logits.expand(batch, -1, -1), masks_queries_logits=masks)


def test_one_scale_without_flip_is_the_plain_result(segmenter, images):
    plain = segmenter.segment(images, task="semantic", batch_size=2)
    augmented = segmenter.segment(images, task="semantic", batch_size=2, tta_scales=(1.0,), tta_flip=False)
    for one, other in zip(plain, augmented):
        np.testing.assert_array_equal(one.segmentation, other.segmentation)
        assert [s.to_dict() for s in one.segments] == [s.to_dict() for s in other.segments]


def test_several_scales_and_flip_run_batched_at_the_image_size(segmenter, images):
    results = segmenter.segment(images, task="semantic", batch_size=2, tta_scales=(0.75, 1.25))
    for image, result in zip(images, results):
        assert result.segmentation.shape == image.shape[:2]
        assert sum(s.area for s in result.segments) == image.shape[0] * image.shape[1]


def test_flip_leaves_a_mirror_symmetric_model_unchanged(images):
    # One image at a time: in a batch the smaller image's right border would mix in the padding (as in the original).
    stub, processor = MirrorSymmetricStub(), Mask2FormerImageProcessor(**SMALL)
    for image in images:
        size = image.shape[:2]
        (one,) = semantic_tta(stub, processor, [image], [size], scales=(1.0,), flip=False)
        (other,) = semantic_tta(stub, processor, [image], [size], scales=(1.0,), flip=True)
        torch.testing.assert_close(other, one, rtol=1e-5, atol=1e-6)
        assert torch.equal(one.argmax(0), other.argmax(0))
        assert len(one.argmax(0).unique()) > 1  # the map is not trivially constant


def test_the_mirrored_view_is_mirrored_back():
    image = np.zeros((32, 64, 3), dtype=np.uint8)
    processor = Mask2FormerImageProcessor(size={"height": 32, "width": 64})
    plain = semantic_tta(LeftRightStub(), processor, [image], [(32, 64)], scales=(1.0,), flip=False)[0]
    assert (plain.argmax(0)[:, :32] == 0).all() and (plain.argmax(0)[:, 32:] == 1).all()
    # The mirrored view also says "0 left, 1 right", i.e. "0 right, 1 left" of the image: the average is even.
    averaged = semantic_tta(LeftRightStub(), processor, [image], [(32, 64)], scales=(1.0,), flip=True)[0]
    torch.testing.assert_close(averaged, torch.full_like(averaged, 0.5), rtol=0, atol=1e-6)


def test_probabilities_are_averaged_not_votes():
    # Widths 32 and 48 say class 0 (0.55 against 0.45), width 64 says class 1 (1.0): a vote would give class 0.
    processor = Mask2FormerImageProcessor(size={"height": 32, "width": 32}, size_divisor=0)
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    averaged = semantic_tta(WidthDependentStub(), processor, [image], [(20, 30)], scales=(1.0, 1.5, 2.0), flip=False)
    expected = torch.tensor([0.55 * 2 / 3, (0.45 * 2 + 1.0) / 3])
    torch.testing.assert_close(averaged[0], expected[:, None, None].expand(2, 20, 30), rtol=1e-5, atol=1e-6)
    assert (averaged[0].argmax(0) == 1).all()


def test_scaled_processor_gives_the_original_ade20k_test_sizes():
    ade20k = Mask2FormerImageProcessor(size={"shortest_edge": 512, "longest_edge": 2048})
    views = [scaled_processor(ade20k, scale, max(DEFAULT_SCALES)) for scale in DEFAULT_SCALES]
    assert [view.size["shortest_edge"] for view in views] == [256, 384, 512, 640, 768, 896]  # TEST.AUG.MIN_SIZES
    assert {view.size["longest_edge"] for view in views} == {3584}  # TEST.AUG.MAX_SIZE
    assert scaled_processor(ade20k, 1.0) is ade20k
    exact = scaled_processor(Mask2FormerImageProcessor(size={"height": 384, "width": 384}), 0.5)
    assert exact.size == {"height": 192, "width": 192}


def test_bad_arguments(segmenter, images):
    with pytest.raises(ValueError, match="tta_scales.*semantic"):
        segmenter.segment(images[0], task="panoptic", tta_scales=(1.0,))
    with pytest.raises(ValueError, match="tta_scales.*at least one"):
        segmenter.segment(images[0], task="semantic", tta_scales=())
    with pytest.raises(ValueError, match="tta_scales.*positive"):
        segmenter.segment(images[0], task="semantic", tta_scales=(1.0, 0.0))
    with pytest.raises(ValueError, match="tta_scales.*positive"):
        segmenter.segment(images[0], task="semantic", tta_scales=(math.nan,))
    with pytest.raises(TypeError, match="tta_scales"):
        segmenter.segment(images[0], task="semantic", tta_scales="1.0")
    with pytest.raises(TypeError, match="tta_flip"):
        segmenter.segment(images[0], task="semantic", tta_scales=(1.0,), tta_flip="no")
    assert check_scales([1, 1.5]) == (1.0, 1.5)
    unresized = Mask2FormerImageProcessor(do_resize=False)
    with pytest.raises(ValueError, match="do_resize"):
        semantic_tta(MirrorSymmetricStub(), unresized, images[:1], [images[0].shape[:2]], scales=(0.5,))
    with pytest.raises(ValueError, match="image_sizes"):
        semantic_tta(MirrorSymmetricStub(), unresized, images, [images[0].shape[:2]], scales=(1.0,))


def test_evaluate_accepts_tta_for_semantic_only(segmenter, images):
    from mask2former.evaluation.evaluate import evaluate

    class Dataset:
        def __init__(self):
            self.categories = [{"id": i, "name": f"class_{i}"} for i in range(len(segmenter.id2label))]

        def __len__(self):
            return 1

        def __getitem__(self, index):
            return {"image": images[0], "segmentation_map": np.zeros(images[0].shape[:2], dtype=np.int32),
                    "file_name": "a.png", "image_id": 0, "segments_info": []}

    report = evaluate(segmenter, Dataset(), "semantic", progress=False, tta_scales=(1.0, 1.5), tta_flip=False)
    assert report["images"] == 1
    with pytest.raises(ValueError, match="tta_scales.*semantic"):
        evaluate(segmenter, Dataset(), "panoptic", progress=False, tta_scales=(1.0,))


@pytest.fixture(scope="module")
def small_checkpoint(checkpoint):
    return checkpoint[0]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory, images):
    folder = tmp_path_factory.mktemp("tta_images")
    for index, image in enumerate(images):
        Image.fromarray(image).save(folder / f"image_{index}.png")
    return folder


@pytest.mark.parametrize(
    ("flags", "options"),
    [
        (["--tta"], {"tta_scales": DEFAULT_SCALES}),
        (["--tta", "--no-tta-flip"], {"tta_scales": DEFAULT_SCALES, "tta_flip": False}),
        (["--tta-scales", "1", "2"], {"tta_scales": (1.0, 2.0)}),
        ([], {}),
    ],
)
@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_tta_flags_map_to_the_library_arguments(command, flags, options):
    from mask2former.cli.main import build_parser
    from mask2former.cli.predict import tta_options

    required = ["--dataset", "semantic", "--images", "x", "--model", "m"] if command == "evaluate" else ["x"]
    args = build_parser().parse_args([command, *required, "--task", "semantic", *flags])
    assert tta_options(args) == options


def test_predict_with_tta(small_checkpoint, image_folder, tmp_path):
    out = tmp_path / "out"
    code = main(["predict", str(image_folder), "--model", str(small_checkpoint), "--task", "semantic",
                 "--out", str(out), "--batch-size", "2", "--tta-scales", "1", "1.5"])
    assert code == 0
    label = np.asarray(Image.open(out / "image_0.label.png"))
    assert label.shape == (50, 70)


def test_predict_tta_with_one_scale_and_no_flip_is_plain(small_checkpoint, image_folder, tmp_path):
    common = ["predict", str(image_folder), "--model", str(small_checkpoint), "--task", "semantic"]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--out", str(tmp_path / "tta"), "--tta-scales", "1", "--no-tta-flip"]) == 0
    for name in ("image_0", "image_1"):
        plain = np.asarray(Image.open(tmp_path / "plain" / f"{name}.label.png"))
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "tta" / f"{name}.label.png")), plain)


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--task", "panoptic", "--tta"], "--task semantic"),
        (["--task", "semantic", "--no-tta-flip"], "--no-tta-flip needs --tta"),
        (["--task", "semantic", "--tta-scales", "0"], "--tta-scales"),
    ],
)
def test_predict_bad_tta_flags(small_checkpoint, image_folder, tmp_path, flags, message, capsys):
    code = main(["predict", str(image_folder), "--model", str(small_checkpoint), "--out", str(tmp_path), *flags])
    assert code == 2
    assert message in capsys.readouterr().err


def test_evaluate_cli_with_tta(small_checkpoint, tmp_path, capsys):
    from mask2former.data.synthetic import write_synthetic_dataset

    write_synthetic_dataset(tmp_path / "data", 2, seed=3, height=48, width=64)
    # The tiny model has 5 classes: keep the first 5 categories, the others' pixels become "other" (ignored).
    categories = json.loads((tmp_path / "data" / "categories.json").read_text())
    categories["categories"] = categories["categories"][:5]
    (tmp_path / "data" / "categories.json").write_text(json.dumps(categories))
    for path in (tmp_path / "data" / "semantic").glob("*.png"):
        labels = np.asarray(Image.open(path))
        Image.fromarray(np.where(labels > 5, 0, labels).astype(np.uint8)).save(path)
    dataset = ["--dataset", "semantic", "--annotations", str(tmp_path / "data" / "semantic"),
               "--categories", str(tmp_path / "data" / "categories.json"), "--images", str(tmp_path / "data" / "images")]
    out = tmp_path / "report.json"
    assert main(["evaluate", "--model", str(small_checkpoint), "--task", "semantic", *dataset, "--out", str(out),
                 "--tta-scales", "0.75", "1.25"]) == 0
    assert json.loads(out.read_text())["images"] == 2
    code = main(["evaluate", "--predictions", str(tmp_path), "--task", "semantic", *dataset, "--tta"])
    assert code == 2 and "need --model" in capsys.readouterr().err
    code = main(["evaluate", "--model", str(small_checkpoint), "--task", "instance", "--tta",
                 "--dataset", "coco-instances", "--annotations", "x.json", "--images", str(tmp_path)])
    assert code == 2 and "--task semantic" in capsys.readouterr().err
