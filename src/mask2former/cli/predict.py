"""``mask2former predict``: segment images, folders or globs; write overlays, label PNGs and one COCO-style JSON."""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}

DESCRIPTION = """\
Segment images with a Mask2Former checkpoint. For each image, writes into --out:
  NAME.overlay.png  the image with the segments blended on it, outlined and named
  NAME.label.png    semantic: class id per pixel; panoptic: segment ids in the COCO panoptic RGB encoding
                    (id = R + 256 G + 256^2 B); instance: instance index + 1 per pixel, 0 for none
and, for the whole run, predictions.json in the COCO formats: "images", "categories" and "annotations"
(instance: results with RLE masks and scores; panoptic: one entry per image with its segments_info;
semantic: one RLE per class present). Unreadable files are reported and skipped; the exit status is then 1.
"""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "predict",
        help="segment images and write overlays, label PNGs and COCO JSON",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    parser.add_argument(
        "--model",
        default=None,
        help="checkpoint folder or Hugging Face hub id (local cache); default: the small model bundled with the "
        "package, trained on synthetic scenes",
    )
    parser.add_argument("--task", default="panoptic", choices=["panoptic", "instance", "semantic"], help="(default: panoptic)")
    parser.add_argument("--out", default="predictions", help="output folder, created if needed (default: predictions)")
    # Flags below are passed on only when given, so their defaults live in Segmenter.segment.
    parser.add_argument("--threshold", type=float, default=argparse.SUPPRESS, help="minimum segment score (default 0.5)")
    parser.add_argument(
        "--mask-threshold", type=float, default=argparse.SUPPRESS, help="mask probability cut-off (default 0.5)"
    )
    parser.add_argument(
        "--overlap-mask-area-threshold",
        type=float,
        default=argparse.SUPPRESS,
        help="minimum fraction of a mask that must survive overlaps (default 0.8)",
    )
    parser.add_argument(
        "--label-ids-to-fuse",
        type=int,
        nargs="*",
        default=argparse.SUPPRESS,
        help="panoptic: class ids whose segments merge into one (stuff classes)",
    )
    parser.add_argument("--batch-size", type=int, default=argparse.SUPPRESS, help="images per forward pass (default 1)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps... (default: cpu)")
    add_tta_arguments(parser)
    parser.set_defaults(run=run)


def add_tta_arguments(parser: argparse.ArgumentParser) -> None:
    """--tta, --tta-scales, --no-tta-flip: semantic test-time augmentation (``tta_scales``, ``tta_flip``)."""
    from ..processing.tta import DEFAULT_SCALES

    group = parser.add_argument_group("test-time augmentation (semantic only)")
    group.add_argument(
        "--tta",
        action="store_true",
        help="average the class probabilities over the original Mask2Former's test scales "
        f"{' '.join(f'{s:g}' for s in DEFAULT_SCALES)} (factors of the processor's size) and their mirror images",
    )
    group.add_argument(
        "--tta-scales", type=float, nargs="+", metavar="S", default=argparse.SUPPRESS,
        help="test-time augmentation with these scales instead (implies --tta)",
    )
    group.add_argument(
        "--no-tta-flip", dest="tta_flip", action="store_false", default=argparse.SUPPRESS,
        help="test-time augmentation without the mirrored views",
    )


def tta_options(args: argparse.Namespace) -> dict:
    """The ``tta_scales``/``tta_flip`` arguments the flags ask for (none without --tta or --tta-scales); a
    ValueError or TypeError names the flag that is wrong."""
    from ..processing.tta import DEFAULT_SCALES, check_scales

    if not args.tta and not hasattr(args, "tta_scales"):
        if hasattr(args, "tta_flip"):
            raise ValueError("--no-tta-flip needs --tta or --tta-scales")
        return {}
    if args.task != "semantic":
        raise ValueError(f"--tta and --tta-scales work with --task semantic only, got --task {args.task}")
    options = {"tta_scales": check_scales(getattr(args, "tta_scales", DEFAULT_SCALES), "--tta-scales")}
    if hasattr(args, "tta_flip"):
        options["tta_flip"] = args.tta_flip
    return options


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[str]]:
    """Files, folders and globs -> (sorted unique image paths, inputs that matched nothing)."""
    paths: list[Path] = []
    unmatched: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = [p for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
        elif path.exists():
            found = [path]
        else:
            found = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
        if not found:
            unmatched.append(item)
        paths.extend(found)
    unique = list(dict.fromkeys(p.resolve() for p in paths))
    return unique, unmatched


def _output_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with a numeric suffix where two inputs share one."""
    names, seen = [], {}
    for path in paths:
        stem = path.stem
        count = seen.get(stem, 0)
        seen[stem] = count + 1
        names.append(stem if count == 0 else f"{stem}-{count}")
    return names


def run(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from ..segmenter import Segmenter, load_image

    paths, unmatched = expand_inputs(args.inputs)
    failures = [f"{item}: no such file, folder or matching image" for item in unmatched]
    if not paths:
        for failure in failures:
            print(f"error: {failure}", file=sys.stderr)
        return 1
    options = {
        key: getattr(args, key)
        for key in ("threshold", "mask_threshold", "overlap_mask_area_threshold", "label_ids_to_fuse")
        if hasattr(args, key)
    }
    batch_size = getattr(args, "batch_size", 1)
    if batch_size < 1:
        print(f"error: --batch-size must be >= 1, got {batch_size}", file=sys.stderr)
        return 2
    try:
        options.update(tta_options(args))
    except (TypeError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    segmenter = Segmenter.from_pretrained(args.model, device=args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = _output_names(paths)

    images_info, annotations = [], []
    with tqdm(total=len(paths), unit="image", desc="predict") as bar:
        for start in range(0, len(paths), batch_size):
            batch = []
            for index in range(start, min(start + batch_size, len(paths))):
                try:
                    batch.append((index, load_image(paths[index])))
                except (OSError, ValueError) as error:
                    failures.append(f"{paths[index]}: {error}")
                    bar.write(f"skipping {paths[index]}: {error}", file=sys.stderr)
            if batch:
                results = segmenter.segment([image for _, image in batch], args.task, batch_size=len(batch), **options)
                for (index, image), result in zip(batch, results):
                    name = names[index]
                    result.overlay(image).save(out / f"{name}.overlay.png")
                    result.label_image().save(out / f"{name}.label.png")
                    images_info.append(
                        {"id": index, "file_name": str(paths[index]), "height": image.height, "width": image.width}
                    )
                    coco = result.to_coco(image_id=index, file_name=f"{name}.label.png")
                    annotations.extend(coco if isinstance(coco, list) else [coco])
            bar.update(min(batch_size, len(paths) - start))

    categories = [{"id": i, "name": name} for i, name in sorted(segmenter.id2label.items())]
    document = {"task": args.task, "images": images_info, "categories": categories, "annotations": annotations}
    with open(out / "predictions.json", "w", encoding="utf-8") as handle:
        json.dump(document, handle)
    print(f"wrote {len(images_info)} overlays, label PNGs and predictions.json to {os.fspath(out)}")
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    return 1 if failures else 0
