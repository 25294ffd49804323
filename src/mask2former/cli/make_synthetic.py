"""``mask2former make-synthetic``: write a synthetic COCO panoptic dataset (stuff regions and shape objects)."""

from __future__ import annotations

import argparse


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "make-synthetic",
        help="write a synthetic dataset in the COCO panoptic format",
        description="Write OUT/images/*.png, OUT/panoptic/*.png (segment ids as RGB) and OUT/panoptic.json: "
        "scenes with sky, ground and water regions and up to --max-objects shapes of five classes. "
        "Deterministic for a seed.",
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--num-images", type=int, required=True, help="how many images to write")
    parser.add_argument("--seed", type=int, default=argparse.SUPPRESS, help="random seed (default 0)")
    parser.add_argument("--height", type=int, default=argparse.SUPPRESS, help="image height (default 256)")
    parser.add_argument("--width", type=int, default=argparse.SUPPRESS, help="image width (default 256)")
    parser.add_argument("--max-objects", type=int, default=argparse.SUPPRESS, help="objects per image at most (default 5)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..data.synthetic import write_synthetic_dataset

    options = {key: getattr(args, key) for key in ("seed", "height", "width", "max_objects") if hasattr(args, key)}
    path = write_synthetic_dataset(args.out, args.num_images, progress=True, **options)
    print(f"wrote {args.num_images} images and {path}")
    return 0
