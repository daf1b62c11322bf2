"""The workflow deployed as a Snakemake module from another folder.

The deployment is what ``snakedeploy deploy-workflow`` writes (a ``workflow/Snakefile``
with ``configfile:``, a ``module`` directive and ``use rule * from``, and a copy of
``config/``), with the module's ``snakefile:`` a local checkout. Snakemake runs in
that folder: the whole DAG resolves there and a real job writes its outputs and log
there. The conda environments get the package from their post-deploy scripts
(LESIONCL_ROOT, set by workflow/rules/common.smk); that step is run here on a fresh
virtual environment (no conda channel is reachable in the tests).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import REPO, SNAKEMAKE

DEPLOYED_SNAKEFILE = """\
configfile: "config/config.yaml"


# declare the lesioncl workflow (a local checkout) as a module
module lesioncl:
    snakefile:
        "{snakefile}"
    config:
        config


# use all rules of the lesioncl workflow
use rule * from lesioncl
"""


def deploy(dest: Path, mutate=None) -> Path:
    """A deployment folder as snakedeploy writes it, with its own copy of the demo config."""
    (dest / "workflow").mkdir(parents=True)
    (dest / "config").mkdir()
    (dest / "workflow/Snakefile").write_text(DEPLOYED_SNAKEFILE.format(snakefile=REPO / "Snakefile"))
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    if mutate:
        mutate(config)
    (dest / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return dest


def snakemake_in(folder: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Snakemake started in ``folder`` (its Snakefile found there, as a user runs it)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LESIONCL_ROOT")}
    proc = subprocess.run([SNAKEMAKE, *args], cwd=folder, capture_output=True, text=True,
                          timeout=timeout, env=dict(env, PYTHONUNBUFFERED="1"))
    assert proc.returncode == 0, (
        f"snakemake {' '.join(args)} failed in {folder} ({proc.returncode}):\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-8000:]}")
    return proc


def job_counts(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """{rule: jobs} from a dry run's job-stats table."""
    text = proc.stdout + proc.stderr
    assert "Job stats:" in text, text[-3000:]
    table = text.split("Job stats:")[1].split("\n\n")[0]
    counts = {}
    for line in table.strip().splitlines()[2:]:
        parts = line.split()
        if len(parts) == 2 and parts[0] != "total" and parts[1].isdigit():
            counts[parts[0]] = int(parts[1])
    return counts


def test_module_dry_run_plans_the_whole_dag(tmp_path):
    folder = deploy(tmp_path / "deployed")
    as_module = job_counts(snakemake_in(folder, "-n", "--cores", "2"))
    # the same config run directly from the checkout, in another folder
    direct = tmp_path / "direct"
    direct.mkdir()
    plain = job_counts(snakemake_in(direct, "-s", str(REPO / "Snakefile"), "-n", "--cores", "2",
                                    "--configfile", str(folder / "config/config.yaml")))
    assert as_module == plain
    config = yaml.safe_load((folder / "config/config.yaml").read_text())
    finetune = ["eval_finetune"] if config["evaluation"]["finetune"]["enabled"] else []
    for rule in ("synthetic_eyepacs", "crop_shard", "detector_train", "lesions_index",
                 "pretrain_lesion", "pretrain_simclr", "eval_linear", *finetune, "kappa_table",
                 "detector_qc", "report_front_page", "all"):
        assert as_module.get(rule, 0) >= 1, (rule, as_module)
    assert not (folder / "results").exists()  # a dry run writes nothing


