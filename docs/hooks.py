"""MkDocs hooks: publish ``benchmarks/results/*.md`` as pages under ``benchmarks/``.

The benchmark scripts write their results as markdown next to their JSON
(``benchmarks/results/<name>.md``). Those files are the source of truth, so the site
reads them at build time instead of keeping copies in ``docs/``:

* ``on_config`` adds every results page missing from the nav to the *Benchmarks* section,
  so a new benchmark appears in the site without editing ``mkdocs.yml``;
* ``on_files`` adds ``benchmarks/results/<name>.md`` as the page ``benchmarks/<name>.md``,
  plus every other file of ``benchmarks/results/`` one of those pages links to;
* ``on_page_markdown`` gives a page without a top-level heading a title, adds a line naming
  the source file, and rewrites relative links: a link to another results file or to a
  published asset is kept, a link to anything else (a script, a folder) becomes plain
  text, so ``mkdocs build --strict`` never fails on a link in a results file;
* in any page, a line ``<!-- results-table: NAME N -->`` becomes the N-th table of
  ``benchmarks/results/NAME.md`` (from 1), and ``<!-- results-body: NAME -->`` that whole
  file below its headings, so a page that discusses a benchmark shows its figures as the
  script last wrote them, never a copy.
"""

from __future__ import annotations

import logging
import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.benchmarks")

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
PREFIX = "benchmarks/"  # pages land at benchmarks/<name>.md in the site
NAV_SECTION = "Benchmarks"

# Titles for results files that do not start with a top-level heading of their own.
TITLES = {
    "tabular_openneuro": "Feature tables: OpenNeuroTransfer",
    "tabular_knobs": "Feature tables: knob readings",
}

_INCLUDE = re.compile(r"^<!-- results-(table|body): ([\w-]+)(?: (\d+))? -->[ \t]*$", re.MULTILINE)
_LINK = re.compile(r"(!?)\[([^\]\n]*)\]\(([^)\s]+)\)")
_CODE = re.compile(r"(`+)(?:.*?)\1", re.DOTALL)
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.DOTALL | re.MULTILINE)


def results_pages() -> list[Path]:
    """The markdown files of ``benchmarks/results/``, sorted by name."""
    return sorted(RESULTS.glob("*.md"))


