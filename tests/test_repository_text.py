"""The repository speaks of itself: its code, tests, README and `--help` texts point to a README
section or a module for a rule, never to a document, a tracker entry or a work period that is
not in the repository."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gateway", "pricing", "storage", "tests")
# A reference to the product contract document by section, a tracker entry, or a work period.
OUTSIDE_REFERENCE = re.compile(r"\bSPEC\b|\bissue \d+|\bthis session\b")


def text_files() -> list[Path]:
    files = [ROOT / "README.md"]
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
