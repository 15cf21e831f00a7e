"""The user documentation stays true to the tree: links resolve, the README stays short, and its
commands table names the commands that exist, all of them."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from pki.signer.cli import COMMANDS as SIGNER_COMMANDS
from pki.signer.cli import main as signer_main
from service.cli import main as rapki_main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCUMENTS = [README, ROOT / "CHANGES.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 220

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")


def prose(text: str) -> str:
    """The text without code blocks and inline code (a link inside them is not a link)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(document: Path) -> Iterator[str]:
    yield from LINK.findall(prose(document.read_text()))


def anchors(document: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, duplicates numbered."""
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", document.read_text()).splitlines():
        heading = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def test_the_documents_exist() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in DOCUMENTS}
    assert {"README.md", "CHANGES.md", "docs/api.md", "docs/signer.md", "docs/emulator.md",
            "docs/operations.md", "docs/benchmarks.md", "docs/architecture.md"} <= names


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_point_to_files_and_headings_that_exist(document: Path) -> None:
    broken = []
    for target in links(document):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not checked offline
            continue
        path_part, _, anchor = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and (path.suffix != ".md" or anchor not in anchors(path)):
            broken.append(f"{target}: no heading #{anchor} in {path.relative_to(ROOT)}")
    assert not broken, f"{document.relative_to(ROOT)}: " + "; ".join(broken)


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"


def test_no_leftover_placeholders() -> None:
    for document in DOCUMENTS:
        text = document.read_text()
        assert "filled in" not in text and "TODO" not in text, document.relative_to(ROOT)


def table_commands() -> list[list[str]]:
    """The first cell of each row of the README's commands table, as argv (placeholders dropped)."""
    text = README.read_text()
    section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for row in re.findall(r"^\|\s*`([^`]+)`\s*\|", section, re.MULTILINE):
        words = row.split()
        commands.append([w for w in words if re.fullmatch(r"[a-z][a-z0-9-]*", w)])
    return commands


def rapki_leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every runnable command under ``group``, found the way click resolves them (lazy groups too)."""
    ctx = click.Context(group, info_name=" ".join(("rapki", *prefix)))
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None, name
        if isinstance(command, click.Group):
            yield from rapki_leaf_commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_table_parsing_finds_the_table() -> None:
    commands = table_commands()
    assert ["rapki", "serve"] in commands and ["rapki-signer", "credential-process"] in commands


@pytest.mark.parametrize("argv", table_commands(), ids=" ".join)
def test_every_command_in_the_readme_table_exists(argv: list[str]) -> None:
    program, *words = argv
    assert words, f"{argv}: a program without a command"
    if program == "rapki":
        result = CliRunner().invoke(rapki_main, [*words, "--help"], prog_name="rapki")
        assert result.exit_code == 0, result.output
        assert f"Usage: rapki {' '.join(words)}" in result.output
    else:
        assert program == "rapki-signer", argv
        with pytest.raises(SystemExit) as exited:
            signer_main([*words, "--help"])
        assert exited.value.code == 0


def test_the_readme_table_lists_every_command() -> None:
    listed = {tuple(argv) for argv in table_commands()}
    rapki = {("rapki", *path) for path in rapki_leaf_commands(rapki_main)}
    signer = {("rapki-signer", name) for name in SIGNER_COMMANDS}
    assert rapki and signer
    missing = sorted(" ".join(c) for c in (rapki | signer) - listed)
    assert not missing, f"commands missing from the README's commands table: {missing}"
