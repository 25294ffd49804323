"""Training data: the dataset readers as training examples, a resumable distributed sampler, and the collate that
builds the model's inputs and targets.

An example is a reader item (see :mod:`mask2former.data.datasets`) augmented by :class:`TrainAugmentation` and
turned into targets for the task, as the original Mask2Former dataset mappers do:

- panoptic: one mask per segment (things and stuff);
- instance: one mask per thing segment (stuff pixels get no mask);
- semantic: one mask per class present.

Pixels of ``IGNORE_INDEX`` (void, crowd, padding) belong to no mask. The targets are those the image processor
builds from the same map (``mask_labels`` (N, H, W) float, ``class_labels`` (N,) int64, in increasing id order).

The random choices of an example come from a generator seeded by (seed, epoch, dataset index): the data a step
sees depends neither on the number of loader workers nor on the number of processes, and a resumed run sees exactly
what an uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler

from ..data.datasets import IGNORE_INDEX
from .augment import TrainAugmentation

SIZE_DIVISOR = 32


class SyntheticPanopticDataset(Dataset):
    """The scenes of ``mask2former make-synthetic``, generated in memory, as a reader of COCO panoptic files yields
    them (the same categories and contiguous ids): scene ``i`` is drawn from ``numpy.random.default_rng([seed, i])``.
    """

    def __init__(self, num_images: int, *, seed: int = 0, size: int = 256, max_objects: int = 5) -> None:
        from ..data.datasets import _contiguous_categories
        from ..data.synthetic import CATEGORIES

        if num_images < 1:
            raise ValueError(f"num_images must be >= 1 (the dataset is empty), got {num_images}")
        self.num_images, self.seed, self.size, self.max_objects = num_images, seed, size, max_objects
        self.categories, self.to_contiguous = _contiguous_categories(CATEGORIES)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict[str, Any]:
        from ..data.synthetic import generate_scene

        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        scene = generate_scene(np.random.default_rng([self.seed, index]), self.size, self.size, self.max_objects)
        segmentation = np.full(scene.segment_ids.shape, IGNORE_INDEX, dtype=np.int32)
        mapping, segments = {}, []
        for number, segment in enumerate(scene.segments):
            region = scene.segment_ids == segment["id"]
            segmentation[region] = number
            category = self.to_contiguous[segment["category_id"]]
            mapping[number] = category
            segments.append({"id": number, "category_id": category, "iscrowd": 0, "area": int(region.sum()),
                             "bbox": segment["bbox"]})
        return {
            "image": scene.image,
            "image_id": index,
            "file_name": f"synthetic-{self.seed}-{index:06d}",
            "segmentation_map": segmentation,
            "instance_id_to_semantic_id": mapping,
            "segments_info": segments,
        }


def example_seed(seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for the augmentation of one example."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def targets_from_map(
    label: Tensor, instance_to_class: dict[int, int] | None, task: str, thing_classes: set[int], num_labels: int,
    name: str = "an image",
) -> tuple[Tensor, Tensor]:
    """Masks and classes of one (H, W) label map.

    Args:
        label: segment ids (with ``instance_to_class``) or class ids per pixel; ``IGNORE_INDEX`` for no mask.
        instance_to_class: segment id -> class id; None when the map holds class ids.
        task: "panoptic", "instance" (thing segments only) or "semantic" (one mask per class).
        thing_classes: the classes with ``isthing``.
        num_labels: K; a class id outside [0, K) raises a ValueError naming ``name``.

    Returns:
        masks (N, H, W) bool and classes (N,) int64, in increasing segment (or class) id order.
    """
    ids = torch.unique(label)  # sorted
    ids = ids[ids != IGNORE_INDEX]
    if instance_to_class is None:
        classes = ids.clone()
    else:
        missing = [i for i in ids.tolist() if i not in instance_to_class]
        if missing:
            raise ValueError(f"{name}: segment ids {missing[:5]} of the map have no class in instance_id_to_semantic_id")
        classes = torch.tensor([int(instance_to_class[i]) for i in ids.tolist()], dtype=torch.long)
    bad = classes[(classes < 0) | (classes >= num_labels)]
    if len(bad):
        raise ValueError(
            f"{name} has class id {int(bad[0])}, outside [0, {num_labels}) for num_labels={num_labels}: the model "
            f"cannot predict it (check num_labels, the category list and reduce_labels)"
        )
    if task == "semantic" and instance_to_class is not None:
        lookup = torch.full((int(ids.max()) + 1 if len(ids) else 1,), -1, dtype=torch.long)
        lookup[ids] = classes
        class_map = torch.where(label == IGNORE_INDEX, -1, lookup[label.clamp(0, len(lookup) - 1)])
        classes = torch.unique(class_map)
        classes = classes[classes >= 0]
        return class_map[None] == classes[:, None, None], classes
    if task == "instance":
        keep = torch.tensor([int(c) in thing_classes for c in classes.tolist()], dtype=torch.bool)
        ids, classes = ids[keep], classes[keep]
    return label[None] == ids[:, None, None], classes.long()


class TrainingExamples(Dataset):
    """Reader items -> augmented examples (image, valid pixels, masks, classes), indexed by ``(epoch, index)``.

    Args:
        dataset: a reader (items with ``image``, ``segmentation_map`` and optionally ``instance_id_to_semantic_id``;
            ``categories`` with ``isthing``).
        augmentation: the transform of image and map.
        task: "panoptic", "instance" or "semantic".
        num_labels: K, to check the class ids.
        seed: with the epoch and index, seeds the example's random choices.
    """

    def __init__(self, dataset: Any, augmentation: TrainAugmentation, *, task: str, num_labels: int, seed: int) -> None:
        self.dataset = dataset
        self.augmentation = augmentation
        self.task = task
        self.num_labels = num_labels
        self.seed = seed
        self.thing_classes = {int(c["id"]) for c in getattr(dataset, "categories", []) if c.get("isthing", 0)}

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        epoch, index = key
        item = self.dataset[index]
        name = str(item.get("file_name", f"item {index}"))
        image = torch.from_numpy(np.require(item["image"], requirements=["C", "W"]))
        if image.dim() != 3 or image.shape[-1] != 3 or image.dtype != torch.uint8:
            raise ValueError(f"{name}: the image must be (H, W, 3) uint8, got {tuple(image.shape)} {image.dtype}")
        label = torch.as_tensor(np.asarray(item["segmentation_map"]).astype(np.int64))
        if tuple(label.shape) != tuple(image.shape[:2]):
            raise ValueError(
                f"{name}: the segmentation map is {tuple(label.shape)} but the image is {tuple(image.shape[:2])} "
                "(height, width); masks must have the size of their image"
            )
        generator = torch.Generator().manual_seed(example_seed(self.seed, epoch, index))
        image, label, valid = self.augmentation(image.permute(2, 0, 1), label, generator)
        masks, classes = targets_from_map(
            label, item.get("instance_id_to_semantic_id"), self.task, self.thing_classes, self.num_labels, name
        )
        return {"image": image, "valid": valid, "masks": masks, "classes": classes}


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` that yields ``(epoch, index)`` and can start in the middle of an epoch.

    Every process shuffles with the same ``seed + epoch`` and takes every ``num_replicas``-th index, so the global
    batch of a step is the same set of images whatever the number of processes (see :meth:`global_batches`).
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=False)
        self.start = 0

    def set_position(self, epoch: int, start: int) -> None:
        """Begin epoch ``epoch`` at this process's ``start``-th index."""
        self.set_epoch(epoch)
        self.start = start

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())
        for index in indices[self.start :]:
            yield self.epoch, index

    def __len__(self) -> int:
        return self.num_samples - self.start


