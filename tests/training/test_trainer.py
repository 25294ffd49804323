"""The trainer: the original's optimizer groups and schedule, targets equal to the image processor's, a real run
whose output loads in Segmenter, fine-tuning with a new num_labels, and bad input stopped before any step."""

import json

import numpy as np
import pytest
import torch

from mask2former.config import Mask2FormerConfig, SwinConfig
from mask2former.modeling.mask2former import Mask2FormerForUniversalSegmentation
from mask2former.processing.image_processor import Mask2FormerImageProcessor
from mask2former.training.augment import TrainAugmentation
from mask2former.training.config import TrainConfig
from mask2former.training.data import (
    Collate,
    SyntheticPanopticDataset,
    TrainingExamples,
    targets_from_map,
)
from mask2former.training.trainer import (
    PolyWithWarmup,
    Trainer,
    parameter_groups,
    train,
)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: on a small shared machine, tiny models train several times faster so."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model_config(num_labels: int = 8, **overrides) -> Mask2FormerConfig:
    """A Mask2Former small enough for a training step in ~0.1 s at 64x64 on one core (no drop path)."""
    options = dict(
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=6, train_num_points=256,
    )
    options.update(overrides)
    backbone = SwinConfig(embed_dim=32, depths=[1, 1, 1, 1], num_heads=[1, 1, 2, 2], window_size=4, drop_path_rate=0.0)
    return Mask2FormerConfig(backbone_config=backbone, num_labels=num_labels, **options)


def write_tiny_model_config(directory, **overrides) -> str:
    """config.json of :func:`tiny_model_config` in ``directory``; returns its path (a --model for a new model)."""
    return str(tiny_model_config(**overrides).save_pretrained(directory))


def synthetic_run(model: str, output_dir, **overrides) -> TrainConfig:
    """A config for a few steps on 64x64 synthetic scenes."""
    options = dict(
        model=model, dataset="synthetic", synthetic_train_images=8, synthetic_val_images=0, synthetic_image_size=64,
        crop_size=64, batch_size=2, max_steps=3, log_every=1, save_every=0, num_workers=0, progress=False,
        output_dir=str(output_dir),
    )
    options.update(overrides)
    return TrainConfig(**options)


class ListDataset(torch.utils.data.Dataset):
    """A reader-like dataset over given items."""

    def __init__(self, items, categories):
        self.items, self.categories = items, categories

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return self.items[index]


# ---------------------------------------------------------------------- optimizer and schedule


