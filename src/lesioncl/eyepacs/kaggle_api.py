"""The Kaggle API client: credentials, and its errors made clear.

* Credentials are checked *before* the ``kaggle`` package is imported: it
  authenticates at import time and exits without them. Accepted, in the client's
  order: the new-style API token (``KAGGLE_API_TOKEN``, the token itself or a file
  holding it, or ``~/.kaggle/access_token``; kaggle >= 1.8), then the legacy
  ``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``kaggle.json``. Without any the user gets
  one message saying exactly what to do.
* HTTP 401/403/404 from Kaggle become one clear message each (bad token, rules not
  accepted, wrong competition name).
"""

from __future__ import annotations

import json
import logging
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from lesioncl.eyepacs.common import EyepacsError

log = logging.getLogger(__name__)


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
