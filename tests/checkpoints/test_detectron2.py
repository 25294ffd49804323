"""Original detectron2 checkpoints: key lists of the real models, round trips through a .pkl, bad and hostile files."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from mask2former import (
    Mask2FormerConfig,
    Mask2FormerForUniversalSegmentation,
    Mask2FormerModel,
    MaskFormerConfig,
    MaskFormerForInstanceSegmentation,
    MaskFormerModel,
    Segmenter,
)
from mask2former.checkpoints.detectron2 import (
    RestrictedUnpickler,
    read_detectron2_checkpoint,
    state_dict_to_detectron2,
)
from mask2former.cli.main import main
from mask2former.config import DetrDecoderConfig, ResNetConfig, SwinConfig
from mask2former.presets import get_preset

from ..conftest import TINY_DETR, TINY_MASK2FORMER, TINY_MASKFORMER, TINY_RESNET, TINY_SWIN, randomize_

PIXELS = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------------------------------------------------------------
# The key names of the real checkpoints, written out from the rules of the transformers conversion scripts
# (convert_mask2former_original_pytorch_checkpoint_to_pytorch.py, convert_maskformer_resnet_to_pytorch.py,
# convert_maskformer_original_pytorch_checkpoint_to_pytorch.py), independently of our rename tables.
# ---------------------------------------------------------------------------------------------------------------------


def _weight_bias(prefix: str) -> set[str]:
    return {f"{prefix}.weight", f"{prefix}.bias"}


def original_swin_keys(depths: list[int]) -> set[str]:
    keys = _weight_bias("backbone.patch_embed.proj") | _weight_bias("backbone.patch_embed.norm")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"backbone.layers.{stage}.blocks.{block}"
            for module in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
                keys |= _weight_bias(f"{prefix}.{module}")
            keys |= {f"{prefix}.attn.relative_position_bias_table", f"{prefix}.attn.relative_position_index"}
        if stage < len(depths) - 1:
            keys |= {f"backbone.layers.{stage}.downsample.reduction.weight"}
            keys |= _weight_bias(f"backbone.layers.{stage}.downsample.norm")
        keys |= _weight_bias(f"backbone.norm{stage}")
    return keys


def original_resnet_keys(depths: list[int]) -> set[str]:
    def conv(prefix: str) -> set[str]:
        return {f"{prefix}.weight"} | {
            f"{prefix}.norm.{leaf}" for leaf in ("weight", "bias", "running_mean", "running_var")
        }

    keys = conv("backbone.stem.conv1")
    for stage, depth in enumerate(depths):
        for block in range(depth):
            prefix = f"backbone.res{stage + 2}.{block}"
            if block == 0:
                keys |= conv(f"{prefix}.shortcut")
            for index in (1, 2, 3):
                keys |= conv(f"{prefix}.conv{index}")
    return keys


def original_mask2former_head_keys(encoder_layers: int = 6, decoder_layers: int = 10) -> set[str]:
    pixel = "sem_seg_head.pixel_decoder"
    keys = {f"{pixel}.adapter_1.weight", f"{pixel}.layer_1.weight", f"{pixel}.transformer.level_embed"}
    keys |= _weight_bias(f"{pixel}.adapter_1.norm") | _weight_bias(f"{pixel}.layer_1.norm")
    keys |= _weight_bias(f"{pixel}.mask_features")
    for level in range(3):
        keys |= _weight_bias(f"{pixel}.input_proj.{level}.0") | _weight_bias(f"{pixel}.input_proj.{level}.1")
    for layer in range(encoder_layers):
        prefix = f"{pixel}.transformer.encoder.layers.{layer}"
        for module in ("linear1", "linear2", "norm1", "norm2"):
            keys |= _weight_bias(f"{prefix}.{module}")
        for module in ("attention_weights", "output_proj", "sampling_offsets", "value_proj"):
            keys |= _weight_bias(f"{prefix}.self_attn.{module}")
    predictor = "sem_seg_head.predictor"
    for layer in range(decoder_layers - 1):
        for kind, attention in (("self", "self_attn"), ("cross", "multihead_attn")):
            prefix = f"{predictor}.transformer_{kind}_attention_layers.{layer}"
            keys |= {f"{prefix}.{attention}.in_proj_weight", f"{prefix}.{attention}.in_proj_bias"}
            keys |= _weight_bias(f"{prefix}.{attention}.out_proj") | _weight_bias(f"{prefix}.norm")
        for module in ("linear1", "linear2", "norm"):
            keys |= _weight_bias(f"{predictor}.transformer_ffn_layers.{layer}.{module}")
    keys |= _weight_bias(f"{predictor}.decoder_norm") | _weight_bias(f"{predictor}.class_embed")
    keys |= {f"{predictor}.{name}.weight" for name in ("query_embed", "query_feat", "level_embed")}
    for layer in range(3):
        keys |= _weight_bias(f"{predictor}.mask_embed.layers.{layer}")
    return keys | {"criterion.empty_weight"}


def original_maskformer_head_keys(decoder_layers: int = 6) -> set[str]:
    # The released MaskFormer files keep the FPN directly under sem_seg_head. (the resnet script reads
    # sem_seg_head.layer_4); the current original code and our writer put it under sem_seg_head.pixel_decoder.
    pixel = "sem_seg_head.pixel_decoder"
    keys = {f"{pixel}.layer_4.weight"} | _weight_bias(f"{pixel}.layer_4.norm") | _weight_bias(f"{pixel}.mask_features")
    for level in (1, 2, 3):
        for module in (f"adapter_{level}", f"layer_{level}"):
            keys |= {f"{pixel}.{module}.weight"} | _weight_bias(f"{pixel}.{module}.norm")
    predictor = "sem_seg_head.predictor"
    for layer in range(decoder_layers):
        prefix = f"{predictor}.transformer.decoder.layers.{layer}"
        for attention in ("self_attn", "multihead_attn"):
            keys |= {f"{prefix}.{attention}.in_proj_weight", f"{prefix}.{attention}.in_proj_bias"}
            keys |= _weight_bias(f"{prefix}.{attention}.out_proj")
        for module in ("linear1", "linear2", "norm1", "norm2", "norm3"):
            keys |= _weight_bias(f"{prefix}.{module}")
    keys |= _weight_bias(f"{predictor}.transformer.decoder.norm") | _weight_bias(f"{predictor}.input_proj")
    keys |= {f"{predictor}.query_embed.weight"} | _weight_bias(f"{predictor}.class_embed")
    for layer in range(3):
        keys |= _weight_bias(f"{predictor}.mask_embed.layers.{layer}")
    return keys | {"criterion.empty_weight"}


REAL_MODELS = {
    "mask2former-swin-tiny-coco-panoptic": original_swin_keys([2, 2, 6, 2]) | original_mask2former_head_keys(),
    "mask2former-r50-coco-panoptic": original_resnet_keys([3, 4, 6, 3]) | original_mask2former_head_keys(),
    "maskformer-swin-base-ade": original_swin_keys([2, 2, 18, 2]) | original_maskformer_head_keys(),
    "maskformer-r50-ade": original_resnet_keys([3, 4, 6, 3]) | original_maskformer_head_keys(),
}
# Shapes of the real files, from the original configs (Swin-T: 96/768 channels, window 7; ResNet-50: 2048).
REAL_SHAPES = {
    "mask2former-swin-tiny-coco-panoptic": {
        "backbone.layers.0.blocks.0.attn.qkv.weight": (288, 96),
        "backbone.layers.0.blocks.0.attn.relative_position_bias_table": (169, 3),
        "backbone.layers.0.blocks.0.attn.relative_position_index": (49, 49),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (256, 768, 1, 1),
        "sem_seg_head.pixel_decoder.transformer.encoder.layers.0.self_attn.sampling_offsets.weight": (192, 256),
        "sem_seg_head.predictor.query_feat.weight": (100, 256),
        "sem_seg_head.predictor.class_embed.weight": (134, 256),
        "criterion.empty_weight": (134,),
    },
    "mask2former-r50-coco-panoptic": {
        "backbone.stem.conv1.weight": (64, 3, 7, 7),
        "backbone.res5.0.shortcut.weight": (2048, 1024, 1, 1),
        "sem_seg_head.pixel_decoder.input_proj.0.0.weight": (256, 2048, 1, 1),
        "sem_seg_head.pixel_decoder.adapter_1.weight": (256, 256, 1, 1),
    },
    "maskformer-swin-base-ade": {
        "backbone.layers.3.blocks.1.attn.relative_position_bias_table": (529, 32),
        "sem_seg_head.pixel_decoder.layer_4.weight": (256, 1024, 3, 3),
        "sem_seg_head.pixel_decoder.adapter_1.weight": (256, 128, 1, 1),
        "sem_seg_head.predictor.input_proj.weight": (256, 1024, 1, 1),
        "sem_seg_head.predictor.class_embed.weight": (151, 256),
    },
    "maskformer-r50-ade": {"sem_seg_head.pixel_decoder.adapter_3.weight": (256, 1024, 1, 1)},
}


@pytest.mark.parametrize("name", sorted(REAL_MODELS))
def test_inverse_table_gives_the_key_list_of_the_real_checkpoint(name):
    """Our real-size model (on the meta device: names and shapes only) written in the original layout has exactly
    the keys of the released file, with its shapes."""
    preset = get_preset(name)
    config = preset.config()
    model_class = (
        MaskFormerForInstanceSegmentation
        if preset.architecture == "maskformer"
        else Mask2FormerForUniversalSegmentation
    )
    with torch.device("meta"):
        state = model_class.from_config(config).state_dict()
    original = state_dict_to_detectron2(state, config)
    assert set(original) == REAL_MODELS[name]
    for key, shape in REAL_SHAPES[name].items():
        assert tuple(original[key].shape) == shape, key


# ---------------------------------------------------------------------------------------------------------------------
# Round trips through files in the original layout
# ---------------------------------------------------------------------------------------------------------------------


def tiny_config(architecture: str, backbone: str, num_labels: int = 5):
    backbone_config = SwinConfig(**TINY_SWIN) if backbone == "swin" else ResNetConfig(**TINY_RESNET)
    id2label = {i: f"class_{i}" for i in range(num_labels)}
    if architecture == "mask2former":
        return Mask2FormerConfig(backbone_config=backbone_config, id2label=id2label, **TINY_MASK2FORMER)
    return MaskFormerConfig(
        backbone_config=backbone_config,
        decoder_config=DetrDecoderConfig(**TINY_DETR),
        id2label=id2label,
        **TINY_MASKFORMER,
    )


def tiny_model(architecture: str, backbone: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    model_class = (
        MaskFormerForInstanceSegmentation if architecture == "maskformer" else Mask2FormerForUniversalSegmentation
    )
    model = model_class.from_config(tiny_config(architecture, backbone, **options)).eval()
    randomize_(model, seed)
    with torch.no_grad():  # frozen BatchNorm statistics are buffers: perturb them too
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var", "norm.weight", "norm.bias")):
                buffer.add_(torch.rand(buffer.shape) * 0.1)
    return model


def original_weights(model) -> dict[str, np.ndarray]:
    return {key: value.numpy() for key, value in state_dict_to_detectron2(model.state_dict(), model.config).items()}


def write_pkl(path, weights: dict, protocol: int = pickle.DEFAULT_PROTOCOL):
    """A file as the model zoo's: a pickled dict of numpy arrays."""
    with open(path, "wb") as handle:
        pickle.dump(
            {"model": weights, "__author__": "Detectron2 Model Zoo", "matching_heuristics": True}, handle, protocol
        )
    return path


