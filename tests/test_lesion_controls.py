"""Window sources beside the detector's index: the truth index, the random-window control,
and the index's quality against the truth."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from lesioncl.lesions.controls import (
    RandomIndexSettings,
    SalientIndexSettings,
    TruthIndexSettings,
    fov_mask,
    place_boxes,
    random_index,
    salient_index,
    salient_places,
    truth_boxes,
    truth_index,
)
from lesioncl.lesions.quality import index_quality


def _manifest(rows):
    return pd.DataFrame(
        rows, columns=["image", "split", "level", "box_x1", "box_y1", "box_x2", "box_y2"]
    )


def test_truth_boxes_map_raw_pixels_into_the_crop():
    # a 1000x800 raw image whose crop box is (100, -100)-(900, 700): 800 px -> 200 px crop
    manifest = _manifest([["1_left", "train", 2, 100, -100, 900, 700]])
    lesions = pd.DataFrame(
        [
            ["1_left", "haemorrhage", 500, 300, 540, 320],
            ["1_left", "microaneurysm", 0, 0, 4, 4],  # outside the crop on the left
            ["9_right", "haemorrhage", 10, 10, 20, 20],  # image not cropped (rejected)
        ],
        columns=["image", "kind", "x1", "y1", "x2", "y2"],
    )
    out = truth_boxes(lesions, manifest, size=200)
    assert len(out) == 1
    row = out.iloc[0]
    assert (row.x1, row.y1, row.x2, row.y2) == (100.0, 100.0, 110.0, 105.0)
    assert row.split == "train" and row.level == 2 and row.kind == "haemorrhage"


def test_truth_index_filters_like_the_detector_index_and_by_kind():
    boxes = pd.DataFrame(
        [
            ["a", "train", 2, "haemorrhage", 50, 50, 60, 58],
            ["a", "train", 2, "microaneurysm", 80, 80, 81, 81],
            ["a", "train", 2, "soft_exudate", 10, 10, 80, 40],  # 70 px wide: too large
            ["b", "val", 1, "microaneurysm", 1, 100, 3, 102],  # at the border
            ["c", "test", 3, "haemorrhage", 50, 50, 60, 60],  # test split: never indexed
        ],
        columns=["image", "split", "level", "kind", "x1", "y1", "x2", "y2"],
    )
    settings = TruthIndexSettings(max_box_size=32, border_margin=5, size=200)
    index, counts = truth_index(boxes, settings)
    assert index["train"] == {"a.jpeg": [(50.0, 50.0, 60.0, 58.0), (80.0, 80.0, 81.0, 81.0)]}
    assert index["val"] == {}
    assert counts["dropped_size"] == {"soft_exudate": 1}
    assert counts["dropped_border"] == {"microaneurysm": 1}
    no_ma, _ = truth_index(
        boxes, TruthIndexSettings(("haemorrhage",), max_box_size=32, border_margin=5, size=200)
    )
    assert no_ma["train"] == {"a.jpeg": [(50.0, 50.0, 60.0, 58.0)]}
    with pytest.raises(ValueError, match="never drew"):
        truth_index(boxes, TruthIndexSettings(("cataract",), size=200))


def _disc_crop(size=128, radius=50):
    yy, xx = np.mgrid[:size, :size]
    inside = (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < radius**2
    image = np.zeros((size, size, 3), np.uint8)
    image[inside] = (180, 90, 40)
    return image


def test_random_boxes_keep_count_and_sizes_and_stay_in_the_field_of_view():
    image = _disc_crop()
    mask = fov_mask(image)
    boxes = place_boxes([(10, 6), (2, 2), (20, 20)], mask, np.random.default_rng(0), 5)
    assert [(round(x2 - x1, 1), round(y2 - y1, 1)) for x1, y1, x2, y2 in boxes] == [
        (10, 6), (2, 2), (20, 20)
    ]
    for x1, y1, x2, y2 in boxes:
        for x, y in [(x1, y1), (x2, y1), (x1, y2), (x2, y2)]:
            assert mask[int(y), int(x)]


def test_random_index_is_uniform_over_the_field_of_view_and_seeded():
    images = np.stack([_disc_crop(), _disc_crop()])
    rows = pd.DataFrame({"image": ["a", "b"], "level": [0, 2], "split": ["train", "train"]})
    index = {"train": {"a.jpeg": [(60.0, 60.0, 64.0, 64.0)] * 400, "b.jpeg": [(1, 1, 9, 9)]},
             "val": {}}
    settings = RandomIndexSettings(border_margin=5, size=128, seed=3)
    out = random_index(index, {"train": (images, rows)}, settings)
    assert len(out["train"]["a.jpeg"]) == 400 and len(out["train"]["b.jpeg"]) == 1
    centres = np.array([((x1 + x2) / 2, (y1 + y2) / 2) for x1, y1, x2, y2 in out["train"]["a.jpeg"]])
    # uniform over the disc (radius 50, minus the box's half-diagonal): mean at the centre,
    # and spread like a disc, not piled up at the old place
    assert np.allclose(centres.mean(axis=0), 64, atol=4)
    r = np.hypot(*(centres - 64).T)
    assert 0.55 < np.median(r) / 47 < 0.85  # a uniform disc's median radius is 0.71 R
    assert out == random_index(index, {"train": (images, rows)}, settings)
    other = random_index(index, {"train": (images, rows)}, RandomIndexSettings(5, 128, seed=4))
    assert other != out
    with pytest.raises(ValueError, match="not in the train crop cache"):
        random_index({"train": {"zz.jpeg": [(1, 1, 2, 2)]}}, {"train": (images, rows)}, settings)


def _dotted_crop(size=256):
    """A flat disc with three dark dots of decreasing contrast and a faint one."""
    image = _disc_crop(size, radius=120)
    for (x, y), depth in [((80, 90), 80), ((170, 150), 60), ((120, 190), 40), ((150, 70), 6)]:
        image[y - 2 : y + 3, x - 2 : x + 3] = (180 - depth, 90 - depth, 40)
    return image


def test_salient_places_are_the_contrasted_structures_strongest_first():
    centres, response = salient_places(_dotted_crop(), 256)
    assert [tuple(c) for c in centres[:3]] == [(80, 90), (170, 150), (120, 190)]
    assert np.all(np.diff(response) <= 0)
    # never on the field of view's edge (the strongest contrast of a crop)
    assert np.all(np.hypot(*(centres - 128).T) < 120 - 12)
    # the filter scales with the crop: the same picture at 512 px, the same places
    big = np.repeat(np.repeat(_dotted_crop(), 2, axis=0), 2, axis=1)
    centres2, _ = salient_places(big, 512)
    assert np.allclose(centres2[:3] // 2, centres[:3], atol=1)


def test_salient_index_keeps_sizes_places_boxes_on_structures_and_is_seeded(caplog):
    caplog.set_level("INFO", logger="lesioncl.lesions")
    images = np.stack([_dotted_crop(), _disc_crop(256, radius=120)])
    rows = pd.DataFrame({"image": ["a", "b"], "level": [2, 0], "split": ["train", "train"]})
    index = {"train": {"a.jpeg": [(0, 0, 10, 6), (0, 0, 4, 4), (0, 0, 20, 20)],
                       "b.jpeg": [(1, 1, 9, 9)]},
             "val": {}}
    settings = SalientIndexSettings(border_margin=5, size=256, seed=3)
    out = salient_index(index, {"train": (images, rows)}, settings)
    boxes = out["train"]["a.jpeg"]
    assert sorted((round(x2 - x1), round(y2 - y1)) for x1, y1, x2, y2 in boxes) == [
        (4, 4), (10, 6), (20, 20)
    ]
    centres = sorted(((x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5) for x1, y1, x2, y2 in boxes)
    assert centres == [(80, 90), (120, 190), (170, 150)]
    # a flat image has no contrasted structure: its boxes find no place and it leaves the index
    assert "b.jpeg" not in out["train"]
    assert "1 images left out" in caplog.text and "train/b.jpeg" in caplog.text  # named, not lost
    assert out == salient_index(index, {"train": (images, rows)}, settings)
    # the seed decides which size goes to which place, never the places
    runs = [salient_index(index, {"train": (images, rows)}, SalientIndexSettings(5, 256, seed=k))
            for k in range(8)]
    assert {tuple(sorted(map(tuple, r["train"]["a.jpeg"]))) for r in runs} != {tuple(sorted(boxes))}
    for r in runs:
        assert sorted(((x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5) for x1, y1, x2, y2 in
                      r["train"]["a.jpeg"]) == centres
    # no centre near a box to avoid (the synthetic truth, in experiments)
    avoid = {"train": {"a": np.array([[78.0, 88.0, 83.0, 93.0]])}}
    off = salient_index(index, {"train": (images, rows)}, settings, avoid)
    off_centres = [((x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5) for x1, y1, x2, y2 in off["train"]["a.jpeg"]]
    assert (80, 90) not in off_centres and (150, 70) in off_centres
    with pytest.raises(ValueError, match="not in the train crop cache"):
        salient_index({"train": {"zz.jpeg": [(1, 1, 2, 2)]}}, {"train": (images, rows)}, settings)


def test_index_quality_counts_hits_recall_grades_and_window_chance():
    images = np.stack([_disc_crop(), _disc_crop()])
    rows = pd.DataFrame({"image": ["a", "b"], "level": [2, 0], "split": ["train", "train"]})
    truth = pd.DataFrame(
        [
            ["a", "train", 2, "haemorrhage", 40, 40, 50, 50],
            ["a", "train", 2, "microaneurysm", 80, 80, 81, 81],
        ],
        columns=["image", "split", "level", "kind", "x1", "y1", "x2", "y2"],
    )
    index = {"train": {
        "a.jpeg": [(42.0, 42.0, 48.0, 48.0), (79.0, 79.0, 80.0, 80.0), (60.0, 90.0, 66.0, 96.0)],
        "b.jpeg": [(60.0, 60.0, 64.0, 64.0)],
    }}
    q = index_quality(
        index, truth, {"train": {"a": 2, "b": 0}}, {"train": (images, rows)}, patch=16
    )["splits"]["train"]
    assert q["boxes"] == 4 and q["images_indexed"] == 2
    assert q["precision"] == pytest.approx(2 / 4)  # the MA is hit within the 1-px tolerance
    assert q["recall"] == {"haemorrhage": 1.0, "microaneurysm": 1.0}
    assert q["images_by_grade"] == {"0": {"images": 1, "indexed": 1}, "2": {"images": 1, "indexed": 1}}
    # windows around the two true hits hold a lesion; image b has none anywhere
    assert 0.5 <= q["window_hit_rate"] <= 0.75
    assert q["random_window_hit_rate"] <= q["window_hit_rate"]


def test_the_oracle_control_needs_synthetic_data():
    from lesioncl.evaluation.plan import check_sources

    check_sources(["lesion_cl", "lesion_cl_truth"], "synthetic")
    check_sources(["lesion_cl", "lesion_cl_random"], "folder")
    with pytest.raises(ValueError, match="evaluation.controls .* drop lesion_cl_truth there"):
        check_sources(["lesion_cl", "lesion_cl_truth"], "folder")
