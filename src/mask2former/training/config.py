"""The training configuration: one dataclass whose fields are the ``mask2former train`` flags and the keys of a
JSON (or YAML) config file.

Precedence: the dataclass defaults, then ``--config FILE``, then the flags given on the command line. A field
``clip_grad_norm`` is the flag ``--clip-grad-norm`` and the file key ``clip_grad_norm`` (``clip-grad-norm`` is
accepted too). The optimization defaults are the original Mask2Former recipe (``configs/coco/.../Base-*.yaml``:
AdamW, lr 1e-4, weight decay 0.05, backbone lr x 0.1, poly schedule with power 0.9, full-model gradient clipping at
norm 0.01).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DATASETS = ("coco-panoptic", "coco-instances", "semantic", "cityscapes", "synthetic")
TASKS = ("panoptic", "instance", "semantic")
AUGMENTATIONS = ("resize-crop", "lsj", "none")
AMP_MODES = ("no", "bf16", "fp16")
DEFAULT_SCALE_RANGES = {"resize-crop": (0.5, 2.0), "lsj": (0.1, 2.0), "none": (1.0, 1.0)}
GROUPS = ("model", "data", "augmentation", "optimization", "run")


def _field(default: Any, help: str, group: str, **kwargs: Any) -> Any:
    """A dataclass field carrying its ``--help`` text and its section of the help."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help, "group": group}, **kwargs)
    return field(default=default, metadata={"help": help, "group": group}, **kwargs)


