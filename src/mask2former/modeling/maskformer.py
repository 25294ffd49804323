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

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..checkpoints.hf_maskformer import LAYOUT
from ..config import MaskFormerConfig
from .base import SegmentationModel
from .build import build_maskformer_parts
from .outputs import MaskFormerForInstanceSegmentationOutput, MaskFormerModelOutput
from .transformer_decoder import MLP

if TYPE_CHECKING:  # imported at first use: the training package may import the model
    from ..training.maskformer_criterion import MaskFormerCriterion


class MaskFormerModel(SegmentationModel):
    """The MaskFormer network without the heads.

    Args:
        backbone: image (B, 3, H, W) -> maps at strides 4..32; declares ``feature_info``.
        pixel_decoder: maps -> (per-pixel embeddings, FPN maps).
        transformer_decoder: stride-32 map -> decoded queries.
        config: the config the parts were built from; kept for ``save_pretrained``.
    """

    _build_parts = staticmethod(build_maskformer_parts)
    _checkpoint_layout = LAYOUT

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

    @staticmethod
    def _criterion_class() -> type[MaskFormerCriterion]:
        from ..training.maskformer_criterion import MaskFormerCriterion

        return MaskFormerCriterion

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
        with_targets = self._check_targets(pixel_values, pixel_mask, mask_labels, class_labels)
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
        earlier, loss, loss_dict = self._predictions_and_loss(
            class_logits, mask_logits, mask_labels, class_labels, use_auxiliary_loss=use_auxiliary_loss
        )
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
