"""The synthetic EyePACS / IDRiD generator: layouts, grade rule, lesions, determinism."""

from __future__ import annotations

import csv
import hashlib
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lesioncl.synthetic import (
    BAD_KINDS,
    IDRID_MASK_TYPES,
    LESION_KINDS,
    SIZES_AT_512,
    EyepacsSetSettings,
    Geometry,
    IdridSetSettings,
    eyepacs_geometry,
    generate_eyepacs,
    generate_idrid,
    icdr_grade,
    idrid_paths,
    plan_eyepacs,
    render_fundus,
    sample_lesion_counts,
)
from lesioncl.synthetic import datasets as ds
from lesioncl.synthetic.grading import (
    HAEMORRHAGE,
    HARD_EXUDATE,
    MICROANEURYSM,
    NEOVASCULARISATION,
    PRERETINAL_HAEMORRHAGE,
    SOFT_EXUDATE,
    check_grade_distribution,
)

EYEPACS_KW = dict(n_train=16, n_test=12, min_height=150, max_height=200, bad_files=True,
                  grade_distribution=[0.2, 0.2, 0.2, 0.2, 0.2], public_fraction=0.4)
IDRID_KW = dict(n_train=3, n_test=2, height=240)


def _eyepacs(root: Path, seed: int) -> Path:
    out = root / "eyepacs"
    generate_eyepacs(out, root / "truth.csv", root / "lesions.csv", root / "qc.png",
                     settings=EyepacsSetSettings(seed=seed, **EYEPACS_KW))
    return root


def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return reader.fieldnames, list(reader)


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def eyepacs_run(tmp_path_factory) -> Path:
    return _eyepacs(tmp_path_factory.mktemp("eyepacs_a"), seed=7)


@pytest.fixture(scope="module")
def idrid_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("idrid_a")
    generate_idrid(root / "idrid", root / "truth.csv", root / "qc.png", settings=IdridSetSettings(seed=7, **IDRID_KW))
    return root


# --------------------------------------------------------------------------- grade rule


@pytest.mark.parametrize("counts,quadrants,grade", [
    ({}, 0, 0),
    ({MICROANEURYSM: 3}, 0, 1),
    ({MICROANEURYSM: 3, HAEMORRHAGE: 2}, 2, 2),
    ({HARD_EXUDATE: 1}, 0, 2),
    ({SOFT_EXUDATE: 1}, 0, 2),
    ({HAEMORRHAGE: 14}, 4, 2),  # too few for severe
    ({HAEMORRHAGE: 20}, 3, 2),  # not spread over four quadrants
    ({HAEMORRHAGE: 15}, 4, 3),
    ({HAEMORRHAGE: 30, HARD_EXUDATE: 5}, 4, 3),
    ({NEOVASCULARISATION: 1}, 0, 4),
    ({MICROANEURYSM: 2, PRERETINAL_HAEMORRHAGE: 1}, 1, 4),
])
def test_icdr_rule(counts, quadrants, grade):
    assert icdr_grade(counts, quadrants) == grade


def test_icdr_rule_rejects_unknown_kinds():
    with pytest.raises(ValueError, match="unknown lesion kinds"):
        icdr_grade({"drusen": 1}, 0)


@pytest.mark.parametrize("rich", [False, True])
def test_sampled_counts_map_back_to_their_grade(rich):
    rng = np.random.default_rng(0)
    for grade in range(5):
        for _ in range(40):
            counts = sample_lesion_counts(grade, rng, rich=rich)
            assert icdr_grade(counts, 4) == grade
            if grade == 0:
                assert sum(counts.values()) == 0
            if grade == 3:  # severe only because the haemorrhages cover 4 quadrants
                assert icdr_grade(counts, 3) == 2


def test_grade_distribution_is_checked():
    assert check_grade_distribution([1, 1, 1, 1, 0]).tolist() == [0.25, 0.25, 0.25, 0.25, 0.0]
    for bad in ([0.5, 0.5], [0, 0, 0, 0, 0], [1, -1, 1, 1, 1]):
        with pytest.raises(ValueError, match="grade_distribution"):
            check_grade_distribution(bad)


# --------------------------------------------------------------------------- EyePACS plan


