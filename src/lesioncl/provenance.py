"""Which data a results folder was made from, checked before any job runs.

A results folder holds days of GPU work. Snakemake reruns whatever it thinks is
out of date, so a command that loads another config (the demo's, because
``--configfile`` was left out) would replan the chain from that config's data over
the real outputs. To prevent that, the first run that executes jobs writes
``<results>/provenance.json``: the data sources (``eyepacs.source`` and the raw
folder or competition, ``idrid.source`` and its path), the config file(s) and
``--config`` keys used, and a hash of the data-defining values. Every later parse
of the workflow compares the current config's data sources with the stamp and
stops before any job when they differ, with a message naming both configs and the
ways out (another ``results_dir``, the right ``--configfile``, or
``allow_provenance_change=true`` after moving the old results away).

Only the data sources are compared: hyper-parameters (crop margins, schedules,
synthetic demo sizes) may change freely; Snakemake reruns exactly what they affect.

Who writes the stamp: the workflow's ``onstart:`` handler before the first job, and
every job again (:func:`stamp_from_environment`, called by :func:`lesioncl.adapter.run`;
a no-op once the folder is stamped). Snakemake ignores ``onstart:`` in a workflow used as
a module, so the jobs are what stamps a module deployment's results folder: the parse
of ``workflow/rules/common.smk``, which a module runs too, hands the stamp to its jobs
through the environment (:func:`export_to_jobs`).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

from lesioncl.utils import write_json

PROVENANCE_NAME = "provenance.json"
# The stamp a job writes (JSON: results_dir, stamp, allow_change), set at parse time.
PROVENANCE_ENV = "LESIONCL_PROVENANCE"


class ProvenanceError(RuntimeError):
    """The results folder was made from other data than the current config names, or
    the configured data cannot be used (missing or empty)."""


def _resolved(path: str | None) -> str | None:
    return None if not path else os.path.realpath(os.path.expanduser(str(path)))


def data_sources(config: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The data-defining part of a config: where EyePACS, IDRiD, DDR's lesion data (when
    the detector uses it) and the external graded sets come from."""
    eyepacs = config.get("eyepacs", {})
    idrid = config.get("idrid", {})
    ep_source = eyepacs.get("source", "synthetic")
    ep: dict[str, Any] = {"source": ep_source}
    if ep_source == "folder":
        ep["raw_dir"] = _resolved(eyepacs.get("raw_dir"))
    elif ep_source == "kaggle":
        ep["competition"] = eyepacs.get("competition")
    id_source = idrid.get("source", "synthetic")
    idr: dict[str, Any] = {"source": id_source}
    if id_source == "path":
        idr["path"] = _resolved(idrid.get("path"))
    sources: dict[str, Any] = {"eyepacs": ep, "idrid": idr}
    # DDR's lesion data, only when the detector trains on it (stamps of earlier versions
    # and of runs without it stay the same)
    if "ddr" in ((config.get("detector") or {}).get("datasets") or ()):
        ddr = config.get("ddr") or {}
        dd: dict[str, Any] = {"source": ddr.get("source", "synthetic")}
        if dd["source"] == "path":
            dd["path"] = _resolved(ddr.get("path"))
        sources["ddr"] = dd
    # the external graded sets, only when there are any (stamps of earlier versions and of
    # runs without them stay the same)
    sets = (config.get("external") or {}).get("sets") or {}
    if sets:
        sources["external"] = {
            name: "synthetic" if where == "synthetic" else _resolved(where)
            for name, where in sorted(sets.items())
        }
    return sources


def _parts(sources: Mapping[str, Any]) -> dict[str, Any]:
    """The data sources as separate parts: eyepacs, idrid, and one per external set."""
    parts = {k: v for k, v in sources.items() if k != "external"}
    for name, where in (sources.get("external") or {}).items():
        parts[f"external.{name}"] = where
    return parts


def conflicts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """The parts both stamps name with different data. A part only one of them names (an
    external set added to, or left out of, the config) is no conflict: no result made
    from the other data would be replaced."""
    a, b = _parts(old), _parts(new)
    return sorted(k for k in set(a) & set(b) if a[k] != b[k])


def check_data_folders(config: Mapping[str, Any]) -> None:
    """The configured raw data exist and are not empty (cheap; before any job).

    Raises :class:`ProvenanceError` with the stage's own message (from
    :class:`lesioncl.eyepacs.EyepacsError` / :class:`lesioncl.idrid.IdridLayoutError`)
    naming the path and the fix.
    """
    from lesioncl.ddr import DdrLayoutError, check_ddr_path
    from lesioncl.external.layouts import ExternalLayoutError, check_external_folder
    from lesioncl.eyepacs.common import EyepacsError
    from lesioncl.idrid import IdridLayoutError

    try:
        for name, where in ((config.get("external") or {}).get("sets") or {}).items():
            if where != "synthetic":
                check_external_folder(name, where)
        eyepacs = config.get("eyepacs", {})
        if eyepacs.get("source") == "folder" and eyepacs.get("raw_dir"):
            from lesioncl.eyepacs.rawdir import check_raw_layout

            check_raw_layout(eyepacs["raw_dir"])
        idrid = config.get("idrid", {})
        if idrid.get("source") == "path" and idrid.get("path"):
            from lesioncl.idrid import check_idrid_path

            check_idrid_path(idrid["path"])
        ddr = config.get("ddr") or {}
        datasets = (config.get("detector") or {}).get("datasets") or ()
        if "ddr" in datasets and ddr.get("source") == "path" and ddr.get("path"):
            check_ddr_path(ddr["path"])
    except (EyepacsError, IdridLayoutError, ExternalLayoutError, DdrLayoutError) as exc:
        raise ProvenanceError(str(exc)) from exc


