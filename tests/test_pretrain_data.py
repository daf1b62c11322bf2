"""Crop cache, lesion-window sampler, datasets and the epoch sampler."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from lesioncl.crop.cache import build_crop_cache, open_crop_cache
from lesioncl.pretrain.data import (
    EpochSampler,
    LesionPairDataset,
    WholeImageDataset,
    grow_boxes,
    image_key,
    sample_window,
    view_strength,
    window_start_range,
)
from lesioncl.pretrain.config import PretrainConfig
from lesioncl.pretrain.toydata import write_toy_dataset

SIZE, PATCH = 64, 24


def _boxes_everywhere(size: int, patch: int):
    """Boxes touching every edge and corner, in the middle, small/at-the-limit/too large."""
    for w, h in [(0, 0), (1, 1), (6, 10), (patch, patch), (patch - 0.5, 3), (patch + 7, 5), (5, patch + 9), (40, 50)]:
        for xa, ya in itertools.product(("left", "mid", "right"), ("top", "mid", "bottom")):
            x1 = {"left": 0.0, "mid": (size - w) / 2, "right": size - w}[xa]
            y1 = {"top": 0.0, "mid": (size - h) / 2, "bottom": size - h}[ya]
            yield (x1, y1, x1 + w, y1 + h)


@pytest.mark.parametrize("box", list(_boxes_everywhere(SIZE, PATCH)))
def test_window_is_inside_and_contains_the_box(box):
    rng = np.random.default_rng(0)
    x1, y1, x2, y2 = box
    starts = set()
    for _ in range(60):
        x0, y0 = sample_window(box, PATCH, SIZE, SIZE, rng)
        starts.add((x0, y0))
        assert 0 <= x0 <= SIZE - PATCH and 0 <= y0 <= SIZE - PATCH  # inside the image
        for lo, hi, s in ((x1, x2, x0), (y1, y2, y0)):
            if hi - lo <= PATCH:  # fits: the whole extent is inside the window
                assert s <= lo and hi <= s + PATCH
            else:  # too large: the window is centred on the box (clamped to the image)
                assert lo <= s and s + PATCH <= hi
                assert abs((s + PATCH / 2) - (lo + hi) / 2) <= 1
    if x2 - x1 <= PATCH - 4 and y2 - y1 <= PATCH - 4 and 0 < x1 and x2 < SIZE:
        assert len(starts) > 1  # a random offset, not a fixed position


def test_window_offsets_cover_every_valid_position():
    rng = np.random.default_rng(1)
    box = (30, 30, 34, 34)  # 4 px box: starts 10..30 are valid along each axis
    xs = {sample_window(box, PATCH, SIZE, SIZE, rng)[0] for _ in range(2000)}
    assert xs == set(range(34 - PATCH, 31))


def test_window_range_at_the_edges_shifts_instead_of_padding():
    assert window_start_range(0, 3, 24, 64) == (0, 0)  # box at the left edge
    assert window_start_range(61, 64, 24, 64) == (40, 40)  # box at the right edge
    assert window_start_range(2, 5, 24, 64) == (0, 2)
    assert window_start_range(0, 64, 24, 64) == (20, 20)  # larger than the window: centred
    with pytest.raises(ValueError, match="larger than the image"):
        window_start_range(0, 1, 65, 64)


def test_boxes_outside_the_image_are_clipped():
    rng = np.random.default_rng(2)
    for box in [(-10, -10, 3, 3), (60, 60, 90, 90)]:
        x0, y0 = sample_window(box, PATCH, SIZE, SIZE, rng)
        assert 0 <= x0 <= SIZE - PATCH and 0 <= y0 <= SIZE - PATCH


# ----------------------------------------------------------------------------- cache
@pytest.fixture
def toy(tmp_path):
    return write_toy_dataset(tmp_path, n_train=6, n_val=3, size=SIZE, seed=0)


def test_cache_round_trip(toy, tmp_path):
    npy = tmp_path / "cache" / "crops_train.npy"
    n = build_crop_cache(toy["manifest"], "train", SIZE, npy, npy.with_suffix(".csv"))
    array, rows = open_crop_cache(npy)
    assert n == 6 and array.shape == (6, SIZE, SIZE, 3) and array.dtype == np.uint8
    assert isinstance(array, np.memmap)
    manifest = pd.read_csv(toy["manifest"])
    expected = manifest[manifest["split"] == "train"]
    assert list(rows.columns) == ["image", "level", "split"]
    assert rows["image"].tolist() == expected["image"].tolist()
    for i, path in enumerate(expected["path"]):
        np.testing.assert_array_equal(array[i], np.asarray(Image.open(path).convert("RGB")))
    assert not list(npy.parent.glob(".*tmp"))  # atomic writes leave nothing behind


def test_cache_rejects_wrong_size_and_bad_files(toy, tmp_path):
    npy = tmp_path / "c.npy"
    with pytest.raises(ValueError, match=r"expected 32x32 \(crop.size\)"):
        build_crop_cache(toy["manifest"], "train", 32, npy, tmp_path / "c.csv")
    assert not npy.exists()
    manifest = pd.read_csv(toy["manifest"])
    bad = tmp_path / "broken.jpeg"
    bad.write_bytes(b"not a jpeg")
    manifest.loc[0, "path"] = str(bad)
    manifest.to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(ValueError, match="broken.jpeg: cannot decode"):
        build_crop_cache(tmp_path / "m.csv", "train", SIZE, npy, tmp_path / "c.csv")
    manifest.drop(columns=["path"]).to_csv(tmp_path / "m2.csv", index=False)
    with pytest.raises(ValueError, match=r"m2.csv: missing columns \['path'\]"):
        build_crop_cache(tmp_path / "m2.csv", "train", SIZE, npy, tmp_path / "c.csv")
    with pytest.raises(ValueError, match="no image of split 'test'"):
        build_crop_cache(toy["manifest"], "test", SIZE, npy, tmp_path / "c.csv")


def test_cache_mismatched_listing_is_an_error(toy, tmp_path):
    npy = tmp_path / "crops_train.npy"
    build_crop_cache(toy["manifest"], "train", SIZE, npy, npy.with_suffix(".csv"))
    pd.read_csv(npy.with_suffix(".csv")).head(2).to_csv(npy.with_suffix(".csv"), index=False)
    with pytest.raises(ValueError, match="rerun the crop_cache rule"):
        open_crop_cache(npy)


def test_cache_cut_short_is_named_with_the_fix(toy, tmp_path):
    """An interrupted copy of the .npy (shorter, or longer, than its header says) is a
    clear error before any read, not numpy's mmap error."""
    npy = tmp_path / "crops_train.npy"
    build_crop_cache(toy["manifest"], "train", SIZE, npy, npy.with_suffix(".csv"))
    data = npy.read_bytes()
    npy.write_bytes(data[:-1000])
    with pytest.raises(ValueError, match=r"crops_train.npy: \d+ bytes, but its header describes .* truncated"
                                         r".*rerun the crop_cache rule, or copy it again"):
        open_crop_cache(npy)
    npy.write_bytes(data + b"\0" * 10)
    with pytest.raises(ValueError, match="too long"):
        open_crop_cache(npy)
    npy.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(ValueError, match="not a readable .npy file"):
        open_crop_cache(npy)
    npy.write_bytes(data)
    assert open_crop_cache(npy)[0].shape[0] == 6


