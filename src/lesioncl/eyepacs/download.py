"""Downloading the EyePACS competition files with the Kaggle API.

* Credentials are checked *before* the ``kaggle`` package is imported: it
  authenticates at import time and exits without them. Accepted, in the client's
  order: the new-style API token (``KAGGLE_API_TOKEN``, the token itself or a file
  holding it, or ``~/.kaggle/access_token``; kaggle >= 1.8), then the legacy
  ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``kaggle.json``. Without any the user gets
  one message saying exactly what to do.
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

import json
import logging
import os
import shutil
import stat
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from lesioncl.eyepacs.archives import PART_RE, SINGLE_RE
from lesioncl.eyepacs.common import IMAGE_DIRS, LABEL_FILES, EyepacsError
from lesioncl.utils import atomic_path

log = logging.getLogger(__name__)

_COPY_BUFFER = 1 << 20
MANIFEST_NAME = "download_manifest.json"
# kaggle >= 1.8 keeps "<file>.kaggle-partial" beside a partial download (its resume state)
RESUME_MARKER_SUFFIX = ".kaggle-partial"


# --------------------------------------------------------------------------- credentials
@dataclass
class KaggleCredentials:
    source: str  # where they were found, for messages
    username: str | None


def kaggle_config_dir(
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike | None = None,
    platform: str | None = None,
) -> Path:
    """The folder where the kaggle client looks for ``kaggle.json`` (its own rules).

    ``$KAGGLE_CONFIG_DIR``; else ``~/.kaggle``; on Linux, when ``~/.kaggle`` does not
    exist, ``$XDG_CONFIG_HOME/kaggle`` (default ``~/.config/kaggle``).
    """
    env = os.environ if environ is None else environ
    home = Path(home) if home is not None else Path(env.get("HOME") or Path.home())
    platform = sys.platform if platform is None else platform
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    legacy = home / ".kaggle"
    if platform.startswith("linux") and not legacy.exists():
        return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"
    return legacy


def _warn_if_readable(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("%s is readable by other users (mode %o); run: chmod 600 %s", path, mode, path)


def find_access_token(
    environ: Mapping[str, str] | None = None, home: str | os.PathLike | None = None
) -> KaggleCredentials | None:
    """The new-style API token (kaggle >= 1.8), where the client looks for it; None if absent.

    ``KAGGLE_API_TOKEN`` holds the token or the path of a file holding it; else
    ``~/.kaggle/access_token`` (or ``access_token.txt``). An empty token file is an error.
    """
    env = os.environ if environ is None else environ
    home = Path(home) if home is not None else Path(env.get("HOME") or Path.home())
    value = (env.get("KAGGLE_API_TOKEN") or "").strip()
    candidates = []
    if value:
        try:
            is_file = Path(value).expanduser().exists()
        except (OSError, ValueError):  # a token too long (or odd) to be a path
            is_file = False
        if not is_file:
            return KaggleCredentials("the variable KAGGLE_API_TOKEN", None)
        candidates.append((Path(value).expanduser(), "the file named by KAGGLE_API_TOKEN"))
    candidates += [(home / ".kaggle" / name, None) for name in ("access_token", "access_token.txt")]
    for path, what in candidates:
        if not path.is_file():
            continue
        try:
            token = path.read_text().strip()
        except OSError as exc:
            raise EyepacsError(
                f"{path}: the Kaggle API token cannot be read ({exc}); fix its "
                "permissions (chmod 600, owned by you) and rerun"
            ) from exc
        if not token:
            raise EyepacsError(
                f"{path} is empty: it must hold the API token Kaggle shows under Settings -> "
                "API -> 'Generate New Token'; paste the token into it (or delete the file) and "
                "rerun"
            )
        _warn_if_readable(path)
        return KaggleCredentials(f"{what} ({path})" if what else str(path), None)
    return None


def find_kaggle_credentials(
    environ: Mapping[str, str] | None = None, home: str | os.PathLike | None = None
) -> KaggleCredentials | None:
    """Kaggle credentials in the client's order; None when there are none.

    The new-style API token first (:func:`find_access_token`), then the legacy key
    (``KAGGLE_USERNAME``/``KAGGLE_KEY``, or ``kaggle.json``). A ``kaggle.json`` that
    is not JSON with ``username`` and ``key`` is an error.
    """
    env = os.environ if environ is None else environ
    token = find_access_token(env, home)
    if token is not None:
        return token
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return KaggleCredentials(
            "the variables KAGGLE_USERNAME and KAGGLE_KEY", env["KAGGLE_USERNAME"]
        )
    path = kaggle_config_dir(env, home) / "kaggle.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        username, key = data["username"], data["key"]
        if not username or not key:
            raise KeyError("username/key empty")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise EyepacsError(
            f"{path} is not a valid Kaggle API token ({exc}): it must be the JSON file "
            '{"username": ..., "key": ...} that Kaggle gives under Settings -> API -> '
            "Create New Token; download a new one and replace this file"
        ) from exc
    _warn_if_readable(path)
    return KaggleCredentials(str(path), username)


def missing_credentials_message(
    competition: str,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike | None = None,
) -> str:
    """The one message shown when no Kaggle credentials are configured."""
    env = os.environ if environ is None else environ
    config_dir = kaggle_config_dir(env, home)
    where = (
        f"$KAGGLE_CONFIG_DIR/kaggle.json ({config_dir}/kaggle.json)"
        if env.get("KAGGLE_CONFIG_DIR")
        else "~/.kaggle/kaggle.json"
    )
    target = "$KAGGLE_CONFIG_DIR" if env.get("KAGGLE_CONFIG_DIR") else "~/.kaggle"
    return (
        "No Kaggle API credentials: no API token (the variable KAGGLE_API_TOKEN or "
        f"~/.kaggle/access_token), no {where} and not the variables KAGGLE_USERNAME and "
        "KAGGLE_KEY. To download EyePACS with eyepacs.source: kaggle, "
        "(1) sign in at https://www.kaggle.com, open Settings -> API and either "
        "'Generate New Token' (an API token: export KAGGLE_API_TOKEN=<token>, or save it: "
        "mkdir -p ~/.kaggle && echo <token> > ~/.kaggle/access_token && chmod 600 "
        "~/.kaggle/access_token) or the legacy 'Create New Token' (downloads kaggle.json: "
        f"mkdir -p {target} && mv kaggle.json {target}/ && chmod 600 {target}/kaggle.json -- "
        "or export KAGGLE_USERNAME=<user> KAGGLE_KEY=<key>); "
        "(2) accept the competition rules at "
        f"https://www.kaggle.com/competitions/{competition}/rules; "
        "then rerun. If you already have the images, set eyepacs.source: folder and "
        "eyepacs.raw_dir: <the folder holding train/, test/, trainLabels.csv and "
        "retinopathy_solution.csv> instead."
    )


def make_kaggle_api(
    competition: str,
    environ: Mapping[str, str] | None = None,
    home: str | os.PathLike | None = None,
) -> Any:
    """An authenticated ``KaggleApi``; a clear :class:`EyepacsError` without credentials.

    ``kaggle`` is imported only here, after the credentials were found.
    """
    creds = find_kaggle_credentials(environ, home)
    if creds is None:
        raise EyepacsError(missing_credentials_message(competition, environ, home))
    log.info(
        "Kaggle credentials from %s%s",
        creds.source,
        f" (user {creds.username})" if creds.username else "",
    )
    failed = f"the Kaggle client could not authenticate with {creds.source}"
    fix = (
        "create a new API token (Kaggle Settings -> API -> Generate New Token) and put it "
        "in KAGGLE_API_TOKEN or ~/.kaggle/access_token (an expired or revoked token is "
        "refused), or use a legacy kaggle.json; then rerun"
    )
    try:
        from kaggle.api.kaggle_api_extended import KaggleApi  # authenticates on import

        api = KaggleApi()
        api.authenticate()
    except ImportError as exc:
        raise EyepacsError(
            f"the kaggle package is not installed ({exc}); install the project's "
            "requirements (make setup) or use eyepacs.source: folder"
        ) from exc
    except SystemExit as exc:  # kaggle >= 1.8 exits when no method authenticates
        raise EyepacsError(f"{failed} (it gave up: {exc}); {fix}") from None
    except (OSError, ValueError, KeyError) as exc:
        raise EyepacsError(f"{failed}: {exc}; {fix}") from exc
    return api


# --------------------------------------------------------------------------- API errors
def http_status(exc: BaseException) -> int | None:
    """The HTTP status of an error raised by the kaggle client, if it has one.

    kaggle >= 1.7 raises ``requests.HTTPError`` (status on ``.response``); older
    clients raised ``kaggle.rest.ApiException`` (status on ``.status``).
    """
    status = getattr(exc, "status", None)
    if isinstance(status, int):
        return status
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return code if isinstance(code, int) else None


def explain_api_error(exc: BaseException, competition: str, action: str) -> EyepacsError | None:
    """One clear error for the HTTP failures a user can fix; None for others."""
    status = http_status(exc)
    if status == 401:
        return EyepacsError(
            f"Kaggle rejected the API credentials while {action} (HTTP 401: {exc}). The "
            "token is wrong, expired or was revoked: create a new one (Kaggle Settings -> "
            "API -> Generate New Token) and update KAGGLE_API_TOKEN or ~/.kaggle/access_token "
            "(chmod 600) -- or, with a legacy key (Create New Token), replace "
            "~/.kaggle/kaggle.json or update KAGGLE_USERNAME/KAGGLE_KEY -- then rerun."
        )
    if status == 403:
        return EyepacsError(
            f"Kaggle refused access to the competition '{competition}' while {action} "
            "(HTTP 403): its rules have not been accepted for this account. Open "
            f"https://www.kaggle.com/competitions/{competition}/rules while signed in with "
            "the account of your API token, click 'I Understand and Accept', then rerun."
        )
    if status == 404:
        return EyepacsError(
            f"Kaggle has no competition or file for '{competition}' while {action} "
            "(HTTP 404); check eyepacs.competition in the config (the paper's data is "
            "diabetic-retinopathy-detection)."
        )
    if status == 429:
        return EyepacsError(
            f"Kaggle is rate-limiting this account while {action} (HTTP 429); wait a "
            "few minutes and rerun (complete files are kept)."
        )
    return None


def call_api(fn: Callable[[], Any], competition: str, action: str) -> Any:
    try:
        return fn()
    except Exception as exc:
        explained = explain_api_error(exc, competition, action)
        if explained is not None:
            raise explained from exc
        raise


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
