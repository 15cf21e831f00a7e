"""The inventory at scale: bulk seeding through pki.store, and pruning expired certificates
(``rapki prune``) without breaking the audit chain or the CRLs."""

from __future__ import annotations

import base64
import importlib.machinery
import importlib.util
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from cryptography import x509

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.errors import InvalidInput
from pki.store import certificates as certificate_rows
from service.cli import main
from tests.conftest import PASSPHRASE, make_ca

ROOT = Path(__file__).resolve().parent.parent


def load_script(name: str) -> Any:
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(ROOT / "scripts" / name))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def add_rows(ca: CertificateAuthority, specs: list[tuple[str, timedelta, bool]]) -> None:
    """Rows (serial, notAfter relative to now, revoked) sharing one real certificate's DER."""
    record = ca.find(ca.issue("web", cn="web-0").serial_hex)
    now = datetime.now(UTC).replace(microsecond=0)
    rows = [{"issuer_id": ca.issuer().id, "serial": serial, "subject": "CN=web-1", "common_name": "web-1",
             "sans": [], "profile": "web", "key_type": "ec-p256", "not_before": now + offset - timedelta(days=1),
             "not_after": now + offset, "revoked_at": now + offset - timedelta(hours=1) if revoked else None,
             "revocation_reason": "keyCompromise" if revoked else None, "superseded_by": None,
             "fingerprint": record.fingerprint, "der": record.der, "created_at": now + offset - timedelta(days=1)}
            for serial, offset, revoked in specs]
    with ca.db.engine.begin() as conn:
        certificate_rows.insert_many(conn, rows)


SPECS = [("a1", -timedelta(days=200), False), ("a2", -timedelta(days=100), True),  # expired long ago
         ("b1", -timedelta(days=10), False), ("b2", -timedelta(days=10), True),  # expired recently
         ("c1", timedelta(days=5), True), ("c2", timedelta(days=5), False)]  # unexpired


def serials(ca: CertificateAuthority) -> set[str]:
    return {r.serial for r in ca.list_certificates()}


def test_prune_deletes_only_long_expired_certificates_and_keeps_crl_and_audit_chain(ca: CertificateAuthority,
                                                                                     tmp_path: Path) -> None:
    add_rows(ca, SPECS)
    crl_before = {e.serial_number for e in ca.build_crl().crl}
    cutoff = datetime.now(UTC) - timedelta(days=90)
    dry = ca.prune_expired(cutoff, dry_run=True)
    assert (dry.count, dry.dry_run) == (2, True)
    assert {"a1", "a2"} <= serials(ca)  # a dry run changes nothing
    with (tmp_path / "archive.jsonl").open("ab") as sink:
        result = ca.prune_expired(cutoff, archive=sink)
    assert result.count == 2
    left = serials(ca)
    assert not {"a1", "a2"} & left and {"b1", "b2", "c1", "c2"} <= left
    assert {e.serial_number for e in ca.build_crl().crl} == crl_before == {0xc1}  # only revoked and unexpired
    lines = [json.loads(line) for line in (tmp_path / "archive.jsonl").read_text().splitlines()]
    assert [line["serial"] for line in lines] == ["a1", "a2"]
    assert lines[1]["status"] == "revoked" and lines[1]["revocation_reason"] == "keyCompromise"
    x509.load_der_x509_certificate(base64.b64decode(lines[0]["der"]))  # the certificate itself is kept
    verification = ca.verify_audit_log()
    assert verification.ok, verification.problems
    pruned = ca.audit_entries(10, action="certificate.prune")
    assert len(pruned) == 1 and pruned[0]["details"]["deleted"] == 2 and pruned[0]["target"] == "a1..a2"
    assert ca.prune_expired(cutoff).count == 0  # nothing more to do, and nothing audited for it
    assert len(ca.audit_entries(10, action="certificate.prune")) == 1


