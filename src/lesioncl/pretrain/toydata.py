"""Small generated crops, manifest and lesion index for tests and the loader benchmark.

Fundus-like images: a black background, an orange disc with a brightness gradient,
and a few dark-red "lesion" blobs whose bounding boxes form the lesion index. Not a
substitute for the workflow's synthetic data stage: it only feeds this package's
tests and ``benchmarks/bench_loader.py`` without running the upstream rules.
"""

from __future__ import annotations

import colorsys
import os
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lesioncl.crop.cache import build_crop_cache


def render_crop(
    rng: np.random.Generator, size: int, n_lesions: int, colorful: bool = False
) -> tuple[np.ndarray, list[tuple[float, ...]]]:
    """One uint8 (size, size, 3) image and its lesion boxes (x1, y1, x2, y2).

    ``colorful`` gives every image a disc of a random hue (instead of fundus orange),
    so that a tiny network learns to tell images apart within a few steps.
    """
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    c = size / 2
    r = np.hypot(xx - c, yy - c) / (0.48 * size)
    disc = (r < 1).astype(np.float32)
    shade = (1.0 - 0.5 * r**2) * (0.8 + 0.4 * rng.random())
    if colorful:
        base = (
            np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.6, 1.0), 1.0), np.float32)
            * 230
        )
    else:
        base = np.array([200, 95, 45], np.float32) * rng.uniform(0.8, 1.2, 3)
    img = disc[..., None] * shade[..., None] * base
    boxes = []
    for _ in range(n_lesions):
        radius = rng.uniform(0.01, 0.05) * size
        ang, rad = rng.uniform(0, 2 * np.pi), rng.uniform(0, 0.38) * size
        x, y = c + rad * np.cos(ang), c + rad * np.sin(ang)
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * (radius / 2) ** 2))
        color = (
            np.array([90, 20, 15], np.float32)
            if rng.random() < 0.6
            else np.array([250, 230, 120], np.float32)
        )
        img = img * (1 - blob[..., None]) + color * blob[..., None] * disc[..., None]
        boxes.append(
            (
                float(max(0, x - radius)),
                float(max(0, y - radius)),
                float(min(size, x + radius)),
                float(min(size, y + radius)),
            )
        )
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8), boxes


def write_toy_dataset(
    folder: str | os.PathLike,
    n_train: int = 16,
    n_val: int = 8,
    size: int = 64,
    seed: int = 0,
    max_lesions: int = 4,
    colorful: bool = False,
) -> dict[str, Path]:
    """Write JPEG crops, ``crop_manifest.csv`` and ``lesion_index.pkl`` under ``folder``.

    Returns their paths (``manifest``, ``index``, ``crops``). Every image has at least
    one lesion; the index has a ``train`` and a ``val`` split.
    """
    folder = Path(folder)
    crops = folder / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, index = [], {"train": {}, "val": {}}
    for i in range(n_train + n_val):
        split = "train" if i < n_train else "val"
        name = f"{i}_{'left' if i % 2 == 0 else 'right'}"
        img, boxes = render_crop(rng, size, int(rng.integers(1, max_lesions + 1)), colorful)
        path = crops / f"{name}.jpeg"
        Image.fromarray(img).save(path, quality=95)
        rows.append(
            {
                "image": name,
                "patient_id": i // 2,
                "eye": name.split("_")[1],
                "level": int(rng.integers(0, 5)),
                "split": split,
                "path": str(path),
            }
        )
        index[split][f"{name}.jpeg"] = boxes
    manifest = folder / "crop_manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    index_path = folder / "lesion_index.pkl"
    with open(index_path, "wb") as fh:
        pickle.dump(index, fh)
    return {"manifest": manifest, "index": index_path, "crops": crops}


def write_toy_cache(folder: str | os.PathLike, size: int = 64, **kwargs) -> dict[str, Path]:
    """:func:`write_toy_dataset` plus the crop caches ``cache/crops_{train,val}.npy``."""
    paths = write_toy_dataset(folder, size=size, **kwargs)
    for split in ("train", "val"):
        npy = Path(folder) / "cache" / f"crops_{split}.npy"
        build_crop_cache(paths["manifest"], split, size, npy, npy.with_suffix(".csv"))
        paths[f"{split}_cache"] = npy
    return paths
