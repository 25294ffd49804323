"""Run a model over a dataset, or read saved predictions, and score them the way the original code does.

Inference follows the original Mask2Former evaluation: full-resolution post-processing with the padding cropped;
for PQ the stuff classes are merged (``label_ids_to_fuse``); for mask AP the top instances are kept with no score
threshold (``threshold=0``) and no overlap filtering. The dataset is one of the readers in
:mod:`mask2former.data.datasets`, whose contiguous class ids must be the model's.

PQ on a COCO panoptic dataset is computed on the ground truth as stored (the PNG's segment ids and the JSON's
``segments_info``, crowd segments and JSON areas included), with the dataset's category ids, so that ``evaluate`` gives
exactly what :func:`mask2former.evaluation.pq_compute` gives on the same files and the predictions it can save.

Saved predictions (``save_predictions=DIR``, read back by :func:`score_predictions`):

- panoptic: ``DIR/panoptic.json`` (``images``, ``annotations`` of ``{image_id, file_name, segments_info}``,
  ``categories``, dataset category ids) and ``DIR/panoptic/*.png`` in the COCO RGB id encoding, as ``pq_compute``
  reads them;
- instance: ``DIR/instances_results.json``, the COCO results list (``image_id``, dataset ``category_id``, compressed
  RLE ``segmentation``, ``score``, ``bbox``, ``area``), as ``COCO.loadRes`` reads it;
- semantic: ``DIR/semantic/NAME.png``, contiguous class ids (8-bit, or 16-bit for more than 256 classes).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data.datasets import IGNORE_INDEX, is_skipped, read_json, read_label_png
from ..visualize import id_to_rgb, rgb_to_id
from .instance import MaskAP
from .panoptic import PanopticQuality
from .semantic import SemSegMetric

TASKS = ("panoptic", "instance", "semantic")
MAX_REPORTED_SKIPS = 5  # malformed images named in the report; all are counted
POSTFIX_EVERY = 10  # images between two updates of the running metric on the progress bar
PANOPTIC_JSON, PANOPTIC_FOLDER = "panoptic.json", "panoptic"
INSTANCE_RESULTS = "instances_results.json"
SEMANTIC_FOLDER = "semantic"


class SkipLog:
    """Malformed items skipped under ``strict=False``: all counted, the first few kept with their reason."""

    def __init__(self) -> None:
        self.count = 0
        self.examples: list[dict[str, str]] = []

    def add(self, file_name: str, reason: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_REPORTED_SKIPS:
            self.examples.append({"file_name": file_name, "reason": reason})

    def to_dict(self) -> dict[str, Any]:
        return {"count": self.count, "examples": list(self.examples)}


def read_items(dataset: Any, total: int, strict: bool, skips: SkipLog) -> Iterator[dict]:
    """The dataset's first ``total`` items; malformed ones raise (``strict``) or are logged in ``skips`` and left out."""
    for index in range(total):
        try:
            item = dataset[index]
        except (FileNotFoundError, ValueError) as error:
            if strict:
                raise
            describe = getattr(dataset, "describe", None)
            file_name = str(describe(index)[1]) if describe is not None else f"item {index}"
            skips.add(file_name, str(error))
            continue
        if is_skipped(item):
            if strict:
                raise ValueError(item["error"])
            skips.add(item["file_name"], item["error"])
            continue
        yield item


# Ground truth of a reader item, in the form each metric takes.


def ground_truth_panoptic(item: dict, dataset_ids: Sequence[int]) -> tuple[np.ndarray, list[dict]]:
    """(segment ids with 0 = void, ``segments_info`` with dataset category ids), as panopticapi reads them.

    A COCO panoptic item gives its PNG and JSON as stored (crowd segments included); other readers' items are
    rebuilt from the segmentation map (void and crowd are 0 there, and areas are counted).
    """
    if "panoptic_ids" in item:
        return item["panoptic_ids"], item["panoptic_segments_info"]
    segmentation = item["segmentation_map"].astype(np.int64)
    ids = np.where(segmentation == IGNORE_INDEX, 0, segmentation + 1)
    areas = np.bincount(ids.reshape(-1), minlength=max((s["id"] + 2 for s in item["segments_info"]), default=1))
    segments = [
        {"id": s["id"] + 1, "category_id": dataset_ids[s["category_id"]], "area": int(areas[s["id"] + 1]), "iscrowd": 0}
        for s in item["segments_info"]
    ]
    return ids, segments


