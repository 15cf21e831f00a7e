"""Revocation, inventory and CRLs: CRLNumber discipline, size budget, independent validation."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from sqlalchemy import insert, update

import pki.x509.crl
from pki.ca.authority import CertificateAuthority
from pki.errors import CrlTooLarge, InvalidInput, NotFound
from pki.store.schema import certificates, crl_state
from tests.conftest import make_ca
from tests.validators import lint_crl, openssl_verify


def test_revoked_leaf_is_rejected_by_openssl_with_the_crl(ca: CertificateAuthority, tmp_path: Path) -> None:
    good = ca.issue("web", cn="web-1").write_to(tmp_path / "good")
    bad_issued = ca.issue("web", cn="web-2")
    bad = bad_issued.write_to(tmp_path / "bad")
    ca.revoke(bad_issued.serial_hex, reason="keyCompromise")
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(ca.build_crl().pem)
    assert lint_crl(crl_path) == ""
    trust = tmp_path / "trust.pem"
    trust.write_bytes(ca.home.root_cert_path.read_bytes() + good["chain"].read_bytes())
    ok = openssl_verify(good["certificate"], root=trust, crl=crl_path)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = openssl_verify(bad["certificate"], root=trust, crl=crl_path)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr


def test_crl_content(ca: CertificateAuthority) -> None:
    a, b = ca.issue("web", cn="web-1"), ca.issue("web", cn="web-2")
    ca.revoke(a.serial_hex, reason="key-compromise")
    ca.revoke(b.serial_hex)
    crl = ca.build_crl().crl
    issuer = ca.issuer().certificate
    assert crl.issuer == issuer.subject
    assert crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    assert crl.next_update_utc is not None and crl.next_update_utc - crl.last_update_utc == timedelta(days=7)
    entry_a = crl.get_revoked_certificate_by_serial_number(a.certificate.serial_number)
    entry_b = crl.get_revoked_certificate_by_serial_number(b.certificate.serial_number)
    assert entry_a is not None and entry_b is not None
    assert entry_a.extensions.get_extension_for_class(x509.CRLReason).value.reason is x509.ReasonFlags.key_compromise
    assert len(entry_b.extensions) == 0  # "unspecified" is left out (RFC 5280 5.3.1)


def test_crl_numbers_strictly_increase(ca: CertificateAuthority) -> None:
    numbers = [ca.build_crl().number for _ in range(3)]
    assert numbers == [1, 2, 3]
    number = ca.build_crl().crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 4 and ca.crl_state()["crl_number"] == 4


def _concurrent_builds(home: Path, threads: int = 4, each: int = 5) -> list[int]:
    numbers: list[int] = []
    lock = threading.Lock()
    errors: list[BaseException] = []

    def build() -> None:
        try:
            local = CertificateAuthority.open(home)
            for _ in range(each):
                n = local.build_crl().number
                with lock:
                    numbers.append(n)
        except BaseException as exc:  # reported below
            errors.append(exc)

    workers = [threading.Thread(target=build) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert not errors, errors
    return numbers


def test_concurrent_crl_builds_never_reuse_a_number_sqlite(ca: CertificateAuthority) -> None:
    numbers = _concurrent_builds(ca.home.path)
    assert sorted(numbers) == list(range(1, 21))


def test_concurrent_crl_builds_never_reuse_a_number_postgresql(tmp_path: Path, passphrase_env: str,
                                                               pg_database_url: str,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    ca = make_ca(tmp_path / "home")
    numbers = _concurrent_builds(ca.home.path)
    assert sorted(numbers) == list(range(1, 21))


def test_expired_entries_leave_the_crl(ca: CertificateAuthority) -> None:
    issued = ca.issue("web", cn="web-1")
    ca.revoke(issued.serial_hex)
    with ca.db.engine.begin() as conn:
        conn.execute(update(certificates).values(not_after=datetime.now(UTC) - timedelta(seconds=1)))
    assert ca.build_crl().entries == 0
    assert ca.find(issued.serial_hex).status() == "revoked"


def test_revoke_twice_is_reported_not_duplicated(ca: CertificateAuthority) -> None:
    issued = ca.issue("web", cn="web-1")
    first = ca.revoke(issued.serial_hex, reason="superseded")
    second = ca.revoke(issued.serial_hex, reason="keyCompromise")
    assert not first.already_revoked and second.already_revoked
    assert second.record.revocation_reason == "superseded"
    revokes = [e for e in ca.audit_entries() if e["action"] == "certificate.revoke"]
    assert len(revokes) == 1 and revokes[0]["target"] == issued.serial_hex
    assert ca.build_crl().entries == 1


def test_revoke_unknown_or_malformed_serial(ca: CertificateAuthority) -> None:
    with pytest.raises(NotFound):
        ca.revoke("abcdef")
    with pytest.raises(InvalidInput):
        ca.revoke("not-a-serial")
    with pytest.raises(InvalidInput, match="unknown revocation reason"):
        ca.revoke("abcdef", reason="because")


def test_oversize_crl_fails_without_dropping_or_consuming_a_number(ca: CertificateAuthority,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        ca.revoke(ca.issue("web", cn=f"web-{i}").serial_hex)
    ca.build_crl()
    monkeypatch.setattr(pki.x509.crl, "ROLES_ANYWHERE_CRL_LIMIT", 500)
    with pytest.raises(CrlTooLarge, match="3 entries") as excinfo:
        ca.build_crl()
    assert "Remedies" in str(excinfo.value)
    assert ca.crl_state()["crl_number"] == 1 and ca.crl_state()["entries"] == 3
    monkeypatch.undo()
    assert ca.build_crl().number == 2


def test_real_roles_anywhere_limit(ca: CertificateAuthority) -> None:
    """Past 300,000 bytes of PEM the build fails; about 5,600 20-byte-serial entries fit (spec §2)."""
    issuer = ca.issuer()
    now = datetime.now(UTC)
    template = ca.find(ca.issue("web", cn="web-1").serial_hex)
    rows = [
        {"issuer_id": issuer.id, "serial": format((1 << 150) + i, "x"), "subject": "CN=x", "common_name": "x",
         "sans": [], "profile": "web", "key_type": "ec-p256", "not_before": now, "not_after": now + timedelta(days=1),
         "revoked_at": now, "revocation_reason": "keyCompromise", "fingerprint": f"{i:064x}", "der": template.der,
         "created_at": now}
        for i in range(6000)
    ]
    with ca.db.engine.begin() as conn:
        conn.execute(insert(certificates), rows)
    with pytest.raises(CrlTooLarge, match="6,000 entries"):
        ca.build_crl()
    expired = [format((1 << 150) + i, "x") for i in range(1000)]
    with ca.db.engine.begin() as conn:
        conn.execute(update(certificates).values(revocation_reason="unspecified"))
        conn.execute(update(certificates).where(certificates.c.serial.in_(expired))
                     .values(not_after=now - timedelta(seconds=1)))
    built = ca.build_crl()  # without reason codes and expired entries, the rest fits
    assert built.entries == 5000 and len(built.pem) <= 300_000


def test_list_filters(ca: CertificateAuthority) -> None:
    a = ca.issue("web", cn="web-1", ttl=timedelta(days=2))
    b = ca.issue("web", cn="web-2", ttl=timedelta(days=20))
    ca.revoke(b.serial_hex)
    assert [r.serial for r in ca.list_certificates(status="active")] == [a.serial_hex]
    assert [r.serial for r in ca.list_certificates(status="revoked")] == [b.serial_hex]
    assert [r.serial for r in ca.list_certificates(expiring_within=timedelta(days=3))] == [a.serial_hex]
    assert ca.list_certificates(profile="other") == []
    with ca.db.engine.begin() as conn:
        conn.execute(update(certificates).where(certificates.c.serial == a.serial_hex)
                     .values(not_after=datetime.now(UTC) - timedelta(minutes=1)))
    assert [r.serial for r in ca.list_certificates(status="expired")] == [a.serial_hex]
    with pytest.raises(InvalidInput):
        ca.list_certificates(status="weird")


def test_crl_state_is_recorded(ca: CertificateAuthority) -> None:
    built = ca.build_crl()
    with ca.db.engine.connect() as conn:
        row = conn.execute(crl_state.select()).one()
    assert row.der == built.der and row.crl_number == built.number


@pytest.mark.parametrize("reason", ["certificateHold", "certificate_hold", "removeFromCRL"])
def test_a_hold_is_not_a_revocation_reason(ca: CertificateAuthority, reason: str) -> None:
    """Revocation is final: certificateHold (and removeFromCRL, its undo) are refused by name."""
    serial = ca.issue("web", cn="web-1").serial_hex
    with pytest.raises(InvalidInput, match="is not accepted: revocation is final"):
        ca.revoke(serial, reason=reason)
    assert ca.find(serial).status() == "active"
