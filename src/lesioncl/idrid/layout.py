"""The official "A. Segmentation" layout: scan, validate (every problem listed), image sizes."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import BinaryIO

from lesioncl.idrid.sources import (
    _ALL_MASK_FOLDERS,
    _BY_CODE,
    _IMAGE_RE,
    _MASK_RE,
    IMAGES_DIR,
    LAYOUT_HELP,
    LESIONS,
    MASKS_DIR,
    OPTIC_DISC,
    SPLITS,
    IdridLayoutError,
    IdridSource,
)

log = logging.getLogger("lesioncl.idrid")


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
                problems.append(f"unexpected folder {show(d)} (expected only IDRiD_NN.jpg images)")
            for rel in subfiles:
                name = PurePosixPath(rel).name
                m = _IMAGE_RE.match(name)
                if not m:
                    problems.append(f"unexpected file {show(rel)} (expected IDRiD_NN.jpg)")
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
                        f"unexpected folder {show(d)} (expected only IDRiD_NN_{lesion.code}.tif "
                        "masks)"
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
            if len(shape) == 3 and shape[0] in (1, 2, 3, 4) and shape[-1] not in (1, 2, 3, 4):
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
                problems.append(f"unreadable image {source.display(item.image)} ({exc})")
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
