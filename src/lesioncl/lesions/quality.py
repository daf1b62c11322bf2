"""How good a lesion index is, where the truth is known (synthetic data).

Measured per split against the generator's boxes in crop pixels
(:func:`lesioncl.lesions.controls.truth_boxes`, every lesion kind):

* **precision**: the share of the index's boxes whose centre lies inside a true lesion
  box (grown by ``tolerance`` px on each side: a 1-px microaneurysm box is hit by a
  centre one pixel off);
* **recall by kind**: the share of true boxes of each kind that an index box finds (its
  centre inside the grown true box, or the true box's centre inside it);
* **images indexed by grade**: how many images of each grade hold at least one box
  (an index that skips grade 0 never shows the network healthy tissue);
* **window hit rate**: the share of ``patch``-px windows cut around the index's boxes (as
  pretraining cuts them) that contain the centre of a true lesion, against windows at
  uniform places in the field of view of the same images: the chance level.

:func:`index_quality` computes it for one index; rule ``lesions_quality`` writes it for
the detector's index and its random-window control (``quality.json``, ``quality.png``).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from lesioncl.lesions.controls import _centres, _inside, fov_mask, image_rng, truth_by_image
from lesioncl.pretrain.data import image_key, sample_window

#: Pixels a true box is grown by on each side when a centre is tested against it.
TOLERANCE = 1.0


def _random_window(mask: np.ndarray, patch: int, rng: np.random.Generator) -> tuple[int, int]:
    """Top-left of a ``patch`` window inside the crop whose centre lies in the field of view."""
    h, w = mask.shape
    inner = mask[patch // 2 : h - patch + patch // 2 + 1, patch // 2 : w - patch + patch // 2 + 1]
    ys, xs = np.nonzero(inner)
    if len(xs) == 0:
        return int(rng.integers(w - patch + 1)), int(rng.integers(h - patch + 1))
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def index_quality(
    index: Mapping[str, Mapping[str, Sequence[Sequence[float]]]],
    truth: pd.DataFrame,
    levels: Mapping[str, Mapping[str, int]],
    crops: Mapping[str, tuple[np.ndarray, pd.DataFrame]],
    patch: int,
    seed: int = 0,
    tolerance: float = TOLERANCE,
) -> dict:
    """The quality of ``index`` against ``truth`` (see the module docstring), per split.

    ``truth``: image, split, kind, x1..y2 in crop pixels; ``levels``: per split, every
    cropped image's key (``'10_left'``) and grade; ``crops``: per split the crop cache
    (images, rows), for the fields of view of the random windows.
    """
    kinds = sorted(truth["kind"].unique())
    out: dict = {"tolerance_px": tolerance, "window_px": patch, "splits": {}}
    boxes_of = truth_by_image(truth)
    for split, images in index.items():
        split_levels = levels.get(split, {})
        if not split_levels:
            continue
        array, rows = crops[split]
        row_of = {image_key(str(n)): i for i, n in enumerate(rows["image"])}
        t = truth[truth["split"] == split]
        by_image = boxes_of.get(split, {})
        kind_of = {k: g["kind"].to_numpy() for k, g in t.groupby("image")}
        n_boxes = hits = 0
        found = {k: 0 for k in kinds}
        window_hits = random_hits = 0
        indexed_keys = set()
        for name, boxes in images.items():
            key = image_key(name)
            indexed_keys.add(key)
            b = np.asarray(boxes, dtype=float).reshape(-1, 4)
            tb = by_image.get(key, np.zeros((0, 4)))
            centres, tcentres = _centres(b), _centres(tb) if len(tb) else np.zeros((0, 2))
            n_boxes += len(b)
            hits += int(_inside(centres, tb, tolerance).any(axis=1).sum())
            if len(tb):
                matched = _inside(centres, tb, tolerance).any(axis=0) | _inside(tcentres, b).any(
                    axis=1
                )
                for kind in kinds:
                    found[kind] += int(matched[kind_of[key] == kind].sum())
            rng = image_rng(seed, name)
            size = array.shape[1]
            mask = fov_mask(array[row_of[key]]) if key in row_of else np.ones((size, size), bool)
            for box in b:
                x0, y0 = sample_window(box, patch, size, size, rng)
                window = np.array([[x0, y0, x0 + patch, y0 + patch]], dtype=float)
                window_hits += int(_inside(tcentres, window).any())
                rx, ry = _random_window(mask, patch, rng)
                window = np.array([[rx, ry, rx + patch, ry + patch]], dtype=float)
                random_hits += int(_inside(tcentres, window).any())
        total = t["kind"].value_counts()
        grades: dict[str, dict[str, int]] = {}
        for key, level in split_levels.items():
            g = grades.setdefault(str(int(level)), {"images": 0, "indexed": 0})
            g["images"] += 1
            g["indexed"] += int(key in indexed_keys)
        out["splits"][split] = {
            "boxes": n_boxes,
            "images_indexed": len(indexed_keys),
            "precision": hits / n_boxes if n_boxes else None,
            "recall": {
                k: (found[k] / int(total[k]) if int(total.get(k, 0)) else None) for k in kinds
            },
            "true_boxes": {k: int(total.get(k, 0)) for k in kinds},
            "images_by_grade": dict(sorted(grades.items())),
            "window_hit_rate": window_hits / n_boxes if n_boxes else None,
            "random_window_hit_rate": random_hits / n_boxes if n_boxes else None,
        }
    return out