def sources_hash(sources: Mapping[str, Any]) -> str:
    """A short stable hash of :func:`data_sources`."""
    text = json.dumps(sources, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def make_stamp(
    config: Mapping[str, Any],
    configfiles: Iterable[str | os.PathLike] = (),
    overrides: Iterable[str] = (),
) -> dict[str, Any]:
    """The provenance record of a run with ``config``."""
    sources = data_sources(config)
    return {
        "data": sources,
        "hash": sources_hash(sources),
        "configfiles": [os.path.abspath(str(p)) for p in configfiles],
        "config_overrides": sorted(str(k) for k in overrides),
    }


def read_stamp(results_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The stamp of ``results_dir``; None when there is none."""
    path = Path(results_dir) / PROVENANCE_NAME
    if not path.is_file():
        return None
    try:
        stamp = json.loads(path.read_text())
        stamp["hash"], stamp["data"]  # noqa: B018 - both keys must be there
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ProvenanceError(
            f"{path} is not a provenance stamp written by this workflow ({exc}); if you "
            f"edited it, restore it; if it is unrelated, move it away (the results folder "
            f"{results_dir} then counts as unstamped and the next run stamps it)"
        ) from exc
    return stamp


def _describe(stamp: Mapping[str, Any]) -> str:
    data = stamp.get("data", {})
    ep = data.get("eyepacs", {})
    idr = data.get("idrid", {})
    ep_text = f"eyepacs.source: {ep.get('source')}"
    if ep.get("raw_dir"):
        ep_text += f" (raw_dir {ep['raw_dir']})"
    if ep.get("competition"):
        ep_text += f" (competition {ep['competition']})"
    id_text = f"idrid.source: {idr.get('source')}"
    if idr.get("path"):
        id_text += f" (path {idr['path']})"
    external = data.get("external") or {}
    if external:
        id_text += "; external.sets: " + ", ".join(f"{k} {v}" for k, v in external.items())
    files = ", ".join(stamp.get("configfiles") or []) or "no config file"
    overrides = stamp.get("config_overrides") or []
    extra = f" with --config {', '.join(overrides)}" if overrides else ""
    return f"{files}{extra}: {ep_text}; {id_text}"


def check_provenance(
    results_dir: str | os.PathLike, stamp: Mapping[str, Any], allow_change: bool = False
) -> str:
    """Compare ``stamp`` with the stamp of ``results_dir`` before any job runs.

    Returns 'new' (no stamp yet), 'same', 'extended' (data sources added or left out,
    none changed: an external set added to the config) or 'changed' (different data,
    allowed); raises :class:`ProvenanceError` for different data without ``allow_change``.
    """
    old = read_stamp(results_dir)
    if old is None:
        return "new"
    if old["hash"] == stamp["hash"]:
        return "same"
    if not conflicts(old["data"], stamp["data"]):
        return "extended"
    if allow_change:
        return "changed"
    path = Path(results_dir) / PROVENANCE_NAME
    raise ProvenanceError(
        f"{results_dir}/ holds results made from other data "
        f"({', '.join(conflicts(old['data'], stamp['data']))}); nothing was run.\n"
        f"  {path} was written by: {_describe(old)}\n"
        f"  this run uses:          {_describe(stamp)}\n"
        "Snakemake would replace those results with ones made from this run's data. Either\n"
        "  - you meant the earlier run: repeat its --configfile (every command on that\n"
        "    folder needs it, --report too); or\n"
        "  - keep both: give this run its own folders, --config results_dir=<folder>\n"
        "    logs_dir=<folder> (or set them in its config file); or\n"
        f"  - replace the old results on purpose: move them away (mv {results_dir} "
        f"{results_dir}.old),\n"
        "    or keep the folder and rerun with --config allow_provenance_change=true\n"
        "    (the stamp is rewritten; the previous one is kept in its history)."
    )


def write_provenance(
    results_dir: str | os.PathLike, stamp: Mapping[str, Any], allow_change: bool = False
) -> Path:
    """Write the stamp when the folder has none (or a different one, when allowed).

    The previous stamp of an allowed change is kept in ``history``. An existing stamp
    of the same data is left as it is (its ``created`` time stays the first run's).
    """
    path = Path(results_dir) / PROVENANCE_NAME
    status = check_provenance(results_dir, stamp, allow_change)
    if status == "same":
        return path
    record = dict(stamp)
    record["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    history = []
    if status in ("changed", "extended"):
        old = read_stamp(results_dir) or {}
        history = list(old.pop("history", []) or []) + [old]
    record["history"] = history
    write_json(path, record)
    return path


def export_to_jobs(
    results_dir: str | os.PathLike, stamp: Mapping[str, Any], allow_change: bool = False
) -> None:
    """Hand the stamp to the jobs of this run (they inherit the environment; a cluster
    job parses the workflow again and sets it itself)."""
    os.environ[PROVENANCE_ENV] = json.dumps(
        {
            "results_dir": os.path.abspath(results_dir),
            "stamp": dict(stamp),
            "allow_change": bool(allow_change),
        }
    )


def stamp_from_environment() -> Path | None:
    """Stamp the results folder named by :func:`export_to_jobs`, if any (a job's first
    step); None outside a workflow run. Raises :class:`ProvenanceError` when the folder
    was stamped with other data since the run was planned."""
    text = os.environ.get(PROVENANCE_ENV)
    if not text:
        return None
    try:
        spec = json.loads(text)
        results_dir, stamp = spec["results_dir"], spec["stamp"]
        allow_change = bool(spec.get("allow_change", False))
    except (ValueError, KeyError, TypeError) as exc:
        raise ProvenanceError(f"environment variable {PROVENANCE_ENV} is damaged ({exc})") from exc
    return write_provenance(results_dir, stamp, allow_change)
