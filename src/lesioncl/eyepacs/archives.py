"""Unpacking the Kaggle EyePACS archives into the raw layout.

Kaggle ships the images as one zip per split cut into byte chunks
(``train.zip.001`` … ``train.zip.005``, ``test.zip.001`` … ``test.zip.007``): the
parts are not zips themselves, their concatenation is. We never write the
concatenation to disk (it would need another 88 GB): :class:`ConcatenatedFile`
presents the parts as one seekable file (:mod:`.volumes`), which :mod:`zipfile` reads
directly.
7z volumes (``train.7z.001`` …) are read with py7zr through multivolumefile.
The label CSVs come zipped (``trainLabels.csv.zip``) or plain.

Integrity: zipfile checks the CRC-32 of every member it extracts and py7zr the
CRCs of its folders, so a corrupt byte anywhere is found. When a part is corrupt
and ``delete_corrupt`` is set (Kaggle downloads), the parts holding the bad member
are deleted together with the download manifest, so that rerunning Snakemake
downloads exactly those parts again.
"""

from __future__ import annotations

import bisect
import io
import logging
import os
import re
import shutil
import zipfile
import zlib
from pathlib import Path

from lesioncl.eyepacs.common import IMAGE_DIRS, IMAGE_EXT, LABEL_FILES, EyepacsError
from lesioncl.eyepacs.volumes import ArchiveSet, ConcatenatedFile, find_archive_sets
from lesioncl.progress import progress
from lesioncl.utils import atomic_path, write_json

log = logging.getLogger(__name__)


IMAGE_NAME_RE = re.compile(r"^[0-9]+_(left|right)\.jpeg$")
_COPY_BUFFER = 1 << 20


def _member_target(member_name: str) -> str | None:
    """The file name a member is written under, or None when it is not an image."""
    base = member_name.replace("\\", "/").rsplit("/", 1)[-1]
    return base if IMAGE_NAME_RE.match(base) else None


def _corrupt(
    aset: ArchiveSet,
    reader: ConcatenatedFile | None,
    start: int,
    end: int,
    member: str,
    error: Exception,
    delete_corrupt: bool,
    manifest: Path | None,
) -> EyepacsError:
    """Build the error for a corrupt member; delete the parts holding it if asked."""
    if reader is not None and len(aset.parts) > 1:
        first, last = reader.part_at(start), reader.part_at(max(start, end - 1))
        bad = aset.parts[first : last + 1]
    else:
        bad = list(aset.parts)
    names = ", ".join(p.name for p in bad)
    if delete_corrupt:
        for path in bad:
            path.unlink(missing_ok=True)
        if manifest is not None:
            Path(manifest).unlink(missing_ok=True)
        fix = (
            f"deleted {names} (and the download manifest): rerun Snakemake to download "
            f"{'it' if len(bad) == 1 else 'them'} again"
        )
    else:
        fix = f"replace {names} with an intact copy"
    return EyepacsError(
        f"{aset.name}: member {member} is corrupt ({error}); it lies in {names}: {fix}"
    )


