"""MaskFormer: parity with ``transformers`` on the same random weights (fp32, max abs diff <= 1e-4), loss, config."""

from __future__ import annotations

import json

import pytest
import torch

from mask2former import MaskFormerConfig, MaskFormerForInstanceSegmentation, MaskFormerModel
from mask2former.config import DetrDecoderConfig, SwinConfig
from tests.conftest import TINY_DETR, TINY_MASKFORMER, TINY_SWIN, make_transformers_maskformer_checkpoint

TOLERANCE = 1e-4


def close(mine, theirs, name=""):
    torch.testing.assert_close(mine, theirs, atol=TOLERANCE, rtol=0, msg=lambda message: f"{name}: {message}")


def original_auxiliary_predictions(reference, outputs):
    """The earlier predictions as the original MaskFormer makes them, from transformers' own modules and states:
    the heads applied to each layer's output (all but the last) after the decoder's final LayerNorm."""
    norm = reference.model.transformer_module.decoder.layernorm
    predictions = []
    for state in outputs.transformer_decoder_hidden_states[1:-1]:  # [0] is the first layer's input (zeros)
        hidden = norm(state)
        masks = torch.einsum("bqc,bchw->bqhw", reference.mask_embedder(hidden), outputs.pixel_decoder_last_hidden_state)
        predictions.append({"class_queries_logits": reference.class_predictor(hidden), "masks_queries_logits": masks})
    return predictions


def assert_matches_transformers(directory, reference, pixel_values):
    ours = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    with torch.no_grad():
        mine = ours(pixel_values, output_auxiliary_logits=True, output_hidden_states=True)
        theirs = reference(pixel_values, output_hidden_states=True)
        expected_auxiliary = original_auxiliary_predictions(reference, theirs)
    close(mine.class_queries_logits, theirs.class_queries_logits, "class_queries_logits")
    close(mine.masks_queries_logits, theirs.masks_queries_logits, "masks_queries_logits")
    assert len(mine.auxiliary_logits) == len(expected_auxiliary) == ours.config.decoder_config.decoder_layers - 1
    for index, (prediction, expected) in enumerate(zip(mine.auxiliary_logits, expected_auxiliary)):
        for key in ("class_queries_logits", "masks_queries_logits"):
            close(prediction[key], expected[key], f"auxiliary {index} {key}")
    for name in ("encoder_hidden_states", "pixel_decoder_hidden_states", "transformer_decoder_hidden_states"):
        assert len(getattr(mine, name)) == len(getattr(theirs, name)), name
        for index, (a, b) in enumerate(zip(getattr(mine, name), getattr(theirs, name))):
            close(a, b, f"{name}[{index}]")
    assert len(mine.hidden_states) == len(theirs.hidden_states)
    last_states = ("encoder_last_hidden_state", "pixel_decoder_last_hidden_state", "transformer_decoder_last_hidden_state")
    for name in last_states:
        close(getattr(mine, name), getattr(theirs, name), name)
    return mine


