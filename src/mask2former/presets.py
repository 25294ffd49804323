"""Presets: every released Mask2Former and MaskFormer checkpoint, by name.

A preset names one model of the original model zoos (facebookresearch/Mask2Former and facebookresearch/MaskFormer
``MODEL_ZOO.md``): its architecture, the original detectron2 file (``model_final_*.pkl``) and where to get it, the
Hugging Face hub id where ``transformers`` publishes it, the task and dataset, and the published numbers. The table is
the data file ``mask2former/data/presets.json``; this module turns an entry into what loading needs:

- :meth:`Preset.config`: the model config (backbone sizes, number of classes and queries, class names from the
  category lists packaged in ``mask2former/data/categories``), so that an original ``.pkl`` loads by preset name;
- :meth:`Preset.image_processor`: the test-time preprocessing of the original config (shortest edge, longest edge);
- :func:`resolve_hub_id`: a preset name as a hub id, for ``from_pretrained("mask2former-swin-tiny-coco-panoptic")``.

Names are ``{mask2former|maskformer}-{backbone}-{dataset}[-{task}]`` and follow the hub ids where there are any
(``mask2former-swin-base-IN21k-coco-panoptic``; MaskFormer's ResNet ones are ``maskformer-r50-ade`` for the hub's
``facebook/maskformer-resnet50-ade``). Lookups ignore case.
"""

from __future__ import annotations

import difflib
import json
import os
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from .config import DetrDecoderConfig, Mask2FormerConfig, MaskFormerConfig, ResNetConfig, SwinConfig

