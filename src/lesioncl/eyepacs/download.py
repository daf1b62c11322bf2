"""Downloading the EyePACS competition files with the Kaggle API.

* Credentials and the API client: :mod:`.kaggle_api`.
* The competition's files are fetched one by one into ``{download_dir}/archives``.
  A file whose size equals the size the API lists is complete and skipped, so an
  interrupted download resumes at the file it stopped at. The file in progress is
  downloaded in its own staging folder ``archives/.downloading/<name>/``, which is
  kept when a transfer breaks: the next attempt lets the client resume it from its
  bytes (HTTP Range, checked against the server's ETag by the client's
  ``.kaggle-partial`` marker) instead of starting again.
* Every downloaded file is checked against the listed size; the zips are CRC-checked
  when they are unpacked (:mod:`.archives`).
* When ``{download_dir}/{competition}.zip`` exists (what ``kaggle competitions
  download -c diabetic-retinopathy-detection`` leaves: one zip holding all the
  competition's files) the parts are taken out of it instead, without the network.
* HTTP 401/403/404 from Kaggle become one clear message each (bad token, rules not
  accepted, wrong competition name). Other failures (network) propagate, and the
  Snakemake rule's ``retries:`` starts again, skipping what is complete.
"""

from __future__ import annotations

import logging
import os
import shutil
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

from lesioncl.eyepacs.common import IMAGE_DIRS, LABEL_FILES, EyepacsError
from lesioncl.eyepacs.kaggle_api import call_api, make_kaggle_api
from lesioncl.eyepacs.volumes import PART_RE, SINGLE_RE
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)


_COPY_BUFFER = 1 << 20
MANIFEST_NAME = "download_manifest.json"
# kaggle >= 1.8 keeps "<file>.kaggle-partial" beside a partial download (its resume state)
RESUME_MARKER_SUFFIX = ".kaggle-partial"


# --------------------------------------------------------------------------- listing
def _file_size(item: Any) -> int | None:
    for attr in ("total_bytes", "totalBytes", "size"):
        value = getattr(item, attr, None)
        if value is None and isinstance(item, Mapping):
            value = item.get(attr)
        if value not in (None, ""):
            try:
                return int(value)
            except (TypeError, ValueError):
                pass
    return None


def list_competition_files(api: Any, competition: str) -> dict[str, int | None]:
    """``{file name: size in bytes}`` of the competition's files (all pages)."""
    files: dict[str, int | None] = {}
    token = None
    for _ in range(1000):
        response = call_api(
            lambda: api.competition_list_files(competition, page_token=token, page_size=20),
            competition,
            "listing the competition's files",
        )
        items = getattr(response, "files", response) or []
        for item in items:
            name = getattr(item, "name", None) or (
                item.get("name") if isinstance(item, Mapping) else None
            )
            if name:
                files[name] = _file_size(item)
        token = getattr(response, "next_page_token", None)
        if not token:
            break
    return files


def is_needed(name: str) -> bool:
    """Whether a competition file is one we unpack: the train/test images and the labels."""
    base = name.rsplit("/", 1)[-1]
    m = PART_RE.match(base) or SINGLE_RE.match(base)
    if m:
        return m["stem"] in IMAGE_DIRS
    return any(base in (label, f"{label}.zip") for label in LABEL_FILES.values())


def check_complete_listing(names: list[str], where: str, archives_dir: Path | None = None) -> None:
    """Raise when the needed files lack an image archive or a label file.

    A label file absent from ``names`` but already in ``archives_dir`` (put there
    by hand) is fine.
    """
    bases = [n.rsplit("/", 1)[-1] for n in names]
    if archives_dir is not None:
        bases += [
            name
            for label in LABEL_FILES.values()
            for name in (label, f"{label}.zip")
            if (archives_dir / name).is_file()
        ]
    stems = {m["stem"] for m in (PART_RE.match(b) or SINGLE_RE.match(b) for b in bases) if m}
    problems = [f"{stem}.zip.001…" for stem in IMAGE_DIRS if stem not in stems]
    for label in LABEL_FILES.values():
        if label not in bases and f"{label}.zip" not in bases:
            problems.append(f"{label}[.zip]")
    if problems:
        raise EyepacsError(
            f"{where} lacks {', '.join(problems)}; the competition's files are "
            "train.zip.001…, test.zip.001…, trainLabels.csv.zip and retinopathy_solution.csv. "
            "Download the missing ones from the competition's data page into "
            f"{archives_dir if archives_dir is not None else 'the archives folder'} and rerun, "
            "or use eyepacs.source: folder"
        )