@dataclass
class TrainConfig:
    """Everything a training run needs. See ``mask2former train --help`` for each field."""

    # --- model
    model: str | None = _field(
        None,
        "checkpoint folder or hub id to fine-tune, or a config.json file for a new, randomly initialized model",
        "model",
    )
    num_labels: int | None = _field(
        None,
        "number of classes K (default: the dataset's category count); a checkpoint with another count gets a new, "
        "randomly initialized class head",
        "model",
    )
    inference_size: int | None = _field(
        None,
        "shortest edge of the image processor saved with the model (default: the checkpoint's processor, else the "
        "crop size)",
        "model",
    )
    # --- data
    dataset: str | None = _field(None, f"dataset format: {', '.join(DATASETS)}", "data")
    task: str = _field("panoptic", f"targets and metric: {', '.join(TASKS)} (instance: things only)", "data")
    train_images: str | None = _field(None, "training images folder (cityscapes: the dataset root)", "data")
    train_annotations: str | None = _field(
        None, "training annotations: the COCO JSON (coco-*) or the label PNG folder (semantic)", "data"
    )
    train_panoptic_root: str | None = _field(
        None, "coco-panoptic: the training PNG folder (default: the JSON's path without .json)", "data"
    )
    val_images: str | None = _field(None, "validation images folder (cityscapes: the dataset root); none: no evaluation", "data")
    val_annotations: str | None = _field(None, "validation annotations, as --train-annotations", "data")
    val_panoptic_root: str | None = _field(None, "coco-panoptic: the validation PNG folder", "data")
    categories: str = _field("ade20k", "semantic: packaged category list name or JSON file", "data")
    reduce_labels: bool = _field(True, "semantic: label 0 is 'other' (ignored) and k means class k-1 (ADE20K)", "data")
    train_split: str = _field("train", "cityscapes: the training split", "data")
    val_split: str = _field("val", "cityscapes: the validation split", "data")
    synthetic_train_images: int = _field(1000, "synthetic: scenes generated for training", "data")
    synthetic_val_images: int = _field(50, "synthetic: held-out scenes generated for evaluation (0: none)", "data")
    synthetic_image_size: int = _field(256, "synthetic: height and width of the scenes", "data")
    synthetic_seed: int = _field(0, "synthetic: seed of the scenes (evaluation uses the next seed)", "data")
    # --- augmentation
    augmentation: str = _field(
        "resize-crop",
        "resize-crop: shortest edge scaled to crop size x a random scale, random crop (ADE20K/Cityscapes recipe); "
        "lsj: large-scale jitter, fit into crop size x a random scale, then crop/pad to the crop size (COCO recipe); "
        "none: images as they are",
        "augmentation",
    )
    crop_size: int = _field(512, "height and width of the training crops", "augmentation")
    scale_range: tuple[float, float] | None = _field(
        None, "random scale range (default: 0.5 2.0 for resize-crop, 0.1 2.0 for lsj)", "augmentation"
    )
    flip: bool = _field(True, "random horizontal flip (probability 0.5)", "augmentation")
    color_jitter: float = _field(
        0.0, "strength s of brightness, contrast and saturation jitter (factors in [1-s, 1+s]; 0: off)", "augmentation"
    )
    # --- optimization
    max_steps: int = _field(10000, "optimizer steps to train for", "optimization")
    batch_size: int = _field(16, "images per step over all processes (divisible by the number of processes)", "optimization")
    lr: float = _field(1e-4, "AdamW learning rate", "optimization")
    weight_decay: float = _field(0.05, "AdamW weight decay (none on norm layers and embeddings)", "optimization")
    backbone_lr_multiplier: float = _field(0.1, "learning rate factor of the backbone", "optimization")
    warmup_steps: int = _field(0, "linear warm-up steps (from lr x 0.001)", "optimization")
    poly_power: float = _field(0.9, "poly schedule: lr x (1 - step / max_steps) ** power", "optimization")
    clip_grad_norm: float = _field(0.01, "clip the gradient norm of the whole model (0: off)", "optimization")
    amp: str = _field(
        "no", "mixed precision: no, bf16 (autocast; CPU or CUDA) or fp16 (CUDA only, with a gradient scaler)",
        "optimization",
    )
    # --- run
    output_dir: str = _field("train_output", "folder for checkpoints, log.jsonl and the final model", "run")
    resume: str | None = _field(
        None, "continue from a training checkpoint: its path, or 'auto' for the latest in --output-dir", "run"
    )
    seed: int = _field(0, "seed of the data order, augmentations and initialization", "run")
    device: str | None = _field(None, "cpu, cuda, cuda:1, ... (default: cuda if available; torchrun: one GPU per process)", "run")
    num_workers: int = _field(2, "data loading worker processes per training process", "run")
    log_every: int = _field(20, "steps between lines of log.jsonl", "run")
    save_every: int = _field(1000, "steps between checkpoints (0: only at the end and on interruption)", "run")
    keep_checkpoints: int = _field(2, "training checkpoints kept in output_dir/checkpoints (older ones deleted)", "run")
    eval_every: int = _field(0, "steps between evaluations on the validation set (0: only at the end)", "run")
    eval_limit: int | None = _field(None, "evaluate on the first N validation images only", "run")
    progress: bool = _field(True, "show a tqdm bar with the loss and the learning rate", "run")

    def __post_init__(self) -> None:
        if self.scale_range is not None:
            self.scale_range = tuple(float(value) for value in self.scale_range)  # type: ignore[assignment]
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the first field with an impossible value."""
        for name, choices in (("task", TASKS), ("augmentation", AUGMENTATIONS), ("amp", AMP_MODES)):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name} must be one of {', '.join(choices)}; got {getattr(self, name)!r}")
        if self.dataset is not None and self.dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        positive = ("crop_size", "max_steps", "batch_size", "log_every", "keep_checkpoints", "synthetic_image_size")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        non_negative = (
            "warmup_steps", "save_every", "eval_every", "num_workers", "clip_grad_norm", "weight_decay", "color_jitter",
            "synthetic_train_images", "synthetic_val_images",
        )
        for name in non_negative:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("num_labels", "inference_size", "eval_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.backbone_lr_multiplier < 0:
            raise ValueError(f"backbone_lr_multiplier must be >= 0, got {self.backbone_lr_multiplier}")
        if self.color_jitter >= 1:
            raise ValueError(f"color_jitter must be < 1 (factors in [1 - s, 1 + s]), got {self.color_jitter}")
        if self.scale_range is not None:
            if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
                raise ValueError(f"scale_range must be two numbers 0 < min <= max, got {self.scale_range}")

    @property
    def resolved_scale_range(self) -> tuple[float, float]:
        """``scale_range``, or the augmentation's default."""
        return self.scale_range if self.scale_range is not None else DEFAULT_SCALE_RANGES[self.augmentation]

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON-ready values (what a config file holds)."""
        data = dataclasses.asdict(self)
        if data["scale_range"] is not None:
            data["scale_range"] = list(data["scale_range"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "the config") -> TrainConfig:
        """Build from a dict; an unknown key raises a ValueError naming it and the closest field."""
        return cls(**_checked_fields(data, source))

    @classmethod
    def from_file(cls, path: str | os.PathLike, **overrides: Any) -> TrainConfig:
        """Read a JSON (or, with PyYAML installed, YAML) file; ``overrides`` replace its values."""
        data = _checked_fields(load_config_file(path), repr(str(path)))
        data.update(_checked_fields(overrides, "the overrides"))
        return cls(**data)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _checked_fields(data: dict[str, Any], source: str) -> dict[str, Any]:
    names = field_names()
    checked = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in names:
            close = difflib.get_close_matches(name, names, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid fields: {', '.join(names)}"
            raise ValueError(f"unknown config field {key!r} in {source}{hint}")
        checked[name] = _typed(name, value, source)
    return checked


def _typed(name: str, value: Any, source: str) -> Any:
    """``value`` checked against the field's type (ints are accepted for floats, lists for pairs)."""
    kind, optional = _base_type(typing.get_type_hints(TrainConfig)[name])
    if value is None:
        if optional:
            return None
    elif kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif kind is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif kind in (str, bool) and isinstance(value, kind):
        return value
    elif typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)) and len(value) == 2:
        if all(isinstance(item, (int, float)) and not isinstance(item, bool) for item in value):
            return tuple(float(item) for item in value)
    expected = "two numbers" if typing.get_origin(kind) is tuple else kind.__name__
    raise ValueError(
        f"config field {name!r} in {source} must be {expected}{' or null' if optional else ''}, got {value!r}"
    )


