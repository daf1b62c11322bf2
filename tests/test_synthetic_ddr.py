"""The synthetic DDR-like lesion set: layout, masks, VOC boxes, quirks, determinism."""

from __future__ import annotations

import csv
import hashlib
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesioncl.idrid.boxes import mask_to_boxes
from lesioncl.synthetic import (
    DDR_MASK_TYPES,
    DDR_TRUTH_COLUMNS,
    LESION_KINDS,
    DdrSetSettings,
    ddr_paths,
    generate_ddr_lesions,
)
from lesioncl.synthetic import datasets as ds
from lesioncl.synthetic.ddr_set import _plan_image
from lesioncl.synthetic.geometry import eyepacs_geometry

KW = dict(seed=5, n_train=6, n_val=3, n_test=3, height=180)
SPLIT_FOLDERS = {"train": "train", "val": "valid", "test": "test"}


def _run(root: Path, workers: int = 1, **kw) -> tuple[Path, dict]:
    settings = DdrSetSettings(**{**KW, **kw})
    summary = generate_ddr_lesions(
        root / "ddr", root / "truth.csv", root / "qc.png", settings=settings, workers=workers
    )
    return root, summary


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _hashes(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _mask(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        assert im.mode == "L" and im.format == "TIFF"
        return np.asarray(im)


def _voc(path: Path) -> tuple[ET.Element, list[tuple]]:
    root = ET.parse(path).getroot()
    objects = [
        (
            obj.findtext("name"),
            *(int(obj.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")),
        )
        for obj in root.findall("object")
    ]
    return root, objects


def _components(masks: dict[str, Path]) -> list[tuple]:
    """The VOC objects the masks' 8-connected components give (1-based, inclusive)."""
    out = []
    for code, path in masks.items():
        name = DDR_MASK_TYPES[code][0]
        for x, y, w, h, _ in mask_to_boxes(_mask(path) > 0).tolist():
            out.append((name, x + 1, y + 1, x + w, y + h))
    return out


@pytest.fixture(scope="module")
def quirky(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ddr_q"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    return _run(tmp_path_factory.mktemp("ddr_c"), quirks=False)


def test_layout_exactly(quirky):
    root, summary = quirky
    ddr = root / "ddr"
    fields, truth = _read_csv(root / "truth.csv")
    assert fields == DDR_TRUTH_COLUMNS
    assert [r["split"] for r in truth] == ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    assert summary["images"] == {"train": 6, "val": 3, "test": 3}
    stems = [r["image"] for r in truth]
    assert len(set(stems)) == len(stems)
    for i, stem in enumerate(stems):
        hospital, number, k = stem.split("-")
        assert len(hospital) == 3 and 1 <= int(hospital) <= 147
        assert number == f"{i + 1:04d}" and k == "100"
    expected = set()
    for split, folder in SPLIT_FOLDERS.items():
        label = "segmentation label" if split == "val" else "label"
        for stem in (r["image"] for r in truth if r["split"] == split):
            expected.add(f"lesion_segmentation/{folder}/image/{stem}.jpg")
            expected.add(f"lesion_detection/{folder}/{stem}.xml")
            for code in ("EX", "HE", "MA", "SE"):
                expected.add(f"lesion_segmentation/{folder}/{label}/{code}/{stem}.tif")
    assert set(_hashes(ddr)) == expected
    assert sorted(p.name for p in ddr.iterdir()) == ["lesion_detection", "lesion_segmentation"]
    for split, folder in SPLIT_FOLDERS.items():
        inner = sorted(p.name for p in (ddr / "lesion_segmentation" / folder).iterdir())
        assert inner == ["image", "segmentation label" if split == "val" else "label"]
    with Image.open(root / "qc.png") as im:
        assert im.format == "PNG"


def test_masks_and_images(quirky):
    root, _ = quirky
    _, truth = _read_csv(root / "truth.csv")
    for row in truth:
        image, masks, _ = ddr_paths(root / "ddr", row["split"], row["image"])
        with Image.open(image) as im:
            assert im.format == "JPEG" and im.mode == "RGB"
            assert im.size == (int(row["width"]), int(row["height"]))
        assert int(row["height"]) % 2 == 0 and 144 <= int(row["height"]) <= 216
        assert int(row["level"]) >= 2  # DDR's lesion images have lesions
        present = []
        for code, path in masks.items():
            m = _mask(path)
            assert m.dtype == np.uint8 and m.shape == (int(row["height"]), int(row["width"]))
            assert set(np.unique(m).tolist()) <= {0, 255}
            drawn = sum(int(row[k]) for k in DDR_MASK_TYPES[code][1]) > 0
            if row["quirk"] != "blank_masks":
                assert m.any() == drawn, (row["image"], code)
            if m.any():
                present.append(code)
        assert row["masks"] == " ".join(present)


def test_masks_are_the_drawn_lesions(quirky):
    """Redraw one image in memory: its TIFs hold exactly the drawn lesion pixels."""
    root, _ = quirky
    _, truth = _read_csv(root / "truth.csv")
    number = 8  # a val image: the folder with the space
    row = truth[number - 1]
    eye, _, frame_h = _plan_image(KW["seed"], number, KW["height"])
    rendered = ds._draw(
        KW["seed"],
        ds._DDR,
        number,
        int(row["level"]),
        lambda rng: eyepacs_geometry(rng, frame_h, frame_h, eye),
        rich=True,
    )
    image, masks, _ = ddr_paths(root / "ddr", "val", row["image"])
    assert "segmentation label" in str(masks["EX"])
    for code, (_, kinds) in DDR_MASK_TYPES.items():
        assert np.array_equal(_mask(masks[code]) > 0, rendered.lesion_mask(*kinds)), code
    counts = rendered.counts()
    assert all(int(row[k]) == counts[k] for k in LESION_KINDS)


def test_voc_matches_masks_and_quirks(quirky, clean):
    root, summary = quirky
    _, truth = _read_csv(root / "truth.csv")
    quirks = Counter(r["quirk"] for r in truth)
    assert quirks["blank_masks"] == 1 and quirks["duplicate_objects"] >= 1
    assert all(r["split"] == "train" for r in truth if r["quirk"])
    blank = next(i for i, r in enumerate(truth) if r["quirk"] == "blank_masks")
    clean_truth = _read_csv(clean[0] / "truth.csv")[1]
    assert blank == next(i for i, r in enumerate(clean_truth[2:6], 2) if r["masks"])
    boxed_train = [i for i, r in enumerate(clean_truth) if r["split"] == "train" and r["masks"]]
    duplicating = [i for i, r in enumerate(truth) if r["quirk"] == "duplicate_objects"]
    assert duplicating == [i for j, i in enumerate(boxed_train) if j % 3 == 0 and i != blank]
    duplicated = 0
    boxes = Counter()
    for i, row in enumerate(truth):
        _, masks, xml = ddr_paths(root / "ddr", row["split"], row["image"])
        ann, objects = _voc(xml)
        assert ann.tag == "annotation"
        assert ann.findtext("filename") == f"{row['image']}.jpg"
        w, h = int(row["width"]), int(row["height"])
        size = ann.find("size")
        assert (size.findtext("width"), size.findtext("height")) == (str(w), str(h))
        assert size.findtext("depth") == "3"
        for obj in ann.findall("object"):
            assert obj.findtext("pose") == "Unspecified"
            assert obj.findtext("truncated") == "0" and obj.findtext("difficult") == "0"
        for name, x1, y1, x2, y2 in objects:
            assert name in ("ex", "he", "ma", "se")
            assert 1 <= x1 <= x2 <= w and 1 <= y1 <= y2 <= h
        if row["quirk"] == "blank_masks":
            assert not any(_mask(p).any() for p in masks.values())
            _, clean_masks, _ = ddr_paths(clean[0] / "ddr", row["split"], row["image"])
            assert objects == _components(clean_masks) != []
            boxes.update(o[0] for o in objects)
            continue
        components = _components(masks)
        assert objects[: len(components)] == components
        extra = objects[len(components) :]
        if row["quirk"] == "duplicate_objects":
            assert 1 <= len(extra) <= 2 and all(e in components for e in extra)
            assert len(set(extra)) == len(extra)
        else:
            assert extra == []
        duplicated += len(extra)
        boxes.update(o[0] for o in components)
    assert summary["duplicated_objects"] == duplicated
    assert summary["blanked_images"] == 1
    assert summary["boxes"] == {name: boxes[name] for name in ("ex", "he", "ma", "se")}


def test_no_quirks(quirky, clean):
    root, summary = clean
    _, truth = _read_csv(root / "truth.csv")
    assert all(r["quirk"] == "" for r in truth)
    assert summary["duplicated_objects"] == 0 and summary["blanked_images"] == 0
    for row in truth:
        _, masks, xml = ddr_paths(root / "ddr", row["split"], row["image"])
        assert _voc(xml)[1] == _components(masks)
    # the quirks change the annotations only: the images are the same
    same, other = _hashes(quirky[0] / "ddr"), _hashes(root / "ddr")
    assert same.keys() == other.keys()
    differ = {k for k in same if same[k] != other[k]}
    quirks = {r["image"]: r["quirk"] for r in _read_csv(quirky[0] / "truth.csv")[1]}
    blank = next(r for r in truth if quirks[r["image"]] == "blank_masks")
    masks = ddr_paths(root / "ddr", "train", blank["image"])[1]
    assert {k for k in differ if k.endswith(".tif")} == {
        str(path.relative_to(root / "ddr")) for path in masks.values() if _mask(path).any()
    }
    assert {Path(k).stem for k in differ if k.endswith(".xml")} == {
        stem for stem, quirk in quirks.items() if quirk == "duplicate_objects"
    }
    assert all(k.endswith((".xml", ".tif")) for k in differ)


def test_deterministic(quirky, tmp_path):
    """The same seed gives the same bytes, in two worker processes too; another differs."""
    root, summary = quirky
    again, summary2 = _run(tmp_path / "again", workers=2)
    assert summary2 == summary
    assert _hashes(again / "ddr") == _hashes(root / "ddr")
    assert (again / "truth.csv").read_bytes() == (root / "truth.csv").read_bytes()
    other = generate_ddr_lesions(
        tmp_path / "other", settings=DdrSetSettings(**{**KW, "seed": 6, "n_val": 1, "n_test": 1})
    )
    assert other["images"] == {"train": 6, "val": 1, "test": 1}
    # (an all-black mask of the same size may repeat; the pictures and boxes may not)
    mine, theirs = (
        {v for k, v in _hashes(folder).items() if not k.endswith(".tif")}
        for folder in (root / "ddr", tmp_path / "other")
    )
    assert not mine & theirs


@pytest.mark.parametrize(
    "kw,key",
    [
        (dict(height=100), "synthetic.ddr.height"),
        (dict(height=200.5), "synthetic.ddr.height"),
        (dict(n_train=0), "synthetic.ddr.n_train"),
        (dict(n_val=2.0), "synthetic.ddr.n_val"),
        (dict(n_val=0), "synthetic.ddr.n_val"),
        (dict(n_test=-1), "synthetic.ddr.n_test"),
        (dict(grade_distribution=[1, 1]), "ddr.grade_distribution"),
        (dict(grade_distribution=[0, 0, 0, 0, 0]), "ddr.grade_distribution"),
        (dict(lesion_scale=0), "synthetic.lesion_scale"),
        (dict(small_vessels=-1), "synthetic.small_vessels"),
        (dict(small_vessels=2.5), "synthetic.small_vessels"),
        (dict(quirks="yes"), "synthetic.ddr.quirks"),
        (dict(texture=1), "synthetic.texture"),
        (dict(seed=1.5), "seed"),
    ],
)
def test_bad_settings_name_the_key(kw, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        DdrSetSettings(**kw)


def test_small_set_without_room_for_the_blank_quirk(tmp_path, caplog):
    summary = generate_ddr_lesions(
        tmp_path / "ddr", settings=DdrSetSettings(**{**KW, "n_train": 2, "n_val": 1, "n_test": 1})
    )
    assert summary["blanked_images"] == 0 and summary["duplicated_objects"] >= 1
    assert "too few train images" in caplog.text


def test_settings_and_paths():
    s = DdrSetSettings(grade_distribution=[0, 1, 1, 1, 1])
    assert s.grade_distribution == (0, 1, 1, 1, 1)
    image, masks, xml = ddr_paths("/x", "val", "001-0001-100")
    assert image == Path("/x/lesion_segmentation/valid/image/001-0001-100.jpg")
    assert list(masks) == ["EX", "HE", "MA", "SE"]
    assert masks["MA"] == Path(
        "/x/lesion_segmentation/valid/segmentation label/MA/001-0001-100.tif"
    )
    assert xml == Path("/x/lesion_detection/valid/001-0001-100.xml")
    with pytest.raises(ValueError, match="split"):
        ddr_paths("/x", "valid", "001-0001-100")
