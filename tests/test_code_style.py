"""The code base stays ruff clean (the project's lint settings in pyproject.toml), checked in CI, and
nothing but the tests imports the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    ruff = shutil.which("ruff")
    command = [ruff] if ruff else [sys.executable, "-m", "ruff"]
    result = subprocess.run([*command, "check", "--no-cache", "--output-format", "concise", "."], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_finds_nothing() -> None:
    """The library and the fronts type-check (settings in pyproject.toml; a remaining
    ``type: ignore`` names its error code and says why on the line or the one above)."""
    result = subprocess.run([sys.executable, "-m", "mypy"], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_code_and_benchmarks_import_no_test_code() -> None:
    """The library, the fronts and the scripts run without the tests (and so without pytest)."""
    sources = [*ROOT.glob("pki/**/*.py"), *ROOT.glob("service/**/*.py"),
               *(p for p in (ROOT / "scripts").iterdir() if p.is_file())]
    importing = [str(p.relative_to(ROOT)) for p in sources
                 if re.search(r"^\s*(from|import)\s+tests\b", p.read_text(errors="replace"), re.M)]
    assert sources and importing == []