def test_prune_in_batches_audits_each_batch(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("pki.ca._inventory.PRUNE_BATCH", 2)
    add_rows(ca, [(f"e{i}", -timedelta(days=30 + i), False) for i in range(5)])
    assert ca.prune_expired(datetime.now(UTC) - timedelta(days=1)).count == 5
    assert [e["details"]["deleted"] for e in ca.audit_entries(10, action="certificate.prune")] == [1, 2, 2]
    assert ca.verify_audit_log().ok


def test_prune_refuses_a_cutoff_in_the_future(ca: CertificateAuthority) -> None:
    add_rows(ca, SPECS)
    with pytest.raises(InvalidInput, match="future"):
        ca.prune_expired(datetime.now(UTC) + timedelta(days=1))
    assert {"c1", "c2"} <= serials(ca)


def test_prune_command(ca: CertificateAuthority, tmp_path: Path) -> None:
    add_rows(ca, SPECS)
    home = str(ca.home.path)
    runner = CliRunner()
    dry = runner.invoke(main, ["prune", "--home", home, "--expired-before", "90d", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["count"] == 2
    archive = tmp_path / "old.jsonl"
    done = runner.invoke(main, ["prune", "--home", home, "--expired-before", "7d", "--archive", str(archive)])
    assert done.exit_code == 0, done.output
    assert done.output.startswith("deleted 4 certificate(s) expired before") and str(archive) in done.output
    assert len(archive.read_text().splitlines()) == 4
    bad = runner.invoke(main, ["prune", "--home", home, "--expired-before", "soon"])
    assert bad.exit_code == 2 and "Traceback" not in bad.output
    unwritable = runner.invoke(main, ["prune", "--home", home, "--expired-before", "1d",
                                      "--archive", str(tmp_path / "missing" / "a.jsonl")])
    assert unwritable.exit_code == 2 and "cannot write the archive" in unwritable.output


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_seeded_inventory_is_a_valid_ca(backend: str, tmp_path: Path, passphrase_env: str,
                                        request: pytest.FixtureRequest) -> None:
    url = request.getfixturevalue("pg_database_url") if backend == "postgresql" else ""
    ca = load_script("seed-inventory").seed(400, home=tmp_path / "home", database_url=url, batch=150,
                                                span=timedelta(days=40))
    assert ca.verify_audit_log().ok  # the chain made in Python is the one the database makes
    ca.revoke(ca.list_certificates(status="active", limit=1)[0].serial)  # and goes on from it
    assert ca.verify_audit_log().ok
    statuses = {r.status() for r in ca.list_certificates()}
    assert statuses == {"active", "superseded", "revoked", "expired"}
    with ca.db.engine.connect() as conn:
        plan = certificate_rows.plan_of_revoked_unexpired(conn, ca.issuer().id, datetime.now(UTC))
        assert certificate_rows.count(conn) >= 400
    assert "ix_certificates_revoked" in plan
    assert ca.build_crl().entries == len(ca.list_certificates(status="revoked")) - len(
        [r for r in ca.list_certificates(status="revoked") if r.not_after <= datetime.now(UTC)])


def test_seeding_is_repeatable(tmp_path: Path, passphrase_env: str) -> None:
    seeder = load_script("seed-inventory")
    made = [seeder.seed(200, home=tmp_path / name / "home", seed_value=3) for name in ("one", "two")]
    first, second = ([(r.serial, r.profile, r.status()) for r in ca.list_certificates()][24:] for ca in made)
    assert first == second


def test_fresh_home_has_the_not_after_index(tmp_path: Path, passphrase_env: str) -> None:
    ca = CertificateAuthority.init(tmp_path / "home", InitOptions(), passphrase=PASSPHRASE.encode())
    from sqlalchemy import inspect

    assert "ix_certificates_not_after" in {i["name"] for i in inspect(ca.db.engine).get_indexes("certificates")}


def test_prune_on_postgresql(pg_database_url: str, tmp_path: Path, passphrase_env: str) -> None:
    ca = make_ca(tmp_path / "home", database_url=pg_database_url)
    add_rows(ca, SPECS)
    assert ca.prune_expired(datetime.now(UTC) - timedelta(days=7), dry_run=True).count == 4
    assert ca.prune_expired(datetime.now(UTC) - timedelta(days=7)).count == 4
    assert {"c1", "c2"} <= serials(ca) and not {"a1", "a2", "b1", "b2"} & serials(ca)
    assert {e.serial_number for e in ca.build_crl().crl} == {0xc1}
    assert ca.verify_audit_log().ok