def outputs_of(model):
    with torch.no_grad():
        outputs = model(PIXELS)
    return outputs.class_queries_logits, outputs.masks_queries_logits


def assert_same_outputs(model, reference):
    for mine, theirs in zip(outputs_of(model), outputs_of(reference)):
        assert torch.equal(mine, theirs)


@pytest.mark.parametrize(
    "architecture,backbone,protocol",
    [("mask2former", "swin", 4), ("mask2former", "resnet", 2), ("maskformer", "swin", 2), ("maskformer", "resnet", 5)],
)
def test_pkl_loads_to_the_model_it_came_from(architecture, backbone, protocol, tmp_path):
    reference = tiny_model(architecture, backbone)
    path = write_pkl(tmp_path / "model_final.pkl", original_weights(reference), protocol)
    model_class = type(reference)
    loaded = model_class.from_pretrained(path, config=reference.config)
    assert_same_outputs(loaded, reference)


def test_maskformer_files_in_the_old_layout_load(tmp_path):
    """The released MaskFormer files keep the FPN directly under ``sem_seg_head.`` (before the head's version 2)."""
    reference = tiny_model("maskformer", "resnet")
    weights = {
        key.replace("sem_seg_head.pixel_decoder.", "sem_seg_head."): value
        for key, value in original_weights(reference).items()
    }
    assert "sem_seg_head.layer_4.weight" in weights
    loaded = MaskFormerForInstanceSegmentation.from_pretrained(
        write_pkl(tmp_path / "m.pkl", weights), config=reference.config
    )
    assert_same_outputs(loaded, reference)


