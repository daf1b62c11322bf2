"""IDRiD ingestion: the official "A. Segmentation" layout -> lesion boxes -> COCO.

The official layout (docs/method.md; 81 images, 54 train + 27 test, 4288x2848)::

    A. Segmentation/
      1. Original Images/{a. Training Set,b. Testing Set}/IDRiD_NN.jpg
      2. All Segmentation Groundtruths/{a. Training Set,b. Testing Set}/
          1. Microaneurysms/IDRiD_NN_MA.tif
          2. Haemorrhages/IDRiD_NN_HE.tif
          3. Hard Exudates/IDRiD_NN_EX.tif
          4. Soft Exudates/IDRiD_NN_SE.tif
          5. Optic Disc/IDRiD_NN_OD.tif

Not every image has every lesion mask (that is normal); every image has at least one
lesion mask. The input is the official zip (with ``A. Segmentation/`` at its root or one
level down), the folder ``A. Segmentation`` itself, or the folder containing it. A zip
is read member by member, never unpacked.

Masks -> boxes (the original's recipe, docs/method.md, made precise):

* A mask pixel is lesion when the maximum over its colour channels is above
  ``mask_threshold`` (the original: > 1). The real masks are RGB TIFs with the lesion in
  the red channel; palette masks are expanded to RGB first and an alpha channel is
  ignored. A mask whose maximum value is exactly 1 is a 0/1 mask: 1 is lesion (with
  threshold > 1 it would otherwise be empty); this is logged and listed in the summary.
* One box per 8-connected component of the binary mask. The original took the
  bounding rectangles of the *external contours* (OpenCV), which trace 8-connected
  outlines: the two agree except for a component lying inside a hole of another one,
  which the contours drop and we keep (it lies inside the outer box anyway).
  Consequences: lesions that touch -- also only diagonally, by a corner -- are one
  component and one box; a single lesion pixel is a 1x1 box; an empty mask gives no box.
* Classes: 1 microaneurysm, 2 haemorrhage, 3 hard_exudate, 4 soft_exudate; optic-disc
  masks are ignored.
* Boxes are COCO ``[x, y, w, h]`` in pixels covering the component's pixels
  (``w = max_x - min_x + 1``, i.e. x2 = x + w = max_x + 1). ``area`` is the component's
  pixel count (the COCO meaning of area: the object's, not the box's).

Resizing (``max_size``): boxes are extracted from the masks at full resolution and then
scaled with the image (x and w by new_width / width, y and h by new_height / height),
so no mask is ever resampled and no component merges or vanishes through resizing.
A scaled box narrower or lower than ``min_box_size`` output pixels is grown around its
centre to that size (inside the image), so that tiny microaneurysms stay trainable.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import shutil
import threading
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

import numpy as np

from .utils import atomic_path, write_json

log = logging.getLogger(__name__)

SEGMENTATION_DIR = "A. Segmentation"
IMAGES_DIR = "1. Original Images"
MASKS_DIR = "2. All Segmentation Groundtruths"
SPLITS = {"train": "a. Training Set", "test": "b. Testing Set"}


@dataclass(frozen=True)
class Lesion:
    category_id: int
    name: str
    folder: str
    code: str


LESIONS = (
    Lesion(1, "microaneurysm", "1. Microaneurysms", "MA"),
    Lesion(2, "haemorrhage", "2. Haemorrhages", "HE"),
    Lesion(3, "hard_exudate", "3. Hard Exudates", "EX"),
    Lesion(4, "soft_exudate", "4. Soft Exudates", "SE"),
)
OPTIC_DISC = Lesion(0, "optic_disc", "5. Optic Disc", "OD")  # ignored
_ALL_MASK_FOLDERS = {lesion.folder: lesion for lesion in (*LESIONS, OPTIC_DISC)}
_BY_CODE = {lesion.code: lesion for lesion in (*LESIONS, OPTIC_DISC)}
CATEGORIES = [
    {"id": lesion.category_id, "name": lesion.name, "supercategory": "lesion"}
    for lesion in LESIONS
]

_IMAGE_RE = re.compile(r"^(IDRiD_(\d+))\.(jpg|jpeg)$", re.IGNORECASE)
_MASK_RE = re.compile(r"^(IDRiD_(\d+))_([A-Za-z]{2})\.(tif|tiff)$", re.IGNORECASE)
# Operating-system litter that archives and copies pick up; skipped silently.
_JUNK_FILES = {".ds_store", "thumbs.db", "desktop.ini"}
_JUNK_DIRS = {"__macosx"}

LAYOUT_HELP = (
    f"Expected the official IDRiD layout: '{SEGMENTATION_DIR}/{IMAGES_DIR}/"
    f"{{{', '.join(SPLITS.values())}}}/IDRiD_NN.jpg' and '{SEGMENTATION_DIR}/"
    f"{MASKS_DIR}/{{{', '.join(SPLITS.values())}}}/"
    f"{{{', '.join(l.folder for l in (*LESIONS, OPTIC_DISC))}}}/IDRiD_NN_"
    f"{{{','.join(l.code for l in (*LESIONS, OPTIC_DISC))}}}.tif'. "
    "Fix: set idrid.path to the unmodified official 'A. Segmentation' zip or its "
    "unpacked folder, or correct the files listed above."
)


class IdridLayoutError(ValueError):
    """The IDRiD input does not follow the official layout (all problems listed)."""


def _is_junk(rel: str) -> bool:
    parts = PurePosixPath(rel).parts
    if any(p.lower() in _JUNK_DIRS for p in parts):
        return True
    name = parts[-1] if parts else ""
    return name.lower() in _JUNK_FILES or name.startswith("._")


# --------------------------------------------------------------------------- sources
class IdridSource:
    """Read access to an "A. Segmentation" tree (a folder or inside a zip).

    ``files`` and ``dirs`` are POSIX paths relative to the "A. Segmentation" folder.
    """

    description: str
    files: set[str]
    dirs: set[str]
    shows_empty_dirs = True  # False: an empty folder may simply not be listed

    def read_bytes(self, rel: str) -> bytes:  # pragma: no cover - interface
        raise NotImplementedError

    @contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        yield io.BytesIO(self.read_bytes(rel))

    def copy_to(self, rel: str, dest: Path) -> None:
        dest.write_bytes(self.read_bytes(rel))

    def display(self, rel: str) -> str:
        return f"{self.description}/{rel}"

    def close(self) -> None:
        pass


class FolderSource(IdridSource):
    def __init__(self, root: Path):
        self.root = root
        self.description = str(root)
        self.files, self.dirs = set(), set()
        for dirpath, dirnames, filenames in os.walk(root):
            rel_dir = Path(dirpath).relative_to(root).as_posix()
            dirnames[:] = sorted(d for d in dirnames if d.lower() not in _JUNK_DIRS)
            for d in dirnames:
                self.dirs.add(d if rel_dir == "." else f"{rel_dir}/{d}")
            for f in filenames:
                rel = f if rel_dir == "." else f"{rel_dir}/{f}"
                if not _is_junk(rel):
                    self.files.add(rel)

    def read_bytes(self, rel: str) -> bytes:
        return (self.root / rel).read_bytes()

    @contextmanager
    def open(self, rel: str) -> Iterator[BinaryIO]:
        with open(self.root / rel, "rb") as fh:
            yield fh

    def copy_to(self, rel: str, dest: Path) -> None:
        shutil.copyfile(self.root / rel, dest)


class ZipSource(IdridSource):
    def __init__(self, path: Path):
        self.path = path
        self._zip = zipfile.ZipFile(path)
        self._lock = threading.Lock()
        # Windows tools sometimes write "\\" separators: normalise them.
        original = {n.replace("\\", "/"): n for n in self._zip.namelist()}
        names = [n for n in original if not _is_junk(n.rstrip("/"))]
        prefixes = set()
        for name in names:
            parts = PurePosixPath(name).parts
            for i, part in enumerate(parts[:-1] if not name.endswith("/") else parts):
                if part in (IMAGES_DIR, MASKS_DIR):
                    prefixes.add(parts[:i])
                    break
        if not prefixes:
            self._zip.close()
            raise IdridLayoutError(
                f"{path}: the zip holds no '{IMAGES_DIR}' or '{MASKS_DIR}' folder. "
                f"Fix: set idrid.path to the official IDRiD segmentation archive "
                f"('{SEGMENTATION_DIR}.zip') or its unpacked folder."
            )
        shallowest = min(len(p) for p in prefixes)
        top = sorted(p for p in prefixes if len(p) == shallowest)
        if len(top) > 1:
            self._zip.close()
            raise IdridLayoutError(
                f"{path}: the zip holds several IDRiD trees ("
                + ", ".join("/".join(p) or "<root>" for p in top)
                + "). Fix: point idrid.path at a zip with exactly one "
                f"'{SEGMENTATION_DIR}' folder, or at that unpacked folder."
            )
        self.prefix = "/".join(top[0])
        self.description = f"{path}:{self.prefix}" if self.prefix else str(path)
        start = f"{self.prefix}/" if self.prefix else ""
        self._members: dict[str, str] = {}
        self.files, self.dirs = set(), set()
        # Zips written without folder entries cannot hold empty folders.
        self.shows_empty_dirs = any(n.endswith("/") for n in names)
        for name in names:
            if not name.startswith(start) or name == start:
                continue
            rel = name[len(start) :]
            if name.endswith("/"):
                self.dirs.add(rel.rstrip("/"))
            else:
                self.files.add(rel)
                self._members[rel] = original[name]
        for rel in list(self.files) + list(self.dirs):  # zips may omit folder entries
            parent = PurePosixPath(rel).parent
            while str(parent) != ".":
                self.dirs.add(parent.as_posix())
                parent = parent.parent

    def read_bytes(self, rel: str) -> bytes:
        member = self._members[rel]
        try:
            with self._lock:
                return self._zip.read(member)
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            raise IdridLayoutError(
                f"{self.path}: the member {member} is corrupt ({exc}): the archive is "
                "damaged (an interrupted download or copy?). Fix: download the official "
                f"'{SEGMENTATION_DIR}' zip again and check it (unzip -t), or unpack a good "
                "copy and set idrid.path to that folder."
            ) from None

    def close(self) -> None:
        self._zip.close()


def _resolve_folder(path: Path) -> Path:
    for candidate in (path / SEGMENTATION_DIR, path):
        if (candidate / IMAGES_DIR).is_dir() or (candidate / MASKS_DIR).is_dir():
            return candidate
    zips = sorted(p.name for p in path.glob("*.zip"))
    hint = (
        f" It holds {', '.join(zips)}: point idrid.path at the zip itself."
        if zips
        else ""
    )
    raise IdridLayoutError(
        f"{path}: neither a '{SEGMENTATION_DIR}' folder nor '{IMAGES_DIR}' / "
        f"'{MASKS_DIR}' folders are inside.{hint} Fix: set idrid.path to the official "
        f"'{SEGMENTATION_DIR}' zip, the '{SEGMENTATION_DIR}' folder or the folder "
        "containing it."
    )


def check_idrid_path(path: str | os.PathLike) -> None:
    """Cheap checks of the configured IDRiD input before any job: it exists, a folder
    is not empty and holds the layout's folders, a file is a zip. (The full layout and
    every member are checked by the rule.)"""
    path = Path(path)
    if not path.exists():
        raise IdridLayoutError(
            f"{path}: IDRiD input not found. Fix: set idrid.path to the official "
            f"'{SEGMENTATION_DIR}' zip or its unpacked folder (or idrid.source: synthetic)."
        )
    if path.is_dir():
        with os.scandir(path) as entries:
            if next(entries, None) is None:
                raise IdridLayoutError(
                    f"{path}: the folder is empty. Fix: unpack the official "
                    f"'{SEGMENTATION_DIR}' zip into it, or set idrid.path to the zip itself."
                )
        _resolve_folder(path)
    elif not zipfile.is_zipfile(path):
        raise IdridLayoutError(
            f"{path}: neither a folder nor a zip archive (an incomplete download?). Fix: "
            f"set idrid.path to the official '{SEGMENTATION_DIR}' zip or its unpacked folder."
        )


@contextmanager
def open_idrid_source(path: str | os.PathLike) -> Iterator[IdridSource]:
    """Open the IDRiD segmentation zip or folder at ``path`` (see the module doc)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path}: IDRiD input not found. Fix: set idrid.path to the official "
            f"'{SEGMENTATION_DIR}' zip or its unpacked folder (or idrid.source: synthetic)."
        )
    if path.is_dir():
        source: IdridSource = FolderSource(_resolve_folder(path))
    elif zipfile.is_zipfile(path):
        source = ZipSource(path)
    else:
        raise IdridLayoutError(
            f"{path}: neither a folder nor a zip archive. Fix: set idrid.path to the "
            f"official '{SEGMENTATION_DIR}' zip or its unpacked folder."
        )
    try:
        yield source
    finally:
        source.close()


