"""Issuance: Roles Anywhere-ready leaves, CSR handling, profile policy. Judged by pkilint and openssl."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.ca.authority import CertificateAuthority
from pki.errors import AlreadyRenewed, InvalidInput, NotFound, PolicyViolation
from pki.x509.issuance import BACKDATE
from pki.x509.keys import KeyType, subject_key_identifier
from pki.x509.preflight import leaf_problems
from pki.x509.profiles import Profile, RolesAnywhereBinding
from tests.conftest import make_ca
from tests.validators import lint_cert, lint_chain, openssl_knows_mldsa, openssl_verify


def csr_for(key, cn: str | None = "web-1", *, sans: list[x509.GeneralName] | None = None,  # type: ignore[no-untyped-def]
            extensions: list[tuple[x509.ExtensionType, bool]] = (), extra_subject=(),  # type: ignore[assignment]
            hash_alg: hashes.HashAlgorithm | None = None) -> bytes:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([*attrs, *extra_subject]))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    for ext, critical in extensions:
        builder = builder.add_extension(ext, critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else (hash_alg or hashes.SHA256())
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM)


def count_rows(ca: CertificateAuthority) -> int:
    return len(ca.list_certificates())


@pytest.mark.parametrize("key_type", list(KeyType))
def test_generated_leaf_passes_independent_validation(ca: CertificateAuthority, tmp_path: Path,
                                                      key_type: KeyType) -> None:
    issued = ca.issue("web", cn="web-1", sans=["dns:api.example.com", "uri:https://example.com/api"],
                      key_type=key_type)
    files = issued.write_to(tmp_path / "out")
    assert lint_cert(files["certificate"]) == ""
    assert lint_chain(files["chain"], files["certificate"]) == ""
    if not key_type.is_mldsa or openssl_knows_mldsa():  # openssl 3.0 cannot read an ML-DSA leaf's key;
        # pkilint's chain check above verified the issuer's (EC) signature on it
        result = openssl_verify(files["certificate"], root=ca.home.root_cert_path, untrusted=files["chain"])
        assert result.returncode == 0, result.stdout + result.stderr
    assert (files["private_key"].stat().st_mode & 0o777) == 0o600
    assert leaf_problems(issued.certificate) == []


def test_leaf_carries_what_roles_anywhere_needs(ca: CertificateAuthority) -> None:
    cert = ca.issue("web", cn="web-1").certificate
    ext = cert.extensions
    bc = ext.get_extension_for_class(x509.BasicConstraints)
    assert bc.critical and not bc.value.ca
    ku = ext.get_extension_for_class(x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert not ski.critical and ski.value == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    issuer_ski = ca.issuer().certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == issuer_ski.digest
    assert cert.version is x509.Version.v3
    assert 0 < cert.serial_number < 2 ** 159
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.not_valid_after_utc - datetime.now(UTC) <= timedelta(hours=24)


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()), lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(65537, 2048), ed25519.Ed25519PrivateKey.generate,
], ids=["ec-p256", "ec-p384", "rsa-2048", "ed25519"])
def test_key_identifiers_are_rfc5280_method_1(make_key) -> None:  # type: ignore[no-untyped-def]
    public = make_key().public_key()
    assert subject_key_identifier(public) == x509.SubjectKeyIdentifier.from_public_key(public)


def test_issued_pem_is_the_certificate_as_recorded(ca: CertificateAuthority) -> None:
    issued = ca.issue("web", cn="web-1")
    assert issued.der == issued.certificate.public_bytes(serialization.Encoding.DER) == ca.find(issued.serial_hex).der
    assert issued.cert_pem.data == issued.certificate.public_bytes(serialization.Encoding.PEM)


def test_certificate_is_recorded_before_it_is_returned(ca: CertificateAuthority) -> None:
    issued = ca.issue("web", cn="web-3", sans=["api.example.com"])
    record = ca.find(issued.serial_hex)
    assert record.der == issued.certificate.public_bytes(serialization.Encoding.DER)
    assert record.sans == ["dns:api.example.com"] and record.profile == "web" and record.status() == "active"
    assert ca.find(str(issued.certificate.serial_number)).serial == issued.serial_hex  # decimal works too


def test_csr_mode_takes_only_the_public_key_and_allowed_names(ca: CertificateAuthority) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    issued = ca.issue("web", csr=csr_for(key, sans=[x509.DNSName("db.example.com")]))
    assert issued.private_key is None
    assert issued.certificate.public_key() == key.public_key()
    assert issued.certificate.subject.rfc4514_string() == "CN=web-1"
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["db.example.com"]


def _ca_true() -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.BasicConstraints(ca=True, path_length=None), True)]


def _server_auth() -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)]


@pytest.mark.parametrize(
    ("make_csr", "error", "message"),
    [
        (lambda k: b"not a csr", InvalidInput, "not a valid CSR"),
        (lambda k: csr_for(k, extensions=_ca_true()), PolicyViolation, "CA:TRUE"),
        (lambda k: csr_for(k, extensions=_server_auth()), PolicyViolation, "serverAuth"),
        (lambda k: csr_for(k, sans=[x509.DNSName("evil.example.org")]), PolicyViolation, "evil.example.org"),
        (lambda k: csr_for(k, sans=[x509.RFC822Name("a@example.com")]), PolicyViolation, "RFC822Name"),
        (lambda k: csr_for(k, cn="db-1"), PolicyViolation, "not allowed by profile"),
        (lambda k: csr_for(k, cn=None), InvalidInput, "CN is required"),
        (lambda k: csr_for(k, extra_subject=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "x")]),
         PolicyViolation, "organizationName"),
        (lambda k: csr_for(ed25519.Ed25519PrivateKey.generate()), PolicyViolation, "not accepted"),
        (lambda k: csr_for(rsa.generate_private_key(65537, 1024)), PolicyViolation, "RSA-1024"),
        (lambda k: csr_for(ec.generate_private_key(ec.SECP521R1())), PolicyViolation, "secp521r1"),
    ],
    ids=["garbage", "ca-true", "server-auth", "foreign-dns", "email-san", "cn-outside", "no-cn",
         "extra-subject", "ed25519", "rsa-1024", "p521"],
)
def test_bad_csrs_are_refused_and_nothing_is_written(ca: CertificateAuthority, make_csr, error, message) -> None:  # type: ignore[no-untyped-def]
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(error, match=message):
        ca.issue("web", csr=csr)
    assert count_rows(ca) == 0


@pytest.mark.parametrize("make_key", [
    lambda: ec.generate_private_key(ec.SECP256R1()), lambda: ec.generate_private_key(ec.SECP384R1()),
    lambda: rsa.generate_private_key(65537, 2048),
], ids=["ec-p256", "ec-p384", "rsa-2048"])
@pytest.mark.parametrize("where", ["signature", "signed-subject"])
def test_csr_with_a_broken_signature_is_refused(ca: CertificateAuthority, make_key, where: str) -> None:  # type: ignore[no-untyped-def]
    good = csr_for(make_key(), cn="web-1")
    ca.issue("web", csr=good)  # the untouched CSR verifies
    der = bytearray(x509.load_pem_x509_csr(good).public_bytes(serialization.Encoding.DER))
    if where == "signature":
        der[-5] ^= 0x55  # inside the signature value
    else:
        at = bytes(der).index(b"web-1")
        der[at:at + 5] = b"web-2"  # a CN the profile allows, but not the one that was signed
    with pytest.raises(InvalidInput, match="does not verify"):
        ca.issue("web", csr=bytes(der))
    with pytest.raises(InvalidInput, match="does not verify"):
        ca.issue("web", csr=x509.load_der_x509_csr(bytes(der)))  # a parsed CSR object is verified too
    assert count_rows(ca) == 1


def test_csr_with_an_unknown_signature_algorithm_is_refused(ca: CertificateAuthority) -> None:
    der = bytearray(x509.load_pem_x509_csr(csr_for(ec.generate_private_key(ec.SECP256R1()), cn="web-1"))
                    .public_bytes(serialization.Encoding.DER))
    ecdsa_with_sha256 = bytes.fromhex("2a8648ce3d040302")
    at = bytes(der).rfind(ecdsa_with_sha256)  # the outer signatureAlgorithm
    der[at + len(ecdsa_with_sha256) - 1] = 0x09  # 1.2.840.10045.4.3.9: no such algorithm
    with pytest.raises(InvalidInput, match="signature"):
        ca.issue("web", csr=bytes(der))
    assert count_rows(ca) == 0


@pytest.mark.parametrize(("key_type", "hash_name", "algorithm", "named"), [
    ("ec", "sha1", "sha1_ecdsa", "ECDSA with SHA-1"),
    ("rsa", "sha1", "sha1_rsa", "RSA with SHA-1"),
    ("rsa", "md5", "md5_rsa", "RSA with MD5"),
])
def test_csr_signed_with_a_weak_hash_names_the_algorithm(ca: CertificateAuthority, key_type: str, hash_name: str,
                                                         algorithm: str, named: str) -> None:
    """A correctly signed CSR whose signature uses SHA-1 or MD5 is refused, naming the algorithm."""
    from asn1crypto import csr as asn1_csr
    from cryptography.hazmat.primitives.asymmetric import padding

    key = ec.generate_private_key(ec.SECP256R1()) if key_type == "ec" else rsa.generate_private_key(65537, 2048)
    request = asn1_csr.CertificationRequest.load(
        x509.load_pem_x509_csr(csr_for(key, cn="web-1")).public_bytes(serialization.Encoding.DER))
    info = request["certification_request_info"]
    digest = {"sha1": hashes.SHA1(), "md5": hashes.MD5()}[hash_name]  # noqa: S303 (the weak hashes under test)
    signature = (key.sign(info.dump(), ec.ECDSA(digest)) if key_type == "ec"
                 else key.sign(info.dump(), padding.PKCS1v15(), digest))
    signed = asn1_csr.CertificationRequest({
        "certification_request_info": info, "signature_algorithm": {"algorithm": algorithm}, "signature": signature,
    })
    with pytest.raises(InvalidInput, match=f"signed with {named}, which is not accepted"):
        ca.issue("web", csr=signed.dump())
    assert count_rows(ca) == 0


def test_csr_with_a_duplicated_extension_is_refused(ca: CertificateAuthority) -> None:
    """A validly signed CSR whose extension request holds basicConstraints twice: bad input, not a crash."""
    from asn1crypto import csr as asn1_csr

    key = ec.generate_private_key(ec.SECP256R1())
    request = asn1_csr.CertificationRequest.load(x509.load_pem_x509_csr(
        csr_for(key, cn="web-1", extensions=[(x509.BasicConstraints(ca=False, path_length=None), True)]),
    ).public_bytes(serialization.Encoding.DER))
    extensions = request["certification_request_info"]["attributes"][0]["values"][0]
    extensions.append(extensions[0].copy())
    info = asn1_csr.CertificationRequestInfo.load(request["certification_request_info"].dump(force=True))
    signed = asn1_csr.CertificationRequest({
        "certification_request_info": info, "signature_algorithm": request["signature_algorithm"],
        "signature": key.sign(info.dump(), ec.ECDSA(hashes.SHA256())),
    })
    with pytest.raises(InvalidInput, match="extensions cannot be read"):
        ca.issue("web", csr=signed.dump())
    assert count_rows(ca) == 0


@pytest.mark.parametrize(
    ("cn", "message"),
    [
        ("web-1 ; rm", "STS rejects"),
        ("w" * 65, "at most 64"),
        ("", "CN is required"),
    ],
)
def test_cn_policy(ca: CertificateAuthority, cn: str, message: str) -> None:
    ca.add_profile(Profile(name="open", cn_pattern=".*"))
    with pytest.raises((PolicyViolation, InvalidInput), match=message):
        ca.issue("open", cn=cn)
    assert count_rows(ca) == 0


def test_cn_with_characters_sts_rejects_is_refused_even_if_the_profile_allows_it(ca: CertificateAuthority) -> None:
    ca.add_profile(Profile(name="open", cn_pattern=".*"))
    for cn in ("web,1", "web#1", "we'b", "a*b"):
        with pytest.raises(PolicyViolation, match="STS rejects"):
            ca.issue("open", cn=cn)
    assert ca.issue("open", cn="svc:prod/api=1+2@x_y.z").certificate is not None  # every allowed punctuation


def test_ttl_policy_and_clamp_to_the_issuer(ca: CertificateAuthority) -> None:
    with pytest.raises(PolicyViolation, match="above the max TTL"):
        ca.issue("web", cn="web-1", ttl=timedelta(days=31))
    ok = ca.issue("web", cn="web-1", ttl=timedelta(days=30))
    assert ok.certificate.not_valid_after_utc <= ca.issuer().not_after
    ca.add_profile(Profile(name="long", cn_pattern="l", max_ttl=timedelta(days=397),
                           default_ttl=timedelta(days=397)))
    short_lived = ca.sign_intermediate(lifetime=timedelta(days=10))
    clamped = ca.issue("long", cn="l")
    assert clamped.certificate.not_valid_after_utc == short_lived.not_after
    assert count_rows(ca) == 2


def test_the_minimum_ttl_is_allowed_and_an_expiring_issuing_ca_is_named(ca: CertificateAuthority) -> None:
    """5m is the minimum and allowed (it once failed as "issuing-1 expires ..."); below it, the TTL
    is what is refused; only an issuing CA with less than 5m left is blamed on the issuing CA."""
    shortest = ca.issue("web", cn="web-1", ttl=timedelta(minutes=5)).certificate
    assert shortest.not_valid_after_utc - shortest.not_valid_before_utc == timedelta(minutes=5) + BACKDATE
    with pytest.raises(PolicyViolation, match="TTL 299s is below the minimum of 5m"):
        ca.issue("web", cn="web-1", ttl=timedelta(minutes=5) - timedelta(seconds=1))
    with pytest.raises(InvalidInput, match="default TTL 4m is below the minimum of 5m"):
        Profile(name="tiny", cn_pattern="t", default_ttl=timedelta(minutes=4))
    ca.sign_intermediate(lifetime=timedelta(minutes=4))
    with pytest.raises(PolicyViolation, match=r"the active issuing CA issuing-2 expires at .*less than the "
                                              r"minimum of 5m: rotate it"):
        ca.issue("web", cn="web-1", ttl=timedelta(minutes=5))
    assert count_rows(ca) == 1


def test_the_profile_model_checks_its_roles_anywhere_arns() -> None:
    """Every front builds a Profile: the model refuses what is not an ARN of the right kind."""
    with pytest.raises(InvalidInput, match="role ARN 'notanarn' is not an IAM role ARN"):
        Profile(name="p", cn_pattern="p", roles_anywhere=RolesAnywhereBinding(role_arns=("notanarn",)))
    with pytest.raises(InvalidInput, match="names a crl, not a profile"):
        RolesAnywhereBinding(profile_arn="arn:aws:rolesanywhere:us-east-1:111122223333:crl/"
                                         "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0")
    assert RolesAnywhereBinding(role_arns=("arn:aws-cn:iam::111122223333:role/a/b",)).role_arns


RENEWER = "api:certificate/mtls:{}@192.0.2.7"


def test_a_certificate_renews_once_and_a_second_renewal_is_audited(ca: CertificateAuthority) -> None:
    """Renewing with a copy of a certificate already renewed once gave a second live certificate
    and overwrote the first successor."""
    old = ca.issue("web", cn="web-1")
    new = ca.issue("web", cn="web-1", supersedes=old.serial_hex, actor=RENEWER.format(old.serial_hex))
    with pytest.raises(AlreadyRenewed) as refused:
        ca.issue("web", cn="web-1", supersedes=old.serial_hex, actor=RENEWER.format(old.serial_hex))
    assert refused.value.superseded_by == new.serial_hex and refused.value.http_status == 409
    assert f"{old.serial_hex} was already renewed: {new.serial_hex} replaced it" in str(refused.value)
    assert ca.find(old.serial_hex).superseded_by == new.serial_hex
    assert count_rows(ca) == 2
    [entry] = ca.audit_entries(action="certificate.renew_refused")
    assert entry["target"] == old.serial_hex and entry["actor"].endswith("@192.0.2.7")
    assert entry["details"]["superseded_by"] == new.serial_hex
    assert ca.issue("web", cn="web-1", supersedes=new.serial_hex).serial_hex  # the newest renews


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def any_ca(request: pytest.FixtureRequest, tmp_path: Path, passphrase_env: str,
           monkeypatch: pytest.MonkeyPatch) -> CertificateAuthority:
    if request.param == "postgresql":
        monkeypatch.setenv("RAPKI_DATABASE_URL", request.getfixturevalue("pg_database_url"))
    ca = make_ca(tmp_path / "home")
    assert ca.db.engine.dialect.name == request.param
    return ca


def test_a_renewal_committed_meanwhile_wins(any_ca: CertificateAuthority) -> None:
    """The check in the renewal's own transaction decides: another renewal of the same certificate
    committed after this one's first check (made here while this transaction is open) wins, and
    this one is rolled back."""
    ca = any_ca
    old = ca.issue("web", cn="web-1")
    other: list[str] = []

    def renew_elsewhere(_tx: object) -> None:  # another process's renewal, committed first
        with ThreadPoolExecutor(1) as pool:
            other.append(pool.submit(lambda: ca.issue("web", cn="web-1", supersedes=old.serial_hex)).result().serial_hex)

    with pytest.raises(AlreadyRenewed) as refused:
        ca.issue("web", cn="web-1", supersedes=old.serial_hex, within=renew_elsewhere)
    assert refused.value.superseded_by == other[0] == ca.find(old.serial_hex).superseded_by
    assert count_rows(ca) == 2


def test_concurrent_renewals_of_one_certificate_record_one(any_ca: CertificateAuthority) -> None:
    ca = any_ca
    old = ca.issue("web", cn="web-1")
    start = threading.Barrier(6)

    def renew() -> str:
        start.wait(timeout=30)
        try:
            return ca.issue("web", cn="web-1", supersedes=old.serial_hex).serial_hex
        except AlreadyRenewed as exc:
            return f"refused:{exc.superseded_by}"

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(lambda _: renew(), range(6)))
    renewed = [o for o in outcomes if not o.startswith("refused:")]
    assert len(renewed) == 1, outcomes
    assert set(outcomes) - set(renewed) <= {f"refused:{renewed[0]}"}
    assert ca.find(old.serial_hex).superseded_by == renewed[0]
    assert count_rows(ca) == 2


def test_key_type_not_in_profile_is_refused(ca: CertificateAuthority) -> None:
    ca.add_profile(Profile(name="ec-only", cn_pattern="e", key_types=(KeyType.EC_P256,)))
    with pytest.raises(PolicyViolation, match="rsa-2048"):
        ca.issue("ec-only", cn="e", key_type=KeyType.RSA_2048)
    with pytest.raises(PolicyViolation, match="rsa-2048"):
        ca.issue("ec-only", csr=csr_for(rsa.generate_private_key(65537, 2048), cn="e"))


def test_unknown_profile_is_not_found(ca: CertificateAuthority) -> None:
    with pytest.raises(NotFound):
        ca.issue("nope", cn="web-1")


def test_serials_are_unique_per_issuer_in_the_database(ca: CertificateAuthority) -> None:
    from sqlalchemy import insert
    from sqlalchemy.exc import IntegrityError

    from pki.store.schema import certificates

    issued = ca.issue("web", cn="web-1")
    row = dict(ca.db.engine.connect().execute(
        certificates.select().where(certificates.c.serial == issued.serial_hex)).mappings().one())
    row.pop("id")
    row["fingerprint"] = "0" * 64
    with pytest.raises(IntegrityError), ca.db.engine.begin() as conn:
        conn.execute(insert(certificates).values(**row))


def test_serial_length_is_configurable(tmp_path: Path, passphrase_env: str) -> None:
    ca = make_ca(tmp_path / "home", serial_bytes=9)
    serial = ca.issue("web", cn="web-1").certificate.serial_number
    assert len(serial.to_bytes((serial.bit_length() + 8) // 8, "big")) == 9


def test_rsa_ca_issues_ec_leaves(tmp_path: Path, passphrase_env: str) -> None:
    ca = make_ca(tmp_path / "home", KeyType.RSA_3072)
    files = ca.issue("web", cn="web-1", key_type=KeyType.EC_P384).write_to(tmp_path / "out")
    assert lint_cert(files["certificate"]) == ""
    assert openssl_verify(files["certificate"], root=ca.home.root_cert_path, untrusted=files["chain"]).returncode == 0


def test_preflight_catches_what_roles_anywhere_refuses() -> None:
    key = rsa.generate_private_key(65537, 2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bad,cn")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    problems = " | ".join(leaf_problems(cert))
    for expected in ("CA:TRUE", "keyUsage is missing", "STS rejects"):
        assert expected in problems


def test_preflight_refuses_sha1_signatures(tmp_path: Path) -> None:
    import subprocess

    key, cert = tmp_path / "k.pem", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-x509", "-sha1", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(key), "-out", str(cert), "-subj", "/CN=old", "-days", "1",
                    "-addext", "keyUsage=critical,digitalSignature", "-addext", "basicConstraints=critical,CA:FALSE"],
                   check=True, capture_output=True)
    problems = leaf_problems(x509.load_pem_x509_certificate(cert.read_bytes()))
    assert problems == ["signature hash sha1: SHA-256 or stronger (or ML-DSA) is required"]


def test_server_certificate_for_the_api(ca: CertificateAuthority, tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="fully qualified"):
        ca.issue_server_certificate(["localhost", "127.0.0.1"])
    issued = ca.issue_server_certificate(["rapki.example.com", "127.0.0.1", "::1", "ca.internal"])
    files = issued.write_to(tmp_path / "tls")
    assert lint_cert(files["certificate"]) == ""
    result = openssl_verify(files["certificate"], root=ca.home.root_cert_path, untrusted=files["chain"])
    assert result.returncode == 0, result.stdout + result.stderr
    import subprocess

    purpose = subprocess.run(["openssl", "verify", "-purpose", "sslserver", "-CAfile", str(ca.home.root_cert_path),
                              "-untrusted", str(files["chain"]), str(files["certificate"])],
                             capture_output=True, text=True, check=False)
    assert purpose.returncode == 0, purpose.stdout + purpose.stderr
    san = issued.certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["rapki.example.com", "ca.internal"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    record = ca.find(issued.serial_hex)
    assert record.profile == "_server" and "ip:127.0.0.1" in record.sans  # in the inventory: revocable


def test_workloads_never_get_ip_sans(ca: CertificateAuthority) -> None:
    with pytest.raises(PolicyViolation, match="IP SANs"):
        ca.issue("web", cn="web-1", sans=["ip:10.0.0.1"])
    assert count_rows(ca) == 0


@pytest.mark.parametrize("name", ["localhost", "web-1", "a..example.com", "-a.example.com", "host.123", "a_b.example.com"])
def test_dns_sans_must_be_fully_qualified(ca: CertificateAuthority, name: str) -> None:
    ca.add_profile(Profile(name="open", cn_pattern=".*", san_dns_patterns=(".*",)))
    with pytest.raises(InvalidInput, match="DNS"):
        ca.issue("open", cn="x", sans=[f"dns:{name}"])
    with pytest.raises(InvalidInput, match="DNS"):
        ca.issue("open", csr=csr_for(ec.generate_private_key(ec.SECP256R1()), cn="x", sans=[x509.DNSName(name)]))
    assert count_rows(ca) == 0


def test_ca_signs_nothing_roles_anywhere_would_refuse(ca: CertificateAuthority) -> None:
    """The preflight runs on what is about to be signed: a signer whose shared extensions went wrong
    (here basicConstraints CA:TRUE) gets a clear refusal, and nothing is recorded."""
    signer = ca.leaf_signer(ca.issuer())
    before = count_rows(ca)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH
    good = signer.shared[usage]
    bad_bc = x509.Extension(x509.BasicConstraints.oid, True, x509.BasicConstraints(ca=True, path_length=None))
    signer.shared[usage] = (bad_bc, *good[1:])
    try:
        with pytest.raises(PolicyViolation, match="would be refused by Roles Anywhere: basicConstraints says CA:TRUE"):
            ca.issue("web", cn="web-1")
        assert count_rows(ca) == before
    finally:
        signer.shared[usage] = good
    assert ca.issue("web", cn="web-1").certificate is not None


def test_csr_with_a_small_rsa_exponent_is_refused(ca: CertificateAuthority) -> None:
    """e=3 (or any exponent below 65537) is refused, naming the exponent; nothing is recorded."""
    key = rsa.generate_private_key(public_exponent=3, key_size=2048)
    with pytest.raises(PolicyViolation, match="RSA public exponent 3 is not accepted"):
        ca.issue("web", csr=csr_for(key, cn="web-1"))
    assert count_rows(ca) == 0


def test_listing_by_status_and_by_name(ca: CertificateAuthority) -> None:
    """active excludes renewed certificates (they have their own status); --name finds a CN or SAN."""
    old = ca.issue("web", cn="web-1", sans=["dns:api.example.com"])
    new = ca.issue("web", cn="web-1", sans=["dns:api.example.com"], supersedes=old.serial_hex)
    other = ca.issue("web", cn="web-22")
    gone = ca.issue("web", cn="web-3")
    ca.revoke(gone.serial_hex)

    def serials(**query: Any) -> list[str]:
        return [r.serial for r in ca.list_certificates(**query)]

    assert serials(status="active") == [new.serial_hex, other.serial_hex]
    assert serials(status="superseded") == [old.serial_hex]
    assert serials(status="revoked") == [gone.serial_hex]
    assert serials(name="WEB-2") == [other.serial_hex]
    assert serials(name="API.example") == [old.serial_hex, new.serial_hex]
    assert serials(name="%") == []  # no wildcard: a literal percent sign
    with pytest.raises(InvalidInput, match="use active, superseded, revoked, expired"):
        ca.list_certificates(status="valid")
