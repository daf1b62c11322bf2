# Workflow-wide set-up only: config validation, where the lesioncl package comes from,
# the results/logs folders and envs, provenance, and the helpers every stage uses
# (device, GPU resources, CSV row counts). A stage's own helpers live in its rule file
# or, when they need more than a lambda, in its package module (rule files hold no
# `def`: snakemake --lint).
import os
import sys
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="../schemas/config.schema.yaml")

# The lesioncl package. Every environment a rule runs in has it installed from this
# workflow's own checkout (found from this file, not from the working directory):
# the conda envs install it in their post-deploy scripts (envs/*.post-deploy.sh,
# which read LESIONCL_ROOT), the project's .venv in scripts/setup_env.sh. Snakemake's
# own process imports it from src/ for the input functions below.
_BASEDIR = workflow.current_basedir  # workflow/rules of this checkout
if not (isinstance(_BASEDIR, str) or getattr(_BASEDIR, "is_local", False)):
    raise WorkflowError(
        f"lesioncl is used from {_BASEDIR}, not from a local folder: clone the "
        "repository (git clone --branch <tag> ...) and point the module's snakefile: "
        "at the clone's Snakefile (its conda envs install the package from there)"
    )
LESIONCL_ROOT = str(Path(os.fspath(_BASEDIR)).resolve().parents[1])
_SRC = str(Path(LESIONCL_ROOT) / "src")
os.environ.update(LESIONCL_ROOT=LESIONCL_ROOT)  # read by the post-deploy scripts
# Torch's OpenMP threads sleep while they wait instead of spinning (libgomp's default):
# with several torch jobs, or a job and its loader processes, on the same cores, spinning
# threads halve the throughput (a job alone on its cores loses ~17 % instead;
# benchmarks/bench_omp_wait.py). A user's own value wins (ACTIVE: the default's spinning).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCH = f"{RESULTS}/benchmarks"
ENV_DATA = "../../envs/data.yaml"
ENV_TORCH = "../../envs/torch.yaml"

# Provenance (lesioncl.provenance): results made from other data sources (another
# config's) stop the run here, before any job; the first run that executes jobs
# stamps RESULTS/provenance.json: onstart (below) and every job (lesioncl.adapter),
# since Snakemake ignores onstart in a workflow used as a module.
from lesioncl.provenance import (
    ProvenanceError,
    check_data_folders,
    check_provenance,
    export_to_jobs,
    make_stamp,
    write_provenance,
)

PROVENANCE = make_stamp(
    config,
    configfiles=workflow.overwrite_configfiles or workflow.configfiles,
    overrides=(workflow.config_settings.config or {}).keys(),  # --config KEY=VALUE
)
_ALLOW_CHANGE = config["allow_provenance_change"] in (True, "true")
try:
    check_data_folders(config)  # a missing or empty data folder: said first
    check_provenance(RESULTS, PROVENANCE, _ALLOW_CHANGE)
except ProvenanceError as err:
    raise WorkflowError(str(err)) from None
export_to_jobs(RESULTS, PROVENANCE, _ALLOW_CHANGE)


onstart:
    write_provenance(RESULTS, PROVENANCE, _ALLOW_CHANGE)


# Priority of the rules on the path to pretraining (crops, crop caches, detector, lesion
# index, pretraining): when cores are scarce they run first, and the baselines'
# evaluations (which need no pretraining) wait.
PATH_TO_PRETRAINING = 10


def torch_device():
    """The config's device (auto | cpu | cuda); scripts resolve it (lesioncl.adapter)."""
    return config["device"]


def gpu_resources(section):
    """SLURM resources of a training/inference rule: a GPU unless the run is on CPU."""
    if config["device"] == "cpu":
        return {}
    gpus = config.get(section, {}).get("gpus", 1)
    return {"gpu": gpus}


def csv_rows(path, missing=None):
    """Data rows of a CSV file with a header line (for runtime requests).

    A file that cannot be read gives ``missing`` (a generous guess) when it is set.
    """
    try:
        with open(path) as fh:
            return max(sum(1 for _ in fh) - 1, 0)
    except OSError:
        if missing is None:
            raise
        return missing
