"""Signing with a key cryptography does not hold (pki.x509.external) is equivalent to signing with
the key object, key references read and write back, and the file backend."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from pki.custody.file import FileKey
from pki.custody.keys import create_key, open_key, sign_certificate, sign_crl
from pki.custody.refs import FileRef, KmsRef, Pkcs11Ref, parse_key_ref
from pki.errors import Conflict, InvalidInput, WrongPassphrase
from pki.x509 import external
from pki.x509.keys import KeyType, key_family
from tests.custody_builders import (
    CLEAN_LINT,
    MemorySigner,
    ca_builder,
    crl_builder,
    judge,
    leaf_builder,
    signed_set,
)


@pytest.fixture(scope="module")
def keys() -> dict[KeyType, object]:
    return {key_type: key_type.generate() for key_type in KeyType}


@pytest.mark.parametrize("key_type", list(KeyType))
def test_external_and_direct_paths_sign_the_same_tbs(keys: dict[KeyType, object], key_type: KeyType) -> None:
    key = keys[key_type]
    signer = MemorySigner(key)  # type: ignore[arg-type]
    public = signer.public_key()
    hash_algorithm = key_type.signature_hash()
    workload = ec.generate_private_key(ec.SECP384R1()).public_key()
    for builder in (ca_builder(public), leaf_builder(public, workload, 42)):
        direct = builder.sign(key, hash_algorithm)  # type: ignore[arg-type]
        through = external.sign_certificate(builder, signer)
        assert through.tbs_certificate_bytes == direct.tbs_certificate_bytes
        assert through.signature_algorithm_oid == direct.signature_algorithm_oid == external.signature_algorithm(
            key_type)
        expected_hash = key_type.signature_hash()
        if expected_hash is None:  # ML-DSA: no separate hash
            assert through.signature_hash_algorithm is None
        else:
            assert through.signature_hash_algorithm is not None
            assert through.signature_hash_algorithm.name == expected_hash.name
        assert external.verify_signature(public, key_type, through.signature, through.tbs_certificate_bytes)
        assert external.verify_signature(public, key_type, direct.signature, direct.tbs_certificate_bytes)
        if key_family(key) == "rsa":  # PKCS#1 v1.5 is deterministic: the whole certificate is the same
            assert through.public_bytes(serialization.Encoding.DER) == direct.public_bytes(
                serialization.Encoding.DER)
    crl = crl_builder(public, list(range(1, 200)))  # well over KMS's 4 KB raw-message limit
    direct_crl = crl.sign(key, hash_algorithm)  # type: ignore[arg-type]
    through_crl = external.sign_crl(crl, signer)
    assert through_crl.tbs_certlist_bytes == direct_crl.tbs_certlist_bytes
    assert len(through_crl.tbs_certlist_bytes) > 4096
    assert through_crl.is_signature_valid(public) and direct_crl.is_signature_valid(public)  # type: ignore[arg-type]
    root = external.sign_certificate(ca_builder(public), signer)
    root.verify_directly_issued_by(root)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_both_paths_pass_openssl_with_the_crl_and_pkilint(tmp_path: Path, keys: dict[KeyType, object],
                                                           key_type: KeyType) -> None:
    key = keys[key_type]
    signer = MemorySigner(key)  # type: ignore[arg-type]
    hash_algorithm = key_type.signature_hash()
    paths = {
        "external": signed_set(signer.public_key(), lambda b: external.sign_certificate(b, signer),
                               lambda b: external.sign_crl(b, signer)),
    }
    if key_family(key) != "rsa":  # RSA: both paths give the same bytes (above), judged once
        paths["direct"] = signed_set(signer.public_key(), lambda b: b.sign(key, hash_algorithm),  # type: ignore[arg-type]
                                     lambda b: b.sign(key, hash_algorithm))  # type: ignore[arg-type]
    for name, (root, good, revoked, crl) in paths.items():
        judged = judge(tmp_path / name, root, good, revoked, crl)
        assert judged.good_leaf == "OK", name
        assert "certificate revoked" in judged.revoked_leaf, name  # the CRL was read and its signature accepted
        assert judged.lint == CLEAN_LINT, name


class _OtherKeySigner(MemorySigner):
    """Says it is one key, signs with another: a token holding a different key than configured."""

    def __init__(self, claimed: ec.EllipticCurvePrivateKey) -> None:
        super().__init__(ec.generate_private_key(ec.SECP256R1()))
        self.claimed = claimed

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self.claimed.public_key()


def test_a_signature_that_does_not_verify_is_never_returned() -> None:
    signer = _OtherKeySigner(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(external.ExternalSignatureInvalid, match="does not verify"):
        external.sign_certificate(ca_builder(signer.public_key()), signer)
    with pytest.raises(external.ExternalSignatureInvalid, match="does not verify"):
        external.sign_crl(crl_builder(signer.public_key(), [1]), signer)


def test_a_signer_whose_key_type_is_not_its_public_keys_is_refused() -> None:
    signer = MemorySigner(ec.generate_private_key(ec.SECP256R1()))
    signer.key_type = KeyType.EC_P384
    with pytest.raises(external.ExternalSignatureInvalid, match="ec-p384 but its public key is ec-p256"):
        external.sign_certificate(ca_builder(signer.public_key()), signer)


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384])
def test_raw_ecdsa_signatures_become_der(key_type: KeyType) -> None:
    key = key_type.generate()
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    der = key.sign(b"tbs", ec.ECDSA(key_type.signature_hash()))
    r, s = decode_dss_signature(der)
    size = (key.curve.key_size + 7) // 8
    raw = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    assert external.ecdsa_der_signature(raw) == der
    assert external.verify_signature(key.public_key(), key_type, external.ecdsa_der_signature(raw), b"tbs")
    with pytest.raises(ValueError, match="r\\|\\|s of equal lengths"):
        external.ecdsa_der_signature(raw[:-1])


# Key references


@pytest.mark.parametrize("text", [
    "ca/issuing-1.key.pem",
    "file:kms:odd name.pem",
    "pkcs11:token=rapki;object=issuing%202;id=%01%FF?module-path=/usr/lib/softhsm/libsofthsm2.so"
    "&pin-source=env:RAPKI_HSM_PIN",
    "pkcs11:token=rapki;id=%00?module-path=/opt/hsm/lib.so&pin-source=file:/etc/rapki/pin",
    "kms:arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab?fips=true",
    "kms:alias/rapki-issuing?region=eu-west-1&endpoint-url=http://127.0.0.1:4566",
])
def test_key_references_read_back_as_written(text: str) -> None:
    ref = parse_key_ref(text)
    assert str(ref) == text
    assert parse_key_ref(str(ref)) == ref
    assert parse_key_ref(ref.as_dict()) == ref


def test_key_reference_fields() -> None:
    ref = parse_key_ref({"backend": "pkcs11", "module": "/m.so", "token": "t", "label": "issuing-2", "id": "0a0b",
                         "pin_env": "HSM_PIN"})
    assert ref == Pkcs11Ref(module="/m.so", token="t", label="issuing-2", key_id=b"\x0a\x0b", pin_env="HSM_PIN")
    kms = parse_key_ref("kms:arn:aws:kms:us-east-2:123456789012:key/k")
    assert isinstance(kms, KmsRef) and kms.region == "us-east-2" and not kms.use_fips_endpoint
    assert parse_key_ref({"backend": "kms", "key_id": "k", "region": "us-gov-east-1", "use_fips_endpoint": True}) \
        == KmsRef(key_id="k", region="us-gov-east-1", use_fips_endpoint=True)
    assert parse_key_ref("ca/issuing-1.key.pem") == FileRef("ca/issuing-1.key.pem")


@pytest.mark.parametrize(("value", "message"), [
    ("pkcs11:token=t;object=k;pin-value=1234?module-path=/m.so", "never kept in the configuration"),
    ("pkcs11:token=t;object=k?module-path=/m.so&pin-value=1234", "never kept in the configuration"),
    ({"backend": "pkcs11", "module": "/m.so", "token": "t", "label": "k", "pin": "1234"}, "never kept"),
    ({"backend": "pkcs11", "module": "/m.so", "token": "t", "label": "k"}, "exactly one PIN source"),
    ({"backend": "pkcs11", "module": "/m.so", "token": "t", "pin_env": "P"}, "label .* or id"),
    ({"backend": "pkcs11", "module": "/m.so", "token": "t", "label": "k", "pin_env": "not a name"}, "not an env"),
    ({"backend": "pkcs11", "module": "/m.so", "token": "t", "id": "xyz", "pin_env": "P"}, "not hexadecimal"),
    ({"backend": "vault"}, "unknown key backend 'vault'"),
    ({"backend": "kms", "key_id": "k", "regoin": "x"}, "unknown settings regoin"),
    ({"backend": "kms", "key_id": "k", "use_fips_endpoint": "perhaps"}, "true or false"),
    ("kms:arn:aws:kms:us-east-1:123456789012:key/k?region=eu-west-1", "in us-east-1 but region eu-west-1"),
    ("kms:arn:aws:kms:nowhere", "not a KMS key ARN"),
    ("kms:k?endpoint-url=ftp://x", "not an http"),
    ("", "empty key reference"),
])
def test_bad_key_references_are_refused_naming_the_problem(value: object, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_key_ref(value)  # type: ignore[arg-type]


# The file backend


def test_file_keys_are_created_encrypted_and_opened_with_the_passphrase(tmp_path: Path) -> None:
    created = create_key("ca/issuing-9.key.pem", KeyType.EC_P384, base_dir=tmp_path, passphrase=lambda: b"s3cret")
    path = tmp_path / "ca/issuing-9.key.pem"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in path.read_bytes()
    opened = open_key({"backend": "file", "path": "ca/issuing-9.key.pem"}, base_dir=tmp_path, passphrase=b"s3cret")
    assert isinstance(opened, FileKey) and opened.key_type is KeyType.EC_P384
    assert opened.public_key() == created.public_key()
    assert opened.describe() == "file ca/issuing-9.key.pem (encrypted PKCS#8, ec-p384)"
    with pytest.raises(WrongPassphrase):
        open_key("ca/issuing-9.key.pem", base_dir=tmp_path, passphrase=b"wrong")
    with pytest.raises(Conflict, match="never replaces"):
        create_key("ca/issuing-9.key.pem", KeyType.EC_P256, base_dir=tmp_path, passphrase=b"s3cret")
    with pytest.raises(InvalidInput, match="cannot read the CA key file"):
        open_key("ca/missing.key.pem", base_dir=tmp_path, passphrase=b"s3cret")


def test_file_keys_sign_directly_and_through_the_external_path_alike(tmp_path: Path) -> None:
    key = create_key(str(tmp_path / "root.key.pem"), KeyType.RSA_2048, passphrase=b"pw")
    builder = ca_builder(key.public_key())
    direct = sign_certificate(builder, key)
    through = external.sign_certificate(builder, key)
    assert direct.public_bytes(serialization.Encoding.DER) == through.public_bytes(serialization.Encoding.DER)
    crl = sign_crl(crl_builder(key.public_key(), [5]), key)
    assert crl.is_signature_valid(key.public_key())  # type: ignore[arg-type]
    assert isinstance(direct, x509.Certificate)
