"""``rapki doctor`` against the emulator: each verdict is cross-checked with what the emulator's
CreateSession actually answers for the same certificate, so the doctor cannot drift from the service."""

# ruff: noqa: F811  (the "aws" fixture is imported from tests.test_publish and used as a parameter)
from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from sqlalchemy import insert

from pki.aws.client import AwsOptions, RolesAnywhere
from pki.aws.doctor import AnchorView, anchor_from_aws, diagnose
from pki.aws.register import register
from pki.ca.authority import CertificateAuthority
from pki.custody.keys import signing_key
from pki.store.schema import certificates
from tests.emulator_fixture import SimpleCa, make_ca, make_leaf
from tests.test_publish import Aws, aws  # noqa: F401 (fixture)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: object) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
                             serialization.NoEncryption())


def statuses(report: object) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}  # type: ignore[attr-defined]


def setup_anchor(ca: CertificateAuthority, account: Aws, mode: str = "root") -> tuple[str, str, str]:
    role = f"arn:aws:iam::{account.account}:role/app"
    result = register(ca, RolesAnywhere.connect(AwsOptions()), name="doc", role_arns=[role], anchor=mode)
    return result.trust_anchor_arn, result.profile_arn, role


def session(account: Aws, anchor: str, profile: str, role: str, cert: x509.Certificate, key: object,
            chain: tuple[x509.Certificate, ...] = ()) -> str:
    """What the emulator answers: "ok" or the error message."""
    resp = account.emulator.create_session(certificate=cert, private_key=key, chain=chain, trust_anchor_arn=anchor,
                                           profile_arn=profile, role_arn=role)
    return "ok" if resp.status == 201 else str(resp.message)


def test_healthy_certificate_passes_everything_and_the_service_agrees(ca: CertificateAuthority,
                                                                     aws: Aws) -> None:
    anchor, profile, role = setup_anchor(ca, aws)
    issued = ca.issue("web", cn="web-1")
    report = diagnose(pem(issued.certificate), key_pem(issued.private_key), pem(issued.chain[0]),
                      anchor=anchor_from_aws(RolesAnywhere.connect(AwsOptions()), anchor))
    assert report.ok, report.to_dict()
    assert set(statuses(report).values()) == {"pass"}
    assert report.source_identity == "CN=web-1"
    assert session(aws, anchor, profile, role, issued.certificate, issued.private_key, issued.chain) == "ok"


def test_missing_intermediates_is_the_untrusted_signing_certificate(ca: CertificateAuthority,
                                                                    aws: Aws, tmp_path: Path) -> None:
    anchor, profile, role = setup_anchor(ca, aws, mode="root")
    issued = ca.issue("web", cn="web-1")
    files = issued.write_to(tmp_path / "w")
    result = aws.rapki("doctor", "--certificate", str(files["certificate"]), "--private-key",
                       str(files["private_key"]), "--trust-anchor-arn", anchor, "--json", home=ca.home.path,
                       check=False)
    assert result.returncode == 1
    data = json.loads(result.stdout)
    [chain_check] = [c for c in data["checks"] if c["name"] == "chain builds to the trust anchor"]
    assert chain_check["status"] == "fail" and "Untrusted Signing Certificate" in chain_check["detail"]
    assert "--intermediates" in chain_check["fix"]
    assert session(aws, anchor, profile, role, issued.certificate, issued.private_key) == \
        "Untrusted Signing Certificate"
    text = aws.rapki("doctor", "--certificate", str(files["certificate"]), "--intermediates", str(files["chain"]),
                     "--trust-anchor-arn", anchor, home=ca.home.path).stdout
    assert "PASS  chain builds to the trust anchor" in text and text.rstrip().endswith("accept this certificate")


