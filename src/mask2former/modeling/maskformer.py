"""MaskFormer: backbone -> FPN pixel decoder -> DETR transformer decoder -> class and mask per query.

Cheng et al., "Per-Pixel Classification is Not All You Need for Semantic Segmentation" (2021). The backbone is the
one Mask2Former uses (Swin or ResNet); the DETR decoder reads the backbone's stride-32 map, and each query's mask is
its embedding (an MLP of the decoder output) dotted with the FPN's per-pixel embeddings at stride 4.

``MaskFormerModel`` is the network without the heads; ``MaskFormerForInstanceSegmentation`` adds the class and mask
heads and is what the released checkpoints hold. Names and outputs follow ``transformers``.

Auxiliary predictions follow the original code: one per decoder layer but the last, made from that layer's output
after the decoder's final LayerNorm. ``transformers`` makes them instead from the first layer's input (zeros) and the
layers' outputs without the LayerNorm (``get_logits`` reads ``transformer_decoder_hidden_states``), and only when the
config's ``use_auxiliary_loss`` is set; the final prediction is the same in both.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..config import MaskFormerConfig
from .mask2former import Mask2FormerModel
from .outputs import MaskFormerForInstanceSegmentationOutput, MaskFormerModelOutput
from .transformer_decoder import MLP

if TYPE_CHECKING:  # imported at first use: the training package may import the model
    from ..training.maskformer_criterion import MaskFormerCriterion


class MaskFormerModel(nn.Module):
    """The MaskFormer network without the heads.

    Args:
        backbone: image (B, 3, H, W) -> maps at strides 4..32; declares ``feature_info``.
        pixel_decoder: maps -> (per-pixel embeddings, FPN maps).
        transformer_decoder: stride-32 map -> decoded queries.
        config: the config the parts were built from; kept for ``save_pretrained``.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        config: MaskFormerConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.config = config

    @classmethod
    def from_config(cls, config: MaskFormerConfig, **kwargs: Any) -> MaskFormerModel:
        """A randomly initialized model of this architecture."""
        from .build import build_maskformer_parts

        return cls(**build_maskformer_parts(config), config=config, **kwargs)

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, **kwargs: Any) -> MaskFormerModel:
        """Load a checkpoint: a folder or hub id in the Hugging Face layout (see
        :func:`mask2former.checkpoints.hf_maskformer.load_pretrained` for the options), a preset name (its hub id),
        or an original detectron2 ``.pkl``/``.pth`` file with ``config=`` a preset name or a config (see
        :func:`mask2former.checkpoints.detectron2.load_detectron2_checkpoint`).
        """
        from ..checkpoints.detectron2 import is_detectron2_file, load_detectron2_checkpoint
        from ..checkpoints.hf_maskformer import load_pretrained
        from ..presets import resolve_hub_id

        if is_detectron2_file(path_or_hub_id):
            return load_detectron2_checkpoint(cls, path_or_hub_id, **kwargs)
        return load_pretrained(cls, resolve_hub_id(path_or_hub_id), **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` in the layout ``transformers`` loads."""
        from ..checkpoints.hf_maskformer import save_pretrained

        save_pretrained(self, directory)

    # The same checks as Mask2Former's: they only read ``self.backbone.in_channels``.
    _check_inputs = Mask2FormerModel._check_inputs

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> MaskFormerModelOutput:
        """Run the network.

        Args:
            pixel_values: (B, 3, H, W) normalized images.
            pixel_mask: (B, H, W), 1 on real pixels, 0 on padding. Accepted for compatibility and, as in the original
                code and ``transformers``, not used.
            output_hidden_states: also return the backbone maps, the FPN maps and the decoder states.
        """
        self._check_inputs(pixel_values, pixel_mask)
        features = self.backbone(pixel_values)
        mask_features, pyramid = self.pixel_decoder(features)
        decoded = self.transformer_decoder(features[-1])
        hidden = bool(output_hidden_states)
        encoder_states = tuple(features) if hidden else None
        pixel_decoder_states = tuple(pyramid) if hidden else None
        decoder_states = tuple(decoded.hidden_states) if hidden else None
        return MaskFormerModelOutput(
            encoder_last_hidden_state=features[-1],
            pixel_decoder_last_hidden_state=mask_features,
            transformer_decoder_last_hidden_state=decoded.last_hidden_state,
            transformer_decoder_intermediate_states=tuple(decoded.intermediate_states),
            encoder_hidden_states=encoder_states,
            pixel_decoder_hidden_states=pixel_decoder_states,
            transformer_decoder_hidden_states=decoder_states,
            hidden_states=encoder_states + pixel_decoder_states + decoder_states if hidden else None,
        )


class MaskFormerForInstanceSegmentation(MaskFormerModel):
    """MaskFormer with its heads: per query a class over K + 1 ("no object" last) and a mask.

    Args:
        num_labels: K, the number of classes without "no object".
        hidden_dim: width of the decoder queries the heads read (``decoder_config.d_model``).
        mask_dim: channels of the per-pixel embeddings (``mask_feature_size``).
        (the others as in :class:`MaskFormerModel`)
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        num_labels: int,
        hidden_dim: int = 256,
        mask_dim: int = 256,
        config: MaskFormerConfig | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone, pixel_decoder=pixel_decoder, transformer_decoder=transformer_decoder, config=config
        )
        self.class_head = nn.Linear(hidden_dim, num_labels + 1)
        self.mask_head = MLP(hidden_dim, hidden_dim, mask_dim, 3)
        # The training loss, built from the config at its first use (see `loss_criterion`); assign to replace it.
        self.criterion: MaskFormerCriterion | None = None

    @classmethod
    def from_config(cls, config: MaskFormerConfig, **kwargs: Any) -> MaskFormerForInstanceSegmentation:
        """A randomly initialized model of this architecture."""
        return super().from_config(
            config,
            num_labels=config.num_labels,
            hidden_dim=config.decoder_config.d_model,
            mask_dim=config.mask_feature_size,
            **kwargs,
        )

    @property
    def num_labels(self) -> int:
        """K, the number of classes without "no object"."""
        return self.class_head.out_features - 1

    def loss_criterion(self) -> MaskFormerCriterion:
        """The criterion ``forward`` uses with targets: ``criterion`` if set, else one built from the config (the
        defaults of ``transformers`` when the model has no config), kept in ``criterion``."""
        if self.criterion is None:
            from ..training.maskformer_criterion import MaskFormerCriterion

            if self.config is not None:
                self.criterion = MaskFormerCriterion.from_config(self.config)
            else:
                self.criterion = MaskFormerCriterion(num_labels=self.num_labels)
        return self.criterion

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        mask_labels: list[Tensor] | None = None,
        class_labels: list[Tensor] | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> MaskFormerForInstanceSegmentationOutput:
        """Predict a class and a mask per query.

        Args:
            pixel_values: (B, 3, H, W) normalized images.
            pixel_mask: (B, H, W); accepted and not used (see :meth:`MaskFormerModel.forward`).
            mask_labels: training targets, B tensors (N_i, H, W) of 0/1 masks at the size of ``pixel_values``; with
                ``class_labels``, the loss is computed.
            class_labels: B int64 tensors (N_i,), the class in [0, K) of each mask (N_i = 0 is allowed).
            output_auxiliary_logits: also return the predictions of the earlier decoder layers (default: the
                config's ``output_auxiliary_logits``, else False).
            output_hidden_states: also return the hidden states.

        Returns:
            :class:`MaskFormerForInstanceSegmentationOutput` with ``class_queries_logits`` (B, Q, K + 1) and
            ``masks_queries_logits`` (B, Q, H/4, W/4); with targets also ``loss`` and ``loss_dict`` (the weighted
            terms of the last prediction and, if the config's ``use_auxiliary_loss``, of every earlier one; see
            :class:`~mask2former.training.maskformer_criterion.MaskFormerCriterion`).
        """
        with_targets = mask_labels is not None or class_labels is not None
        if with_targets:
            from ..training.criterion import validate_targets

            self._check_inputs(pixel_values, pixel_mask)
            validate_targets(
                mask_labels,
                class_labels,
                batch_size=pixel_values.shape[0],
                num_labels=self.num_labels,
                image_size=tuple(pixel_values.shape[2:]),
            )
        outputs = super().forward(pixel_values, pixel_mask, output_hidden_states)
        if output_auxiliary_logits is None and self.config is not None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        use_auxiliary_loss = with_targets and (self.config.use_auxiliary_loss if self.config is not None else False)
        # The last prediction reads the final state; the earlier ones (only computed when needed) each layer's
        # LayerNorm-ed output. The two differ for the last layer only with transformers' norm_between_layers.
        states = [outputs.transformer_decoder_last_hidden_state]
        if output_auxiliary_logits or use_auxiliary_loss:
            states = [*outputs.transformer_decoder_intermediate_states[:-1], *states]
        states = torch.stack(states)  # (T, B, Q, C), T predictions
        class_logits = self.class_head(states)  # (T, B, Q, K + 1)
        mask_logits = torch.einsum(
            "tbqc,bchw->tbqhw", self.mask_head(states), outputs.pixel_decoder_last_hidden_state
        )  # (T, B, Q, H/4, W/4)
        earlier = [
            {"class_queries_logits": classes, "masks_queries_logits": masks}
            for classes, masks in zip(class_logits[:-1], mask_logits[:-1])
        ]
        loss = loss_dict = None
        if with_targets:
            loss_dict = self.loss_criterion()(
                class_logits[-1],
                mask_logits[-1],
                mask_labels,
                class_labels,
                auxiliary_predictions=earlier if use_auxiliary_loss else None,
            )
            loss = sum(loss_dict.values())
        return MaskFormerForInstanceSegmentationOutput(
            class_queries_logits=class_logits[-1],
            masks_queries_logits=mask_logits[-1],
            auxiliary_logits=earlier if output_auxiliary_logits else None,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=outputs.pixel_decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=outputs.transformer_decoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            pixel_decoder_hidden_states=outputs.pixel_decoder_hidden_states,
            transformer_decoder_hidden_states=outputs.transformer_decoder_hidden_states,
            hidden_states=outputs.hidden_states,
            loss=loss,
            loss_dict=loss_dict,
        )
