"""The 512 crops of one split decoded once into a uint8 memmap (``results/cache``).

Contract (CONTRIBUTING.md): ``crops_{split}.npy`` is a uint8 ``(N, S, S, 3)`` RGB array
written with :func:`numpy.lib.format.open_memmap` and read with
``np.load(path, mmap_mode='r')``; ``crops_{split}.csv`` lists ``image, level, split``
in the same row order. DataLoader workers share the array through the page cache, so
no JPEG is decoded during training or evaluation.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lesioncl.progress import progress
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)

MANIFEST_COLUMNS = ("image", "level", "split", "path")
CACHE_COLUMNS = ["image", "level", "split"]
SPLITS = ("train", "val", "test")


def csv_path_of(npy_path: str | os.PathLike) -> Path:
    """The row listing beside a cache array (``crops_train.npy`` -> ``crops_train.csv``)."""
    return Path(npy_path).with_suffix(".csv")


def build_crop_cache(
    manifest: str | os.PathLike,
    split: str,
    size: int,
    npy_out: str | os.PathLike,
    csv_out: str | os.PathLike,
    threads: int = 1,
) -> int:
    """Decode the ``split`` crops listed in ``manifest`` into ``npy_out``; returns N.

    Both outputs are written atomically. Crops must already be ``size`` x ``size``
    (the crop stage's ``crop.size``); anything else is an error, not a silent resize.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    table = read_manifest(manifest)
    rows = table[table["split"] == split].reset_index(drop=True)
    if rows.empty:
        raise ValueError(
            f"{manifest}: no image of split {split!r} (splits present: "
            f"{sorted(table['split'].unique())}); rerun the eyepacs/crop rules"
        )
    paths = [_resolve(p, manifest) for p in rows["path"]]
    check_crop_files(paths, manifest)
    n = len(paths)
    log.info("caching %d %s crops of %dx%d from %s", n, split, size, size, manifest)

    with atomic_path(npy_out) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size, 3))

        def load(i: int) -> None:
            array[i] = decode_crop(paths[i], size)  # noqa: F821 - deleted only after the pool

        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            # PIL releases the GIL while decoding, so threads scale.
            for _ in progress(pool.map(load, range(n)), total=n, desc=f"cache {split}", unit="img"):
                pass
        array.flush()
        del array
    with atomic_path(csv_out) as tmp:
        rows[CACHE_COLUMNS].to_csv(tmp, index=False)
    log.info("wrote %s (%.1f MiB) and %s", npy_out, n * size * size * 3 / 2**20, csv_out)
    return n


def read_manifest(path: str | os.PathLike) -> pd.DataFrame:
    """The crop manifest with its required columns checked."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"crop manifest not found: {path}; run the crop rule first")
    table = pd.read_csv(path, dtype={"image": str, "split": str, "path": str})
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise ValueError(
            f"{path}: missing columns {missing}; expected at least {list(MANIFEST_COLUMNS)} "
            "(CONTRIBUTING.md, crop_manifest.csv)"
        )
    return table


def check_crop_files(paths: list[Path], manifest: str | os.PathLike) -> None:
    """Every crop the manifest lists is there (all of them checked before any decode)."""
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"{manifest}: {len(missing)} of the {len(paths)} crops it lists do not exist "
            f"(first: {', '.join(missing[:3])}): the crop folders changed after the manifest "
            "was written, and Snakemake does not see files deleted inside them. Recreate the "
            "crops: rerun with --forcerun crop_shard (and your --configfile); do not delete "
            "or move single crops"
        )


def _npy_payload(npy_path: Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and the expected file size of a .npy file, from its header only."""
    try:
        with open(npy_path, "rb") as fh:
            version = np.lib.format.read_magic(fh)
            read_header = (
                np.lib.format.read_array_header_1_0
                if version == (1, 0)
                else np.lib.format.read_array_header_2_0
            )
            shape, _, dtype = read_header(fh)
            offset = fh.tell()
    except (OSError, ValueError, SyntaxError) as exc:
        raise ValueError(
            f"{npy_path}: not a readable .npy file ({exc}); delete it and rerun the crop_cache "
            "rule (or copy it again if you copied it from elsewhere)"
        ) from exc
    return shape, dtype, offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def decode_crop(path: Path, size: int) -> np.ndarray:
    """One crop as a uint8 (size, size, 3) RGB array."""
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size, size):
                raise ValueError(
                    f"{path}: crop is {img.size[0]}x{img.size[1]}, expected {size}x{size} "
                    "(crop.size); rerun the crop rule with the current config"
                )
            return np.asarray(img, dtype=np.uint8)
    except (OSError, SyntaxError) as err:
        raise ValueError(f"{path}: cannot decode the crop ({err}); rerun the crop rule") from err


def open_crop_cache(npy_path: str | os.PathLike) -> tuple[np.ndarray, pd.DataFrame]:
    """The cached crops (read-only memmap) and their rows, checked against each other."""
    npy_path = Path(npy_path)
    csv_path = csv_path_of(npy_path)
    for p in (npy_path, csv_path):
        if not p.is_file():
            raise FileNotFoundError(f"crop cache file not found: {p}; run the crop_cache rule")
    shape, dtype, expected = _npy_payload(npy_path)
    actual = npy_path.stat().st_size
    if actual != expected:
        raise ValueError(
            f"{npy_path}: {actual} bytes, but its header describes a {dtype} {shape} array of "
            f"{expected} bytes: the file is {'truncated' if actual < expected else 'too long'} "
            "(an interrupted copy or write). Delete it and rerun the crop_cache rule, or copy "
            "it again completely"
        )
    array = np.load(npy_path, mmap_mode="r")
    rows = pd.read_csv(csv_path, dtype={"image": str, "split": str})
    if (
        array.dtype != np.uint8
        or array.ndim != 4
        or array.shape[3] != 3
        or array.shape[1] != array.shape[2]
    ):
        raise ValueError(
            f"{npy_path}: expected a uint8 (N, S, S, 3) array, found {array.dtype} {array.shape}; "
            "delete it and rerun the crop_cache rule"
        )
    if len(rows) != array.shape[0] or list(rows.columns[:3]) != CACHE_COLUMNS:
        raise ValueError(
            f"{csv_path}: {len(rows)} rows with columns {list(rows.columns)} do not describe the "
            f"{array.shape[0]} crops of {npy_path}; delete both and rerun the crop_cache rule"
        )
    return array, rows


def _resolve(path: str, manifest: str | os.PathLike) -> Path:
    """Crop paths are relative to the working directory; fall back to the manifest's folder."""
    p = Path(path)
    if p.is_file() or p.is_absolute():
        return p
    beside = Path(manifest).parent / p
    return beside if beside.is_file() else p
