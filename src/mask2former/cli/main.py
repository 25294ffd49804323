"""The ``mask2former`` command: one subcommand per file of this package."""

from __future__ import annotations

import argparse
import sys

from . import demo, evaluate, make_synthetic, predict
from . import convert, train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mask2former", description="Mask2Former universal image segmentation (semantic, instance, panoptic)."
    )
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo.add_parser(subcommands)
    make_synthetic.add_parser(subcommands)
    predict.add_parser(subcommands)
    evaluate.add_parser(subcommands)
    train.add_parser(subcommands)
    convert.add_parser(subcommands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
