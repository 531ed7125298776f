"""The user documentation (README.md, docs/*.md) is self-contained: no pointer to files users do not have, and every
relative link leads to an existing file (and heading)."""

from __future__ import annotations

import re
import sys
import unicodedata
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The project's internal notes live outside the repository; users never have them.
INTERNAL = re.compile(r"\.\./shared\b|\b(?:STGCMA|TASKS|STYLE|PLATFORM)\.md\b")
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.M)
FENCE = re.compile(r"^(```|~~~).*?^\1\s*$", re.M | re.S)
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.M)
EXTERNAL = ("http://", "https://", "mailto:", "ftp://")


def doc_files() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def _strip_code(text: str) -> str:
    """The text without fenced code blocks or inline code spans (links there are examples, not links)."""
    text = FENCE.sub("", text)
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", text, flags=re.S)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: inline markup dropped, lower-cased, punctuation removed, spaces -> '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = text.replace("`", "").replace("*", "")
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(ch for ch in text if ch.isalnum() or ch in " -_")
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file (GitHub numbers repeated ones -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links of ``path`` that lead nowhere: 'target (reason)' for each."""
    text = _strip_code(path.read_text(encoding="utf-8"))
    problems = []
    for target in LINK.findall(text) + REFERENCE.findall(text):
        if target.startswith(EXTERNAL):
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        if not dest.exists():
            problems.append(f"{target} (no file {dest})")
            continue
        if not dest.is_relative_to(REPO):
            problems.append(f"{target} (outside the repository: {dest})")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target} (no heading #{anchor} in {dest.relative_to(REPO)})")
    return problems


def test_the_user_docs_exist():
    names = {p.relative_to(REPO).as_posix() for p in doc_files()}
    assert {"README.md", "docs/model.md", "docs/tasks.md"} <= names, names


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_no_reference_to_internal_notes(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    hits = [f"{path.name}:{n}: {line.strip()}" for n, line in enumerate(lines, 1) if INTERNAL.search(line)]
    assert not hits, "users do not have the project's internal notes; point to docs/ instead:\n" + "\n".join(hits)


@pytest.mark.parametrize("path", doc_files(), ids=lambda p: p.relative_to(REPO).as_posix())
def test_relative_links_lead_to_existing_files(path):
    problems = broken_links(path)
    assert not problems, f"broken links in {path.relative_to(REPO)}:\n" + "\n".join(problems)


def test_package_sources_point_to_docs_not_internal_notes():
    hits = []
    for root in ("stgcma_fast", "kernels", "bench", "scripts"):
        for path in sorted((REPO / root).rglob("*")):
            if path.suffix not in (".py", ".sh", ".md") or "__pycache__" in path.parts:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if INTERNAL.search(line):
                    hits.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not hits, "product code must not point to the internal notes; point to docs/ instead:\n" + "\n".join(hits)


def test_docs_parameter_table_matches_the_readme():
    """docs/model.md repeats the README's generated parameter table (tests/test_cli.py checks the README's)."""

    def block(path: Path) -> str:
        text = path.read_text(encoding="utf-8")
        assert "<!-- params-table:start -->" in text, f"{path.name} has no params-table block"
        return text.split("<!-- params-table:start -->\n")[1].split("\n<!-- params-table:end -->")[0]

    assert block(REPO / "docs" / "model.md") == block(REPO / "README.md")


def test_link_checker_finds_broken_links_and_anchors(tmp_path, monkeypatch):
    """The checker itself: a missing file, a missing heading, a link out of the repository and a reference-style
    link to a missing file are reported; code spans, fenced blocks, external links and valid anchors are not."""
    repo = tmp_path / "repo"
    monkeypatch.setattr(sys.modules[__name__], "REPO", repo)
    (repo / "docs").mkdir(parents=True)
    (repo / "docs" / "other.md").write_text("# Other page\n\n## The paper's results\n", encoding="utf-8")
    (tmp_path / "outside.md").write_text("x", encoding="utf-8")
    page = repo / "docs" / "page.md"
    page.write_text(
        "# Page\n\n"
        "[ok](other.md) [ok anchor](other.md#the-papers-results) [self](#page) [web](https://example.org/x)\n"
        "[gone](missing.md) [bad anchor](other.md#nope) [out](../../outside.md)\n"
        "`[not a link](nowhere.md)`\n\n```\n[example](also-nowhere.md)\n```\n"
        "[ref]: reference-missing.md\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert [p.split(" ")[0] for p in problems] == ["missing.md", "other.md#nope", "../../outside.md",
                                                    "reference-missing.md"], problems
    assert "no heading #nope" in problems[1] and "outside the repository" in problems[2], problems


@pytest.mark.parametrize(("heading", "expected"), [
    ("Where we differ from the authors' code", "where-we-differ-from-the-authors-code"),
    ("Training recipe and the paper's results", "training-recipe-and-the-papers-results"),
    ("`stgcma-fast train` / `eval`", "stgcma-fast-train--eval"),
    ("AVSBench-S4: single-source audio-visual segmentation", "avsbench-s4-single-source-audio-visual-segmentation"),
])
def test_slug_follows_github(heading, expected):
    assert slug(heading) == expected
