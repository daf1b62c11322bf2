# Shared set-up: config validation, where the lesioncl package comes from, path helpers.
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
if _SRC not in sys.path:
    sys.path.insert(0, _SRC)

RESULTS = config["results_dir"]
LOGS = config["logs_dir"]
BENCH = f"{RESULTS}/benchmarks"
ENV_DATA = "../../envs/data.yaml"
ENV_TORCH = "../../envs/torch.yaml"

# Provenance (lesioncl.provenance): results made from other data sources (another
# config's) stop the run here, before any job; the first run that executes jobs
# stamps RESULTS/provenance.json.
if _SRC not in sys.path:
    sys.path.append(_SRC)
from lesioncl.provenance import (
    ProvenanceError,
    check_data_folders,
    check_provenance,
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


onstart:
    write_provenance(RESULTS, PROVENANCE, _ALLOW_CHANGE)


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


# ---- evaluation (evaluate.smk) and report (report.smk) -------------------------

import re

_EVAL = config["evaluation"]
_LIN = _EVAL["linear"]
_FT = _EVAL["finetune"]
EVAL_ARCH = config["pretrain"]["arch"]


def _fraction_tag(fraction):
    """Same text as lesioncl.evaluation.fractions.fraction_tag (0.1 -> '0.1', 1.0 -> '1')."""
    return f"{float(fraction):g}"


EVAL_FRACTIONS = [_fraction_tag(f) for f in _EVAL["fractions"]]
EVAL_SEEDS = list(_EVAL["seeds"])
FINETUNE_SEEDS = list(_FT["seeds"] or _EVAL["seeds"])
FINETUNE_FRACTIONS = [
    _fraction_tag(f) for f in (_FT.get("fractions") or _EVAL["fractions"])
]
_unknown = sorted(set(FINETUNE_FRACTIONS) - set(EVAL_FRACTIONS), key=float)
if _unknown:
    raise ValueError(
        f"config: evaluation.finetune.fractions has {_unknown}, which are not in "
        f"evaluation.fractions {EVAL_FRACTIONS}; add them there or drop them"
    )
FRACTIONS_OF = {"linear": EVAL_FRACTIONS, "finetune": FINETUNE_FRACTIONS}
EVAL_METHODS = list(_EVAL["methods"]) + [
    m for m in _EVAL["extra_weights"] if m not in _EVAL["methods"]
]
EVALUATIONS = ["linear"] + (["finetune"] if _FT["enabled"] else [])


def _check_methods():
    sizes = [int(s) for s in config["pretrain"]["simclr_sizes"]]
    for method in EVAL_METHODS:
        if method in _EVAL["extra_weights"] or method in (
            "lesion_cl",
            "random",
            "imagenet",
        ):
            continue
        m = re.fullmatch(r"simclr_(\d+)", method)
        if m is None:
            raise ValueError(
                f"config: evaluation.methods has {method!r}; use lesion_cl, simclr_<size>, "
                "random, imagenet or a name defined in evaluation.extra_weights"
            )
        if int(m.group(1)) not in sizes:
            raise ValueError(
                f"config: evaluation.methods has {method!r} but pretrain.simclr_sizes is "
                f"{sizes}; add {m.group(1)} there or drop the method"
            )


_check_methods()


def eval_weights(wildcards):
    """The backbone file a method starts from ([] for random and hub-cache ImageNet)."""
    method = wildcards.method
    if method in _EVAL["extra_weights"]:
        return [_EVAL["extra_weights"][method]]
    if method == "imagenet":
        return [_EVAL["imagenet_weights"]] if _EVAL["imagenet_weights"] else []
    if method == "random":
        return []
    return [f"{RESULTS}/pretrain/{method}/backbone.pth"]


def _cache(split):
    return {
        f"{split}_npy": f"{RESULTS}/cache/crops_{split}.npy",
        f"{split}_csv": f"{RESULTS}/cache/crops_{split}.csv",
    }


def _n_rows(path):
    try:
        with open(path) as fh:
            return max(sum(1 for _ in fh) - 1, 0)
    except OSError:
        return 50000


def _images_per_minute():
    """Rough inference throughput for runtime requests (a training image costs ~3)."""
    return 30000 if config["device"] != "cpu" else 120


def _features_runtime(wildcards, input):
    return int(10 + 2 * _n_rows(input.csv) / _images_per_minute())


def _finetune_runtime(wildcards, input):
    labelled = float(wildcards.fraction) * _n_rows(input.train_csv)
    trained = max(labelled, _FT["min_steps_per_epoch"] * _FT["batch_size"])
    per_epoch = 3 * trained + _n_rows(input.val_csv)
    final = _n_rows(input.val_csv) + _n_rows(input.test_csv)
    return int(20 + 2 * (_FT["epochs"] * per_epoch + final) / _images_per_minute())


def eval_results(evaluation):
    """Every run JSON of one evaluation (methods x fractions x seeds)."""
    if evaluation not in EVALUATIONS:
        return []
    seeds = EVAL_SEEDS if evaluation == "linear" else FINETUNE_SEEDS
    return expand(
        f"{RESULTS}/eval/{evaluation}/{{method}}/frac{{fraction}}_seed{{seed}}.json",
        method=EVAL_METHODS,
        fraction=FRACTIONS_OF[evaluation],
        seed=seeds,
    )


PRETRAINED_METHODS = [
    m for m in EVAL_METHODS if m == "lesion_cl" or re.fullmatch(r"simclr_\d+", m)
]
LARGEST_FINETUNE_FRACTION = max(FINETUNE_FRACTIONS, key=float)

REPORT_TARGETS = [
    f"{RESULTS}/report/front_page.rst",
    f"{RESULTS}/tables/kappa.csv",
    f"{RESULTS}/tables/kappa.md",
    *expand(f"{RESULTS}/plots/kappa_{{evaluation}}.png", evaluation=EVALUATIONS),
    f"{RESULTS}/plots/confusion_test.png",
    f"{RESULTS}/plots/pretrain_loss.png",
    *([f"{RESULTS}/plots/finetune_curves.png"] if "finetune" in EVALUATIONS else []),
]
# The report's front page (the Snakefile's report: directive): written by rule
# report_front_page once the results are complete; before that, the static description.
REPORT_STATIC_DESCRIPTION = str(Path(LESIONCL_ROOT) / "workflow/report/workflow.rst")
REPORT_CONFIGFILES = [
    os.path.relpath(f) if not os.path.relpath(f).startswith("..") else str(f)
    for f in (workflow.overwrite_configfiles or workflow.configfiles)
]
_FRONT_PAGE = Path(f"{RESULTS}/report/front_page.rst")
REPORT_DESCRIPTION = (
    str(_FRONT_PAGE.resolve()) if _FRONT_PAGE.is_file() else REPORT_STATIC_DESCRIPTION
)
# QC pictures and metrics of the earlier stages (report() outputs of their own rules).
QC_TARGETS = [
    f"{RESULTS}/eyepacs/qc_crops.png",
    f"{RESULTS}/idrid/qc_boxes.png",
    f"{RESULTS}/lesions/qc_boxes.png",
    f"{RESULTS}/detector/metrics.json",
    f"{RESULTS}/detector/qc_test.png",
]
