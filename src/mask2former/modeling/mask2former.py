"""Mask2Former: backbone -> pixel decoder -> masked-attention transformer decoder -> class and mask per query.

``Mask2FormerModel`` is the network without the class head; ``Mask2FormerForUniversalSegmentation`` adds it and is
what the released checkpoints hold. Both keep the public names of ``transformers`` (``pixel_values``,
``class_queries_logits``, ``masks_queries_logits``, ``auxiliary_logits``) so switching is one import line.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..checkpoints.hf import LAYOUT
from ..config import Mask2FormerConfig
from .base import SegmentationModel
from .build import build_mask2former_parts
from .outputs import Mask2FormerForUniversalSegmentationOutput, Mask2FormerModelOutput
from .transformer_decoder import DecoderPredictions

if TYPE_CHECKING:  # imported at first use: the training package may import the model
    from ..training.criterion import Mask2FormerCriterion


class Mask2FormerModel(SegmentationModel):
    """The Mask2Former network without the class head.

    Args:
        backbone: image (B, 3, H, W) -> 4 maps at strides 4..32; declares ``feature_info``.
        pixel_decoder: maps -> (mask features, multi-scale features).
        transformer_decoder: queries -> per-prediction hidden states and mask logits.
        config: the config the parts were built from; kept for ``save_pretrained``.
    """

    _build_parts = staticmethod(build_mask2former_parts)
    _checkpoint_layout = LAYOUT

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        output_hidden_states: bool | None = None,
    ) -> Mask2FormerModelOutput:
        """Run the network.

        Args:
            pixel_values: (B, 3, H, W) normalized images.
            pixel_mask: (B, H, W), 1 on real pixels, 0 on padding. Accepted for compatibility and, as in the original
                code and ``transformers``, not used: the released checkpoints were trained that way.
            output_hidden_states: also return the backbone maps, the pixel decoder maps and the decoder states.
        """
        output = self._decode(pixel_values, pixel_mask, output_hidden_states)[0]
        # The decoder lays masks out query-last in memory (see MaskedAttentionDecoder); users get the usual layout.
        output.masks_queries_logits = tuple(masks.contiguous() for masks in output.masks_queries_logits)
        return output

    def _decode(
        self, pixel_values: Tensor, pixel_mask: Tensor | None, output_hidden_states: bool | None
    ) -> tuple[Mask2FormerModelOutput, DecoderPredictions, Tensor]:
        """:meth:`forward`'s outputs, the decoder's predictions (with the mask embeddings the loss reads) and the mask
        features as the pixel decoder gave them (channels-last with gradients on; the outputs hold a contiguous copy)."""
        self._check_inputs(pixel_values, pixel_mask)
        features = self.backbone(pixel_values)
        mask_features, multi_scale_features = self.pixel_decoder(features)
        predictions = self.transformer_decoder(multi_scale_features, mask_features)
        hidden = bool(output_hidden_states)
        # The pixel decoder's mask features are channels-last in memory with gradients on; users get the usual layout.
        output = Mask2FormerModelOutput(
            encoder_last_hidden_state=features[-1],
            pixel_decoder_last_hidden_state=mask_features.contiguous(),
            transformer_decoder_last_hidden_state=predictions.last_hidden_state,
            masks_queries_logits=tuple(predictions.masks_queries_logits),
            transformer_decoder_intermediate_states=tuple(predictions.hidden_states),
            encoder_hidden_states=tuple(features) if hidden else None,
            pixel_decoder_hidden_states=tuple(multi_scale_features) if hidden else None,
            transformer_decoder_hidden_states=tuple(predictions.layer_inputs) if hidden else None,
        )
        return output, predictions, mask_features


class Mask2FormerForUniversalSegmentation(Mask2FormerModel):
    """Mask2Former with its class head: per query a class over K + 1 ("no object" last) and a mask.

    Args:
        num_labels: K, the number of classes without "no object".
        hidden_dim: width of the decoder queries the class head reads.
        (the others as in :class:`Mask2FormerModel`)
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        num_labels: int,
        hidden_dim: int = 256,
        config: Mask2FormerConfig | None = None,
    ) -> None:
        super().__init__(
            backbone=backbone, pixel_decoder=pixel_decoder, transformer_decoder=transformer_decoder, config=config
        )
        self.class_head = nn.Linear(hidden_dim, num_labels + 1)
        # The training loss, built from the config at its first use (see `loss_criterion`); assign to replace it.
        self.criterion: Mask2FormerCriterion | None = None

    @classmethod
    def from_config(cls, config: Mask2FormerConfig, **kwargs: Any) -> Mask2FormerForUniversalSegmentation:
        """A randomly initialized model of this architecture."""
        return super().from_config(config, num_labels=config.num_labels, hidden_dim=config.hidden_dim, **kwargs)

    @property
    def num_labels(self) -> int:
        """K, the number of classes without "no object"."""
        return self.class_head.out_features - 1

    @staticmethod
    def _criterion_class() -> type[Mask2FormerCriterion]:
        from ..training.criterion import Mask2FormerCriterion

        return Mask2FormerCriterion

    def forward(
        self,
        pixel_values: Tensor,
        pixel_mask: Tensor | None = None,
        mask_labels: list[Tensor] | None = None,
        class_labels: list[Tensor] | None = None,
        output_auxiliary_logits: bool | None = None,
        output_hidden_states: bool | None = None,
    ) -> Mask2FormerForUniversalSegmentationOutput:
        """Predict a class and a mask per query.

        Args:
            pixel_values: (B, 3, H, W) normalized images.
            pixel_mask: (B, H, W); accepted and not used (see :meth:`Mask2FormerModel.forward`).
            mask_labels: training targets, B tensors (N_i, H, W) of 0/1 masks at the size of ``pixel_values`` (the
                image processor's ``mask_labels``); with ``class_labels``, the loss is computed.
            class_labels: B int64 tensors (N_i,), the class in [0, K) of each mask. An image may have no target
                (N_i = 0): all its queries then learn "no object".
            output_auxiliary_logits: also return the predictions of the earlier layers (default: the config's
                ``output_auxiliary_logits``, else False).
            output_hidden_states: also return the hidden states.

        Returns:
            :class:`Mask2FormerForUniversalSegmentationOutput` with ``class_queries_logits`` (B, Q, K + 1) and
            ``masks_queries_logits`` (B, Q, H/4, W/4); with targets also ``loss`` (a scalar, the sum of ``loss_dict``)
            and ``loss_dict`` (the weighted terms of the last prediction and, if the config's
            ``use_auxiliary_loss``, of every earlier one; see :class:`~mask2former.training.Mask2FormerCriterion`).
        """
        self._check_targets(pixel_values, pixel_mask, mask_labels, class_labels)
        outputs, predictions, mask_features = self._decode(pixel_values, pixel_mask, output_hidden_states)
        states = torch.stack(outputs.transformer_decoder_intermediate_states)  # (T, B, Q, C), T predictions
        class_logits = self.class_head(states)  # (T, B, Q, K + 1)
        if output_auxiliary_logits is None and self.config is not None:
            output_auxiliary_logits = self.config.output_auxiliary_logits
        earlier, loss, loss_dict = self._predictions_and_loss(
            class_logits,
            outputs.masks_queries_logits,
            mask_labels,
            class_labels,
            use_auxiliary_loss=self.config.use_auxiliary_loss if self.config is not None else True,
            mask_embeddings=predictions.mask_embeddings,
            mask_features=mask_features,
        )
        return Mask2FormerForUniversalSegmentationOutput(
            class_queries_logits=class_logits[-1],
            masks_queries_logits=outputs.masks_queries_logits[-1].contiguous(),  # query-last in memory until here
            auxiliary_logits=[
                {**prediction, "masks_queries_logits": prediction["masks_queries_logits"].contiguous()}
                for prediction in earlier
            ]
            if output_auxiliary_logits
            else None,
            encoder_last_hidden_state=outputs.encoder_last_hidden_state,
            pixel_decoder_last_hidden_state=outputs.pixel_decoder_last_hidden_state,
            transformer_decoder_last_hidden_state=outputs.transformer_decoder_last_hidden_state,
            encoder_hidden_states=outputs.encoder_hidden_states,
            pixel_decoder_hidden_states=outputs.pixel_decoder_hidden_states,
            transformer_decoder_hidden_states=outputs.transformer_decoder_hidden_states,
            loss=loss,
            loss_dict=loss_dict,
        )
