"""The lesion index: detector boxes on the EyePACS crops, filtered, in the authors' format.

Pipeline (``workflow/rules/lesions.smk``):

1. :func:`predict_shard` – one job per shard runs the IDRiD lesion detector over the
   detection-resolution crops (``det_path`` of ``crop_manifest.csv``) of the train
   and val images with ``i % n_shards == shard`` (``i`` counting train+val rows in
   manifest order) and writes every raw detection, in detector coordinates and
   rescaled into the ``size``×``size`` crop.
2. :func:`build_lesion_index` – merges the shards, keeps a box when
   ``score > score_threshold``, its width and height are ``<= max_box_size`` and all
   of x1, y1, x2, y2 lie strictly inside ``(border_margin, size - border_margin)``,
   and writes ``{'train': {'10_left.jpeg': [(x1, y1, x2, y2), ...]}, 'val': {...}}``
   as a pickle (the authors' released format) and as JSON.

Box values are Python floats rounded to 0.1 px (the authors' file held the
detector's floats; integers would move a box edge by up to a pixel). The filters
are applied to the rounded values, so every stored box satisfies them exactly.
Images without a kept box are left out of the index (the authors' loader crashes on
an empty list) and counted in the summary.

Rescaling: the detector sees the cropped, not resized image (``det_width`` ×
``det_height``); the crop is then resized to ``size``×``size``, so x scales by
``size / det_width`` and y by ``size / det_height``. The original code recorded the
image size as ``(w, h) = shape[:2]`` – swapped – which distorted boxes of every
non-square crop; :func:`rescale_boxes` takes width and height by name, and
:func:`predict_shard` checks the size the detector read against the manifest.

:func:`load_lesion_index` reads such a pickle with a restricted unpickler: only
dicts, lists, tuples, strings and numbers can be built, so a malicious file cannot
run code. This module imports no detector code at module level (the pretraining
stage imports the loader).
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import pickle
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from lesioncl.utils import atomic_path, write_json

log = logging.getLogger(__name__)

SPLITS = ("train", "val")
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
DET_BOX_COLUMNS = ["det_x1", "det_y1", "det_x2", "det_y2"]
DETECTION_COLUMNS = [
    "image", "split", "label", "label_name", "score",
    *BOX_COLUMNS, *DET_BOX_COLUMNS, "det_width", "det_height",
]
MANIFEST_COLUMNS = ["image", "split", "path", "det_path", "det_width", "det_height"]
ROUND_DECIMALS = 1
FILTER_REASONS = ("score", "size", "border")


# --------------------------------------------------------------------------- shards
def read_crop_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """``crop_manifest.csv`` with the columns this stage needs, checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: crop manifest not found; run the crop rule first")
    manifest = pd.read_csv(path, dtype={"image": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in manifest.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; the crop stage must write "
            f"{MANIFEST_COLUMNS} (regenerate it with the crop rule)"
        )
    bad = manifest[(manifest["det_width"] <= 0) | (manifest["det_height"] <= 0)]
    if len(bad):
        raise ValueError(
            f"{path}: non-positive det_width/det_height for {list(bad['image'][:5])}; "
            "regenerate the crops"
        )
    return manifest


def shard_rows(manifest: pd.DataFrame, shard: int, n_shards: int) -> pd.DataFrame:
    """Rows of the train and val splits with ``i % n_shards == shard``.

    ``i`` counts the train+val rows in manifest order, so the shards partition them.
    """
    if not 0 <= shard < n_shards:
        raise ValueError(f"shard {shard} is outside 0..{n_shards - 1}")
    rows = manifest[manifest["split"].isin(SPLITS)].reset_index(drop=True)
    return rows.iloc[shard::n_shards].reset_index(drop=True)


def rescale_boxes(boxes: np.ndarray, det_width: float, det_height: float, size: int) -> np.ndarray:
    """Boxes ``(n, 4)`` x1, y1, x2, y2 from the ``det_width``×``det_height`` image into
    the ``size``×``size`` crop: x × size/det_width, y × size/det_height."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx = size / float(det_width)
    sy = size / float(det_height)
    return boxes * np.array([sx, sy, sx, sy])


def index_key(image: str) -> str:
    """The index key of a manifest image name: ``10_left`` → ``10_left.jpeg``."""
    return image if image.endswith(".jpeg") else f"{image}.jpeg"


def predict_shard(
    manifest_path: str | os.PathLike,
    config_path: str | os.PathLike,
    weights_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    *,
    shard: int,
    n_shards: int,
    size: int,
    batch_size: int = 8,
    device: str = "auto",
    workers: int = 0,
    threads: int = 1,
) -> pd.DataFrame:
    """Run the detector on one shard of the train+val crops; write all raw detections."""
    import torch

    from lesioncl.detector.inference import LesionDetector  # heavy: mmdet

    torch.set_num_threads(max(1, threads - workers))  # the rest: loader workers
    manifest_path = Path(manifest_path)
    rows = shard_rows(read_crop_manifest(manifest_path), shard, n_shards)
    missing = [p for p in rows["det_path"] if not Path(p).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{manifest_path}: {len(missing)} det_path files do not exist (first: {missing[:3]}): "
            "the crop folders changed after the manifest was written. Recreate the crops: rerun "
            "with --forcerun crop_shard (and your --configfile)"
        )
    log.info("shard %d/%d: %d images (%s)", shard, n_shards, len(rows),
             dict(Counter(rows["split"])))
    records: list[dict[str, Any]] = []
    if len(rows):
        detector = LesionDetector(config_path, weights_path, device=device)
        by_path = {p: i for i, p in enumerate(rows["det_path"])}
        for det in detector.predict(list(rows["det_path"]), batch_size=batch_size, workers=workers,
                                    desc=f"lesions shard {shard}"):
            row = rows.iloc[by_path[det.path]]
            w, h = int(row["det_width"]), int(row["det_height"])
            if (det.width, det.height) != (w, h):
                raise ValueError(
                    f"{det.path}: the detector read a {det.width}x{det.height} (w x h) image but "
                    f"{manifest_path} says det_width={w}, det_height={h}; the manifest is stale "
                    "or swapped – rerun the crop rule"
                )
            crop_boxes = rescale_boxes(det.boxes, w, h, size)
            for k in range(len(det.scores)):
                label = int(det.labels[k])
                records.append({
                    "image": row["image"], "split": row["split"], "label": label,
                    "label_name": detector.classes[label], "score": float(det.scores[k]),
                    **dict(zip(BOX_COLUMNS, crop_boxes[k].tolist())),
                    **dict(zip(DET_BOX_COLUMNS, det.boxes[k].tolist())),
                    "det_width": w, "det_height": h,
                })
    table = pd.DataFrame.from_records(records, columns=DETECTION_COLUMNS)
    with atomic_path(out_csv) as tmp:
        table.to_csv(tmp, index=False, float_format="%.4f")
    log.info("shard %d: %d detections on %d images written to %s", shard, len(table),
             table["image"].nunique(), out_csv)
    return table


# --------------------------------------------------------------------------- filter
def read_detections(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate the shard tables, checking their columns."""
    tables = []
    for path in paths:
        table = pd.read_csv(path, dtype={"image": str, "split": str, "label_name": str})
        missing = [c for c in DETECTION_COLUMNS if c not in table.columns]
        if missing:
            raise ValueError(f"{path}: missing columns {missing}; rerun lesions_predict")
        if len(table):
            tables.append(table[DETECTION_COLUMNS])
    if not tables:
        return pd.DataFrame(columns=DETECTION_COLUMNS)
    return pd.concat(tables, ignore_index=True)


def filter_reasons(
    detections: pd.DataFrame,
    *,
    score_threshold: float,
    max_box_size: float,
    border_margin: float,
    size: int,
) -> pd.Series:
    """Why each detection is dropped (first failing rule: score, size, border), or "" if kept.

    Coordinates are rounded to 0.1 px first, as they are stored.
    """
    boxes = detections[BOX_COLUMNS].astype(float).round(ROUND_DECIMALS)
    x1, y1, x2, y2 = (boxes[c] for c in BOX_COLUMNS)
    score_ok = detections["score"].astype(float) > score_threshold
    size_ok = ((x2 - x1) <= max_box_size) & ((y2 - y1) <= max_box_size)
    lo, hi = border_margin, size - border_margin
    border_ok = pd.Series(True, index=detections.index)
    for c in (x1, y1, x2, y2):
        border_ok &= (c > lo) & (c < hi)
    reason = pd.Series("", index=detections.index, dtype=object)
    reason[~border_ok] = "border"
    reason[~size_ok] = "size"
    reason[~score_ok] = "score"
    return reason


def make_index(kept: pd.DataFrame) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """``{split: {'<image>.jpeg': [(x1, y1, x2, y2), ...]}}`` of the kept detections.

    Boxes of an image keep the detector's order (descending score); values are Python
    floats rounded to 0.1 px. Every split in :data:`SPLITS` is present (maybe empty).
    """
    index: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {s: {} for s in SPLITS}
    kept = kept.sort_values(["split", "image", "score"], ascending=[True, True, False], kind="stable")
    for (split, image), group in kept.groupby(["split", "image"], sort=True):
        boxes = group[BOX_COLUMNS].astype(float).round(ROUND_DECIMALS).to_numpy()
        index.setdefault(str(split), {})[index_key(str(image))] = [
            tuple(round(float(v), ROUND_DECIMALS) for v in box) for box in boxes
        ]
    return index


def summarise(
    index: Mapping[str, Mapping[str, list]],
    images_in: Mapping[str, int],
    reasons: pd.Series,
    detections: pd.DataFrame,
    max_hist: int = 50,
) -> dict[str, Any]:
    """Per-split counts, boxes-per-image histograms and filter statistics.

    ``boxes_per_image_histogram[k]`` is the number of images with ``k`` kept boxes
    (``k = 0``: left out of the index); the last bin counts ``max_hist`` or more.
    """
    splits: dict[str, Any] = {}
    for split in SPLITS:
        n_in = int(images_in.get(split, 0))
        per_image = [len(b) for b in index.get(split, {}).values()]
        counts = Counter(min(n, max_hist) for n in per_image)
        counts[0] = n_in - len(per_image)
        splits[split] = {
            "images_in": n_in,
            "images_with_boxes": len(per_image),
            "images_without_boxes": n_in - len(per_image),
            "boxes": int(sum(per_image)),
            "mean_boxes_per_indexed_image": float(np.mean(per_image)) if per_image else 0.0,
            "boxes_per_image_histogram": [int(counts.get(k, 0)) for k in range(max_hist + 1)],
        }
    dropped = Counter(r for r in reasons if r)
    return {
        "splits": splits,
        "detections": int(len(detections)),
        "kept": int((reasons == "").sum()),
        "dropped": {r: int(dropped.get(r, 0)) for r in FILTER_REASONS},
        "kept_per_class": {
            str(k): int(v) for k, v in
            Counter(detections.loc[reasons == "", "label_name"]).items()
        },
    }


def build_lesion_index(
    shard_csvs: Iterable[str | os.PathLike],
    manifest_path: str | os.PathLike,
    *,
    out_pkl: str | os.PathLike,
    out_json: str | os.PathLike,
    out_summary: str | os.PathLike,
    out_histogram: str | os.PathLike,
    out_qc: str | os.PathLike,
    score_threshold: float,
    max_box_size: float,
    border_margin: float,
    size: int,
    qc_images: int = 12,
    seed: int = 0,
) -> dict[str, Any]:
    """Merge, filter and write the lesion index with its summary and QC pictures."""
    if not 0 <= border_margin < size / 2:
        raise ValueError(f"lesion_index.border_margin={border_margin} must lie in [0, size/2={size / 2})")
    manifest = read_crop_manifest(manifest_path)
    rows = manifest[manifest["split"].isin(SPLITS)]
    detections = read_detections(shard_csvs)
    unknown = set(detections["image"]) - set(rows["image"])
    if unknown:
        raise ValueError(
            f"detections name images not in the train/val rows of {manifest_path} "
            f"(e.g. {sorted(unknown)[:3]}); the shards are stale – rerun lesions_predict"
        )
    reasons = filter_reasons(detections, score_threshold=score_threshold, max_box_size=max_box_size,
                             border_margin=border_margin, size=size)
    index = make_index(detections[reasons == ""])
    validate_index(index, source="the new lesion index", size=size, max_box_size=max_box_size)
    write_lesion_index(index, out_pkl, out_json)
    images_in = Counter(rows["split"])
    summary = summarise(index, images_in, reasons, detections)
    summary["filters"] = {"score_threshold": score_threshold, "max_box_size": max_box_size,
                          "border_margin": border_margin, "size": size}
    write_json(out_summary, summary)
    for split, s in summary["splits"].items():
        log.info("%s: %d images in, %d with >=1 box, %d without (left out), %d boxes",
                 split, s["images_in"], s["images_with_boxes"], s["images_without_boxes"], s["boxes"])
        hist = s["boxes_per_image_histogram"]
        log.info("%s boxes per image (count: images, last bin: %d or more): %s", split, len(hist) - 1,
                 {k: v for k, v in enumerate(hist) if v})
    log.info("detections: %d, kept %d, dropped %s", summary["detections"], summary["kept"], summary["dropped"])
    plot_summary(summary, out_histogram)
    plot_qc(index, rows, out_qc, n_images=qc_images, seed=seed, size=size)
    return summary


# --------------------------------------------------------------------------- I/O
def write_lesion_index(index: Mapping, out_pkl: str | os.PathLike, out_json: str | os.PathLike) -> None:
    """The index as a pickle (plain dicts, lists, tuples, str, float) and as JSON."""
    plain = {split: {k: [tuple(b) for b in v] for k, v in images.items()} for split, images in index.items()}
    with atomic_path(out_pkl) as tmp:
        with open(tmp, "wb") as fh:
            pickle.dump(plain, fh, protocol=4)
    with atomic_path(out_json) as tmp:
        tmp.write_text(json.dumps(plain, indent=1, sort_keys=True) + "\n")


class _SafeDType:
    """Stand-in for ``numpy.dtype`` inside a pickle: numeric scalar types only."""

    _NAME = re.compile(r"^[fiu][1248]$")

    def __init__(self, name: Any, align: Any = False, copy: Any = True) -> None:
        if not isinstance(name, str) or not self._NAME.match(name):
            raise pickle.UnpicklingError(f"refusing numpy dtype {name!r}: only numeric scalars are allowed")
        self.name = name
        self.byteorder = "="

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = state[1]

    def numpy(self) -> np.dtype:
        return np.dtype(("" if self.byteorder == "|" else self.byteorder) + self.name)


def _safe_scalar(dtype: Any, data: Any = None) -> float | int:
    """Stand-in for ``numpy.core.multiarray.scalar``: decode a numeric scalar to Python."""
    if not isinstance(dtype, _SafeDType) or not isinstance(data, bytes):
        raise pickle.UnpicklingError("refusing a numpy scalar that is not a plain number")
    dt = dtype.numpy()
    if len(data) != dt.itemsize:
        raise pickle.UnpicklingError("malformed numpy scalar in pickle")
    return np.frombuffer(data, dtype=dt)[0].item()


# NumPy writes numeric scalars (np.float32 / np.float64 box coordinates, as a detector
# produces them) with these two globals. They are mapped to the decoders above, which
# build Python numbers only; numpy's own functions are never called from a pickle.
_NUMPY_SCALAR_GLOBALS = {
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
    ("numpy", "dtype"): _SafeDType,
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds dicts, lists, tuples, strings and numbers; refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        safe = _NUMPY_SCALAR_GLOBALS.get((module, name))
        if safe is not None:
            return safe
        raise pickle.UnpicklingError(
            f"refusing to load global {module}.{name}: a lesion index holds only dicts, lists, "
            "tuples, strings and numbers"
        )


def safe_unpickle(data: bytes) -> Any:
    """Unpickle ``data`` allowing only plain containers, strings and numbers."""
    return _RestrictedUnpickler(io.BytesIO(data)).load()


def load_lesion_index(
    path: str | os.PathLike,
    *,
    required_splits: Iterable[str] = (),
    size: float | None = None,
    max_box_size: float | None = None,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """Read and validate a lesion index (``.pkl`` – ours or the authors' – or ``.json``).

    Pickles are read with a restricted unpickler (no code can run). Returns
    ``{split: {image: [(x1, y1, x2, y2), ...]}}`` with tuples of Python floats; images
    with an empty box list are dropped with a warning naming them. ``size`` and
    ``max_box_size``, when given, are checked too.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"lesion index not found: {path}")
    raw = path.read_bytes()
    try:
        if path.suffix == ".json":
            obj = json.loads(raw)
        else:
            obj = safe_unpickle(raw)
    except (pickle.UnpicklingError, json.JSONDecodeError, EOFError, ValueError) as err:
        raise ValueError(
            f"{path}: not a valid lesion index ({err}); expected the pickle written by the "
            "lesions_index rule or the authors' released predictions file"
        ) from err
    index = validate_index(obj, source=str(path), size=size, max_box_size=max_box_size)
    absent = [s for s in required_splits if s not in index]
    if absent:
        raise ValueError(f"{path}: the lesion index has no {absent} split(s) (it has {sorted(index)})")
    return index


def validate_index(
    obj: Any,
    *,
    source: str,
    size: float | None = None,
    max_box_size: float | None = None,
) -> dict[str, dict[str, list[tuple[float, float, float, float]]]]:
    """Check the ``{split: {image: [(x1, y1, x2, y2), ...]}}`` structure; return it normalised."""
    def fail(msg: str) -> None:
        raise ValueError(f"{source}: {msg}; expected {{'train': {{'10_left.jpeg': [(x1, y1, x2, y2), ...]}}, 'val': {{...}}}}")

    if not isinstance(obj, dict):
        fail(f"top level is a {type(obj).__name__}, not a dict")
    out: dict[str, dict[str, list[tuple[float, float, float, float]]]] = {}
    empty: list[str] = []
    for split, images in obj.items():
        if not isinstance(split, str) or not isinstance(images, dict):
            fail(f"split {split!r} must be a string mapping to a dict")
        out[split] = {}
        for image, boxes in images.items():
            if not isinstance(image, str) or not isinstance(boxes, (list, tuple)):
                fail(f"{split}/{image!r} must be a file name mapping to a list of boxes")
            if not boxes:
                empty.append(f"{split}/{image}")
                continue
            clean = []
            for box in boxes:
                if (not isinstance(box, (list, tuple)) or len(box) != 4
                        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in box)):
                    fail(f"{split}/{image}: box {box!r} is not 4 numbers")
                x1, y1, x2, y2 = (float(v) for v in box)
                if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 < x1 or y2 < y1:
                    fail(f"{split}/{image}: box {box!r} is not finite with x1 <= x2 and y1 <= y2")
                if size is not None and (min(x1, y1) < 0 or max(x2, y2) > size):
                    fail(f"{split}/{image}: box {box!r} leaves the {size}x{size} crop")
                if max_box_size is not None and (x2 - x1 > max_box_size or y2 - y1 > max_box_size):
                    fail(f"{split}/{image}: box {box!r} is larger than {max_box_size} px")
                clean.append((x1, y1, x2, y2))
            out[split][image] = clean
    if empty:
        log.warning("%s: %d images with no boxes left out: %s", source, len(empty), empty[:20])
    return out


# --------------------------------------------------------------------------- pictures
def plot_summary(summary: Mapping[str, Any], out_png: str | os.PathLike) -> None:
    """Boxes-per-image histograms per split and the filter counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    width = 0.8 / max(1, len(summary["splits"]))
    n_bins = 1
    for i, (split, s) in enumerate(summary["splits"].items()):
        hist = s["boxes_per_image_histogram"]
        n_bins = len(hist)
        ax.bar(np.arange(n_bins) + i * width, hist, width=width, align="edge",
               label=f"{split}: {s['images_with_boxes']}/{s['images_in']} images, {s['boxes']} boxes")
    ticks = list(range(0, n_bins, max(1, n_bins // 10)))
    ax.set_xticks(np.array(ticks) + 0.4)
    ax.set_xticklabels([str(t) if t < n_bins - 1 else f"{t}+" for t in ticks], fontsize=7)
    ax.set_xlabel(f"kept boxes per image (0: left out of the index; last bin: {n_bins - 1} or more)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = ["kept", *summary["dropped"]]
    values = [summary["kept"], *summary["dropped"].values()]
    ax.bar(names, values, color=["tab:green"] + ["tab:red"] * len(summary["dropped"]))
    f = summary.get("filters", {})
    ax.set_title(f"detections: {summary['detections']} (score > {f.get('score_threshold')}, "
                 f"side <= {f.get('max_box_size')}, margin {f.get('border_margin')})", fontsize=9)
    ax.set_ylabel("boxes")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def plot_qc(
    index: Mapping[str, Mapping[str, list]],
    rows: pd.DataFrame,
    out_png: str | os.PathLike,
    *,
    n_images: int = 12,
    seed: int = 0,
    size: int = 512,
) -> None:
    """A grid of crops (``path`` of the manifest) with their kept boxes drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle
    from PIL import Image

    keyed = {index_key(str(r.image)): r for r in rows.itertuples()}
    candidates = sorted((split, key) for split, imgs in index.items() for key in imgs if key in keyed)
    rng = np.random.default_rng(seed)
    chosen = [candidates[i] for i in sorted(rng.permutation(len(candidates))[:n_images])]
    cols = min(4, max(1, len(chosen)))
    nrows = max(1, math.ceil(len(chosen) / cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(3 * cols, 3 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (split, key) in zip(axes.flat, chosen):
        with Image.open(keyed[key].path) as im:
            ax.imshow(np.asarray(im.convert("RGB")))
        for x1, y1, x2, y2 in index[split][key]:
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linewidth=0.8))
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(f"{split}/{key} ({len(index[split][key])})", fontsize=7)
    if not chosen:
        axes[0, 0].text(0.5, 0.5, "no image has a kept box", ha="center", va="center")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