def test_plan_patients_eyes_and_usage():
    recs = plan_eyepacs(3, n_train=40, n_test=50, public_fraction=0.4, bad_files=True)
    assert [r.split for r in recs].count("train") == 40
    by_patient: dict[int, list] = {}
    for r in recs:
        by_patient.setdefault(r.patient_id, []).append(r)
        assert r.image == f"{r.patient_id}_{r.eye}"
    for pid, eyes in by_patient.items():  # both eyes, one split, one Usage
        assert sorted(r.eye for r in eyes) == ["left", "right"]
        assert len({r.split for r in eyes}) == 1 and len({r.usage for r in eyes}) == 1
    test_patients = [e[0] for e in by_patient.values() if e[0].split == "test"]
    assert sum(r.usage == "Public" for r in test_patients) == 10  # round(0.4 * 25)
    assert {r.usage for r in recs if r.split == "train"} == {""}
    bad = [r for r in recs if r.bad]
    assert sorted(r.bad for r in bad) == sorted(BAD_KINDS) and {r.split for r in bad} == {"train"}


@pytest.mark.parametrize("kw,match", [
    (dict(n_train=41, n_test=50), "n_train must be an even number"),
    (dict(n_train=40, n_test=0), "n_test must be an even number"),
    (dict(n_train=4, n_test=4, bad_files=True), "bad_files needs n_train"),
    (dict(n_train=40, n_test=4, grade_distribution=[1, 2]), "grade_distribution"),
])
def test_plan_rejects_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        plan_eyepacs(0, **kw)


def test_geometry_frames():
    rng = np.random.default_rng(1)
    geoms = [eyepacs_geometry(rng, 360, 560, "left") for _ in range(300)]
    aspects = np.array([g.width / g.height for g in geoms])
    cut = np.array([2 * g.radius > g.height for g in geoms])
    assert all(360 <= g.height <= 560 for g in geoms)
    assert all(2 * g.radius <= 0.87 * g.width for g in geoms)  # black side borders
    assert (aspects > 1.3).mean() > 0.7 and (aspects < 1.15).sum() > 10  # some nearly square
    assert 0.1 < cut.mean() < 0.4  # some circles cut at top and bottom
    assert len({g.height for g in geoms}) > 50


# --------------------------------------------------------------------------- EyePACS files


def test_eyepacs_layout_and_label_files(eyepacs_run):
    raw = eyepacs_run / "eyepacs"
    assert sorted(p.name for p in raw.iterdir()) == ["retinopathy_solution.csv", "test", "train",
                                                   "trainLabels.csv"]
    cols, train = _read_csv(raw / "trainLabels.csv")
    assert cols == ["image", "level"]
    cols, test = _read_csv(raw / "retinopathy_solution.csv")
    assert cols == ["image", "level", "Usage"]
    assert len(train) == EYEPACS_KW["n_train"] and len(test) == EYEPACS_KW["n_test"]
    for split, rows in (("train", train), ("test", test)):
        assert sorted(p.name for p in (raw / split).iterdir()) == sorted(f"{r['image']}.jpeg" for r in rows)
        for r in rows:
            assert re.fullmatch(r"\d+_(left|right)", r["image"])
            assert r["level"] in {"0", "1", "2", "3", "4"}
    assert {r["Usage"] for r in test} == {"Public", "Private"}
    ids_train = {r["image"].split("_")[0] for r in train}
    ids_test = {r["image"].split("_")[0] for r in test}
    assert not ids_train & ids_test
    assert (eyepacs_run / "qc.png").stat().st_size > 1000
    assert not list(eyepacs_run.glob(".*tmp"))  # the staging folder was renamed away


def test_grades_follow_the_drawn_lesions(eyepacs_run):
    cols, truth = _read_csv(eyepacs_run / "truth.csv")
    assert cols[:4] == ["image", "split", "usage", "level"] and set(LESION_KINDS) <= set(cols)
    _, train = _read_csv(eyepacs_run / "eyepacs" / "trainLabels.csv")
    _, test = _read_csv(eyepacs_run / "eyepacs" / "retinopathy_solution.csv")
    labels = {r["image"]: int(r["level"]) for r in train + test}
    good = [r for r in truth if not r["bad_file"]]
    assert len(good) == len(labels) - len(BAD_KINDS)
    for row in good:
        counts = {k: int(row[k]) for k in LESION_KINDS}
        drawn = icdr_grade(counts, int(row["haemorrhage_quadrants"]))
        assert drawn == int(row["level"]) == labels[row["image"]]
    # lesion boxes agree with the counts
    _, boxes = _read_csv(eyepacs_run / "lesions.csv")
    for row in good:
        mine = [b for b in boxes if b["image"] == row["image"]]
        assert len(mine) == sum(int(row[k]) for k in LESION_KINDS)