def test_crops_deleted_after_the_manifest_are_all_named(toy, tmp_path):
    """Crops removed from the crop folder after crop_merge: every missing one is counted
    and the fix given, before anything is decoded or written."""
    manifest = pd.read_csv(toy["manifest"])
    train = manifest[manifest["split"] == "train"]["path"].tolist()
    for path in train[:2]:
        Path(path).unlink()
    npy = tmp_path / "crops_train.npy"
    with pytest.raises(FileNotFoundError) as info:
        build_crop_cache(toy["manifest"], "train", SIZE, npy, npy.with_suffix(".csv"))
    text = str(info.value)
    assert "2 of the 6 crops it lists do not exist" in text and train[0] in text, text
    assert "--forcerun crop_shard" in text
    assert not npy.exists()


# ----------------------------------------------------------------------------- datasets
@pytest.fixture
def coord_cache(tmp_path):
    """A cache whose pixels encode their coordinates: R = x, G = y, B = image row."""
    n = 3
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    array = np.lib.format.open_memmap(tmp_path / "crops_train.npy", mode="w+", dtype=np.uint8, shape=(n, SIZE, SIZE, 3))
    for i in range(n):
        array[i] = np.stack([xx, yy, np.full_like(xx, i)], axis=-1)
    array.flush()
    del array
    pd.DataFrame({"image": ["a_left", "b_right", "c_left"], "level": [0, 1, 2], "split": "train"}).to_csv(
        tmp_path / "crops_train.csv", index=False
    )
    return tmp_path / "crops_train.npy"


