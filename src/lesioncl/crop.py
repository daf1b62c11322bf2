"""The o_O border crop of EyePACS fundus photographs (docs/method.md, "Crop").

The original algorithm (Kaggle 2nd place "o_O", reused by the paper's ``tools/crop.py``):

1. blur the image with PIL's ``ImageFilter.BLUR`` (a 5x5 kernel: the ring of the 16
   outer pixels, divided by 16; the 2-pixel image border is copied unblurred);
2. only if ``w > wide_ratio * h``: background = per-channel maximum of the blurred
   image over the left and right strips of width ``w // strip_divisor``;
   foreground = pixels where any channel exceeds its background by more than
   ``bright_margin``; box = bounding rectangle of the foreground, discarded when its
   width or height is below ``min_box_fraction * h``;
3. otherwise (or when discarded) the centred square;
4. crop the unblurred image to the box, Lanczos-resize to ``size x size``, save as
   JPEG quality 100 with 4:4:4 chroma.

:func:`crop_reference` is that algorithm written plainly (full decode, PIL blur). It is
the yardstick of the tests and of ``benchmarks/bench_crop.py``. :func:`crop_image` is
the production path and gives the same box (to a few full-resolution pixels) much
faster:

* the JPEG is decoded once, at the coarsest DCT scale (1/8, 1/4, 1/2, 1) that still
  leaves every output at least its final size (libjpeg scaled IDCT, ``Image.draft``);
  the smallest box the algorithm can return (``min_box_fraction * h``) bounds that
  scale, so the box need not be known before decoding;
* the box is searched on the image reduced by the coarsest DCT scale that keeps its
  height >= ``search_min_height`` (a scaled decode averages the pixels of a block,
  which is the smoothing the blur stands for, so no extra blur is applied there; at
  scale 1 the PIL blur is reproduced exactly and the box is identical to the
  reference's); the box is then mapped back to full resolution;
* the 512 crop is Lanczos-resampled from the coarsest reduction that leaves it at
  least ``size`` (the decode itself, or its box-averaged ``Image.reduce``, so it does
  not depend on whether a detection crop is made); the detection crop (cropped,
  aspect kept, Lanczos-downscaled only to fit ``detect_max_size``) from the decode.
  No full-resolution pass happens unless the detection crop needs full resolution.

Choices that differ from the original, on purpose:

* Centred square of a portrait image (``w < h``): the original's ``square_bbox``
  clamps the h x h square to the image, which gives the whole (non-square) image and
  squashes it when resized to 512 x 512. We take the centred ``min(w, h)`` square, so
  the aspect ratio is always kept. For landscape images this is the original's
  centred h x h square (with width exactly h; the original's right edge
  ``w - (w - h) // 2`` makes it h + 1 wide when ``w - h`` is odd).
* Both background strips are ``w // strip_divisor`` wide (the original's right strip
  ``ba[:, -w // 32:]`` is ``ceil(w / 32)`` wide because ``-w // 32`` floors).
* The foreground threshold is computed without uint8 overflow.
* A wide image in which no pixel is brighter than the border strips (the original
  printed "bbox none (???)" and cropped the centred square) is rejected as ``no_fov``
  when ``reject_no_foreground`` is true; otherwise it gets the centred square.
* Images that cannot be used are not cropped but returned as rejects with a reason
  (:data:`REJECT_REASONS`); PIL's ``LOAD_TRUNCATED_IMAGES`` stays off, so a truncated
  JPEG is detected instead of being decoded with grey.
* Any image format Pillow reads is cropped (PNG, TIFF, BMP, ...: APTOS, Messidor-2,
  DDR). Those have no DCT scaling: they are decoded at full resolution and reduced by
  box averaging (``Image.reduce``) for the box search and the crops; the box logic
  and the rejects are the same. 16-bit greyscale is scaled to 8 bits, an alpha
  channel is dropped, other modes are converted to RGB.
"""

from __future__ import annotations

import io
import logging
import math
import os
import struct
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFile, ImageFilter, ImageFont, UnidentifiedImageError

from .utils import atomic_path, write_json

log = logging.getLogger("lesioncl.crop")