def ground_truth_instances(item: dict, categories: Sequence[dict], to_contiguous: dict[int, int] | None) -> list[dict]:
    """The things of an item as COCO annotations (contiguous ``category_id``, ``segmentation``, ``iscrowd``)."""
    if "annotations" in item and to_contiguous is not None:  # raw COCO annotations: crowd and overlaps kept
        return [
            {"category_id": to_contiguous[int(a["category_id"])], "segmentation": a["segmentation"],
             "iscrowd": a.get("iscrowd", 0)}
            for a in item["annotations"]
        ]
    if "panoptic_ids" in item and to_contiguous is not None:  # COCO panoptic: its things, crowd kept
        ids = item["panoptic_ids"]
        return [
            {"category_id": to_contiguous[int(s["category_id"])], "segmentation": ids == int(s["id"]),
             "iscrowd": s.get("iscrowd", 0)}
            for s in item["panoptic_segments_info"]
            if categories[to_contiguous[int(s["category_id"])]].get("isthing", 1)
        ]
    segmentation = item["segmentation_map"]
    return [
        {"category_id": s["category_id"], "segmentation": segmentation == s["id"], "iscrowd": 0}
        for s in item["segments_info"]
        if categories[s["category_id"]].get("isthing", 1)
    ]


def ground_truth_semantic(item: dict) -> np.ndarray:
    """(H, W) class ids with ``IGNORE_INDEX``; panoptic and instance items are turned into class maps."""
    segmentation = item["segmentation_map"]
    mapping = item.get("instance_id_to_semantic_id")
    if mapping is None:
        return segmentation
    table = np.full(max(max(mapping, default=0), IGNORE_INDEX) + 1, IGNORE_INDEX, dtype=np.int32)
    for number, category in mapping.items():
        table[number] = category
    return table[segmentation]


# One scorer per task: the metric, fed (reader item, normalized prediction) pairs.


class _Scorer:
    def add(self, item: dict, prediction: Any) -> None:
        raise NotImplementedError

    def running(self) -> dict[str, str]:
        """A cheap summary for the progress bar."""
        raise NotImplementedError

    def compute(self) -> dict[str, Any]:
        return self.metric.compute()


class _PanopticScorer(_Scorer):
    """Prediction: ((H, W) segment ids, 0 = none; ``segments_info`` with ``id`` and dataset ``category_id``)."""

    def __init__(self, categories: Sequence[dict]) -> None:
        self.dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
        self.metric = PanopticQuality({d: c for d, c in zip(self.dataset_ids, categories)})

    def add(self, item: dict, prediction: tuple[np.ndarray, list[dict]]) -> None:
        gt_ids, gt_segments = ground_truth_panoptic(item, self.dataset_ids)
        pred_ids, pred_segments = prediction
        self.metric.update(gt_ids, gt_segments, pred_ids, pred_segments, image=item["file_name"])

    def running(self) -> dict[str, str]:
        return {"PQ": f"{100 * self.metric.average()[0]['pq']:.1f}"}


class _InstanceScorer(_Scorer):
    """Prediction: detections with contiguous ``category_id``, ``segmentation`` (RLE or mask) and ``score``."""

    def __init__(self, categories: Sequence[dict], to_contiguous: dict[int, int] | None) -> None:
        self.categories = categories
        self.to_contiguous = to_contiguous
        self.metric = MaskAP([{"id": c["id"], "name": c["name"]} for c in categories])

    def add(self, item: dict, prediction: list[dict]) -> None:
        height, width = item["image"].shape[:2]
        truth = ground_truth_instances(item, self.categories, self.to_contiguous)
        self.metric.update(item["image_id"], height, width, truth, prediction)

    def running(self) -> dict[str, str]:  # AP needs the whole dataset; the count is free
        return {"detections": str(len(self.metric.detections))}


class _SemanticScorer(_Scorer):
    """Prediction: (H, W) contiguous class ids."""

    def __init__(self, categories: Sequence[dict]) -> None:
        names = [c["name"] for c in categories]
        self.metric = SemSegMetric(len(categories), ignore_label=IGNORE_INDEX, class_names=names)

    def add(self, item: dict, prediction: np.ndarray) -> None:
        self.metric.update(prediction, ground_truth_semantic(item))

    def running(self) -> dict[str, str]:
        confusion = self.metric.confusion[:-1, :-1]
        true_positive = confusion.diagonal()
        gt_pixels, pred_pixels = confusion.sum(0), confusion.sum(1)
        union = gt_pixels + pred_pixels - true_positive
        valid = (gt_pixels > 0) & (union > 0)
        return {"mIoU": f"{100 * (true_positive[valid] / union[valid]).mean():.1f}" if valid.any() else "nan"}