# Swin sizes of the original configs (MODEL.SWIN.*): embed dim, depths, heads, window. B and L were pre-trained at
# 384 with window 12, T and S at 224 with window 7. "swin-base-IN21k" differs from "swin-base" only in pre-training.
_SWIN: dict[str, dict[str, Any]] = {
    "swin-tiny": dict(embed_dim=96, depths=[2, 2, 6, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
    "swin-small": dict(embed_dim=96, depths=[2, 2, 18, 2], num_heads=[3, 6, 12, 24], window_size=7, image_size=224),
    "swin-base": dict(embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32], window_size=12, image_size=384),
    "swin-large": dict(embed_dim=192, depths=[2, 2, 18, 2], num_heads=[6, 12, 24, 48], window_size=12, image_size=384),
}
_SWIN["swin-base-IN21k"] = _SWIN["swin-base"]
# ResNet stage depths; detectron2's "basic" stem and STRIDE_IN_1X1: False (torchvision layout).
_RESNET_DEPTHS: dict[str, list[int]] = {"r50": [3, 4, 6, 3], "r101": [3, 4, 23, 3]}
BACKBONE_LABELS = {
    "r50": "R50",
    "r101": "R101",
    "r101c": "R101c",
    "swin-tiny": "Swin-T",
    "swin-small": "Swin-S",
    "swin-base": "Swin-B",
    "swin-base-IN21k": "Swin-B (IN21k)",
    "swin-large": "Swin-L (IN21k)",
}
# The label value the original datasets ignore (Mapillary Vistas: 65, its "Unlabeled" class).
_IGNORE_INDEX = {"mapillary-vistas": 65}


@dataclass(frozen=True)
class Preset:
    """One released checkpoint.

    Attributes:
        name: the preset name, e.g. ``"mask2former-swin-tiny-coco-panoptic"``.
        architecture: ``"mask2former"`` or ``"maskformer"``.
        backbone: ``"r50"``, ``"r101"``, ``"r101c"``, ``"swin-tiny"``, ``"swin-small"``, ``"swin-base"``,
            ``"swin-base-IN21k"`` or ``"swin-large"``.
        task: what the model was trained and evaluated for: ``"panoptic"``, ``"instance"`` or ``"semantic"``.
        dataset: ``"coco"``, ``"ade20k"``, ``"cityscapes"``, ``"mapillary-vistas"``, ``"coco-stuff-10k"`` or
            ``"ade20k-full"``.
        num_labels: K, the number of classes (without "no object").
        num_queries: Q.
        categories: the packaged category list with the class names, or None (names ``LABEL_{i}``).
        hf_id: the Hugging Face hub id of the converted checkpoint, or None where none is published.
        original_file: the file name in the original model zoo (``model_final_*.pkl``; unique per model).
        url: where the original file is downloaded from.
        config_file: the original detectron2 config (name without ``.yaml``).
        metrics: the published numbers (``PQ``, ``AP``, ``mIoU``, ``AP_boundary``, ``AP50``, ``mIoU_ms_flip``).
        test_size: (shortest edge, longest edge) of the original test-time resize.
        loadable: whether this library implements the architecture; if not, ``note`` says why.
    """

    name: str
    architecture: str
    backbone: str
    task: str
    dataset: str
    num_labels: int
    num_queries: int
    categories: str | None
    hf_id: str | None
    original_file: str
    url: str
    config_file: str | None
    metrics: dict[str, float] = field(default_factory=dict)
    test_size: tuple[int, int] = (800, 1333)
    loadable: bool = True
    note: str | None = None

    @property
    def backbone_label(self) -> str:
        """The backbone as the model zoos write it (``"Swin-B (IN21k)"``)."""
        return BACKBONE_LABELS[self.backbone]

    def id2label(self) -> dict[int, str]:
        """Class index -> name, from the packaged category list (contiguous order of the dataset's ids)."""
        if self.categories is None:
            return {i: f"LABEL_{i}" for i in range(self.num_labels)}
        from .data.datasets import load_categories

        categories = sorted(load_categories(self.categories)["categories"], key=lambda category: category["id"])
        return {index: category["name"] for index, category in enumerate(categories)}

    def config(self) -> Mask2FormerConfig | MaskFormerConfig:
        """The model config of this checkpoint.

        Raises:
            ValueError: the architecture is not implemented here (``loadable`` is False).
        """
        if not self.loadable:
            raise ValueError(f"preset {self.name!r} cannot be built: {self.note}")
        if self.backbone in _SWIN:
            backbone: SwinConfig | ResNetConfig = SwinConfig(**_SWIN[self.backbone], drop_path_rate=0.3)
        else:
            backbone = ResNetConfig(depths=list(_RESNET_DEPTHS[self.backbone]))
        if self.architecture == "mask2former":
            return Mask2FormerConfig(backbone_config=backbone, num_queries=self.num_queries, id2label=self.id2label())
        return MaskFormerConfig(
            backbone_config=backbone,
            decoder_config=DetrDecoderConfig(num_queries=self.num_queries),
            id2label=self.id2label(),
        )

    def image_processor(self) -> Any:
        """A :class:`~mask2former.processing.image_processor.Mask2FormerImageProcessor` with the original test-time
        resize (shortest edge, capped longest edge), padding to a multiple of 32 and the dataset's ignore label."""
        from .processing.image_processor import Mask2FormerImageProcessor

        shortest, longest = self.test_size
        return Mask2FormerImageProcessor(
            size={"shortest_edge": shortest, "longest_edge": longest},
            size_divisor=32,
            ignore_index=_IGNORE_INDEX.get(self.dataset, 255),
            num_labels=self.num_labels,
        )

    def to_dict(self) -> dict[str, Any]:
        """The entry as stored in ``presets.json``."""
        data = dict(self.__dict__)
        data["test_size"] = list(self.test_size)
        return data


@lru_cache(maxsize=1)
def _load() -> tuple[Preset, ...]:
    text = resources.files("mask2former.data").joinpath("presets.json").read_text(encoding="utf-8")
    presets = []
    for entry in json.loads(text)["presets"]:
        entry = dict(entry)
        entry["test_size"] = tuple(entry["test_size"])
        presets.append(Preset(**entry))
    return tuple(presets)


def list_models(
    *,
    architecture: str | None = None,
    task: str | None = None,
    dataset: str | None = None,
    loadable: bool | None = None,
) -> list[Preset]:
    """Every released checkpoint of the Mask2Former and MaskFormer model zoos, optionally filtered.

    Args:
        architecture: ``"mask2former"`` or ``"maskformer"``.
        task: ``"panoptic"``, ``"instance"`` or ``"semantic"``.
        dataset: e.g. ``"coco"``, ``"ade20k"``, ``"cityscapes"``, ``"mapillary-vistas"``.
        loadable: only the models this library can (True) or cannot (False) build.

    Returns:
        :class:`Preset` entries in the order of the model zoos.
    """
    wanted = {"architecture": architecture, "task": task, "dataset": dataset, "loadable": loadable}
    return [
        preset
        for preset in _load()
        if all(value is None or getattr(preset, key) == value for key, value in wanted.items())
    ]


def find_preset(name: str) -> Preset | None:
    """The preset of that name (case ignored), or None."""
    lowered = name.lower()
    for preset in _load():
        if preset.name.lower() == lowered:
            return preset
    return None


def get_preset(name: str) -> Preset:
    """The preset of that name (case ignored).

    Raises:
        ValueError: no such preset; the message suggests the closest names.
    """
    preset = find_preset(name)
    if preset is None:
        names = [preset.name for preset in _load()]
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"no preset named {name!r}{hint} (mask2former.list_models() lists all {len(names)})")
    return preset