#: Reasons an input image is not cropped, in the order they are checked.
REJECT_REASONS = (
    "missing",  # the file does not exist
    "empty_file",  # zero bytes
    "unreadable",  # not an image PIL can identify, or a corrupt image stream
    "truncated",  # the image data end before the image is complete
    "blank",  # mean intensity below min_mean_intensity (black / very dark)
    "no_fov",  # wide image with nothing brighter than its borders
)
#: How the box of a cropped image was chosen.
BOX_METHODS = ("foreground", "square", "square_small_box", "square_no_foreground")

DCT_SCALES = (8, 4, 2, 1)
LABEL_COLUMNS = ("image", "patient_id", "eye", "level", "split", "path")
MANIFEST_COLUMNS = (
    "image", "patient_id", "eye", "level", "split", "path", "det_path", "det_width",
    "det_height", "orig_width", "orig_height", "box_x1", "box_y1", "box_x2", "box_y2",
)
REJECT_COLUMNS = ("image", "split", "level", "path", "reason")
SHARD_COLUMNS = (
    "row", "image", "patient_id", "eye", "level", "split", "raw_path", "status",
    "reason", "detail", "path", "det_path", "det_width", "det_height", "orig_width",
    "orig_height", "box_x1", "box_y1", "box_x2", "box_y2", "box_method", "decode_scale",
)

# The 5x5 kernel of PIL's ImageFilter.BLUR (sum 16).
_BLUR_RING = np.ones((5, 5), np.float32)
_BLUR_RING[1:4, 1:4] = 0


@dataclass(frozen=True)
class CropParams:
    """The crop hyper-parameters (config section ``crop``)."""

    size: int = 512
    detect_max_size: int | None = 1600
    bright_margin: float = 10
    wide_ratio: float = 1.2
    strip_divisor: int = 32
    min_box_fraction: float = 0.8
    min_mean_intensity: float = 5.0
    search_min_height: int = 500
    detect_quality: int = 95
    reject_no_foreground: bool = True

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"crop.size must be positive, got {self.size}")
        if self.detect_max_size is not None and self.detect_max_size < 1:
            raise ValueError(f"crop.detect_max_size must be positive or null, got {self.detect_max_size}")
        if self.strip_divisor < 1:
            raise ValueError(f"crop.strip_divisor must be >= 1, got {self.strip_divisor}")
        if not 0 <= self.min_box_fraction <= 1:
            raise ValueError(f"crop.min_box_fraction must lie in [0, 1], got {self.min_box_fraction}")
        if not 1 <= self.detect_quality <= 100:
            raise ValueError(f"crop.detect_quality must lie in [1, 100], got {self.detect_quality}")


class CropReject(Exception):
    """An input image that cannot be cropped; ``reason`` is one of :data:`REJECT_REASONS`."""

    def __init__(self, reason: str, detail: str = "") -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class CropResult:
    """What :func:`crop_image` did with one image (box in full-resolution pixels, x2/y2 exclusive)."""

    orig_width: int
    orig_height: int
    box: tuple[int, int, int, int]
    box_method: str
    decode_scale: int  # the reduction (1, 2, 4, 8) the size x size crop was resampled from
    det_width: int | None = None
    det_height: int | None = None


# --------------------------------------------------------------------------- box logic