def test_module_runs_a_real_job_in_its_own_folder(tmp_path):
    def small(config):
        config["synthetic"]["idrid"].update(n_train=2, n_test=1, height=256)
        config["synthetic"]["workers"] = 1

    folder = deploy(tmp_path / "deployed", small)
    proc = snakemake_in(folder, "--cores", "1", "results/synthetic/idrid_truth.csv")
    truth = (folder / "results/synthetic/idrid_truth.csv").read_text().splitlines()
    assert len(truth) == 1 + 3, truth  # header + 2 training + 1 testing image
    assert (folder / "results/synthetic/qc_idrid.png").stat().st_size > 0
    assert sorted(p.name for p in (folder / "results/synthetic/idrid").rglob("IDRiD_*.jpg"))
    log = folder / "logs/synthetic_idrid/synthetic_idrid.log"
    assert log.is_file() and log.stat().st_size > 0
    # the overwrite guard works in a module too: its job stamped the results folder
    # (Snakemake ignores the module's onstart), and other data now stop at parse time
    stamp = json.loads((folder / "results/provenance.json").read_text())
    assert stamp["data"] == {"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"},
                             "external": {"aptos2019": "synthetic"}}  # the demo config's sets
    config = yaml.safe_load((folder / "config/config.yaml").read_text())
    config["idrid"].update(source="path", path=str(folder / "results/synthetic/idrid"))
    (folder / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LESIONCL_ROOT")}
    refused = subprocess.run([SNAKEMAKE, "-n", "--cores", "1", "results/idrid/coco_train.json"],
                             cwd=folder, capture_output=True, text=True, timeout=300, env=env)
    said = refused.stdout + refused.stderr
    assert refused.returncode != 0 and "holds results made from other data" in said, said[-3000:]
    config["idrid"]["source"] = "synthetic"
    (folder / "config/config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # stderr is not a terminal here (as in a SLURM job's output): plain progress lines,
    # no carriage returns, and the same lines in the rule's log
    done = re.compile(r"lesioncl\.progress: .+: done, 3 img in \d+:\d\d:\d\d")
    assert "\r" not in proc.stderr and done.search(proc.stderr), proc.stderr[-3000:]
    assert done.search(log.read_text()), log.read_text()[-3000:]
    # the report opens with the workflow description: the static one until rule
    # report_front_page has written this run's front page, then that one
    snakemake_in(folder, "--report", "report.html", "results/synthetic/idrid_truth.csv")
    html = (folder / "report.html").read_text()
    assert "How to read this report" in html and "qc_idrid.png" in html
    front = folder / "results/report/front_page.rst"
    front.parent.mkdir(parents=True)
    front.write_text("This run\n========\n\nWritten by **report_front_page**.\n")
    snakemake_in(folder, "--report", "report.html", "results/synthetic/idrid_truth.csv")
    html = (folder / "report.html").read_text()
    assert "report_front_page" in html and "How to read this report" not in html


def test_common_smk_finds_the_package_from_its_own_location():
    text = (REPO / "workflow/rules/common.smk").read_text()
    assert "workflow.current_basedir" in text
    assert "PYTHONPATH" not in text  # conda blocks it; the envs install the package instead
    assert "workflow.basedir" not in text  # the caller's folder when used as a module


@pytest.mark.parametrize("env", sorted(p.stem for p in (REPO / "envs").glob("*.yaml")))
def test_every_env_installs_the_package(env):
    script = REPO / f"envs/{env}.post-deploy.sh"
    assert script.is_file(), f"envs/{env}.yaml has no post-deploy script installing lesioncl"
    text = script.read_text()
    assert re.search(r'pip install .*--editable "\$LESIONCL_ROOT"', text), text
    spec = yaml.safe_load((REPO / f"envs/{env}.yaml").read_text())
    conda = [d for d in spec["dependencies"] if isinstance(d, str)]
    assert any(d.startswith("setuptools=") for d in conda), "the editable install builds with setuptools"


def _fresh_env(path: Path) -> Path:
    """A virtual environment without lesioncl, with this interpreter's setuptools (as the
    conda envs pin setuptools=80.9.0; venv's bundled one predates its own bdist_wheel)."""
    import setuptools

    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    python = path / "bin/python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    ours = Path(setuptools.__file__).parent.parent
    for old in list(site.glob("setuptools*")) + list(site.glob("pkg_resources")) + list(site.glob("_distutils_hack")):
        shutil.rmtree(old) if old.is_dir() else old.unlink()
    for item in [*ours.glob("setuptools"), *ours.glob(f"setuptools-{setuptools.__version__}.dist-info"),
                 *ours.glob("pkg_resources"), *ours.glob("_distutils_hack"), *ours.glob("distutils-precedence.pth")]:
        (shutil.copytree if item.is_dir() else shutil.copy2)(item, site / item.name)
    return python


def test_data_post_deploy_installs_the_checkout(tmp_path):
    python = _fresh_env(tmp_path / "env")
    probe = [str(python), "-c", "import lesioncl; print(lesioncl.__file__)"]
    assert subprocess.run(probe, cwd=tmp_path, capture_output=True).returncode != 0  # not there yet
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(["bash", str(REPO / "envs/data.post-deploy.sh")], cwd=tmp_path,
                          env=dict(env, PYTHON=str(python), LESIONCL_ROOT=str(REPO), PIP_NO_INDEX="1"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = subprocess.run(probe, cwd=tmp_path, capture_output=True, text=True, env=env)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()).resolve() == (REPO / "src/lesioncl/__init__.py").resolve()


def test_post_deploy_without_the_checkout_says_how(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LESIONCL_ROOT"}
    proc = subprocess.run(["bash", str(REPO / "envs/data.post-deploy.sh")], cwd=tmp_path,
                          env=dict(env, PYTHON=sys.executable), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "LESIONCL_ROOT" in proc.stderr and "--use-conda" in proc.stderr
