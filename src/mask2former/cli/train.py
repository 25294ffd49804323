"""``mask2former train``: train or fine-tune a model (one process, or several with ``torchrun``)."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Train a Mask2Former model, or fine-tune a checkpoint on your own data, with the original recipe (AdamW, backbone
lr x 0.1, no weight decay on norms and embeddings, poly schedule, full-model gradient clipping).

Every option below is a field of the training config: give them as flags, or as keys of a JSON (or YAML, with
PyYAML installed) file with --config FILE; flags override the file. The run writes into --output-dir:
  train_config.json          the resolved config
  log.jsonl                  one JSON line per logged step (step, loss, each loss term, lr, grad_norm, time) and
                             per evaluation (step, eval)
  checkpoints/checkpoint-STEP.pt   every --save-every steps, at the end, and on Ctrl-C/SIGTERM (then it exits);
                             --resume auto continues exactly where the latest one left off
  eval-STEP.json             full evaluation reports (with --val-* paths, or synthetic held-out scenes)
  final/                     the model (config.json, model.safetensors, preprocessor_config.json), ready for
                             `mask2former predict --model OUTPUT_DIR/final` and Segmenter.from_pretrained

Example, fine-tuning on COCO-format panoptic data:
  mask2former train --model facebook/mask2former-swin-tiny-coco-panoptic --dataset coco-panoptic \\
      --train-annotations panoptic_train.json --train-images train/ \\
      --val-annotations panoptic_val.json --val-images val/ --max-steps 20000 --batch-size 8 --output-dir run1
Several processes: torchrun --nproc_per_node 4 -m mask2former train ... (--batch-size is the global batch).
"""


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    from ..training.config import add_arguments

    parser = subcommands.add_parser(
        "train", help="train or fine-tune a model (torchrun for several processes)", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from ..training.config import config_from_args
    from ..training.trainer import Trainer

    try:
        config = config_from_args(args)
        trainer = Trainer(config)
    except (FileNotFoundError, ValueError, TypeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    result = trainer.train()
    if result.interrupted:
        return 130
    if trainer.context.is_main:
        print(f"trained {result.step} steps; model saved to {result.final_dir}")
    return 0