def square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The centred ``min(w, h)`` square (x1, y1, x2, y2), clamped to the image by construction."""
    side = min(width, height)
    x1 = (width - side) // 2
    y1 = (height - side) // 2
    return (x1, y1, x1 + side, y1 + side)


def pil_blur(arr: np.ndarray) -> np.ndarray:
    """``ImageFilter.BLUR`` on an (h, w, 3) uint8 array, bit for bit as PIL computes it.

    PIL sums the 16 ring pixels, divides by 16 rounding half up, and copies the
    2-pixel image border unfiltered.
    """
    import cv2

    arr = np.ascontiguousarray(arr)
    sums = cv2.filter2D(arr, cv2.CV_16U, _BLUR_RING, borderType=cv2.BORDER_REPLICATE)
    out = ((sums + 8) >> 4).astype(np.uint8)
    out[:2] = arr[:2]
    out[-2:] = arr[-2:]
    out[:, :2] = arr[:, :2]
    out[:, -2:] = arr[:, -2:]
    return out


def foreground_box(arr: np.ndarray, bright_margin: float, strip_divisor: int) -> tuple[int, int, int, int] | None:
    """Bounding rectangle (x1, y1, x2, y2; exclusive ends) of the pixels brighter than the border.

    ``arr`` is the (blurred) (h, w, 3) uint8 image. Background = per-channel maximum over
    the left and right strips of width ``w // strip_divisor`` (at least 1); a pixel is
    foreground when any channel exceeds its background by more than ``bright_margin``.
    Returns None when no pixel is foreground.
    """
    h, w = arr.shape[:2]
    strip = max(w // strip_divisor, 1)
    background = np.maximum(arr[:, :strip].max(axis=(0, 1)), arr[:, w - strip:].max(axis=(0, 1)))
    mask = None
    for c in range(arr.shape[2]):
        # pixel > bg + margin for integer pixels <=> pixel >= floor(bg + margin) + 1
        threshold = math.floor(float(background[c]) + bright_margin) + 1
        if threshold > 255:
            continue
        channel = arr[:, :, c] >= max(threshold, 0)
        mask = channel if mask is None else (mask | channel)
    if mask is None:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def is_wide(width: int, height: int, params: CropParams) -> bool:
    return width > params.wide_ratio * height


def box_too_small(box: Sequence[int], height: int, params: CropParams) -> bool:
    return (box[2] - box[0]) < params.min_box_fraction * height or (box[3] - box[1]) < params.min_box_fraction * height


def smallest_box_side(width: int, height: int, params: CropParams) -> float:
    """A lower bound of both sides of any box the algorithm can choose for a w x h image."""
    if is_wide(width, height, params):
        # foreground boxes have both sides >= min_box_fraction * h; the fallback square is h x h
        return min(params.min_box_fraction * height, height)
    return min(width, height)


def decode_factor(width: int, height: int, params: CropParams, with_detect: bool = True) -> int:
    """The coarsest DCT reduction (8, 4, 2 or 1) at which the outputs need no upsampling.

    The 512 crop needs both box sides >= ``size`` after reduction; the detection crop
    needs its longest side >= ``min(detect_max_size, longest box side)``, i.e. a reduced
    box side >= ``detect_max_size`` (or no reduction when ``detect_max_size`` is None).
    """
    bound = smallest_box_side(width, height, params)
    for k in DCT_SCALES:
        if k > min(width, height):
            continue
        if bound / k < params.size:
            continue
        if with_detect and k > 1 and (params.detect_max_size is None or bound / k < params.detect_max_size):
            continue
        return k
    return 1


def search_factor(height: int, params: CropParams) -> int:
    """The coarsest DCT reduction that keeps the image height >= ``search_min_height``."""
    for k in DCT_SCALES:
        if math.ceil(height / k) >= params.search_min_height:
            return k
    return 1


def choose_box(
    width: int, height: int, search: np.ndarray | None, factor: int, params: CropParams
) -> tuple[tuple[int, int, int, int], str]:
    """The crop box in full-resolution pixels and how it was chosen.

    ``search`` is the image reduced ``factor`` times (blurred as PIL does when
    ``factor == 1``); only read for wide images.
    """
    if not is_wide(width, height, params):
        return square_box(width, height), "square"
    assert search is not None
    arr = pil_blur(search) if factor == 1 else search
    found = foreground_box(arr, params.bright_margin, params.strip_divisor)
    if found is None:
        if params.reject_no_foreground:
            raise CropReject(
                "no_fov",
                f"no pixel exceeds the border background by more than {params.bright_margin}",
            )
        return square_box(width, height), "square_no_foreground"
    x1, y1, x2, y2 = found
    box = (x1 * factor, y1 * factor, min(x2 * factor, width), min(y2 * factor, height))
    if box_too_small(box, height, params):
        return square_box(width, height), "square_small_box"
    return box, "foreground"


# --------------------------------------------------------------------------- decoding


def _read_bytes(src: Path) -> bytes:
    if not src.exists():
        raise CropReject("missing", f"{src} does not exist")
    if not src.is_file():
        raise CropReject("unreadable", f"{src} is not a regular file")
    data = src.read_bytes()
    if not data:
        raise CropReject("empty_file", f"{src} has zero bytes")
    return data


def _open(data: bytes, src: Path) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError as exc:
        raise CropReject("unreadable", f"{src}: not an image PIL can identify ({exc})") from None
    except (OSError, ValueError, SyntaxError, struct.error, Image.DecompressionBombError) as exc:
        raise CropReject("unreadable", f"{src}: {exc}") from None
    return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """8-bit RGB of any Pillow mode (16-bit/32-bit/float greyscale scaled to 0..255)."""
    if im.mode == "RGB":
        return im
    if im.mode.startswith("I") or im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(arr.max()), 255.0)
        if top > 255:
            arr = arr * (255.0 / top)
        grey = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), mode="L")
        return grey.convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # what Pillow asks for before dropping the alpha
    return im.convert("RGB")  # alpha dropped (the background is black anyway)


def _load(im: Image.Image, src: Path) -> None:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        raise RuntimeError(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on; truncated JPEGs would be decoded "
            "with grey. Turn it off before cropping."
        )
    try:
        im.load()
    except OSError as exc:
        if "truncated" in str(exc):
            raise CropReject("truncated", f"{src}: {exc}") from None
        raise CropReject("unreadable", f"{src}: {exc}") from None
    except (ValueError, SyntaxError, struct.error) as exc:
        raise CropReject("unreadable", f"{src}: {exc}") from None


def decode_reduced(data: bytes, src: Path, factor: int) -> tuple[Image.Image, int, int, int]:
    """Decode the JPEG ``factor`` times smaller (DCT scaling). Returns (RGB image, w, h, factor).

    Other formats are decoded at full size (factor 1 is returned).
    """
    im = _open(data, src)
    width, height = im.size
    if factor > 1 and im.format == "JPEG":
        im.draft("RGB", (width // factor, height // factor))
    _load(im, src)
    got = im.size
    actual = next(
        (k for k in DCT_SCALES if (math.ceil(width / k), math.ceil(height / k)) == got), None
    )
    if actual is None:  # pragma: no cover - libjpeg only scales by 1/1, 1/2, 1/4, 1/8
        raise RuntimeError(f"{src}: unexpected reduced size {got} of a {width}x{height} JPEG")
    return _to_rgb(im), width, height, actual


# --------------------------------------------------------------------------- cropping


def _resize_from(im: Image.Image, box: Sequence[float], size: tuple[int, int]) -> Image.Image:
    """Lanczos-resize the region ``box`` (in ``im`` pixels, maybe fractional) to ``size``.

    The region is cut first (enclosing integer rectangle) so that, as in the original's
    crop-then-resize, no pixel outside it contributes.
    """
    x1, y1, x2, y2 = box
    ix1, iy1 = math.floor(x1), math.floor(y1)
    ix2, iy2 = min(math.ceil(x2), im.width), min(math.ceil(y2), im.height)
    region = im.crop((ix1, iy1, ix2, iy2))
    rel = (x1 - ix1, y1 - iy1, min(x2, ix2) - ix1, min(y2, iy2) - iy1)
    if rel == (0, 0, region.width, region.height):
        if region.size == size:
            return region
        return region.resize(size, Image.LANCZOS)
    return region.resize(size, Image.LANCZOS, box=rel)


def detect_size(box: Sequence[int], detect_max_size: int | None) -> tuple[int, int]:
    """(width, height) of the detection crop: the box, downscaled (aspect kept) to fit."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    longest = max(bw, bh)
    if detect_max_size is None or longest <= detect_max_size:
        return bw, bh
    f = detect_max_size / longest
    return max(1, round(bw * f)), max(1, round(bh * f))


