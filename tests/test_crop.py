"""Tests of the o_O border crop (lesioncl.crop): box, fast path vs the plain algorithm,
rejects, shards and the merge checks. All images are generated here or come from
scikit-image (data.retina(), a real 1411x1411 fundus photograph)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageFile, ImageFilter

from lesioncl import crop as C
from lesioncl.crop import CropParams, CropReject, crop_image, crop_reference


def fundus(width: int, height: int, cx: float, cy: float, radius: float, seed: int = 0) -> np.ndarray:
    """A fundus-like picture: a textured reddish disk (clipped by the frame) on a dark,
    slightly noisy background. Returns (h, w, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    r = np.hypot(xx - cx, yy - cy)
    inside = r <= radius
    shade = 1.0 - 0.45 * (r / radius) ** 2  # vignetting towards the rim
    texture = 1.0 + 0.08 * np.sin(xx / 17.0) * np.cos(yy / 23.0)
    img = np.zeros((height, width, 3), np.float32)
    for c, level in enumerate((190.0, 95.0, 45.0)):
        img[..., c] = np.where(inside, level * shade * texture, 0.0)
    img += rng.normal(0, 1.5, img.shape)
    img += 3.0  # a not-quite-black border
    return np.clip(img, 0, 255).astype(np.uint8)


def disk_box(width: int, height: int, cx: float, cy: float, radius: float) -> tuple[int, int, int, int]:
    return (
        max(0, int(np.ceil(cx - radius))), max(0, int(np.ceil(cy - radius))),
        min(width, int(np.floor(cx + radius)) + 1), min(height, int(np.floor(cy + radius)) + 1),
    )


def save_jpeg(arr: np.ndarray, path: Path, quality: int = 95) -> Path:
    Image.fromarray(arr).save(path, format="JPEG", quality=quality)
    return path


def read(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.int16)


@pytest.fixture(scope="module")
def retina_jpeg(tmp_path_factory) -> Path:
    from skimage import data

    path = tmp_path_factory.mktemp("retina") / "retina.jpeg"
    return save_jpeg(data.retina(), path, quality=95)


# --------------------------------------------------------------------------- box logic


def test_pil_blur_is_bit_exact():
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(41, 67, 3), dtype=np.uint8)
    expected = np.asarray(Image.fromarray(arr).filter(ImageFilter.BLUR))
    np.testing.assert_array_equal(C.pil_blur(arr), expected)


def test_wide_image_box_is_the_disk(tmp_path):
    w, h, cx, cy, rad = 960, 600, 430.0, 300.0, 330.0  # disk clipped at top and bottom
    arr = fundus(w, h, cx, cy, rad)
    expected = disk_box(w, h, cx, cy, rad)
    box = C.foreground_box(C.pil_blur(arr), 10, 32)
    assert box is not None
    assert max(abs(a - b) for a, b in zip(box, expected)) <= 3, (box, expected)
    res = crop_image(save_jpeg(arr, tmp_path / "a.jpeg"), tmp_path / "o.jpeg", None, CropParams())
    assert res.box_method == "foreground"
    assert max(abs(a - b) for a, b in zip(res.box, expected)) <= 3, (res.box, expected)
    assert (res.orig_width, res.orig_height) == (w, h)


def test_nearly_square_image_gets_centred_square(tmp_path):
    arr = fundus(700, 600, 350, 300, 280)  # 700 < 1.2 * 600: no box search
    res = crop_image(save_jpeg(arr, tmp_path / "a.jpeg"), tmp_path / "o.jpeg", None, CropParams())
    assert res.box == (50, 0, 650, 600) and res.box_method == "square"


def test_small_foreground_box_falls_back_to_square(tmp_path):
    arr = fundus(900, 600, 450, 300, 200)  # disk 400 px < 0.8 * 600
    res = crop_image(save_jpeg(arr, tmp_path / "a.jpeg"), tmp_path / "o.jpeg", None, CropParams())
    assert res.box == (150, 0, 750, 600) and res.box_method == "square_small_box"
    _, ref_box, ref_method = crop_reference(tmp_path / "a.jpeg")
    assert (ref_box, ref_method) == (res.box, res.box_method)


