"""The installed commands as tests run them (the console scripts, else the module behind them)."""

from __future__ import annotations

import shutil
import sys


def rapki_cmd() -> list[str]:
    exe = shutil.which("rapki")
    return [exe] if exe else [sys.executable, "-c", "from service.cli import main; main()"]


def signer_cmd() -> list[str]:
    exe = shutil.which("rapki-signer")
    return [exe] if exe else [sys.executable, "-m", "pki.signer.cli"]
