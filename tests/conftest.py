"""Shared fixtures (a CA in a temporary home, a fresh PostgreSQL database) and the unit/e2e split.

Every test is marked ``unit`` or ``e2e`` at collection (tests/README.md says which is which): ``e2e``
when its module or the test says so, or when it uses a fixture that starts a server process
(``E2E_FIXTURES``); ``unit`` otherwise. A ``unit`` test that starts one of this project's programs
fails, naming the command, so a missing ``e2e`` mark cannot go unnoticed.
"""

from __future__ import annotations

import os
import re
import secrets
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.x509.keys import KeyType
from pki.x509.profiles import Profile
from tests.softhsm_fixture import SoftHsmToken, private_token

pytest_plugins: list[str] = ["tests.emulator_fixture"]

PASSPHRASE = "test-passphrase-not-secret"
PG_ADMIN_URL = os.environ.get("RAPKI_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parent.parent
E2E_FIXTURES = frozenset({"emulator"})  # fixtures that start a server process


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by these marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        uses = getattr(item, "fixturenames", ())
        if item.get_closest_marker("e2e") is None and E2E_FIXTURES.intersection(uses):
            item.add_marker(pytest.mark.e2e)
        if item.get_closest_marker("e2e") is None:
            item.add_marker(pytest.mark.unit)


def starts_project_program(args: Sequence[str]) -> bool:
    """Whether a command runs one of this project's programs: its console scripts (also behind a
    wrapper such as faketime), a script from ``scripts/``, or Python code naming ``pki``/``service``."""
    for i, arg in enumerate(args):
        path = Path(arg)
        if path.name in ("rapki", "rapki-signer") or (path.is_absolute() and ROOT / "scripts" in path.parents):
            return True
        if i and args[i - 1] in ("-c", "-m") and re.search(r"\b(pki|service)\b", arg):
            return True
    return False


_running_unit_test: list[str] = []  # the node id of the unit test running now, if one is


def _refuse_programs_in_unit_tests(event: str, hook_args: tuple[Any, ...]) -> None:
    if event != "subprocess.Popen" or not _running_unit_test:
        return
    command = hook_args[1]
    args = [os.fsdecode(command)] if isinstance(command, str | bytes | os.PathLike) else [os.fsdecode(a) for a in command]
    if starts_project_program(args):
        raise RuntimeError(f"{_running_unit_test[0]} starts {args[:3]}: mark the test e2e (tests/README.md)")


sys.addaudithook(_refuse_programs_in_unit_tests)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item) -> Iterator[object]:
    """A unit test (its fixtures included) starts none of this project's programs."""
    if item.get_closest_marker("unit") is not None:
        _running_unit_test.append(item.nodeid)
    try:
        return (yield)
    finally:
        _running_unit_test.clear()


@pytest.fixture
def passphrase_env(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    return PASSPHRASE


def make_ca(home: Path, key_type: KeyType = KeyType.EC_P256, **options: object) -> CertificateAuthority:
    ca = CertificateAuthority.init(home, InitOptions(key_type=key_type, **options),  # type: ignore[arg-type]
                                   passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+", san_dns_patterns=(r"[a-z0-9-]+\.example\.com",),
                           san_uri_patterns=(r"https://example\.com/.+",)))
    return ca


@pytest.fixture
def ca(tmp_path: Path, passphrase_env: str) -> CertificateAuthority:
    """An EC P-256 CA with a profile ``web`` (CN web-N, DNS *.example.com, URI https://example.com/...)."""
    return make_ca(tmp_path / "home")


@pytest.fixture(scope="session")
def softhsm_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """A private SoftHSM2 token for the session (tests/softhsm_fixture.py): one per process, as a
    PKCS#11 module reads its configuration once. Tests tell their keys apart by label."""
    yield from private_token(tmp_path_factory)


@pytest.fixture
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test, dropped afterwards."""
    sqlalchemy = pytest.importorskip("sqlalchemy")
    admin = sqlalchemy.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"rapki_test_{secrets.token_hex(6)}"
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    opened: list[Any] = []  # the test's connections to its database: the CAs it opens are never closed

    def remember(dbapi_connection: Any, _record: Any) -> None:
        if getattr(getattr(dbapi_connection, "info", None), "dbname", None) == name:
            opened.append(dbapi_connection)

    sqlalchemy.event.listen(sqlalchemy.pool.Pool, "connect", remember)
    try:
        yield url
    finally:
        sqlalchemy.event.remove(sqlalchemy.pool.Pool, "connect", remember)
        for connection in opened:  # closed here, not left to the garbage collector (a ResourceWarning)
            connection.close()
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                     {"n": name})
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, str]:
    """Credentials that sign requests and are worth nothing; no profile of this machine is read."""
    values = {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLEEXAMPLE00", "AWS_SECRET_ACCESS_KEY": "dummy-secret",
              "AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
              "AWS_EC2_METADATA_DISABLED": "true", "RAPKI_PASSPHRASE": PASSPHRASE}
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "RAPKI_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


@pytest.fixture(scope="module")
def kms_url() -> Iterator[str]:
    """moto's KMS on 127.0.0.1 with DIGEST signing and ML-DSA keys (service/emulator/kms.py)."""
    from service.emulator.kms import kms_server

    with kms_server() as url:
        yield url
