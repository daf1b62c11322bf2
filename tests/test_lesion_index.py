"""The lesion index: rescaling, filters, the pickle format and the safe loader."""

from __future__ import annotations

import json
import os
import pickle
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from lesioncl.adapter import Job
from lesioncl.lesions import (
    DETECTION_COLUMNS,
    IndexSettings,
    build_lesion_index,
    filter_reasons,
    load_lesion_index,
    make_index,
    rescale_boxes,
    shard_rows,
)


# ----------------------------------------------------------------------- safe loader
class _Exploit:
    """Unpickling this runs a shell command (the classic pickle attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_safe_loader_refuses_code_execution(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"train": {"1_left.jpeg": [(1.0, 2.0, 3.0, 4.0)]}, "x": _Exploit(marker)}))
    with pytest.raises(ValueError, match=r"evil\.pkl.*refusing to load global"):
        load_lesion_index(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload", [
    (eval, ("1+1",)),  # builtins.eval
    (pd.DataFrame, ()),  # any class, even a harmless one
])
def test_safe_loader_refuses_any_global(tmp_path, payload):
    class Obj:
        def __reduce__(self):
            return payload

    path = tmp_path / "g.pkl"
    path.write_bytes(pickle.dumps({"train": {"a.jpeg": [Obj()]}}))
    with pytest.raises(ValueError, match="refusing"):
        load_lesion_index(path)


def test_safe_loader_accepts_a_valid_index(tmp_path):
    index = {
        "train": {"10_left.jpeg": [(10.5, 20.0, 30.25, 40.0), (100, 100, 110, 120)]},
        "val": {"13_right.jpeg": [(6.0, 7.0, 8.0, 9.0)]},
    }
    path = tmp_path / "ok.pkl"
    path.write_bytes(pickle.dumps(index))
    loaded = load_lesion_index(path, required_splits=("train", "val"), size=512, max_box_size=128)
    assert loaded == {
        "train": {"10_left.jpeg": [(10.5, 20.0, 30.25, 40.0), (100.0, 100.0, 110.0, 120.0)]},
        "val": {"13_right.jpeg": [(6.0, 7.0, 8.0, 9.0)]},
    }
    assert all(type(v) is float for box in loaded["train"]["10_left.jpeg"] for v in box)


def test_safe_loader_accepts_numpy_scalar_boxes(tmp_path):
    """A detector's np.float32 / np.float64 coordinates (the authors' file) load as floats."""
    index = {"train": {"1_left.jpeg": [tuple(np.float32(v) for v in (1.5, 2, 3, 4)),
                                       [np.float64(10), np.int64(11), 12.0, 13]]}}
    path = tmp_path / "np.pkl"
    path.write_bytes(pickle.dumps(index))
    loaded = load_lesion_index(path)
    assert loaded["train"]["1_left.jpeg"] == [(1.5, 2.0, 3.0, 4.0), (10.0, 11.0, 12.0, 13.0)]
    assert all(type(v) is float for box in loaded["train"]["1_left.jpeg"] for v in box)


def test_safe_loader_refuses_numpy_arrays_and_object_scalars(tmp_path):
    path = tmp_path / "arr.pkl"
    path.write_bytes(pickle.dumps({"train": {"1_left.jpeg": [np.array([1.0, 2.0, 3.0, 4.0])]}}))
    with pytest.raises(ValueError, match="refusing"):
        load_lesion_index(path)


@pytest.mark.parametrize("obj, needle", [
    ([("a", 1)], "top level is a list"),
    ({"train": ["1_left.jpeg"]}, "must be a string mapping to a dict"),
    ({"train": {"1_left.jpeg": [(1, 2, 3)]}}, "is not 4 numbers"),
    ({"train": {"1_left.jpeg": [(5, 2, 3, 4)]}}, "x1 <= x2"),
    ({"train": {"1_left.jpeg": [(1, 2, 3, float("nan"))]}}, "finite"),
    ({"train": {"1_left.jpeg": [("1", 2, 3, 4)]}}, "is not 4 numbers"),
])
def test_loader_validates_structure(tmp_path, obj, needle):
    path = tmp_path / "bad.pkl"
    path.write_bytes(pickle.dumps(obj))
    with pytest.raises(ValueError, match=needle):
        load_lesion_index(path)


def test_loader_drops_empty_lists_and_checks_limits(tmp_path, caplog):
    path = tmp_path / "i.pkl"
    path.write_bytes(pickle.dumps({"train": {"a.jpeg": [], "b.jpeg": [(1, 1, 200, 20)]}}))
    loaded = load_lesion_index(path)
    assert loaded == {"train": {"b.jpeg": [(1.0, 1.0, 200.0, 20.0)]}}
    assert "a.jpeg" in caplog.text
    with pytest.raises(ValueError, match="larger than 128"):
        load_lesion_index(path, max_box_size=128)
    with pytest.raises(ValueError, match="leaves the 100x100"):
        load_lesion_index(path, size=100)
    with pytest.raises(ValueError, match=r"no \['val'\] split"):
        load_lesion_index(path, required_splits=("train", "val"))


# ----------------------------------------------------------------------- rescaling
def test_rescale_non_square_crop_scales_each_axis_by_its_own_size():
    # detection crop 800 wide x 400 high -> 512 x 512
    box = np.array([[400.0, 100.0, 600.0, 300.0]])
    out = rescale_boxes(box, det_width=800, det_height=400, size=512)
    np.testing.assert_allclose(out, [[256.0, 128.0, 384.0, 384.0]])
    # the original bug: width and height swapped (size read as (w, h) = shape[:2])
    swapped = rescale_boxes(box, det_width=400, det_height=800, size=512)
    assert not np.allclose(out, swapped)
    # a square crop is unaffected by the order
    np.testing.assert_allclose(rescale_boxes(box, 1024, 1024, 512), box / 2)


def test_shard_rows_partition_train_and_val():
    manifest = pd.DataFrame({"image": [f"{i}_left" for i in range(11)],
                             "split": ["train", "val", "test"] * 3 + ["train", "val"]})
    shards = [shard_rows(manifest, s, 3) for s in range(3)]
    images = sorted(sum((list(s["image"]) for s in shards), []))
    wanted = sorted(manifest.loc[manifest["split"] != "test", "image"])
    assert images == wanted
    trainval = manifest[manifest["split"] != "test"].reset_index(drop=True)
    assert list(shards[1]["image"]) == list(trainval["image"][1::3])
    with pytest.raises(ValueError, match="outside"):
        shard_rows(manifest, 3, 3)


# ----------------------------------------------------------------------- filters
def _dets(rows):
    base = dict(image="1_left", split="train", label=0, label_name="microaneurysm",
                det_x1=0.0, det_y1=0.0, det_x2=1.0, det_y2=1.0, det_width=512, det_height=512)
    return pd.DataFrame([{**base, **r} for r in rows], columns=DETECTION_COLUMNS)


FILTER = dict(score_threshold=0.5, max_box_size=128, border_margin=5, size=512)


@pytest.mark.parametrize("row, reason", [
    (dict(score=0.5, x1=100, y1=100, x2=110, y2=110), "score"),  # equal: not above
    (dict(score=0.5001, x1=100, y1=100, x2=110, y2=110), ""),
    (dict(score=0.9, x1=100, y1=100, x2=228, y2=110), ""),  # width exactly 128
    (dict(score=0.9, x1=100, y1=100, x2=228.2, y2=110), "size"),
    (dict(score=0.9, x1=100, y1=100, x2=110, y2=228.2), "size"),
    (dict(score=0.9, x1=5, y1=100, x2=110, y2=110), "border"),  # on the margin: not inside
    (dict(score=0.9, x1=5.1, y1=100, x2=110, y2=110), ""),
    (dict(score=0.9, x1=100, y1=5, x2=110, y2=110), "border"),
    (dict(score=0.9, x1=400, y1=100, x2=507, y2=110), "border"),
    (dict(score=0.9, x1=400, y1=400, x2=506.9, y2=506.9), ""),
    (dict(score=0.9, x1=400, y1=400, x2=506.96, y2=480), "border"),  # rounds to 507.0
    (dict(score=0.9, x1=100, y1=400, x2=110, y2=507), "border"),
    (dict(score=0.2, x1=0, y1=0, x2=300, y2=300), "score"),  # first failing rule
])
def test_filter_edges(row, reason):
    assert filter_reasons(_dets([row]), **FILTER).tolist() == [reason]


def test_make_index_format():
    dets = _dets([
        dict(image="2_right", split="val", score=0.7, x1=10.04, y1=20.06, x2=30.0, y2=40.0),
        dict(image="1_left", split="train", score=0.6, x1=1, y1=2, x2=3, y2=4),
        dict(image="1_left", split="train", score=0.9, x1=5, y1=6, x2=7, y2=8),
    ])
    index = make_index(dets)
    assert index == {"train": {"1_left.jpeg": [(5.0, 6.0, 7.0, 8.0), (1.0, 2.0, 3.0, 4.0)]},
                     "val": {"2_right.jpeg": [(10.0, 20.1, 30.0, 40.0)]}}
    assert all(type(v) is float for v in index["val"]["2_right.jpeg"][0])


# ----------------------------------------------------------------------- the whole merge
def test_build_lesion_index_end_to_end(tmp_path):
    size = 64
    rows = []
    for i, split in enumerate(["train", "train", "val", "test", "train"]):
        path = tmp_path / "crops" / f"{i}_left.jpeg"
        path.parent.mkdir(exist_ok=True)
        Image.new("RGB", (size, size), (120, 40, 20)).save(path)
        rows.append(dict(image=f"{i}_left", split=split, path=str(path), det_path=str(path),
                         det_width=size * 2, det_height=size))
    manifest = tmp_path / "crop_manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    filt = dict(score_threshold=0.5, max_box_size=16, border_margin=2, size=size)
    shard0 = _dets([
        dict(image="0_left", split="train", score=0.9, x1=10, y1=10, x2=20, y2=20),
        dict(image="0_left", split="train", score=0.8, x1=30, y1=30, x2=40, y2=44),
        dict(image="0_left", split="train", score=0.3, x1=10, y1=10, x2=20, y2=20),  # score
        dict(image="1_left", split="train", score=0.9, x1=1, y1=10, x2=12, y2=20),  # border only
    ])
    shard1 = _dets([
        dict(image="2_left", split="val", score=0.99, x1=5, y1=5, x2=30, y2=10),  # too wide
        dict(image="2_left", split="val", score=0.6, x1=50, y1=50, x2=60, y2=61),
    ])
    paths = []
    for k, table in enumerate([shard0, shard1, _dets([])]):
        paths.append(tmp_path / f"shard_{k}.csv")
        table.to_csv(paths[-1], index=False)
    out = {n: tmp_path / "out" / n for n in ("i.pkl", "i.json", "s.json", "h.png", "qc.png")}
    summary = build_lesion_index(paths, manifest, out_pkl=out["i.pkl"], out_json=out["i.json"],
                                 out_summary=out["s.json"], out_histogram=out["h.png"],
                                 out_qc=out["qc.png"], settings=IndexSettings(qc_images=4, **filt))
    with open(out["i.pkl"], "rb") as fh:
        plain = pickle.load(fh)  # the authors' loader: plain pickle
    assert plain == {"train": {"0_left.jpeg": [(10.0, 10.0, 20.0, 20.0), (30.0, 30.0, 40.0, 44.0)]},
                     "val": {"2_left.jpeg": [(50.0, 50.0, 60.0, 61.0)]}}
    assert load_lesion_index(out["i.pkl"], size=size, max_box_size=16) == plain
    as_json = json.loads(out["i.json"].read_text())
    assert {s: {k: [tuple(b) for b in v] for k, v in imgs.items()} for s, imgs in as_json.items()} == plain
    for boxes in (b for imgs in plain.values() for b in imgs.values()):
        for x1, y1, x2, y2 in boxes:
            assert 2 < min(x1, y1) and max(x2, y2) < size - 2
            assert x2 - x1 <= 16 and y2 - y1 <= 16
    train = summary["splits"]["train"]
    assert (train["images_in"], train["images_with_boxes"], train["images_without_boxes"], train["boxes"]) == (3, 1, 2, 2)
    assert train["boxes_per_image_histogram"][:3] == [2, 0, 1] and sum(train["boxes_per_image_histogram"]) == 3
    assert summary["splits"]["val"]["images_in"] == 1
    assert summary["dropped"] == {"score": 1, "size": 1, "border": 1}
    assert json.loads(out["s.json"].read_text())["kept"] == 3
    for png in (out["h.png"], out["qc.png"]):
        assert Image.open(png).size[0] > 100


def test_build_lesion_index_rejects_stale_shards(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame([dict(image="0_left", split="train", path="x", det_path="x", det_width=8, det_height=8)]).to_csv(manifest, index=False)
    shard = tmp_path / "s.csv"
    _dets([dict(image="99_left", split="train", score=0.9, x1=1, y1=1, x2=2, y2=2)]).to_csv(shard, index=False)
    with pytest.raises(ValueError, match="stale"):
        build_lesion_index([shard], manifest, out_pkl=tmp_path / "a", out_json=tmp_path / "b",
                           out_summary=tmp_path / "c", out_histogram=tmp_path / "d", out_qc=tmp_path / "e",
                           settings=IndexSettings(score_threshold=0.5, max_box_size=8, border_margin=0, size=8))


def test_build_lesion_index_with_no_detections(tmp_path):
    manifest = tmp_path / "m.csv"
    pd.DataFrame([dict(image=f"{i}_left", split=s, path="x", det_path="x", det_width=8, det_height=8)
                  for i, s in enumerate(["train", "val", "val"])]).to_csv(manifest, index=False)
    shard = tmp_path / "s.csv"
    _dets([]).to_csv(shard, index=False)
    out = {n: tmp_path / n for n in ("i.pkl", "i.json", "s.json", "h.png", "qc.png")}
    summary = build_lesion_index([shard], manifest, out_pkl=out["i.pkl"], out_json=out["i.json"],
                                 out_summary=out["s.json"], out_histogram=out["h.png"], out_qc=out["qc.png"],
                                 settings=IndexSettings(score_threshold=0.5, max_box_size=8, border_margin=0, size=8))
    assert load_lesion_index(out["i.pkl"]) == {"train": {}, "val": {}}
    assert summary["splits"]["val"]["images_without_boxes"] == 2
    assert summary["detections"] == 0 and out["qc.png"].is_file()


def test_index_settings_check_the_margin_and_name_unknown_keys(tmp_path):
    with pytest.raises(ValueError, match=r"border_margin=32 must lie in \[0, size/2=32.0\)"):
        IndexSettings(border_margin=32, size=64)
    smk = SimpleNamespace(input=[], output=[], wildcards={}, threads=1, log=[], config={},
                          rule="lesions_index",
                          params=SimpleNamespace(settings={"score_threshold": 0.3, "max_boxsize": 32}))
    with pytest.raises(ValueError, match=r"unknown IndexSettings settings \['max_boxsize'\]"):
        Job(smk).settings(IndexSettings)
