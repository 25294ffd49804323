"""``mask2former convert``: an original detectron2 checkpoint -> a folder in the Hugging Face layout.

The folder (``config.json``, ``model.safetensors``, ``preprocessor_config.json``) loads here and in ``transformers``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "convert",
        help="convert an original detectron2 checkpoint (model_final_*.pkl) to the Hugging Face layout",
        description="Read an original Mask2Former or MaskFormer checkpoint (a detectron2 .pkl, or a .pth of the same "
        "layout; read without running any code from it), check every key and shape against the architecture of "
        "--preset or --config, and write OUT_DIR/config.json, model.safetensors and preprocessor_config.json, which "
        "`transformers` loads too. Without --preset or --config, a file with its model-zoo name "
        "(model_final_9fd0ae.pkl) picks its preset. `python -c 'import mask2former; print(mask2former.list_models())'` "
        "lists the presets.",
    )
    parser.add_argument("input", help="the original checkpoint file (.pkl or .pth)")
    parser.add_argument("out_dir", help="the folder to write")
    parser.add_argument(
        "--from", dest="source", choices=["detectron2"], required=True, help="the format of INPUT: detectron2"
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--preset", help="the model, as a preset name (e.g. mask2former-swin-tiny-coco-panoptic)")
    which.add_argument("--config", help="the model, as a config.json (Mask2Former or MaskFormer)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..checkpoints.detectron2 import load_detectron2_checkpoint, resolve_detectron2_config
    from ..processing.image_processor import Mask2FormerImageProcessor

    config_source = args.preset or args.config
    if args.config is not None and not Path(args.config).exists():
        print(f"error: --config {args.config!r}: no such file")
        return 2
    try:
        config, preset = resolve_detectron2_config(config_source, args.input)
        model = load_detectron2_checkpoint(None, args.input, config=config_source)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}")
        return 2
    out = Path(args.out_dir)
    model.save_pretrained(out)
    if preset is not None:
        processor = preset.image_processor()
    else:
        processor = Mask2FormerImageProcessor(num_labels=config.num_labels)
    processor.save_pretrained(out)
    name = f"preset {preset.name}" if preset is not None else f"config {args.config}"
    parameters = sum(parameter.numel() for parameter in model.parameters())
    print(f"{args.input} ({name}, {parameters / 1e6:.1f}M parameters) -> {out}/")
    return 0