def test_parameter_groups_follow_the_original():
    model = Mask2FormerForUniversalSegmentation.from_config(tiny_model_config())
    groups = parameter_groups(model, lr=1e-4, weight_decay=0.05, backbone_lr_multiplier=0.1)
    settings = {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert len(settings) == len(names) == sum(len(g["params"]) for g in groups)  # each parameter once
    setting = {name: settings[id(p)] for name, p in names.items()}
    assert setting["backbone.layers.0.blocks.0.attn.qkv.weight"] == (1e-5, 0.05)
    assert setting["backbone.layers.0.blocks.0.attn.qkv.bias"] == (1e-5, 0.05)
    assert setting["backbone.layers.0.blocks.0.attn.relative_position_bias_table"] == (1e-5, 0.0)
    assert setting["backbone.layers.0.blocks.0.norm1.weight"] == (1e-5, 0.0)
    assert setting["pixel_decoder.input_projections.0.1.weight"] == (1e-4, 0.0)  # GroupNorm
    for name in ("query_features.weight", "query_positions.weight", "level_embed.weight"):
        assert setting[f"transformer_decoder.{name}"] == (1e-4, 0.0)  # nn.Embedding
    assert setting["pixel_decoder.level_embed"] == (1e-4, 0.05)  # a plain Parameter, decayed as in the original
    assert setting["class_head.weight"] == (1e-4, 0.05)


def test_poly_schedule_with_warmup():
    schedule = PolyWithWarmup(max_steps=100, power=0.9, warmup_steps=10, warmup_factor=0.001)
    assert schedule(0) == pytest.approx(0.001)
    assert schedule(5) == pytest.approx((0.001 * 0.5 + 0.5) * 0.95**0.9)
    assert schedule(10) == pytest.approx(0.9**0.9)
    assert schedule(100) == 0.0
    assert PolyWithWarmup(max_steps=100)(0) == 1.0


# ---------------------------------------------------------------------- targets


def test_targets_equal_the_image_processor():
    dataset = SyntheticPanopticDataset(3, size=64)
    examples = TrainingExamples(dataset, TrainAugmentation(mode="none", flip_prob=0.0), task="panoptic", num_labels=8, seed=0)
    processor = Mask2FormerImageProcessor(do_resize=False, ignore_index=255)
    batch = Collate(processor.image_mean, processor.image_std)([examples[(0, i)] for i in range(3)])
    items = [dataset[i] for i in range(3)]
    expected = processor(
        [i["image"] for i in items], segmentation_maps=[i["segmentation_map"] for i in items],
        instance_id_to_semantic_id=[i["instance_id_to_semantic_id"] for i in items],
    )
    torch.testing.assert_close(batch["pixel_values"], expected["pixel_values"])
    for key in ("mask_labels", "class_labels"):
        for ours, theirs in zip(batch[key], expected[key]):
            assert torch.equal(ours, theirs)


def test_targets_per_task():
    label = torch.tensor([[0, 0, 1, 1], [2, 2, 1, 255], [3, 3, 3, 3]])
    instance_to_class = {0: 5, 1: 6, 2: 5, 3: 0}  # 0 is a stuff class, 5 and 6 things
    masks, classes = targets_from_map(label, instance_to_class, "panoptic", {5, 6}, num_labels=7)
    assert classes.tolist() == [5, 6, 5, 0] and masks.shape == (4, 3, 4)
    masks, classes = targets_from_map(label, instance_to_class, "instance", {5, 6}, num_labels=7)
    assert classes.tolist() == [5, 6, 5]
    masks, classes = targets_from_map(label, instance_to_class, "semantic", {5, 6}, num_labels=7)
    assert classes.tolist() == [0, 5, 6] and masks[1].sum() == 4  # segments 0 and 2 merged
    assert not masks[:, 1, 3].any()  # the ignored pixel belongs to no mask
    with pytest.raises(ValueError, match="class id 6, outside \\[0, 6\\)"):
        targets_from_map(label, instance_to_class, "panoptic", {5, 6}, num_labels=6, name="img.png")


# ---------------------------------------------------------------------- runs


def test_training_run_logs_saves_and_loads(tmp_path):
    from mask2former.segmenter import Segmenter

    model = write_tiny_model_config(tmp_path / "model")
    config = synthetic_run(model, tmp_path / "run", synthetic_val_images=2, max_steps=2)
    result = train(config)
    lines = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "loss" in line]
    assert [line["step"] for line in steps] == [1, 2]
    assert {"loss", "loss_mask", "loss_dice", "loss_cross_entropy", "loss_mask_0", "lr", "grad_norm", "time"} <= set(steps[0])
    assert steps[0]["grad_norm"] > 0
    assert steps[0]["lr"] == pytest.approx(1e-4) and steps[1]["lr"] < 1e-4
    assert [line["step"] for line in lines if "eval" in line] == [2] and "PQ" in lines[-1]["eval"]
    assert result.final_dir == tmp_path / "run" / "final"
    segmenter = Segmenter.from_pretrained(result.final_dir)
    assert segmenter.id2label[0] == "sky" and segmenter.processor.size["shortest_edge"] == 64
    assert segmenter.segment(np.zeros((64, 64, 3), np.uint8), task="semantic").segmentation.shape == (64, 64)
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert TrainConfig.from_dict(saved) == config


def test_fine_tuning_with_new_classes(tmp_path):
    source = Mask2FormerForUniversalSegmentation.from_config(tiny_model_config(num_labels=3))
    source.save_pretrained(tmp_path / "pretrained")
    result = train(synthetic_run(str(tmp_path / "pretrained"), tmp_path / "run", max_steps=1, amp="bf16"))
    tuned = Mask2FormerForUniversalSegmentation.from_pretrained(result.final_dir)
    assert tuned.config.num_labels == 8 and tuned.config.id2label[7] == "ring"
    assert tuned.class_head.out_features == 9
    assert np.isfinite(result.losses).all()


def test_bad_input_stops_before_any_step(tmp_path):
    model = write_tiny_model_config(tmp_path / "model")
    synthetic = SyntheticPanopticDataset(4, size=64)
    with pytest.raises(ValueError, match="class id 3 .*num_labels is 3"):
        Trainer(synthetic_run(model, tmp_path / "a", num_labels=3))
    with pytest.raises(ValueError, match="empty"):
        Trainer(synthetic_run(model, tmp_path / "b"), train_dataset=ListDataset([], synthetic.categories))
    with pytest.raises(ValueError, match="fewer than one batch"):
        Trainer(synthetic_run(model, tmp_path / "c", batch_size=8), train_dataset=ListDataset([synthetic[0]], synthetic.categories))
    with pytest.raises(ValueError, match="no dataset"):
        Trainer(synthetic_run(model, tmp_path / "d", dataset=None))
    with pytest.raises(ValueError, match="cannot train --task panoptic"):
        Trainer(synthetic_run(model, tmp_path / "e", dataset="semantic", train_images=str(tmp_path), train_annotations=str(tmp_path)))
    wrong_size = dict(synthetic[0], segmentation_map=synthetic[0]["segmentation_map"][:32])
    trainer = Trainer(synthetic_run(model, tmp_path / "f"), train_dataset=ListDataset([wrong_size] * 2, synthetic.categories))
    with pytest.raises(ValueError, match="segmentation map is \\(32, 64\\) but the image is \\(64, 64\\)"):
        trainer.train()
    assert trainer.step == 0
