"""A results folder is never overwritten from another data source; costly outputs are
write-protected (Snakemake's protected()).

The provenance stamp (lesioncl.provenance, checked in workflow/rules/common.smk) is
written by the first run that executes jobs and compared at every parse; the tests
use the cheapest real job (a tiny synthetic IDRiD) and dry runs.
"""

from __future__ import annotations

import ctypes
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEMAKE, run_snakemake
from lesioncl.provenance import (
    PROVENANCE_NAME,
    ProvenanceError,
    PROVENANCE_ENV,
    check_provenance,
    data_sources,
    export_to_jobs,
    make_stamp,
    stamp_from_environment,
    write_provenance,
)

TINY_IDRID = "results/synthetic/idrid"


def _config(tmp_path: Path, name: str, mutate=None) -> Path:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["synthetic"]["workers"] = 1
    config["synthetic"]["idrid"].update(n_train=2, n_test=1, height=256)
    if mutate is not None:
        mutate(config)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _use_idrid_folder(folder: Path):
    def mutate(config):
        config["idrid"].update(source="path", path=str(folder))
    return mutate


# --------------------------------------------------------------------------- the package
def test_stamp_depends_on_the_data_sources_only(tmp_path):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    other = json.loads(json.dumps(base))
    other["crop"]["bright_margin"] = 99  # a hyper-parameter: same data
    other["synthetic"]["eyepacs"]["n_train"] = 1000  # demo sizes: same (synthetic) source
    assert make_stamp(base)["hash"] == make_stamp(other)["hash"]
    real = json.loads(json.dumps(base))
    real["eyepacs"].update(source="folder", raw_dir=str(tmp_path / "eyepacs"))
    assert make_stamp(real)["hash"] != make_stamp(base)["hash"]
    assert data_sources(real)["eyepacs"] == {"source": "folder", "raw_dir": str((tmp_path / "eyepacs").resolve())}
    moved = json.loads(json.dumps(real))
    moved["eyepacs"]["raw_dir"] = str(tmp_path / "elsewhere")
    assert make_stamp(moved)["hash"] != make_stamp(real)["hash"]


def test_write_check_and_allowed_change(tmp_path):
    base = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    real = json.loads(json.dumps(base))
    real["idrid"].update(source="path", path=str(tmp_path / "idrid.zip"))
    demo_stamp = make_stamp(base, ["config/config.yaml"])
    real_stamp = make_stamp(real, ["config/eyepacs.yaml"])
    results = tmp_path / "results"
    assert check_provenance(results, demo_stamp) == "new"
    write_provenance(results, real_stamp)
    assert check_provenance(results, real_stamp) == "same"
    with pytest.raises(ProvenanceError) as err:
        check_provenance(results, demo_stamp)
    text = str(err.value)
    # both configs, both sources and every way out are named
    for needle in ("config/eyepacs.yaml", "config/config.yaml", "idrid.source: path", "idrid.source: synthetic",
                   "--configfile", "results_dir=", "allow_provenance_change=true", f"mv {results}"):
        assert needle in text, (needle, text)
    assert check_provenance(results, demo_stamp, allow_change=True) == "changed"
    write_provenance(results, demo_stamp, allow_change=True)
    stamp = json.loads((results / PROVENANCE_NAME).read_text())
    assert stamp["hash"] == demo_stamp["hash"]
    assert [old["hash"] for old in stamp["history"]] == [real_stamp["hash"]]


def test_jobs_stamp_the_folder_the_parse_names(tmp_path, monkeypatch):
    """How a module deployment gets its stamp (Snakemake ignores its onstart): the parse
    exports the stamp, every job writes it when the folder has none, and a job whose
    folder was stamped with other data since the run was planned stops."""
    assert stamp_from_environment() is None  # outside a workflow run: nothing to do
    demo = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    stamp = make_stamp(demo, ["config/config.yaml"])
    monkeypatch.chdir(tmp_path)
    export_to_jobs("results", stamp)
    assert json.loads(os.environ[PROVENANCE_ENV])["results_dir"] == str(tmp_path / "results")
    path = stamp_from_environment()
    assert path == tmp_path / "results" / PROVENANCE_NAME
    first = json.loads(path.read_text())
    assert first["hash"] == stamp["hash"] and first["history"] == []
    assert stamp_from_environment() == path  # the same data: left as it is
    assert json.loads(path.read_text())["created"] == first["created"]

    real = json.loads(json.dumps(demo))
    real["idrid"].update(source="path", path=str(tmp_path / "idrid.zip"))
    export_to_jobs(tmp_path / "results", make_stamp(real))
    with pytest.raises(ProvenanceError, match="holds results made from other data"):
        stamp_from_environment()
    export_to_jobs(tmp_path / "results", make_stamp(real), allow_change=True)
    changed = json.loads(stamp_from_environment().read_text())
    assert changed["hash"] == make_stamp(real)["hash"]
    assert changed["history"][0]["hash"] == stamp["hash"]
    monkeypatch.setenv(PROVENANCE_ENV, "{not json")
    with pytest.raises(ProvenanceError, match=PROVENANCE_ENV):
        stamp_from_environment()