# --------------------------------------------------------------------------- fetching
def _check_disk(folder: Path, needed: int) -> None:
    free = shutil.disk_usage(folder).free
    gib = 1 << 30
    if needed > free:
        raise EyepacsError(
            f"{folder}: {needed / gib:.1f} GiB still to download but only {free / gib:.1f} "
            "GiB free; free space or set eyepacs.download_dir to a larger disk"
        )
    if 2 * needed > free:
        log.warning(
            "%s: %.1f GiB free; the download needs %.1f GiB and unpacking about as much again",
            folder,
            free / gib,
            needed / gib,
        )


def _unzip_single(source: Path, dest: Path) -> None:
    """Kaggle may serve a single file zipped (``name.zip``): take out its one member."""
    with zipfile.ZipFile(source) as archive:
        infos = [i for i in archive.infolist() if not i.is_dir()]
        if len(infos) != 1:
            raise EyepacsError(
                f"{source}: expected one member, found {[i.filename for i in infos]}"
            )
        with atomic_path(dest) as tmp, archive.open(infos[0]) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, _COPY_BUFFER)


def fetch_file(api: Any, competition: str, name: str, size: int | None, archives_dir: Path) -> str:
    """Make ``archives_dir/name`` complete; returns 'skipped' or 'downloaded'."""
    target = archives_dir / Path(name).name
    if target.is_file() and size is not None and target.stat().st_size == size:
        log.info("%s: complete (%d bytes), skipped", target.name, size)
        return "skipped"
    if target.exists():
        log.info(
            "%s: partial (%d of %s bytes), fetching it again",
            target.name,
            target.stat().st_size,
            size if size is not None else "?",
        )
        target.unlink()
    # The client names its output after the download URL; a private folder per
    # file makes that name irrelevant and keeps partial files out of the way. It is
    # kept when a transfer breaks: without force the client resumes the partial file
    # from its bytes (its .kaggle-partial marker proves the bytes are this file's).
    staging = archives_dir / ".downloading" / Path(name).name
    staging.mkdir(parents=True, exist_ok=True)
    partial = [
        p for p in staging.iterdir() if p.is_file() and not p.name.endswith(RESUME_MARKER_SUFFIX)
    ]
    if partial:
        log.info(
            "%s: resuming the partial download %s (%d bytes)",
            name,
            partial[0],
            partial[0].stat().st_size,
        )
    else:
        log.info("%s: downloading (%s bytes)", name, size if size is not None else "?")
    call_api(
        lambda: api.competition_download_file(
            competition, name, path=str(staging), force=False, quiet=False
        ),
        competition,
        f"downloading {name}",
    )
    got = [
        p for p in staging.iterdir() if p.is_file() and not p.name.endswith(RESUME_MARKER_SUFFIX)
    ]
    if len(got) != 1:
        raise EyepacsError(
            f"downloading {name}: expected one file in {staging}, found "
            f"{[p.name for p in got]}; delete {staging} and rerun (complete files are kept)"
        )
    fetched = got[0]
    if fetched.name != target.name and fetched.name == f"{target.name}.zip":
        try:
            _unzip_single(fetched, target)
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise EyepacsError(
                f"downloading {name}: the zipped copy is corrupt ({exc}); rerun"
            ) from exc
        fetched.unlink()
    else:
        os.replace(fetched, target)
    shutil.rmtree(staging, ignore_errors=True)
    actual = target.stat().st_size
    if size is not None and actual != size:
        target.unlink()
        raise EyepacsError(
            f"downloading {name}: got {actual} bytes but Kaggle lists {size}; the partial "
            "file was deleted: rerun to fetch it again"
        )
    return "downloaded"