def test_tiny_swin_matches_transformers(tiny_maskformer_checkpoint, size=(70, 100)):
    directory, reference = tiny_maskformer_checkpoint
    assert json.loads((directory / "config.json").read_text())["backbone_config"]["model_type"] == "maskformer-swin"
    pixel_values = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(1))
    mine = assert_matches_transformers(directory, reference, pixel_values)
    assert mine.class_queries_logits.shape == (2, 10, 6)
    assert mine.masks_queries_logits.shape == (2, 10, (size[0] + 3) // 4, (size[1] + 3) // 4)


def test_released_swin_model_type_matches_transformers(tiny_maskformer_checkpoint, tmp_path):
    """The released config.json files say backbone model_type "swin" over MaskFormerSwin weights."""
    import shutil

    import transformers

    directory, _ = tiny_maskformer_checkpoint
    shutil.copy(directory / "model.safetensors", tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config["backbone_config"]["model_type"] = "swin"
    (tmp_path / "config.json").write_text(json.dumps(config))
    reference = transformers.MaskFormerForInstanceSegmentation.from_pretrained(tmp_path).eval()
    assert_matches_transformers(tmp_path, reference, torch.randn(1, 3, 64, 96))
    assert MaskFormerConfig.from_pretrained(tmp_path).backbone_config.model_type == "swin"


def test_projection_free_decoder_and_norm_between_layers(tmp_path):
    """d_model equal to the backbone's last width (no input projection), and transformers' ``auxiliary_loss`` in the
    decoder config, which feeds every layer the LayerNorm-ed output of the previous one (transformers then fails
    with output_hidden_states, so its decoder's intermediate states are compared directly)."""
    swin = dict(TINY_SWIN, embed_dim=8)  # stage 4 has 64 channels
    decoder = dict(d_model=64, decoder_attention_heads=8, decoder_ffn_dim=32, decoder_layers=2, auxiliary_loss=True)
    reference = make_transformers_maskformer_checkpoint(
        tmp_path, backbone_options=swin, decoder=decoder, num_labels=3, seed=2
    )
    assert reference.model.transformer_module.input_projection is None
    ours = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    pixel_values = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        mine = ours(pixel_values)
        theirs = reference(pixel_values)
        decoded = reference.model.transformer_module(theirs.encoder_last_hidden_state)
        intermediate = ours.transformer_decoder(mine.encoder_last_hidden_state).intermediate_states
    close(mine.class_queries_logits, theirs.class_queries_logits, "class_queries_logits")
    close(mine.masks_queries_logits, theirs.masks_queries_logits, "masks_queries_logits")
    close(torch.stack(intermediate), decoded.intermediate_hidden_states, "intermediate states")


def test_base_model_and_default_outputs(tiny_maskformer_checkpoint):
    directory, _ = tiny_maskformer_checkpoint
    model = MaskFormerModel.from_pretrained(directory)
    with torch.no_grad():
        outputs = model(torch.randn(1, 3, 64, 64))
    assert outputs.transformer_decoder_last_hidden_state.shape == (1, 10, 32)
    assert len(outputs.transformer_decoder_intermediate_states) == 3
    assert outputs.encoder_hidden_states is None and "hidden_states" not in outputs.keys()
    full = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    with torch.no_grad():
        predictions = full(torch.randn(1, 3, 64, 64))
    assert predictions.auxiliary_logits is None and predictions.loss is None


# ---------------------------------------------------------------------- training loss


def training_targets(seed: int = 0, size: tuple[int, int] = (64, 64)):
    """Targets of a batch of 2: three objects, then an image with no object."""
    generator = torch.Generator().manual_seed(seed)
    mask_labels = [(torch.rand(3, *size, generator=generator) > 0.5).float(), torch.zeros(0, *size)]
    class_labels = [torch.tensor([0, 2, 4]), torch.zeros(0, dtype=torch.long)]
    return mask_labels, class_labels


def test_loss_matches_transformers(tiny_maskformer_checkpoint):
    """use_auxiliary_loss=False (transformers' default): the loss of the last prediction, as transformers has it."""
    directory, reference = tiny_maskformer_checkpoint
    ours = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    pixel_values = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    mask_labels, class_labels = training_targets()
    with torch.no_grad():
        theirs = reference(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        mine = ours(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        expected = reference.get_loss_dict(
            theirs.masks_queries_logits, theirs.class_queries_logits, mask_labels, class_labels, []
        )
    assert list(mine.loss_dict) == list(expected) == ["loss_mask", "loss_dice", "loss_cross_entropy"]
    for name, value in mine.loss_dict.items():
        close(value, expected[name], name)
    close(mine.loss, theirs.loss, "loss")


def test_auxiliary_loss_matches_transformers_loss_on_the_original_predictions(tmp_path):
    """With use_auxiliary_loss=True every earlier prediction adds its terms; transformers' loss function applied to
    the original code's auxiliary predictions (see the module docstring of modeling/maskformer.py) gives ours."""
    reference = make_transformers_maskformer_checkpoint(tmp_path, use_auxiliary_loss=True, seed=1)
    ours = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    pixel_values = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(3))
    mask_labels, class_labels = training_targets(1, size=(64, 80))
    with torch.no_grad():
        mine = ours(pixel_values, mask_labels=mask_labels, class_labels=class_labels)
        theirs = reference(pixel_values, output_hidden_states=True)
        expected = reference.get_loss_dict(
            theirs.masks_queries_logits,
            theirs.class_queries_logits,
            mask_labels,
            class_labels,
            original_auxiliary_predictions(reference, theirs),
        )
    assert list(mine.loss_dict) == list(expected) and len(expected) == 3 * 3  # last + 2 auxiliary predictions
    for name, value in mine.loss_dict.items():
        close(value, expected[name], name)
    close(mine.loss, sum(expected.values()), "loss")


def test_loss_backward_and_autocast_with_an_image_without_objects(tiny_maskformer_checkpoint):
    directory, _ = tiny_maskformer_checkpoint
    model = MaskFormerForInstanceSegmentation.from_pretrained(directory).train()
    model.config.use_auxiliary_loss = True
    mask_labels, class_labels = training_targets(2)
    torch.manual_seed(0)
    outputs = model(torch.randn(2, 3, 64, 64), mask_labels=mask_labels, class_labels=class_labels)
    assert len(outputs.loss_dict) == 9 and torch.isfinite(outputs.loss)
    outputs.loss.backward()
    unused = [name for name, parameter in model.named_parameters() if parameter.grad is None]
    assert unused == []
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        no_masks, no_classes = [masks[:0] for masks in mask_labels], [classes[:0] for classes in class_labels]
        outputs = model(torch.randn(2, 3, 64, 64), mask_labels=no_masks, class_labels=no_classes)
    assert outputs.loss.dtype == torch.float32 and torch.isfinite(outputs.loss)
    assert outputs.loss_dict["loss_mask"] == 0 and outputs.loss_dict["loss_dice"] == 0


def test_bad_targets_are_reported(tiny_maskformer_checkpoint):
    directory, _ = tiny_maskformer_checkpoint
    model = MaskFormerForInstanceSegmentation.from_pretrained(directory)
    with pytest.raises(ValueError, match=r"class_labels\[0\] must hold class ids in \[0, 5\)"):
        model(torch.randn(1, 3, 64, 64), mask_labels=[torch.zeros(1, 64, 64)], class_labels=[torch.tensor([5])])


# ---------------------------------------------------------------------- config


def test_config_defaults_match_transformers():
    import transformers

    ours = MaskFormerConfig().to_dict()
    theirs = transformers.MaskFormerConfig().to_dict()
    for key in ("fpn_feature_size", "mask_feature_size", "no_object_weight", "use_auxiliary_loss", "init_std",
                "init_xavier_std", "dice_weight", "cross_entropy_weight", "mask_weight", "output_auxiliary_logits"):
        assert ours[key] == theirs[key], key
    for key in ("embed_dim", "depths", "num_heads", "window_size", "drop_path_rate", "image_size"):
        assert list(ours["backbone_config"][key]) == list(theirs["backbone_config"][key]) if isinstance(
            ours["backbone_config"][key], list
        ) else ours["backbone_config"][key] == theirs["backbone_config"][key], key
    for key, value in ours["decoder_config"].items():
        if key != "extra":
            assert theirs["decoder_config"][key] == value, key


def test_config_round_trip_through_transformers(tiny_maskformer_checkpoint, tmp_path):
    import transformers

    directory, _ = tiny_maskformer_checkpoint
    config = MaskFormerConfig.from_pretrained(directory)
    assert config.decoder_config.decoder_layers == 3 and config.num_labels == 5
    assert "backbone_config" in config.decoder_config.extra  # DETR fields we do not model are kept
    config.decoder_config.num_queries = 20
    config.mask_weight = 10.0
    config.save_pretrained(tmp_path)
    theirs = transformers.MaskFormerConfig.from_pretrained(tmp_path)
    assert theirs.decoder_config.num_queries == 20 and theirs.mask_weight == 10.0
    assert theirs.id2label == config.id2label and theirs.num_labels == 5
    assert theirs.backbone_config.model_type == "maskformer-swin" and list(theirs.backbone_config.depths) == [1] * 4
    assert theirs.decoder_config.d_model == 32 and theirs.fpn_feature_size == 32
    assert MaskFormerConfig.from_pretrained(tmp_path) == config


def test_config_validation():
    with pytest.raises(ValueError, match="decoder_config.model_type must be 'detr'"):
        DetrDecoderConfig(model_type="deformable_detr")
    with pytest.raises(ValueError, match="divisible"):
        DetrDecoderConfig(d_model=30, decoder_attention_heads=8)
    # A Swin backbone always emits its 4 stages, as transformers forces for MaskFormer.
    config = MaskFormerConfig(backbone_config=SwinConfig(**TINY_SWIN, out_features=["stage4"]))
    assert config.backbone_config.out_features == ["stage1", "stage2", "stage3", "stage4"]
    model = MaskFormerForInstanceSegmentation.from_config(
        MaskFormerConfig(
            backbone_config=SwinConfig(**TINY_SWIN), decoder_config=DetrDecoderConfig(**TINY_DETR), num_labels=4,
            **TINY_MASKFORMER,
        )
    )
    assert model.num_labels == 4 and model.class_head.out_features == 5


# ---------------------------------------------------------------------- ResNet backbone


def test_tiny_resnet_matches_transformers(tmp_path):
    reference = make_transformers_maskformer_checkpoint(tmp_path, backbone="resnet", seed=3)
    assert MaskFormerConfig.from_pretrained(tmp_path).backbone_config.model_type == "resnet"
    pixel_values = torch.randn(2, 3, 70, 100, generator=torch.Generator().manual_seed(4))
    assert_matches_transformers(tmp_path, reference, pixel_values)
    ours = MaskFormerForInstanceSegmentation.from_pretrained(tmp_path)
    ours.save_pretrained(tmp_path / "ours")
    import transformers

    theirs, info = transformers.MaskFormerForInstanceSegmentation.from_pretrained(
        tmp_path / "ours", output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert_matches_transformers(tmp_path / "ours", theirs.eval(), torch.randn(1, 3, 64, 64))
