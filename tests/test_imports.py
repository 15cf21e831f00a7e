"""What an import loads: the house plan of ``pki/`` and ``service/`` read from the import statements,
and what ``rapki --help``, ``rapki enroll`` and ``rapki renew`` load when they run (each in a fresh
interpreter, so ``sys.modules`` holds only what that run imported)."""

from __future__ import annotations

import ast
import datetime
import graphlib
import importlib
import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import click
import pytest
from click.utils import make_default_short_help
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parent.parent

# --- the house plan ------------------------------------------------------------------------------------
# (modules, "only" | "never", modules): the first may import only / never the last. "pkg.*" is the
# package and everything below it; a plain name is that one module. Only imports of pki and service
# modules are judged; what third-party code the signer may load is pinned where it starts up.
LAYERS: list[tuple[str, str, tuple[str, ...]]] = [
    ("pki.*", "never", ("service.*",)),
    # pki.signer.pkcs11 shares the token's r||s -> DER ECDSA conversion with the CA's PKCS#11 keys.
    ("pki.signer.*", "only", ("pki", "pki.errors", "pki.files", "pki.x509.keys", "pki.x509.pem",
                              "pki.x509.external", "pki.x509.pkcs8_mldsa",
                              "pki.rolesanywhere.*", "pki.signer.*")),
    # Profiles check their Roles Anywhere ARNs with the one ARN parser, which needs nothing from pki.x509.
    ("pki.x509.*", "only", ("pki.errors", "pki.files", "pki.x509.*", "pki.rolesanywhere.arns",
                            "pki.rolesanywhere.partitions")),
    ("pki.rolesanywhere.arns", "only", ("pki.errors", "pki.rolesanywhere.partitions")),
    ("pki.rolesanywhere.partitions", "only", ("pki.errors",)),
    ("pki.ca.*", "never", ("pki.aws.*", "pki.workload.*", "pki.signer.*")),
    ("pki.workload.*", "never", ("pki.ca.*", "pki.store.*")),
    ("pki.rolesanywhere.*", "only", ("pki.errors", "pki.x509.*", "pki.rolesanywhere.*")),
    ("pki.store.*", "only", ("pki.errors", "pki.auditchain", "pki.store.*")),
    ("pki.custody.*", "only", ("pki.errors", "pki.x509.*", "pki.custody.*")),
]

# Top-level packages no ``rapki --help``, ``rapki enroll`` or ``rapki renew`` may load.
HEAVY = ("sqlalchemy", "alembic", "flask", "boto3", "botocore", "gunicorn", "psycopg", "prometheus_client")


def matches(module: str, pattern: str) -> bool:
    if pattern.endswith(".*"):
        package = pattern[:-2]
        return module == package or module.startswith(package + ".")
    return module == pattern


