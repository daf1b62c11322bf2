"""The crop's settings, results and table columns, and its box logic.

The box: the foreground's bounding rectangle, or the centred square.
"""

import logging
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

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
#: The splits whose images get a detection crop: those the lesion index covers
#: (``lesioncl.lesions.SPLITS``; the test images are never given to the detector).
DETECT_SPLITS = ("train", "val")
LABEL_COLUMNS = ("image", "patient_id", "eye", "level", "split", "path")
#: The sizes and the box of a crop (integers; empty in a shard table for a rejected image).
SIZE_COLUMNS = (
    "det_width",
    "det_height",
    "orig_width",
    "orig_height",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
)
#: ``det_path``, ``det_width`` and ``det_height`` are empty for the splits without a
#: detection crop (not in :data:`DETECT_SPLITS`).
MANIFEST_COLUMNS = (*LABEL_COLUMNS, "det_path", *SIZE_COLUMNS)
REJECT_COLUMNS = ("image", "split", "level", "path", "reason")
#: Integer columns of a shard table (nullable: empty for a rejected image).
INT_COLUMNS = (*SIZE_COLUMNS, "decode_scale", "det_scale")
SHARD_COLUMNS = (
    "row",
    "image",
    "patient_id",
    "eye",
    "level",
    "split",
    "raw_path",
    "status",
    "reason",
    "detail",
    "path",
    "det_path",
    "det_width",
    "det_height",
    "orig_width",
    "orig_height",
    "box_x1",
    "box_y1",
    "box_x2",
    "box_y2",
    "box_method",
    "decode_scale",
    "det_scale",
)

# The 5x5 kernel of PIL's ImageFilter.BLUR (sum 16).
_BLUR_RING = np.ones((5, 5), np.float32)
_BLUR_RING[1:4, 1:4] = 0


@dataclass(frozen=True)
class CropParams:
    """The crop hyper-parameters (config section ``crop``)."""

    size: int = 512
    # the detector's img_scale (config detector.img_scale): the detection crop is the box
    # fitted into it as the detector's keep-ratio Resize fits it (None: no detection crop)
    detect_scale: tuple[int, int] | None = (1600, 1200)
    # the JPEG is decoded at the coarsest DCT scale that upscales the box by at most this
    # to the detection crop's size (1: never upscaled)
    detect_max_upscale: float = 1.05
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
        if self.detect_scale is not None:
            scale = tuple(int(v) for v in self.detect_scale)
            if len(scale) != 2 or min(scale) < 1:
                raise ValueError(
                    f"the detection crop's scale (detector.img_scale) must be two positive "
                    f"integers (w, h), got {self.detect_scale}"
                )
            object.__setattr__(self, "detect_scale", scale)
        if self.detect_max_upscale < 1:
            raise ValueError(f"crop.detect_max_upscale must be >= 1, got {self.detect_max_upscale}")
        if self.strip_divisor < 1:
            raise ValueError(f"crop.strip_divisor must be >= 1, got {self.strip_divisor}")
        if not 0 <= self.min_box_fraction <= 1:
            raise ValueError(
                f"crop.min_box_fraction must lie in [0, 1], got {self.min_box_fraction}"
            )
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
    """What :func:`crop_image` did with one image.

    The box is in full-resolution pixels, x2 and y2 exclusive.
    """

    orig_width: int
    orig_height: int
    box: tuple[int, int, int, int]
    box_method: str
    decode_scale: int  # the reduction (1, 2, 4, 8) the size x size crop was resampled from
    det_width: int | None = None
    det_height: int | None = None
    det_scale: int | None = None  # the DCT reduction the detection crop was resampled from


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


def _thresholds(strips: Sequence[np.ndarray], bright_margin: float) -> list[int | None]:
    """Per channel, the lowest foreground value: the maximum over the border ``strips``,
    plus ``bright_margin``, plus one (``pixel > bg + margin`` for integer pixels); None
    when that exceeds 255."""
    # max over rows, then columns: numpy's max over a tuple of axes of a strided slice is
    # ~30x slower
    background = np.max([s.max(axis=0).max(axis=0) for s in strips], axis=0)
    out: list[int | None] = []
    for bg in background:
        threshold = math.floor(float(bg) + bright_margin) + 1
        out.append(None if threshold > 255 else max(threshold, 0))
    return out