def _make_scorer(task: str, dataset: Any) -> _Scorer:
    categories = dataset.categories
    if task == "panoptic":
        return _PanopticScorer(categories)
    if task == "instance":
        return _InstanceScorer(categories, getattr(dataset, "to_contiguous", None))
    return _SemanticScorer(categories)


def _prediction(task: str, result: Any, dataset_ids: Sequence[int]) -> Any:
    """A :class:`mask2former.segmenter.SegmentationResult` in the form the task's scorer and writer take."""
    if task == "semantic":
        return result.segmentation
    if task == "panoptic":
        # Segment areas come from the final map: a segment with none left is not in the PNG either.
        segments = [
            {"id": s.id, "category_id": dataset_ids[s.label_id], "area": s.area, "iscrowd": 0, "score": s.score}
            for s in result.segments
            if s.area > 0
        ]
        return result.segmentation, segments
    from pycocotools import mask as mask_utils

    if not result.segments:
        return []
    # One call encodes all masks: (N, H, W) -> (H, W, N) Fortran order, as pycocotools wants.
    rles = mask_utils.encode(np.asfortranarray(result.masks.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"category_id": s.label_id, "segmentation": rle, "score": s.score}
        for s, rle in zip(result.segments, rles)
    ]


class PredictionWriter:
    """Write predictions in the COCO formats (see the module docstring) as they come, image by image.

    Args:
        directory: output folder, created if needed.
        task: "panoptic", "instance" or "semantic".
        categories: the dataset's categories (contiguous ``id``, ``dataset_id`` for COCO, ``name``, ...).
    """

    def __init__(self, directory: str | os.PathLike, task: str, categories: Sequence[dict]) -> None:
        self.directory = Path(directory)
        self.task = task
        self.categories = categories
        self.dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
        self.images: list[dict] = []
        self.entries: list[dict] = []
        folder = {"panoptic": PANOPTIC_FOLDER, "semantic": SEMANTIC_FOLDER}.get(task)
        (self.directory / folder if folder else self.directory).mkdir(parents=True, exist_ok=True)

    def add(self, item: dict, prediction: Any) -> None:
        from PIL import Image

        name = f"{Path(item['file_name']).stem}.png"
        if self.task == "semantic":
            dtype = np.uint8 if len(self.categories) <= 256 else np.uint16
            Image.fromarray(np.asarray(prediction).astype(dtype)).save(self.directory / SEMANTIC_FOLDER / name)
            return
        height, width = item["image"].shape[:2]
        self.images.append(
            {"id": item["image_id"], "file_name": Path(item["file_name"]).name, "height": height, "width": width}
        )
        if self.task == "panoptic":
            from scipy.ndimage import find_objects

            ids, segments = prediction
            Image.fromarray(id_to_rgb(ids)).save(self.directory / PANOPTIC_FOLDER / name)
            boxes = find_objects(np.asarray(ids).clip(min=0))
            info = []
            for segment in segments:
                box = boxes[segment["id"] - 1]
                bbox = [box[1].start, box[0].start, box[1].stop - box[1].start, box[0].stop - box[0].start]
                info.append({**segment, "bbox": [int(v) for v in bbox]})
            self.entries.append({"image_id": item["image_id"], "file_name": name, "segments_info": info})
            return
        from pycocotools import mask as mask_utils

        for detection in prediction:
            rle = detection["segmentation"]
            self.entries.append(
                {
                    "image_id": item["image_id"],
                    "category_id": self.dataset_ids[detection["category_id"]],
                    "segmentation": {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")},
                    "score": float(detection["score"]),
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)],
                    "area": float(mask_utils.area(rle)),
                }
            )

    def close(self) -> Path:
        """Write the JSON file (panoptic, instance) and return the path to give :func:`score_predictions`."""
        if self.task == "semantic":
            return self.directory / SEMANTIC_FOLDER
        if self.task == "instance":
            path = self.directory / INSTANCE_RESULTS
            document: Any = self.entries
        else:
            path = self.directory / PANOPTIC_JSON
            categories = [
                {"id": d, "name": c["name"], "isthing": int(c.get("isthing", 1)), "color": list(c.get("color", []))}
                for d, c in zip(self.dataset_ids, self.categories)
            ]
            document = {"images": self.images, "annotations": self.entries, "categories": categories}
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(document, handle)
        return path


def _progress_bar(progress: bool, total: int, description: str):
    if not progress:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="image", desc=description)


