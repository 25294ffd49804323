"""``mask2former evaluate``: score a model (or saved predictions) with PQ, mask AP or mIoU."""

from __future__ import annotations

import argparse
import json
import math
import sys

from .predict import add_tta_arguments, tta_options

DESCRIPTION = """\
Score a model on a dataset, or score saved predictions without a model (--predictions).

Datasets (--dataset):
  coco-panoptic   --annotations panoptic.json --images DIR [--panoptic-root DIR]
  coco-instances  --annotations instances.json --images DIR
  semantic        --annotations DIR_OF_PNGS --images DIR [--categories ade20k|FILE.json] (ADE20K layout: 0 = other)
  cityscapes      --images CITYSCAPES_ROOT [--split val]
Saved predictions (--predictions): panoptic: a COCO panoptic JSON with its PNG folder beside it (same name without
.json); instance: a COCO results JSON (image_id, category_id as in the annotations, RLE segmentation, score);
semantic: a folder of PNGs named like the images, holding contiguous class ids; or the folder that
--save-predictions wrote (DIR/panoptic.json + DIR/panoptic/, DIR/instances_results.json, DIR/semantic/).
A malformed image (missing file, PNG ids not in the JSON, unknown category id, size mismatch) is an error naming
its path; with --strict false it is skipped and counted in the summary and the report.
Prints a table and writes the full report as JSON (--out).
"""


def _boolean(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "yes", "1", "on"):
        return True
    if lowered in ("false", "no", "0", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


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
    parser.add_argument(
        "--strict", type=_boolean, metavar="{true,false}", default=argparse.SUPPRESS,
        help="true (default): a malformed image is an error; false: skip and count it",
    )
    parser.add_argument(
        "--save-predictions", metavar="DIR", default=argparse.SUPPRESS,
        help="write the predictions in the COCO formats into DIR (scorable later with --predictions DIR)",
    )
    add_tta_arguments(parser)
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


def _table(task: str, report: dict) -> str:
    if task == "panoptic":
        rows = [f"{'':8}{'PQ':>8}{'SQ':>8}{'RQ':>8}{'#cls':>6}"]
        for name in ("All", "Things", "Stuff"):
            r = report[name]
            rows.append(f"{name:8}{100 * r['pq']:8.2f}{100 * r['sq']:8.2f}{100 * r['rq']:8.2f}{r['n']:6d}")
        return "\n".join(rows)
    keys = ("AP", "AP50", "AP75", "APs", "APm", "APl") if task == "instance" else ("mIoU", "fwIoU", "mACC", "pACC")
    return "  ".join(f"{key} {report[key]:.2f}" if not math.isnan(report[key]) else f"{key} nan" for key in keys)


def _summary(report: dict) -> str:
    skipped = report.get("skipped", {"count": 0})
    lines = [f"{report['images']} images scored"]
    if skipped["count"]:
        lines[0] += f", {skipped['count']} malformed images skipped (--strict false); first:"
        lines += [f"  {example['file_name']}: {example['reason']}" for example in skipped["examples"]]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    options = {key: getattr(args, key) for key in ("strict",) if hasattr(args, key)}
    if args.predictions and hasattr(args, "save_predictions"):
        print("error: --save-predictions needs --model (--predictions are saved already)", file=sys.stderr)
        return 2
    try:
        tta = tta_options(args)
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.predictions and tta:
        print("error: --tta and --tta-scales need --model (saved predictions are scored as they are)", file=sys.stderr)
        return 2
    options.update(tta)
    try:
        dataset = build_dataset(args)
        if args.predictions:
            from ..evaluation.evaluate import score_predictions

            report = score_predictions(args.predictions, dataset, args.task, limit=args.limit, progress=True, **options)
        else:
            from ..evaluation.evaluate import evaluate
            from ..segmenter import Segmenter

            if hasattr(args, "save_predictions"):
                options["save_predictions"] = args.save_predictions
            segmenter = Segmenter.from_pretrained(args.model, device=args.device)
            report = evaluate(segmenter, dataset, args.task, batch_size=args.batch_size, limit=args.limit, **options)
    except (FileNotFoundError, ValueError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(_table(args.task, report))
    print(_summary(report))
    with open(args.out, "w", encoding="utf-8") as handle:
        json.dump(report, handle, indent=1, default=float)
    print(f"report written to {args.out}")
    if hasattr(args, "save_predictions"):
        print(f"predictions written to {args.save_predictions}")
    return 0