def test_pth_file_and_config_json_and_base_models(tmp_path):
    """A .pth of the same layout (tensors, torch.save) loads; so does a config.json as config=; base models leave
    the heads out."""
    reference = tiny_model("mask2former", "swin")
    path = tmp_path / "model_final.pth"
    torch.save({"model": state_dict_to_detectron2(reference.state_dict(), reference.config), "iteration": 5}, path)
    reference.config.save_pretrained(tmp_path / "config")
    loaded = Mask2FormerForUniversalSegmentation.from_pretrained(path, config=tmp_path / "config" / "config.json")
    assert_same_outputs(loaded, reference)
    base = Mask2FormerModel.from_pretrained(path, config=reference.config)
    assert not hasattr(base, "class_head")
    maskformer = tiny_model("maskformer", "swin")
    base = MaskFormerModel.from_pretrained(
        write_pkl(tmp_path / "mf.pkl", original_weights(maskformer)), config=maskformer.config
    )
    assert not hasattr(base, "mask_head")


def test_convert_writes_a_checkpoint_folder(tmp_path, capsys):
    reference = tiny_model("maskformer", "swin")
    path = write_pkl(tmp_path / "model_final.pkl", original_weights(reference))
    reference.config.save_pretrained(tmp_path / "config")
    out = tmp_path / "converted"
    assert (
        main(
            [
                "convert",
                "--from",
                "detectron2",
                str(path),
                "--config",
                str(tmp_path / "config" / "config.json"),
                str(out),
            ]
        )
        == 0
    )
    assert {p.name for p in out.iterdir()} == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert_same_outputs(MaskFormerForInstanceSegmentation.from_pretrained(out), reference)
    segmenter = Segmenter.from_pretrained(out)  # dispatches on config.json's model_type
    assert isinstance(segmenter.model, MaskFormerForInstanceSegmentation)
    # a file that is not a checkpoint: exit status 2 and the reason
    (tmp_path / "junk.pkl").write_bytes(b"not a pickle at all")
    assert (
        main(
            ["convert", "--from", "detectron2", str(tmp_path / "junk.pkl"), "--preset", "maskformer-r50-ade", str(out)]
        )
        == 2
    )
    assert "junk.pkl" in capsys.readouterr().out


