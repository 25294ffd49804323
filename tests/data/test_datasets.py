"""Dataset readers on data the tests make: COCO panoptic, COCO instances, ADE20K-style and Cityscapes folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from torch.utils.data import DataLoader

from mask2former.data.datasets import (
    IGNORE_INDEX,
    CityscapesSemanticDataset,
    COCOInstanceDataset,
    COCOPanopticDataset,
    SemanticFolderDataset,
    load_categories,
)
from mask2former.data.synthetic import write_synthetic_dataset


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    write_synthetic_dataset(root, 4, seed=5, height=48, width=64)
    return root


def test_panoptic_reader(synthetic):
    dataset = COCOPanopticDataset(synthetic / "panoptic.json", synthetic / "images")
    assert len(dataset) == 4 and [c["name"] for c in dataset.categories][:3] == ["sky", "ground", "water"]
    item = dataset[0]
    assert item["image"].shape == (48, 64, 3) and item["image"].dtype == np.uint8
    ids = set(np.unique(item["segmentation_map"]).tolist())
    assert ids == set(item["instance_id_to_semantic_id"]) and IGNORE_INDEX not in ids
    for segment in item["segments_info"]:
        assert segment["area"] == int((item["segmentation_map"] == segment["id"]).sum())
        assert item["instance_id_to_semantic_id"][segment["id"]] == segment["category_id"]


def test_instance_reader_matches_panoptic_things(synthetic):
    panoptic = COCOPanopticDataset(synthetic / "panoptic.json", synthetic / "images")
    instances = COCOInstanceDataset(synthetic / "instances.json", synthetic / "images")
    for index in range(4):
        things = sorted(s["area"] for s in panoptic[index]["segments_info"] if panoptic.categories[s["category_id"]]["isthing"])
        assert sorted(s["area"] for s in instances[index]["segments_info"]) == things


def test_semantic_reader_and_dataloader_with_workers(synthetic):
    dataset = SemanticFolderDataset(synthetic / "images", synthetic / "semantic", categories=str(synthetic / "categories.json"))
    loader = DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=list)
    batches = list(loader)
    assert sum(len(b) for b in batches) == 4
    values = np.unique(np.concatenate([item["segmentation_map"].ravel() for b in batches for item in b]))
    assert values.min() >= 0 and values.max() < len(dataset.categories)


def test_packaged_categories():
    assert len(load_categories("ade20k")["categories"]) == 150
    assert len(load_categories("cityscapes")["categories"]) == 19


def test_cityscapes_reader_maps_train_ids(tmp_path):
    (tmp_path / "leftImg8bit/val/city").mkdir(parents=True)
    (tmp_path / "gtFine/val/city").mkdir(parents=True)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "leftImg8bit/val/city/a_000001_leftImg8bit.png")
    label = np.array([[7, 8, 0, 26, 33, 9]] * 4, dtype=np.uint8)  # road, sidewalk, unlabeled, car, bicycle, parking
    Image.fromarray(label).save(tmp_path / "gtFine/val/city/a_000001_gtFine_labelIds.png")
    item = CityscapesSemanticDataset(tmp_path)[0]
    assert item["segmentation_map"][0].tolist() == [0, 1, 255, 13, 18, 255]


def test_malformed_files_are_named(synthetic, tmp_path):
    document = json.loads((synthetic / "panoptic.json").read_text())
    document["annotations"][0]["file_name"] = "missing.png"
    (tmp_path / "bad.json").write_text(json.dumps(document))
    dataset = COCOPanopticDataset(tmp_path / "bad.json", synthetic / "images", synthetic / "panoptic")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        dataset[0]
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "images" / "x.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "labels" / "x.png")
    with pytest.raises(ValueError, match="size mismatch"):
        SemanticFolderDataset(tmp_path / "images", tmp_path / "labels")[0]
    (tmp_path / "empty.json").write_text(json.dumps({"categories": [], "annotations": []}))
    with pytest.raises(ValueError, match="empty"):
        COCOPanopticDataset(tmp_path / "empty.json", tmp_path)
