"""The config schema: defaults, and bad configs stop the run before any job."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml
from referencing import Registry, Resource

from conftest import REPO, run_snakemake

SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())


def _validator():
    resource = Resource.from_contents(SCHEMA)
    return jsonschema.Draft202012Validator(SCHEMA, registry=Registry().with_resource("", resource))


@pytest.mark.parametrize("name", ["config.yaml", "eyepacs.yaml"])
def test_shipped_configs_are_valid(name):
    config = yaml.safe_load((REPO / "config" / name).read_text())
    _validator().validate(config)


def test_every_setting_has_a_default():
    missing = []

    def resolve(sub):
        if "$ref" in sub:
            target = SCHEMA["$defs"][sub["$ref"].split("/")[-1]]
            sub = {**target, **{k: v for k, v in sub.items() if k != "$ref"}}
        return sub

    def walk(node, path):
        for key, sub in node.get("properties", {}).items():
            sub = resolve(sub)
            here = f"{path}.{key}" if path else key
            if sub.get("type") == "object" and "properties" in sub:
                walk(sub, here)
            if "default" not in sub and sub.get("type") != "object":
                missing.append(f"{here} (no default)")

    walk(SCHEMA, "")
    assert not missing, f"schema properties without a default: {missing}"


# Each stage's settings dataclass (CONTRIBUTING.md "One rule for config"): its fields and
# the config keys the rule fills them from. Its defaults are the schema's (the paper's);
# None: an operational value the script adds (job.operational), not checked.
SETTINGS_SOURCES = {
    "lesioncl.crop:CropParams": {
        **{k: f"crop.{k}" for k in ("size", "detect_max_upscale", "bright_margin", "wide_ratio", "strip_divisor",
                                    "min_box_fraction", "min_mean_intensity", "search_min_height",
                                    "detect_quality", "reject_no_foreground")},
        "detect_scale": "detector.img_scale",
    },
    "lesioncl.evaluation.finetune:FinetuneSettings": {
        **{k: f"evaluation.finetune.{k}" for k in ("epochs", "min_steps_per_epoch", "batch_size", "lr", "momentum",
                                                   "nesterov", "weight_decay", "tune_thresholds")},
        "input_size": "evaluation.input_size", "eval_batch_size": "evaluation.feature_batch_size",
        "amp": "evaluation.amp", "channels_last": "evaluation.channels_last", "workers": None,
    },
    "lesioncl.lesions:PredictSettings": {"size": "crop.size", "batch_size": "lesion_index.batch_size"},
    "lesioncl.lesions:IndexSettings": {
        **{k: f"lesion_index.{k}" for k in ("score_threshold", "max_box_size", "border_margin", "qc_images")},
        "size": "crop.size", "seed": "seed",
    },
    "lesioncl.evaluation.linear:LinearSettings": {
        k: f"evaluation.linear.{k}" for k in ("epochs", "lr", "weight_decays", "batch_size", "class_balanced")
    },
    "lesioncl.evaluation.features:FeatureSettings": {
        "seed": "seed", "input_size": "evaluation.input_size",
        "batch_size": "evaluation.feature_batch_size", "amp": "evaluation.amp",
    },
    "lesioncl.idrid:CocoSettings": {
        k: f"idrid.{k}" for k in ("mask_threshold", "max_size", "min_box_size", "qc_images")
    },
    "lesioncl.ddr:DdrCocoSettings": {
        k: f"ddr.{k}" for k in ("annotations", "mask_threshold", "max_size", "min_box_size", "qc_images")
    },
    "lesioncl.synthetic:EyepacsSetSettings": {
        **{k: f"synthetic.eyepacs.{k}" for k in ("n_train", "n_test", "min_height", "max_height", "bad_files",
                                                 "grade_distribution", "public_fraction")},
        "seed": "seed", "texture": "synthetic.texture", "lesion_scale": "synthetic.lesion_scale",
        "small_vessels": "synthetic.small_vessels",
    },
    "lesioncl.synthetic:IdridSetSettings": {
        **{k: f"synthetic.idrid.{k}" for k in ("n_train", "n_test", "height", "grade_distribution")},
        "seed": "seed", "texture": "synthetic.texture", "lesion_scale": "synthetic.lesion_scale",
        "small_vessels": "synthetic.small_vessels",
    },
    "lesioncl.synthetic:DdrSetSettings": {
        **{k: f"synthetic.ddr.{k}" for k in ("n_train", "n_val", "n_test", "height", "grade_distribution",
                                             "quirks")},
        "seed": "seed", "texture": "synthetic.texture", "lesion_scale": "synthetic.lesion_scale",
        "small_vessels": "synthetic.small_vessels",
    },
    "lesioncl.synthetic.graded_sets:GradedSetSettings": {
        **{k: f"synthetic.external.{k}" for k in ("n_images", "height", "grade_distribution", "quirks")},
        "seed": "seed", "texture": "synthetic.texture", "lesion_scale": "synthetic.lesion_scale",
        "small_vessels": "synthetic.small_vessels",
    },
    "lesioncl.external.split:SplitSettings": {
        k: f"external.split.{k}" for k in ("val_fraction", "test_fraction", "seed")
    },
    "lesioncl.lesions.controls:TruthIndexSettings": {
        **{k: f"lesion_index.{k}" for k in ("truth_kinds", "max_box_size", "border_margin")},
        "size": "crop.size",
    },
    "lesioncl.lesions.controls:RandomIndexSettings": {
        "border_margin": "lesion_index.border_margin", "size": "crop.size", "seed": "seed",
    },
    "lesioncl.lesions.controls:SalientIndexSettings": {
        "border_margin": "lesion_index.border_margin", "size": "crop.size", "seed": "seed",
    },
    "lesioncl.lesions.sources:QualitySettings": {
        "window": "pretrain.patch_size", "size": "crop.size", "seed": "seed",
    },
    "lesioncl.detector.qc:DetectorQcSettings": {
        "n_images": "detector.qc_images", "score_threshold": "lesion_index.score_threshold",
    },
}


def _schema_default(dotted: str):
    node = SCHEMA
    for key in dotted.split("."):
        node = node["properties"][key]
        if "$ref" in node:
            node = {**SCHEMA["$defs"][node["$ref"].split("/")[-1]], **node}
    return node["default"]


@pytest.mark.parametrize("name", sorted(SETTINGS_SOURCES))
def test_settings_defaults_are_the_schema_defaults(name):
    module, cls = name.split(":")
    fields = {f.name: f for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
    sources = SETTINGS_SOURCES[name]
    assert set(fields) == set(sources)
    for key, field in fields.items():
        if sources[key] is None:
            continue
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        expected = _schema_default(sources[key])
        assert (list(default) if isinstance(default, tuple) else default) == expected, key


def _write(tmp_path: Path, mutate) -> Path:
    config = yaml.safe_load((REPO / "config/config.yaml").read_text())
    config = copy.deepcopy(config)
    mutate(config)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize(
    "mutate, needle",
    [
        (lambda c: c["crop"].update(sizee=512), "sizee"),
        (lambda c: c["crop"].update(n_shards="two"), "two"),
        (lambda c: c["eyepacs"].update(source="dropbox"), "dropbox"),
        (lambda c: c["pretrain"].update(lr=-1), "-1"),
        (lambda c: c.update(unknown_section={}), "unknown_section"),
        (lambda c: c["evaluation"]["finetune"].update(fractions=[0.25]), "evaluation.finetune.fractions has ['0.25']"),
    ],
    ids=["unknown-key", "wrong-type", "wrong-enum", "out-of-range", "unknown-section", "finetune-fraction"],
)
def test_bad_config_stops_before_any_job(tmp_path, mutate, needle):
    bad = _write(tmp_path, mutate)
    proc = run_snakemake(tmp_path / "work", "-n", "--cores", "1", configfile=bad, check=False)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert needle in out, out[-3000:]
    assert "Job stats" not in out  # no DAG was built, no job scheduled


def test_defaults_fill_a_minimal_config(tmp_path):
    """An empty config section takes the schema's defaults (the paper's values)."""
    cfg = tmp_path / "min.yaml"
    cfg.write_text(yaml.safe_dump({"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"}}))
    proc = run_snakemake(tmp_path / "work", "-n", "--cores", "1", configfile=cfg, check=False)
    # the dry run resolves (real-run defaults, synthetic sources) without a schema error
    assert "ValidationError" not in proc.stderr, proc.stderr[-3000:]


# The rules that fill a settings dataclass: rule -> (dataclass, its params entry).
RULE_SETTINGS = {
    "synthetic_eyepacs": ("lesioncl.synthetic:EyepacsSetSettings", "settings"),
    "synthetic_idrid": ("lesioncl.synthetic:IdridSetSettings", "settings"),
    "synthetic_ddr": ("lesioncl.synthetic:DdrSetSettings", "settings"),
    "crop_shard": ("lesioncl.crop:CropParams", "crop"),
    "synthetic_external": ("lesioncl.synthetic.graded_sets:GradedSetSettings", "settings"),
    "external_labels": ("lesioncl.external.split:SplitSettings", "split"),
    "external_crop": ("lesioncl.crop:CropParams", "crop"),
    "external_features": ("lesioncl.evaluation.features:FeatureSettings", "settings"),
    "external_linear": ("lesioncl.evaluation.linear:LinearSettings", "settings"),
    "external_finetune": ("lesioncl.evaluation.finetune:FinetuneSettings", "settings"),
    "idrid_coco": ("lesioncl.idrid:CocoSettings", "settings"),
    "ddr_coco": ("lesioncl.ddr:DdrCocoSettings", "settings"),
    "detector_qc": ("lesioncl.detector.qc:DetectorQcSettings", "settings"),
    "lesions_predict": ("lesioncl.lesions:PredictSettings", "settings"),
    "lesions_index": ("lesioncl.lesions:IndexSettings", "settings"),
    "lesions_truth_index": ("lesioncl.lesions.controls:TruthIndexSettings", "settings"),
    "lesions_salient_index": ("lesioncl.lesions.controls:SalientIndexSettings", "settings"),
    "lesions_random_index": ("lesioncl.lesions.controls:RandomIndexSettings", "settings"),
    "lesions_quality": ("lesioncl.lesions.sources:QualitySettings", "settings"),
    "eval_features": ("lesioncl.evaluation.features:FeatureSettings", "settings"),
    "eval_linear": ("lesioncl.evaluation.linear:LinearSettings", "settings"),
    "eval_finetune": ("lesioncl.evaluation.finetune:FinetuneSettings", "settings"),
}

# Parses the workflow (in a child process: the API changes directory and sets up logging)
# and prints every rule's params entries named in argv[3] as JSON.
_RULE_PARAMS = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import ConfigSettings, OutputSettings, ResourceSettings, StorageSettings
wanted = json.loads(sys.argv[3])
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(cores=1), storage_settings=StorageSettings(),
                      config_settings=ConfigSettings(configfiles=[Path(sys.argv[1])], config=json.loads(sys.argv[4])),
                      snakefile=Path(sys.argv[2]), workdir=Path(sys.argv[5]))._workflow
    out = {r.name: dict(r.params.items())[wanted[r.name]] for r in wf.rules if r.name in wanted}
print("PARAMS=" + json.dumps(out))
"""


