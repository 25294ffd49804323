"""``mask2former demo`` (what ``make demo`` runs): segment a few fresh synthetic scenes with the bundled model in all
three tasks, write the pictures and print a short summary."""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

DEMO_SEED = 20261121  # not a seed the bundled model was trained or evaluated on


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="segment a few synthetic scenes with the bundled model in all three tasks and write overlays",
        description="Generate --num-images synthetic scenes (OUT/scenes), run `mask2former predict` on them in the "
        "panoptic, instance and semantic tasks (OUT/panoptic, OUT/instance, OUT/semantic: overlays, label PNGs, "
        "predictions.json) and print what was found, next to the ground truth.",
    )
    parser.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--num-images", type=int, default=4, help="how many scenes (default: 4)")
    parser.add_argument("--model", default=None, help="checkpoint folder or hub id (default: the bundled model)")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cpu)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import CATEGORIES, write_synthetic_dataset
    from ..segmenter import Segmenter, load_image

    if args.num_images < 1:
        print(f"error: --num-images must be >= 1, got {args.num_images}")
        return 2
    start = time.perf_counter()
    out = Path(args.out)
    scenes = out / "scenes"
    write_synthetic_dataset(scenes, args.num_images, seed=DEMO_SEED)
    with open(scenes / "panoptic.json", encoding="utf-8") as handle:
        truth = json.load(handle)
    names = {c["id"]: c["name"] for c in CATEGORIES}
    expected = Counter(names[s["category_id"]] for a in truth["annotations"] for s in a["segments_info"])

    segmenter = Segmenter.from_pretrained(args.model, device=args.device)
    paths = sorted((scenes / "images").glob("*.png"))
    images = [load_image(path) for path in paths]
    print(f"{len(images)} synthetic scenes in {scenes}; ground truth: {_summary(expected)}")
    for task in ("panoptic", "instance", "semantic"):
        folder = out / task
        folder.mkdir(parents=True, exist_ok=True)
        task_start = time.perf_counter()
        results = segmenter.segment(images, task, batch_size=len(images))
        elapsed = time.perf_counter() - task_start
        found: Counter[str] = Counter()
        for path, image, result in zip(paths, images, results):
            result.overlay(image).save(folder / f"{path.stem}.overlay.png")
            result.label_image().save(folder / f"{path.stem}.label.png")
            found.update(segment.label for segment in result.segments)
        print(f"{task:>9}: {_summary(found)}  ({elapsed:.1f} s) -> {folder}/*.overlay.png")
    print(f"done in {time.perf_counter() - start:.1f} s; open {out}/panoptic/*.overlay.png to look")
    return 0


def _summary(counts: Counter[str]) -> str:
    return ", ".join(f"{count} {label}" for label, count in sorted(counts.items())) or "nothing"
