"""The audit log's hash chain: attacks on the database (edit, delete, reorder, rewrite) are named by
``rapki audit verify``, an untouched log verifies, exports verify offline, existing logs are chained
by the migration, and concurrent writers (threads, processes, replicas) keep one linear chain."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from click.testing import CliRunner, Result
from sqlalchemy import delete, func, select, text, update

from pki.auditchain import GENESIS, ChainHead, content_digest, entry_hash, read_json_lines, verify
from pki.ca.authority import CertificateAuthority
from pki.store import Database
from pki.store import publications as publication_rows
from pki.store.db import MIGRATIONS
from pki.store.schema import audit_chain, audit_log
from service.cli import main as rapki_main
from tests.conftest import make_ca

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def logged_ca(request: pytest.FixtureRequest, tmp_path: Path, passphrase_env: str,
              monkeypatch: pytest.MonkeyPatch) -> CertificateAuthority:
    """A CA on SQLite or PostgreSQL with a dozen audit entries: init, profile, issues, a revocation,
    CRL builds (so the revocation is neither first nor last)."""
    if request.param == "postgresql":
        monkeypatch.setenv("RAPKI_DATABASE_URL", request.getfixturevalue("pg_database_url"))
    ca = make_ca(tmp_path / "home")
    serials = [ca.issue("web", cn=f"web-{i}").serial_hex for i in range(4)]
    ca.revoke(serials[1], reason="keyCompromise")
    for _ in range(3):
        ca.build_crl()
    return ca


def rapki(ca: CertificateAuthority, *args: str) -> Result:
    """``rapki audit ...`` on ``ca``'s home (``--home`` after the subcommand, if any)."""
    at = 2 if args[1:2] in (("verify",), ("export",)) else 1
    return CliRunner().invoke(rapki_main, [*args[:at], "--home", str(ca.home.path), *args[at:]], prog_name="rapki")


def entry_number(ca: CertificateAuthority, action: str) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(select(func.min(audit_log.c.id)).where(audit_log.c.action == action)).scalar_one())


def count(ca: CertificateAuthority) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(audit_log)).scalar_one())


def failure(ca: CertificateAuthority, *args: str) -> str:
    """``rapki audit verify``'s error line: it must fail with exit 1."""
    result = rapki(ca, "audit", "verify", *args)
    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("rapki: error: ")]
    assert lines, result.stderr
    return lines[0].removeprefix("rapki: error: ")


# --- an untouched log -------------------------------------------------------------------------------
def test_an_untouched_log_verifies(logged_ca: CertificateAuthority) -> None:
    total = count(logged_ca)
    result = rapki(logged_ca, "audit", "verify")
    assert result.exit_code == 0, result.output
    head = logged_ca.audit_head()
    assert head is not None and head.seq == total
    assert result.stdout.splitlines() == [f"intact: {total} entries (1 to {total}), head {head}"]
    assert rapki(logged_ca, "audit", "verify", "--expect-head", str(head)).exit_code == 0
    with logged_ca.db.engine.connect() as conn:
        ids = conn.execute(select(audit_log.c.id).order_by(audit_log.c.id)).scalars().all()
    assert ids == list(range(1, total + 1))  # numbered without gaps


def test_the_listing_still_works_and_refuses_its_options_before_a_command(logged_ca: CertificateAuthority) -> None:
    listed = rapki(logged_ca, "audit", "--limit", "2")
    assert listed.exit_code == 0 and len(listed.stdout.splitlines()) == 2 and "crl.build" in listed.stdout
    mixed = CliRunner().invoke(rapki_main, ["audit", "--limit", "2", "verify"], prog_name="rapki")
    assert mixed.exit_code == 2 and "without a command" in mixed.stderr
    bad = rapki(logged_ca, "audit", "verify", "--expect-head", "12:nothex")
    assert bad.exit_code == 2 and "SEQ:HASH" in bad.stderr


# --- attacks, by direct SQL as someone with the database would ----------------------------------------
def test_an_edited_entry_is_named(logged_ca: CertificateAuthority) -> None:
    target = entry_number(logged_ca, "certificate.revoke")
    with logged_ca.db.engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == target).values(actor="cli:nobody"))
    assert failure(logged_ca) == f"entry {target} was edited (hash mismatch)"
    assert rapki(logged_ca, "audit", "verify").stdout.startswith(f"entries 1 to {target - 1} check out")


