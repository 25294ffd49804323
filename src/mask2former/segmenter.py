"""Images in, answers out: the high-level API for people who want segmentations, not tensors.

``Segmenter`` bundles a model and its image processor (as SAM's predictor does). ``segment`` takes images (paths,
PIL images, arrays or tensors), batches them, and returns one :class:`SegmentationResult` per image with numpy maps
in the original image's coordinates, class names from ``id2label``, areas, scores and COCO-format helpers. It
post-processes at the model's full output resolution and crops the padding before resizing to the image size, as
the original Mask2Former code does (``transformers`` resizes every mask to 384x384 first and keeps the padding).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .modeling.mask2former import Mask2FormerForUniversalSegmentation
from .modeling.maskformer import MaskFormerForInstanceSegmentation
from .processing.image_processor import Mask2FormerImageProcessor
from .processing.postprocess import (
    post_process_instance_segmentation,
    post_process_panoptic_segmentation,
    post_process_semantic_segmentation,
)
from .processing.tta import check_scales, semantic_tta

TASKS = ("panoptic", "instance", "semantic")
ImageInput = str | os.PathLike | Image.Image | np.ndarray | torch.Tensor


@dataclass
class Segment:
    """One segment: an instance, a panoptic segment, or a class region of a semantic map.

    Attributes:
        id: the segment's value in ``SegmentationResult.segmentation`` (the class id for semantic results).
        label_id: class index into ``id2label``.
        label: class name.
        area: pixels in the original image.
        score: confidence (None for semantic regions).
        was_fused: panoptic only: several queries of a ``label_ids_to_fuse`` class merged into this segment.
    """

    id: int
    label_id: int
    label: str
    area: int
    score: float | None = None
    was_fused: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class SegmentationResult:
    """The segmentation of one image, in its original coordinates.

    Attributes:
        task: "panoptic", "instance" or "semantic".
        segmentation: (H, W) int32 map. Semantic: class id per pixel. Panoptic: segment id, 0 where no segment.
            Instance: segment id, -1 where no instance (each pixel goes to one instance).
        segments: the segments, in the order of their ids.
        masks: instance only: (N, H, W) bool, one (possibly overlapping) mask per segment, as COCO evaluates them.
        id2label: class names.
    """

    task: str
    segmentation: np.ndarray
    segments: list[Segment]
    id2label: dict[int, str]
    masks: np.ndarray | None = None
    path: str | None = field(default=None, repr=False)

    @property
    def image_size(self) -> tuple[int, int]:
        """(H, W) of the original image."""
        return tuple(self.segmentation.shape)  # type: ignore[return-value]

    def mask(self, segment_id: int) -> np.ndarray:
        """(H, W) bool mask of one segment (for instances, its full mask, overlaps included)."""
        if self.masks is not None:
            for index, segment in enumerate(self.segments):
                if segment.id == segment_id:
                    return self.masks[index]
            raise KeyError(f"no segment with id {segment_id}")
        return self.segmentation == segment_id

    def to_coco(self, image_id: int | str = 0, file_name: str | None = None) -> list[dict] | dict:
        """The COCO results format.

        Instance: a list of ``{image_id, category_id, segmentation (RLE), score, bbox, area}``.
        Panoptic: one ``{image_id, file_name, segments_info: [{id, category_id, area, bbox, iscrowd, score}]}``
        (``file_name`` names the label PNG written with :meth:`label_image`).
        Semantic: a list of ``{image_id, category_id, segmentation (RLE), area}`` per class present, as detectron2's
        semantic evaluator writes them.
        """
        from pycocotools import mask as mask_utils

        def encode(binary: np.ndarray) -> dict:
            rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            return rle

        if self.task == "panoptic":
            info = []
            for segment in self.segments:
                binary = self.segmentation == segment.id
                info.append(
                    {
                        "id": segment.id,
                        "category_id": segment.label_id,
                        "area": segment.area,
                        "bbox": _bbox(binary),
                        "iscrowd": 0,
                        "score": segment.score,
                    }
                )
            return {"image_id": image_id, "file_name": file_name, "segments_info": info}
        results = []
        for index, segment in enumerate(self.segments):
            binary = self.masks[index] if self.masks is not None else self.segmentation == segment.id
            entry = {
                "image_id": image_id,
                "category_id": segment.label_id,
                "segmentation": encode(binary),
                "area": int(binary.sum()),
                "bbox": _bbox(binary),
            }
            if segment.score is not None:
                entry["score"] = segment.score
            results.append(entry)
        return results

    def label_image(self) -> Image.Image:
        """A PNG-ready label image: class ids (semantic, 8 or 16 bit), COCO panoptic RGB ids (panoptic), instance
        ids + 1 with 0 for background (instance)."""
        from .visualize import id_to_rgb

        if self.task == "panoptic":
            return Image.fromarray(id_to_rgb(self.segmentation))
        values = self.segmentation + 1 if self.task == "instance" else self.segmentation
        if values.max(initial=0) < 256:
            return Image.fromarray(values.astype(np.uint8))
        return Image.fromarray(values.astype(np.uint16))

    def overlay(self, image: Image.Image | np.ndarray, alpha: float = 0.55) -> Image.Image:
        """The image with the segments blended on it, outlined and named."""
        from .visualize import draw_overlay

        segments = [segment.to_dict() for segment in self.segments]
        return draw_overlay(
            image, self.segmentation, segments, alpha=alpha, color_key="label_id" if self.task == "semantic" else "id"
        )


def _bbox(binary: np.ndarray) -> list[int]:
    """COCO [x, y, width, height] of a binary mask ([0, 0, 0, 0] when empty)."""
    ys = np.flatnonzero(binary.any(axis=1))
    xs = np.flatnonzero(binary.any(axis=0))
    if len(ys) == 0:
        return [0, 0, 0, 0]
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def load_image(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB, applying its EXIF orientation; a clear error names an unreadable file."""
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image)
            return image.convert("RGB")
    except FileNotFoundError:
        raise FileNotFoundError(f"image file not found: {str(path)!r}") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from None