# --------------------------------------------------------------------------- layout
@dataclass
class IdridImage:
    split: str
    stem: str  # "IDRiD_01"
    number: int  # 1
    image: str  # path relative to "A. Segmentation"
    masks: dict[str, str] = field(default_factory=dict)  # lesion code -> path
    optic_disc: str | None = None
    width: int = 0
    height: int = 0


def scan_layout(
    files: set[str], dirs: set[str], where: str, shows_empty_dirs: bool = True
) -> tuple[dict[str, list[IdridImage]], list[str]]:
    """Match a listing against the official layout; returns (images per split, problems).

    Pure function of the listing (paths relative to "A. Segmentation"); file contents
    are checked by :func:`check_sizes`. With ``shows_empty_dirs`` False (a zip without
    folder entries) an absent lesion folder is taken as an empty one.
    """
    problems: list[str] = []
    children: dict[str, set[str]] = {}
    for rel in files | dirs:
        parent = PurePosixPath(rel).parent.as_posix()
        children.setdefault(parent, set()).add(PurePosixPath(rel).name)

    def show(rel: str) -> str:
        return f"{where}/{rel}"

    def kids(rel: str) -> tuple[list[str], list[str]]:
        names = children.get(rel, set())
        sub = [f"{rel}/{n}" for n in sorted(names)]
        return [p for p in sub if p in dirs], [p for p in sub if p in files]

    def expect_folders(parent: str, expected: list[str], required: list[str]) -> None:
        subdirs, subfiles = kids(parent)
        for rel in subfiles:
            problems.append(f"unexpected file {show(rel)} (only folders belong here)")
        names = {PurePosixPath(d).name for d in subdirs}
        for d in subdirs:
            if PurePosixPath(d).name not in expected:
                problems.append(
                    f"unexpected folder {show(d)} (expected only: {', '.join(expected)})"
                )
        for name in required:
            if name not in names:
                problems.append(f"missing folder {show(f'{parent}/{name}')}")

    images: dict[str, dict[str, IdridImage]] = {split: {} for split in SPLITS}
    stems_anywhere: dict[str, str] = {}

    top = {PurePosixPath(p).name for p in files | dirs if "/" not in p}
    for name in (IMAGES_DIR, MASKS_DIR):
        if name not in dirs:
            problems.append(f"missing folder {show(name)}")
    extra = sorted(top - {IMAGES_DIR, MASKS_DIR})
    if extra:
        log.info(
            "ignoring entries beside the IDRiD folders in %s: %s",
            where,
            ", ".join(extra),
        )

    if IMAGES_DIR in dirs:
        expect_folders(IMAGES_DIR, list(SPLITS.values()), list(SPLITS.values()))
        for split, split_dir in SPLITS.items():
            folder = f"{IMAGES_DIR}/{split_dir}"
            if folder not in dirs:
                continue
            subdirs, subfiles = kids(folder)
            for d in subdirs:
                problems.append(
                    f"unexpected folder {show(d)} (expected only IDRiD_NN.jpg images)"
                )
            for rel in subfiles:
                name = PurePosixPath(rel).name
                m = _IMAGE_RE.match(name)
                if not m:
                    problems.append(
                        f"unexpected file {show(rel)} (expected IDRiD_NN.jpg)"
                    )
                    continue
                stem = m.group(1)
                if stem in images[split]:
                    problems.append(
                        f"duplicate image {show(rel)} (also {show(images[split][stem].image)}); "
                        "keep one"
                    )
                    continue
                images[split][stem] = IdridImage(split, stem, int(m.group(2)), rel)
                stems_anywhere[stem] = split
            if not images[split]:
                problems.append(f"no IDRiD_NN.jpg images in {show(folder)}")

    if MASKS_DIR in dirs:
        expect_folders(MASKS_DIR, list(SPLITS.values()), list(SPLITS.values()))
        for split, split_dir in SPLITS.items():
            split_folder = f"{MASKS_DIR}/{split_dir}"
            if split_folder not in dirs:
                continue
            # The optic-disc folder is not used: it may be absent.
            expect_folders(
                split_folder,
                list(_ALL_MASK_FOLDERS),
                [lesion.folder for lesion in LESIONS] if shows_empty_dirs else [],
            )
            for folder_name, lesion in _ALL_MASK_FOLDERS.items():
                folder = f"{split_folder}/{folder_name}"
                if folder not in dirs:
                    continue
                subdirs, subfiles = kids(folder)
                for d in subdirs:
                    problems.append(
                        f"unexpected folder {show(d)} (expected only IDRiD_NN_{lesion.code}.tif masks)"
                    )
                for rel in subfiles:
                    name = PurePosixPath(rel).name
                    m = _MASK_RE.match(name)
                    if not m:
                        problems.append(
                            f"unexpected file {show(rel)} (expected IDRiD_NN_{lesion.code}.tif)"
                        )
                        continue
                    stem, code = m.group(1), m.group(3).upper()
                    if code != lesion.code:
                        other = _BY_CODE.get(code)
                        where_to = f"; it belongs in '{other.folder}'" if other else ""
                        problems.append(
                            f"unexpected file {show(rel)} in '{folder_name}' (expected "
                            f"IDRiD_NN_{lesion.code}.tif{where_to})"
                        )
                        continue
                    item = images[split].get(stem)
                    if item is None:
                        if f"{IMAGES_DIR}/{split_dir}" not in dirs:
                            continue  # the missing image folder is reported already
                        elsewhere = stems_anywhere.get(stem)
                        hint = (
                            f"; {stem} is in the {elsewhere} images, not the {split} ones"
                            if elsewhere
                            else ""
                        )
                        problems.append(
                            f"mask without image: {show(rel)} has no "
                            f"{show(f'{IMAGES_DIR}/{SPLITS[split]}/{stem}.jpg')}{hint}"
                        )
                        continue
                    if lesion is OPTIC_DISC:
                        item.optic_disc = rel
                    elif code in item.masks:
                        problems.append(
                            f"duplicate mask {show(rel)} (also {show(item.masks[code])}); keep one"
                        )
                    else:
                        item.masks[code] = rel

            if IMAGES_DIR in dirs:
                for item in images[split].values():
                    if not item.masks:
                        problems.append(
                            f"image without any lesion mask: {show(item.image)} has no "
                            f"IDRiD_NN_{{MA,HE,EX,SE}}.tif in {show(split_folder)}"
                        )

    ordered = {
        split: sorted(by_stem.values(), key=lambda it: (it.number, it.stem))
        for split, by_stem in images.items()
    }
    return ordered, problems


