"""Masks -> boxes: decoding, binarising, one box per 8-connected component, scaling."""

from __future__ import annotations

import io
import logging

import numpy as np

log = logging.getLogger("lesioncl.idrid")


# --------------------------------------------------------------------------- masks
def read_mask_values(data: bytes) -> np.ndarray:
    """Decode a mask file into a 2-D array: the maximum over its colour channels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode == "1":
                arr = np.asarray(img, dtype=bool).astype(np.uint8) * 255
            elif mode in ("P", "PA"):
                arr = np.asarray(img.convert("RGBA"))[..., :3]
            elif mode in ("LA", "La", "RGBA", "RGBa"):
                arr = np.asarray(img)[..., :-1]
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(img.convert("RGB"))
            else:  # L, RGB, I, I;16*, F
                arr = np.asarray(img)
    except Exception:  # noqa: BLE001 - exotic TIFF (compression, planar, ...)
        import tifffile

        arr = tifffile.imread(io.BytesIO(data))
        if arr.ndim == 3 and arr.shape[0] in (1, 2, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # drop alpha
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"mask has shape {arr.shape}; expected a 2-D image")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def binarise(values: np.ndarray, threshold: float) -> tuple[np.ndarray, bool]:
    """Lesion pixels: ``values > threshold``; a 0/1 mask (maximum exactly 1) uses ``>= 1``.

    Returns (binary mask, whether it was treated as a 0/1 mask).
    """
    vmax = values.max() if values.size else 0
    if vmax == 1 and threshold >= 1:
        return values >= 1, True
    return values > threshold, False


def mask_to_boxes(mask: np.ndarray) -> np.ndarray:
    """One box per 8-connected component: int array (K, 5) of x, y, w, h, pixel area.

    The box covers the component's pixels (x + w = max_x + 1); components are in
    raster order of their first pixel.
    """
    import cv2

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not mask.any():
        return np.zeros((0, 5), dtype=np.int64)
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8, ltype=cv2.CV_32S)
    cols = [
        cv2.CC_STAT_LEFT,
        cv2.CC_STAT_TOP,
        cv2.CC_STAT_WIDTH,
        cv2.CC_STAT_HEIGHT,
        cv2.CC_STAT_AREA,
    ]
    return stats[1:, cols].astype(np.int64)


def output_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(w, h) with the longest side at most ``max_size``, aspect kept; never upscales."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_boxes(
    boxes: np.ndarray,
    sx: float,
    sy: float,
    width: int,
    height: int,
    min_size: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Scale (K, 4) [x, y, w, h] boxes by (sx, sy); grow boxes below ``min_size``.

    A box narrower (lower) than ``min_size`` is widened (heightened) to it around its
    centre and shifted to stay inside the ``width`` x ``height`` image. Returns the
    boxes (float) and how many were grown.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array([sx, sy, sx, sy])
    grown = np.zeros(len(out), dtype=bool)
    for pos, size, limit in ((0, 2, width), (1, 3, height)):
        small = out[:, size] < min_size
        if small.any():
            new = min(min_size, limit)
            centre = out[small, pos] + out[small, size] / 2
            out[small, pos] = np.clip(centre - new / 2, 0, limit - new)
            out[small, size] = new
            grown |= small
    return out, int(grown.sum())
