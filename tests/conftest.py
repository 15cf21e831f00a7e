"""Shared fixtures: a CA in a temporary home, a fresh PostgreSQL database, independent validators."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.x509.keys import KeyType
from pki.x509.profiles import Profile

pytest_plugins: list[str] = ["tests.emulator_fixture"]

PASSPHRASE = "test-passphrase-not-secret"
PG_ADMIN_URL = os.environ.get("RAPKI_TEST_PG_ADMIN", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


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
    yield url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n"),
                     {"n": name})
        conn.execute(sqlalchemy.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()