def test_foreign_ca_wrong_key_and_disabled_anchor(ca: CertificateAuthority, aws: Aws) -> None:
    anchor, profile, role = setup_anchor(ca, aws, mode="issuing")
    other_root = make_ca("Other Root")
    leaf, leaf_key = make_leaf(other_root, "web-9")
    view = anchor_from_aws(RolesAnywhere.connect(AwsOptions()), anchor)
    report = diagnose(pem(leaf), key_pem(make_leaf(other_root)[1]), anchor=view)
    got = statuses(report)
    assert got["private key matches the certificate"] == "fail"
    assert got["chain builds to the trust anchor"] == "fail"
    assert session(aws, anchor, profile, role, leaf, leaf_key) == "Untrusted Signing Certificate"
    aws.client.disable_trust_anchor(trustAnchorId=anchor.rsplit("/", 1)[1])
    issued = ca.issue("web", cn="web-2")
    view = anchor_from_aws(RolesAnywhere.connect(AwsOptions()), anchor)
    report = diagnose(pem(issued.certificate), key_pem(issued.private_key), anchor=view)
    assert statuses(report)["trust anchor enabled"] == "fail" and not report.ok
    assert session(aws, anchor, profile, role, issued.certificate, issued.private_key) != "ok"


def test_revoked_and_published_versus_revoked_only_locally(ca: CertificateAuthority, aws: Aws,
                                                           tmp_path: Path) -> None:
    anchor, profile, role = setup_anchor(ca, aws, mode="issuing")
    issued = ca.issue("web", cn="web-1")
    files = issued.write_to(tmp_path / "w")
    ca.revoke(issued.serial_hex)
    args = ["doctor", "--certificate", str(files["certificate"]), "--trust-anchor-arn", anchor, "--json"]
    before = json.loads(aws.rapki(*args, home=ca.home.path).stdout)  # not published yet: still accepted
    assert {c["name"]: c["status"] for c in before["checks"]}["revocation in the local CA"] == "warn"
    assert session(aws, anchor, profile, role, issued.certificate, issued.private_key) == "ok"
    aws.rapki("crl", "publish", home=ca.home.path)
    after = aws.rapki(*args, home=ca.home.path, check=False)
    assert after.returncode == 1
    [crl_check] = [c for c in json.loads(after.stdout)["checks"] if c["name"] == "not revoked in the published CRL"]
    assert crl_check["status"] == "fail" and "Certificate revoked" in crl_check["detail"]
    assert session(aws, anchor, profile, role, issued.certificate, issued.private_key) == "Certificate revoked"


def test_leaf_rules_validity_and_clock() -> None:
    root = make_ca("Root")
    anchor = AnchorView("test", [root.cert])
    bad_usage, _ = make_leaf(root, "web-1", digital_signature=False)
    assert statuses(diagnose(pem(bad_usage), anchor=anchor))["key usage (end-entity, digitalSignature)"] == "fail"
    bad_cn, _ = make_leaf(root, "web*1")
    assert statuses(diagnose(pem(bad_cn), anchor=anchor))["CN as source identity"] == "fail"
    now = datetime.now(UTC)
    expired, _ = make_leaf(root, "web-1", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1))
    assert statuses(diagnose(pem(expired), anchor=anchor))["validity and clock"] == "fail"
    good, _ = make_leaf(root, "web-1")
    skewed = AnchorView("test", [root.cert], server_date=now - timedelta(minutes=9))
    report = diagnose(pem(good), anchor=skewed, now=now)
    [clock] = [c for c in report.checks if c.name == "validity and clock"]
    assert clock.status == "fail" and "NTP" in clock.fix
    assert statuses(diagnose(b"not a certificate"))["certificate readable"] == "fail"


def test_offline_doctor_uses_the_local_ca(ca: CertificateAuthority, aws: Aws, tmp_path: Path) -> None:
    issued = ca.issue("web", cn="web-1")
    files = issued.write_to(tmp_path / "w")
    result = aws.rapki("doctor", "--certificate", str(files["certificate"]), "--private-key",
                       str(files["private_key"]), "--offline", home=ca.home.path)
    assert "local CA (offline" in result.stdout and "PASS  chain builds to the trust anchor" in result.stdout
    assert aws.emulator.stats()["calls"] == {}