def extract_from_bundle(bundle: Path, archives_dir: Path) -> dict[str, int]:
    """Take the needed files out of the one-zip competition download (resumable)."""
    try:
        archive = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise EyepacsError(
            f"{bundle} is not a readable zip ({exc}): its download is incomplete. Finish "
            "or delete it (without it the files are downloaded one by one)"
        ) from exc
    files: dict[str, int] = {}
    with archive:
        infos = [i for i in archive.infolist() if not i.is_dir() and is_needed(i.filename)]
        check_complete_listing([i.filename for i in infos], str(bundle))
        _check_disk(archives_dir, sum(i.file_size for i in infos))
        for info in infos:
            target = archives_dir / Path(info.filename).name
            files[target.name] = info.file_size
            if target.is_file() and target.stat().st_size == info.file_size:
                log.info("%s: complete, skipped", target.name)
                continue
            log.info("%s: extracting from %s (%d bytes)", target.name, bundle.name, info.file_size)
            try:
                with atomic_path(target) as tmp, archive.open(info) as src, open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, _COPY_BUFFER)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise EyepacsError(
                    f"{bundle}: member {info.filename} is corrupt ({exc}); delete {bundle} "
                    "and rerun to download the files one by one"
                ) from exc
    log.info("the needed files are in %s; %s may be deleted to free space", archives_dir, bundle)
    return files


def download_competition(
    competition: str,
    download_dir: str | os.PathLike,
    api: Any = None,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike | None = None,
) -> dict:
    """Fetch the EyePACS archives into ``{download_dir}/archives``; returns the manifest.

    ``api`` is a ``KaggleApi`` (tests pass a fake); by default one is made from the
    user's credentials, and only when something must be downloaded.
    """
    download_dir = Path(download_dir)
    archives_dir = download_dir / "archives"
    archives_dir.mkdir(parents=True, exist_ok=True)
    bundle = download_dir / f"{competition}.zip"
    if bundle.is_file():
        log.info("using the competition zip %s (no download)", bundle)
        files = extract_from_bundle(bundle, archives_dir)
        return {"competition": competition, "source": str(bundle), "files": files}

    if api is None:
        api = make_kaggle_api(competition, environ, home)
    listing = list_competition_files(api, competition)
    if not listing:
        # Some clients list nothing for old competitions: fall back to the
        # one-zip download of everything, then take the parts out of it.
        # Downloaded beside, renamed when complete: a broken transfer never
        # leaves a truncated zip under the name that is used without checks.
        log.warning(
            "Kaggle listed no files for %s; downloading the whole competition zip", competition
        )
        # A broken transfer is resumed by the next attempt (staging kept, no force).
        staging = download_dir / ".downloading"
        staging.mkdir(exist_ok=True)
        call_api(
            lambda: api.competition_download_files(
                competition, path=str(staging), force=False, quiet=False
            ),
            competition,
            "downloading the competition zip",
        )
        got = [
            p
            for p in staging.iterdir()
            if p.is_file() and not p.name.endswith(RESUME_MARKER_SUFFIX)
        ]
        if len(got) != 1 or not zipfile.is_zipfile(got[0]):
            raise EyepacsError(
                f"the competition download left {[p.name for p in got]} in {staging}, not one "
                "complete zip; rerun"
            )
        os.replace(got[0], bundle)
        shutil.rmtree(staging, ignore_errors=True)
        files = extract_from_bundle(bundle, archives_dir)
        return {"competition": competition, "source": str(bundle), "files": files}

    needed = {name: size for name, size in sorted(listing.items()) if is_needed(name)}
    skipped = sorted(set(listing) - set(needed))
    if skipped:
        log.info("not needed, not downloaded: %s", ", ".join(skipped))
    check_complete_listing(list(needed), f"the Kaggle listing of {competition}", archives_dir)
    todo = 0
    for name, size in needed.items():
        target = archives_dir / Path(name).name
        have = target.stat().st_size if target.is_file() else -1
        if size is None or have != size:
            todo += size or 0
    _check_disk(archives_dir, todo)
    results = {"skipped": 0, "downloaded": 0}
    for name, size in needed.items():
        results[fetch_file(api, competition, name, size, archives_dir)] += 1
    shutil.rmtree(archives_dir / ".downloading", ignore_errors=True)
    log.info(
        "%d file(s) downloaded, %d already complete", results["downloaded"], results["skipped"]
    )
    files = {Path(n).name: (archives_dir / Path(n).name).stat().st_size for n in needed}
    return {"competition": competition, "source": "kaggle api", "files": files}
