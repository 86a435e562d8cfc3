"""The README stays a short front door and the MkDocs site stays whole (no build here)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MKDOCS = ROOT / "mkdocs.yml"
RESULTS = ROOT / "benchmarks" / "results"

README_MAX_LINES = 250

# Words about how the work was organised, not about the project. Matched case-insensitively
# as whole words. Bare "task" and "session" are project words (the task head, a child's two
# scanning sessions), so only the organisational phrases are listed.
FORBIDDEN = [
    r"issues?",
    r"this task",
    r"the task's command",
    r"this session",
    r"the session",
    r"was lent",
    r"lent to",
    r"tickets?",
    r"sprints?",
    r"the brief",
    r"backlog",
    r"pull requests?",
    r"assignees?",
]
FORBIDDEN_RE = re.compile(r"\b(?:" + "|".join(FORBIDDEN) + r")\b", re.IGNORECASE)


def _nav_paths(nav: Any) -> list[str]:
    if isinstance(nav, str):
        return [nav]
    if isinstance(nav, dict):
        return [p for value in nav.values() for p in _nav_paths(value)]
    if isinstance(nav, list):
        return [p for item in nav for p in _nav_paths(item)]
    return []


def _mkdocs_config() -> dict[str, Any]:
    return yaml.safe_load(MKDOCS.read_text(encoding="utf-8"))


def _load_hooks() -> ModuleType:
    pytest.importorskip("mkdocs")
    spec = importlib.util.spec_from_file_location("docs_hooks", DOCS / "hooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _text_files() -> list[Path]:
    files = [README, MKDOCS]
    files += sorted(p for p in DOCS.rglob("*") if p.suffix in {".md", ".py", ".yml", ".yaml"})
    return files


def organisational_words(text: str) -> list[str]:
    return [m.group(0) for m in FORBIDDEN_RE.finditer(text)]


def test_readme_is_short() -> None:
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= README_MAX_LINES, f"README.md has {n} lines (at most {README_MAX_LINES})"


def test_readme_opens_with_make_demo_and_make_test() -> None:
    lines = [line for line in README.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines[0].startswith("# "), "README.md must start with its title"
    assert lines[1].startswith("```"), "the first thing after the title must be a code block"
    end = next(i for i in range(2, len(lines)) if lines[i].startswith("```"))
    block = lines[2:end]
    assert any(line.startswith("make demo") for line in block), block
    assert any(line.startswith("make test") for line in block), block


def test_forbidden_pattern_catches_what_it_should() -> None:
    assert organisational_words("Fixed in the issue tracker; see this session's notes")
    assert organisational_words("no GPU was lent to this task")
    assert not organisational_words("the task head; two scanning sessions; the tissue")


@pytest.mark.parametrize("path", _text_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_words_about_how_the_work_was_organised(path: Path) -> None:
    found = organisational_words(path.read_text(encoding="utf-8"))
    assert not found, f"{path.relative_to(ROOT)} mentions {sorted(set(found))}"


def test_every_nav_page_exists() -> None:
    config = _mkdocs_config()
    docs_dir = ROOT / config.get("docs_dir", "docs")
    paths = _nav_paths(config["nav"])
    assert paths, "mkdocs.yml has no nav"
    missing = []
    for page in paths:
        if (docs_dir / page).is_file():
            continue
        generated = re.fullmatch(r"benchmarks/([^/]+\.md)", page)
        if generated and (RESULTS / generated.group(1)).is_file():
            continue  # published from benchmarks/results/ by docs/hooks.py
        missing.append(page)
    assert not missing, f"nav pages that do not exist: {missing}"


def test_every_docs_page_is_in_the_nav() -> None:
    config = _mkdocs_config()
    listed = set(_nav_paths(config["nav"]))
    pages = {p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.md")}
    assert pages <= listed, f"pages missing from the nav: {sorted(pages - listed)}"


def test_hook_adds_unlisted_results_to_the_nav() -> None:
    hooks = _load_hooks()
    results = hooks.results_pages()
    assert results, "no benchmarks/results/*.md to publish"
    config = {"nav": [{"Overview": "index.md"}, {"Benchmarks": ["benchmarks.md"]}]}
    hooks.on_config(config)
    section = config["nav"][1]["Benchmarks"]
    assert section[0] == "benchmarks.md"
    assert sorted(section[1:]) == sorted(f"benchmarks/{p.name}" for p in results)


def test_hook_rewrites_links_that_would_break_the_build() -> None:
    hooks = _load_hooks()
    sibling = hooks.results_pages()[0].name
    text = (
        f"[ok]({sibling}#top) [web](https://example.org) [script](../paper.py) "
        "`[code](../x.py)` | query @x[\\'a\\'](\"import os; y\") |"
    )
    out = hooks.rewrite_links(text, "test")
    assert f"[ok]({sibling}#top)" in out
    assert "[web](https://example.org)" in out
    assert "[script]" not in out and "script" in out
    assert "`[code](../x.py)`" in out
    assert "]\\(" in out  # a stray "](" is escaped, not read as a link


def test_hook_includes_a_results_table_instead_of_a_copy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hooks = _load_hooks()
    source = hooks.RESULTS / "tabular_openneuro.md"
    first = hooks.markdown_tables(source.read_text(encoding="utf-8"))[0]
    page = "Before.\n\n<!-- results-table: tabular_openneuro 1 -->\n\nAfter.\n"
    out = hooks.include_tables(page, "page.md")
    assert out == f"Before.\n\n{first}\n\nAfter.\n"
    missing = "<!-- results-table: tabular_openneuro 99 -->"
    with caplog.at_level("WARNING"):
        assert hooks.include_tables(missing, "page.md") == missing  # strict builds fail on it
    assert "table 99" in caplog.text


def test_markdown_tables_splits_on_non_table_lines() -> None:
    hooks = _load_hooks()
    text = "| a |\n|---|\n| 1 |\ntext\n| b |\n|---|\n"
    assert hooks.markdown_tables(text) == ["| a |\n|---|\n| 1 |", "| b |\n|---|"]


def test_hook_includes_a_results_body_without_its_headings() -> None:
    hooks = _load_hooks()
    source = (hooks.RESULTS / "tabular_openneuro.md").read_text(encoding="utf-8")
    out = hooks.include_tables("<!-- results-body: tabular_openneuro -->", "page.md")
    assert not any(line.startswith("#") for line in out.splitlines())
    assert hooks.markdown_tables(source)[0] in out
    assert out.splitlines()[-1] == source.strip().splitlines()[-1]  # to the file's last line