def test_portrait_image_gets_centred_width_square(tmp_path):
    arr = fundus(600, 800, 300, 400, 290)
    res = crop_image(save_jpeg(arr, tmp_path / "p.jpeg"), tmp_path / "o.jpeg", tmp_path / "d.jpeg",
                     CropParams(detect_scale=(800, 600)))
    assert res.box == (0, 100, 600, 700)  # clamped to the image, aspect kept
    assert Image.open(tmp_path / "o.jpeg").size == (512, 512)
    assert (res.det_width, res.det_height) == (600, 600) == Image.open(tmp_path / "d.jpeg").size
    assert res.det_scale == 1


def test_square_box_geometry():
    assert C.square_box(1000, 600) == (200, 0, 800, 600)
    assert C.square_box(1001, 600) == (200, 0, 800, 600)
    assert C.square_box(600, 1000) == (0, 200, 600, 800)
    assert C.square_box(500, 500) == (0, 0, 500, 500)


def test_threshold_has_no_uint8_overflow():
    arr = np.full((40, 100, 3), 250, np.uint8)  # background 250: 250 + 10 must not wrap to 4
    arr[10:30, 30:70, 0] = 255
    assert C.foreground_box(arr, 10, 32) is None


def test_foreground_is_strictly_brighter_than_margin():
    arr = np.zeros((40, 100, 3), np.uint8)
    arr[5:35, 20:80, 1] = 10  # not more than background 0 + margin 10
    arr[12:28, 40:60, 1] = 11
    assert C.foreground_box(arr, 10, 32) == (40, 12, 60, 28)
    arr[:, :3, 2] = 30  # a brighter left strip raises the blue background only
    arr[0:2, 90:92, 2] = 41
    assert C.foreground_box(arr, 10, 32) == (40, 0, 92, 28)


# --------------------------------------------------------------------------- a real fundus photo


def test_retina_crop_fills_the_frame(retina_jpeg, tmp_path):
    res = crop_image(retina_jpeg, tmp_path / "sq.jpeg", None, CropParams())
    assert res.box == (0, 0, 1411, 1411) and res.box_method == "square"
    # the same photograph with black side borders (a typical wide EyePACS frame)
    from skimage import data

    wide = np.zeros((1411, 2200, 3), np.uint8)
    wide[:, 500:1911] = data.retina()
    res = crop_image(save_jpeg(wide, tmp_path / "wide.jpeg"), tmp_path / "o.jpeg", tmp_path / "d.jpeg",
                     CropParams(detect_scale=(800, 600)))
    assert res.box_method == "foreground"
    x1, y1, x2, y2 = res.box
    assert abs(x1 - 508) <= 8 and abs(x2 - 1902) <= 8 and y1 <= 8 and y2 >= 1400, res.box
    out = read(tmp_path / "o.jpeg")
    assert out.shape == (512, 512, 3)
    fov = out.max(axis=2) > 20
    assert 0.7 < fov.mean() < 0.85  # a disk inscribed in the frame covers pi/4
    ys, xs = np.nonzero(fov)
    assert xs.min() <= 4 and xs.max() >= 507 and ys.min() <= 4 and ys.max() >= 507
    assert out[256, :6].max() > 100 and out[256, -6:].max() > 100  # FOV touches left/right
    # and it is the same picture as the crop of the original square photo
    assert np.abs(out - read(tmp_path / "sq.jpeg")).mean() < 6
    det = Image.open(tmp_path / "d.jpeg")
    assert det.size == (res.det_width, res.det_height) == C.detect_size(res.box, (800, 600))
    assert min(det.size) == 600  # the box is nearly square: its short side fits 600


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_retina_photo_as_png_and_tiff(retina_jpeg, tmp_path, fmt):
    """A real fundus photograph saved as PNG / TIFF (APTOS, Messidor-2 style) is cropped
    like the JPEG: same box logic through a full decode."""
    from skimage import data

    photo = data.retina()
    ext = {"PNG": "png", "TIFF": "tif"}[fmt]
    square = tmp_path / f"retina.{ext}"
    Image.fromarray(photo).save(square, format=fmt)
    res = crop_image(square, tmp_path / "sq.jpeg", None, CropParams())
    assert res.box == (0, 0, 1411, 1411) and res.box_method == "square"
    plain = np.asarray(crop_reference(square)[0]).astype(np.int16)  # the plain algorithm's crop
    assert np.abs(read(tmp_path / "sq.jpeg") - plain).mean() < 2

    wide = np.zeros((1411, 2200, 3), np.uint8)
    wide[:, 500:1911] = photo
    src = tmp_path / f"wide.{ext}"
    Image.fromarray(wide).save(src, format=fmt)
    res = crop_image(src, tmp_path / "o.jpeg", tmp_path / "d.jpeg", CropParams(detect_scale=(800, 600)))
    _, ref_box, ref_method = crop_reference(src)
    assert res.box_method == ref_method == "foreground"
    assert max(abs(a - b) for a, b in zip(res.box, ref_box)) <= 8, (res.box, ref_box)
    out = read(tmp_path / "o.jpeg")
    assert out.shape == (512, 512, 3)
    # the same picture as the crop of the JPEG of the square photo
    jpeg_crop = tmp_path / "jpeg_sq.jpeg"
    crop_image(retina_jpeg, jpeg_crop, None, CropParams())
    assert np.abs(out - read(jpeg_crop)).mean() < 6
    det = Image.open(tmp_path / "d.jpeg")
    assert det.size == (res.det_width, res.det_height) == C.detect_size(res.box, (800, 600))