def test_a_damaged_stamp_is_an_error(tmp_path):
    (tmp_path / PROVENANCE_NAME).write_text("{not json")
    with pytest.raises(ProvenanceError, match="not a provenance stamp"):
        check_provenance(tmp_path, make_stamp({}))


# --------------------------------------------------------------------------- the workflow
def test_first_run_stamps_and_other_data_stop_before_any_job(tmp_path):
    work = tmp_path / "work"
    demo = _config(tmp_path, "demo.yaml")
    # a dry run writes nothing
    run_snakemake(work, "-n", "--cores", "1", TINY_IDRID, configfile=demo)
    assert not (work / "results" / PROVENANCE_NAME).exists()
    run_snakemake(work, "--cores", "1", TINY_IDRID, configfile=demo)
    stamp = json.loads((work / "results" / PROVENANCE_NAME).read_text())
    assert stamp["data"] == {"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"},
                             "external": {"aptos2019": "synthetic"}}  # the demo config's sets
    assert stamp["configfiles"] == [str(demo)]

    # the same data with other hyper-parameters: fine
    tweaked = _config(tmp_path, "tweaked.yaml", lambda c: c["crop"].update(bright_margin=12))
    proc = run_snakemake(work, "-n", "--cores", "1", "results/idrid/coco_train.json", configfile=tweaked)
    assert "idrid_coco" in proc.stdout

    # another data source (a real IDRiD folder): stopped at parse time, before any job
    other = _config(tmp_path, "other.yaml", _use_idrid_folder(work / TINY_IDRID))
    for args in (("-n",), ()):
        proc = run_snakemake(work, *args, "--cores", "1", "results/idrid/coco_train.json",
                             configfile=other, check=False)
        out = proc.stdout + proc.stderr
        assert proc.returncode != 0, out[-3000:]
        assert "holds results made from other data" in out and str(demo) in out and str(other) in out, out[-3000:]
        assert "Job stats" not in out  # no DAG, no job
    assert not (work / "results" / "idrid" / "coco_train.json").exists()

    # its own results folder: side by side, each with its own stamp
    proc = run_snakemake(work, "--cores", "1", "real/idrid/coco_train.json", "--config", "results_dir=real",
                         "logs_dir=real-logs", configfile=other)
    side = json.loads((work / "real" / PROVENANCE_NAME).read_text())
    assert side["data"]["idrid"] == {"source": "path", "path": str((work / TINY_IDRID).resolve())}
    assert side["config_overrides"] == ["logs_dir", "results_dir"]
    assert (work / "real-logs" / "idrid_coco" / "idrid_coco.log").is_file()
    assert json.loads((work / "results" / PROVENANCE_NAME).read_text())["hash"] == stamp["hash"]

    # on purpose: the override rewrites the stamp and keeps the old one in its history
    run_snakemake(work, "--cores", "1", "results/idrid/coco_train.json", "--config",
                  "allow_provenance_change=true", configfile=other)
    changed = json.loads((work / "results" / PROVENANCE_NAME).read_text())
    assert changed["hash"] == side["hash"] and changed["history"][0]["hash"] == stamp["hash"]