def test_lesion_pairs_are_windows_around_one_box(coord_cache):
    boxes = {
        "a_left.jpeg": [(0, 0, 4, 4), (58, 58, 64, 64)],  # corners
        "b_right.jpeg": [(30, 2, 40, 12)],
        "c_left.jpeg": [],  # no lesion: left out
    }
    ds = LesionPairDataset(coord_cache, boxes, PATCH, seed=3)
    assert len(ds) == 2
    chosen = set()
    for epoch, index in itertools.product(range(20), range(len(ds))):
        pair = ds[(epoch, index)]
        assert pair.dtype == torch.uint8 and pair.shape == (2, PATCH, PATCH, 3)
        row = int(pair[0, 0, 0, 2])
        assert row == index  # rows 0 and 1 of the cache
        candidates = boxes["a_left.jpeg" if row == 0 else "b_right.jpeg"]
        box_hits = []
        for view in pair.numpy():
            x0, y0 = int(view[0, 0, 0]), int(view[0, 0, 1])
            np.testing.assert_array_equal(view[..., 0], np.arange(x0, x0 + PATCH)[None, :].repeat(PATCH, 0))
            np.testing.assert_array_equal(view[..., 1], np.arange(y0, y0 + PATCH)[:, None].repeat(PATCH, 1))
            box_hits.append({b for b in candidates if x0 <= b[0] and b[2] <= x0 + PATCH and y0 <= b[1] and b[3] <= y0 + PATCH})
        common = box_hits[0] & box_hits[1]
        assert common, "both windows must contain the same lesion box"
        chosen |= common
    assert len(chosen) == 3  # both boxes of image a get picked over the epochs
    # reproducible per (epoch, index), different across epochs
    assert torch.equal(ds[(5, 0)], ds[(5, 0)])
    assert not all(torch.equal(ds[(e, 1)], ds[(0, 1)]) for e in range(1, 6))


