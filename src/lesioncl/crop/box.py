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
MANIFEST_COLUMNS = (*LABEL_COLUMNS, "det_path", *SIZE_COLUMNS)
REJECT_COLUMNS = ("image", "split", "level", "path", "reason")
#: Integer columns of a shard table (nullable: empty for a rejected image).
INT_COLUMNS = (*SIZE_COLUMNS, "decode_scale")
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
            raise ValueError(
                f"crop.detect_max_size must be positive or null, got {self.detect_max_size}"
            )
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


def foreground_box(
    arr: np.ndarray, bright_margin: float, strip_divisor: int
) -> tuple[int, int, int, int] | None:
    """Bounding rectangle (x1, y1, x2, y2; exclusive ends) of the pixels brighter than the border.

    ``arr`` is the (blurred) (h, w, 3) uint8 image. Background = per-channel maximum over
    the left and right strips of width ``w // strip_divisor`` (at least 1); a pixel is
    foreground when any channel exceeds its background by more than ``bright_margin``.
    Returns None when no pixel is foreground.
    """
    h, w = arr.shape[:2]
    strip = max(w // strip_divisor, 1)
    background = np.maximum(arr[:, :strip].max(axis=(0, 1)), arr[:, w - strip :].max(axis=(0, 1)))
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
    return (box[2] - box[0]) < params.min_box_fraction * height or (
        box[3] - box[1]
    ) < params.min_box_fraction * height


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
        if (
            with_detect
            and k > 1
            and (params.detect_max_size is None or bound / k < params.detect_max_size)
        ):
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
