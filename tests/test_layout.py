"""CONTRIBUTING.md's map (stage -> rule file -> rules = scripts -> package -> outputs)
matches the tree, and every script is named after its rule."""

from __future__ import annotations

import re

from conftest import REPO

RULES_DIR = REPO / "workflow" / "rules"
SCRIPTS_DIR = REPO / "workflow" / "scripts"
PACKAGE = REPO / "src" / "lesioncl"


def _map_rows() -> list[dict]:
    text = (REPO / "CONTRIBUTING.md").read_text()
    section = text.split("## The map", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or cells[0] in ("stage", "---"):
            continue
        stage, rule_file, rules, package, _outputs = cells
        shared = re.search(r"\(one script, `(\w+)`", rules)
        listed = re.sub(r"\([^)]*\)", "", rules)
        rows.append({
            "stage": stage,
            "rule_file": rule_file.strip("`"),
            "rules": re.findall(r"`(\w+)`", listed),
            "shared_script": shared.group(1) if shared else None,
            "module": re.match(r"`([\w.]+)`", package).group(1),
            "parts": re.findall(r"`(\w+)`", re.sub(r"^`[\w.]+`", "", package)),
        })
    return rows


def _scripted_rules(path) -> dict[str, str]:
    """{rule: script stem} of the rules of one rule file that run a script."""
    found = {}
    for block in re.split(r"^(?=rule \w+:)", path.read_text(), flags=re.M):
        head = re.match(r"rule (\w+):", block)
        script = re.search(r'^\s+script:\s*\n?\s*"\.\./scripts/(\w+)\.py"', block, re.M)
        if head and script:
            found[head.group(1)] = script.group(1)
    return found


ROWS = _map_rows()


def test_the_map_lists_every_stage():
    stages = {p.stem for p in RULES_DIR.glob("*.smk")} - {"common"}
    assert stages and {r["stage"] for r in ROWS} == stages
    assert all(r["rule_file"] == f"{r['stage']}.smk" for r in ROWS)


def test_rules_and_scripts_match_the_map():
    used = set()
    for row in ROWS:
        scripted = _scripted_rules(RULES_DIR / row["rule_file"])
        assert set(row["rules"]) == set(scripted), (row["stage"], row["rules"], scripted)
        for rule, script in scripted.items():
            assert script == (row["shared_script"] or rule), f"rule {rule} runs script {script}"
            assert (SCRIPTS_DIR / f"{script}.py").is_file()
            used.add(script)
    assert used == {p.stem for p in SCRIPTS_DIR.glob("*.py")}, "a script no rule runs"


def test_package_modules_match_the_map():
    for row in ROWS:
        assert row["module"] == f"lesioncl.{row['stage']}", row
        folder = PACKAGE / row["stage"]
        assert (folder / "__init__.py").is_file(), folder
        parts = {p.stem for p in folder.glob("*.py")} - {"__init__"}
        assert set(row["parts"]) == parts, (row["stage"], row["parts"], sorted(parts))
