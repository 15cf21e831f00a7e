"""``scripts/bench --smoke``: every benchmark runs once at small sizes and reports ratios, in
about half a minute (no figure is judged: the machine's load decides them)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.e2e
@pytest.mark.timeout(240)
def test_bench_smoke_writes_json_table_and_chart(tmp_path: Path) -> None:
    out = tmp_path / "results"
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench"), "--smoke", "--out", str(out)],
                          capture_output=True, text=True, timeout=200, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads((out / "bench.json").read_text())
    failed = {name: why for name, why in result["skipped"].items() if not why.startswith("skipped:")}
    assert failed == {}, failed  # a benchmark may skip for a missing tool, never fail
    measured = {row["bench"] for row in result["rows"]}
    assert {"core", "signer", "startup", "publish", "emulator", "inventory"} <= measured
    assert all(isinstance(r["ratio"], (int, float)) and math.isfinite(r["ratio"]) and r["ratio"] > 0
               for r in result["rows"])
    table = (out / "bench.txt").read_text()
    assert all(r["bench"] in table for r in result["rows"]) and "ratio" in table
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result["history"][-1]["release"] == "this run (smoke)"