def test_other_modes_become_rgb(tmp_path):
    """16-bit greyscale (scaled, not clipped), RGBA and palette images are cropped."""
    grey8 = fundus(900, 600, 450, 300, 320).mean(axis=2)
    Image.fromarray((grey8 * 257).astype(np.uint16)).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    res = crop_image(tmp_path / "g16.png", tmp_path / "g.jpeg", None, CropParams())
    assert res.box_method == "foreground"
    # scaled back to the 8-bit picture, not clipped to white
    assert abs(int(read(tmp_path / "g.jpeg").max()) - grey8.max()) < 10, read(tmp_path / "g.jpeg").max()
    rgba = np.dstack([fundus(900, 600, 450, 300, 320), np.full((600, 900), 255, np.uint8)])
    Image.fromarray(rgba).save(tmp_path / "a.png")
    Image.fromarray(fundus(900, 600, 450, 300, 320)).convert("P").save(tmp_path / "p.png")
    for name in ("a.png", "p.png"):
        assert crop_image(tmp_path / name, tmp_path / f"{name}.jpeg", None, CropParams()).box_method == "foreground"


# --------------------------------------------------------------------------- fast path vs plain


@pytest.mark.parametrize(
    "w,h,cx,cy,rad,search_min_height",
    [
        (960, 600, 470, 300, 320, 500),  # search at full resolution: exact blur
        (960, 600, 470, 300, 320, 100),  # search on a 1/4 DCT decode, refined on the full one
        (1600, 1000, 790, 510, 540, 120),  # 1/8 search, refined at full resolution
        (1500, 1000, 745, 500, 470, 500),  # 1/2 search, refined at full resolution
        (3000, 2000, 1480, 1010, 1080, 500),  # 1/4 search, 1/2 decode: refined at 1/2
    ],
)
def test_fast_path_matches_plain_algorithm(tmp_path, w, h, cx, cy, rad, search_min_height):
    src = save_jpeg(fundus(w, h, cx, cy, rad, seed=w + h), tmp_path / "f.jpeg", quality=92)
    params = CropParams(search_min_height=search_min_height)
    res = crop_image(src, tmp_path / "o.jpeg", None, params)
    ref_img, ref_box, ref_method = crop_reference(src, params)
    k_search = C.search_factor(h, params)
    k_dec = min(C.decode_factor(w, h, params), k_search, C.detect_factor(w, h, params))
    assert res.box_method == ref_method == "foreground"
    diff = max(abs(a - b) for a, b in zip(res.box, ref_box))
    if k_dec == 1:  # searched (or refined) at full resolution with PIL's blur: exact
        assert res.box == ref_box
    assert diff <= 2 and k_dec <= 2, (res.box, ref_box, k_search, k_dec)
    out, ref = read(tmp_path / "o.jpeg"), np.asarray(ref_img).astype(np.int16)
    assert out.shape == ref.shape == (512, 512, 3)
    err = np.abs(out - ref)
    same_pixels = res.decode_scale == 1 and res.box == ref_box  # only the q100 JPEG round trip
    assert err.mean() < (0.8 if same_pixels else 2.5), (err.mean(), res.decode_scale, res.box, ref_box)
    assert np.percentile(err, 99) < 16