def _image_size(fh: BinaryIO) -> tuple[int, int]:
    from PIL import Image

    try:
        with Image.open(fh) as img:
            return img.size
    except Exception:  # noqa: BLE001 - fall back to tifffile for exotic TIFFs
        import tifffile

        fh.seek(0)
        with tifffile.TiffFile(fh) as tif:
            shape = tif.pages[0].shape
            if (
                len(shape) == 3
                and shape[0] in (1, 2, 3, 4)
                and shape[-1] not in (1, 2, 3, 4)
            ):
                return shape[2], shape[1]  # planar: (channels, h, w)
            return shape[1], shape[0]


def check_sizes(source: IdridSource, layout: dict[str, list[IdridImage]]) -> list[str]:
    """Read every image and lesion-mask header; fill in sizes; return the problems."""
    problems = []
    for items in layout.values():
        for item in items:
            try:
                with source.open(item.image) as fh:
                    item.width, item.height = _image_size(fh)
            except Exception as exc:  # noqa: BLE001
                problems.append(
                    f"unreadable image {source.display(item.image)} ({exc})"
                )
                continue
            for code, rel in item.masks.items():
                try:
                    with source.open(rel) as fh:
                        w, h = _image_size(fh)
                except Exception as exc:  # noqa: BLE001
                    problems.append(f"unreadable mask {source.display(rel)} ({exc})")
                    continue
                if (w, h) != (item.width, item.height):
                    problems.append(
                        f"size mismatch: mask {source.display(rel)} is {w}x{h} but its image "
                        f"{source.display(item.image)} is {item.width}x{item.height}"
                    )
    return problems