class Segmenter:
    """A model and its image processor, answering segmentation questions about images.

    Args:
        model: a Mask2Former or MaskFormer model with its heads.
        processor: the image processor matching the model (resize, normalize, pad).
        device: where to run (default: the model's device).
    """

    def __init__(
        self,
        model: Mask2FormerForUniversalSegmentation | MaskFormerForInstanceSegmentation,
        processor: Mask2FormerImageProcessor | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor or Mask2FormerImageProcessor()
        if device is not None:
            self.model.to(device)
        self.device = next(self.model.parameters()).device
        config = getattr(model, "config", None)
        self.id2label: dict[int, str] = dict(config.id2label) if config is not None else {}

    @classmethod
    def from_pretrained(
        cls, path_or_hub_id: str | os.PathLike | None = None, device: str | torch.device | None = None, **kwargs: Any
    ) -> Segmenter:
        """Load the model and its image processor.

        Args:
            path_or_hub_id: a checkpoint folder or hub id (Mask2Former or MaskFormer, as its ``config.json`` says); a
                preset name (``mask2former.list_models()``), resolved through its hub id, from the Hugging Face cache
                first; an original detectron2 ``.pkl``/``.pth`` file, with ``config=`` a preset name or a config
                (not needed when the file has its model-zoo name); None: the small model bundled with the package
                (trained on synthetic scenes: sky, ground, water and five shapes).
            device: where to run (default: CPU).
            kwargs: passed on to the model class's ``from_pretrained``.

        The image processor is the checkpoint's ``preprocessor_config.json``, the original test-time resize of a
        preset for a detectron2 file, and the default one otherwise.
        """
        from .checkpoints.default import default_model_path
        from .checkpoints.detectron2 import is_detectron2_file, load_detectron2_checkpoint, resolve_detectron2_config
        from .checkpoints.hf import resolve_checkpoint
        from .presets import resolve_hub_id

        if path_or_hub_id is None:
            path_or_hub_id = default_model_path()
        if is_detectron2_file(path_or_hub_id):
            config = kwargs.pop("config", None)
            _, preset = resolve_detectron2_config(config, path_or_hub_id)
            model = load_detectron2_checkpoint(None, path_or_hub_id, config=config, **kwargs)
            processor = preset.image_processor() if preset is not None else Mask2FormerImageProcessor()
            return cls(model, processor, device=device)
        folder = Path(
            resolve_checkpoint(
                resolve_hub_id(path_or_hub_id), revision=kwargs.get("revision"), cache_dir=kwargs.get("cache_dir")
            )
        )
        with open(folder / "config.json", encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
        model_class = MaskFormerForInstanceSegmentation if model_type == "maskformer" else Mask2FormerForUniversalSegmentation
        model = model_class.from_pretrained(folder, **kwargs)
        processor = (
            Mask2FormerImageProcessor.from_pretrained(folder)
            if (folder / "preprocessor_config.json").is_file()
            else Mask2FormerImageProcessor()
        )
        return cls(model, processor, device=device)

    def segment(
        self,
        images: ImageInput | Sequence[ImageInput],
        task: str = "panoptic",
        *,
        batch_size: int = 1,
        threshold: float = 0.5,
        mask_threshold: float = 0.5,
        overlap_mask_area_threshold: float = 0.8,
        label_ids_to_fuse: Iterable[int] | None = None,
        progress: bool = False,
        tta_scales: Sequence[float] | None = None,
        tta_flip: bool = True,
    ) -> SegmentationResult | list[SegmentationResult]:
        """Segment one image (returns one result) or several (returns a list).

        Args:
            images: file paths, PIL images, (H, W, 3) uint8 arrays or (3, H, W) tensors, or a list of them.
            task: "panoptic", "instance" or "semantic".
            batch_size: images per forward pass.
            threshold: minimum class score of a kept segment (panoptic, instance).
            mask_threshold: mask probability above which a pixel belongs to a mask.
            overlap_mask_area_threshold: minimum fraction of a mask that must survive overlaps (panoptic, instance).
            label_ids_to_fuse: panoptic: classes whose segments merge into one ("stuff").
            progress: show a tqdm progress bar over images.
            tta_scales: semantic only: test-time augmentation as in the original Mask2Former: the class
                probabilities of the image resized by each of these factors of the processor's size (and mirrored,
                with ``tta_flip``) are averaged at the image's size (see :mod:`mask2former.processing.tta`; the
                original's multi-scale test is ``DEFAULT_SCALES`` = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)). None: no
                test-time augmentation.
            tta_flip: with ``tta_scales``, also run every scale mirrored left-right.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        tta = None
        if tta_scales is not None:
            if task != "semantic":
                raise ValueError(f"tta_scales (test-time augmentation) works with task='semantic' only, got {task!r}")
            if not isinstance(tta_flip, bool):
                raise TypeError(f"tta_flip must be True or False, got {tta_flip!r}")
            tta = (check_scales(tta_scales, "tta_scales"), tta_flip)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        results: list[SegmentationResult] = []
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(items), unit="image")
        for start in range(0, len(items), batch_size):
            batch = items[start : start + batch_size]
            paths = [str(item) if isinstance(item, (str, os.PathLike)) else None for item in batch]
            loaded = [load_image(item) if path is not None else item for item, path in zip(batch, paths)]
            results.extend(
                self._segment_batch(
                    loaded, paths, task, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, tta
                )
            )
            if bar is not None:
                bar.update(len(batch))
        if bar is not None:
            bar.close()
        return results[0] if single else results

    @torch.inference_mode()
    def _segment_batch(
        self, images, paths, task, threshold, mask_threshold, overlap_mask_area_threshold, label_ids_to_fuse, tta=None
    ) -> list[SegmentationResult]:
        original_sizes = [_image_size(image) for image in images]
        if tta is not None:
            scales, flip = tta
            probabilities = semantic_tta(
                self.model, self.processor, images, original_sizes, scales=scales, flip=flip, device=self.device
            )
            return self._semantic_results([p.argmax(0) for p in probabilities], paths)
        inputs = self.processor(images, return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device)
        input_sizes = [self.processor.resized_size(*size) for size in original_sizes]
        outputs = self.model(pixel_values)
        common = dict(
            target_sizes=original_sizes,
            mask_size=None,
            input_sizes=input_sizes,
            padded_size=tuple(pixel_values.shape[-2:]),
        )
        if task == "semantic":
            return self._semantic_results(post_process_semantic_segmentation(outputs, **common), paths)
        results = []
        if task == "instance":
            processed = post_process_instance_segmentation(
                outputs,
                threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
                return_binary_maps=True,
                **common,
            )
        else:
            processed = post_process_panoptic_segmentation(
                outputs,
                threshold=threshold,
                mask_threshold=mask_threshold,
                overlap_mask_area_threshold=overlap_mask_area_threshold,
                label_ids_to_fuse=set(label_ids_to_fuse or ()),
                **common,
            )
        for path, size, result in zip(paths, original_sizes, processed):
            info = result["segments_info"]
            segmentation = result["segmentation"]
            masks = None
            if task == "instance":
                # With return_binary_maps the "segmentation" is the (N, H, W) stack of per-instance masks.
                masks = segmentation.cpu().numpy().astype(bool).reshape(-1, *size)
                segmentation = _instance_map(masks, [segment["score"] for segment in info])
                ids = list(range(len(info)))
            else:
                segmentation = segmentation.cpu().numpy().astype(np.int32)
                ids = [segment["id"] for segment in info]
            if masks is not None:
                areas = masks.sum((1, 2))
            else:  # one pass over the map instead of one comparison per segment
                counts = np.bincount(segmentation.ravel().clip(min=0), minlength=max(ids, default=0) + 1)
                areas = counts[ids] if ids else []
            segments = [
                Segment(
                    id=int(segment_id),
                    label_id=int(segment["label_id"]),
                    label=self._name(segment["label_id"]),
                    area=int(area),
                    score=float(segment["score"]),
                    was_fused=bool(segment.get("was_fused", False)),
                )
                for segment_id, segment, area in zip(ids, info, areas)
            ]
            results.append(SegmentationResult(task, segmentation, segments, self.id2label, masks=masks, path=path))
        return results

    def _semantic_results(self, maps: Sequence[torch.Tensor], paths: Sequence[str | None]) -> list[SegmentationResult]:
        """(H, W) class-id maps -> results with one segment per class present."""
        results = []
        for path, semantic in zip(paths, maps):
            semantic = semantic.cpu().numpy().astype(np.int32)
            labels, areas = np.unique(semantic, return_counts=True)
            segments = [
                Segment(id=int(label), label_id=int(label), label=self._name(label), area=int(area))
                for label, area in zip(labels, areas)
            ]
            results.append(SegmentationResult("semantic", semantic, segments, self.id2label, path=path))
        return results

    def _name(self, label_id: int) -> str:
        return self.id2label.get(int(label_id), str(int(label_id)))


def _image_size(image: Image.Image | np.ndarray | torch.Tensor) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.height, image.width
    shape = tuple(image.shape)
    if len(shape) == 2:
        return shape  # type: ignore[return-value]
    if len(shape) == 3 and shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
        return shape[1], shape[2]  # channels first
    return shape[0], shape[1]


def _instance_map(masks: np.ndarray, scores: Sequence[float]) -> np.ndarray:
    """(N, H, W) bool masks -> (H, W) int32 map: each pixel goes to its highest-scoring instance, -1 to none."""
    if len(masks) == 0:
        return np.full(masks.shape[1:], -1, dtype=np.int32)
    weighted = masks * (np.asarray(scores, dtype=np.float32)[:, None, None] + 1.0)  # +1: any mask beats none
    return np.where(masks.any(0), weighted.argmax(0), -1).astype(np.int32)
