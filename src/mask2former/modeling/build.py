"""The one place that turns a config into constructor arguments."""

from __future__ import annotations

from torch import nn

from ..config import Mask2FormerConfig, MaskFormerConfig, ResNetConfig, SwinConfig
from .backbones.resnet import RESNET_ACTIVATIONS, ResNetBackbone
from .backbones.swin import SwinBackbone
from .detr_decoder import DetrDecoder
from .fpn_pixel_decoder import FPNPixelDecoder
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import MaskedAttentionDecoder


def build_swin_backbone(config: SwinConfig) -> SwinBackbone:
    """A Swin backbone emitting the 4 stage maps."""
    if config.use_absolute_embeddings:
        raise ValueError("backbone_config.use_absolute_embeddings=True is not supported (no released checkpoint uses it)")
    if config.out_features != ["stage1", "stage2", "stage3", "stage4"]:
        raise ValueError(
            f"backbone_config.out_features must be ['stage1', 'stage2', 'stage3', 'stage4'], got {config.out_features}"
        )
    return SwinBackbone(
        embed_dim=config.embed_dim,
        depths=config.depths,
        num_heads=config.num_heads,
        window_size=config.window_size,
        mlp_ratio=config.mlp_ratio,
        qkv_bias=config.qkv_bias,
        patch_size=config.patch_size,
        in_channels=config.num_channels,
        drop_path_rate=config.drop_path_rate,
        layer_norm_eps=config.layer_norm_eps,
    )


def build_resnet_backbone(config: ResNetConfig) -> ResNetBackbone:
    """A ResNet backbone (frozen BatchNorm) emitting the maps named by ``out_features``."""
    if config.hidden_act not in RESNET_ACTIVATIONS:
        raise ValueError(f"backbone_config.hidden_act must be one of {RESNET_ACTIVATIONS}, got {config.hidden_act!r}")
    return ResNetBackbone(
        depths=config.depths,
        hidden_sizes=config.hidden_sizes,
        embedding_size=config.embedding_size,
        in_channels=config.num_channels,
        block_type=config.layer_type,
        stride_in_1x1=config.downsample_in_bottleneck,
        downsample_in_first_stage=config.downsample_in_first_stage,
        activation=config.hidden_act,
        out_indices=config.out_indices,
    )


def build_backbone(config: SwinConfig | ResNetConfig) -> nn.Module:
    """The backbone a ``backbone_config`` describes."""
    if isinstance(config, ResNetConfig):
        return build_resnet_backbone(config)
    return build_swin_backbone(config)


def build_mask2former_parts(config: Mask2FormerConfig) -> dict[str, nn.Module]:
    """Backbone, pixel decoder and transformer decoder of a Mask2Former model."""
    backbone = build_backbone(config.backbone_config)
    in_channels = [info.channels for info in backbone.feature_info]
    in_strides = [info.stride for info in backbone.feature_info]
    if in_strides != list(config.feature_strides):
        raise ValueError(f"feature_strides {config.feature_strides} do not match the backbone's strides {in_strides}")
    pixel_decoder = MSDeformAttnPixelDecoder(
        in_channels=in_channels,
        in_strides=in_strides,
        dim=config.feature_size,
        mask_dim=config.mask_feature_size,
        num_heads=config.num_attention_heads,
        num_layers=config.encoder_layers,
        feedforward_dim=config.encoder_feedforward_dim,
        dropout=config.dropout,
        common_stride=config.common_stride,
    )
    transformer_decoder = MaskedAttentionDecoder(
        in_channels=config.feature_size,
        dim=config.hidden_dim,
        mask_dim=config.mask_feature_size,
        num_queries=config.num_queries,
        num_heads=config.num_attention_heads,
        num_layers=config.decoder_layers - 1,
        feedforward_dim=config.dim_feedforward,
        dropout=config.dropout,
        pre_norm=config.pre_norm,
        enforce_input_projection=config.enforce_input_projection,
        activation=config.activation_function,
    )
    return {"backbone": backbone, "pixel_decoder": pixel_decoder, "transformer_decoder": transformer_decoder}


def build_maskformer_parts(config: MaskFormerConfig) -> dict[str, nn.Module]:
    """Backbone, FPN pixel decoder and DETR transformer decoder of a MaskFormer model."""
    backbone = build_backbone(config.backbone_config)
    in_channels = [info.channels for info in backbone.feature_info]
    decoder = config.decoder_config
    pixel_decoder = FPNPixelDecoder(
        in_channels=in_channels, dim=config.fpn_feature_size, mask_dim=config.mask_feature_size
    )
    transformer_decoder = DetrDecoder(
        in_channels=in_channels[-1],
        dim=decoder.d_model,
        num_queries=decoder.num_queries,
        num_heads=decoder.decoder_attention_heads,
        num_layers=decoder.decoder_layers,
        feedforward_dim=decoder.decoder_ffn_dim,
        dropout=decoder.dropout,
        attention_dropout=decoder.attention_dropout,
        activation_dropout=decoder.activation_dropout,
        activation=decoder.activation_function,
        norm_between_layers=decoder.auxiliary_loss,
    )
    return {"backbone": backbone, "pixel_decoder": pixel_decoder, "transformer_decoder": transformer_decoder}
