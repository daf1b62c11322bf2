"""benchmarks/gpu_check.py: the one-command GPU check, run on the CPU at toy sizes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.timeout(1800)
def test_tiny_run_on_cpu_writes_the_table(tmp_path):
    out = tmp_path / "check.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out), "--workdir", str(tmp_path / "w")],
        capture_output=True, text=True, timeout=1700,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["finished"] and report["preset"] == "tiny"
    sections = report["sections"]
    assert list(sections) == ["data", "pretrain_fp32", "pretrain_bf16_cl", "agreement", "features", "finetune"]
    assert all(s["status"] == "ok" for s in sections.values()), sections
    for name in ("pretrain_fp32", "pretrain_bf16_cl"):
        r = sections[name]
        assert r["batch_pairs"] == 8 and r["images_per_step"] == 16
        assert r["step_steps"] == 2 and r["pipeline_steps"] == 2 * r["pipeline_epochs"]
        assert r["step_images_per_s"] > 0 and r["pipeline_images_per_s"] > 0
        assert r["pipeline_over_step"] == pytest.approx(r["pipeline_images_per_s"] / r["step_images_per_s"])
        assert r["loss_first"] > 0 and r["peak_gib"] is None and not r["amp_bf16"]  # CPU: no bf16 in the trainer
    assert sections["pretrain_bf16_cl"]["channels_last"] and not sections["pretrain_fp32"]["channels_last"]
    agree = sections["agreement"]
    # bf16 (CPU autocast) against fp32 from the same weights and views: within the stated tolerances
    assert agree["pass"], agree
    assert agree["loss_rel_diff"] <= agree["tolerances"]["loss_rel_diff"]
    assert 0 < agree["grad_error_over_batch_noise"] <= agree["tolerances"]["grad_error_over_batch_noise"]
    assert agree["loss_fp32"] != agree["loss_bf16"]  # the bf16 pass really ran in bf16
    assert set(agree["default_init"]) >= {"grad_cosine", "grad_error_over_batch_noise", "pass"}
    assert sections["features"]["feature_shape"] == [16, 512]  # resnet18 features
    assert sections["finetune"]["images_per_s"] > 0 and len(sections["finetune"]["train_loss"]) == 2
    assert [row["section"] for row in report["table"]] == list(sections)
    assert "| pretrain_bf16_cl " in proc.stdout and f"wrote {out}" in proc.stdout  # the printed table
    assert report["environment"]["device"] == "cpu" and report["environment"]["torch"]
    est = report["full_run_estimates"]  # the full run's GPU stages scaled from the measured throughputs
    pairs_per_s = sections["pretrain_bf16_cl"]["pipeline_images_per_s"] / 2
    assert est["lesion_pretraining_gpu_h"] == pytest.approx(1000 * 35126 / pairs_per_s / 3600)
    assert est["simclr_224_gpu_h"] > est["simclr_128_gpu_h"] > 0
    assert est["features_all_methods_gpu_h"] > 0 and est["finetune_100pct_per_method_seed_gpu_h"] > 0


@pytest.mark.timeout(300)
def test_a_failing_or_overrunning_section_is_recorded(tmp_path):
    gpu_check = load_script()
    settings = dict(gpu_check.PRESETS["tiny"])
    base = {"kind": "features", "name": "features", "variant": None, "device": "cpu", "workdir": str(tmp_path),
            "deadline": 1e12, "reserve_s": 1.0, **settings}
    missing = {**base, "data": {"train_cache": str(tmp_path / "absent.npy")},
               "result_path": str(tmp_path / "missing.result.json")}
    result = gpu_check.run_section(missing, 240, tmp_path / "missing.log")
    assert result["status"] == "error" and "absent.npy" in result["error"], result
    assert "Traceback" in result["log_tail"]

    data = gpu_check.write_synthetic_cache(tmp_path / "cache", settings)
    slow = {**base, "data": data, "result_path": str(tmp_path / "slow.result.json")}
    result = gpu_check.run_section(slow, 0.5, tmp_path / "slow.log")
    assert result["status"] == "timeout" and result["time_limit_s"] == 0.5
    rows = gpu_check.table_rows({"features": result})
    assert rows[0]["status"] == "timeout" and "time limit" in rows[0]["notes"]


@pytest.mark.timeout(300)
def test_stopped_check_still_writes_its_json(tmp_path):
    """SIGTERM (e.g. `timeout` around the GPU run) mid-section: the JSON holds what was done."""
    import os
    import signal
    import time

    out = tmp_path / "check.json"
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if out.is_file() and "data" in json.loads(out.read_text())["sections"]:
            break
        time.sleep(0.2)
    time.sleep(1.0)  # the first section's process is running now
    os.kill(proc.pid, signal.SIGTERM)
    stdout, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, stdout
    report = json.loads(out.read_text())
    assert not report["finished"] and report["sections"]["data"]["status"] == "ok"
    assert "pretrain_fp32" not in report["sections"] and f"wrote {out}" in stdout