def save_jpeg(im: Image.Image, path: str | os.PathLike, quality: int) -> None:
    """Save as JPEG (4:4:4 chroma), atomically."""
    with atomic_path(path) as tmp:
        im.save(tmp, format="JPEG", quality=quality, subsampling=0)


def crop_image(
    src: str | os.PathLike,
    out_path: str | os.PathLike | None,
    det_path: str | os.PathLike | None,
    params: CropParams = CropParams(),
) -> CropResult:
    """Crop one fundus photograph (JPEG, or any format Pillow reads): write the ``size``
    crop to ``out_path`` and the detection crop to ``det_path`` (either may be None).
    Raises :class:`CropReject` for unusable images."""
    src = Path(src)
    data = _read_bytes(src)
    header = _open(data, src)
    width, height = header.size
    k_search = search_factor(height, params)
    k_crop = min(decode_factor(width, height, params, with_detect=False), k_search)
    k_dec = min(decode_factor(width, height, params, with_detect=det_path is not None), k_crop)
    if header.format != "JPEG":
        k_dec = 1  # no DCT scaling: a full decode, reduced by box averaging below
    im, width, height, got = decode_reduced(data, src, k_dec)
    if got != k_dec:  # pragma: no cover - draft() picks exactly the requested scale
        raise RuntimeError(f"{src}: asked libjpeg for a 1/{k_dec} decode, got 1/{got}")
    reduced = {k_dec: im}

    def at(k: int) -> Image.Image:  # the image reduced k times (box average of the decode)
        if k not in reduced:
            reduced[k] = im.reduce(k // k_dec)
        return reduced[k]

    search_arr = np.asarray(at(k_search))
    mean = float(search_arr.mean())
    if mean < params.min_mean_intensity:
        raise CropReject(
            "blank", f"mean intensity {mean:.2f} < crop.min_mean_intensity {params.min_mean_intensity}"
        )
    box, method = choose_box(width, height, search_arr, k_search, params)

    result = CropResult(width, height, box, method, k_crop)
    if out_path is not None:
        crop = _resize_from(at(k_crop), [c / k_crop for c in box], (params.size, params.size))
        save_jpeg(crop, out_path, 100)
    if det_path is not None:
        dw, dh = detect_size(box, params.detect_max_size)
        save_jpeg(_resize_from(im, [c / k_dec for c in box], (dw, dh)), det_path, params.detect_quality)
        result.det_width, result.det_height = dw, dh
    return result


def crop_reference(
    src: str | os.PathLike, params: CropParams = CropParams()
) -> tuple[Image.Image, tuple[int, int, int, int], str]:
    """The original algorithm, written plainly: full decode, PIL blur, box, crop, Lanczos.

    Returns (size x size RGB image, box, method). No reject checks: the yardstick of
    :func:`crop_image` in the tests and the benchmark.
    """
    img = Image.open(src)
    img.load()
    img = img.convert("RGB")
    w, h = img.size
    box, method = None, "square"
    if w > params.wide_ratio * h:
        ba = np.asarray(img.filter(ImageFilter.BLUR)).astype(np.int32)
        strip = max(w // params.strip_divisor, 1)
        background = np.maximum(ba[:, :strip].max(axis=(0, 1)), ba[:, w - strip:].max(axis=(0, 1)))
        foreground = (ba > background + params.bright_margin).any(axis=2)
        ys, xs = np.nonzero(foreground)
        if xs.size == 0:
            method = "square_no_foreground"
        else:
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            method = "foreground"
            if box[2] - box[0] < params.min_box_fraction * h or box[3] - box[1] < params.min_box_fraction * h:
                box, method = None, "square_small_box"
    if box is None:
        box = square_box(w, h)
    return img.crop(box).resize((params.size, params.size), Image.LANCZOS), box, method


# --------------------------------------------------------------------------- shards


def shard_rows(n_rows: int, shard: int, n_shards: int) -> np.ndarray:
    """Row indices of shard ``shard``: the rows i with ``i % n_shards == shard``."""
    if n_shards < 1 or not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is not in 0..{n_shards - 1}")
    return np.arange(shard, n_rows, n_shards)


def read_labels(labels_csv: str | os.PathLike) -> pd.DataFrame:
    """The labels table, checked: required columns, unique image names."""
    labels = pd.read_csv(labels_csv, dtype={"image": str, "patient_id": str, "eye": str, "split": str, "path": str})
    missing = [c for c in LABEL_COLUMNS if c not in labels.columns]
    if missing:
        raise ValueError(
            f"{labels_csv}: missing column(s) {missing}; the labels table needs "
            f"{list(LABEL_COLUMNS)} (written by rule eyepacs_labels)"
        )
    dup = labels["image"][labels["image"].duplicated()].unique()
    if len(dup):
        raise ValueError(
            f"{labels_csv}: image names must be unique (crops are named after them); "
            f"duplicated: {list(dup[:10])}"
        )
    if labels["path"].isna().any():
        bad = labels.loc[labels["path"].isna(), "image"].tolist()[:10]
        raise ValueError(f"{labels_csv}: empty path for image(s) {bad}")
    return labels


@dataclass
class CropTask:
    """One image to crop: labels row, name, raw file, 512-crop and detection-crop paths."""

    row: int
    image: str
    src: str
    out: str | None
    det: str | None
    params: CropParams = field(repr=False)


def _crop_task(task: CropTask) -> dict:
    base = {"row": task.row, "status": "ok", "reason": "", "detail": ""}
    try:
        res = crop_image(task.src, task.out, task.det, task.params)
    except CropReject as rej:
        return {**base, "status": "rejected", "reason": rej.reason, "detail": rej.detail}
    except Exception as exc:  # a bug, not bad input: stop with the file named
        raise RuntimeError(f"cropping {task.src} failed unexpectedly: {exc!r}") from exc
    x1, y1, x2, y2 = res.box
    return {
        **base, "path": task.out, "det_path": task.det, "det_width": res.det_width,
        "det_height": res.det_height, "orig_width": res.orig_width, "orig_height": res.orig_height,
        "box_x1": x1, "box_y1": y1, "box_x2": x2, "box_y2": y2, "box_method": res.box_method,
        "decode_scale": res.decode_scale,
    }


def init_worker() -> None:
    """One OpenCV thread per process: the parallelism is the process pool."""
    try:
        import cv2

        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover
        pass


def run_tasks(tasks: Sequence[CropTask], workers: int, desc: str = "crop") -> list[dict]:
    """Crop every task, in a pool of ``workers`` processes (in-process when 1), with progress."""
    from lesioncl.progress import progress

    if workers <= 1 or len(tasks) <= 1:
        init_worker()
        return [_crop_task(t) for t in progress(tasks, desc=desc, unit="img", mininterval=2)]
    from lesioncl.utils import worker_context

    chunk = max(1, min(16, len(tasks) // (workers * 8)))
    with worker_context() as ctx, ctx.Pool(workers, initializer=init_worker) as pool:
        return list(
            progress(pool.imap(_crop_task, tasks, chunksize=chunk), total=len(tasks), desc=desc,
                 unit="img", mininterval=2)
        )


def crop_shard(
    labels_csv: str | os.PathLike,
    shard: int,
    n_shards: int,
    crops_dir: str | os.PathLike,
    det_dir: str | os.PathLike,
    table_path: str | os.PathLike,
    params: CropParams,
    workers: int = 1,
) -> pd.DataFrame:
    """Crop the rows ``i % n_shards == shard`` of the labels table; write the shard table."""
    labels = read_labels(labels_csv)
    rows = shard_rows(len(labels), shard, n_shards)
    crops_dir, det_dir = Path(crops_dir), Path(det_dir)
    crops_dir.mkdir(parents=True, exist_ok=True)
    det_dir.mkdir(parents=True, exist_ok=True)
    part = labels.iloc[rows]
    tasks = [
        CropTask(int(i), str(r.image), str(r.path), str(crops_dir / f"{r.image}.jpeg"),
              str(det_dir / f"{r.image}.jpeg"), params)
        for i, r in zip(rows, part.itertuples(index=False))
    ]
    log.info("shard %d/%d: %d of %d images, %d worker(s), params %s", shard, n_shards, len(tasks),
             len(labels), workers, asdict(params))
    t0 = time.perf_counter()
    results = run_tasks(tasks, workers, desc=f"crop shard {shard}")
    elapsed = time.perf_counter() - t0
    meta = part.rename(columns={"path": "raw_path"})[["image", "patient_id", "eye", "level", "split", "raw_path"]]
    table = pd.concat([meta.reset_index(drop=True), pd.DataFrame(results)], axis=1)
    table = table.reindex(columns=list(SHARD_COLUMNS))
    for column in ("det_width", "det_height", "orig_width", "orig_height", "box_x1", "box_y1",
                   "box_x2", "box_y2", "decode_scale"):
        table[column] = table[column].astype("Int64")
    with atomic_path(table_path) as tmp:
        table.to_csv(tmp, index=False)

    n_ok = int((table["status"] == "ok").sum())
    log.info("shard %d: %d images in %.1f s (%.1f images/s): %d cropped, %d rejected",
             shard, len(table), elapsed, len(table) / max(elapsed, 1e-9), n_ok, len(table) - n_ok)
    for method, n in Counter(table.loc[table["status"] == "ok", "box_method"]).most_common():
        log.info("  box %s: %d", method, n)
    for _, r in table[table["status"] != "ok"].iterrows():
        log.warning("  rejected %s (%s): %s", r["image"], r["reason"], r["detail"])
    return table


# --------------------------------------------------------------------------- merge


def _shard_of(path: str | os.PathLike) -> int:
    stem = Path(path).name.removesuffix(".csv")
    if not stem.startswith("shard_") or not stem[6:].isdigit():
        raise ValueError(f"{path}: a shard table must be named shard_<n>.csv")
    return int(stem[6:])


def merge_shards(
    labels_csv: str | os.PathLike,
    tables: Iterable[str | os.PathLike],
    n_shards: int,
    manifest_path: str | os.PathLike,
    rejects_path: str | os.PathLike,
    summary_path: str | os.PathLike,
    qc_path: str | os.PathLike | None = None,
    qc_images: int = 6,
) -> dict:
    """Concatenate the shard tables into the manifest, the reject table and the summary.

    Fails (ValueError) unless every labels row is in exactly one shard table, as
    cropped (its crop file present) or rejected with a known reason.
    """
    labels = read_labels(labels_csv)
    tables = list(tables)
    shards = sorted(_shard_of(t) for t in tables)
    if shards != list(range(n_shards)):
        raise ValueError(f"expected the shard tables 0..{n_shards - 1}, got shards {shards}")
    parts = []
    for t in tables:
        part = pd.read_csv(t, dtype={"image": str, "patient_id": str, "eye": str, "split": str,
                                      "raw_path": str, "path": str, "det_path": str, "reason": str,
                                      "detail": str})
        missing = [c for c in SHARD_COLUMNS if c not in part.columns]
        if missing:
            raise ValueError(f"{t}: missing column(s) {missing}; rerun rule crop_shard")
        expected = shard_rows(len(labels), _shard_of(t), n_shards)
        if not np.array_equal(np.sort(part["row"].to_numpy()), expected):
            raise ValueError(
                f"{t}: rows do not match shard {_shard_of(t)} of {n_shards} of {labels_csv} "
                f"({len(part)} rows, {len(expected)} expected); labels changed? rerun rule crop_shard"
            )
        names = labels["image"].to_numpy()[part["row"].to_numpy()]
        if not np.array_equal(names, part["image"].to_numpy()):
            raise ValueError(f"{t}: image names differ from {labels_csv}; rerun rule crop_shard")
        parts.append(part)
    table = pd.concat(parts, ignore_index=True).sort_values("row").reset_index(drop=True)
    if len(table) != len(labels) or not np.array_equal(table["row"].to_numpy(), np.arange(len(labels))):
        raise ValueError(f"the shard tables do not cover the {len(labels)} rows of {labels_csv} exactly once")

    bad_status = set(table["status"]) - {"ok", "rejected"}
    if bad_status:
        raise ValueError(f"unknown status value(s) {sorted(bad_status)} in the shard tables")
    ok = table[table["status"] == "ok"]
    rej = table[table["status"] == "rejected"]
    bad_reason = set(rej["reason"]) - set(REJECT_REASONS)
    if bad_reason:
        raise ValueError(f"unknown reject reason(s) {sorted(bad_reason)} in the shard tables")
    absent = [p for p in ok["path"] if not Path(p).is_file()]
    absent += [p for p in ok["det_path"] if not Path(p).is_file()]
    if absent:
        raise ValueError(f"{len(absent)} crop file(s) listed as cropped do not exist, e.g. {absent[:3]}; "
                         "rerun rule crop_shard")

    int_columns = ["det_width", "det_height", "orig_width", "orig_height", "box_x1", "box_y1", "box_x2",
                   "box_y2", "decode_scale"]
    if ok[int_columns + ["path", "det_path", "box_method"]].isna().any().any():
        raise ValueError("a cropped row of the shard tables lacks its paths, sizes or box; rerun rule crop_shard")
    ok = ok.astype({c: "int64" for c in int_columns})
    manifest = ok[list(MANIFEST_COLUMNS)]
    rejects = rej.drop(columns="path").rename(columns={"raw_path": "path"})[list(REJECT_COLUMNS)]
    with atomic_path(manifest_path) as tmp:
        manifest.to_csv(tmp, index=False)
    with atomic_path(rejects_path) as tmp:
        rejects.to_csv(tmp, index=False)

    splits = sorted(labels["split"].unique())
    count = lambda df: {s: int((df["split"] == s).sum()) for s in splits} | {"total": len(df)}  # noqa: E731
    summary = {
        "n_shards": n_shards,
        "input": count(labels),
        "cropped": count(ok),
        "rejected": count(rej),
        "reasons": {r: int((rej["reason"] == r).sum()) for r in REJECT_REASONS},
        "reasons_by_split": {s: {r: int(((rej["reason"] == r) & (rej["split"] == s)).sum())
                                 for r in REJECT_REASONS} for s in splits},
        "box_method": {m: int((ok["box_method"] == m).sum()) for m in BOX_METHODS},
        "decode_scale": {str(k): int((ok["decode_scale"] == k).sum()) for k in DCT_SCALES},
    }
    for key in [*splits, "total"]:
        if summary["input"][key] != summary["cropped"][key] + summary["rejected"][key]:
            raise ValueError(f"crop counts do not add up for {key}: {summary}")
    if sum(summary["reasons"].values()) != summary["rejected"]["total"]:
        raise ValueError(f"reject reasons do not add up: {summary}")
    write_json(summary_path, summary)

    log.info("crop summary: %d input = %d cropped + %d rejected", summary["input"]["total"],
             summary["cropped"]["total"], summary["rejected"]["total"])
    for s in splits:
        log.info("  %s: %d input = %d cropped + %d rejected", s, summary["input"][s],
                 summary["cropped"][s], summary["rejected"][s])
    for reason, n in summary["reasons"].items():
        if n:
            log.warning("  rejected as %s: %d", reason, n)
    if qc_path is not None:
        qc_figure(ok, summary, qc_path, qc_images)
    return summary


# --------------------------------------------------------------------------- QC picture


def _qc_pick(methods: pd.Series, n: int) -> list[int]:
    """Up to n positions: one per box method first (rarest first), then evenly spread."""
    methods = methods.reset_index(drop=True)
    picks: list[int] = []
    for method in methods.value_counts(ascending=True).index:
        picks.append(int(np.flatnonzero(methods.to_numpy() == method)[0]))
    for i in np.linspace(0, len(methods) - 1, num=max(2 * n, 1)).round().astype(int):
        if int(i) not in picks:
            picks.append(int(i))
    return sorted(picks[:n])


def qc_figure(cropped: pd.DataFrame, summary: dict, path: str | os.PathLike, n: int = 6,
              tile: int = 256) -> None:
    """A few raw images with their crop box (red) beside their crops; counts underneath.

    ``cropped`` holds shard-table rows (raw_path, path, box_*, orig_*, box_method).
    """
    cropped = cropped.reset_index(drop=True)
    picks = _qc_pick(cropped["box_method"], n) if len(cropped) and n > 0 else []
    font = ImageFont.load_default(size=13)
    raw_w, row_h = 2 * tile, tile + 22
    canvas = Image.new("RGB", (raw_w + tile + 30, max(1, len(picks)) * row_h + 50), "white")
    draw = ImageDraw.Draw(canvas)
    for j, i in enumerate(picks):
        r = cropped.iloc[i]
        w, h = int(r["orig_width"]), int(r["orig_height"])
        y0 = j * row_h + 5
        scale = min(raw_w / w, tile / h)
        with Image.open(r["raw_path"]) as raw:
            raw.draft("RGB", (max(1, round(w * scale)), max(1, round(h * scale))))
            thumb = raw.convert("RGB").resize((max(1, round(w * scale)), max(1, round(h * scale))))
        canvas.paste(thumb, (5, y0))
        x1, y1, x2, y2 = (float(r[c]) * scale for c in ("box_x1", "box_y1", "box_x2", "box_y2"))
        draw.rectangle([5 + x1, y0 + y1, 5 + x2 - 1, y0 + y2 - 1], outline=(255, 0, 0), width=2)
        with Image.open(r["path"]) as crop:
            canvas.paste(crop.convert("RGB").resize((tile, tile), Image.LANCZOS), (raw_w + 20, y0))
        draw.text((5, y0 + tile + 3),
                  f"{r['image']} ({r['split']}, level {r['level']}): {w}x{h}, box "
                  f"({r['box_x1']}, {r['box_y1']}, {r['box_x2']}, {r['box_y2']}) {r['box_method']}",
                  fill="black", font=font)
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items() if v) or "none"
    y = len(picks) * row_h + 8
    draw.text((5, y), f"{summary['input']['total']} images: {summary['cropped']['total']} cropped, "
                      f"{summary['rejected']['total']} rejected ({reasons})", fill="black", font=font)
    draw.text((5, y + 20), "left: raw image with the crop box (red); right: the crop",
              fill="black", font=font)
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
