"""``mask2former evaluate``: score a model (or saved predictions) with PQ, mask AP or mIoU."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

DESCRIPTION = """\
Score a model on a dataset, or score saved predictions without a model (--predictions).

Datasets (--dataset):
  coco-panoptic   --annotations panoptic.json --images DIR [--panoptic-root DIR]
  coco-instances  --annotations instances.json --images DIR
  semantic        --annotations DIR_OF_PNGS --images DIR [--categories ade20k|FILE.json] (ADE20K layout: 0 = other)
  cityscapes      --images CITYSCAPES_ROOT [--split val]
Saved predictions (--predictions): panoptic: a COCO panoptic JSON with its PNG folder beside it (same name without
.json); instance: a COCO results JSON (image_id, category_id as in the annotations, RLE segmentation, score);
semantic: a folder of PNGs named like the images, holding contiguous class ids.
Prints a table and writes the full report as JSON (--out).
"""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "evaluate", help="score a model or saved predictions with PQ, mask AP or mIoU", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="checkpoint folder or hub id to run")
    source.add_argument("--predictions", help="saved predictions to score instead of running a model")
    parser.add_argument("--task", required=True, choices=["panoptic", "instance", "semantic"], help="the metric: PQ, AP, mIoU")
    parser.add_argument("--dataset", required=True, choices=["coco-panoptic", "coco-instances", "semantic", "cityscapes"])
    parser.add_argument("--images", required=True, help="image folder (cityscapes: the dataset root)")
    parser.add_argument("--annotations", help="annotation JSON (coco-*) or label folder (semantic)")
    parser.add_argument("--panoptic-root", help="coco-panoptic: PNG folder (default: the JSON's path without .json)")
    parser.add_argument("--categories", default="ade20k", help="semantic: packaged list name or JSON file (default ade20k)")
    parser.add_argument("--split", default="val", help="cityscapes split (default val)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default 1)")
    parser.add_argument("--limit", type=int, default=None, help="evaluate only the first N images")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default cpu)")
    parser.add_argument("--out", default="evaluation.json", help="JSON report (default evaluation.json)")
    parser.set_defaults(run=run)


def build_dataset(args: argparse.Namespace):
    from ..data import datasets

    if args.dataset in ("coco-panoptic", "coco-instances", "semantic") and not args.annotations:
        raise ValueError(f"--dataset {args.dataset} needs --annotations")
    if args.dataset == "coco-panoptic":
        return datasets.COCOPanopticDataset(args.annotations, args.images, args.panoptic_root)
    if args.dataset == "coco-instances":
        return datasets.COCOInstanceDataset(args.annotations, args.images)
    if args.dataset == "semantic":
        return datasets.SemanticFolderDataset(args.images, args.annotations, categories=args.categories)
    return datasets.CityscapesSemanticDataset(args.images, split=args.split)


def score_predictions(args: argparse.Namespace, dataset) -> dict:
    """Score saved predictions against the dataset's ground truth."""
    from ..data.datasets import IGNORE_INDEX, read_label_png
    from ..evaluation import MaskAP, SemSegMetric, pq_compute

    predictions = Path(args.predictions)
    if args.task == "panoptic":
        if args.dataset != "coco-panoptic":
            raise ValueError("panoptic predictions are scored against --dataset coco-panoptic")
        return pq_compute(args.annotations, predictions, args.panoptic_root, None)
    if args.task == "semantic":
        metric = SemSegMetric(len(dataset.categories), ignore_label=IGNORE_INDEX)
        for index in range(len(dataset) if args.limit is None else min(args.limit, len(dataset))):
            item = dataset[index]
            stem = Path(item["file_name"]).stem
            candidates = [predictions / f"{stem}.png", predictions / f"{stem}.label.png"]  # ours, or `predict`'s
            path = next((c for c in candidates if c.is_file()), candidates[0])
            metric.update(read_label_png(path), item["segmentation_map"])
        return metric.compute()
    with open(predictions, encoding="utf-8") as handle:
        results = json.load(handle)
    results = results["annotations"] if isinstance(results, dict) else results
    by_image: dict = {}
    for result in results:
        by_image.setdefault(result["image_id"], []).append(result)
    to_contiguous = getattr(dataset, "to_contiguous", {})
    metric = MaskAP(dataset.categories)
    for index in range(len(dataset) if args.limit is None else min(args.limit, len(dataset))):
        item = dataset[index]
        height, width = item["image"].shape[:2]
        truth = [
            {"category_id": to_contiguous[a["category_id"]], "segmentation": a["segmentation"], "iscrowd": a.get("iscrowd", 0)}
            for a in item.get("annotations", [])
        ]
        detections = [
            {**r, "category_id": to_contiguous.get(r["category_id"], r["category_id"])}
            for r in by_image.get(item["image_id"], [])
        ]
        metric.update(item["image_id"], height, width, truth, detections)
    return metric.compute()


def _table(task: str, report: dict) -> str:
    if task == "panoptic":
        rows = [f"{'':8}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'#cls':>6}"]
        for name in ("All", "Things", "Stuff"):
            r = report[name]
            rows.append(f"{name:8}{100 * r['pq']:8.2f}{100 * r['sq']:8.2f}{100 * r['rq']:8.2f}{r['n']:6d}")
        return "\n".join(rows)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl") if task == "instance" else ("mIoU", "fwIoU", "mACC", "pACC")
    return "  ".join(f"{key} {report[key]:.2f}" if not math.isnan(report[key]) else f"{key} nan" for key in keys)


def run(args: argparse.Namespace) -> int:
    try:
        dataset = build_dataset(args)
        if args.predictions:
            report = score_predictions(args, dataset)
        else:
            from ..evaluation.evaluate import evaluate
            from ..segmenter import Segmenter

            segmenter = Segmenter.from_pretrained(args.model, device=args.device)
            report = evaluate(segmenter, dataset, args.task, batch_size=args.batch_size, limit=args.limit)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(_table(args.task, report))
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, default=float)
    print(f"report written to {args.out}")
    return 0
