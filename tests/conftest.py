"""Shared test helpers: tiny configs and checkpoints written by ``transformers`` (the reference)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_SWIN = dict(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 2, 4, 8], window_size=7)
TINY_MASK2FORMER = dict(
    feature_size=32,
    mask_feature_size=32,
    hidden_dim=32,
    encoder_feedforward_dim=64,
    dim_feedforward=64,
    encoder_layers=2,
    decoder_layers=4,
    num_attention_heads=4,
    num_queries=10,
)


def randomize_(module: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Add noise to every parameter, so zero-initialized biases and unit LayerNorms also get tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def make_transformers_checkpoint(
    directory: Path,
    *,
    swin: dict | None = None,
    num_labels: int = 5,
    seed: int = 0,
    **mask2former: object,
):
    """Build a random ``transformers`` Mask2Former, save it to ``directory`` and return it (eval mode)."""
    import transformers

    torch.manual_seed(seed)
    backbone = transformers.SwinConfig(
        **(swin if swin is not None else TINY_SWIN), out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    options = dict(TINY_MASK2FORMER) if swin is None else {}
    options.update(mask2former)
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone,
        id2label={i: f"class_{i}" for i in range(num_labels)},
        **options,
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    randomize_(model, seed)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A tiny transformers checkpoint folder and the transformers model it holds."""
    directory = tmp_path_factory.mktemp("tiny")
    model = make_transformers_checkpoint(directory)
    return directory, model


# A tiny bottleneck ResNet: two blocks in the second stage so that blocks without a shortcut are covered too.
TINY_RESNET = dict(embedding_size=8, depths=[1, 2, 1, 1], hidden_sizes=[16, 32, 64, 128], layer_type="bottleneck")


def randomize_batchnorm_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every BatchNorm non-trivial running statistics (randomize_ only touches parameters)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.1)
            elif name.endswith("running_var"):
                buffer.copy_(torch.rand(buffer.shape, generator=generator) + 0.5)


def make_transformers_resnet_checkpoint(
    directory: Path,
    *,
    resnet: dict | None = None,
    num_labels: int = 5,
    seed: int = 0,
    **mask2former: object,
):
    """Like make_transformers_checkpoint, with a ResNet backbone (BatchNorm statistics perturbed too)."""
    import transformers

    torch.manual_seed(seed)
    backbone = transformers.ResNetConfig(
        **(resnet if resnet is not None else TINY_RESNET), out_features=["stage1", "stage2", "stage3", "stage4"]
    )
    options = dict(TINY_MASK2FORMER)
    options.update(mask2former)
    config = transformers.Mask2FormerConfig(
        backbone_config=backbone, id2label={i: f"class_{i}" for i in range(num_labels)}, **options
    )
    model = transformers.Mask2FormerForUniversalSegmentation(config).eval()
    randomize_(model, seed)
    randomize_batchnorm_(model, seed)
    model.save_pretrained(directory)
    return model


# A tiny MaskFormer: 3 DETR decoder layers (so 2 auxiliary predictions), 10 queries, width 32.
TINY_DETR = dict(d_model=32, decoder_layers=3, decoder_attention_heads=4, decoder_ffn_dim=64, num_queries=10)
TINY_MASKFORMER = dict(fpn_feature_size=32, mask_feature_size=32)


def make_transformers_maskformer_checkpoint(
    directory: Path,
    *,
    backbone: str = "swin",
    backbone_options: dict | None = None,
    decoder: dict | None = None,
    num_labels: int = 5,
    seed: int = 0,
    **maskformer: object,
):
    """Build a random ``transformers`` MaskFormer, save it to ``directory`` and return it (eval mode).

    ``backbone`` is "swin" or "resnet" (tiny unless ``backbone_options`` say otherwise). transformers builds a Swin
    backbone as MaskFormerSwin and writes ``model_type: "maskformer-swin"``; the released files say "swin".
    """
    import transformers

    torch.manual_seed(seed)
    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "swin":
        backbone_config = transformers.SwinConfig(**(backbone_options or TINY_SWIN), out_features=stages)
    else:
        backbone_config = transformers.ResNetConfig(**(backbone_options or TINY_RESNET), out_features=stages)
    config = transformers.MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=transformers.MaskFormerDetrConfig(**{**TINY_DETR, **(decoder or {})}),
        id2label={i: f"class_{i}" for i in range(num_labels)},
        **{**TINY_MASKFORMER, **maskformer},
    )
    model = transformers.MaskFormerForInstanceSegmentation(config).eval()
    randomize_(model, seed)
    randomize_batchnorm_(model, seed)
    model.save_pretrained(directory)
    return model


@pytest.fixture(scope="session")
def tiny_maskformer_checkpoint(tmp_path_factory) -> tuple[Path, object]:
    """A tiny transformers MaskFormer (Swin) checkpoint folder and the transformers model it holds."""
    directory = tmp_path_factory.mktemp("tiny_maskformer")
    model = make_transformers_maskformer_checkpoint(directory)
    return directory, model
