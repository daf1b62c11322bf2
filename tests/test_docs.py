"""The documentation stands on its own: no citation of files the repository does not
have, and every relative link of the Markdown files resolves."""

from __future__ import annotations

import re

from conftest import REPO

DOC_GLOBS = ["*.md", "*.cff", "docs/*.md", "config/*", "envs/*", "scripts/**/*", "src/**/*.py",
             "workflow/**/*", "Snakefile", "Makefile", "profiles/**/*", "tests/*.py", "benchmarks/*"]
SPEC = "REFERENCE" + ".md"  # the project's private specification, outside the repository


def _files():
    seen = set()
    for pattern in DOC_GLOBS:
        for path in REPO.glob(pattern):
            if path.is_file() and path.suffix not in (".png", ".jpg", ".pyc") and path not in seen:
                seen.add(path)
                yield path


def test_no_citation_of_files_outside_the_repository():
    offenders = [str(p.relative_to(REPO)) for p in _files() if SPEC in p.read_text(errors="ignore")]
    assert not offenders, f"cite the paper's section or docs/method.md instead of {SPEC} in {offenders}"


def test_markdown_links_resolve():
    broken = []
    for md in [REPO / "README.md", REPO / "CONTRIBUTING.md", *REPO.glob("docs/*.md"), *REPO.glob("config/*.md")]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", md.read_text()):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            if not (md.parent / target).exists():
                broken.append(f"{md.relative_to(REPO)} -> {target}")
    assert not broken, f"broken relative links: {broken}"


def test_citation_file_names_the_paper():
    import yaml

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    paper = cff["preferred-citation"]
    assert paper["doi"] == "10.1007/978-3-030-87196-3_11" and paper["year"] == 2021
    assert [a["family-names"] for a in paper["authors"]] == ["Huang", "Lin", "Cheng", "Lyu", "Tang"]
    assert cff["license"] == "MIT" and (REPO / "LICENSE").read_text().startswith("MIT License")