def _mask(arr: np.ndarray, thresholds: Sequence[int | None]) -> np.ndarray | None:
    """Pixels where any channel reaches its threshold (None: no channel can)."""
    mask = None
    for c, threshold in enumerate(thresholds):
        if threshold is not None:
            channel = arr[:, :, c] >= threshold
            mask = channel if mask is None else (mask | channel)
    return mask


def foreground_box(
    arr: np.ndarray, bright_margin: float, strip_divisor: int
) -> tuple[int, int, int, int] | None:
    """Bounding rectangle (x1, y1, x2, y2; exclusive ends) of the pixels brighter than the border.

    ``arr`` is the (blurred) (h, w, 3) uint8 image. Background = per-channel maximum over
    the left and right strips of width ``w // strip_divisor`` (at least 1); a pixel is
    foreground when any channel exceeds its background by more than ``bright_margin``.
    Returns None when no pixel is foreground.
    """
    strip = max(arr.shape[1] // strip_divisor, 1)
    mask = _mask(arr, _thresholds([arr[:, :strip], arr[:, -strip:]], bright_margin))
    if mask is None:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    return (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)


def refine_box(
    box: Sequence[int], fine: np.ndarray, k: int, coarse: int, params: CropParams
) -> tuple[int, int, int, int]:
    """A foreground box found on the image reduced ``coarse`` times, its edges searched
    again on ``fine``, the image reduced ``k < coarse`` times, each within a band of
    ``coarse / k + 2`` pixels around it (x2, y2 may pass the image by less than ``k``).

    The box error falls from about ``coarse`` to about ``k`` full-resolution pixels (0
    at ``k == 1``, where the PIL blur is applied as in the original; a band is blurred
    with a 2-pixel margin, so its blur is that of the whole image).
    """
    height, width = fine.shape[:2]
    band = coarse // k + 2

    def blurred(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        r0, r1, c0, c1 = max(r0, 0), min(r1, height), max(c0, 0), min(c1, width)
        if k > 1:
            return fine[r0:r1, c0:c1]
        m0, m1, n0, n1 = max(r0 - 2, 0), min(r1 + 2, height), max(c0 - 2, 0), min(c1 + 2, width)
        out = pil_blur(fine[m0:m1, n0:n1])
        return out[r0 - m0 : r0 - m0 + r1 - r0, c0 - n0 : c0 - n0 + c1 - c0]

    strip = max(width // params.strip_divisor, 1)
    strips = [blurred(0, height, 0, strip), blurred(0, height, width - strip, width)]
    thresholds = _thresholds(strips, params.bright_margin)
    x1, y1 = box[0] // k, box[1] // k
    x2, y2 = -(-box[2] // k), -(-box[3] // k)
    edges = {  # box index: the band's columns, rows, and whether the edge is a column
        0: (x1 - band, x1 + band, y1 - band, y2 + band, True),  # left: first column
        2: (x2 - band, x2 + band, y1 - band, y2 + band, True),  # right: last column
        1: (x1 - band, x2 + band, y1 - band, y1 + band, False),  # top: first row
        3: (x1 - band, x2 + band, y2 - band, y2 + band, False),  # bottom: last row
    }
    out = list(box)
    for i, (c0, c1, r0, r1, column) in edges.items():
        mask = _mask(blurred(r0, r1, c0, c1), thresholds)
        hits = np.flatnonzero(mask.any(axis=0 if column else 1)) if mask is not None else []
        if len(hits):
            last = i >= 2
            pos = max(c0 if column else r0, 0) + int(hits[-1] if last else hits[0]) + int(last)
            out[i] = pos * k
    return (out[0], out[1], out[2], out[3])


def is_wide(width: int, height: int, params: CropParams) -> bool:
    return width > params.wide_ratio * height


def box_too_small(box: Sequence[int], height: int, params: CropParams) -> bool:
    return (box[2] - box[0]) < params.min_box_fraction * height or (
        box[3] - box[1]
    ) < params.min_box_fraction * height


def smallest_box_side(width: int, height: int, params: CropParams) -> float:
    """A lower bound of both sides of any box the algorithm can choose for a w x h image."""
    if is_wide(width, height, params):
        # foreground boxes have both sides >= min_box_fraction * h; the fallback square is h x h
        return min(params.min_box_fraction * height, height)
    return min(width, height)


def box_factor(side: float, size: float) -> int:
    """The coarsest reduction (8, 4, 2 or 1) that leaves a ``side`` px long side >= ``size``."""
    return next((k for k in DCT_SCALES if side / k >= size), 1)


def decode_factor(width: int, height: int, params: CropParams) -> int:
    """The coarsest DCT reduction (8, 4, 2 or 1) at which the ``size`` crop of any box the
    algorithm can choose needs no upsampling (the box is not known before decoding)."""
    return box_factor(smallest_box_side(width, height, params), params.size)


def detect_size(box: Sequence[int], scale: Sequence[int]) -> tuple[int, int]:
    """(w, h) of the detection crop: the box fitted into ``scale`` (w, h) as MMDetection's
    keep-ratio ``Resize`` fits an image (``mmcv.rescale_size``: the long side into
    ``max(scale)``, the short side into ``min(scale)``, up or down, rounding included),
    so that the detector's own resize leaves it as it is."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    factor = min(max(scale) / max(bw, bh), min(scale) / min(bw, bh))
    return int(bw * factor + 0.5), int(bh * factor + 0.5)


def region_factor(box: Sequence[int], out_size: Sequence[int], max_upscale: float) -> int:
    """The coarsest DCT reduction (8, 4, 2 or 1) at which the box, resampled to
    ``out_size`` (w, h), is upscaled by at most ``max_upscale`` on either axis."""
    bw, bh = box[2] - box[0], box[3] - box[1]
    ow, oh = out_size
    return next(
        (k for k in DCT_SCALES if bw * max_upscale >= ow * k and bh * max_upscale >= oh * k), 1
    )


def detect_factor(width: int, height: int, params: CropParams) -> int:
    """The DCT reduction the detection crop is expected to need, before the box is known.

    The box is taken to be the full height: the centred square for a wide image (any
    box of that height needs no finer scale), the exact box otherwise. A foreground box
    lower than that may need a finer decode (:func:`lesioncl.crop.crop_image` then
    decodes again).
    """
    if params.detect_scale is None:
        return DCT_SCALES[0]
    side = min(width, height)
    box = square_box(side, side) if is_wide(width, height, params) else square_box(width, height)
    return region_factor(box, detect_size(box, params.detect_scale), params.detect_max_upscale)


def search_factor(height: int, params: CropParams) -> int:
    """The coarsest DCT reduction that keeps the image height >= ``search_min_height``."""
    for k in DCT_SCALES:
        if math.ceil(height / k) >= params.search_min_height:
            return k
    return 1


def choose_box(
    width: int,
    height: int,
    search: np.ndarray | None,
    factor: int,
    params: CropParams,
    fine: np.ndarray | None = None,
    fine_factor: int | None = None,
) -> tuple[tuple[int, int, int, int], str]:
    """The crop box in full-resolution pixels and how it was chosen.

    ``search`` is the image reduced ``factor`` times (blurred as PIL does when
    ``factor == 1``); only read for wide images. ``fine``, the image reduced
    ``fine_factor < factor`` times, refines a foreground box (:func:`refine_box`).
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
    box = tuple(c * factor for c in found)
    if fine is not None and fine_factor is not None and fine_factor < factor:
        box = refine_box(box, fine, fine_factor, factor, params)
    box = (box[0], box[1], min(box[2], width), min(box[3], height))
    if box_too_small(box, height, params):
        return square_box(width, height), "square_small_box"
    return box, "foreground"