def test_refined_box_is_within_the_refining_scale():
    """A box found on a 1/4 reduction, its edges searched again on the 1/2 and the full
    image: within 2 px of the plain algorithm's, then exactly it."""
    arr = fundus(1800, 1200, 880, 610, 650, seed=5)
    params = CropParams()
    ref_box = C.foreground_box(C.pil_blur(arr), 10, 32)
    half = np.asarray(Image.fromarray(arr).reduce(2))
    quarter = np.asarray(Image.fromarray(arr).reduce(4))
    coarse = tuple(4 * c for c in C.foreground_box(quarter, 10, 32))
    assert max(abs(a - b) for a, b in zip(coarse, ref_box)) <= 4
    refined = C.refine_box(coarse, half, 2, 4, params)
    assert max(abs(a - b) for a, b in zip(refined, ref_box)) <= 2, (refined, ref_box)
    assert C.refine_box(coarse, arr, 1, 4, params) == ref_box
    # a box already exact stays so; one off by a 1/4 pixel on every side comes back
    assert C.refine_box(ref_box, arr, 1, 2, params) == ref_box
    x1, y1, x2, y2 = ref_box
    off = (x1 + 4, y1, x2 - 4, y2)
    assert C.refine_box(off, arr, 1, 4, params) == ref_box
    assert max(abs(a - b) for a, b in zip(C.refine_box(off, half, 2, 4, params), ref_box)) <= 2
    off = (x1 - 4, y1, x2 + 3, y2)
    assert C.refine_box(off, arr, 1, 4, params) == ref_box


def test_decode_scale_never_upsamples():
    params = CropParams(size=512, detect_scale=(1600, 1200))
    for w, h in [(3888, 2592), (2592, 1944), (4752, 3168), (1536, 1024), (400, 315), (3000, 3000),
                 (2000, 3000), (640, 480), (5184, 3456), (3504, 2336)]:
        bound = C.smallest_box_side(w, h, params)
        k = C.decode_factor(w, h, params)
        assert k == 1 or bound / k >= 512
        assert k == 8 or k == 1 or bound / (2 * k) < 512  # and it is the coarsest such scale
        # the detection crop of a box as high as the image: at most 1.05x upscaled
        kd = C.detect_factor(w, h, params)
        side = min(w, h)
        dw, dh = C.detect_size((0, 0, side, side), params.detect_scale)
        assert kd == 1 or side / kd * 1.05 >= max(dw, dh)
        assert kd == 8 or side / (2 * kd) * 1.05 < max(dw, dh)
    assert C.decode_factor(3888, 2592, params) == 4
    assert C.detect_factor(3504, 2336, params) == 2  # 1168 px for a 1200 px input: 1.03x
    assert C.detect_factor(3504, 2336, CropParams(detect_max_upscale=1.0)) == 1
    assert C.detect_factor(2592, 1944, params) == 1
    assert C.detect_factor(4752, 3168, params) == 2


def test_detect_size_is_mmdetection_keep_ratio_resize():
    """The detection crop is what the detector's keep-ratio Resize makes of the box, so
    the detector reads it without resizing it again."""
    mmcv = pytest.importorskip("mmcv")
    for bw, bh in [(2453, 2336), (3300, 3168), (600, 600), (300, 200), (1227, 1168), (1000, 1600),
                   (2801, 2592), (5000, 1000)]:
        for scale in [(1600, 1200), (512, 384), (1333, 800)]:
            expected = mmcv.rescale_size((bw, bh), scale)
            assert C.detect_size((10, 20, 10 + bw, 20 + bh), scale) == expected, (bw, bh, scale)
            assert mmcv.rescale_size(expected, scale) == expected  # a second resize is a no-op