def load_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping stored in a JSON or YAML config file (YAML needs PyYAML, which is not a dependency)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"config file not found: {str(path)!r}") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(
                f"{str(path)!r} is YAML but PyYAML is not installed: `pip install pyyaml`, or write the config as JSON"
            ) from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"{str(path)!r} is not valid YAML: {error}") from None
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{str(path)!r} is not valid JSON: {error}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{str(path)!r} must hold a mapping of field names to values, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------- command line


def _base_type(annotation: Any) -> tuple[Any, bool]:
    """(the type without None, whether None is allowed)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        arguments = [a for a in typing.get_args(annotation) if a is not type(None)]
        return arguments[0], len(arguments) < len(typing.get_args(annotation))
    return annotation, False


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per field. Defaults are suppressed: only the flags a user gives are set, so the
    defaults live in :class:`TrainConfig` alone (and the help shows them)."""
    parser.add_argument(
        "--config", metavar="FILE", default=argparse.SUPPRESS,
        help="JSON or YAML file of fields (keys as below, with _ or -); flags given here override it",
    )
    hints = typing.get_type_hints(TrainConfig)
    sections = {group: parser.add_argument_group(f"{group} options") for group in GROUPS}
    for item in dataclasses.fields(TrainConfig):
        kind, _ = _base_type(hints[item.name])
        flag = "--" + item.name.replace("_", "-")
        default = item.default if item.default is not dataclasses.MISSING else None
        shown = "" if default is None else f" (default: {' '.join(map(str, default)) if isinstance(default, tuple) else default})"
        options: dict[str, Any] = {"default": argparse.SUPPRESS, "dest": item.name, "help": item.metadata["help"] + shown}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            options.update(nargs=2, type=float, metavar=("MIN", "MAX"))
        else:
            options["type"] = kind
            choices = {"dataset": DATASETS, "task": TASKS, "augmentation": AUGMENTATIONS, "amp": AMP_MODES}.get(item.name)
            if choices:
                options["choices"] = choices
        sections[item.metadata["group"]].add_argument(flag, **options)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The config of parsed arguments: the file (if ``--config``), then the flags that were given."""
    given = {name: getattr(args, name) for name in field_names() if hasattr(args, name)}
    config_file = getattr(args, "config", None)
    if config_file is not None:
        return TrainConfig.from_file(config_file, **given)
    return TrainConfig.from_dict(given, source="the command line")