class Collate:
    """Examples -> the model's batch: ``pixel_values`` (B, 3, H, W) normalized and padded (bottom, right) to a
    multiple of ``size_divisor``, ``pixel_mask`` (B, H, W), ``mask_labels`` (list of (N, H, W) float, 0 on padding),
    ``class_labels`` (list of (N,) int64).

    Args:
        image_mean, image_std: per-channel statistics of pixel values in [0, 1] (the image processor's).
    """

    def __init__(
        self, image_mean: Sequence[float], image_std: Sequence[float], size_divisor: int = SIZE_DIVISOR
    ) -> None:
        self.image_mean = tuple(float(v) for v in image_mean)
        self.image_std = tuple(float(v) for v in image_std)
        self.size_divisor = size_divisor

    def __call__(self, examples: list[dict[str, Tensor]]) -> dict[str, Any]:
        height = max(e["image"].shape[1] for e in examples)
        width = max(e["image"].shape[2] for e in examples)
        height = math.ceil(height / self.size_divisor) * self.size_divisor
        width = math.ceil(width / self.size_divisor) * self.size_divisor
        mean = torch.tensor(self.image_mean)[:, None, None] * 255
        std = torch.tensor(self.image_std)[:, None, None] * 255
        pixel_values = torch.zeros(len(examples), 3, height, width)
        pixel_mask = torch.zeros(len(examples), height, width, dtype=torch.long)
        mask_labels, class_labels = [], []
        for index, example in enumerate(examples):
            _, h, w = example["image"].shape
            pixel_values[index, :, :h, :w] = (example["image"].float() - mean) / std
            pixel_mask[index, :h, :w] = example["valid"].long()
            masks = torch.zeros(len(example["masks"]), height, width)  # (N, H, W)
            masks[:, :h, :w] = example["masks"].float()
            mask_labels.append(masks)
            class_labels.append(example["classes"].long())
        return {
            "pixel_values": pixel_values,
            "pixel_mask": pixel_mask,
            "mask_labels": mask_labels,
            "class_labels": class_labels,
        }


def build_datasets(config: Any) -> tuple[Any, Any | None]:
    """The training and (if configured) validation readers of a :class:`TrainConfig`."""
    from ..data import datasets

    kind = config.dataset
    if kind is None:
        raise ValueError(
            "no dataset: give --dataset (coco-panoptic, coco-instances, semantic, cityscapes or synthetic) and its paths"
        )
    if kind == "synthetic":
        train = SyntheticPanopticDataset(
            config.synthetic_train_images, seed=config.synthetic_seed, size=config.synthetic_image_size
        )
        val = None
        if config.synthetic_val_images > 0:
            val = SyntheticPanopticDataset(
                config.synthetic_val_images, seed=config.synthetic_seed + 1, size=config.synthetic_image_size
            )
        return train, val

    def reader(images: str | None, annotations: str | None, panoptic_root: str | None, split: str, which: str) -> Any:
        if images is None:
            raise ValueError(f"--dataset {kind} needs --{which}-images")
        if kind != "cityscapes" and annotations is None:
            raise ValueError(f"--dataset {kind} needs --{which}-annotations")
        if kind == "coco-panoptic":
            return datasets.COCOPanopticDataset(annotations, images, panoptic_root)
        if kind == "coco-instances":
            return datasets.COCOInstanceDataset(annotations, images)
        if kind == "semantic":
            return datasets.SemanticFolderDataset(
                images, annotations, categories=config.categories, reduce_labels=config.reduce_labels
            )
        return datasets.CityscapesSemanticDataset(images, split=split)

    train = reader(config.train_images, config.train_annotations, config.train_panoptic_root, config.train_split, "train")
    val = None
    if config.val_images is not None:
        val = reader(config.val_images, config.val_annotations, config.val_panoptic_root, config.val_split, "val")
    return train, val