def test_convert_help():
    with pytest.raises(SystemExit) as exit_info:
        main(["convert", "--help"])
    assert exit_info.value.code == 0


def test_segmenter_loads_a_pkl(tmp_path):
    reference = tiny_model("mask2former", "resnet")
    path = write_pkl(tmp_path / "weights.pkl", original_weights(reference))
    segmenter = Segmenter.from_pretrained(path, config=reference.config)
    assert_same_outputs(segmenter.model, reference)
    segmenter.processor.size = {"height": 64, "width": 64}  # keep the forward pass tiny
    result = segmenter.segment(np.zeros((40, 50, 3), dtype=np.uint8), task="semantic")
    assert result.segmentation.shape == (40, 50)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the file; nothing from the file runs
# ---------------------------------------------------------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_imports_code_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_final.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"model": {"backbone.x": _Exploit(marker)}}, handle)
    with pytest.raises(ValueError, match=r"model_final\.pkl.*(posix|os|nt)\.system"):
        Mask2FormerForUniversalSegmentation.from_pretrained(path, config=tiny_config("mask2former", "swin"))
    assert not marker.exists()
    with open(path, "rb") as handle, pytest.raises(pickle.UnpicklingError, match="refused"):
        RestrictedUnpickler(handle).load()  # the unpickler alone refuses it too
    assert not marker.exists()