# --- the static import graph ---------------------------------------------------------------------------
@cache
def modules() -> dict[str, Path]:
    """Every module under pki/ and service/ by dotted name (a package by its own name)."""
    found = {}
    for top in ("pki", "service"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def first_party(name: str) -> str | None:
    """The module of ours ``name`` is, or lies in (``pki.x509.keys.KeyType`` -> ``pki.x509.keys``)."""
    while name and name not in modules():
        name = name.rpartition(".")[0]
    return name or None


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """The modules of ours that ``module`` imports, with the line: every ``import`` and ``from``
    statement, at the top, inside functions and under ``if TYPE_CHECKING`` alike."""
    path = modules()[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            names = [f"{base}.{alias.name}" for alias in node.names]  # a submodule, else a name in base
        else:
            continue
        for name in names:
            target = first_party(name)
            if target is not None and target != module:
                yield target, node.lineno


@cache
def import_graph() -> dict[str, set[str]]:
    return {module: {target for target, _ in imports_of(module)} for module in modules()}


def test_graph_sees_imports_at_the_top_inside_functions_and_relative() -> None:
    graph = import_graph()
    assert "pki.errors" in graph["pki.x509.keys"]  # at the top
    assert "pki.workload.client" in graph["service.cli.workload_commands"]  # inside a function
    assert "pki.aws.client" in graph["service.cli.aws_commands"]  # under TYPE_CHECKING and inside functions
    assert "service.cli.base" in graph["service.cli"]


@pytest.mark.parametrize(("who", "kind", "targets"), LAYERS, ids=[f"{w} {k} {','.join(t)}" for w, k, t in LAYERS])
def test_layers(who: str, kind: str, targets: tuple[str, ...]) -> None:
    importers = [m for m in modules() if matches(m, who)]
    assert importers, f"no module matches {who}"
    broken = []
    for module in importers:
        for target, line in imports_of(module):
            hit = any(matches(target, pattern) for pattern in targets)
            if hit == (kind == "never"):
                broken.append(f"{modules()[module].relative_to(ROOT)}:{line} imports {target}")
    assert not broken, f"{who} may {kind} import {', '.join(targets)}:\n" + "\n".join(broken)


def test_only_command_modules_import_command_modules() -> None:
    """The lazy-loading rule of service.cli: ``main`` reaches them through its table, by name."""
    def is_command_module(module: str) -> bool:
        return module.startswith("service.cli.") and module.endswith("_commands")

    broken = [f"{modules()[module].relative_to(ROOT)}:{line} imports {target}"
              for module in modules() if not is_command_module(module)
              for target, line in imports_of(module) if is_command_module(target)]
    assert not broken, "\n".join(broken)


def test_no_import_cycle() -> None:
    sorter = graphlib.TopologicalSorter(import_graph())
    try:
        sorter.prepare()
    except graphlib.CycleError as exc:
        pytest.fail("import cycle: " + " -> ".join(exc.args[1]))


# --- what a run of rapki loads --------------------------------------------------------------------------
PROBE = """
import contextlib, io, json, sys
from service.cli import main

code = 0
shown = io.StringIO()
with contextlib.redirect_stdout(shown):
    try:
        main(sys.argv[1:], prog_name="rapki")
    except SystemExit as exc:
        code = exc.code
print(json.dumps({"code": code, "stdout": shown.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_rapki(*args: str) -> tuple[int, str, str, list[str]]:
    """``rapki ARGS`` in a fresh interpreter: exit code, stdout, stderr, and every module it loaded."""
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0 and proc.stdout, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])
    return report["code"], report["stdout"], proc.stderr, report["modules"]


def heavy(loaded: list[str]) -> list[str]:
    return sorted({m.partition(".")[0] for m in loaded} & set(HEAVY))


def of(package: str, loaded: list[str]) -> list[str]:
    return [m for m in loaded if matches(m, package)]


@pytest.mark.e2e
def test_rapki_help_loads_no_command_module() -> None:
    code, out, _err, loaded = run_rapki("--help")
    assert code == 0 and "enroll" in out and "Redeem an enrollment token" in out
    assert heavy(loaded) == []
    assert of("service.cli.*", loaded) == ["service.cli", "service.cli.base"]
    assert of("pki.*", loaded) == ["pki", "pki.errors"]


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port on 127.0.0.1 that is bound but not listening: a connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.mark.e2e
def test_rapki_enroll_loads_the_workload_client_only(tmp_path: Path, closed_port: int) -> None:
    code, _out, err, loaded = run_rapki("enroll", "--url", f"https://127.0.0.1:{closed_port}", "--token", "t",
                                        "--out", str(tmp_path / "out"))
    assert code == 1 and "cannot reach" in err, err  # it got as far as the network
    assert "pki.workload.client" in loaded
    assert heavy(loaded) == []
    assert of("pki.ca.*", loaded) == of("pki.store.*", loaded) == of("pki.aws.*", loaded) == []
    assert of("service.cli.*", loaded) == ["service.cli", "service.cli.base", "service.cli.workload_commands"]


def write_self_signed(directory: Path) -> None:
    """cert.pem and key.pem as 'rapki enroll' writes them, valid for ten days from an hour ago."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "web-1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=10)).sign(key, hashes.SHA256()))
    directory.mkdir()
    (directory / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                          serialization.PrivateFormat.PKCS8,
                                                          serialization.NoEncryption()))


@pytest.mark.e2e
@pytest.mark.parametrize("how", [[], ["--signed"]], ids=["mutual-tls", "signed"])
def test_rapki_renew_loads_the_workload_client_only(tmp_path: Path, closed_port: int, how: list[str]) -> None:
    write_self_signed(tmp_path / "id")
    code, _out, err, loaded = run_rapki("renew", "--url", f"https://127.0.0.1:{closed_port}", "--cert-dir",
                                        str(tmp_path / "id"), "--force", *how)
    assert code == 1 and "cannot reach" in err, err
    assert "pki.workload.client" in loaded
    assert heavy(loaded) == []
    assert of("pki.ca.*", loaded) == of("pki.store.*", loaded) == of("pki.aws.*", loaded) == []


# --- the lazy table tells the truth -------------------------------------------------------------------
def command_modules() -> list[str]:
    return sorted(f"service.cli.{p.stem}" for p in (ROOT / "service" / "cli").glob("*_commands.py"))


def test_the_table_names_every_top_level_command_once() -> None:
    from service.cli import COMMANDS
    from service.cli.base import load_command

    loaded = {name: load_command(entry.target) for name, entry in COMMANDS.items()}
    assert {name: command.name for name, command in loaded.items()} == {name: name for name in COMMANDS}
    defined = set()
    for module_name in command_modules():
        for value in vars(importlib.import_module(module_name)).values():
            if isinstance(value, click.Command):
                defined.add(value)
    below = {sub for command in defined if isinstance(command, click.Group) for sub in command.commands.values()}
    top_level = defined - below
    assert sorted(c.name or "" for c in top_level) == sorted(COMMANDS), "a command is missing from the table"
    assert set(loaded.values()) == top_level


@pytest.mark.parametrize("limit", [20, 45, 60, 74, 90, 134])
def test_the_tables_short_help_is_the_commands(limit: int) -> None:
    from service.cli import COMMANDS
    from service.cli.base import load_command

    for name, entry in COMMANDS.items():
        assert make_default_short_help(entry.help, limit).strip() == load_command(entry.target).get_short_help_str(
            limit), f"the short help of {name!r} in service.cli.COMMANDS differs from its docstring"
