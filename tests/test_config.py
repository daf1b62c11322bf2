"""The config schema: defaults, and bad configs stop the run before any job."""

from __future__ import annotations

import copy
import dataclasses
import importlib
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
# the config keys the rule fills them from. Its defaults are the schema's (the paper's).
SETTINGS_SOURCES = {
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
    "lesioncl.synthetic:EyepacsSetSettings": {
        **{k: f"synthetic.eyepacs.{k}" for k in ("n_train", "n_test", "min_height", "max_height", "bad_files",
                                                 "grade_distribution", "public_fraction")},
        "seed": "seed", "texture": "synthetic.texture",
    },
    "lesioncl.synthetic:IdridSetSettings": {
        **{k: f"synthetic.idrid.{k}" for k in ("n_train", "n_test", "height", "grade_distribution")},
        "seed": "seed", "texture": "synthetic.texture",
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
