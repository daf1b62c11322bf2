"""Environments stay consistent with the pinned install.

* every rule names a conda env (and a log);
* every third-party package a rule's script imports (directly or through the
  lesioncl modules it uses) is listed in that rule's env;
* every env pin equals the install's pin (requirements/base.txt, and the
  OpenMMLab pins of envs/torch.post-deploy.sh).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest
import yaml

from conftest import REPO

RULE_FILES = sorted((REPO / "workflow/rules").glob("*.smk"))
ENV_FILES = {"ENV_DATA": REPO / "envs/data.yaml", "ENV_TORCH": REPO / "envs/torch.yaml"}
STDLIB = set(sys.stdlib_module_names) | {"snakemake", "lesioncl", "__future__"}


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins_from_requirements(path: Path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        line = line.split("#")[0].strip()
        if "==" in line:
            name, version = line.split("==")
            pins[_canon(name)] = version.strip()
    return pins


def install_pins() -> dict[str, str]:
    pins = _pins_from_requirements(REPO / "requirements/base.txt")
    text = (REPO / "envs/torch.post-deploy.sh").read_text()
    pins["mmcv"] = re.search(r"^MMCV_VERSION=([\d.]+)", text, re.M).group(1)
    for name, version in re.findall(r"([a-z]+)==([\d.]+)", re.search(r"OPENMMLAB_PINS=\(([^)]*)\)", text).group(1)):
        pins[_canon(name)] = version
    return pins


def env_pins(env_key: str) -> dict[str, str]:
    spec = yaml.safe_load(ENV_FILES[env_key].read_text())
    pins = {}
    for dep in spec["dependencies"]:
        if isinstance(dep, dict):
            for line in dep.get("pip", []):
                name, version = line.split("==")
                pins[_canon(name)] = version
        else:
            name, _, version = dep.partition("=")
            pins[_canon(name)] = version
    if env_key == "ENV_TORCH":  # installed by the post-deploy script
        post = install_pins()
        for name in ("mmcv", "mmengine", "mmdet"):
            pins[name] = post[name]
    return pins


def parse_rules() -> list[dict]:
    rules = []
    for path in RULE_FILES:
        text = path.read_text()
        blocks = re.split(r"^(?=(?:rule|checkpoint) \w+:)", text, flags=re.M)
        for block in blocks:
            head = re.match(r"(?:rule|checkpoint) (\w+):", block)
            if not head:
                continue
            conda = re.search(r"^\s+conda:\s*\n?\s*(\w+)", block, re.M)
            script = re.search(r"^\s+script:\s*\n?\s*\"([^\"]+)\"", block, re.M)
            rules.append({
                "name": head.group(1),
                "file": path.name,
                "conda": conda.group(1) if conda else None,
                "log": re.search(r"^\s+log:", block, re.M) is not None,
                "script": (path.parent / script.group(1)).resolve() if script else None,
                "localrule": re.search(r"^\s+localrule:\s*True", block, re.M) is not None,
                "runs": re.search(r"^\s+(script|shell|run|wrapper|notebook):", block, re.M) is not None,
            })
    return rules


def module_imports(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level third-party modules imported by ``path`` and the lesioncl modules it uses."""
    seen = set() if seen is None else seen
    if path in seen or not path.is_file():
        return set()
    seen.add(path)
    found: set[str] = set()
    tree = ast.parse(path.read_text())
    # imports guarded by `try: ... except ImportError` are optional
    optional = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.Try)
        and any(_catches_import_error(h) for h in node.handlers)
        for stmt in node.body
        for inner in ast.walk(stmt)
    }
    for node in ast.walk(tree):
        if id(node) in optional:
            continue
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level > 0:
            base = path.parent
            for _ in range(node.level - 1):
                base = base.parent
            mod = (node.module or "").replace(".", "/")
            for cand in [base / f"{mod}.py", base / mod / "__init__.py"] + [
                base / mod / f"{a.name}.py" for a in node.names
            ]:
                found |= module_imports(cand, seen)
            continue
        for name in names:
            top = name.split(".")[0]
            if top == "lesioncl":
                rel = Path(*name.split(".")[1:]) if "." in name else Path()
                src = REPO / "src/lesioncl"
                for cand in [src / rel.with_suffix(".py"), src / rel / "__init__.py"]:
                    found |= module_imports(cand, seen)
            elif top not in STDLIB:
                found.add(top)
    return found


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = {n.id for n in ast.walk(handler.type) if isinstance(n, ast.Name)} if handler.type else set()
    return bool(names & {"ImportError", "ModuleNotFoundError"})


RULES = parse_rules()
SCRIPTED = [r for r in RULES if r["script"]]


def test_rules_found():
    assert len(RULES) >= 5, [r["name"] for r in RULES]


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r["name"])
def test_rule_has_conda_env_and_log(rule):
    if not rule["runs"]:  # target-only rules (all, ...) run nothing
        return
    assert rule["conda"] in ENV_FILES, f"rule {rule['name']} ({rule['file']}) has no conda: ENV_DATA/ENV_TORCH"
    assert rule["log"], f"rule {rule['name']} ({rule['file']}) has no log:"


@pytest.mark.parametrize("rule", SCRIPTED, ids=lambda r: r["name"])
def test_script_imports_are_in_the_rule_env(rule):
    assert rule["script"].is_file(), f"rule {rule['name']}: script {rule['script']} missing"
    dists = packages_distributions()
    pins = env_pins(rule["conda"])
    missing = []
    for module in sorted(module_imports(rule["script"])):
        names = [_canon(d) for d in dists.get(module, [])]
        if not names:
            missing.append(f"{module} (not installed)")
        elif not any(n in pins for n in names):
            missing.append(f"{module} -> {names}")
    assert not missing, f"rule {rule['name']} imports packages missing from {ENV_FILES[rule['conda']].name}: {missing}"


@pytest.mark.parametrize("env_key", sorted(ENV_FILES))
def test_env_pins_match_the_install(env_key):
    install = install_pins()
    conda_only = {"python", "pip", "setuptools", "cxx-compiler"}
    mismatched = {
        name: (version, install.get(name))
        for name, version in env_pins(env_key).items()
        if name not in conda_only and install.get(name) != version
    }
    assert not mismatched, f"{ENV_FILES[env_key].name}: (env, install) versions differ: {mismatched}"


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    wrong = {}
    for name, pinned in install_pins().items():
        try:
            have = version(name)
        except Exception:
            wrong[name] = (pinned, None)
            continue
        if have.split("+")[0] != pinned:
            wrong[name] = (pinned, have)
    assert not wrong, f"installed (pinned, found): {wrong}"
