"""Enrollment and operator tokens: shown once, stored hashed, bound, redeemed atomically."""

from __future__ import annotations

import json
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore, TokenUsed, hash_token
from pki.errors import Conflict, Forbidden, InvalidInput, NotFound, PolicyViolation, Unauthenticated
from pki.store.schema import certificates, enrollment_tokens
from service.cli import main


def _db_text(ca: CertificateAuthority) -> bytes:
    """Everything in the database file, WAL included, as bytes: to look for secrets."""
    ca.db.dispose()
    path = ca.home.path / "rapki.db"
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(FULL)")
    conn.close()
    return path.read_bytes()


def test_token_shown_once_only_hash_stored(ca: CertificateAuthority) -> None:
    created = TokenStore(ca).create("web", cn="web-1")
    secret = created.token.split(".")[1]
    assert created.token.startswith("rpk_e_") and len(secret) == 43  # 256 bits
    with ca.db.engine.connect() as conn:
        row = conn.execute(select(enrollment_tokens)).one()
    assert row.token_hash == hash_token(created.token)
    stored = _db_text(ca)
    assert secret.encode() not in stored and created.token.encode() not in stored
    entries = json.dumps(ca.audit_entries())
    assert secret not in entries and "token.create" in entries


def test_redeem_once_in_the_certificate_transaction(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    token = store.create("web", cn="web-1").token
    record = store.authenticate(token)
    ca.issue("web", cn="web-1", within=store.redeemer(token), actor=f"test:{record.id}")
    with pytest.raises(TokenUsed):
        store.authenticate(token)
    # A redemption that loses (the use is gone) rolls the certificate back.
    with pytest.raises(Conflict):
        ca.issue("web", cn="web-1", within=store.redeemer(token))
    with ca.db.engine.connect() as conn:
        assert len(conn.execute(select(certificates)).all()) == 1


def test_refused_issuance_does_not_consume(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    token = store.create("web", cn_pattern=r".*").token
    with pytest.raises(PolicyViolation):  # outside the profile's pattern: refused before the transaction
        ca.issue("web", cn="db-1", within=store.redeemer(token))
    assert store.authenticate(token).uses_left == 1


def test_binding_profile_and_cn(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    exact = store.authenticate(store.create("web", cn="web-1").token)
    store.check_binding(exact, None, "web-1")
    with pytest.raises(Forbidden):
        store.check_binding(exact, None, "web-2")
    with pytest.raises(Forbidden):
        store.check_binding(exact, "other", "web-1")
    pattern = store.authenticate(store.create("web", cn_pattern=r"web-1[0-9]").token)
    store.check_binding(pattern, "web", "web-12")
    with pytest.raises(Forbidden):
        store.check_binding(pattern, None, "web-2")


def test_creation_refuses_what_could_never_be_redeemed(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    with pytest.raises(NotFound):
        store.create("nope", cn="web-1")
    with pytest.raises(PolicyViolation):
        store.create("web", cn="db-1")
    with pytest.raises(InvalidInput):
        store.create("web", cn="web-1", cn_pattern="web-.*")
    with pytest.raises(InvalidInput):
        store.create("web", cn="web-1", ttl=timedelta(days=31))
    with pytest.raises(InvalidInput):
        store.create("web", cn_pattern="web-(")


def test_wrong_secret_and_revoked(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    created = store.create("web", cn="web-1")
    forged = created.token[:-1] + ("A" if created.token[-1] != "A" else "B")
    with pytest.raises(Unauthenticated):
        store.authenticate(forged)
    with pytest.raises(Conflict):  # the conditional UPDATE checks the hash too
        ca.issue("web", cn="web-1", within=store.redeemer(forged))
    store.revoke(created.record.id)
    with pytest.raises(Unauthenticated, match="revoked"):
        store.authenticate(created.token)
    assert [t.id for t in store.list_tokens()] == []
    assert [t.status() for t in store.list_tokens(include_inactive=True)] == ["revoked"]


def test_operator_tokens(ca: CertificateAuthority) -> None:
    store = TokenStore(ca)
    created = store.create_operator("alice", ttl=timedelta(days=1))
    assert store.authenticate_operator(created.token).name == "alice"
    with pytest.raises(Unauthenticated):  # an enrollment token is not an operator token
        store.authenticate_operator(store.create("web", cn="web-1").token)
    store.revoke_operator(created.record.id)
    with pytest.raises(Unauthenticated):
        store.authenticate_operator(created.token)


def test_cli_token_create_list_revoke(ca: CertificateAuthority) -> None:
    runner = CliRunner()
    home = str(ca.home.path)
    made = runner.invoke(main, ["token", "create", "--home", home, "--profile", "web", "--cn", "web-5",
                                "--ttl", "10m", "--uses", "2", "--json"])
    assert made.exit_code == 0, made.output
    info = json.loads(made.output)
    assert info["uses_left"] == 2 and info["token"].startswith("rpk_e_")
    listed = runner.invoke(main, ["token", "list", "--home", home, "--json"])
    assert [t["id"] for t in json.loads(listed.output)] == [info["id"]]
    assert info["token"] not in listed.output
    assert runner.invoke(main, ["token", "revoke", "--home", home, info["id"]]).exit_code == 0
    bad = runner.invoke(main, ["token", "create", "--home", home, "--profile", "web", "--cn", "db-1"])
    assert bad.exit_code == 2 and "rapki: error:" in bad.output
    op = runner.invoke(main, ["operator", "token", "create", "--home", home, "--name", "ci", "--json"])
    assert op.exit_code == 0 and json.loads(op.output)["token"].startswith("rpk_o_")


def test_postgres_redemption_is_atomic(pg_database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       passphrase_env: str) -> None:
    """The same conditional UPDATE under PostgreSQL's row locks: many threads, one use."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import make_ca

    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    pg_ca = make_ca(tmp_path / "pg-home")
    store = TokenStore(pg_ca)
    token = store.create("web", cn="web-1").token
    assert store.authenticate(token).uses_left == 1  # the look-up (Database.query) on PostgreSQL

    def attempt(_: int) -> str:
        try:
            pg_ca.issue("web", cn="web-1", within=store.redeemer(token))
            return "issued"
        except Conflict:
            return "refused"

    with ThreadPoolExecutor(max_workers=6) as pool:
        outcomes = sorted(pool.map(attempt, range(6)))
    assert outcomes == ["issued"] + ["refused"] * 5
    with pytest.raises(Conflict, match="already used"):
        store.authenticate(token)


def test_token_statements_compile_for_sqlite_and_postgresql() -> None:
    """The look-up and redemption run precompiled on the DBAPI cursor: only named parameters, for
    either dialect (a literal turned into a bind parameter would be sent unconverted)."""
    from sqlalchemy import create_engine

    from pki.store.tokens import REDEEM, SELECT_ENROLLMENT

    for url in ("sqlite://", "postgresql+psycopg://nobody@127.0.0.1:1/none"):
        dialect = create_engine(url).dialect
        sql, _positional, binds, _results = REDEEM._for(dialect)
        assert set(binds) == {"token_id", "digest", "now", "used_at"}
        assert "uses_left - 1" in sql and "uses_left > 0" in sql
        assert SELECT_ENROLLMENT._for(dialect)[0].count("enrollment_tokens.") >= 12


def test_database_errors_surface_as_sqlalchemy_errors(ca: CertificateAuthority) -> None:
    """A failing look-up or redemption raises SQLAlchemy's OperationalError (the API answers 503 for
    it), not the driver's own exception, and never with the token hash in the message."""
    from sqlalchemy.exc import OperationalError

    store = TokenStore(ca)
    token = store.create("web", cn="web-1").token
    with ca.db.engine.begin() as conn:
        conn.exec_driver_sql("ALTER TABLE enrollment_tokens RENAME TO enrollment_tokens_gone")
    with pytest.raises(OperationalError) as look_up:
        store.authenticate(token)
    with pytest.raises(OperationalError) as redemption:
        ca.issue("web", cn="web-1", within=store.redeemer(token))
    for failure in (look_up, redemption):
        assert hash_token(token) not in str(failure.value) and token not in str(failure.value)
