"""The documentation a user reads: a short front page with the two set-up commands, a guide per command, the schema
generated from the code (and equal to it), and links that resolve (files and headings)."""

from __future__ import annotations

import re
from pathlib import Path

import typer

from yolo_audit.cli import app
from yolo_audit.results import schema

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens, underscores and spaces dropped, spaces as
    hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", text))


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_the_front_page_is_short_and_has_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    block = readme.split("## Two commands", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["bash dev.sh demo", "bash dev.sh test"]
    assert "exec bash dev.sh test" in (ROOT / ".ci" / "run").read_text()  # CI runs the README's test command


def test_every_command_has_its_guide():
    group = typer.main.get_command(app)
    for name in group.commands:
        guide = ROOT / "docs" / "commands" / f"{name}.md"
        assert guide.is_file(), guide
        assert f"yolo-audit {name}" in guide.read_text(), guide
        assert f"(docs/commands/{name}.md)" in (ROOT / "README.md").read_text(), name


def test_the_schema_page_is_the_schema_command_s_output():
    assert (ROOT / "docs" / "schema.md").read_text() == schema.markdown(), "run: yolo-audit schema > docs/schema.md"
    for table, fields in schema.TABLES.items():
        assert f"## `{table}`" in schema.markdown(), table
        assert len(fields) == len(set(name for name, _, _ in fields)), table


def test_every_link_resolves():
    broken = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such heading)")
    assert not broken, "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_index():
    index = (ROOT / "docs" / "index.md").read_text()
    for page in PAGES[1:]:
        name = page.relative_to(ROOT / "docs").as_posix()
        assert name == "index.md" or f"({name})" in index or f"({name}#" in index, name