def _check_arguments(dataset: Any, task: str, limit: int | None) -> int:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1 or None, got {limit}")
    total = len(dataset) if limit is None else min(limit, len(dataset))
    if total == 0:
        raise ValueError("the dataset is empty: nothing to evaluate")
    return total


def _finish(scorer: _Scorer, images: int, skips: SkipLog, start: float, seconds: dict[str, float]) -> dict[str, Any]:
    """The report: the metric, the counts and the timings (``total`` since ``start``, the final computation included)."""
    if images == 0:
        first = skips.examples[0] if skips.examples else {"file_name": "?", "reason": "?"}
        raise ValueError(
            f"all {skips.count} images were malformed and skipped, nothing to score; "
            f"first: {first['file_name']}: {first['reason']}"
        )
    report = scorer.compute()
    report["images"] = images
    report["skipped"] = skips.to_dict()
    report["seconds"] = {"total": time.perf_counter() - start, **seconds}
    return report


def evaluate(
    segmenter: Any,
    dataset: Any,
    task: str,
    *,
    batch_size: int = 1,
    limit: int | None = None,
    progress: bool = True,
    strict: bool = True,
    save_predictions: str | os.PathLike | None = None,
    tta_scales: Sequence[float] | None = None,
    tta_flip: bool = True,
) -> dict[str, Any]:
    """Score ``segmenter`` on ``dataset``.

    Args:
        segmenter: a :class:`mask2former.Segmenter`, anything with its ``segment(images, task, **options)`` and
            ``id2label``, or a model with a class head (wrapped in a ``Segmenter``).
        dataset: a reader of :mod:`mask2former.data.datasets` (any reader for semantic; COCO for panoptic and
            instance).
        task: "panoptic" (PQ), "instance" (mask AP) or "semantic" (mIoU).
        batch_size: images per forward pass.
        limit: score only the first ``limit`` images.
        progress: show a tqdm bar with the running metric (PQ, mIoU; for AP the count of detections).
        strict: a malformed item raises an error naming its path (default); with False it is skipped and counted.
        save_predictions: a folder to write the predictions to, in the COCO formats (see the module docstring).
        tta_scales: semantic only: test-time augmentation, as :meth:`mask2former.Segmenter.segment` takes it
            (the original's multi-scale test: ``mask2former.processing.tta.DEFAULT_SCALES``). None: none.
        tta_flip: with ``tta_scales``, also the mirrored views.

    Returns:
        The metric's result (``pq_compute``'s structure for panoptic, keyed by the dataset's category ids;
        ``MaskAP.compute()`` for instance; ``SemSegMetric.compute()`` for semantic) plus ``images`` (scored),
        ``skipped`` (``count`` and the first ``examples`` with ``file_name`` and ``reason``) and ``seconds``
        (``total``, ``model``: inside ``segment``, ``reading``: the dataset).
    """
    total = _check_arguments(dataset, task, limit)
    if tta_scales is not None and task != "semantic":
        raise ValueError(f"tta_scales (test-time augmentation) works with task='semantic' only, got {task!r}")
    if not hasattr(segmenter, "segment"):
        from ..segmenter import Segmenter

        segmenter = Segmenter(segmenter)
    categories = dataset.categories
    num_labels = len(getattr(segmenter, "id2label", {}) or {})
    if num_labels and num_labels != len(categories):
        raise ValueError(f"the model has {num_labels} classes but the dataset has {len(categories)} categories")

    scorer = _make_scorer(task, dataset)
    dataset_ids = [int(c.get("dataset_id", c["id"])) for c in categories]
    writer = PredictionWriter(save_predictions, task, categories) if save_predictions is not None else None
    if task == "panoptic":  # the original merges all stuff segments of a class into one
        options: dict[str, Any] = {"label_ids_to_fuse": [c["id"] for c in categories if not c.get("isthing", 0)]}
    elif task == "instance":  # the original's AP protocol: top instances, no score threshold, overlaps all kept
        options = {"threshold": 0.0, "overlap_mask_area_threshold": 0.0}
    else:
        options = {} if tta_scales is None else {"tta_scales": tta_scales, "tta_flip": tta_flip}

    skips = SkipLog()
    bar = _progress_bar(progress, total, f"evaluate {task}")
    start = time.perf_counter()
    model_seconds = reading_seconds = 0.0
    scored = since_postfix = 0
    items = read_items(dataset, total, strict, skips)
    done = False
    while not done:
        tick = time.perf_counter()
        batch = []
        for item in items:
            batch.append(item)
            if len(batch) == batch_size:
                break
        else:
            done = True
        reading_seconds += time.perf_counter() - tick
        if batch:
            tick = time.perf_counter()
            results = segmenter.segment([i["image"] for i in batch], task, batch_size=len(batch), **options)
            model_seconds += time.perf_counter() - tick
            for item, result in zip(batch, results):
                prediction = _prediction(task, result, dataset_ids)
                scorer.add(item, prediction)
                if writer is not None:
                    writer.add(item, prediction)
            scored += len(batch)
            since_postfix += len(batch)
        if bar is not None:
            bar.update(scored + skips.count - bar.n)
            if since_postfix >= POSTFIX_EVERY or (done and since_postfix):
                bar.set_postfix(scorer.running(), refresh=False)
                since_postfix = 0
            if skips.count:
                bar.set_description(f"evaluate {task} ({skips.count} skipped)", refresh=False)
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.close()
    return _finish(scorer, scored, skips, start, {"model": model_seconds, "reading": reading_seconds})


