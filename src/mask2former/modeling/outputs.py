"""Model outputs: dataclasses that also answer ``outputs["name"]`` like the ``transformers`` outputs do."""

from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor


class _Output:
    def __getitem__(self, key: str) -> Any:
        if not isinstance(key, str) or key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def keys(self) -> list[str]:
        """Names of the fields that are set (not None)."""
        return [f.name for f in fields(self) if getattr(self, f.name) is not None]

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.keys()}


@dataclass
class Mask2FormerModelOutput(_Output):
    """Outputs of :class:`Mask2FormerModel`.

    Attributes:
        encoder_last_hidden_state: (B, C_4, H/32, W/32) last backbone map.
        pixel_decoder_last_hidden_state: (B, mask_dim, H/4, W/4) per-pixel mask embeddings.
        transformer_decoder_last_hidden_state: (B, Q, C) last decoder layer output (before the final LayerNorm).
        masks_queries_logits: per prediction (initial + one per layer), (B, Q, H/4, W/4).
        transformer_decoder_intermediate_states: per prediction, the LayerNorm-ed queries (B, Q, C).
        encoder_hidden_states: the 4 backbone maps, finest first (when hidden states are asked for).
        pixel_decoder_hidden_states: the 3 multi-scale maps, coarsest first (when asked for).
        transformer_decoder_hidden_states: each decoder layer's input, then the last output, (B, Q, C) (when asked
            for; ``transformers`` gives these as (Q, B, C)).
    """

    encoder_last_hidden_state: Tensor
    pixel_decoder_last_hidden_state: Tensor
    transformer_decoder_last_hidden_state: Tensor
    masks_queries_logits: tuple[Tensor, ...]
    transformer_decoder_intermediate_states: tuple[Tensor, ...]
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class Mask2FormerForUniversalSegmentationOutput(_Output):
    """Outputs of :class:`Mask2FormerForUniversalSegmentation`; what the post-processors read.

    Attributes:
        class_queries_logits: (B, Q, K + 1) class logits of the last prediction; the last class is "no object".
        masks_queries_logits: (B, Q, H/4, W/4) mask logits of the last prediction.
        auxiliary_logits: when asked for, the earlier predictions (initial + all layers but the last), each a dict
            with ``class_queries_logits`` and ``masks_queries_logits``.
        loss: when ``mask_labels`` and ``class_labels`` are given, the training loss: the sum of ``loss_dict``.
        loss_dict: the weighted loss terms (``loss_mask``, ``loss_dice``, ``loss_cross_entropy``, then the same with
            suffix ``_i`` for auxiliary prediction i), as ``transformers``' ``get_loss_dict`` returns them.
        The remaining fields are those of :class:`Mask2FormerModelOutput`.
    """

    class_queries_logits: Tensor
    masks_queries_logits: Tensor
    auxiliary_logits: list[dict[str, Tensor]] | None = None
    encoder_last_hidden_state: Tensor | None = None
    pixel_decoder_last_hidden_state: Tensor | None = None
    transformer_decoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None
    loss: Tensor | None = None
    loss_dict: dict[str, Tensor] | None = None


@dataclass
class MaskFormerModelOutput(_Output):
    """Outputs of :class:`MaskFormerModel`.

    Attributes:
        encoder_last_hidden_state: (B, C_4, H/32, W/32) last backbone map (what the transformer decoder reads).
        pixel_decoder_last_hidden_state: (B, mask_dim, H/4, W/4) per-pixel mask embeddings.
        transformer_decoder_last_hidden_state: (B, Q, C) the last decoder layer's output after the final LayerNorm.
        transformer_decoder_intermediate_states: per decoder layer, its output after the final LayerNorm (B, Q, C);
            the earlier ones give the auxiliary predictions.
        encoder_hidden_states: the 4 backbone maps, finest first (when hidden states are asked for).
        pixel_decoder_hidden_states: the FPN maps at strides 16, 8, 4 (when asked for).
        transformer_decoder_hidden_states: the first layer's input, each layer's output but the last, then
            ``transformer_decoder_last_hidden_state``, (B, Q, C) (when asked for; as ``transformers``).
        hidden_states: the three above, concatenated (when asked for; as ``transformers``).
    """

    encoder_last_hidden_state: Tensor
    pixel_decoder_last_hidden_state: Tensor
    transformer_decoder_last_hidden_state: Tensor
    transformer_decoder_intermediate_states: tuple[Tensor, ...]
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None


@dataclass
class MaskFormerForInstanceSegmentationOutput(_Output):
    """Outputs of :class:`MaskFormerForInstanceSegmentation`; what the post-processors read.

    Attributes:
        class_queries_logits: (B, Q, K + 1) class logits; the last class is "no object".
        masks_queries_logits: (B, Q, H/4, W/4) mask logits.
        auxiliary_logits: when asked for, the predictions from the earlier decoder layers (``decoder_layers - 1``
            dicts with ``class_queries_logits`` and ``masks_queries_logits``).
        loss: when ``mask_labels`` and ``class_labels`` are given, the sum of ``loss_dict``.
        loss_dict: the weighted terms (``loss_mask``, ``loss_dice``, ``loss_cross_entropy``, then with suffix ``_i``
            for auxiliary prediction i when the config's ``use_auxiliary_loss``).
        The remaining fields are those of :class:`MaskFormerModelOutput`.
    """

    class_queries_logits: Tensor
    masks_queries_logits: Tensor
    auxiliary_logits: list[dict[str, Tensor]] | None = None
    encoder_last_hidden_state: Tensor | None = None
    pixel_decoder_last_hidden_state: Tensor | None = None
    transformer_decoder_last_hidden_state: Tensor | None = None
    encoder_hidden_states: tuple[Tensor, ...] | None = None
    pixel_decoder_hidden_states: tuple[Tensor, ...] | None = None
    transformer_decoder_hidden_states: tuple[Tensor, ...] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    loss: Tensor | None = None
    loss_dict: dict[str, Tensor] | None = None
