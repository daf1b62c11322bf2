"""The window sources beside the detector's index: its control and, on synthetic data, the truth.

Lesion-based CL takes its windows from a lesion index. The detector's index is the
paper's source; two more sources answer what it is worth:

* :func:`random_index` – the **control**: every image of an index keeps its number of
  boxes and their sizes, but each box is moved to a uniform random place inside the
  field of view. A backbone pretrained on it sees the same amount of fundus at the same
  scale, only not where the detector pointed; on real data it is what tells whether the
  detector helps at all.
* :func:`truth_index` – the **oracle** (synthetic data only): the generator's own lesion
  boxes (``eyepacs_lesions.csv``, raw-image pixels) carried into the crops through the
  crop boxes of ``crop_manifest.csv`` and filtered like the detector's index (size and
  border), optionally for some lesion kinds only.

Both are written in the format of the detector's index (:mod:`.fileformat`), so the
pretraining stage reads any of them the same way.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lesioncl.lesions.fileformat import BOX_COLUMNS, ROUND_DECIMALS, SPLITS, validate_index
from lesioncl.lesions.predict import index_key
from lesioncl.pretrain.data import image_key

log = logging.getLogger("lesioncl.lesions")

#: The lesion kinds the detector is trained on (IDRiD's four masks), in the generator's names.
DETECTOR_KINDS = ("microaneurysm", "haemorrhage", "hard_exudate", "soft_exudate")
#: A crop pixel belongs to the field of view when its brightest channel is above this.
FOV_THRESHOLD = 20
_CROP_BOX = ["box_x1", "box_y1", "box_x2", "box_y2"]


@dataclass(frozen=True)
class TruthIndexSettings:
    """What decides the truth index (config ``lesion_index``; defaults: the schema's).

    Rule ``lesions_truth_index`` fills it from ``params.settings``.
    """

    truth_kinds: tuple[str, ...] = DETECTOR_KINDS  # lesion kinds whose boxes are kept
    max_box_size: float = 128  # as the detector's index: width and height <= this
    border_margin: float = 5  # as the detector's index: x1..y2 inside (margin, size - margin)
    size: int = 512  # the side of the square crops (config ``crop.size``)

    def __post_init__(self) -> None:
        object.__setattr__(self, "truth_kinds", tuple(self.truth_kinds))
        if not self.truth_kinds:
            raise ValueError("lesion_index.truth_kinds is empty: name at least one lesion kind")


@dataclass(frozen=True)
class RandomIndexSettings:
    """What decides the random-window control (rule ``lesions_random_index``)."""

    border_margin: float = 5  # boxes stay inside (margin, size - margin), as the index
    size: int = 512  # the side of the square crops (config ``crop.size``)
    seed: int = 0  # the workflow's seed: the places drawn


# --------------------------------------------------------------------------- the truth
def truth_boxes(lesions: pd.DataFrame, manifest: pd.DataFrame, size: int) -> pd.DataFrame:
    """The generator's lesion boxes in ``size``×``size`` crop pixels.

    ``lesions`` has columns image, kind, x1, y1, x2, y2 (raw-image pixels, x2/y2
    exclusive); ``manifest`` the crop manifest (image, split, level, box_x1..box_y2 in
    raw pixels). Returns image, split, level, kind, x1..y2 for the lesions of cropped
    images, clipped to the crop; lesions of rejected images are left out.
    """
    need = {"image", "split", "level", *_CROP_BOX}
    missing = sorted(need - set(manifest.columns))
    if missing:
        raise ValueError(f"the crop manifest lacks columns {missing}; rerun crop_merge")
    rows = manifest[["image", "split", "level", *_CROP_BOX]].copy()
    rows["image"] = rows["image"].astype(str).map(image_key)
    table = lesions.assign(image=lesions["image"].astype(str).map(image_key)).merge(
        rows, on="image", how="inner"
    )
    sx = size / (table["box_x2"] - table["box_x1"]).astype(float)
    sy = size / (table["box_y2"] - table["box_y1"]).astype(float)
    out = pd.DataFrame(
        {
            "image": table["image"],
            "split": table["split"],
            "level": table["level"].astype(int),
            "kind": table["kind"].astype(str),
            "x1": ((table["x1"] - table["box_x1"]) * sx).clip(0, size),
            "y1": ((table["y1"] - table["box_y1"]) * sy).clip(0, size),
            "x2": ((table["x2"] - table["box_x1"]) * sx).clip(0, size),
            "y2": ((table["y2"] - table["box_y1"]) * sy).clip(0, size),
        }
    )
    # a lesion wholly outside the crop (clipped to a line) is not in the image
    inside = (out["x2"] > out["x1"]) & (out["y2"] > out["y1"])
    return out[inside].reset_index(drop=True)


def truth_by_image(truth: pd.DataFrame) -> dict[str, dict[str, np.ndarray]]:
    """``{split: {image key: (n, 4) float boxes}}`` of a :func:`truth_boxes` table."""
    return {
        split: {k: g[BOX_COLUMNS].to_numpy(float) for k, g in ts.groupby("image")}
        for split, ts in truth.groupby("split")
    }


def truth_index(
    boxes: pd.DataFrame, settings: TruthIndexSettings
) -> tuple[dict[str, dict[str, list[tuple[float, float, float, float]]]], dict]:
    """The index of the true boxes of ``settings.truth_kinds`` (filtered like the detector's).

    Returns the index (every split of :data:`SPLITS`) and counts: boxes of each kind in,
    kept, and dropped by size or border.
    """
    unknown = sorted(set(settings.truth_kinds) - set(boxes["kind"].unique()) - set(DETECTOR_KINDS))
    if unknown and len(boxes):
        known = sorted(set(boxes["kind"].unique()) | set(DETECTOR_KINDS))
        raise ValueError(
            f"lesion_index.truth_kinds names {unknown}, which the generator never drew; "
            f"choose from {known}"
        )
    chosen = boxes[boxes["split"].isin(SPLITS) & boxes["kind"].isin(settings.truth_kinds)]
    xyxy = chosen[BOX_COLUMNS].astype(float).round(ROUND_DECIMALS)
    size_ok = ((xyxy["x2"] - xyxy["x1"]) <= settings.max_box_size) & (
        (xyxy["y2"] - xyxy["y1"]) <= settings.max_box_size
    )
    lo, hi = settings.border_margin, settings.size - settings.border_margin
    border_ok = pd.Series(True, index=chosen.index)
    for c in BOX_COLUMNS:
        border_ok &= (xyxy[c] > lo) & (xyxy[c] < hi)
    kept = chosen[size_ok & border_ok]
    index: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {s: {} for s in SPLITS}
    for (split, image), group in kept.groupby(["split", "image"], sort=True):
        index[str(split)][index_key(str(image))] = [
            tuple(round(float(v), ROUND_DECIMALS) for v in box)
            for box in group[BOX_COLUMNS].to_numpy()
        ]
    counts = {
        "kinds": list(settings.truth_kinds),
        "boxes_in": _by_kind(chosen),
        "kept": _by_kind(kept),
        "dropped_size": _by_kind(chosen[~size_ok]),
        "dropped_border": _by_kind(chosen[size_ok & ~border_ok]),
    }
    return validate_index(index, source="the truth index", size=settings.size), counts


def _by_kind(table: pd.DataFrame) -> dict[str, int]:
    return {str(k): int(v) for k, v in table["kind"].value_counts().sort_index().items()}


# --------------------------------------------------------------------------- random windows
def _centres(boxes: np.ndarray) -> np.ndarray:
    return np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)


def _inside(points: np.ndarray, boxes: np.ndarray, grow: float = 0.0) -> np.ndarray:
    """(P, B) bool: point p inside box b grown by ``grow`` px on each side."""
    if len(points) == 0 or len(boxes) == 0:
        return np.zeros((len(points), len(boxes)), dtype=bool)
    x, y = points[:, 0:1], points[:, 1:2]
    return (
        (x >= boxes[None, :, 0] - grow)
        & (x <= boxes[None, :, 2] + grow)
        & (y >= boxes[None, :, 1] - grow)
        & (y <= boxes[None, :, 3] + grow)
    )


def fov_mask(image: np.ndarray, threshold: int = FOV_THRESHOLD) -> np.ndarray:
    """The field of view of a crop (H, W, 3 uint8): pixels whose brightest channel > threshold."""
    return np.asarray(image).max(axis=2) > threshold


def image_rng(seed: int, image: str) -> np.random.Generator:
    """A generator for one image: the same places whatever other images the index holds."""
    return np.random.default_rng([int(seed) % 2**63, zlib.crc32(image_key(image).encode())])


def place_boxes(
    sizes: Sequence[tuple[float, float]],
    mask: np.ndarray,
    rng: np.random.Generator,
    border_margin: float,
    tries: int = 1000,
) -> list[tuple[float, float, float, float]]:
    """Boxes of the given (width, height), each at a uniform random place in ``mask``.

    A place is accepted when the box's four corners lie in the field of view and the box
    lies strictly inside ``(border_margin, size - border_margin)`` (as the index's boxes):
    centres are drawn uniformly from the field of view and redrawn until that holds.
    """
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        raise ValueError("the crop has no field of view (all pixels dark)")
    out = []
    for bw, bh in sizes:
        for _ in range(tries):
            i = int(rng.integers(len(xs)))
            cx, cy = xs[i] + rng.random(), ys[i] + rng.random()
            x1, y1, x2, y2 = cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2
            x1, y1, x2, y2 = (round(float(v), ROUND_DECIMALS) for v in (x1, y1, x2, y2))
            if min(x1, y1) <= border_margin or x2 >= w - border_margin or y2 >= h - border_margin:
                continue
            corners = [(x1, y1), (x2, y1), (x1, y2), (x2, y2)]
            if all(mask[min(int(y), h - 1), min(int(x), w - 1)] for x, y in corners):
                out.append((x1, y1, x2, y2))
                break
        else:
            raise ValueError(
                f"no place for a {bw:.1f}x{bh:.1f} box inside the field of view after {tries} tries"
            )
    return out


def random_index(
    index: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    crops: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    settings: RandomIndexSettings,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """The random-window control of ``index``: same images, same box count and sizes,
    uniform places in each crop's field of view.

    ``crops`` maps a split to its crop cache (images, rows) as
    :func:`lesioncl.crop.cache.open_crop_cache` returns it.
    """
    out: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {s: {} for s in SPLITS}
    out.update({split: {} for split in index})
    for split, name, boxes, image in _indexed_crops(index, crops, settings.size):
        sizes = [(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
        out[split][name] = place_boxes(
            sizes, fov_mask(image), image_rng(settings.seed, name), settings.border_margin
        )
    return validate_index(out, source="the random-window index", size=settings.size)


def _indexed_crops(
    index: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    crops: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    size: int,
):
    """(split, image name, its boxes, its crop) for every image of ``index``, the crop read
    from ``crops`` (a split's cache as :func:`lesioncl.crop.cache.open_crop_cache` returns
    it); an image or a split without its crops, or crops of another size: an error."""
    for split, images in index.items():
        if not images:
            continue
        if split not in crops:
            raise ValueError(f"no crop cache for the {split!r} split of the lesion index")
        array, rows = crops[split]
        if array.shape[1] != size:
            raise ValueError(
                f"the {split} crop cache holds {array.shape[1]}-px crops, the index "
                f"{size}-px ones; rerun crop_cache"
            )
        row_of = {image_key(str(n)): i for i, n in enumerate(rows["image"])}
        for name, boxes in images.items():
            key = image_key(name)
            if key not in row_of:
                raise ValueError(
                    f"image {name} of the lesion index is not in the {split} crop cache; the "
                    "index and the cache come from different crops – rerun lesions_index"
                )
            yield split, name, boxes, np.asarray(array[row_of[key]])


@dataclass(frozen=True)
class SalientIndexSettings:
    """What decides the salient-window control (rule ``lesions_salient_index``)."""

    border_margin: float = 5  # boxes stay inside (margin, size - margin), as the index
    size: int = 512  # the side of the square crops (config ``crop.size``)
    seed: int = 0  # the workflow's seed: which box size goes to which place


#: The salient-window control's contrast filter at a 256-px crop (it scales with the crop):
#: the difference of Gaussians of these sigmas (px), and the least distance between centres.
SALIENT_SIGMAS = (1.0, 3.0)
SALIENT_SPACING = 12
#: ... and the least response (grey levels) of a structure: a flat image has none.
SALIENT_MIN_CONTRAST = 1.0


def salient_places(image: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The centres (x, y) of a crop's contrasted small structures, strongest first.

    The local maxima (``SALIENT_SPACING`` px apart at least) of the absolute difference of
    Gaussians (``SALIENT_SIGMAS``) of the green channel, inside the field of view and as
    far from its edge; sizes are those of a 256-px crop, scaled to ``size``. Returns
    (centres (n, 2), responses).
    """
    import cv2

    scale = size / 256
    green = np.asarray(image)[..., 1].astype(np.float32)
    fine, coarse = (cv2.GaussianBlur(green, (0, 0), s * scale) for s in SALIENT_SIGMAS)
    dog = np.abs(fine - coarse).astype(np.float64)
    # ties broken by position, so that a plateau has one maximum and maxima are spaced
    dog += np.arange(dog.size, dtype=np.float64).reshape(dog.shape) * (1e-6 / dog.size)
    spacing = max(1, round(SALIENT_SPACING * scale))
    kernel = np.ones((2 * spacing + 1,) * 2, np.uint8)
    peaks = (dog == cv2.dilate(dog, kernel)) & (dog >= SALIENT_MIN_CONTRAST)
    # away from the field of view's edge, whose contrast is the strongest of all
    peaks &= cv2.erode(fov_mask(image).astype(np.uint8), kernel) > 0
    ys, xs = np.nonzero(peaks)
    order = np.argsort(-dog[ys, xs], kind="stable")
    return np.stack([xs[order], ys[order]], axis=1).astype(float), dog[ys, xs][order]


def salient_index(
    index: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    crops: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    settings: SalientIndexSettings,
    avoid: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """The salient-window control of ``index``: same images, same box count and sizes, each
    box centred on one of the image's most contrasted small structures (vessel crossings and
    branches, the disc's rim, texture, and lesions: a detector that knows nothing of
    lesions; :func:`salient_places`), the strongest first, each place used once.

    A box goes to the strongest free place where it lies inside the field of view and
    inside ``(border_margin, size - border_margin)``; an image with fewer such places than
    boxes keeps fewer boxes. ``avoid`` (``{split: {image_key: boxes (n, 4)}}``, e.g. the
    generator's true lesions): no centre within 4 px of these boxes (experiments).
    """
    out: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {s: {} for s in SPLITS}
    short, left_out = 0, []
    for split, name, boxes, image in _indexed_crops(index, crops, settings.size):
        centres, _ = salient_places(image, settings.size)
        far = (avoid or {}).get(split, {}).get(image_key(name))
        if far is not None:
            near = _inside(centres, np.asarray(far, dtype=float).reshape(-1, 4), 4.0)
            centres = centres[~near.any(axis=1)]
        sizes = [(x2 - x1, y2 - y1) for x1, y1, x2, y2 in boxes]
        image_rng(settings.seed, name).shuffle(sizes)
        placed = _place_at(sizes, centres, fov_mask(image), settings.border_margin)
        short += len(sizes) - len(placed)
        if placed:
            out[split][name] = placed
        else:
            left_out.append(f"{split}/{name}")
    if short:
        log.info(
            "salient-window control: %d boxes found no free contrasted place; %d images "
            "left out for want of any (%s)",
            short,
            len(left_out),
            ", ".join(left_out[:5]) + (", ..." if len(left_out) > 5 else ""),
        )
    return validate_index(out, source="the salient-window index", size=settings.size)


def _place_at(
    sizes: Sequence[tuple[float, float]], centres: np.ndarray, mask: np.ndarray, margin: float
) -> list[tuple[float, float, float, float]]:
    """Each box at the first free centre where it fits (inside the margins, its four
    corners in ``mask``); a box that fits nowhere is left out."""
    h, w = mask.shape
    free = np.ones(len(centres), bool)
    out = []
    for bw, bh in sizes:
        for i in np.flatnonzero(free):
            cx, cy = centres[i] + 0.5  # the pixel's centre
            x1, y1, x2, y2 = (
                round(float(v), ROUND_DECIMALS)
                for v in (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
            )
            if min(x1, y1) <= margin or x2 >= w - margin or y2 >= h - margin:
                continue
            corners = [(x1, y1), (x2, y1), (x1, y2), (x2, y2)]
            if all(mask[min(int(y), h - 1), min(int(x), w - 1)] for x, y in corners):
                out.append((x1, y1, x2, y2))
                free[i] = False
                break
    return out


def read_truth_lesions(path: str | os.PathLike) -> pd.DataFrame:
    """The generator's lesion table (``eyepacs_lesions.csv``), its columns checked."""
    table = pd.read_csv(path, dtype={"image": str, "kind": str})
    missing = [c for c in ("image", "kind", *BOX_COLUMNS) if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; it is not the synthetic generator's lesion table "
            "(rerun synthetic_eyepacs)"
        )
    return table