def test_detection_crop_size_and_scale(tmp_path):
    w, h = 2400, 1600
    arr = fundus(w, h, 1190, 800, 860)
    src = save_jpeg(arr, tmp_path / "f.jpeg")
    params = CropParams(detect_scale=(800, 600), search_min_height=500)
    res = crop_image(src, tmp_path / "o.jpeg", tmp_path / "d.jpeg", params)
    assert res.decode_scale == 2  # 0.8 * 1600 / 2 >= 512, / 4 is not
    assert res.det_scale == 2  # a 1600 px high box for a 600 px crop: 1/2 decode
    assert (res.det_width, res.det_height) == C.detect_size(res.box, (800, 600))
    assert res.det_height == 600
    assert Image.open(tmp_path / "d.jpeg").size == (res.det_width, res.det_height)
    # the detection crop is the box: compare with the box resampled from the full image
    ideal = np.asarray(Image.fromarray(arr).resize((res.det_width, res.det_height), Image.LANCZOS,
                                                   box=res.box)).astype(np.int16)
    assert np.abs(read(tmp_path / "d.jpeg") - ideal).mean() < 2.5
    # the 512 crop does not depend on whether the detection crop is written
    crop_image(src, tmp_path / "o2.jpeg", None, params)
    assert (tmp_path / "o.jpeg").read_bytes() == (tmp_path / "o2.jpeg").read_bytes()