def unpack_zip(
    aset: ArchiveSet,
    out_dir: Path,
    delete_corrupt: bool = False,
    manifest: Path | None = None,
) -> dict:
    """Extract the images of a (multi-part) zip into ``out_dir``, flat, CRC-checked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    reader = ConcatenatedFile(aset.parts)
    buffered = io.BufferedReader(reader, buffer_size=_COPY_BUFFER)
    skipped: list[str] = []
    written: set[str] = set()
    duplicates: list[str] = []
    try:
        try:
            archive = zipfile.ZipFile(buffered)
        except zipfile.BadZipFile as exc:
            sizes = ", ".join(f"{p.name} ({s} bytes)" for p, s in zip(aset.parts, reader.sizes))
            raise EyepacsError(
                f"{aset.name}: the parts do not form a zip ({exc}): {sizes}. The last part "
                "is probably incomplete or a part is missing; download the parts again"
            ) from exc
        with archive:
            infos = [i for i in archive.infolist() if not i.is_dir()]
            offsets = sorted(i.header_offset for i in infos)
            central = archive.start_dir if hasattr(archive, "start_dir") else reader.size
            for info in progress(infos, desc=f"unpack {aset.name}", unit="file", mininterval=5):
                target = _member_target(info.filename)
                if target is None:
                    skipped.append(info.filename)
                    continue
                if target in written:
                    duplicates.append(info.filename)
                    continue
                k = bisect.bisect_right(offsets, info.header_offset)
                end = offsets[k] if k < len(offsets) else central
                dest = out_dir / target
                try:
                    with archive.open(info) as src, open(dest, "wb") as dst:
                        shutil.copyfileobj(src, dst, _COPY_BUFFER)
                except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                    dest.unlink(missing_ok=True)
                    raise _corrupt(
                        aset,
                        reader,
                        info.header_offset,
                        end,
                        info.filename,
                        exc,
                        delete_corrupt,
                        manifest,
                    ) from exc
                written.add(target)
    finally:
        buffered.close()
    return {"written": len(written), "skipped": skipped, "duplicates": duplicates}


def unpack_7z(
    aset: ArchiveSet,
    out_dir: Path,
    delete_corrupt: bool = False,
    manifest: Path | None = None,
) -> dict:
    """Extract the images of a (multi-volume) 7z archive into ``out_dir``, flat."""
    import py7zr

    out_dir.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.7z-staging"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if len(aset.parts) > 1:
            import multivolumefile

            base = aset.parts[0].with_name(aset.name)
            # multivolumefile takes every `{base}.*` beside the parts: make sure
            # that is exactly our numbered parts.
            found = sorted(base.parent.glob(base.name + ".*"))
            if found != sorted(aset.parts):
                extra = sorted(set(found) - set(aset.parts))
                raise EyepacsError(
                    f"{base.parent}: files other than the numbered volumes match "
                    f"{base.name}.*: {', '.join(p.name for p in extra)}; move them away"
                )
            source = multivolumefile.open(base, mode="rb")
        else:
            source = open(aset.parts[0], "rb")
        with source:
            try:
                with py7zr.SevenZipFile(source, mode="r") as archive:
                    log.info("%s: extracting %d members", aset.name, len(archive.getnames()))
                    archive.extractall(path=staging)
            except (
                py7zr.exceptions.Bad7zFile,
                py7zr.exceptions.CrcError,
                EOFError,
                OSError,
            ) as exc:
                raise _corrupt(
                    aset, None, 0, 0, "(7z folder)", exc, delete_corrupt, manifest
                ) from exc
        skipped: list[str] = []
        duplicates: list[str] = []
        written: set[str] = set()
        for root, _dirs, files in os.walk(staging):
            for name in sorted(files):
                path = Path(root) / name
                rel = path.relative_to(staging).as_posix()
                if not IMAGE_NAME_RE.match(name):
                    skipped.append(rel)
                elif name in written:
                    duplicates.append(rel)
                else:
                    os.replace(path, out_dir / name)
                    written.add(name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return {"written": len(written), "skipped": skipped, "duplicates": duplicates}


def find_label_file(archives_dir: Path, name: str) -> Path | None:
    """``name`` itself or zipped (``name.zip``) in ``archives_dir``."""
    for candidate in (archives_dir / name, archives_dir / f"{name}.zip"):
        if candidate.is_file():
            return candidate
    return None


def unpack_label_file(source: Path, dest: Path) -> None:
    """Copy a label CSV, or extract it from its zip (the one ``*.csv`` member)."""
    with atomic_path(dest) as tmp:
        if source.suffix == ".zip":
            try:
                with zipfile.ZipFile(source) as archive:
                    members = [i for i in archive.infolist() if i.filename.endswith(".csv")]
                    if len(members) != 1:
                        raise EyepacsError(
                            f"{source}: expected one .csv member, found "
                            f"{[i.filename for i in archive.infolist()]}; replace the file "
                            "with the competition's original"
                        )
                    with archive.open(members[0]) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, _COPY_BUFFER)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise EyepacsError(
                    f"{source} is not an intact zip ({exc}); delete it and rerun to "
                    "download it again"
                ) from exc
        else:
            shutil.copyfile(source, tmp)


def unpack_all(
    archives_dir: str | os.PathLike,
    raw_dir: str | os.PathLike,
    delete_corrupt: bool = False,
    manifest: str | os.PathLike | None = None,
) -> dict:
    """Unpack the train/test image archives and the label CSVs into ``raw_dir``.

    Returns a summary (images written per folder, members skipped because they
    are not ``{id}_{left|right}.jpeg``, duplicates), also written to
    ``raw_dir/unpack_report.json``.
    """
    archives_dir, raw_dir = Path(archives_dir), Path(raw_dir)
    manifest = Path(manifest) if manifest else None
    if not archives_dir.is_dir():
        raise EyepacsError(f"{archives_dir}: archive folder not found; run the download first")
    sets = find_archive_sets(archives_dir)
    missing = [stem for stem in IMAGE_DIRS if stem not in sets]
    if missing:
        raise EyepacsError(
            f"{archives_dir}: no archive for {', '.join(missing)} (expected "
            f"{', '.join(f'{m}.zip.001…' for m in missing)}); download the competition's "
            "files there"
        )
    labels = {key: find_label_file(archives_dir, name) for key, name in LABEL_FILES.items()}
    absent = [LABEL_FILES[k] for k, v in labels.items() if v is None]
    if absent:
        raise EyepacsError(
            f"{archives_dir}: label file(s) missing: "
            f"{', '.join(f'{a} (or {a}.zip)' for a in absent)}; download them from the "
            "competition's data page into this folder"
        )
    for stem in sorted(set(sets) - set(IMAGE_DIRS)):
        log.info("ignoring archive %s (not needed)", sets[stem].name)
    raw_dir.mkdir(parents=True, exist_ok=True)
    report: dict = {"archives_dir": str(archives_dir), "folders": {}}
    for stem in IMAGE_DIRS:
        aset = sets[stem]
        log.info("unpacking %s from %d part(s)", aset.name, len(aset.parts))
        unpack = unpack_zip if aset.kind == "zip" else unpack_7z
        result = unpack(aset, raw_dir / stem, delete_corrupt=delete_corrupt, manifest=manifest)
        result["archive"] = [p.name for p in aset.parts]
        report["folders"][stem] = result
        log.info("%s: %d images written to %s", aset.name, result["written"], raw_dir / stem)
        if result["skipped"]:
            log.warning(
                "%s: %d member(s) are not {id}_{left|right}%s and were not unpacked: %s",
                aset.name,
                len(result["skipped"]),
                IMAGE_EXT,
                ", ".join(result["skipped"][:20]),
            )
        if result["duplicates"]:
            log.warning(
                "%s: %d member(s) repeat an image name; the first copy was kept: %s",
                aset.name,
                len(result["duplicates"]),
                ", ".join(result["duplicates"][:20]),
            )
    for key, source in labels.items():
        unpack_label_file(source, raw_dir / LABEL_FILES[key])
        log.info("%s -> %s", source.name, raw_dir / LABEL_FILES[key])
    write_json(raw_dir / "unpack_report.json", report)
    return report
