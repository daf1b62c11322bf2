"""Decoding at a reduced DCT scale and cropping one image.

:func:`crop_image` is the production path; :func:`crop_reference` the plain original.
"""

import io
import logging
import math
import os
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import (
    Image,
    ImageFile,
    ImageFilter,
    UnidentifiedImageError,
)

from lesioncl.crop.box import (
    DCT_SCALES,
    CropParams,
    CropReject,
    CropResult,
    box_factor,
    choose_box,
    decode_factor,
    detect_factor,
    detect_size,
    region_factor,
    search_factor,
    square_box,
)
from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.crop")


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


def _resample_region(arr: np.ndarray, box: Sequence[float], size: tuple[int, int]) -> Image.Image:
    """The region ``box`` (in pixels of the (h, w, 3) array ``arr``) resampled to ``size``
    with OpenCV: bilinear when it shrinks by less than 2 (every pixel counts; what the
    detector's own resize does) or grows, area-averaged when it shrinks more. The region
    is rounded to whole pixels of ``arr``: from a 1/k decode its edges move by at most
    k/2 full-resolution pixels."""
    import cv2

    height, width = arr.shape[:2]
    x1, y1, x2, y2 = (round(c) for c in box)
    x2, y2 = max(min(x2, width), x1 + 1), max(min(y2, height), y1 + 1)
    region = arr[y1:y2, x1:x2]
    if region.shape[1::-1] == tuple(size):
        return Image.fromarray(np.ascontiguousarray(region))
    shrink = max(region.shape[1] / size[0], region.shape[0] / size[1])
    how = cv2.INTER_LINEAR if shrink < 2 else cv2.INTER_AREA
    return Image.fromarray(cv2.resize(region, size, interpolation=how))


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
    Raises :class:`CropReject` for unusable images.

    One decode serves the box search, the ``size`` crop and the detection crop (the box
    fitted to ``detect_scale``). Its scale does not depend on whether the detection
    crop is written, so neither do the ``size`` crop's pixels; only a foreground box
    lower than the image, for which that scale is too coarse, is decoded again for
    its detection crop.
    """
    src = Path(src)
    data = _read_bytes(src)
    header = _open(data, src)
    width, height = header.size
    k_search = search_factor(height, params)
    k_dec = min(
        decode_factor(width, height, params), k_search, detect_factor(width, height, params)
    )
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
            "blank",
            f"mean intensity {mean:.2f} < crop.min_mean_intensity {params.min_mean_intensity}",
        )
    write_det = det_path is not None and params.detect_scale is not None
    decoded = np.asarray(im) if k_dec < k_search or write_det else None
    box, method = choose_box(width, height, search_arr, k_search, params, decoded, k_dec)

    # the coarsest reduction that leaves this box >= size (often the search image)
    k_crop = max(k_dec, box_factor(min(box[2] - box[0], box[3] - box[1]), params.size))
    result = CropResult(width, height, box, method, k_crop)
    if out_path is not None:
        crop = _resize_from(at(k_crop), [c / k_crop for c in box], (params.size, params.size))
        save_jpeg(crop, out_path, 100)
    if write_det:
        dw, dh = detect_size(box, params.detect_scale)
        k_det = min(region_factor(box, (dw, dh), params.detect_max_upscale), k_dec)
        if k_det < k_dec:  # a box lower than expected: this decode is too coarse for it
            decoded = np.asarray(decode_reduced(data, src, k_det)[0])
        det = _resample_region(decoded, [c / k_det for c in box], (dw, dh))
        save_jpeg(det, det_path, params.detect_quality)
        result.det_width, result.det_height, result.det_scale = dw, dh, k_det
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
        background = np.maximum(ba[:, :strip].max(axis=(0, 1)), ba[:, w - strip :].max(axis=(0, 1)))
        foreground = (ba > background + params.bright_margin).any(axis=2)
        ys, xs = np.nonzero(foreground)
        if xs.size == 0:
            method = "square_no_foreground"
        else:
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            method = "foreground"
            if (
                box[2] - box[0] < params.min_box_fraction * h
                or box[3] - box[1] < params.min_box_fraction * h
            ):
                box, method = None, "square_small_box"
    if box is None:
        box = square_box(w, h)
    return img.crop(box).resize((params.size, params.size), Image.LANCZOS), box, method