def test_files_that_are_not_detectron2_checkpoints(tmp_path):
    cases = {
        "garbage.pkl": b"\x00\x01 definitely not a pickle",
        "list.pkl": pickle.dumps([1, 2, 3]),
        "no_model.pkl": pickle.dumps({"state_dict": {}}),
        "other_model.pkl": pickle.dumps({"model": {"encoder.weight": np.zeros(3, dtype=np.float32)}}),
        "strings.pkl": pickle.dumps({"model": {"backbone.x": "text"}}),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ValueError, match=name.replace(".", r"\.")):
            read_detectron2_checkpoint(tmp_path / name)
    with pytest.raises(FileNotFoundError, match="missing.pkl"):
        read_detectron2_checkpoint(tmp_path / "missing.pkl")


def test_wrong_architecture_and_size_list_the_keys(tmp_path):
    reference = tiny_model("mask2former", "swin")
    path = write_pkl(tmp_path / "m2f.pkl", original_weights(reference))
    with pytest.raises(ValueError) as error:  # a Mask2Former file as MaskFormer
        MaskFormerForInstanceSegmentation.from_pretrained(path, config=tiny_config("maskformer", "swin"))
    message = str(error.value)
    assert "m2f.pkl" in message and "a Mask2Former checkpoint" in message
    assert (
        "missing" in message
        and "sem_seg_head.predictor.transformer.decoder.layers.0.self_attn.in_proj_weight" in message
    )
    with pytest.raises(ValueError) as error:  # other number of classes
        Mask2FormerForUniversalSegmentation.from_pretrained(
            path, config=tiny_config("mask2former", "swin", num_labels=7)
        )
    assert "wrong shape" in str(
        error.value
    ) and "sem_seg_head.predictor.class_embed.weight: file (6, 32), model (8, 32)" in str(error.value)
    with pytest.raises(ValueError, match="a Swin backbone"):  # a Swin file for a ResNet config
        Mask2FormerForUniversalSegmentation.from_pretrained(path, config=tiny_config("mask2former", "resnet"))
    weights = original_weights(reference)
    del weights["sem_seg_head.predictor.decoder_norm.bias"]
    with pytest.raises(ValueError, match=r"missing \(1\):\n\s+sem_seg_head\.predictor\.decoder_norm\.bias"):
        Mask2FormerForUniversalSegmentation.from_pretrained(
            write_pkl(tmp_path / "cut.pkl", weights), config=reference.config
        )
    with pytest.raises(ValueError, match="use Mask2FormerForUniversalSegmentation"):
        MaskFormerForInstanceSegmentation.from_pretrained(path, config=reference.config)


def test_preset_names_pick_the_architecture(tmp_path):
    """config= a preset name builds that preset's model, and a file with a model-zoo name picks its preset; a tiny
    file does not fit either, and the error says which preset it was checked against."""
    reference = tiny_model("mask2former", "swin")
    weights = original_weights(reference)
    with pytest.raises(ValueError, match="do not fit preset 'mask2former-swin-tiny-coco-panoptic'"):
        Mask2FormerForUniversalSegmentation.from_pretrained(
            write_pkl(tmp_path / "tiny.pkl", weights), config="mask2former-swin-tiny-coco-panoptic"
        )
    with pytest.raises(ValueError, match="do not fit preset 'mask2former-swin-tiny-coco-panoptic'"):
        Segmenter.from_pretrained(write_pkl(tmp_path / "model_final_9fd0ae.pkl", weights))
    with pytest.raises(ValueError, match="which model is"):
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "tiny.pkl")
    with pytest.raises(ValueError, match="did you mean mask2former-swin-tiny-coco-panoptic"):
        Mask2FormerForUniversalSegmentation.from_pretrained(
            tmp_path / "tiny.pkl", config="mask2former-swin-tiny-coco-panoptc"
        )
    with pytest.raises(ValueError, match="not implemented"):
        Mask2FormerForUniversalSegmentation.from_pretrained(tmp_path / "tiny.pkl", config="maskformer-r101c-ade")