def test_a_foreign_ca_with_the_same_names_gets_no_publish_advice(ca: CertificateAuthority, aws: Aws) -> None:
    """Another CA named exactly like ours (a re-initialised home, an old bundle): the chain check names
    the cause; the revocation check must not tell the operator to publish a CRL, which would not help."""
    anchor, profile, role = setup_anchor(ca, aws, mode="root")
    twin_root = make_ca(subject=ca.root_certificate.subject)
    twin_issuing = make_ca(subject=ca.issuer().certificate.subject, parent=twin_root, path_len=0)
    leaf, leaf_key = make_leaf(twin_issuing, "web-1")
    report = diagnose(pem(leaf), key_pem(leaf_key), pem(twin_issuing.cert),
                      anchor=anchor_from_aws(RolesAnywhere.connect(AwsOptions()), anchor))
    checks = {c.name: c for c in report.checks}
    assert checks["chain builds to the trust anchor"].status == "fail"
    assert "same name" in checks["chain builds to the trust anchor"].detail
    revocation = checks["not revoked in the published CRL"]
    assert revocation.status == "skip" and "crl publish" not in revocation.fix
    assert not any("crl publish" in c.fix for c in report.checks), report.to_dict()
    assert session(aws, anchor, profile, role, leaf, leaf_key, (twin_issuing.cert,)) == \
        "Untrusted Signing Certificate"


def test_a_revoked_certificate_that_expired_is_not_sent_to_crl_publish(ca: CertificateAuthority, aws: Aws,
                                                                       tmp_path: Path) -> None:
    """An expired certificate has left the CRL (RFC 5280): "not published yet: run rapki crl publish"
    would be wrong advice, publishing cannot put it back."""
    issuer = ca.issuer()
    now = datetime.now(UTC)
    leaf, _ = make_leaf(SimpleCa(issuer.certificate, signing_key(ca.issuer_key(issuer))), "web-1",
                        not_before=now - timedelta(days=2), not_after=now - timedelta(days=1))
    der = leaf.public_bytes(serialization.Encoding.DER)
    with ca.db.engine.begin() as conn:
        conn.execute(insert(certificates).values(
            issuer_id=issuer.id, serial=format(leaf.serial_number, "x"), subject=leaf.subject.rfc4514_string(),
            common_name="web-1", sans=[], profile="web", key_type="ec-p256", not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc, revoked_at=now - timedelta(days=1, hours=12),
            revocation_reason="keyCompromise", fingerprint=hashlib.sha256(der).hexdigest(), der=der, created_at=now,
        ))
    ca.build_crl()
    cert_file = tmp_path / "cert.pem"
    cert_file.write_bytes(pem(leaf))
    result = aws.rapki("doctor", "--certificate", str(cert_file), "--offline", "--json", home=ca.home.path,
                       check=False)
    assert result.returncode == 1  # expired: refused whatever the CRL says
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["validity and clock"]["status"] == "fail"
    local = checks["revocation in the local CA"]
    assert local["status"] != "warn" and "crl publish" not in local["fix"], local
    assert "expired" in local["detail"]


def test_the_algorithms_line_of_an_ml_dsa_leaf(ca: CertificateAuthority) -> None:
    """ML-DSA has no curve or size: the line reads 'MLDSA65, sha256' (the EC CA's hash), no stray gap."""
    from pki.aws.doctor import anchor_from_local_ca
    from pki.workload.client import make_csr
    from pki.x509.keys import KeyType

    key = KeyType.ML_DSA_65.generate()
    issued = ca.issue("web", csr=make_csr(key, "web-1"))
    report = diagnose(pem(issued.certificate), None, pem(issued.chain[0]), anchor=anchor_from_local_ca(ca))
    details = {c.name: c.detail for c in report.checks}  # type: ignore[attr-defined]
    assert details["algorithms"] == "MLDSA65, sha256"
