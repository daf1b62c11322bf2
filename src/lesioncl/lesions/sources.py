"""The rules' entry points for the window sources and the index quality (files in, files out).

* :func:`build_random_index` – rule ``lesions_random_index``;
* :func:`build_salient_index` – rule ``lesions_salient_index``;
* :func:`build_truth_index` – rule ``lesions_truth_index`` (synthetic data);
* :func:`write_index_quality` – rule ``lesions_quality`` (synthetic data): the detector's
  index and its random control against the generator's boxes, as JSON and a figure.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lesioncl.crop.cache import open_crop_cache
from lesioncl.lesions.controls import (
    RandomIndexSettings,
    SalientIndexSettings,
    TruthIndexSettings,
    random_index,
    read_truth_lesions,
    salient_index,
    truth_boxes,
    truth_index,
)
from lesioncl.lesions.fileformat import SPLITS, load_lesion_index, write_lesion_index
from lesioncl.lesions.quality import index_quality
from lesioncl.plotting import pyplot, save_png
from lesioncl.pretrain.data import image_key
from lesioncl.utils import write_json

log = logging.getLogger("lesioncl.lesions")


@dataclass(frozen=True)
class QualitySettings:
    """What decides the quality measure (rule ``lesions_quality``)."""

    window: int = 128  # the pretraining window (config ``pretrain.patch_size``)
    size: int = 512  # the side of the square crops (config ``crop.size``)
    seed: int = 0  # the workflow's seed: the windows drawn


def _crops(train_npy, val_npy) -> dict:
    return {"train": open_crop_cache(train_npy), "val": open_crop_cache(val_npy)}


def _count(index) -> dict:
    return {
        s: {"images": len(v), "boxes": int(sum(len(b) for b in v.values()))}
        for s, v in index.items()
    }


def build_random_index(
    index_pkl, train_npy, val_npy, *, out_pkl, out_json, settings: RandomIndexSettings
) -> dict:
    """The random-window control of the detector's index, written like the index."""
    return _build_control(
        random_index, "random-window control (same boxes, uniform places)",
        index_pkl, train_npy, val_npy, out_pkl, out_json, settings,
    )  # fmt: skip


def build_salient_index(
    index_pkl, train_npy, val_npy, *, out_pkl, out_json, settings: SalientIndexSettings
) -> dict:
    """The salient-window control of the detector's index, written like the index."""
    return _build_control(
        salient_index, "salient-window control (same box sizes, the most contrasted places)",
        index_pkl, train_npy, val_npy, out_pkl, out_json, settings,
    )  # fmt: skip


def _build_control(build, what, index_pkl, train_npy, val_npy, out_pkl, out_json, settings):
    index = load_lesion_index(index_pkl, size=settings.size)
    out = build(index, _crops(train_npy, val_npy), settings)
    write_lesion_index(out, out_pkl, out_json)
    counts = _count(out)
    log.info("%s of %s: %s", what, index_pkl, counts)
    return counts


def _read_manifest(path) -> pd.DataFrame:
    return pd.read_csv(path, dtype={"image": str, "split": str})


def build_truth_index(
    lesions_csv, manifest_csv, *, out_pkl, out_json, out_summary, settings: TruthIndexSettings
) -> dict:
    """The generator's true boxes of ``settings.truth_kinds`` as a lesion index."""
    boxes = truth_boxes(
        read_truth_lesions(lesions_csv), _read_manifest(manifest_csv), settings.size
    )
    index, counts = truth_index(boxes, settings)
    write_lesion_index(index, out_pkl, out_json)
    summary = {"splits": _count(index), **counts}
    write_json(out_summary, summary)
    log.info(
        "truth index (%s): %s; dropped by size %s, by border %s",
        ", ".join(settings.truth_kinds),
        summary["splits"],
        counts["dropped_size"],
        counts["dropped_border"],
    )
    return summary


def write_index_quality(
    index_pkl,
    random_pkl,
    lesions_csv,
    manifest_csv,
    train_npy,
    val_npy,
    *,
    out_json,
    out_png,
    settings: QualitySettings,
) -> dict:
    """Precision, recall by kind, images by grade and window hit rates of the detector's
    index and of its random control, against the generator's boxes."""
    manifest = _read_manifest(manifest_csv)
    truth = truth_boxes(read_truth_lesions(lesions_csv), manifest, settings.size)
    levels = {
        split: {image_key(n): int(lv) for n, lv in zip(rows["image"], rows["level"])}
        for split, rows in manifest.groupby("split")
        if split in SPLITS
    }
    crops = _crops(train_npy, val_npy)
    result = {
        name: index_quality(
            load_lesion_index(path, size=settings.size),
            truth,
            levels,
            crops,
            settings.window,
            settings.seed,
        )
        for name, path in (("detector", index_pkl), ("random", random_pkl))
    }
    write_json(out_json, result)
    for name, q in result.items():
        for split, s in q["splits"].items():
            log.info(
                "%s index, %s: precision %s, recall %s, window hit rate %s (random windows %s)",
                name,
                split,
                _fmt(s["precision"]),
                {k: _fmt(v) for k, v in s["recall"].items()},
                _fmt(s["window_hit_rate"]),
                _fmt(s["random_window_hit_rate"]),
            )
    plot_quality(result, out_png)
    return result


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.2f}"


def plot_quality(result: dict, out_png: str | os.PathLike, split: str = "train") -> None:
    """Bars: precision and window hit rate, recall by kind, share of images indexed by grade."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    names = list(result)
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        s = result[name]["splits"].get(split)
        if s is None:
            continue
        overall = {
            "box precision": s["precision"],
            "window hit rate": s["window_hit_rate"],
            "random windows": s["random_window_hit_rate"],
        }
        panels = (
            (axes[0], overall),
            (axes[1], s["recall"]),
            (
                axes[2],
                {
                    f"grade {g}": v["indexed"] / v["images"] if v["images"] else 0.0
                    for g, v in s["images_by_grade"].items()
                },
            ),
        )
        for ax, values in panels:
            x = np.arange(len(values))
            ax.bar(
                x + i * width,
                [np.nan if v is None else v for v in values.values()],
                width,
                label=f"{name} ({s['boxes']} boxes)",
            )
            ax.set_xticks(x + 0.4 - width / 2)
            ax.set_xticklabels(list(values), rotation=20, fontsize=8)
            ax.set_ylim(0, 1)
    axes[0].set_title(f"{split}: boxes on a true lesion; windows holding one", fontsize=9)
    axes[1].set_title("recall of the true boxes, by kind", fontsize=9)
    axes[2].set_title("images with at least one box, by grade", fontsize=9)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)
