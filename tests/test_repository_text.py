"""The repository speaks of itself: its code, tests, README, docs/ and `--help` texts point to a
documentation section or a module for a rule, never to a document, a tracker entry or a work
period that is not in the repository; and every relative link in README.md and docs/*.md leads
to a file that exists and, with a `#fragment`, to a heading of that file (GitHub's anchors)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "pricing", "storage", "tests")
# A reference to the product contract document by section, a tracker entry, or a work period.
OUTSIDE_REFERENCE = re.compile(r"\bSPEC\b|\bissue \d+|\bthis session\b")


def documentation() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def text_files() -> list[Path]:
    files = documentation()
    for folder in SOURCES:
        files += sorted((ROOT / folder).rglob("*.py")) + sorted((ROOT / folder).rglob("*.md"))
    return [f for f in files if f != Path(__file__).resolve()]


def test_code_and_readme_cite_only_what_the_repository_holds() -> None:
    found = [
        f"{path.relative_to(ROOT)}:{number}: {line.strip()}"
        for path in text_files()
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if OUTSIDE_REFERENCE.search(line)
    ]
    assert found == []


@pytest.mark.slow
def test_command_help_cites_only_what_the_repository_holds() -> None:
    for command in ("usage", "customers", "keys", "billing", "serve"):
        done = subprocess.run(
            [sys.executable, "-m", "gateway.cli.main", command, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert not OUTSIDE_REFERENCE.search(done.stdout), (command, done.stdout)


# A Markdown link or image: [text](target) or ![alt](target), the target without spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def outside_code(text: str) -> list[str]:
    """The lines of a Markdown text that are not inside a fenced code block."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lowercased, punctuation dropped, spaces to hyphens, a repeated
    one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    found = set()
    for line in outside_code(path.read_text(encoding="utf-8")):
        heading = re.match(r"#{1,6} (.+)", line)
        if heading is None:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        found.add(slug if count == 0 else f"{slug}-{count}")
    return found


def relative_links(path: Path) -> list[str]:
    return [
        target
        for line in outside_code(path.read_text(encoding="utf-8"))
        for target in LINK.findall(line)
        if not re.match(r"[a-z][a-z0-9+.-]*:", target)  # https:, mailto: ...
    ]


def test_readme_opens_with_the_two_commands() -> None:
    """The first code block a newcomer sees installs and runs the gateway, and runs the suite
    (the command CI runs)."""
    first_block = (ROOT / "README.md").read_text(encoding="utf-8").split("```")[1]
    commands = [line for line in first_block.splitlines()[1:] if line and not line.startswith("#")]
    assert commands == [
        "pip install -e . && tollbooth serve",
        "pip install -e '.[test]' && python -m pytest -q",
    ]
    assert "python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text(encoding="utf-8")


def test_anchors_follow_github_rules() -> None:
    readme = anchors(ROOT / "README.md")
    assert "try-it-in-two-minutes-no-provider-account-needed" in readme
    assert "pointing-sdks-at-the-gateway" in readme
    assert "a-requests-life" in readme
    assert "azure-openai-openaiazureopenai" in anchors(ROOT / "docs" / "providers.md")


def broken_links(pages: list[Path]) -> list[str]:
    broken = []
    for page in pages:
        for target in relative_links(page):
            file_part, _, fragment = target.partition("#")
            linked = (page.parent / file_part).resolve() if file_part else page
            if not linked.is_file():
                broken.append(f"{page.name}: {target}: no such file")
            elif fragment and fragment not in anchors(linked):
                broken.append(f"{page.name}: {target}: no such heading")
    return broken


def test_documentation_links_resolve() -> None:
    assert broken_links(documentation()) == []


def test_readme_lists_every_documentation_page() -> None:
    linked = {
        (ROOT / target.partition("#")[0]).resolve() for target in relative_links(ROOT / "README.md")
    }
    assert [p.name for p in sorted((ROOT / "docs").glob("*.md")) if p not in linked] == []


def test_link_check_finds_missing_files_and_headings(tmp_path: Path) -> None:
    (tmp_path / "other.md").write_text("# Other\n\n## Part two\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](#title) [gone](#nowhere) [there](other.md#part-two)\n"
        "[missing](absent.md) [no part](other.md#part-three) ![img](pic.png)\n"
        "```\n[in code](absent.md)\n```\n[web](https://example.com/x)\n",
        encoding="utf-8",
    )
    assert broken_links([page]) == [
        "page.md: #nowhere: no such heading",
        "page.md: absent.md: no such file",
        "page.md: other.md#part-three: no such heading",
        "page.md: pic.png: no such file",
    ]


def architecture_table() -> set[str]:
    """The paths the README's architecture table names in its first column: a name without a
    folder is in the folder of the cell's first path (`gateway/runtime.py`, `reload.py`)."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("\n## Architecture\n")[1]
    named = set()
    for line in section.split("\n## ")[0].splitlines():
        if not line.startswith("| `"):
            continue
        paths = [p.rstrip("/") for p in re.findall(r"`([^`]+)`", line.split("|")[1])]
        folder = paths[0].rpartition("/")[0]
        named |= {p if "/" in p or not folder else f"{folder}/{p}" for p in paths}
    return named


def test_architecture_table_names_every_module_and_package() -> None:
    """Every module and package directly under gateway/ and storage/, and pricing/, is in the
    table, and everything the table names exists."""
    on_disk = {"pricing"}
    for top in ("gateway", "storage"):
        package = (child for child in (ROOT / top).iterdir() if not child.name.startswith("__"))
        on_disk |= {f"{top}/{c.name}" for c in package if c.is_dir() or c.suffix == ".py"}
    named = architecture_table()
    assert sorted(on_disk - named) == []
    assert sorted(p for p in named if not (ROOT / p).exists()) == []