@pytest.mark.parametrize("name,vessels", [("config.yaml", None), ("eyepacs.yaml", None), ("config.yaml", 0)])
def test_rules_fill_their_settings_dataclass(name, vessels, tmp_path):
    """Each rule's settings entry has exactly its dataclass's keys (job.settings would
    stop the job on an unknown key; a missing one would silently take the default).
    synthetic.small_vessels is left out while it is 0 (its default), so that the images
    of earlier releases keep their params. vessels: the config file's own value (None:
    the demo's 100, the real run's default 0) or set on the command line."""
    synthetic = {"eyepacs": {"source": "synthetic"}, "idrid": {"source": "synthetic"},
                 "ddr": {"source": "synthetic"}}  # no data here
    if vessels is None:
        own = yaml.safe_load((REPO / "config" / name).read_text())
        vessels = (own.get("synthetic") or {}).get("small_vessels", 0)
    else:
        synthetic["synthetic"] = {"small_vessels": vessels}
    proc = subprocess.run(
        [sys.executable, "-c", _RULE_PARAMS, str(REPO / "config" / name), str(REPO / "Snakefile"),
         json.dumps({rule: key for rule, (_, key) in RULE_SETTINGS.items()}), json.dumps(synthetic),
         str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("PARAMS=")]
    assert lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    params = json.loads(lines[-1].removeprefix("PARAMS="))
    assert set(params) == set(RULE_SETTINGS)
    for rule, (path, _) in RULE_SETTINGS.items():
        module, cls = path.split(":")
        fields = {f.name for f in dataclasses.fields(getattr(importlib.import_module(module), cls))}
        operational = {"channels_last", "workers"} if rule.endswith("_finetune") else set()
        if "small_vessels" in fields:
            assert params[rule].get("small_vessels", 0) == vessels, rule
            operational |= set() if vessels else {"small_vessels"}
        assert set(params[rule]) == fields - operational, rule
