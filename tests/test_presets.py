"""Presets: the table of released checkpoints, the configs they build, hub-id resolution, README agreement."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch

import mask2former
from mask2former import Mask2FormerConfig, MaskFormerConfig, MaskFormerForInstanceSegmentation, Segmenter
from mask2former.config import ResNetConfig, SwinConfig
from mask2former.data.datasets import load_categories
from mask2former.presets import find_preset_by_file, get_preset, list_models, markdown_table, resolve_hub_id

from .conftest import TINY_MASK2FORMER, TINY_SWIN

README = Path(__file__).resolve().parents[1] / "README.md"


def test_every_released_checkpoint_is_listed_once():
    presets = mask2former.list_models()
    assert len(presets) == 71
    assert len({p.name for p in presets}) == len(presets)
    assert len({p.original_file for p in presets}) == len(presets)  # the md5 prefix makes file names unique
    assert len(list_models(architecture="mask2former")) == 47
    assert len(list_models(architecture="maskformer")) == 24
    for preset in presets:
        assert re.fullmatch(r"model_final_[0-9a-f]{6}\.pkl", preset.original_file)
        assert preset.url.startswith("https://dl.fbaipublicfiles.com/maskformer/") and preset.url.endswith(
            preset.original_file
        )
        assert preset.task in ("panoptic", "instance", "semantic")
        assert preset.hf_id is None or preset.hf_id == f"facebook/{preset.name}" or preset.architecture == "maskformer"
        assert preset.metrics and all(0 < value < 100 for value in preset.metrics.values())
        assert preset.loadable == (preset.note is None)


def test_published_numbers_and_released_configs():
    """Spot checks against the model zoos and the released config.json files."""
    expected = {
        "mask2former-r50-coco-panoptic": {"PQ": 51.9},
        "mask2former-swin-tiny-coco-panoptic": {"PQ": 53.2},
        "mask2former-swin-base-IN21k-coco-panoptic": {"PQ": 56.4},
        "mask2former-swin-large-coco-panoptic": {"PQ": 57.8},
        "mask2former-r50-coco-instance": {"AP": 43.7},
        "mask2former-swin-large-coco-instance": {"AP": 50.1},
        "mask2former-r50-ade-semantic": {"mIoU": 47.2},
        "mask2former-swin-large-ade-semantic": {"mIoU": 56.1},
        "maskformer-swin-base-ade": {"mIoU": 52.7},
        "maskformer-r50-ade": {"mIoU": 44.5},
    }
    for name, metrics in expected.items():
        for key, value in metrics.items():
            assert get_preset(name).metrics[key] == value, name
    for name, labels, queries in [
        ("mask2former-swin-tiny-coco-instance", 80, 100),
        ("mask2former-swin-small-ade-semantic", 150, 100),
        ("mask2former-swin-base-coco-panoptic", 133, 100),
        ("mask2former-swin-large-cityscapes-instance", 8, 200),
        ("mask2former-swin-large-mapillary-vistas-panoptic", 65, 200),
    ]:
        config = get_preset(name).config()
        assert (config.num_labels, config.num_queries) == (labels, queries), name


def test_every_loadable_preset_builds_its_config():
    for preset in list_models(loadable=True):
        config = preset.config()
        assert config.num_labels == preset.num_labels == len(config.id2label)
        if preset.architecture == "mask2former":
            assert isinstance(config, Mask2FormerConfig) and config.num_queries == preset.num_queries
        else:
            assert isinstance(config, MaskFormerConfig) and config.decoder_config.num_queries == preset.num_queries
        backbone = config.backbone_config
        if preset.backbone.startswith("swin"):
            assert isinstance(backbone, SwinConfig)
            assert backbone.window_size == (12 if preset.backbone.startswith(("swin-base", "swin-large")) else 7)
        else:
            assert isinstance(backbone, ResNetConfig) and sum(backbone.depths) == (
                16 if preset.backbone == "r50" else 33
            )
        if preset.categories is not None:
            assert len(load_categories(preset.categories)["categories"]) == preset.num_labels
        processor = preset.image_processor()
        assert processor.size == {"shortest_edge": preset.test_size[0], "longest_edge": preset.test_size[1]}
    with pytest.raises(ValueError, match="deeplab"):
        get_preset("maskformer-r101c-ade").config()


def test_class_names_come_from_the_packaged_lists():
    assert get_preset("mask2former-swin-tiny-coco-panoptic").id2label()[132] == "rug-merged"
    assert get_preset("mask2former-swin-tiny-coco-instance").id2label()[79] == "toothbrush"
    assert list(get_preset("mask2former-swin-tiny-cityscapes-instance").id2label().values()) == [
        "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
    ]  # fmt: skip
    vistas = get_preset("mask2former-swin-large-mapillary-vistas-semantic")
    assert vistas.id2label()[0] == "Bird" and vistas.id2label()[64] == "Ego Vehicle"
    assert vistas.image_processor().ignore_index == 65
    assert get_preset("maskformer-r50-coco-stuff").id2label()[170] == "LABEL_170"  # no packaged list


def test_lookups():
    assert get_preset("MASK2FORMER-SWIN-TINY-COCO-PANOPTIC").name == "mask2former-swin-tiny-coco-panoptic"
    assert find_preset_by_file("/some/where/model_final_9fd0ae.pkl").name == "mask2former-swin-tiny-coco-panoptic"
    assert find_preset_by_file("model_final_000000.pkl") is None
    assert resolve_hub_id("mask2former-swin-tiny-coco-panoptic") == "facebook/mask2former-swin-tiny-coco-panoptic"
    assert resolve_hub_id("maskformer-r50-ade") == "facebook/maskformer-resnet50-ade"
    assert resolve_hub_id("facebook/some-model") == "facebook/some-model"
    with pytest.raises(FileNotFoundError, match=r"model_final_94dc52\.pkl.*config='mask2former-r50-coco-panoptic'"):
        resolve_hub_id("mask2former-r50-coco-panoptic")
    with pytest.raises(FileNotFoundError, match="not implemented"):
        resolve_hub_id("maskformer-r50-coco")


def _cache(root: Path, hub_id: str, folder: Path) -> None:
    """A Hugging Face cache entry for ``hub_id`` holding ``folder``'s files (the layout huggingface_hub writes)."""
    repo = root / ("models--" + hub_id.replace("/", "--"))
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for file in folder.iterdir():
        shutil.copy(file, snapshot)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)