def test_small_detection_crop_is_area_averaged(tmp_path):
    """A detection crop far smaller than the decode averages its pixels: fine stripes
    (6 px period) fade to grey as in the ideal resampling, instead of aliasing."""
    arr = fundus(2400, 1600, 1190, 800, 860).astype(np.int16)
    stripes = (40 * ((np.arange(2400) // 3) % 2) - 20).astype(np.int16)
    inside = arr.max(axis=2) > 20
    arr = np.clip(arr + np.where(inside[..., None], stripes[None, :, None], 0), 0, 255).astype(np.uint8)
    src = save_jpeg(arr, tmp_path / "f.jpeg")
    res = crop_image(src, None, tmp_path / "s.jpeg", CropParams(detect_scale=(200, 150)))
    assert res.det_scale == 2 and res.det_height == 150  # from the 1/2 decode, 5x smaller
    ideal = np.asarray(Image.fromarray(arr).resize((res.det_width, res.det_height), Image.LANCZOS,
                                                   box=res.box)).astype(np.int16)
    assert np.abs(read(tmp_path / "s.jpeg") - ideal).mean() < 3  # bilinear sampling: ~8.6


def test_detection_crop_of_a_low_box_is_decoded_again(tmp_path):
    """A wide image whose field of view is lower than the image: the decode chosen for a
    full-height box is too coarse for its detection crop, which is decoded at 1/1."""
    w, h = 2400, 1600
    src = save_jpeg(fundus(w, h, 1200, 800, 690), tmp_path / "f.jpeg")  # 1380 px high disk
    params = CropParams(detect_scale=(1600, 1200))
    assert C.detect_factor(w, h, params) == 1  # 1600 / 2 * 1.05 < 1200: already 1/1
    params = CropParams(detect_scale=(1100, 780))  # 1600 / 2 * 1.05 >= 780: 1/2 expected
    assert C.detect_factor(w, h, params) == 2
    res = crop_image(src, tmp_path / "o.jpeg", tmp_path / "d.jpeg", params)
    assert res.box_method == "foreground" and res.box[3] - res.box[1] < 1400
    assert res.det_scale == 1 and res.det_height == 780  # 1380 / 2 * 1.05 < 780
    assert Image.open(tmp_path / "d.jpeg").size == (res.det_width, res.det_height)


def test_detect_splits_are_the_lesion_index_splits():
    from lesioncl.lesions import SPLITS

    assert tuple(C.DETECT_SPLITS) == tuple(SPLITS)


# --------------------------------------------------------------------------- rejects


def test_rejects_with_reasons(tmp_path):
    good = save_jpeg(fundus(900, 600, 450, 300, 320), tmp_path / "good.jpeg")
    data = good.read_bytes()
    (tmp_path / "truncated.jpeg").write_bytes(data[: len(data) // 2])
    save_jpeg(np.zeros((600, 900, 3), np.uint8), tmp_path / "black.jpeg")
    (tmp_path / "empty.jpeg").write_bytes(b"")
    (tmp_path / "text.jpeg").write_text("this is not an image\n")
    save_jpeg(np.full((600, 900, 3), 128, np.uint8), tmp_path / "grey.jpeg")
    # the same rejects for other formats (a full decode instead of the DCT-scaled one)
    png = tmp_path / "good.png"
    Image.fromarray(fundus(900, 600, 450, 300, 320)).save(png)
    (tmp_path / "truncated.png").write_bytes(png.read_bytes()[: len(png.read_bytes()) // 2])
    Image.fromarray(np.zeros((600, 900, 3), np.uint8)).save(tmp_path / "black.tif")
    Image.fromarray(np.full((600, 900, 3), 128, np.uint8)).save(tmp_path / "grey.png")
    (tmp_path / "text.png").write_text("this is not an image\n")
    (tmp_path / "empty.tiff").write_bytes(b"")
    expected = {
        "missing.jpeg": "missing", "empty.jpeg": "empty_file", "text.jpeg": "unreadable",
        "truncated.jpeg": "truncated", "black.jpeg": "blank", "grey.jpeg": "no_fov",
        "truncated.png": "truncated", "black.tif": "blank", "grey.png": "no_fov",
        "text.png": "unreadable", "empty.tiff": "empty_file",
    }
    for name, reason in expected.items():
        out = tmp_path / f"out_{name}"
        with pytest.raises(CropReject) as info:
            crop_image(tmp_path / name, out, None, CropParams())
        assert info.value.reason == reason, (name, info.value)
        assert not out.exists()
    res = crop_image(tmp_path / "grey.jpeg", tmp_path / "g.jpeg", None, CropParams(reject_no_foreground=False))
    assert res.box_method == "square_no_foreground"
    assert crop_image(good, tmp_path / "ok.jpeg", None, CropParams()).box_method == "foreground"
    assert crop_image(png, tmp_path / "ok_png.jpeg", None, CropParams()).box_method == "foreground"


def test_load_truncated_images_must_stay_off(tmp_path, monkeypatch):
    src = save_jpeg(fundus(300, 200, 150, 100, 90), tmp_path / "a.jpeg")
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(RuntimeError, match="LOAD_TRUNCATED_IMAGES"):
        crop_image(src, tmp_path / "o.jpeg", None, CropParams())


# --------------------------------------------------------------------------- shards and merge


@pytest.mark.parametrize("n_rows,n_shards", [(0, 3), (1, 4), (10, 3), (101, 7), (5, 5)])
def test_shards_cover_every_row_once(n_rows, n_shards):
    rows = np.concatenate([C.shard_rows(n_rows, s, n_shards) for s in range(n_shards)])
    assert sorted(rows.tolist()) == list(range(n_rows))
    assert all((C.shard_rows(n_rows, s, n_shards) % n_shards == s).all() for s in range(n_shards))
    with pytest.raises(ValueError):
        C.shard_rows(n_rows, n_shards, n_shards)


@pytest.fixture
def small_labels(tmp_path) -> Path:
    raw = tmp_path / "raw"
    raw.mkdir()
    rows = []
    for i in range(8):
        w = 540 if i % 2 else 400
        arr = fundus(w, 360, w / 2 + 4, 180, 190 if i != 5 else 100, seed=i)
        name = f"{10 + i}_{'left' if i % 2 else 'right'}"
        save_jpeg(arr, raw / f"{name}.jpeg")
        rows.append((name, str(10 + i), name.split("_")[1], i % 5, ["train", "val", "test"][i % 3],
                     str(raw / f"{name}.jpeg")))
    data = (raw / "10_right.jpeg").read_bytes()
    (raw / "90_left.jpeg").write_bytes(data[: len(data) // 3])
    (raw / "91_left.jpeg").write_bytes(b"")
    save_jpeg(np.zeros((360, 540, 3), np.uint8), raw / "92_left.jpeg")
    for name, split in [("90_left", "train"), ("91_left", "val"), ("92_left", "test"), ("93_left", "train")]:
        rows.append((name, name[:2], "left", 0, split, str(raw / f"{name}.jpeg")))
    labels = pd.DataFrame(rows, columns=list(C.LABEL_COLUMNS))
    path = tmp_path / "labels.csv"
    labels.to_csv(path, index=False)
    return path


def _run_shards(labels, out, n_shards, workers=1, params=CropParams(detect_scale=(256, 192))):
    tables = []
    for s in range(n_shards):
        table = out / "crops" / f"shard_{s}.csv"
        C.crop_shard(labels, s, n_shards, out / "crops" / f"shard_{s}", out / "crops_det" / f"shard_{s}",
                     table, params, workers=workers)
        tables.append(table)
    return tables


def test_crop_shards_and_merge(small_labels, tmp_path):
    out = tmp_path / "results"
    tables = _run_shards(small_labels, out, 3, workers=2)
    summary = C.merge_shards(small_labels, tables, 3, out / "manifest.csv", out / "rejects.csv",
                             out / "summary.json", out / "qc.png", qc_images=3)
    manifest = pd.read_csv(out / "manifest.csv", dtype={"image": str})
    rejects = pd.read_csv(out / "rejects.csv")
    assert list(manifest.columns) == list(C.MANIFEST_COLUMNS)
    assert list(rejects.columns) == list(C.REJECT_COLUMNS)
    assert len(manifest) == 8 and len(rejects) == 4
    assert dict(zip(rejects["image"], rejects["reason"])) == {
        "90_left": "truncated", "91_left": "empty_file", "92_left": "blank", "93_left": "missing"}
    assert summary == json.loads((out / "summary.json").read_text())
    for key in ("train", "val", "test", "total"):
        assert summary["input"][key] == summary["cropped"][key] + summary["rejected"][key]
    assert summary["input"]["total"] == 12 and summary["reasons"]["missing"] == 1
    assert summary["box_method"]["square_small_box"] == 1  # image 15 has a small disk
    for r in manifest.itertuples():
        assert Image.open(r.path).size == (512, 512)
        assert Path(r.path).name == f"{r.image}.jpeg"
        assert 0 <= r.box_x1 < r.box_x2 <= r.orig_width and 0 <= r.box_y1 < r.box_y2 <= r.orig_height
        if r.split == "test":  # the detector never sees the test images: no detection crop
            assert pd.isna(r.det_path) and pd.isna(r.det_width) and pd.isna(r.det_height)
            continue
        assert Image.open(r.det_path).size == (r.det_width, r.det_height)
        assert (r.det_width, r.det_height) == C.detect_size(
            (r.box_x1, r.box_y1, r.box_x2, r.box_y2), (256, 192))
    det_files = {f.stem for f in (out / "crops_det").rglob("*.jpeg")}
    assert det_files == set(manifest.loc[manifest["split"] != "test", "image"])
    assert summary["det_scale"]["1"] == int((manifest["split"] != "test").sum())
    qc = Image.open(out / "qc.png")
    assert qc.height > 3 * 256
    # each shard holds exactly its rows
    for s, t in enumerate(tables):
        assert (pd.read_csv(t)["row"] % 3 == s).all()


def test_merge_fails_loudly_on_bad_shards(small_labels, tmp_path):
    out = tmp_path / "results"
    tables = _run_shards(small_labels, out, 2)
    args = (out / "m.csv", out / "r.csv", out / "s.json")
    with pytest.raises(ValueError, match="shard tables 0..2"):
        C.merge_shards(small_labels, tables, 3, *args)
    t = pd.read_csv(tables[1])
    t.iloc[:-1].to_csv(tables[1], index=False)  # a row lost
    with pytest.raises(ValueError, match="rows do not match shard 1"):
        C.merge_shards(small_labels, tables, 2, *args)
    train_row = t.index[(t["split"] == "train") & (t["status"] == "ok")][0]
    broken = t.copy()
    broken.loc[train_row, "det_path"] = np.nan  # a train image without its detection crop
    broken.to_csv(tables[1], index=False)
    with pytest.raises(ValueError, match="need a detection crop"):
        C.merge_shards(small_labels, tables, 2, *args)
    t.loc[0, "reason"] = "mystery"
    t.loc[0, "status"] = "rejected"
    t.to_csv(tables[1], index=False)
    with pytest.raises(ValueError, match="unknown reject reason"):
        C.merge_shards(small_labels, tables, 2, *args)
    assert not (out / "m.csv").exists()


def test_labels_errors_name_the_file(tmp_path):
    bad = tmp_path / "labels.csv"
    pd.DataFrame({"image": ["1_left"], "path": ["x.jpeg"]}).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="labels.csv: missing column"):
        C.read_labels(bad)
    pd.DataFrame([("1_left", "1", "left", 0, "train", "a.jpeg")] * 2,
                 columns=list(C.LABEL_COLUMNS)).to_csv(bad, index=False)
    with pytest.raises(ValueError, match="unique"):
        C.read_labels(bad)
