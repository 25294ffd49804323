"""Dataset readers on data the tests make: COCO panoptic, COCO instances, ADE20K-style and Cityscapes folders."""

from __future__ import annotations

import json
import re

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


def test_packaged_coco_categories():
    panoptic = load_categories("coco_panoptic")["categories"]
    instance = load_categories("coco_instance")["categories"]
    assert len(panoptic) == 133 and len(instance) == 80
    assert len({c["id"] for c in panoptic}) == 133 and len({c["name"] for c in panoptic}) == 133
    assert len({c["id"] for c in instance}) == 80 and all(1 <= c["id"] <= 90 for c in instance)
    things = {c["id"]: c["name"] for c in panoptic if c["isthing"]}
    assert things == {c["id"]: c["name"] for c in instance}
    assert sum(1 for c in panoptic if not c["isthing"]) == 53
    assert all(len(c["color"]) == 3 and all(0 <= v <= 255 for v in c["color"]) for c in panoptic)
    assert panoptic[0] == {"id": 1, "name": "person", "isthing": 1, "color": [220, 20, 60], "supercategory": "person"}
    assert panoptic[-1]["id"] == 200 and panoptic[-1]["name"] == "rug-merged"
    with pytest.raises(FileNotFoundError, match="coco_panoptic"):
        load_categories("no-such-list")


# Bad input: each kind raises naming the path (strict) or comes back as a placeholder (strict=False).


def _copy(synthetic, tmp_path):
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(synthetic, root)
    return root


def _edit_json(path, edit):
    document = json.loads(path.read_text())
    edit(document)
    path.write_text(json.dumps(document))


def _panoptic_bad(kind, root):
    """Break item 1 of the panoptic copy; returns (dataset factory, a path the error must name)."""
    json_file = root / "panoptic.json"
    if kind == "missing file":
        _edit_json(json_file, lambda d: d["annotations"][1].update(file_name="gone.png"))
        named = "gone.png"
    elif kind == "ids not in JSON":
        _edit_json(json_file, lambda d: d["annotations"][1]["segments_info"].pop())
        named = str(root / "panoptic" / "000001.png")
    elif kind == "unknown category":
        _edit_json(json_file, lambda d: d["annotations"][1]["segments_info"][0].update(category_id=99))
        named = str(root / "panoptic" / "000001.png")
    else:  # size mismatch
        Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "images" / "000001.png")
        named = str(root / "images" / "000001.png")
    return lambda strict: COCOPanopticDataset(json_file, root / "images", strict=strict), named


def _instance_bad(kind, root):
    json_file = root / "instances.json"
    if kind == "missing file":
        (root / "images" / "000001.png").unlink()
        named = str(root / "images" / "000001.png")
    elif kind == "unknown category":
        _edit_json(json_file, lambda d: [a.update(category_id=99) for a in d["annotations"] if a["image_id"] == 1])
        named = str(json_file)
    else:  # size mismatch
        _edit_json(json_file, lambda d: d["images"][1].update(height=10))
        named = str(root / "images" / "000001.png")
    return lambda strict: COCOInstanceDataset(json_file, root / "images", strict=strict), named


def _semantic_bad(kind, root):
    label = root / "semantic" / "000001.png"
    if kind == "missing file":
        label.unlink()
    elif kind == "unknown category":
        values = np.asarray(Image.open(label)).copy()
        values[0, 0] = 42  # 8 classes: stored values 1..8
        Image.fromarray(values).save(label)
    else:  # size mismatch
        Image.fromarray(np.ones((10, 12), np.uint8)).save(label)
    factory = lambda strict: SemanticFolderDataset(  # noqa: E731
        root / "images", root / "semantic", categories=str(root / "categories.json"), strict=strict
    )
    return factory, str(label)


BAD_INPUTS = [
    ("panoptic", kind) for kind in ("missing file", "ids not in JSON", "unknown category", "size mismatch")
] + [("instance", kind) for kind in ("missing file", "unknown category", "size mismatch")] + [
    ("semantic", kind) for kind in ("missing file", "unknown category", "size mismatch")
]


@pytest.mark.parametrize("reader, kind", BAD_INPUTS)
def test_bad_input_strict_and_lenient(synthetic, tmp_path, reader, kind):
    from mask2former.data.datasets import is_skipped

    make = {"panoptic": _panoptic_bad, "instance": _instance_bad, "semantic": _semantic_bad}[reader]
    factory, named = make(kind, _copy(synthetic, tmp_path))
    error = FileNotFoundError if kind == "missing file" else ValueError
    with pytest.raises(error, match=re.escape(named)):
        factory(True)[1]
    lenient = factory(False)
    placeholder = lenient[1]
    assert is_skipped(placeholder) and named in placeholder["error"] and "image" not in placeholder
    assert placeholder["file_name"].endswith("000001.png")
    assert not is_skipped(lenient[0]) and lenient[0]["image"].shape == (48, 64, 3)


def test_empty_dataset_is_an_error_in_both_modes(tmp_path):
    (tmp_path / "empty.json").write_text(json.dumps({"categories": [], "annotations": [], "images": []}))
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    for strict in (True, False):
        with pytest.raises(ValueError, match="empty"):
            COCOPanopticDataset(tmp_path / "empty.json", tmp_path, strict=strict)
        with pytest.raises(ValueError, match="empty"):
            COCOInstanceDataset(tmp_path / "empty.json", tmp_path, strict=strict)
        with pytest.raises(ValueError, match="empty"):
            SemanticFolderDataset(tmp_path / "images", tmp_path / "labels", strict=strict)


def test_panoptic_reader_keeps_crowd_for_pq(synthetic, tmp_path):
    root = _copy(synthetic, tmp_path)
    document = json.loads((root / "panoptic.json").read_text())
    crowd = document["annotations"][0]["segments_info"][-1]
    crowd["iscrowd"] = 1
    (root / "panoptic.json").write_text(json.dumps(document))
    item = COCOPanopticDataset(root / "panoptic.json", root / "images")[0]
    region = item["panoptic_ids"] == crowd["id"]
    assert region.any() and (item["segmentation_map"][region] == IGNORE_INDEX).all()
    assert item["panoptic_segments_info"] == document["annotations"][0]["segments_info"]
    assert len(item["segments_info"]) == len(document["annotations"][0]["segments_info"]) - 1
