"""DDR's lesion data for the detector: the reader (masks and VOC), its faults counted, its
bad input named; the sources joined; the per-source table; the stamp."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from lesioncl.ddr import (
    DdrCocoSettings,
    DdrLayoutError,
    build_ddr_coco,
    check_ddr_path,
    find_root,
    read_voc,
    source_path,
)
from lesioncl.detector.sources import (
    check_datasets,
    merge_coco,
    source_files,
    sources_markdown,
)
from lesioncl.provenance import ProvenanceError, check_data_folders, data_sources
from lesioncl.synthetic import DdrSetSettings, generate_ddr_lesions

SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def ddr_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddr") / "DDR-dataset"
    summary = generate_ddr_lesions(
        root, settings=DdrSetSettings(n_train=8, n_val=3, n_test=4, height=200)
    )
    return root, summary


def _build(root, out, annotations="masks", **kw):
    paths = {s: out / f"coco_{s}.json" for s in SPLITS}
    summary = build_ddr_coco(
        root,
        paths,
        out / "images",
        out / "summary.json",
        out / "rejects.csv",
        out / "qc.png",
        DdrCocoSettings(annotations=annotations, **kw),
    )
    return summary, {s: json.loads(p.read_text()) for s, p in paths.items()}


def _rows(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_masks_and_voc_agree_and_the_faults_are_counted(ddr_set, tmp_path):
    root, made = ddr_set
    masks, mcoco = _build(root, tmp_path / "masks")
    voc, vcoco = _build(root, tmp_path / "voc", annotations="voc")
    # valid and test carry no fault: the two annotation forms give the same boxes
    for split in ("val", "test"):
        assert mcoco[split]["images"] == vcoco[split]["images"]
        key = lambda a: (a["image_id"], a["category_id"], a["bbox"])  # noqa: E731
        assert sorted(map(key, mcoco[split]["annotations"])) == sorted(
            map(key, vcoco[split]["annotations"])
        )
        assert masks["splits"][split]["images"] == made["images"][split]
    # the train VOC files' duplicated objects: removed and counted
    assert voc["splits"]["train"]["duplicate_objects_removed"] == made["duplicated_objects"] > 0
    assert masks["splits"]["train"]["duplicate_objects_removed"] == 0
    # the image with all-black masks: left out from the masks, listed with its reason
    assert made["blanked_images"] == 1
    assert masks["splits"]["train"]["rejected"] == {"no_lesion": 1}
    assert masks["splits"]["train"]["images"] == made["images"]["train"] - 1
    rejects = _rows(tmp_path / "masks" / "rejects.csv")
    assert len(rejects) == 1 and rejects[0]["reason"] == "no_lesion"
    assert "all-black" in rejects[0]["detail"]
    assert voc["splits"]["train"]["images"] == made["images"]["train"]  # VOC keeps its boxes
    assert _rows(tmp_path / "voc" / "rejects.csv") == []
    # COCO form: our four categories, boxes inside the image, the images written
    for coco in (*mcoco.values(), *vcoco.values()):
        assert [c["name"] for c in coco["categories"]] == [
            "microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate",
        ]
        sizes = {im["id"]: (im["width"], im["height"]) for im in coco["images"]}
        for ann in coco["annotations"]:
            x, y, w, h = ann["bbox"]
            width, height = sizes[ann["image_id"]]
            assert 0 <= x and 0 <= y and x + w <= width + 1e-6 and y + h <= height + 1e-6
    for split in SPLITS:
        for im in mcoco[split]["images"]:
            assert (tmp_path / "masks" / "images" / split / im["file_name"]).is_file()
    assert (tmp_path / "masks" / "qc.png").stat().st_size > 0


def test_images_are_resized_with_their_boxes(ddr_set, tmp_path):
    root, _ = ddr_set
    full, fcoco = _build(root, tmp_path / "full")
    small, scoco = _build(root, tmp_path / "small", max_size=100)
    for a, b in zip(fcoco["test"]["images"], scoco["test"]["images"]):
        assert max(b["width"], b["height"]) == 100
        assert (b["orig_width"], b["orig_height"]) == (a["width"], a["height"])
    assert len(fcoco["test"]["annotations"]) == len(scoco["test"]["annotations"])


def test_voc_boxes_are_one_based_clipped_and_deduplicated(tmp_path):
    xml = tmp_path / "a.xml"
    objects = [
        ("MA ", 1, 1, 3, 4),  # 1-based inclusive: x 0, w 3; name case and space ignored
        ("ma", 1, 1, 3, 4),  # a duplicate
        ("he", 90, 10, 120, 20),  # beyond the 100-px-wide image: clipped
        ("ex", 150, 10, 160, 20),  # wholly outside: dropped
    ]
    xml.write_text(
        "<annotation><size><width>100</width><height>50</height></size>"
        + "".join(
            f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
            f"<ymax>{d}</ymax></bndbox></object>"
            for n, a, b, c, d in objects
        )
        + "</annotation>"
    )
    boxes = read_voc(xml, 100, 50)
    assert boxes.boxes == [(1, 0.0, 0.0, 3.0, 4.0), (2, 89.0, 9.0, 11.0, 11.0)]
    assert (boxes.duplicates, boxes.clipped, boxes.degenerate) == (1, 2, 1)
    assert boxes.size == (100, 50)


def test_bad_voc_files_are_errors_naming_the_file(tmp_path):
    xml = tmp_path / "b.xml"
    xml.write_text("<annotation><object><name>drusen</name><bndbox><xmin>1</xmin><ymin>1</ymin>"
                   "<xmax>2</xmax><ymax>2</ymax></bndbox></object></annotation>")
    with pytest.raises(DdrLayoutError, match=r"b\.xml: unknown lesion class 'drusen'"):
        read_voc(xml, 10, 10)
    xml.write_text("<annotation><object><name>ma</name><bndbox><xmin>1</xmin></bndbox></object>")
    with pytest.raises(DdrLayoutError, match=r"b\.xml: not a readable VOC"):
        read_voc(xml, 10, 10)
    xml.write_text("<annotation><object><name>ma</name><bndbox><xmin>1</xmin></bndbox></object>"
                   "</annotation>")
    with pytest.raises(DdrLayoutError, match=r"b\.xml: an object 'ma' without numeric"):
        read_voc(xml, 10, 10)


def _copy(ddr_set, tmp_path):
    root = tmp_path / "DDR-dataset"
    shutil.copytree(ddr_set[0], root)
    return root


def test_layout_problems_are_listed_together(ddr_set, tmp_path):
    root = _copy(ddr_set, tmp_path)
    seg = root / "lesion_segmentation"
    # an unknown class folder, a mask without image, a missing split folder
    (seg / "train" / "label" / "OD").mkdir()
    mask = next((seg / "test" / "label" / "EX").iterdir())
    shutil.copy(mask, mask.with_name("999-9999-100.tif"))
    shutil.rmtree(seg / "valid" / "image")
    with pytest.raises(DdrLayoutError) as err:
        _build(root, tmp_path / "out")
    text = str(err.value)
    assert "3 problem(s)" in text
    assert "unknown lesion class folder" in text and "OD" in text
    assert "mask without image" in text and "999-9999-100.tif" in text
    assert "missing folder" in text and "valid/image" in text
    assert "cat DDR-dataset.zip.0*" in text  # the layout help


def test_a_mask_of_another_size_is_an_error_naming_it(ddr_set, tmp_path):
    root = _copy(ddr_set, tmp_path)
    mask = sorted((root / "lesion_segmentation/test/label/HE").iterdir())[0]
    Image.fromarray(np.zeros((20, 30), np.uint8)).save(mask)
    with pytest.raises(DdrLayoutError, match=rf"{mask.name}: the mask is 30x20 but its image"):
        _build(root, tmp_path / "out")


def test_voc_without_its_image_is_an_error(ddr_set, tmp_path):
    root = _copy(ddr_set, tmp_path)
    shutil.copy(
        next((root / "lesion_detection/test").glob("*.xml")),
        root / "lesion_detection/test/000-0000-000.xml",
    )
    with pytest.raises(DdrLayoutError, match=r"annotation without image: .*000-0000-000\.xml"):
        _build(root, tmp_path / "out", annotations="voc")


def test_where_the_input_is_found(ddr_set, tmp_path):
    root, _ = ddr_set
    assert find_root(root) == root
    assert find_root(root.parent) == root  # DDR-dataset one level down
    assert find_root(root / "lesion_segmentation") == root
    assert check_ddr_path(root) == root
    zipped = tmp_path / "DDR-dataset.zip.001"
    zipped.write_bytes(b"PK")
    with pytest.raises(DdrLayoutError, match=r"cat DDR-dataset\.zip\.0\*"):
        find_root(zipped)
    with pytest.raises(DdrLayoutError, match="not found"):
        find_root(tmp_path / "nowhere")
    with pytest.raises(DdrLayoutError, match="no 'lesion_segmentation' folder"):
        find_root(tmp_path)
    assert source_path({"source": "synthetic"}, "res") == "res/synthetic/ddr"
    with pytest.raises(ValueError, match="ddr.path is not set"):
        source_path({"source": "path", "path": None}, "res")


# ----------------------------------------------------------------------- sources joined
def _coco(images, anns, categories=None):
    return {
        "images": [{"id": i, "file_name": f"{n}.jpg", "width": 10, "height": 10}
                   for i, n in images],
        "annotations": [{"id": k + 1, "image_id": i, "category_id": c, "bbox": [0, 0, 2, 2],
                         "area": 4, "iscrowd": 0} for k, (i, c) in enumerate(anns)],
        "categories": categories or [{"id": 1, "name": "microaneurysm"}],
    }


def test_sources_are_joined_with_new_ids_and_linked_images(tmp_path):
    sources = {}
    for name, images in (("idrid", [(1, "IDRiD_01"), (2, "IDRiD_02")]), ("ddr", [(1, "007-1")])):
        folder = tmp_path / name
        (folder / "images" / "train").mkdir(parents=True)
        for _, stem in images:
            (folder / "images" / "train" / f"{stem}.jpg").write_bytes(b"jpeg")
        (folder / "train.json").write_text(json.dumps(_coco(images, [(i, 1) for i, _ in images])))
        sources[name] = {"train": folder / "train.json", "images": folder / "images"}
    out = tmp_path / "merged"
    counts = merge_coco(sources, {"train": out / "train.json"}, out / "images")
    assert counts == {"train": {"idrid": 2, "ddr": 1}}
    merged = json.loads((out / "train.json").read_text())
    assert [im["id"] for im in merged["images"]] == [1, 2, 3]
    assert [im["file_name"] for im in merged["images"]] == [
        "idrid/IDRiD_01.jpg", "idrid/IDRiD_02.jpg", "ddr/007-1.jpg",
    ]
    assert [(im["source"], im["source_id"]) for im in merged["images"]] == [
        ("idrid", 1), ("idrid", 2), ("ddr", 1),
    ]
    assert [(a["id"], a["image_id"]) for a in merged["annotations"]] == [(1, 1), (2, 2), (3, 3)]
    for im in merged["images"]:
        assert (out / "images" / "train" / im["file_name"]).read_bytes() == b"jpeg"
    # categories that differ: an error naming the file
    (tmp_path / "ddr" / "train.json").write_text(
        json.dumps(_coco([(1, "007-1")], [], categories=[{"id": 1, "name": "other"}]))
    )
    with pytest.raises(ValueError, match=r"ddr/train\.json: its categories differ"):
        merge_coco(sources, {"train": out / "again.json"}, out / "images2")


def test_datasets_setting_and_the_named_inputs():
    assert check_datasets(["ddr", "idrid"]) == ["idrid", "ddr"]
    for bad in ([], ["idrid", "idrid"], ["messidor"]):
        with pytest.raises(ValueError, match="detector.datasets"):
            check_datasets(bad)
    files = source_files("res", ["idrid", "ddr"], ("val", "test"))
    assert files == {
        "idrid_test": "res/idrid/coco_test.json",
        "idrid_images": "res/idrid/images",
        "ddr_val": "res/ddr/coco_val.json",
        "ddr_test": "res/ddr/coco_test.json",
        "ddr_images": "res/ddr/images",
    }


def test_per_source_table():
    per_class = {"microaneurysm": {"AP_50": None}, "haemorrhage": {"AP_50": 0.5}}
    metrics = {
        "idrid": {"test": {"test_images": 27, "mAP": 0.1, "mAP_50": 0.3, "per_class": per_class}},
        "ddr": {"val": {"test_images": 12, "mAP": 0.2, "mAP_50": 0.4, "per_class": per_class},
                "test": {"test_images": 18, "mAP": 0.25, "mAP_50": 0.45, "per_class": per_class}},
    }
    md = sources_markdown(metrics, ["idrid", "ddr"])
    assert md.startswith("Detector trained on: IDRiD, DDR")
    assert "| IDRiD | test | 27 | 0.100 | 0.300 | – | 0.500 |" in md
    assert "| DDR | val | 12 | 0.200 | 0.400 | – | 0.500 |" in md
    assert md.count("\n| DDR |") == 2


# ----------------------------------------------------------------------- the stamp
def test_the_stamp_names_ddr_only_when_the_detector_uses_it(tmp_path):
    config = {"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"},
              "ddr": {"source": "path", "path": str(tmp_path / "nowhere")},
              "detector": {"datasets": ["idrid"]}}
    assert "ddr" not in data_sources(config)
    check_data_folders(config)  # DDR unused: its path is not checked
    config["detector"]["datasets"] = ["idrid", "ddr"]
    assert data_sources(config)["ddr"] == {"source": "path", "path": str(tmp_path / "nowhere")}
    with pytest.raises(ProvenanceError, match="DDR input not found"):
        check_data_folders(config)