def test_view_warmup_slides_the_second_window_from_the_first(coord_cache):
    boxes = {"a_left.jpeg": [(30, 30, 33, 33)], "b_right.jpeg": [(10, 40, 14, 44)]}
    plain = LesionPairDataset(coord_cache, boxes, PATCH, seed=3)
    warm = LesionPairDataset(coord_cache, boxes, PATCH, seed=3, view_warmup_epochs=4)
    assert [view_strength(e, 4) for e in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert view_strength(0, 0) == 1.0
    moved = 0
    for epoch, index in itertools.product(range(6), range(2)):
        box = list(boxes.values())[index][0]
        reference, pair = plain[(epoch, index)].numpy(), warm[(epoch, index)].numpy()
        np.testing.assert_array_equal(pair[0], reference[0])  # the first window: the same draws
        start, end = reference[0, 0, 0, :2].astype(float), reference[1, 0, 0, :2].astype(float)
        expected = np.round(start + view_strength(epoch, 4) * (end - start))
        x0, y0 = (int(v) for v in pair[1, 0, 0, :2])
        assert (x0, y0) == tuple(expected.astype(int)), (epoch, index)
        assert x0 <= box[0] and box[2] <= x0 + PATCH and y0 <= box[1] and box[3] <= y0 + PATCH
        moved += epoch in (1, 2, 3) and not np.array_equal(pair[1], reference[1])
        if epoch == 0:
            assert np.array_equal(pair[0], pair[1])  # one window twice
        if epoch >= 4:
            assert np.array_equal(pair, reference)  # then the paper's views
    assert moved  # in between, the second window sits part of the way


def test_box_margin_keeps_the_lesion_away_from_the_window_border(coord_cache):
    """pretrain.box_margin: both windows contain the box grown by the margin, so a 1-px lesion
    sits at least that far from their borders; 0 leaves the paper's windows unchanged."""
    lesion = (30, 30, 31, 31)
    boxes = {"a_left.jpeg": [lesion], "b_right.jpeg": [(1, 1, 2, 2)]}  # the second at a corner
    margin = 4
    grown = LesionPairDataset(coord_cache, boxes, PATCH, seed=3, box_margin=margin)
    plain = LesionPairDataset(coord_cache, boxes, PATCH, seed=3)
    near_border = 0
    for epoch in range(40):
        for view in grown[(epoch, 0)].numpy():
            x0, y0 = int(view[0, 0, 0]), int(view[0, 0, 1])
            assert x0 + margin <= lesion[0] and lesion[2] + margin <= x0 + PATCH
            assert y0 + margin <= lesion[1] and lesion[3] + margin <= y0 + PATCH
        for view in plain[(epoch, 0)].numpy():
            x0, y0 = int(view[0, 0, 0]), int(view[0, 0, 1])
            near_border += min(lesion[0] - x0, x0 + PATCH - lesion[2]) < margin
        corner = grown[(epoch, 1)].numpy()[0]  # clipped at the crop's edge: still inside
        assert int(corner[0, 0, 0]) == 0 and int(corner[0, 0, 1]) == 0
    assert near_border  # without the margin the lesion does reach the border
    np.testing.assert_array_equal(grow_boxes(np.array([[1.0, 2, 3, 4]]), 0, SIZE), [[1, 2, 3, 4]])
    np.testing.assert_array_equal(grow_boxes(np.array([[1.0, 2, 3, 4]]), 2, SIZE), [[0, 0, 5, 6]])
    with pytest.raises(ValueError, match="box_margin"):
        LesionPairDataset(coord_cache, boxes, PATCH, box_margin=-1)


def test_index_and_cache_must_agree(coord_cache):
    with pytest.raises(ValueError, match=r"lesion_index.pkl \[train\]: 1 images are not in the crop cache"):
        LesionPairDataset(coord_cache, {"zz_left.jpeg": [(1, 1, 2, 2)]}, PATCH, index_file="lesion_index.pkl [train]")
    with pytest.raises(ValueError, match="malformed boxes"):
        LesionPairDataset(coord_cache, {"a_left.jpeg": [(5, 5, 2, 9)]}, PATCH)
    with pytest.raises(ValueError, match="larger than the cached crops"):
        LesionPairDataset(coord_cache, {"a_left.jpeg": [(1, 1, 2, 2)]}, SIZE + 1)


def test_whole_image_dataset_and_pickling(coord_cache):
    ds = WholeImageDataset(coord_cache, seed=0, stream=0)
    item = ds[(3, 2)]
    assert item.shape == (1, SIZE, SIZE, 3) and int(item[0, 0, 0, 2]) == 2
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
    assert clone._images is None and len(pickle.dumps(ds)) < 10_000
    assert torch.equal(clone[(0, 1)], ds[(0, 1)])


def test_image_key():
    assert image_key("10_left.jpeg") == image_key("10_left") == "10_left"


def test_epoch_sampler_shards_are_the_single_process_batches():
    n, world, local = 23, 2, 5
    single = [i for _, i in EpochSampler(n, seed=4)]
    assert sorted(single) == list(range(n))
    shards = []
    for rank in range(world):
        s = EpochSampler(n, seed=4, rank=rank, world_size=world)
        s.set_epoch(0)
        shards.append([i for _, i in s])
    for b in range(len(shards[0]) // local):
        global_batch = set(single[b * local * world : (b + 1) * local * world])
        assert set(shards[0][b * local : (b + 1) * local]) | set(shards[1][b * local : (b + 1) * local]) == global_batch
    s = EpochSampler(n, seed=4)
    s.set_epoch(1)
    epoch1 = [i for _, i in s]
    assert epoch1 != single and sorted(epoch1) == list(range(n))
    s.set_epoch(1, skip=7)
    assert [i for _, i in s] == epoch1[7:] and len(s) == n - 7
    assert all(e == 1 for e, _ in s)


def test_epoch_sampler_with_more_samples_than_items(coord_cache):
    """pretrain.samples_per_epoch: further shuffled rounds, every item once per round, each
    further draw with its own key; samples = n is exactly the plain epoch."""
    n = 7
    plain = EpochSampler(n, seed=2)
    plain.set_epoch(3)
    same = EpochSampler(n, seed=2, samples=n)
    same.set_epoch(3)
    assert list(same) == list(plain)
    s = EpochSampler(n, seed=2, samples=17)
    s.set_epoch(3)
    keys = [i for _, i in s]
    assert len(keys) == len(s) == 17 and len(set(keys)) == 17
    assert keys[:n] == [i for _, i in plain]  # round 0 is the plain epoch
    counts = np.bincount([k % n for k in keys], minlength=n)
    assert counts.min() >= 2 and counts.max() <= 3  # each item once per (full) round
    shards = []
    for rank in range(2):
        r = EpochSampler(n, seed=2, rank=rank, world_size=2, samples=17)
        r.set_epoch(3)
        shards.append([i for _, i in r])
    assert shards[0] + shards[1] and set(shards[0]) | set(shards[1]) == set(keys[:16])
    # the datasets map key k to item k % n, with draws of the key's own
    boxes = {"a_left.jpeg": [(30, 30, 31, 31)], "b_right.jpeg": [(10, 10, 12, 12)]}
    ds = LesionPairDataset(coord_cache, boxes, PATCH, seed=3)
    again = ds[(0, 2)].numpy()  # item 0, second round
    assert int(again[0, 0, 0, 2]) == 0
    assert not np.array_equal(again, ds[(0, 0)].numpy())
    whole = WholeImageDataset(coord_cache)
    assert torch.equal(whole[(0, 4)], whole[(0, 1)])  # 3 images: key 4 is image 1
    with pytest.raises(ValueError, match="samples_per_epoch"):
        PretrainConfig(mode="whole", train_cache="x", out_dir="y", samples_per_epoch=1)


def test_whole_images_are_shrunk_in_the_worker(coord_cache):
    ds = WholeImageDataset(coord_cache, size=16)
    item = ds[(0, 1)]
    assert item.shape == (1, 16, 16, 3) and item.dtype == torch.uint8
    # area interpolation: block means of the x ramp
    assert int(item[0, 0, 0, 0]) == round(np.arange(4).mean()) and int(item[0, 0, -1, 0]) == round(np.arange(60, 64).mean())
    assert int(item[0, 5, 5, 2]) == 1
