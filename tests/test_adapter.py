"""The frame of every Snakemake script (lesioncl.adapter): logging, errors, inputs, settings."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
from snakemake.iocontainers import Namedlist

from lesioncl.adapter import Job, run


def _smk(tmp_path, **params):
    inp = Namedlist(fromdict={"one": "a.npy", "none": [], "listed": ["w.pth"]})
    return SimpleNamespace(
        input=inp, output=Namedlist(["out.txt"]), params=Namedlist(fromdict=params),
        wildcards=Namedlist(), threads=1, log=Namedlist([str(tmp_path / "job.log")]),
        config={"pretrain": {"workers": 3, "compile": False}}, rule="some_rule",
    )


@dataclasses.dataclass
class _Settings:
    lr: float = 0.1
    epochs: int = 1


def test_optional_input_settings_and_operational(tmp_path):
    job = Job(_smk(tmp_path, settings={"lr": 0.5}, device="cpu"))
    assert job.optional_input("one") == "a.npy"
    assert job.optional_input("none") is None
    assert job.optional_input("listed") == "w.pth"
    assert job.optional_input("absent") is None
    assert job.settings(_Settings) == _Settings(lr=0.5, epochs=1)
    assert job.settings(_Settings, epochs=4) == _Settings(lr=0.5, epochs=4)
    assert job.operational("pretrain", "workers") == {"workers": 3}
    assert job.device() == "cpu"
    with pytest.raises(KeyError, match="channels_last"):
        job.operational("pretrain", "channels_last")
    bad = Job(_smk(tmp_path, settings={"lr": 0.5, "nope": 1}))
    with pytest.raises(ValueError, match=r"unknown _Settings settings \['nope'\]"):
        bad.settings(_Settings)


def test_run_logs_and_reraises(tmp_path):
    smk = _smk(tmp_path)

    def fails(job):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run(smk, fails)
    text = (tmp_path / "job.log").read_text()
    assert "rule some_rule failed" in text and "Traceback" in text


def test_run_clean_error_is_one_line(tmp_path):
    class BadInput(RuntimeError):
        pass

    def fails(job):
        raise BadInput("folder x lacks trainLabels.csv; download it")

    with pytest.raises(SystemExit) as exc:
        run(_smk(tmp_path), fails, clean_errors=(BadInput,))
    assert exc.value.code == 1
    text = (tmp_path / "job.log").read_text()
    assert "rule some_rule failed: folder x lacks trainLabels.csv" in text and "Traceback" not in text


def test_run_returns_and_sets_threads(tmp_path):
    assert run(_smk(tmp_path), lambda job: job.threads * 2, torch_threads=True) == 2


def test_run_stamps_the_results_folder_first(tmp_path, monkeypatch):
    """Every job writes the results folder's stamp before its work (a module's only
    writer); a folder stamped with other data ends the job with one line, no work done."""
    import json

    from lesioncl.provenance import export_to_jobs

    monkeypatch.chdir(tmp_path)
    export_to_jobs("results", {"data": {"idrid": {"source": "synthetic"}}, "hash": "a"})
    seen = []
    run(_smk(tmp_path), lambda job: seen.append((tmp_path / "results/provenance.json").is_file()))
    assert seen == [True]
    export_to_jobs("results", {"data": {"idrid": {"source": "path"}}, "hash": "b"})
    with pytest.raises(SystemExit):
        run(_smk(tmp_path), lambda job: seen.append("ran"))
    assert seen == [True]
    assert "holds results made from other data" in (tmp_path / "job.log").read_text()
    assert json.loads((tmp_path / "results/provenance.json").read_text())["hash"] == "a"
