"""The IDRiD input: its names (folders, lesion classes), a zip or a folder read alike."""

from __future__ import annotations

import io
import logging
import os
import re
import shutil
import threading
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Iterator, Mapping

log = logging.getLogger("lesioncl.idrid")


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
    {"id": lesion.category_id, "name": lesion.name, "supercategory": "lesion"} for lesion in LESIONS
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
    f"{{{', '.join(les.folder for les in (*LESIONS, OPTIC_DISC))}}}/IDRiD_NN_"
    f"{{{','.join(les.code for les in (*LESIONS, OPTIC_DISC))}}}.tif'. "
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
    hint = f" It holds {', '.join(zips)}: point idrid.path at the zip itself." if zips else ""
    raise IdridLayoutError(
        f"{path}: neither a '{SEGMENTATION_DIR}' folder nor '{IMAGES_DIR}' / "
        f"'{MASKS_DIR}' folders are inside.{hint} Fix: set idrid.path to the official "
        f"'{SEGMENTATION_DIR}' zip, the '{SEGMENTATION_DIR}' folder or the folder "
        "containing it."
    )


def source_path(idrid: Mapping[str, Any], results: str) -> str:
    """The IDRiD segmentation archive or folder for the configured source (config ``idrid``)."""
    if idrid["source"] == "synthetic":
        return f"{results}/synthetic/idrid"
    path = idrid["path"]
    if not path:
        raise ValueError(
            "config: idrid.source is 'path' but idrid.path is not set; set it to the "
            "official 'A. Segmentation' zip or its unpacked folder"
        )
    return path


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
