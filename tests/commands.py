"""The installed commands as tests run them (the console scripts, else the module behind them)."""

from __future__ import annotations

import contextlib
import io
import shutil
import subprocess
import sys
from collections.abc import Iterator


def rapki_cmd() -> list[str]:
    exe = shutil.which("rapki")
    return [exe] if exe else [sys.executable, "-c", "from service.cli import main; main()"]


def signer_cmd() -> list[str]:
    exe = shutil.which("rapki-signer")
    return [exe] if exe else [sys.executable, "-m", "pki.signer.cli"]


@contextlib.contextmanager
def signer_serving(args: list[str]) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``rapki-signer serve ARGS`` running; yields the process and the metadata endpoint it
    announces on stderr (``AWS_EC2_METADATA_SERVICE_ENDPOINT=...``); stopped afterwards."""
    proc = subprocess.Popen([*signer_cmd(), "serve", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stderr is not None
        url = ""
        for _ in range(50):
            line = proc.stderr.readline().decode()
            if "AWS_EC2_METADATA_SERVICE_ENDPOINT=" in line:
                url = line.strip().split("=", 1)[1]
                break
        assert url.startswith("http://127.0.0.1:"), f"no endpoint announced (last line: {line!r})"
        yield proc, url
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=10)  # reads both pipes to the end and closes them
        proc.stdout = io.BytesIO(out)  # what it wrote to stdout, still readable by the caller