def test_an_edit_of_every_actor_names_the_first(logged_ca: CertificateAuthority) -> None:
    with logged_ca.db.engine.begin() as conn:
        conn.execute(text("UPDATE audit_log SET actor = 'cli:nobody' WHERE id > 2"))
    assert failure(logged_ca) == "entry 3 was edited (hash mismatch)"


def test_an_edited_entry_with_its_hash_recomputed_is_named(logged_ca: CertificateAuthority) -> None:
    target = entry_number(logged_ca, "certificate.revoke")
    with logged_ca.db.engine.begin() as conn:
        row = conn.execute(select(audit_log).where(audit_log.c.id == target)).one()
        forged = entry_hash(row.prev_hash, target, content_digest(row.at, "cli:nobody", row.action, row.target,
                                                                  row.details))
        conn.execute(update(audit_log).where(audit_log.c.id == target).values(actor="cli:nobody", hash=forged))
    assert failure(logged_ca).startswith(f"entry {target} was edited (its hash was recomputed")


def test_a_deleted_entry_is_named(logged_ca: CertificateAuthority) -> None:
    target = entry_number(logged_ca, "certificate.revoke")
    with logged_ca.db.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.action == "certificate.revoke"))
    assert failure(logged_ca) == (f"entry {target} is missing (chain breaks between {target - 1} and "
                                  f"{target + 1})")


def test_deleting_the_newest_entries_shows_against_the_head_row(logged_ca: CertificateAuthority) -> None:
    total = count(logged_ca)
    with logged_ca.db.engine.begin() as conn:
        conn.execute(delete(audit_log).where(audit_log.c.id >= total - 1))
    assert failure(logged_ca) == (f"entry {total - 1} is missing (the log ends at entry {total - 2}; "
                                  f"the chain head records entry {total})")


def test_reordered_entries_are_named(logged_ca: CertificateAuthority) -> None:
    first = entry_number(logged_ca, "certificate.revoke")
    with logged_ca.db.engine.begin() as conn:  # swap two entries' places (numbers), keeping their hashes
        conn.execute(update(audit_log).where(audit_log.c.id == first).values(id=-1))
        conn.execute(update(audit_log).where(audit_log.c.id == first + 1).values(id=first))
        conn.execute(update(audit_log).where(audit_log.c.id == -1).values(id=first + 1))
    assert failure(logged_ca) == f"entry {first} is out of order (it was recorded as entry {first + 1})"


def test_an_entry_moved_to_the_end_is_named(logged_ca: CertificateAuthority) -> None:
    first = entry_number(logged_ca, "certificate.revoke")
    with logged_ca.db.engine.begin() as conn:
        conn.execute(update(audit_log).where(audit_log.c.id == first).values(id=1000))
    assert failure(logged_ca) == f"entry {first} is out of order (it was moved to entry 1000)"


def _rewrite_from(ca: CertificateAuthority, start: int) -> None:
    """What an attacker with the database can do: change entry ``start`` and re-hash every entry
    after it, head row included. The chain is then consistent in itself."""
    with ca.db.engine.begin() as conn:
        rows = conn.execute(select(audit_log).where(audit_log.c.id >= start).order_by(audit_log.c.id)).all()
        prev = rows[0].prev_hash
        for row in rows:
            actor = "cli:nobody" if row.id == start else row.actor
            digest = entry_hash(prev, row.id, content_digest(row.at, actor, row.action, row.target, row.details))
            conn.execute(update(audit_log).where(audit_log.c.id == row.id)
                         .values(actor=actor, prev_hash=prev, hash=digest))
            prev = digest
        conn.execute(update(audit_chain).values(hash=prev))


