"""``mask2former demo``: run a model on the bundled image and print what it outputs.

Until a trained model is bundled, the default is a small randomly initialized Mask2Former; pass ``--model`` to run
a real checkpoint (a folder or a Hugging Face hub id already in the local cache).
"""

from __future__ import annotations

import argparse
import time
from importlib import resources

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("demo", help="run a model on the bundled image and print its output shapes")
    parser.add_argument("--model", help="checkpoint folder or hub id (default: a small random model)")
    parser.add_argument("--image", help="image file (default: the bundled demo image)")
    parser.set_defaults(run=run)


def _small_random_model():
    from ..config import Mask2FormerConfig, SwinConfig
    from ..modeling.mask2former import Mask2FormerForUniversalSegmentation

    torch.manual_seed(0)
    config = Mask2FormerConfig(
        backbone_config=SwinConfig(embed_dim=48, depths=[2, 2, 2, 2], num_heads=[3, 6, 12, 24]),
        feature_size=64,
        mask_feature_size=64,
        hidden_dim=64,
        encoder_feedforward_dim=128,
        dim_feedforward=256,
        encoder_layers=2,
        decoder_layers=4,
        num_queries=20,
        id2label={0: "sky", 1: "ground", 2: "disc", 3: "square", 4: "triangle"},
    )
    return Mask2FormerForUniversalSegmentation.from_config(config).eval()


def _load_image(path: str | None) -> Image.Image:
    if path is None:
        with resources.files("mask2former").joinpath("assets/demo.png").open("rb") as handle:
            return Image.open(handle).convert("RGB")
    return Image.open(path).convert("RGB")


def run(args: argparse.Namespace) -> int:
    from ..modeling.mask2former import Mask2FormerForUniversalSegmentation

    model = (
        Mask2FormerForUniversalSegmentation.from_pretrained(args.model) if args.model else _small_random_model()
    )
    image = _load_image(args.image)
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)  # (3, H, W)
    pixels = (pixels - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    height, width = pixels.shape[1:]
    pixels = F.pad(pixels, (0, -width % 32, 0, -height % 32))[None]  # (1, 3, H', W'), padded to a multiple of 32
    start = time.perf_counter()
    with torch.inference_mode():
        outputs = model(pixels, output_auxiliary_logits=True)
    elapsed = time.perf_counter() - start
    print(f"image {width}x{height}, padded input {tuple(pixels.shape)}, forward {elapsed * 1000:.0f} ms")
    print(f"class_queries_logits {tuple(outputs.class_queries_logits.shape)}  (batch, queries, classes + no-object)")
    print(f"masks_queries_logits {tuple(outputs.masks_queries_logits.shape)}  (batch, queries, H/4, W/4)")
    print(f"auxiliary_logits     {len(outputs.auxiliary_logits)} earlier predictions")
    return 0
