"""IDRiD ingestion: masks -> boxes, layout validation, zip/folder input, resizing, COCO."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesioncl import idrid
from lesioncl.idrid import (
    CocoSettings,
    IdridLayoutError,
    binarise,
    build_idrid_coco,
    mask_to_boxes,
    read_mask_values,
    scale_boxes,
)

SEG = "A. Segmentation"
IMG = f"{SEG}/1. Original Images"
GT = f"{SEG}/2. All Segmentation Groundtruths"
SPLIT_DIR = {"train": "a. Training Set", "test": "b. Testing Set"}
FOLDER = {
    "MA": "1. Microaneurysms",
    "HE": "2. Haemorrhages",
    "EX": "3. Hard Exudates",
    "SE": "4. Soft Exudates",
    "OD": "5. Optic Disc",
}
W, H = 60, 40  # non-square, like IDRiD's 4288x2848


def _tif_bytes(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="TIFF", compression="tiff_lzw")
    return buf.getvalue()


def _red_mask(rects, size=(W, H)) -> np.ndarray:
    """RGB mask with the lesion in the red channel, as the real IDRiD masks."""
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    for x, y, w, h in rects:
        arr[y : y + h, x : x + w, 0] = 255
    return arr


def make_layout(root: Path, spec: dict, size=(W, H)) -> Path:
    """Write an IDRiD tree under root/"A. Segmentation"; spec: split -> {n: {code: rects}}.

    Every lesion folder exists (empty when no mask), as in the official archive.
    """
    rng = np.random.default_rng(0)
    for split, images in spec.items():
        (root / IMG / SPLIT_DIR[split]).mkdir(parents=True, exist_ok=True)
        for folder in FOLDER.values():
            (root / GT / SPLIT_DIR[split] / folder).mkdir(parents=True, exist_ok=True)
        for n, masks in images.items():
            pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).save(
                root / IMG / SPLIT_DIR[split] / f"IDRiD_{n:02d}.jpg"
            )
            for code, rects in masks.items():
                path = (
                    root
                    / GT
                    / SPLIT_DIR[split]
                    / FOLDER[code]
                    / f"IDRiD_{n:02d}_{code}.tif"
                )
                path.write_bytes(_tif_bytes(_red_mask(rects, size)))
    return root / SEG


SPEC = {
    "train": {
        1: {
            "MA": [(2, 3, 1, 1), (10, 10, 2, 2)],
            "HE": [(20, 5, 10, 6)],
            "OD": [(40, 10, 10, 10)],
        },
        2: {"EX": [(0, 0, 3, 2), (50, 30, 10, 10)], "SE": [(30, 20, 5, 5)]},
        3: {"MA": [(5, 5, 1, 1)]},
    },
    "test": {4: {"HE": [(1, 1, 4, 4)], "SE": []}},
}


def run(source, out: Path, **kw) -> dict:
    return build_idrid_coco(
        source,
        {"train": out / "coco_train.json", "test": out / "coco_test.json"},
        out / "images",
        out / "summary.json",
        qc_path=out / "qc.png",
        settings=CocoSettings(**kw),
    )


# ------------------------------------------------------------------ masks -> boxes
def test_mask_to_boxes_components():
    m = np.zeros((12, 20), bool)
    m[1:3, 1:4] = True  # rectangle: x 1..3, y 1..2
    m[5, 5] = True  # single pixel
    m[8:10, 2:4] = True  # two squares touching by an edge -> one component
    m[8:10, 4:6] = True
    m[1, 10] = True  # diagonal (corner) touch -> one component (8-connectivity)
    m[2, 11] = True
    m[0:2, 18] = True  # column touching the image border
    boxes = mask_to_boxes(m)
    got = sorted(map(tuple, boxes.tolist()))
    assert got == sorted(
        [
            (1, 1, 3, 2, 6),
            (5, 5, 1, 1, 1),
            (2, 8, 4, 2, 8),
            (10, 1, 2, 2, 2),
            (18, 0, 1, 2, 2),
        ]
    )


def test_mask_to_boxes_empty_and_hole():
    assert mask_to_boxes(np.zeros((5, 7), bool)).shape == (0, 5)
    ring = np.zeros((9, 9), bool)
    ring[1:8, 1:8] = True
    ring[2:7, 2:7] = False
    ring[4, 4] = True  # a component in the hole of another: kept (contours drop it)
    assert sorted(map(tuple, mask_to_boxes(ring).tolist())) == [
        (1, 1, 7, 7, 24),
        (4, 4, 1, 1, 1),
    ]


def test_read_mask_rgb_palette_alpha_and_thresholds():
    rgb = _red_mask([(1, 1, 2, 2)], (6, 4))
    values = read_mask_values(_tif_bytes(rgb))
    assert values.shape == (4, 6) and values.max() == 255
    assert binarise(values, 1)[0].sum() == 4

    pal = Image.fromarray(np.array([[0, 1, 1], [0, 0, 1]], np.uint8), mode="L").convert(
        "P"
    )
    pal.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)  # index 1 -> dark red
    buf = io.BytesIO()
    pal.save(buf, format="TIFF")
    values = read_mask_values(buf.getvalue())
    assert values.tolist() == [[0, 200, 200], [0, 0, 200]]  # palette colour, not index

    rgba = np.zeros((3, 3, 4), np.uint8)
    rgba[..., 3] = 255  # opaque alpha must not count as lesion
    rgba[1, 2, 1] = 90  # lesion in the green channel
    mask, zero_one = binarise(read_mask_values(_tif_bytes(rgba, "RGBA")), 1)
    assert mask.sum() == 1 and mask[1, 2] and not zero_one

    # 0/1 mask: 1 is lesion although the threshold is > 1
    mask, zero_one = binarise(np.array([[0, 1], [1, 0]], np.uint8), 1)
    assert zero_one and mask.tolist() == [[False, True], [True, False]]
    # a mask with 0/255 and stray 1 values: 1 is below the threshold
    mask, zero_one = binarise(np.array([[1, 255], [0, 1]], np.uint8), 1)
    assert not zero_one and mask.tolist() == [[False, True], [False, False]]


def test_scale_boxes_separate_ratios_and_growth():
    boxes = np.array([[10, 20, 4, 8], [0, 0, 1, 1], [99, 51, 1, 1]])
    out, grown = scale_boxes(boxes, 0.5, 0.25, 50, 13, min_size=1.0)
    assert out[0].tolist() == [5.0, 5.0, 2.0, 2.0]
    # 0.5 x 0.25 -> grown to 1 x 1 around the centre, clipped into the image
    assert out[1].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert out[2].tolist() == [49.0, 12.0, 1.0, 1.0]
    assert grown == 2


# ------------------------------------------------------------------ end to end
def test_folder_to_coco(tmp_path):
    from pycocotools.coco import COCO

    make_layout(tmp_path / "in", SPEC)
    summary = run(tmp_path / "in", tmp_path / "out", max_size=None)
    coco = COCO(str(tmp_path / "out" / "coco_train.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "microaneurysm",
        "haemorrhage",
        "hard_exudate",
        "soft_exudate",
    ]
    assert sorted(coco.getImgIds()) == [1, 2, 3]
    img = coco.loadImgs(1)[0]
    assert (img["file_name"], img["width"], img["height"]) == ("IDRiD_01.jpg", W, H)
    boxes = {
        (a["category_id"], tuple(a["bbox"]))
        for a in coco.loadAnns(coco.getAnnIds(imgIds=1))
    }
    assert boxes == {
        (1, (2, 3, 1, 1)),
        (1, (10, 10, 2, 2)),
        (2, (20, 5, 10, 6)),
    }  # OD ignored
    ids = [a["id"] for a in coco.dataset["annotations"]]
    assert len(set(ids)) == len(ids) and all(
        a["iscrowd"] == 0 for a in coco.dataset["annotations"]
    )
    # unresized images are byte-for-byte copies
    src = tmp_path / "in" / IMG / "a. Training Set" / "IDRiD_02.jpg"
    assert (
        tmp_path / "out" / "images" / "train" / "IDRiD_02.jpg"
    ).read_bytes() == src.read_bytes()

    test = COCO(str(tmp_path / "out" / "coco_test.json"))
    assert [
        (a["category_id"], a["bbox"], a["area"]) for a in test.dataset["annotations"]
    ] == [(2, [1, 1, 4, 4], 16)]
    t = summary["splits"]["train"]
    assert (t["images"], t["boxes"]) == (3, 7)
    assert t["per_class"]["microaneurysm"] == {
        **t["per_class"]["microaneurysm"],
        "boxes": 3,
        "masks": 2,
        "images_with_boxes": 2,
    }
    assert summary["splits"]["test"]["empty_masks"] == [
        f"2. All Segmentation Groundtruths/b. Testing Set/4. Soft Exudates/IDRiD_04_SE.tif"
    ]
    assert (
        json.loads((tmp_path / "out" / "summary.json").read_text())["splits"]["train"][
            "boxes"
        ]
        == 7
    )
    with Image.open(tmp_path / "out" / "qc.png") as qc:
        assert qc.format == "PNG" and qc.size[0] > 200


def test_resizing_scales_x_and_y_separately(tmp_path):
    size = (301, 99)  # -> 150 x 49: sx = 150/301, sy = 49/99 differ
    spec = {
        "train": {1: {"HE": [(100, 30, 60, 40)], "MA": [(300, 98, 1, 1)]}},
        "test": {2: {"MA": [(0, 0, 2, 2)]}},
    }
    make_layout(tmp_path / "in", spec, size=size)
    run(tmp_path / "in", tmp_path / "out", max_size=150, min_box_size=0)
    coco = json.loads((tmp_path / "out" / "coco_train.json").read_text())
    (img,) = coco["images"]
    assert (img["width"], img["height"], img["orig_width"], img["orig_height"]) == (
        150,
        49,
        301,
        99,
    )
    with Image.open(tmp_path / "out" / "images" / "train" / "IDRiD_01.jpg") as im:
        assert im.size == (150, 49)
    sx, sy = 150 / 301, 49 / 99
    he = next(a for a in coco["annotations"] if a["category_id"] == 2)
    np.testing.assert_allclose(
        he["bbox"], [100 * sx, 30 * sy, 60 * sx, 40 * sy], atol=1e-3
    )
    np.testing.assert_allclose(he["area"], 2400 * sx * sy, atol=1e-3)
    ma = next(a for a in coco["annotations"] if a["category_id"] == 1)
    x, y, w, h = ma["bbox"]  # the bottom-right pixel still ends at the image corner
    assert x + w == pytest.approx(150, abs=1e-3) and y + h == pytest.approx(
        49, abs=1e-3
    )


def test_zip_equals_folder(tmp_path):
    make_layout(tmp_path / "in", SPEC)
    archive = tmp_path / "A. Segmentation.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((tmp_path / "in").rglob("*")):
            if path.is_file():  # no folder entries, as many zips
                zf.write(path, path.relative_to(tmp_path / "in").as_posix())
        zf.writestr("__MACOSX/A. Segmentation/._junk", b"x")
    # a zip with folder entries and "A. Segmentation" one level down
    nested = tmp_path / "IDRiD.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        for path in sorted((tmp_path / "in").rglob("*")):
            zf.write(path, "IDRiD/" + path.relative_to(tmp_path / "in").as_posix())
    run(tmp_path / "in" / SEG, tmp_path / "from_folder", max_size=40)
    for name, zipped in (("zip", archive), ("nested", nested)):
        run(zipped, tmp_path / name, max_size=40)
        for split in ("train", "test"):
            a = json.loads(
                (tmp_path / "from_folder" / f"coco_{split}.json").read_text()
            )
            b = json.loads((tmp_path / name / f"coco_{split}.json").read_text())
            a.pop("info"), b.pop("info")
            assert a == b and a["annotations"]
            for im in a["images"]:
                fa = tmp_path / "from_folder" / "images" / split / im["file_name"]
                fb = tmp_path / name / "images" / split / im["file_name"]
                assert fa.read_bytes() == fb.read_bytes()
    # folder entries present: a missing lesion folder is an error in a zip too
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(nested) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            if "b. Testing Set/2. Haemorrhages" not in info.filename:
                dst.writestr(info, src.read(info))
    with pytest.raises(
        IdridLayoutError,
        match="missing folder .*broken.zip:IDRiD/A. Segmentation/"
        "2. All Segmentation Groundtruths/b. Testing Set/2. Haemorrhages",
    ):
        run(broken, tmp_path / "broken")


def test_corrupt_zip_member_is_named_with_the_fix(tmp_path):
    """A damaged archive (bytes of one member changed: a bad CRC) stops with the member
    and the fix, not a zipfile traceback."""
    make_layout(tmp_path / "in", SPEC)
    archive = tmp_path / "A. Segmentation.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted((tmp_path / "in").rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(tmp_path / "in").as_posix())
    with zipfile.ZipFile(archive) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(".jpg"))
    data = bytearray(archive.read_bytes())
    # the member's data follow its 30-byte local header, name and extra field
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len
    data[start + info.compress_size // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(IdridLayoutError) as err:
        run(archive, tmp_path / "out")
    text = str(err.value)
    assert info.filename in text and "is corrupt" in text and "download the official" in text, text


# ------------------------------------------------------------------ validation
def _break(root: Path, how: str) -> str:
    """Damage the valid layout under root (holding "A. Segmentation"); return the text
    the error must contain."""
    tr = "a. Training Set"
    if how == "missing_folder":
        shutil.rmtree(root / GT / "b. Testing Set" / FOLDER["HE"])
        return f"missing folder {root / GT / 'b. Testing Set' / FOLDER['HE']}"
    if how == "image_without_mask":
        for code in ("MA",):
            (root / GT / tr / FOLDER[code] / f"IDRiD_03_{code}.tif").unlink()
        return f"image without any lesion mask: {root / IMG / tr / 'IDRiD_03.jpg'}"
    if how == "size_mismatch":
        path = root / GT / tr / FOLDER["HE"] / "IDRiD_01_HE.tif"
        path.write_bytes(_tif_bytes(_red_mask([(1, 1, 2, 2)], (W, H + 1))))
        return f"size mismatch: mask {path} is {W}x{H + 1}"
    if how == "unexpected_name":
        path = root / GT / tr / FOLDER["MA"] / "IDRiD_01_HE.tif"
        shutil.copy(root / GT / tr / FOLDER["HE"] / "IDRiD_01_HE.tif", path)
        return f"unexpected file {path} in '{FOLDER['MA']}'"
    if how == "unexpected_file":
        path = root / IMG / tr / "notes.txt"
        path.write_text("x")
        return f"unexpected file {path}"
    if how == "mask_without_image":
        (root / IMG / tr / "IDRiD_02.jpg").unlink()
        return (
            f"mask without image: {root / GT / tr / FOLDER['EX'] / 'IDRiD_02_EX.tif'}"
        )
    raise AssertionError(how)


@pytest.mark.parametrize(
    "how",
    [
        "missing_folder",
        "image_without_mask",
        "size_mismatch",
        "unexpected_name",
        "unexpected_file",
        "mask_without_image",
    ],
)
def test_layout_errors_name_the_file(tmp_path, how):
    seg = make_layout(tmp_path / "in", SPEC)
    expected = _break(tmp_path / "in", how)
    with pytest.raises(IdridLayoutError) as err:
        run(seg, tmp_path / "out")  # the "A. Segmentation" folder itself
    assert expected in str(err.value)
    assert "Fix:" in str(err.value)
    assert not (tmp_path / "out" / "coco_train.json").exists()


def test_all_problems_reported_together_and_bad_paths(tmp_path):
    make_layout(tmp_path / "in", SPEC)
    wants = [
        _break(tmp_path / "in", "unexpected_file"),
        _break(tmp_path / "in", "size_mismatch"),
    ]
    with pytest.raises(IdridLayoutError) as err:
        run(
            tmp_path / "in", tmp_path / "out"
        )  # the folder containing "A. Segmentation"
    assert all(w in str(err.value) for w in wants) and "2 problem(s)" in str(err.value)

    with pytest.raises(FileNotFoundError, match="idrid.path"):
        run(tmp_path / "nowhere", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(IdridLayoutError, match="A. Segmentation"):
        run(tmp_path / "empty", tmp_path / "out")
    bad_zip = tmp_path / "other.zip"
    with zipfile.ZipFile(bad_zip, "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(IdridLayoutError, match=str(bad_zip)):
        run(bad_zip, tmp_path / "out")


def test_zero_one_mask_end_to_end(tmp_path):
    seg = make_layout(tmp_path / "in", SPEC)
    path = tmp_path / "in" / GT / "a. Training Set" / FOLDER["MA"] / "IDRiD_03_MA.tif"
    arr = np.zeros((H, W), np.uint8)
    arr[7:9, 4:7] = 1
    path.write_bytes(_tif_bytes(arr))
    summary = run(seg, tmp_path / "out")
    assert summary["splits"]["train"]["zero_one_masks"] == [
        "2. All Segmentation Groundtruths/a. Training Set/1. Microaneurysms/IDRiD_03_MA.tif"
    ]
    coco = json.loads((tmp_path / "out" / "coco_train.json").read_text())
    assert [a["bbox"] for a in coco["annotations"] if a["image_id"] == 3] == [
        [4, 7, 3, 2]
    ]


def test_lesion_table_matches_contract():
    assert [(c["id"], c["name"]) for c in idrid.CATEGORIES] == [
        (1, "microaneurysm"),
        (2, "haemorrhage"),
        (3, "hard_exudate"),
        (4, "soft_exudate"),
    ]