def _nav_paths(nav: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(nav, str):
        found.add(nav)
    elif isinstance(nav, dict):
        for value in nav.values():
            found |= _nav_paths(value)
    elif isinstance(nav, list):
        for item in nav:
            found |= _nav_paths(item)
    return found


def on_config(config: Any) -> Any:
    nav = config.get("nav")
    if not nav:
        return config
    listed = _nav_paths(nav)
    missing = [p for p in results_pages() if f"{PREFIX}{p.name}" not in listed]
    if not missing:
        return config
    section = next(
        (item[NAV_SECTION] for item in nav if isinstance(item, dict) and NAV_SECTION in item),
        None,
    )
    if not isinstance(section, list):
        section = []
        nav.append({NAV_SECTION: section})
    for path in missing:
        section.append(f"{PREFIX}{path.name}")
        log.info("benchmarks: %s added to the nav", path.name)
    return config


def _split_code(markdown: str) -> list[tuple[bool, str]]:
    """Split into (is_code, text) pieces: fenced blocks and inline code spans are code."""
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for fence in _FENCE.finditer(markdown):
        pieces.extend(_split_inline(markdown[pos : fence.start()]))
        pieces.append((True, fence.group(0)))
        pos = fence.end()
    pieces.extend(_split_inline(markdown[pos:]))
    return pieces


def _split_inline(text: str) -> list[tuple[bool, str]]:
    pieces: list[tuple[bool, str]] = []
    pos = 0
    for span in _CODE.finditer(text):
        pieces.append((False, text[pos : span.start()]))
        pieces.append((True, span.group(0)))
        pos = span.end()
    pieces.append((False, text[pos:]))
    return pieces


def _is_external(target: str) -> bool:
    if target.startswith(("#", "/")):
        return True
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None


def _resolve(target: str) -> tuple[Path | None, str]:
    """A relative link target of a results file -> (the file in benchmarks/results, fragment)."""
    path, _, fragment = target.partition("#")
    if not path:
        return None, fragment
    resolved = (RESULTS / path).resolve()
    if resolved.parent != RESULTS.resolve() or not resolved.is_file():
        return None, fragment
    return resolved, fragment


def linked_assets(markdown: str) -> set[Path]:
    """The non-markdown files of benchmarks/results that ``markdown`` links to."""
    assets: set[Path] = set()
    for is_code, text in _split_code(markdown):
        if is_code:
            continue
        for match in _LINK.finditer(text):
            target = match.group(3)
            if _is_external(target):
                continue
            resolved, _ = _resolve(target)
            if resolved is not None and resolved.suffix != ".md":
                assets.add(resolved)
    return assets


def rewrite_links(markdown: str, name: str) -> str:
    """Keep links that will resolve in the site; turn the others into their text."""

    def fix(match: re.Match[str]) -> str:
        bang, text, target = match.groups()
        if _is_external(target):
            return match.group(0)
        resolved, _ = _resolve(target)
        if resolved is not None:
            return match.group(0)  # same folder in the site: the relative link still works
        log.info("benchmarks: %s.md links to %s, outside the published results", name, target)
        return text if not bang else f"`{target}`"

    def fix_text(text: str) -> str:
        # Links this hook understands are kept or unlinked; any other "](" (text that
        # Markdown would still read as a link, e.g. a quoted query in a table cell) is
        # escaped so that it renders as written.
        out, pos = [], 0
        for match in _LINK.finditer(text):
            out.append(text[pos : match.start()].replace("](", "]\\("))
            out.append(fix(match))
            pos = match.end()
        out.append(text[pos:].replace("](", "]\\("))
        return "".join(out)

    return "".join(text if is_code else fix_text(text) for is_code, text in _split_code(markdown))


def on_files(files: Files, config: Any) -> Files:
    assets: set[Path] = set()
    for path in results_pages():
        uri = f"{PREFIX}{path.name}"
        if files.get_file_from_path(uri) is not None:
            log.warning("benchmarks: docs/%s hides the generated page of %s", uri, path.name)
            continue
        files.append(File.generated(config, uri, abs_src_path=str(path)))
        assets |= linked_assets(path.read_text(encoding="utf-8"))
    for asset in sorted(assets):
        uri = f"{PREFIX}{asset.name}"
        if files.get_file_from_path(uri) is None:
            files.append(File.generated(config, uri, abs_src_path=str(asset)))
    return files


def markdown_tables(markdown: str) -> list[str]:
    """The tables of a markdown text (runs of lines starting with ``|``), in order."""
    tables: list[list[str]] = []
    previous = False
    for line in markdown.splitlines():
        row = line.startswith("|")
        if row and not previous:
            tables.append([])
        if row:
            tables[-1].append(line)
        previous = row
    return ["\n".join(t) for t in tables]


def results_body(markdown: str) -> str:
    """A results file without its heading lines (the page that includes it has its own)."""
    kept = [line for line in markdown.strip().splitlines() if not line.startswith("#")]
    return "\n".join(kept).strip()


def include_tables(markdown: str, where: str) -> str:
    """Replace each ``<!-- results-table: NAME N -->`` line with that table and each
    ``<!-- results-body: NAME -->`` line with that file's body."""

    def include(match: re.Match[str]) -> str:
        what, name = match.group(1), match.group(2)
        source = RESULTS / f"{name}.md"
        if not source.is_file():
            log.warning("benchmarks: %s includes %s, which does not exist", where, source.name)
            return match.group(0)
        text = source.read_text(encoding="utf-8")
        if what == "body":
            return results_body(text)
        found = markdown_tables(text)
        index = int(match.group(3) or 0)
        if not 1 <= index <= len(found):
            log.warning(
                "benchmarks: %s asks for table %d of %s, which has %d",
                where,
                index,
                source.relative_to(ROOT),
                len(found),
            )
            return match.group(0)
        return found[index - 1]

    return _INCLUDE.sub(include, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    uri = page.file.src_uri
    markdown = include_tables(markdown, uri)
    if not uri.startswith(PREFIX) or posixpath.dirname(uri) != PREFIX.rstrip("/"):
        return markdown
    name = posixpath.splitext(posixpath.basename(uri))[0]
    source = RESULTS / f"{name}.md"
    if page.file.abs_src_path is None or Path(page.file.abs_src_path).resolve() != source.resolve():
        return markdown  # a hand-written page under docs/benchmarks/
    body = rewrite_links(markdown, name)
    note = (
        f"*Written by the benchmark scripts into `benchmarks/results/{name}.md`"
        + (f" (every figure in `{name}.json`)" if (RESULTS / f"{name}.json").is_file() else "")
        + "; read it with the [interpretation](../benchmarks.md).*\n\n"
    )
    first = body.lstrip().splitlines()[0] if body.strip() else ""
    if first.startswith("# "):
        heading, _, rest = body.lstrip().partition("\n")
        return f"{heading}\n\n{note}{rest.lstrip()}"
    title = TITLES.get(name, name.replace("_", " ").capitalize())
    return f"# {title}\n\n{note}{body}"