def test_bad_files(eyepacs_run):
    _, truth = _read_csv(eyepacs_run / "truth.csv")
    bad = {r["bad_file"]: eyepacs_run / "eyepacs" / r["split"] / f"{r['image']}.jpeg"
           for r in truth if r["bad_file"]}
    assert sorted(bad) == sorted(BAD_KINDS)
    assert bad["zero_bytes"].stat().st_size == 0
    with pytest.raises(OSError):
        with Image.open(bad["truncated_jpeg"]) as im:
            im.load()
    with Image.open(bad["all_black"]) as im:
        assert np.asarray(im).max() <= 3


def test_field_of_view_is_a_bright_disk_on_black(eyepacs_run):
    _, truth = _read_csv(eyepacs_run / "truth.csv")
    for row in truth:
        if row["bad_file"]:
            continue
        with Image.open(eyepacs_run / "eyepacs" / row["split"] / f"{row['image']}.jpeg") as im:
            assert im.format == "JPEG"
            a = np.asarray(im.convert("RGB")).astype(np.float32)
        h, w, _ = a.shape
        assert (w, h) == (int(row["width"]), int(row["height"]))
        strip = max(1, w // 32)
        sides = np.concatenate([a[:, :strip], a[:, -strip:]], axis=1)
        assert sides.mean() < 3 and sides.max() < 25, row["image"]
        centre = a[h // 3: 2 * h // 3, w // 3: 2 * w // 3]
        assert centre.max(axis=-1).mean() > 40, row["image"]
        corner = a[: h // 12, : w // 12]
        assert corner.mean() < 3  # outside the circle


def test_same_seed_same_bytes_other_seed_other_bytes(eyepacs_run, tmp_path):
    first = _hashes(eyepacs_run)
    again = _hashes(_eyepacs(tmp_path / "again", seed=7))
    assert again == first
    other = _hashes(_eyepacs(tmp_path / "other", seed=8))
    assert other.keys() != first.keys() or other != first
    common = set(other) & set(first)
    assert sum(other[k] != first[k] for k in common) >= len(common) // 2


# --------------------------------------------------------------------------- lesions


def _geometry(radius: float) -> Geometry:
    h = int(2 * radius + 20)
    w = int(h * 1.45)
    return Geometry(w, h, w / 2, h / 2, radius, w / 2 + 0.45 * radius, h / 2, 0.13 * radius,
                    w / 2 - 0.1 * radius, h / 2 + 0.05 * radius)


@pytest.mark.parametrize("radius", [256.0, 150.0])
def test_lesion_sizes_and_places(radius):
    g = _geometry(radius)
    s = g.scale
    counts = {MICROANEURYSM: 15, HAEMORRHAGE: 12, HARD_EXUDATE: 5, SOFT_EXUDATE: 4,
              NEOVASCULARISATION: 2, PRERETINAL_HAEMORRHAGE: 1}
    out = render_fundus(g, counts, np.random.default_rng(0), np.random.default_rng(1))
    assert out.counts() == counts
    for lesion in out.lesions:
        x1, y1, x2, y2 = lesion.bbox
        extent = max(x2 - x1, y2 - y1)
        lo, hi = SIZES_AT_512["hard_exudate_cluster" if lesion.kind == HARD_EXUDATE else lesion.kind]
        if lesion.kind != NEOVASCULARISATION:  # a tangle may be smaller than its area
            assert extent >= lo * s - 1.5, (lesion.kind, extent / s)
        assert extent <= hi * s + 1.5, (lesion.kind, extent / s)
        assert np.hypot(lesion.x - g.cx, lesion.y - g.cy) < g.radius
        assert 0 <= x1 and x2 <= g.width and 0 <= y1 and y2 <= g.height
    # microaneurysms are dark-red dots: darker than the retina around them
    img = out.image.astype(np.float32)
    ma = out.lesion_mask(MICROANEURYSM)
    ex = out.lesion_mask(HARD_EXUDATE)
    yy, xx = np.mgrid[: g.height, : g.width]
    fov = np.hypot(xx - g.cx, yy - g.cy) < 0.9 * g.radius
    assert img[ma][:, 0].mean() < img[fov][:, 0].mean()
    assert img[ex][:, 1].mean() > img[fov][:, 1].mean() + 20


def test_exudate_spots_are_small():
    g = _geometry(256.0)
    out = render_fundus(g, {HARD_EXUDATE: 6}, np.random.default_rng(2), np.random.default_rng(3))
    import cv2

    n, _, stats, _ = cv2.connectedComponentsWithStats(out.lesion_mask(HARD_EXUDATE).astype(np.uint8), 8)
    sizes = np.maximum(stats[1:, cv2.CC_STAT_WIDTH], stats[1:, cv2.CC_STAT_HEIGHT])
    assert n - 1 >= 6 and np.median(sizes) <= SIZES_AT_512[HARD_EXUDATE][1] + 2


def test_only_lesions_differ_between_grades():
    """The same image number drawn as grade 0 and as grade 4: identical off the lesions."""
    g = eyepacs_geometry(np.random.default_rng(5), 300, 300, "right")
    plain = render_fundus(g, sample_lesion_counts(0, np.random.default_rng(0)),
                          np.random.default_rng(9), np.random.default_rng(10))
    sick = render_fundus(g, sample_lesion_counts(4, np.random.default_rng(0)),
                         np.random.default_rng(9), np.random.default_rng(10))
    lesions = sick.lesion_mask(*LESION_KINDS)
    assert lesions.any()
    assert np.array_equal(plain.image[~lesions], sick.image[~lesions])
    assert not np.array_equal(plain.image[lesions], sick.image[lesions])


def test_small_vessels_only_add_dark_vessels():
    """synthetic.small_vessels draws thin vessels into the whole field of view and leaves the
    rest of the image (look, lesions, noise) as it is, whatever the grade."""
    g = eyepacs_geometry(np.random.default_rng(5), 400, 400, "left")
    counts = sample_lesion_counts(3, np.random.default_rng(0))
    draw = lambda n: render_fundus(  # noqa: E731
        g, counts, np.random.default_rng(9), np.random.default_rng(10), small_vessels=n
    )
    plain, veined = draw(0), draw(80)
    assert [(l.kind, l.bbox) for l in plain.lesions] == [(l.kind, l.bbox) for l in veined.lesions]
    changed = np.abs(plain.image.astype(int) - veined.image.astype(int)).max(axis=-1) > 2
    fov = plain.image.max(axis=-1) > 20
    assert 0.02 < changed[fov].mean() < 0.3  # thin vessels, spread over the retina
    # they darken (the red lesions' and vessels' colour), never brighten
    assert (veined.image.astype(int) <= plain.image.astype(int) + 1).all()
    # spread: every quadrant of the field of view gains vessel pixels
    h, w = changed.shape
    quads = [changed[: h // 2, : w // 2], changed[: h // 2, w // 2 :],
             changed[h // 2 :, : w // 2], changed[h // 2 :, w // 2 :]]
    assert all(q.mean() > 0.005 for q in quads)
    # the same image number as grade 0: identical off the lesions, small vessels included
    healthy = render_fundus(g, sample_lesion_counts(0, np.random.default_rng(0)),
                            np.random.default_rng(9), np.random.default_rng(10), small_vessels=80)
    lesions = veined.lesion_mask(*LESION_KINDS)
    assert np.array_equal(healthy.image[~lesions], veined.image[~lesions])


def test_small_vessels_setting_reaches_every_set(tmp_path):
    """The EyePACS-like set drawn with small vessels differs from the plain one; the same
    setting gives the same bytes."""
    base = dict(n_train=2, n_test=2, min_height=160, max_height=160, bad_files=False)
    paths = {}
    for name, n in (("plain", 0), ("veined", 60), ("again", 60)):
        out = tmp_path / name
        generate_eyepacs(out / "raw", out / "truth.csv",
                         settings=EyepacsSetSettings(**base, small_vessels=n))
        paths[name] = sorted((out / "raw/train").glob("*.jpeg"))
    digest = lambda p: hashlib.sha256(p.read_bytes()).hexdigest()  # noqa: E731
    assert [digest(p) for p in paths["veined"]] == [digest(p) for p in paths["again"]]
    assert all(digest(a) != digest(b) for a, b in zip(paths["plain"], paths["veined"]))


# --------------------------------------------------------------------------- IDRiD


def test_idrid_layout_names_and_masks(idrid_run):
    root = idrid_run / "idrid"
    seg = root / "A. Segmentation"
    assert sorted(p.name for p in root.iterdir()) == ["A. Segmentation"]
    assert sorted(p.name for p in seg.iterdir()) == ["1. Original Images", "2. All Segmentation Groundtruths"]
    n_train, n_test = IDRID_KW["n_train"], IDRID_KW["n_test"]
    train_imgs = sorted(p.name for p in (seg / "1. Original Images" / "a. Training Set").iterdir())
    test_imgs = sorted(p.name for p in (seg / "1. Original Images" / "b. Testing Set").iterdir())
    assert train_imgs == [f"IDRiD_{i:02d}.jpg" for i in range(1, n_train + 1)]
    assert test_imgs == [f"IDRiD_{i:02d}.jpg" for i in range(n_train + 1, n_train + n_test + 1)]
    for split in ("a. Training Set", "b. Testing Set"):
        folders = sorted(p.name for p in (seg / "2. All Segmentation Groundtruths" / split).iterdir())
        assert folders == ["1. Microaneurysms", "2. Haemorrhages", "3. Hard Exudates",
                           "4. Soft Exudates", "5. Optic Disc"]

    _, truth = _read_csv(idrid_run / "truth.csv")
    assert len(truth) == n_train + n_test
    for row in truth:
        number = int(row["image"].split("_")[1])
        split = "train" if number <= n_train else "test"
        assert row["split"] == split and int(row["level"]) >= 2
        image_path, masks = idrid_paths(root, split, number)
        with Image.open(image_path) as im:
            assert im.format == "JPEG" and im.size == (round(1.5 * IDRID_KW["height"]), IDRID_KW["height"])
            size = im.size
        for code, (folder, kinds) in IDRID_MASK_TYPES.items():
            present = code == "OD" or sum(int(row[k]) for k in kinds) > 0
            assert masks[code].exists() == present, (row["image"], code)
            assert masks[code].parent.name == folder
            assert re.fullmatch(r"IDRiD_\d\d_(MA|HE|EX|SE|OD)\.tif", masks[code].name)
            if present:
                m = np.asarray(Image.open(masks[code]))
                assert m.dtype == np.uint8 and m.shape == (size[1], size[0])
                assert set(np.unique(m).tolist()) == {0, 255}


def test_idrid_masks_are_the_drawn_lesions(idrid_run):
    """Redraw image 1 in memory: its TIFs hold exactly the drawn lesion pixels."""
    _, truth = _read_csv(idrid_run / "truth.csv")
    row = truth[0]
    eye = "right" if ds._rng(7, ds._IDRID, ds._PLAN, 1).random() < 0.5 else "left"
    from lesioncl.synthetic import idrid_geometry

    rendered = ds._draw(7, ds._IDRID, 1, int(row["level"]),
                        lambda rng: idrid_geometry(rng, IDRID_KW["height"], eye), rich=True)
    image_path, masks = idrid_paths(idrid_run / "idrid", "train", 1)
    for code, (_, kinds) in IDRID_MASK_TYPES.items():
        expected = rendered.disc_mask if code == "OD" else rendered.lesion_mask(*kinds)
        if masks[code].exists():
            assert np.array_equal(np.asarray(Image.open(masks[code])) > 0, expected), code
        else:
            assert not expected.any(), code
    with Image.open(image_path) as im:
        img = np.asarray(im.convert("RGB")).astype(np.float32)
    he = rendered.lesion_mask(HAEMORRHAGE)
    od = rendered.disc_mask
    g = rendered.geometry
    yy, xx = np.mgrid[: g.height, : g.width]
    retina = (np.hypot(xx - g.cx, yy - g.cy) < 0.9 * g.radius) & ~rendered.lesion_mask(*LESION_KINDS) & ~od
    assert img[he].mean() < 0.85 * img[retina].mean()  # haemorrhages are dark, the disc bright
    assert img[od].mean() > 1.15 * img[retina].mean()


def test_idrid_deterministic(idrid_run, tmp_path):
    generate_idrid(tmp_path / "idrid", tmp_path / "truth.csv", None, settings=IdridSetSettings(seed=7, **IDRID_KW))
    assert _hashes(tmp_path / "idrid") == _hashes(idrid_run / "idrid")


def test_parallel_workers_write_the_same_bytes(eyepacs_run, tmp_path):
    generate_eyepacs(tmp_path / "eyepacs", tmp_path / "truth.csv", tmp_path / "lesions.csv",
                     tmp_path / "qc.png", settings=EyepacsSetSettings(seed=7, **EYEPACS_KW), workers=2)
    assert _hashes(tmp_path) == _hashes(eyepacs_run)
