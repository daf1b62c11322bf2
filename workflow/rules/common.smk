# Shared set-up: config validation, the package on PYTHONPATH, path helpers.
import os
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


validate(config, schema="../schemas/config.schema.yaml")

# The scripts import the project's package from src/ (also inside conda envs
# and on cluster nodes, which re-read this file).
_SRC = str(Path(workflow.basedir) / "src")
os.environ.update(
    PYTHONPATH=os.pathsep.join(p for p in [_SRC, os.environ.get("PYTHONPATH", "")] if p)
)

RESULTS = "results"
LOGS = "logs"
BENCH = f"{RESULTS}/benchmarks"
ENV_DATA = "../../envs/data.yaml"
ENV_TORCH = "../../envs/torch.yaml"

CROP_SHARDS = list(range(config["crop"]["n_shards"]))
INDEX_SHARDS = list(range(config["lesion_index"]["n_shards"]))


def eyepacs_raw_dir():
    """The raw EyePACS folder (train/, test/, label CSVs) for the configured source."""
    source = config["eyepacs"]["source"]
    if source == "synthetic":
        return f"{RESULTS}/synthetic/eyepacs"
    if source == "kaggle":
        return f"{config['eyepacs']['download_dir']}/raw"
    raw = config["eyepacs"]["raw_dir"]
    if not raw:
        raise ValueError(
            "config: eyepacs.source is 'folder' but eyepacs.raw_dir is not set; "
            "set it to the folder holding train/, test/, trainLabels.csv and "
            "retinopathy_solution.csv"
        )
    return raw


def idrid_source_path():
    """The IDRiD segmentation archive or folder for the configured source."""
    if config["idrid"]["source"] == "synthetic":
        return f"{RESULTS}/synthetic/idrid"
    path = config["idrid"]["path"]
    if not path:
        raise ValueError(
            "config: idrid.source is 'path' but idrid.path is not set; set it to the "
            "official 'A. Segmentation' zip or its unpacked folder"
        )
    return path


def torch_device():
    return config["device"]


def gpu_resources(section):
    """SLURM resources of a training/inference rule: a GPU unless the run is on CPU."""
    if config["device"] == "cpu":
        return {}
    gpus = config.get(section, {}).get("gpus", 1)
    return {"gpu": gpus}


# ---- input functions and resources of the stage rules -------------------------

if _SRC not in sys.path:
    sys.path.append(_SRC)
from lesioncl.eyepacs.labels import check_raw_layout


def _eyepacs_labels_input(wildcards):
    """The raw folder; an existing folder (source: folder) is checked right away."""
    raw = eyepacs_raw_dir()
    if config["eyepacs"]["source"] != "folder":
        return {"raw": raw}  # produced by synthetic.smk or eyepacs_unpack
    labels = check_raw_layout(raw)  # clear error: missing folder / CSV and the fix
    return {
        "raw": raw,
        "train_csv": str(labels["train"]),
        "test_csv": str(labels["test"]),
    }


def _detector_runtime(wildcards, attempt):
    """Minutes: ~2 per epoch on CPU for the demo, generous for the real run on a GPU."""
    return int(30 + 3 * config["detector"]["epochs"]) * attempt


def _lesions_runtime(wildcards, input, attempt):
    """Minutes for one shard: ~1 s per image on CPU, plus 10."""
    with open(input.manifest) as fh:
        n_images = max(sum(1 for _ in fh) - 1, 0)
    return int(10 + n_images / config["lesion_index"]["n_shards"] / 60) * attempt
