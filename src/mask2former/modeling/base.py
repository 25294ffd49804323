"""What Mask2Former and MaskFormer share around their networks.

Both are a backbone, a pixel decoder and a transformer decoder built from a config, loaded and saved the same way
(Hugging Face folders and hub ids, preset names, original detectron2 files) and checking their inputs the same way;
their models with heads check the training targets and assemble the loss the same way too. The architecture-specific
parts are in ``mask2former.py`` and ``maskformer.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from torch import Tensor, nn

from ..checkpoints.hf import TransformersLayout
from ..config import Mask2FormerConfig, MaskFormerConfig

_Model = TypeVar("_Model", bound="SegmentationModel")


class SegmentationModel(nn.Module):
    """A backbone, a pixel decoder and a transformer decoder, and the config they were built from.

    An architecture sets ``_build_parts`` (config -> the three parts as keyword arguments, from ``build.py``) and
    ``_checkpoint_layout`` (its Hugging Face checkpoint layout, from ``checkpoints/``).

    Args:
        backbone: image (B, 3, H, W) -> maps at strides 4..32; declares ``feature_info``.
        pixel_decoder: maps -> (per-pixel mask embeddings, multi-scale maps).
        transformer_decoder: maps -> decoded queries.
        config: the config the parts were built from; kept for ``save_pretrained``.
    """

    _build_parts: Callable[[Any], dict[str, nn.Module]]
    _checkpoint_layout: TransformersLayout

    def __init__(
        self,
        *,
        backbone: nn.Module,
        pixel_decoder: nn.Module,
        transformer_decoder: nn.Module,
        config: Mask2FormerConfig | MaskFormerConfig | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.pixel_decoder = pixel_decoder
        self.transformer_decoder = transformer_decoder
        self.config = config

    @classmethod
    def from_config(cls: type[_Model], config: Any, **kwargs: Any) -> _Model:
        """A randomly initialized model of this architecture."""
        return cls(**cls._build_parts(config), config=config, **kwargs)

    @classmethod
    def from_pretrained(cls: type[_Model], path_or_hub_id: str | os.PathLike, **kwargs: Any) -> _Model:
        """Load a checkpoint: a folder or hub id in the Hugging Face layout (see
        :func:`mask2former.checkpoints.hf.load_pretrained` and, for MaskFormer,
        :func:`mask2former.checkpoints.hf_maskformer.load_pretrained` for the options), a preset name (its hub id,
        see :func:`mask2former.list_models`), or an original detectron2 ``.pkl``/``.pth`` file with ``config=`` a
        preset name or a config (see :func:`mask2former.checkpoints.detectron2.load_detectron2_checkpoint`)."""
        from ..checkpoints.detectron2 import is_detectron2_file, load_detectron2_checkpoint
        from ..presets import resolve_hub_id

        if is_detectron2_file(path_or_hub_id):
            return load_detectron2_checkpoint(cls, path_or_hub_id, **kwargs)
        return cls._checkpoint_layout.load(cls, resolve_hub_id(path_or_hub_id), **kwargs)

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` and ``model.safetensors`` in the layout ``transformers`` loads."""
        self._checkpoint_layout.save(self, directory)

    def _check_inputs(self, pixel_values: Tensor, pixel_mask: Tensor | None) -> None:
        if not isinstance(pixel_values, Tensor):
            raise TypeError(f"pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
        if pixel_values.dim() != 4:
            raise ValueError(f"pixel_values must have shape (B, C, H, W), got {tuple(pixel_values.shape)}")
        channels = self.backbone.in_channels
        if pixel_values.shape[1] != channels:
            raise ValueError(
                f"pixel_values must have {channels} channels (B, {channels}, H, W), got {tuple(pixel_values.shape)}"
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor (normalized image), got dtype {pixel_values.dtype}"
            )
        if pixel_mask is not None:
            expected = (pixel_values.shape[0], *pixel_values.shape[2:])
            if tuple(pixel_mask.shape) != expected:
                raise ValueError(f"pixel_mask must have shape {expected} (B, H, W), got {tuple(pixel_mask.shape)}")

    # The methods below serve the models with heads, which have ``num_labels``, a ``criterion`` attribute and
    # ``_criterion_class()`` (the architecture's criterion class, imported lazily: training code is not needed for
    # inference).

    def loss_criterion(self) -> Any:
        """The criterion ``forward`` uses with targets: ``criterion`` if set, else one built from the config (the
        architecture's default weights when the model has no config), kept in ``criterion``."""
        if self.criterion is None:
            criterion_class = self._criterion_class()
            if self.config is not None:
                self.criterion = criterion_class.from_config(self.config)
            else:
                self.criterion = criterion_class(num_labels=self.num_labels)
        return self.criterion

    def _check_targets(
        self, pixel_values: Tensor, pixel_mask: Tensor | None, mask_labels: Any, class_labels: Any
    ) -> bool:
        """Whether training targets are given; if so, check them and the inputs before running anything."""
        if mask_labels is None and class_labels is None:
            return False
        from ..training.criterion import validate_targets

        self._check_inputs(pixel_values, pixel_mask)
        validate_targets(
            mask_labels,
            class_labels,
            batch_size=pixel_values.shape[0],
            num_labels=self.num_labels,
            image_size=tuple(pixel_values.shape[2:]),
        )
        return True

    def _predictions_and_loss(
        self,
        class_logits: Tensor,
        mask_logits: Sequence[Tensor],
        mask_labels: list[Tensor] | None,
        class_labels: list[Tensor] | None,
        *,
        use_auxiliary_loss: bool,
        mask_embeddings: Sequence[Tensor] | None = None,
        mask_features: Tensor | None = None,
    ) -> tuple[list[dict[str, Tensor]], Tensor | None, dict[str, Tensor] | None]:
        """The earlier predictions, and with targets the loss and its terms.

        Args:
            class_logits: (T, B, Q, K + 1), T predictions, the final one last.
            mask_logits: T tensors (B, Q, H/4, W/4).
            mask_labels, class_labels: the targets, or None.
            use_auxiliary_loss: also add the loss terms of the earlier predictions.
            mask_embeddings, mask_features: optional, T tensors (B, Q, E) and (B, E, H/4, W/4) whose product the mask
                logits are; with them the criterion sends the mask gradient through the matched queries only.

        Returns:
            The T - 1 earlier predictions (dicts with ``class_queries_logits`` and ``masks_queries_logits``), the loss
            (the sum of the terms) and the terms, both None without targets.
        """
        earlier = [
            {"class_queries_logits": classes, "masks_queries_logits": masks}
            for classes, masks in zip(class_logits[:-1], mask_logits[:-1])
        ]
        if mask_labels is None and class_labels is None:
            return earlier, None, None
        factors: dict[str, Any] = {}
        auxiliary = earlier
        if mask_embeddings is not None and mask_features is not None:
            factors = {"mask_embeddings": mask_embeddings[-1], "mask_features": mask_features}
            auxiliary = [
                {**prediction, "mask_embeddings": embeddings, "mask_features": mask_features}
                for prediction, embeddings in zip(earlier, mask_embeddings[:-1])
            ]
        loss_dict = self.loss_criterion()(
            class_logits[-1],
            mask_logits[-1],
            mask_labels,
            class_labels,
            auxiliary_predictions=auxiliary if use_auxiliary_loss else None,
            **factors,
        )
        return earlier, sum(loss_dict.values()), loss_dict
