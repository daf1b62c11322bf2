"""The from-nothing install recipe (scripts/setup_env.sh, envs/torch.post-deploy.sh).

Each test here would have caught one fault that a newcomer hit while the project's own
CI stayed green on a cached mmcv wheel:

* a constraints pin raised setuptools to a release without ``pkg_resources``, which
  mmcv 2.1.0's setup.py imports;
* a relative interpreter path (the Makefile's ``VENV=.venv``) no longer resolved once
  the build had ``cd``-ed into the unpacked sdist.

CI itself installs with an empty cache (``.ci/run``), so the whole recipe runs there.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO

SETUPTOOLS_LIMIT = (81,)  # setuptools 81 removed pkg_resources
PIN = re.compile(r"setuptools\s*(==|=|>=|~=|<=|<)\s*([0-9][0-9.]*)", re.I)


def _setuptools_pins() -> list[tuple[str, str, str]]:
    """(file, operator, version) of every setuptools pin the install or the envs use."""
    files = [*sorted((REPO / "requirements").glob("*.txt")), *sorted((REPO / "envs").glob("*.yaml")),
             REPO / "scripts/setup_env.sh", REPO / "envs/torch.post-deploy.sh"]
    pins = []
    for path in files:
        for line in path.read_text().splitlines():
            line = line.split("#")[0]
            for op, version in PIN.findall(line):
                pins.append((str(path.relative_to(REPO)), op, version))
    return pins


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".") if p.isdigit())


def test_every_setuptools_pin_keeps_pkg_resources():
    pins = _setuptools_pins()
    assert any(f.startswith("requirements/constraints") for f, _, _ in pins), "constraints.txt pins setuptools"
    assert any(f.startswith("envs/torch.yaml") for f, _, _ in pins), "envs/torch.yaml pins setuptools"
    for file, op, version in pins:
        assert op in ("==", "=", "<", "<="), f"{file}: setuptools {op}{version} lets it rise past 80"
        assert _version(version) < SETUPTOOLS_LIMIT, (
            f"{file}: setuptools {version} has no pkg_resources, which mmcv 2.1.0's setup.py imports"
        )


def test_setup_pins_agree_with_the_constraints():
    """setup_env.sh upgrades pip/setuptools/wheel first; the constraints must not move them."""
    script = (REPO / "scripts/setup_env.sh").read_text()
    constraints = (REPO / "requirements/constraints.txt").read_text()
    for tool in ("pip", "setuptools", "wheel"):
        first = re.search(rf'"{tool}==([0-9.]+)"', script)
        assert first, f"setup_env.sh pins {tool}"
        pinned = re.search(rf"^{tool}==([0-9.]+)$", constraints, re.M)
        if pinned:
            assert pinned.group(1) == first.group(1), (tool, pinned.group(1), first.group(1))
    conda = yaml.safe_load((REPO / "envs/torch.yaml").read_text())["dependencies"]
    conda_setuptools = [d for d in conda if isinstance(d, str) and d.startswith("setuptools=")]
    wanted = re.search(r'"setuptools==([0-9.]+)"', script).group(1)
    assert conda_setuptools == [f"setuptools={wanted}"]


def test_mmcv_build_resolves_a_relative_interpreter(tmp_path):
    """PYTHON given relative to the caller's directory still runs after the build's cd."""
    cwd = Path(sys.executable).parent.parent.parent  # e.g. the repo holding .venv/
    relative = os.path.relpath(sys.executable, cwd)
    assert not os.path.isabs(relative)
    env = dict(os.environ, PYTHON=relative, LESIONCL_MMCV_PLAN="1", XDG_CACHE_HOME=str(tmp_path), FORCE_CUDA="0")
    proc = subprocess.run(["bash", str(REPO / "envs/torch.post-deploy.sh")], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    plan = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert os.path.isabs(plan["python"]) and os.access(plan["python"], os.X_OK), plan
    assert plan["flavour"] == "cpu"
    assert plan["wheel_dir"].startswith(str(tmp_path)), plan


def test_mmcv_wheel_key_changes_with_the_build_recipe(tmp_path):
    """Editing the build part of the script gives the cached wheel a new key."""
    script = (REPO / "envs/torch.post-deploy.sh").read_text()
    edited = tmp_path / "torch.post-deploy.sh"
    edited.write_text(script.replace('-O3 -Wall"', '-O2 -Wall"'))
    assert edited.read_text() != script

    def plan(path):
        env = dict(os.environ, PYTHON=sys.executable, LESIONCL_MMCV_PLAN="1", XDG_CACHE_HOME=str(tmp_path),
                   FORCE_CUDA="0")
        proc = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)["wheel_dir"]

    assert plan(REPO / "envs/torch.post-deploy.sh") != plan(edited)


@pytest.mark.parametrize("version", ["3.12", "3.10"])
def test_setup_refuses_another_python(tmp_path, version):
    fake = tmp_path / f"python{version}"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    env = dict(os.environ, PYTHON=str(fake), VENV=str(tmp_path / "venv"))
    proc = subprocess.run(["bash", str(REPO / "scripts/setup_env.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0
    assert f"Python {version}" in proc.stderr and "3.11" in proc.stderr
    assert not (tmp_path / "venv").exists()
