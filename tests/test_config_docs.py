"""config/README.md documents every section of the config schema."""

from __future__ import annotations

import yaml

from conftest import REPO


def _sections(props: dict, prefix: str = "") -> list[str]:
    """Dotted names of every object section of the schema (synthetic, synthetic.eyepacs, ...)."""
    found = []
    for key, spec in props.items():
        if isinstance(spec, dict) and spec.get("type") == "object" and "properties" in spec:
            found.append(prefix + key)
            found += _sections(spec["properties"], prefix + key + ".")
    return found


def test_config_readme_has_every_section():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    text = (REPO / "config/README.md").read_text()
    sections = _sections(schema["properties"])
    assert {"eyepacs", "pretrain", "evaluation.finetune"} <= set(sections)
    missing = [name for name in sections if f"`{name}`" not in text]
    assert not missing, f"config/README.md does not document the config sections {missing}"


def test_config_readme_has_every_top_level_key():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    text = (REPO / "config/README.md").read_text()
    missing = [key for key in schema["properties"] if f"`{key}`" not in text]
    assert not missing, f"config/README.md does not mention the config keys {missing}"


def _leaf_keys(props: dict, prefix: str = "") -> list[tuple[str, str]]:
    """(section, key) of every setting: ('', 'seed'), ('pretrain', 'lr'), ('evaluation.finetune', 'lr'), ..."""
    found = []
    for key, spec in props.items():
        if isinstance(spec, dict) and spec.get("type") == "object" and "properties" in spec:
            found += _leaf_keys(spec["properties"], prefix + key + ".")
        else:
            found.append((prefix.rstrip("."), key))
    return found


def test_config_readme_documents_every_key_in_its_section():
    import re

    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    text = (REPO / "config/README.md").read_text()
    # the text of each section: from its '### `name`' header to the next header
    parts = re.split(r"^#+ ", text, flags=re.M)
    sections = {}
    for part in parts:
        head, _, body = part.partition("\n")
        name = head.strip().strip("`") if head.strip().startswith("`") else head.strip()
        sections[name] = body
    missing = [f"{section}.{key}".lstrip(".") for section, key in _leaf_keys(schema["properties"])
               if f"| `{key}` |" not in sections.get(section or "Top level", "")]
    assert not missing, f"config/README.md: add a row for {missing} (from workflow/schemas/config.schema.yaml)"
