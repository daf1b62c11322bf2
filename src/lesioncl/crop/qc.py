"""QC picture: a few crops of each box method beside the summary."""

import logging
import os

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from lesioncl.utils import atomic_path

log = logging.getLogger("lesioncl.crop")


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


def qc_figure(
    cropped: pd.DataFrame, summary: dict, path: str | os.PathLike, n: int = 6, tile: int = 256
) -> None:
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
        draw.text(
            (5, y0 + tile + 3),
            f"{r['image']} ({r['split']}, level {r['level']}): {w}x{h}, box "
            f"({r['box_x1']}, {r['box_y1']}, {r['box_x2']}, {r['box_y2']}) {r['box_method']}",
            fill="black",
            font=font,
        )
    reasons = ", ".join(f"{k} {v}" for k, v in summary["reasons"].items() if v) or "none"
    y = len(picks) * row_h + 8
    draw.text(
        (5, y),
        f"{summary['input']['total']} images: {summary['cropped']['total']} cropped, "
        f"{summary['rejected']['total']} rejected ({reasons})",
        fill="black",
        font=font,
    )
    draw.text(
        (5, y + 20),
        "left: raw image with the crop box (red); right: the crop",
        fill="black",
        font=font,
    )
    with atomic_path(path) as tmp:
        canvas.save(tmp, format="PNG")