def test_segmenter_resolves_a_preset_through_the_hub_cache(tmp_path):
    """Segmenter.from_pretrained(preset name) finds the preset's hub id in the local cache, offline, and picks the
    model class from config.json (Mask2Former or MaskFormer)."""
    from mask2former.config import DetrDecoderConfig

    from .conftest import TINY_DETR, TINY_MASKFORMER

    torch.manual_seed(0)
    mask2former_config = Mask2FormerConfig(backbone_config=SwinConfig(**TINY_SWIN), num_labels=3, **TINY_MASK2FORMER)
    maskformer_config = MaskFormerConfig(
        backbone_config=SwinConfig(**TINY_SWIN), decoder_config=DetrDecoderConfig(**TINY_DETR), num_labels=3,
        **TINY_MASKFORMER,
    )  # fmt: skip
    for name, model in [
        (
            "mask2former-swin-tiny-coco-panoptic",
            mask2former.Mask2FormerForUniversalSegmentation.from_config(mask2former_config),
        ),
        ("maskformer-swin-tiny-ade", MaskFormerForInstanceSegmentation.from_config(maskformer_config)),
    ]:
        model.save_pretrained(tmp_path / name)
        _cache(tmp_path / "cache", get_preset(name).hf_id, tmp_path / name)
        segmenter = Segmenter.from_pretrained(name, cache_dir=tmp_path / "cache")
        assert type(segmenter.model) is type(model)
        for key, value in model.state_dict().items():
            assert torch.equal(segmenter.model.state_dict()[key], value), key


def test_readme_table_matches_the_presets():
    text = README.read_text(encoding="utf-8")
    start, end = (
        "<!-- presets table: generated by mask2former.presets.markdown_table() -->",
        "<!-- end of presets table -->",
    )
    assert start in text and end in text, "README.md has no presets table"
    table = text.split(start, 1)[1].split(end, 1)[0].strip()
    assert table == markdown_table()
