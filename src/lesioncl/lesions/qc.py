"""Pictures of the index: boxes per image, and boxes drawn on a few crops."""

from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

import numpy as np
import pandas as pd

from lesioncl.lesions.predict import index_key
from lesioncl.plotting import pyplot, save_png

log = logging.getLogger("lesioncl.lesions")


# --------------------------------------------------------------------------- pictures
def plot_summary(summary: Mapping[str, Any], out_png: str | os.PathLike) -> None:
    """Boxes-per-image histograms per split and the filter counts."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    width = 0.8 / max(1, len(summary["splits"]))
    n_bins = 1
    for i, (split, s) in enumerate(summary["splits"].items()):
        hist = s["boxes_per_image_histogram"]
        n_bins = len(hist)
        ax.bar(
            np.arange(n_bins) + i * width,
            hist,
            width=width,
            align="edge",
            label=f"{split}: {s['images_with_boxes']}/{s['images_in']} images, {s['boxes']} boxes",
        )
    ticks = list(range(0, n_bins, max(1, n_bins // 10)))
    ax.set_xticks(np.array(ticks) + 0.4)
    ax.set_xticklabels([str(t) if t < n_bins - 1 else f"{t}+" for t in ticks], fontsize=7)
    ax.set_xlabel(
        f"kept boxes per image (0: left out of the index; last bin: {n_bins - 1} or more)"
    )
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax = axes[1]
    names = ["kept", *summary["dropped"]]
    values = [summary["kept"], *summary["dropped"].values()]
    ax.bar(names, values, color=["tab:green"] + ["tab:red"] * len(summary["dropped"]))
    f = summary.get("filters", {})
    ax.set_title(
        f"detections: {summary['detections']} (score > {f.get('score_threshold')}, "
        f"side <= {f.get('max_box_size')}, margin {f.get('border_margin')})",
        fontsize=9,
    )
    ax.set_ylabel("boxes")
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)


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
    plt = pyplot()
    from matplotlib.patches import Rectangle
    from PIL import Image

    keyed = {index_key(str(r.image)): r for r in rows.itertuples()}
    candidates = sorted(
        (split, key) for split, imgs in index.items() for key in imgs if key in keyed
    )
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
            ax.add_patch(
                Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="yellow", linewidth=0.8)
            )
        ax.set_xlim(0, size)
        ax.set_ylim(size, 0)
        ax.set_title(f"{split}/{key} ({len(index[split][key])})", fontsize=7)
    if not chosen:
        axes[0, 0].text(0.5, 0.5, "no image has a kept box", ha="center", va="center")
    fig.tight_layout()
    save_png(fig, out_png, dpi=100)
