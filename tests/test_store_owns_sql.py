"""All of the library's SQL is in ``pki.store``, and the CA's light modules load no SQLAlchemy."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# What builds a statement. Types (``sqlalchemy.engine.Connection``...) and exceptions
# (``sqlalchemy.exc``) may be used anywhere.
STATEMENT_BUILDERS = {"select", "insert", "update", "delete", "text", "func", "and_", "or_", "not_", "bindparam",
                      "literal", "literal_column", "exists", "case", "cast", "column", "table"}
# Not the library's database: a SQLite home's own rate-limit file (sqlite3, beside the CA database;
# on PostgreSQL the counters are in the CA database, through pki.store.ratelimits).
NOT_CA_DATABASE = {ROOT / "service" / "api" / "state.py"}


def _sql_built_in(path: Path) -> list[str]:
    found = []
    where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            if node.module == "pki.store.schema":
                found.append(f"{where}:{node.lineno} imports tables from pki.store.schema")
            elif node.module in ("sqlalchemy", "sqlalchemy.sql", "sqlalchemy.sql.expression"):
                names = sorted(a.name for a in node.names if a.name in STATEMENT_BUILDERS)
                if names:
                    found.append(f"{where}:{node.lineno} imports {', '.join(names)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in (
                "exec_driver_sql", "execute") and node.args and isinstance(node.args[0], ast.Constant):
            found.append(f"{where}:{node.lineno} runs SQL text")
    return found


def test_only_pki_store_builds_sql() -> None:
    outside = [p for folder in ("pki", "service") for p in sorted((ROOT / folder).rglob("*.py"))
               if not p.is_relative_to(ROOT / "pki" / "store") and p not in NOT_CA_DATABASE]
    assert len(outside) > 50  # the walk found the code
    problems = [problem for path in outside for problem in _sql_built_in(path)]
    assert problems == [], "\n".join(problems)


def test_the_check_sees_sql_built_outside_the_store(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("from sqlalchemy import func, select\nfrom sqlalchemy.engine import Connection\n"
                      "from pki.store.schema import certificates\ndef f(conn):\n    conn.execute('SELECT 1')\n")
    assert [line.split(" ", 1)[1] for line in _sql_built_in(sample)] == [
        "imports func, select", "imports tables from pki.store.schema", "runs SQL text"]


@pytest.mark.e2e
@pytest.mark.parametrize("module", ["pki.ca", "pki.ca.home", "pki.ca.values"])
def test_light_ca_modules_load_no_sqlalchemy(module: str) -> None:
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sqlalchemy'))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                            check=True)
    assert result.stdout.strip() == "[]"
