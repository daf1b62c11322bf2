"""QC picture: the COCO boxes drawn on a few training images."""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import numpy as np

from lesioncl.plotting import pyplot, save_png

log = logging.getLogger("lesioncl.idrid")


# --------------------------------------------------------------------------- QC
CLASS_COLOURS = {1: "#ffff00", 2: "#00e5ff", 3: "#ff3df5", 4: "#7CFC00"}


def draw_qc(
    coco_path: str | os.PathLike,
    images_dir: str | os.PathLike,
    out_png: str | os.PathLike,
    n_images: int = 4,
) -> list[str]:
    """Draw the boxes of ``n_images`` training images (those with the most classes).

    Returns the file names drawn.
    """
    plt = pyplot()
    from matplotlib.patches import Patch, Rectangle
    from PIL import Image

    coco = json.loads(Path(coco_path).read_text())
    by_image: dict[int, list[dict]] = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    def rank(im: dict) -> tuple:
        anns = by_image.get(im["id"], [])
        return (-len({a["category_id"] for a in anns}), -len(anns), im["id"])

    chosen = sorted(coco["images"], key=rank)[: max(1, n_images)]
    ncols = min(2, len(chosen))
    nrows = math.ceil(len(chosen) / ncols)
    aspect = chosen[0]["height"] / chosen[0]["width"]
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(7 * ncols, 7 * aspect * nrows + 0.8), squeeze=False
    )
    names = {c["id"]: c["name"] for c in coco["categories"]}
    for ax in axes.flat:
        ax.axis("off")
    for ax, im in zip(axes.flat, chosen):
        with Image.open(Path(images_dir) / im["file_name"]) as img:
            ax.imshow(np.asarray(img.convert("RGB")))
        anns = by_image.get(im["id"], [])
        for ann in anns:
            x, y, w, h = ann["bbox"]
            ax.add_patch(
                Rectangle(
                    (x, y),
                    w,
                    h,
                    fill=False,
                    linewidth=0.8,
                    edgecolor=CLASS_COLOURS.get(ann["category_id"], "white"),
                )
            )
        counts = ", ".join(
            f"{names[c]} {sum(a['category_id'] == c for a in anns)}"
            for c in sorted({a["category_id"] for a in anns})
        )
        ax.set_title(
            f"{im['file_name']} ({im['width']}x{im['height']}): {counts or 'no boxes'}",
            fontsize=8,
        )
    handles = [
        Patch(edgecolor=CLASS_COLOURS[c], facecolor="none", label=names[c]) for c in sorted(names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_png(fig, out_png, dpi=120)
    return [im["file_name"] for im in chosen]