def resolve_predictions(predictions: str | os.PathLike, task: str) -> Path:
    """A ``save_predictions`` folder -> the file or folder of ``task`` in it; any other path unchanged."""
    path = Path(predictions)
    if path.is_dir():
        inside = {"panoptic": PANOPTIC_JSON, "instance": INSTANCE_RESULTS, "semantic": SEMANTIC_FOLDER}[task]
        inside = path / inside
        if inside.exists():
            return inside
    return path


def score_predictions(
    predictions: str | os.PathLike,
    dataset: Any,
    task: str,
    *,
    limit: int | None = None,
    progress: bool = False,
    strict: bool = True,
) -> dict[str, Any]:
    """Score saved predictions against ``dataset``, as :func:`evaluate` scores a model.

    Args:
        predictions: panoptic: a COCO panoptic JSON with its PNG folder beside it (same name without ``.json``);
            instance: a COCO results JSON (dataset category ids) or a COCO-style document with ``annotations``;
            semantic: a folder of PNGs named like the images (``NAME.png`` or ``predict``'s ``NAME.label.png``)
            holding contiguous class ids. A folder written by ``evaluate(save_predictions=...)`` works for all three.
        dataset, task, limit, progress, strict: as for :func:`evaluate`.

    Returns:
        As :func:`evaluate` (``seconds`` without ``model``).
    """
    total = _check_arguments(dataset, task, limit)
    path = resolve_predictions(predictions, task)
    scorer = _make_scorer(task, dataset)
    if task == "panoptic":
        document = read_json(path)
        pred_folder = path.with_suffix("")
        if not pred_folder.is_dir():
            raise FileNotFoundError(f"no prediction PNG folder {str(pred_folder)!r} beside {str(path)!r}")
        by_image = {a["image_id"]: a for a in document.get("annotations", [])}
    elif task == "instance":
        document = read_json(path)
        results = document["annotations"] if isinstance(document, dict) else document
        to_contiguous = getattr(dataset, "to_contiguous", None)
        by_image: dict = {}
        for result in results:
            category = int(result["category_id"])
            if to_contiguous is not None:
                if category not in to_contiguous:
                    raise ValueError(
                        f"{str(path)!r}: a result of image {result['image_id']} has unknown category_id {category}"
                    )
                category = to_contiguous[category]
            by_image.setdefault(result["image_id"], []).append({**result, "category_id": category})
    elif not path.is_dir():
        raise FileNotFoundError(f"semantic predictions {str(path)!r} is not a folder")

    skips = SkipLog()
    bar = _progress_bar(progress, total, f"score {task}")
    start = time.perf_counter()
    scored = 0
    for item in read_items(dataset, total, strict, skips):
        if task == "panoptic":
            if item["image_id"] not in by_image:
                raise KeyError(f"{str(path)!r}: no prediction for the image with id {item['image_id']!r}")
            annotation = by_image[item["image_id"]]
            ids = rgb_to_id(read_label_png(pred_folder / annotation["file_name"])[..., :3])
            prediction: Any = (ids, annotation["segments_info"])
        elif task == "instance":
            prediction = by_image.get(item["image_id"], [])
        else:
            stem = Path(item["file_name"]).stem
            candidates = [path / f"{stem}.png", path / f"{stem}.label.png"]  # ours, or `predict`'s
            prediction = read_label_png(next((c for c in candidates if c.is_file()), candidates[0]))
        scorer.add(item, prediction)
        scored += 1
        if bar is not None:
            bar.update(scored + skips.count - bar.n)
    if bar is not None:
        bar.close()
    return _finish(scorer, scored, skips, start, {})