@pytest.mark.parametrize("case, needle", [
    ("eyepacs-missing", "does not exist; set eyepacs.raw_dir"),
    ("eyepacs-empty", "train is empty: it must hold the competition's train images"),
    ("idrid-missing", "IDRiD input not found. Fix: set idrid.path"),
    ("idrid-empty", "the folder is empty. Fix: unpack the official"),
    ("idrid-not-a-zip", "neither a folder nor a zip archive (an incomplete download?)"),
])
def test_missing_or_empty_data_stop_before_any_job(tmp_path, case, needle):
    """A config whose data folder is missing or empty stops at parse time with the path
    and the fix (also before the provenance check, which would blame the folder)."""
    raw = tmp_path / "raw"
    for sub in ("train", "test"):
        (raw / sub).mkdir(parents=True)
    (raw / "test" / "1_left.jpeg").write_bytes(b"x")
    (raw / "trainLabels.csv").write_text("image,level\n")
    (raw / "retinopathy_solution.csv").write_text("image,level,Usage\n")
    idrid = tmp_path / "idrid"
    paths = {"eyepacs-missing": ("eyepacs", tmp_path / "nowhere"), "eyepacs-empty": ("eyepacs", raw),
             "idrid-missing": ("idrid", tmp_path / "nowhere.zip"), "idrid-empty": ("idrid", idrid),
             "idrid-not-a-zip": ("idrid", tmp_path / "part.zip")}
    idrid.mkdir()
    (tmp_path / "part.zip").write_bytes(b"PK\x03\x04 cut short")
    which, path = paths[case]

    def mutate(config):
        if which == "eyepacs":
            config["eyepacs"].update(source="folder", raw_dir=str(path))
        else:
            config["idrid"].update(source="path", path=str(path))

    proc = run_snakemake(tmp_path / "work", "-n", "--cores", "1", configfile=_config(tmp_path, "c.yaml", mutate),
                         check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and needle in out and str(path) in out, out[-3000:]
    assert "Job stats" not in out


# --------------------------------------------------------------------------- protected()
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _PR_CAPBSET_DROP = 1, 2, 24


def _drop_root_file_override() -> None:
    """In the child: drop root's licence to write read-only files (from the capability
    bounding set, so snakemake and its jobs have it neither). protected() means nothing
    to root otherwise (access(2) grants root write access to read-only files), and real
    runs are not root's."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def _snakemake(work: Path, configfile: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "--directory", str(work), "--cores", "1", *args,
           "--configfile", str(configfile)]
    preexec = _drop_root_file_override if os.geteuid() == 0 else None
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, preexec_fn=preexec,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def test_costly_outputs_are_write_protected_and_redone_on_purpose(tmp_path):
    """A pretrained backbone (hours on real data) is write-protected: a changed setting
    does not overwrite it; deleting it (the README's way to redo it) does."""
    from lesioncl.pretrain.toydata import write_toy_cache

    work = tmp_path / "work"
    results = work / "results"
    paths = write_toy_cache(results, size=64, n_train=32, n_val=8, colorful=True)
    (results / "lesions").mkdir(parents=True, exist_ok=True)
    paths["index"].rename(results / "lesions" / "lesion_index.pkl")
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["device"] = "cpu"
    config["pretrain"].update(patch_size=32, batch_size=16, epochs=2, workers=0, val_every=1000,
                              checkpoint_every=1000, proj_hidden=64, proj_dim=32, warmup_epochs=0)
    configfile = work / "config.yaml"
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    target = "results/pretrain/lesion_cl/backbone.pth"
    only = ("--allowed-rules", "pretrain_lesion")

    first = _snakemake(work, configfile, target, *only)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-6000:]
    backbone = work / target
    for path in (backbone, backbone.with_name("final.pt")):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o222, oct(path.stat().st_mode)
    before = backbone.read_bytes()

    config["pretrain"]["lr"] = 0.02  # a changed hyper-parameter replans the job ...
    configfile.write_text(yaml.safe_dump(config, sort_keys=False))
    again = _snakemake(work, configfile, target, *only)
    out = again.stdout + again.stderr
    assert again.returncode != 0, out[-3000:]
    assert "Write-protected output files" in out, out[-3000:]
    assert backbone.read_bytes() == before  # ... but does not overwrite the backbone

    # the documented way to redo it: delete the protected files, rerun
    for name in ("backbone.pth", "final.pt"):
        (backbone.parent / name).unlink()
    redo = _snakemake(work, configfile, target, *only)
    assert redo.returncode == 0, redo.stdout[-3000:] + redo.stderr[-6000:]
    assert backbone.is_file() and not stat.S_IMODE(backbone.stat().st_mode) & 0o222