def test_a_rewritten_chain_fails_against_a_head_kept_elsewhere(logged_ca: CertificateAuthority) -> None:
    kept = logged_ca.audit_head()
    assert kept is not None
    target = entry_number(logged_ca, "certificate.revoke")
    _rewrite_from(logged_ca, target)
    assert rapki(logged_ca, "audit", "verify").exit_code == 0  # alone, it cannot tell
    assert failure(logged_ca, "--expect-head", str(kept)) == (
        f"the chain does not contain the head {kept} given with --expect-head (entry {kept.seq} has hash "
        f"{logged_ca.audit_head().hash[:16]}...)")  # type: ignore[union-attr]


def test_a_rewritten_chain_fails_against_the_head_a_crl_publication_recorded(
        logged_ca: CertificateAuthority) -> None:
    head = logged_ca.audit_head()
    assert head is not None
    published_at = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    with logged_ca.db.engine.begin() as conn:  # as the publisher records it (pki.aws.publish)
        publication_rows.add(conn, issuer_id=logged_ca.issuer().id, anchor_arn="arn:aws:rolesanywhere:x",
                             crl_id="c", crl_arn=None, crl_name="n", crl_number=1, sha256="0" * 64, size=1,
                             published_at=published_at, audit_seq=head.seq, audit_hash=head.hash)
    intact = rapki(logged_ca, "audit", "verify")
    assert intact.exit_code == 0
    assert f"holds the head {head.seq} recorded by the CRL publication of {published_at.isoformat()}" in intact.stdout
    _rewrite_from(logged_ca, 3)
    assert failure(logged_ca).startswith(f"the chain does not contain the head {head} recorded by the CRL publication of")


# --- export --------------------------------------------------------------------------------------------
def test_the_export_verifies_offline_and_names_a_tampered_line(logged_ca: CertificateAuthority,
                                                               tmp_path: Path) -> None:
    out = tmp_path / "audit.jsonl"
    assert rapki(logged_ca, "audit", "export", "--json", "--out", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    entries = list(read_json_lines(lines))
    assert [e["seq"] for e in entries] == list(range(1, count(logged_ca) + 1))  # oldest first
    report = verify(entries)
    assert report.ok and report.head == logged_ca.audit_head()
    # Incremental shipping: the lines after the last one shipped verify on their own, from that head.
    later = rapki(logged_ca, "audit", "export", "--after-id", "5").stdout.splitlines()
    assert later == lines[5:]
    assert verify(read_json_lines(later), after=ChainHead(5, entries[4]["hash"])).ok
    assert rapki(logged_ca, "audit", "export", "--since", "1h").stdout.splitlines() == lines
    assert rapki(logged_ca, "audit", "export", "--since", "2999-01-01T00:00:00").stdout == ""
    # A line edited on its way (or in the SIEM) is named.
    target = next(e["seq"] for e in entries if e["action"] == "certificate.revoke")
    edited = [line.replace('"reason":"keyCompromise"', '"reason":"superseded"') for line in lines]
    assert edited != lines
    tampered = verify(read_json_lines(edited))
    assert tampered.problem == f"entry {target} was edited (hash mismatch)" and tampered.bad_entry == target
    dropped = verify(read_json_lines(lines[:target - 1] + lines[target:]))
    assert dropped.problem == f"entry {target} is missing (chain breaks between {target - 1} and {target + 1})"


def test_the_hash_is_the_documented_encoding() -> None:
    """What docs/audit.md tells an outside verifier, computed by hand here."""
    import hashlib
    import json

    at = datetime(2025, 1, 2, 3, 4, 5, 6, tzinfo=UTC)
    content = json.dumps(["rapki-audit-1", "2025-01-02T03:04:05.000006+00:00", "cli:alice", "certificate.revoke",
                          "1f", {"reason": "keyCompromise"}], separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(content.encode()).hexdigest()
    assert content_digest(at, "cli:alice", "certificate.revoke", "1f", {"reason": "keyCompromise"}) == digest
    assert entry_hash(GENESIS, 1, digest) == hashlib.sha256(f"{GENESIS} 1 {digest}".encode()).hexdigest()


# --- the migration chains an existing log ----------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_the_migration_numbers_and_chains_existing_entries(backend: str, tmp_path: Path,
                                                           request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_database_url") if backend == "postgresql" else f"sqlite:///{tmp_path / 'x.db'}"
    db = Database(url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    with db.engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0002")
        for old_id, actor in ((3, "cli:a"), (7, "cli:b"), (8, "cli:c")):  # gaps, as rolled-back ids leave
            conn.execute(text("INSERT INTO audit_log (id, at, actor, action, target, details) "
                              "VALUES (:id, :at, :actor, 'profile.add', 'p', :details)"),
                         {"id": old_id, "at": datetime(2025, 1, 1, tzinfo=UTC), "actor": actor,
                          "details": '{"n": 1}'})
    db.migrate()
    with db.engine.connect() as conn:
        from pki.store import audit as audit_rows

        entries = list(audit_rows.chain(conn))
        head = audit_rows.head(conn)
    assert [(e["seq"], e["actor"]) for e in entries] == [(1, "cli:a"), (2, "cli:b"), (3, "cli:c")]
    report = verify(entries, head=head)
    assert report.ok and head == ChainHead(3, entries[-1]["hash"])
    with db.engine.begin() as conn:  # and the chain goes on from there
        audit_rows.add(conn, at=datetime.now(UTC), actor="cli:d", action="profile.add", target="q", details=None)
        entries = list(audit_rows.chain(conn))
        assert verify(entries, head=audit_rows.head(conn)).ok and entries[-1]["seq"] == 4
    db.dispose()


# --- concurrent writers ------------------------------------------------------------------------------
WRITER = textwrap.dedent("""
    import sys
    from pki.ca.authority import CertificateAuthority
    ca = CertificateAuthority.open(sys.argv[1])
    if sys.argv[3] == "serialized":
        ca.db.serialize_writers(ca.home.path / "writer.lock")
    for i in range(int(sys.argv[2])):
        serial = ca.issue("web", cn=f"web-{i}").serial_hex
        if i % 5 == 0:
            ca.revoke(serial)  # a write on the Core path, beside the prepared issuance path
""")


def _concurrent_writers(ca: CertificateAuthority, processes: int, each: int, mode: str) -> None:
    before = count(ca)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(ca.home.path), str(each), mode], cwd=ROOT)
             for _ in range(processes)]
    for proc in procs:
        assert proc.wait(timeout=240) == 0
    revokes = processes * len(range(0, each, 5))
    assert count(ca) == before + processes * each + revokes
    result = ca.verify_audit_log()
    assert result.ok, result.problems
    assert result.report.entries == count(ca) and result.report.head == ca.audit_head()