def load_layout(source: IdridSource) -> dict[str, list[IdridImage]]:
    """Validate the whole input; raise one :class:`IdridLayoutError` listing every problem."""
    layout, problems = scan_layout(
        source.files, source.dirs, source.description, source.shows_empty_dirs
    )
    problems += check_sizes(source, layout)
    if problems:
        raise IdridLayoutError(
            f"IDRiD input {source.description}: {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\n"
            + LAYOUT_HELP
        )
    return layout


# --------------------------------------------------------------------------- masks
def read_mask_values(data: bytes) -> np.ndarray:
    """Decode a mask file into a 2-D array: the maximum over its colour channels."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            mode = img.mode
            if mode == "1":
                arr = np.asarray(img, dtype=bool).astype(np.uint8) * 255
            elif mode in ("P", "PA"):
                arr = np.asarray(img.convert("RGBA"))[..., :3]
            elif mode in ("LA", "La", "RGBA", "RGBa"):
                arr = np.asarray(img)[..., :-1]
            elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                arr = np.asarray(img.convert("RGB"))
            else:  # L, RGB, I, I;16*, F
                arr = np.asarray(img)
    except Exception:  # noqa: BLE001 - exotic TIFF (compression, planar, ...)
        import tifffile

        arr = tifffile.imread(io.BytesIO(data))
        if (
            arr.ndim == 3
            and arr.shape[0] in (1, 2, 3, 4)
            and arr.shape[-1] not in (1, 2, 3, 4)
        ):
            arr = np.moveaxis(arr, 0, -1)
        if arr.ndim == 3 and arr.shape[-1] in (2, 4):
            arr = arr[..., :-1]  # drop alpha
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    if arr.ndim != 2:
        raise ValueError(f"mask has shape {arr.shape}; expected a 2-D image")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    return arr


def binarise(values: np.ndarray, threshold: float) -> tuple[np.ndarray, bool]:
    """Lesion pixels: ``values > threshold``; a 0/1 mask (maximum exactly 1) uses ``>= 1``.

    Returns (binary mask, whether it was treated as a 0/1 mask).
    """
    vmax = values.max() if values.size else 0
    if vmax == 1 and threshold >= 1:
        return values >= 1, True
    return values > threshold, False


def mask_to_boxes(mask: np.ndarray) -> np.ndarray:
    """One box per 8-connected component: int array (K, 5) of x, y, w, h, pixel area.

    The box covers the component's pixels (x + w = max_x + 1); components are in
    raster order of their first pixel.
    """
    import cv2

    mask = np.ascontiguousarray(mask, dtype=np.uint8)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    if not mask.any():
        return np.zeros((0, 5), dtype=np.int64)
    _, _, stats, _ = cv2.connectedComponentsWithStats(
        mask, connectivity=8, ltype=cv2.CV_32S
    )
    cols = [
        cv2.CC_STAT_LEFT,
        cv2.CC_STAT_TOP,
        cv2.CC_STAT_WIDTH,
        cv2.CC_STAT_HEIGHT,
        cv2.CC_STAT_AREA,
    ]
    return stats[1:, cols].astype(np.int64)


def output_size(width: int, height: int, max_size: int | None) -> tuple[int, int]:
    """(w, h) with the longest side at most ``max_size``, aspect kept; never upscales."""
    if max_size is None or max(width, height) <= max_size:
        return width, height
    scale = max_size / max(width, height)
    return max(1, round(width * scale)), max(1, round(height * scale))


def scale_boxes(
    boxes: np.ndarray,
    sx: float,
    sy: float,
    width: int,
    height: int,
    min_size: float = 0.0,
) -> tuple[np.ndarray, int]:
    """Scale (K, 4) [x, y, w, h] boxes by (sx, sy); grow boxes below ``min_size``.

    A box narrower (lower) than ``min_size`` is widened (heightened) to it around its
    centre and shifted to stay inside the ``width`` x ``height`` image. Returns the
    boxes (float) and how many were grown.
    """
    out = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) * np.array(
        [sx, sy, sx, sy]
    )
    grown = np.zeros(len(out), dtype=bool)
    for pos, size, limit in ((0, 2, width), (1, 3, height)):
        small = out[:, size] < min_size
        if small.any():
            new = min(min_size, limit)
            centre = out[small, pos] + out[small, size] / 2
            out[small, pos] = np.clip(centre - new / 2, 0, limit - new)
            out[small, size] = new
            grown |= small
    return out, int(grown.sum())


# --------------------------------------------------------------------------- COCO
@dataclass
class _ImageResult:
    image: dict
    annotations: list[dict]
    zero_one_masks: list[str]
    empty_masks: list[str]
    grown: int


def _process_image(
    source: IdridSource,
    item: IdridImage,
    out_dir: Path,
    threshold: float,
    max_size: int | None,
    min_box_size: float,
) -> _ImageResult:
    from PIL import Image

    new_w, new_h = output_size(item.width, item.height, max_size)
    sx, sy = new_w / item.width, new_h / item.height
    file_name = PurePosixPath(item.image).name
    dest = out_dir / file_name
    if (new_w, new_h) == (item.width, item.height):
        source.copy_to(item.image, dest)
    else:
        with Image.open(io.BytesIO(source.read_bytes(item.image))) as img:
            img.draft("RGB", (new_w, new_h))  # fast JPEG DCT downscale, still >= target
            img = img.convert("RGB").resize((new_w, new_h), Image.Resampling.LANCZOS)
            img.save(dest, format="JPEG", quality=95, subsampling=0)

    annotations, zero_one, empty, grown_total = [], [], [], 0
    for lesion in LESIONS:
        rel = item.masks.get(lesion.code)
        if rel is None:
            continue
        values = read_mask_values(source.read_bytes(rel))
        if values.shape != (item.height, item.width):
            raise IdridLayoutError(
                f"{source.display(rel)}: decoded mask is {values.shape[1]}x{values.shape[0]} "
                f"but its image is {item.width}x{item.height}. Fix: replace the mask with "
                "the official file."
            )
        mask, was_zero_one = binarise(values, threshold)
        if was_zero_one:
            log.info("%s: 0/1 mask, treating 1 as lesion", source.display(rel))
            zero_one.append(rel)
        stats = mask_to_boxes(mask)
        if len(stats) == 0:
            level = logging.WARNING if values.max() > 0 else logging.INFO
            log.log(
                level,
                "%s: no lesion pixel above %s (max value %s)",
                source.display(rel),
                threshold,
                values.max(),
            )
            empty.append(rel)
            continue
        boxes, grown = scale_boxes(stats[:, :4], sx, sy, new_w, new_h, min_box_size)
        grown_total += grown
        for box, area in zip(boxes, stats[:, 4]):
            annotations.append(
                {
                    "image_id": item.number,
                    "category_id": lesion.category_id,
                    "bbox": [round(float(v), 3) for v in box],
                    "area": round(float(area) * sx * sy, 3),
                    "iscrowd": 0,
                }
            )
    image = {
        "id": item.number,
        "file_name": file_name,
        "width": new_w,
        "height": new_h,
        "orig_width": item.width,
        "orig_height": item.height,
    }
    return _ImageResult(image, annotations, zero_one, empty, grown_total)


def _size_stats(values: list[float]) -> dict:
    if not values:
        return {"n": 0}
    arr = np.asarray(values, dtype=np.float64)
    return {
        "n": int(arr.size),
        "min": float(arr.min()),
        "p10": float(np.percentile(arr, 10)),
        "median": float(np.median(arr)),
        "mean": round(float(arr.mean()), 3),
        "p90": float(np.percentile(arr, 90)),
        "max": float(arr.max()),
    }


def _split_summary(
    items: list[IdridImage], coco: dict, results: list[_ImageResult]
) -> dict:
    per_class = {}
    for lesion in LESIONS:
        anns = [
            a for a in coco["annotations"] if a["category_id"] == lesion.category_id
        ]
        per_class[lesion.name] = {
            "masks": sum(lesion.code in it.masks for it in items),
            "images_with_boxes": len({a["image_id"] for a in anns}),
            "boxes": len(anns),
            "box_width": _size_stats([a["bbox"][2] for a in anns]),
            "box_height": _size_stats([a["bbox"][3] for a in anns]),
            "area": _size_stats([a["area"] for a in anns]),
        }
    with_boxes = {a["image_id"] for a in coco["annotations"]}
    return {
        "images": len(coco["images"]),
        "boxes": len(coco["annotations"]),
        "images_without_boxes": sorted(
            im["file_name"] for im in coco["images"] if im["id"] not in with_boxes
        ),
        "original_sizes": sorted({f"{it.width}x{it.height}" for it in items}),
        "output_sizes": sorted(
            {f"{im['width']}x{im['height']}" for im in coco["images"]}
        ),
        "per_class": per_class,
        "zero_one_masks": sorted(m for r in results for m in r.zero_one_masks),
        "empty_masks": sorted(m for r in results for m in r.empty_masks),
        "grown_boxes": sum(r.grown for r in results),
    }


def build_idrid_coco(
    source_path: str | os.PathLike,
    coco_paths: dict[str, str | os.PathLike],
    images_dir: str | os.PathLike,
    summary_path: str | os.PathLike,
    qc_path: str | os.PathLike | None = None,
    mask_threshold: float = 1,
    max_size: int | None = None,
    min_box_size: float = 1.0,
    qc_images: int = 4,
    threads: int = 1,
) -> dict:
    """Validate the IDRiD input, extract the boxes and write the COCO files.

    ``coco_paths`` maps split ("train", "test") to its json; the images go to
    ``images_dir/{split}/`` (``file_name`` is relative to that folder). Returns the
    summary (also written to ``summary_path``).
    """
    from lesioncl.progress import progress

    missing = set(SPLITS) - set(coco_paths)
    if missing:
        raise ValueError(f"coco_paths lacks the split(s) {sorted(missing)}")
    images_dir = Path(images_dir)
    summary = {
        "source": str(source_path),
        "mask_threshold": mask_threshold,
        "max_size": max_size,
        "min_box_size": min_box_size,
        "categories": {c["id"]: c["name"] for c in CATEGORIES},
        "splits": {},
    }
    with open_idrid_source(source_path) as source:
        log.info("reading IDRiD from %s", source.description)
        layout = load_layout(source)
        summary["layout_root"] = source.description
        for split, items in layout.items():
            out_dir = images_dir / split
            out_dir.mkdir(parents=True, exist_ok=True)
            log.info("%s: %d images", split, len(items))

            def work(item: IdridImage, out_dir: Path = out_dir) -> _ImageResult:
                return _process_image(
                    source, item, out_dir, mask_threshold, max_size, min_box_size
                )

            with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
                results = list(
                    progress(
                        pool.map(work, items),
                        total=len(items),
                        desc=f"IDRiD {split}",
                        unit="img",
                    )
                )
            coco = {
                "info": {
                    "description": f"IDRiD segmentation {SPLITS[split]}: lesion boxes from the "
                    "masks (one per 8-connected component)",
                    "source": source.description,
                },
                "images": [r.image for r in results],
                "annotations": [],
                "categories": CATEGORIES,
            }
            for result in results:
                for ann in result.annotations:
                    coco["annotations"].append(
                        {"id": len(coco["annotations"]) + 1, **ann}
                    )
            write_json(coco_paths[split], coco)
            summary["splits"][split] = _split_summary(items, coco, results)
            log.info(
                "%s: %d images, %d boxes (%s)",
                split,
                len(coco["images"]),
                len(coco["annotations"]),
                ", ".join(
                    f"{name} {c['boxes']}"
                    for name, c in summary["splits"][split]["per_class"].items()
                ),
            )
    write_json(summary_path, summary)
    if qc_path is not None:
        draw_qc(coco_paths["train"], images_dir / "train", qc_path, qc_images)
    return summary


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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
        Patch(edgecolor=CLASS_COLOURS[c], facecolor="none", label=names[c])
        for c in sorted(names)
    ]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), frameon=False)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return [im["file_name"] for im in chosen]
