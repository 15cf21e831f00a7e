"""rapki init: home layout, CA certificates, encryption at rest, rotation, offline root."""

from __future__ import annotations

import stat
import tomllib
from pathlib import Path

import pytest
from cryptography import x509

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.errors import Conflict, InvalidInput, NotARapkiHome, WrongPassphrase
from pki.x509.keys import KeyType
from tests.conftest import PASSPHRASE, make_ca
from tests.validators import lint_cert, lint_chain, openssl_verify


def _bc(cert: x509.Certificate) -> x509.BasicConstraints:
    return cert.extensions.get_extension_for_class(x509.BasicConstraints).value


def test_init_creates_a_home_with_encrypted_keys(tmp_path: Path, passphrase_env: str) -> None:
    ca = make_ca(tmp_path / "home")
    home = ca.home.path
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    config = tomllib.loads((home / "rapki.toml").read_text())
    assert config["ca"]["key_type"] == "ec-p256"
    for key_file in (home / "ca" / "root.key.pem", home / "ca" / "issuing-1.key.pem"):
        data = key_file.read_bytes()
        assert data.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600


def test_generated_passphrase_file_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPKI_PASSPHRASE", raising=False)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    ca = CertificateAuthority.init(tmp_path / "home")
    passphrase_file = tmp_path / "home" / "passphrase"
    assert stat.S_IMODE(passphrase_file.stat().st_mode) == 0o600
    assert len(passphrase_file.read_text().strip()) >= 40
    reopened = CertificateAuthority.open(tmp_path / "home")
    assert reopened.issuer_key(reopened.issuer()) is not None
    assert ca.root_certificate == reopened.root_certificate


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_ca_certificates_pass_pkilint_and_openssl(tmp_path: Path, passphrase_env: str, key_type: KeyType) -> None:
    ca = make_ca(tmp_path / "home", key_type)
    root, issuing = ca.home.root_cert_path, ca.home.ca_dir / "issuing-1.pem"
    assert lint_cert(root) == ""
    assert lint_cert(issuing) == ""
    assert lint_chain(root, issuing) == ""
    result = openssl_verify(issuing, root=root)
    assert result.returncode == 0, result.stderr
    root_cert, issuing_cert = ca.root_certificate, ca.issuer().certificate
    assert _bc(root_cert).ca and _bc(root_cert).path_length == 1
    assert _bc(issuing_cert).ca and _bc(issuing_cert).path_length == 0
    assert issuing_cert.not_valid_after_utc <= root_cert.not_valid_after_utc
    lifetime = root_cert.not_valid_after_utc - root_cert.not_valid_before_utc
    assert 3649 <= lifetime.days <= 3651
    assert KeyType.of(issuing_cert.public_key()) is key_type


def test_init_refuses_an_existing_home(ca: CertificateAuthority) -> None:
    with pytest.raises(Conflict):
        CertificateAuthority.init(ca.home.path, passphrase=PASSPHRASE.encode())


def test_init_refuses_a_home_it_cannot_make(tmp_path: Path) -> None:
    """A --home that is a file, or below one: bad input naming the path (was a traceback)."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InvalidInput, match="is a file, not a directory"):
        CertificateAuthority.init(blocker, passphrase=PASSPHRASE.encode())
    with pytest.raises(InvalidInput, match="the home directory cannot be made"):
        CertificateAuthority.init(blocker / "home", passphrase=PASSPHRASE.encode())


def test_open_refuses_a_directory_that_is_not_a_home(tmp_path: Path) -> None:
    with pytest.raises(NotARapkiHome):
        CertificateAuthority.open(tmp_path)
    with pytest.raises(NotARapkiHome):
        CertificateAuthority.open(tmp_path / "missing")


def test_wrong_passphrase_is_refused(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_PASSPHRASE", "not-the-passphrase")
    reopened = CertificateAuthority.open(ca.home.path)
    with pytest.raises(WrongPassphrase):
        reopened.issue("web", cn="web-1")
    assert reopened.list_certificates() == []


def test_rotation_keeps_the_old_issuer_signing_crls(ca: CertificateAuthority) -> None:
    old = ca.issue("web", cn="web-1")
    new_issuer = ca.sign_intermediate()
    assert new_issuer.name == "issuing-2" and new_issuer.active
    fresh = ca.issue("web", cn="web-2")
    assert fresh.certificate.issuer == new_issuer.certificate.subject
    assert fresh.chain == (new_issuer.certificate,)
    ca.revoke(old.serial_hex)
    old_crl = ca.build_crl("issuing-1")
    assert old_crl.crl.issuer == old.certificate.issuer
    assert old_crl.crl.get_revoked_certificate_by_serial_number(old.certificate.serial_number) is not None
    assert ca.build_crl().entries == 0


def test_offline_root_stays_out_of_the_home(tmp_path: Path, passphrase_env: str) -> None:
    offline = tmp_path / "offline" / "root.key.pem"
    ca = make_ca(tmp_path / "home", offline_root_key_out=offline)
    assert offline.is_file()
    assert not ca.home.root_key_path.exists()
    with pytest.raises(InvalidInput, match="root key"):
        ca.sign_intermediate()
    issuer = ca.sign_intermediate(root_key_path=offline)
    assert issuer.certificate.issuer == ca.root_certificate.subject


def test_init_with_postgresql(tmp_path: Path, passphrase_env: str, pg_database_url: str,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    ca = make_ca(tmp_path / "home")
    issued = ca.issue("web", cn="web-7")
    assert not (tmp_path / "home" / "rapki.db").exists()
    reopened = CertificateAuthority.open(tmp_path / "home")
    assert reopened.find(issued.serial_hex).common_name == "web-7"
    reopened.revoke(issued.serial_hex, reason="keyCompromise")
    assert reopened.build_crl().entries == 1
    with pytest.raises(Conflict, match="already holds a CA"):
        CertificateAuthority.init(tmp_path / "other", InitOptions(), passphrase=PASSPHRASE.encode())


def test_default_names_tell_installations_apart(tmp_path: Path, passphrase_env: str) -> None:
    """Two homes made with defaults have different CA names (a short id of the root key), and a
    rotation keeps that id; names given explicitly are kept as they are."""
    one, two = make_ca(tmp_path / "one"), make_ca(tmp_path / "two")

    def cn(cert: x509.Certificate) -> str:
        return str(cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)

    tag = cn(one.root_certificate).removeprefix("rapki Root CA ")
    assert len(tag) == 6 and int(tag, 16) >= 0
    assert cn(one.root_certificate) != cn(two.root_certificate)
    assert cn(one.issuer().certificate) == f"rapki Issuing CA 1 {tag}"
    assert cn(one.sign_intermediate().certificate) == f"rapki Issuing CA 2 {tag}"
    named = make_ca(tmp_path / "named", root_cn="Example Root", issuing_cn="Example Issuing 1")
    assert (cn(named.root_certificate), cn(named.issuer().certificate)) == ("Example Root", "Example Issuing 1")
