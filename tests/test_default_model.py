"""The model bundled with the package: it loads offline, is small, and segments unseen synthetic scenes well."""

from __future__ import annotations

import numpy as np

from mask2former import Segmenter
from mask2former.checkpoints.default import default_model_path
from mask2former.data.synthetic import CATEGORIES, generate_scene
from mask2former.evaluation import SemSegMetric


def test_bundled_model_is_small_and_labelled():
    folder = default_model_path()
    assert (folder / "model.safetensors").stat().st_size < 10_000_000
    segmenter = Segmenter.from_pretrained()
    assert [segmenter.id2label[i] for i in range(len(CATEGORIES))] == [c["name"] for c in CATEGORIES]


def test_bundled_model_segments_unseen_scenes():
    """Semantic mIoU on 8 scenes no training run has seen (a seed of their own); the full 200-scene figures are in
    README.md ("The bundled default model")."""
    segmenter = Segmenter.from_pretrained()
    contiguous = {c["id"]: index for index, c in enumerate(CATEGORIES)}
    metric = SemSegMetric(num_classes=len(CATEGORIES))
    scenes = [generate_scene(np.random.default_rng([424242, i]), 128, 128) for i in range(8)]
    results = segmenter.segment([scene.image for scene in scenes], "semantic", batch_size=8)
    for scene, result in zip(scenes, results):
        truth = np.zeros(scene.segment_ids.shape, np.int64)
        for segment in scene.segments:
            truth[scene.segment_ids == segment["id"]] = contiguous[segment["category_id"]]
        metric.update(result.segmentation, truth)
    assert metric.compute()["mIoU"] > 70
    panoptic = segmenter.segment(scenes[0].image, "panoptic")
    assert {"sky"} <= {segment.label for segment in panoptic.segments}