@pytest.mark.e2e
def test_concurrent_processes_keep_one_chain_sqlite(ca: CertificateAuthority) -> None:
    # Half the processes take the writer lock (as 'rapki serve' does), half meet SQLite's own lock.
    _concurrent_writers(ca, 2, 30, "serialized")
    _concurrent_writers(ca, 3, 20, "plain")


@pytest.mark.e2e
@pytest.mark.postgres
def test_concurrent_replicas_keep_one_chain_postgresql(tmp_path: Path, passphrase_env: str, pg_database_url: str,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    ca = make_ca(tmp_path / "home")
    _concurrent_writers(ca, 4, 30, "plain")


def test_concurrent_threads_keep_one_chain_sqlite(ca: CertificateAuthority) -> None:
    import threading

    ca.db.serialize_writers(ca.home.path / "writer.lock")
    errors: list[BaseException] = []

    def issue(worker: int) -> None:
        try:
            for i in range(25):
                ca.issue("web", cn=f"web-{worker}{i}")
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    result = ca.verify_audit_log()
    assert result.ok and result.report.entries == count(ca), result.problems


def test_appending_on_postgresql_is_one_statement() -> None:
    """No round trip of its own to read the previous hash: the head row's update and the insert
    are one statement, as the audit row alone was before the chain."""
    from sqlalchemy.dialects.postgresql import psycopg

    from pki.store import audit as audit_rows

    entry = audit_rows.prepare(psycopg.dialect(), at=datetime.now(UTC), actor="cli:a", action="certificate.issue",
                               target="1f", details={"cn": "web-1"})
    [statement] = entry.statements
    sql = " ".join(statement.sql.split())
    assert sql.startswith("WITH head AS (UPDATE audit_chain") and "INSERT INTO audit_log" in sql