def find_preset_by_file(path: str | os.PathLike) -> Preset | None:
    """The preset whose original file has this file name (``model_final_9fd0ae.pkl``), or None."""
    file_name = Path(path).name
    for preset in _load():
        if preset.original_file == file_name:
            return preset
    return None


def resolve_hub_id(path_or_name: str | os.PathLike) -> str | os.PathLike:
    """An existing path or a hub id as given; a preset name as its Hugging Face hub id.

    Raises:
        FileNotFoundError: the preset has no published Hugging Face checkpoint (the message says where the original
            file is and how to load or convert it).
    """
    if Path(path_or_name).exists():
        return path_or_name
    preset = find_preset(str(path_or_name))
    if preset is None:
        return path_or_name
    if preset.hf_id is None:
        how = (
            f"download the original {preset.original_file} from {preset.url}, then load it with "
            f"from_pretrained(PATH, config={preset.name!r}) or convert it with `mask2former convert --from detectron2 "
            f"PATH --preset {preset.name} OUT_DIR`"
            if preset.loadable
            else f"and this library cannot build it: {preset.note}"
        )
        raise FileNotFoundError(f"preset {preset.name!r} has no Hugging Face checkpoint; {how}")
    return preset.hf_id


def _format_metrics(metrics: dict[str, float]) -> str:
    names = {"AP_boundary": "boundary AP", "mIoU_ms_flip": "mIoU (ms+flip)"}
    return ", ".join(f"{names.get(key, key)} {value:.1f}" for key, value in metrics.items())


def markdown_table() -> str:
    """The table of supported checkpoints that README.md shows (a test keeps the two equal)."""
    lines = [
        "| preset | backbone | task | dataset | K | Q | published | Hugging Face id | original file |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for preset in _load():
        hub = f"`{preset.hf_id}`" if preset.hf_id else "-"
        name = f"`{preset.name}`" if preset.loadable else f"`{preset.name}` (not supported)"
        lines.append(
            f"| {name} | {preset.backbone_label} | {preset.task} | {preset.dataset} | {preset.num_labels} | "
            f"{preset.num_queries} | {_format_metrics(preset.metrics)} | {hub} | "
            f"[{preset.original_file}]({preset.url}) |"
        )
    return "\n".join(lines)


__all__ = [
    "Preset",
    "list_models",
    "get_preset",
    "find_preset",
    "find_preset_by_file",
    "resolve_hub_id",
    "markdown_table",
]
