"""CA keys in AWS KMS (pki.custody.kms): the API surface against moto in server mode on
127.0.0.1, and the DIGEST signing path with botocore's Stubber (moto hashes a DIGEST message
again, so its signatures over digests do not verify: the Stubber checks the exact request and
answers with a signature made by a local key)."""

from __future__ import annotations

import hashlib
import socket
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from moto.server import ThreadedMotoServer

from pki.custody.keys import create_key, open_key
from pki.custody.kms import KEY_SPECS, SIGNING_ALGORITHMS, KmsKey, make_client
from pki.custody.refs import KmsRef
from pki.errors import InvalidInput, NotFound, Unavailable
from pki.x509 import external
from pki.x509.keys import KeyType, PrivateKey
from tests.custody_builders import (
    CLEAN_LINT,
    GOOD_SERIAL,
    REVOKED_SERIAL,
    MemorySigner,
    ca_builder,
    crl_builder,
    judge,
    leaf_builder,
)

ACCOUNT_ARN = "arn:aws:kms:us-east-1:123456789012:key/"


@pytest.fixture(autouse=True)
def dummy_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Credentials that sign requests and are worth nothing; no profile of this machine is read."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEEXAMPLE00")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "dummy-secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _new(moto_url: str) -> KmsRef:
    return KmsRef(key_id="", region="us-east-1", endpoint_url=moto_url)


@pytest.mark.parametrize("key_type", list(KeyType))
def test_keys_are_created_and_adopted_by_arn(kms_url: str, key_type: KeyType) -> None:
    """In moto with rapki's patch (service/emulator/kms.py: moto 5 has no ML-DSA keys)."""
    moto_url = kms_url
    created = create_key(_new(moto_url), key_type, description="rapki test issuing CA")
    assert isinstance(created, KmsKey) and created.key_type is key_type
    assert created.ref.key_id.startswith(ACCOUNT_ARN) and created.ref.region == "us-east-1"
    adopted = open_key(str(created.ref))
    assert adopted.public_key() == created.public_key()
    assert adopted.ref == created.ref
    assert adopted.describe() == f"kms {created.ref.key_id} (us-east-1, endpoint {moto_url}, {key_type})"
    meta = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url).describe_key(KeyId=created.ref.key_id)
    assert meta["KeyMetadata"]["KeyUsage"] == "SIGN_VERIFY"
    assert meta["KeyMetadata"]["KeySpec"] == KEY_SPECS[key_type]
    assert meta["KeyMetadata"]["Description"] == "rapki test issuing CA"


def test_an_alias_is_adopted_as_the_arn_it_points_to(moto_url: str) -> None:
    created = create_key(_new(moto_url), KeyType.EC_P384)
    boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url).create_alias(
        AliasName="alias/rapki-issuing", TargetKeyId=created.ref.key_id)
    adopted = open_key({"backend": "kms", "key_id": "alias/rapki-issuing", "region": "us-east-1",
                        "endpoint_url": moto_url})
    assert adopted.ref.key_id == created.ref.key_id  # an alias moved later cannot swap the key


def test_keys_that_cannot_be_ca_keys_are_refused(moto_url: str) -> None:
    kms = boto3.client("kms", region_name="us-east-1", endpoint_url=moto_url)
    symmetric = kms.create_key(KeySpec="SYMMETRIC_DEFAULT", KeyUsage="ENCRYPT_DECRYPT")["KeyMetadata"]["Arn"]
    with pytest.raises(InvalidInput, match="is for ENCRYPT_DECRYPT, not SIGN_VERIFY"):
        open_key(KmsRef(key_id=symmetric, endpoint_url=moto_url))
    secp256k1 = kms.create_key(KeySpec="ECC_SECG_P256K1", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["Arn"]
    with pytest.raises(InvalidInput, match="is ECC_SECG_P256K1: a CA key is one of ECC_NIST_P256"):
        open_key(KmsRef(key_id=secp256k1, endpoint_url=moto_url))
    disabled = create_key(_new(moto_url), KeyType.EC_P256)
    kms.disable_key(KeyId=disabled.ref.key_id.rsplit("/", 1)[1])  # moto looks keys up by id here
    with pytest.raises(Unavailable, match="is Disabled: a CA key must be enabled"):
        open_key(disabled.ref)
    with pytest.raises(NotFound, match="NotFoundException"):
        open_key(KmsRef(key_id=ACCOUNT_ARN + "00000000-0000-0000-0000-000000000000", endpoint_url=moto_url))
    with pytest.raises(InvalidInput, match="leave key_id empty"):
        create_key(disabled.ref, KeyType.EC_P256)


def test_an_unreachable_kms_is_unavailable_naming_the_key() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    with pytest.raises(Unavailable, match="KMS DescribeKey for key alias/ca failed"):
        open_key(KmsRef(key_id="alias/ca", region="us-east-1", endpoint_url=f"http://127.0.0.1:{closed}"))


@pytest.mark.parametrize(("ref", "endpoint"), [
    (KmsRef(key_id="arn:aws-us-gov:kms:us-gov-west-1:123456789012:key/k", use_fips_endpoint=True),
     "https://kms-fips.us-gov-west-1.amazonaws.com"),
    (KmsRef(key_id="arn:aws-us-gov:kms:us-gov-east-1:123456789012:key/k"), "https://kms.us-gov-east-1.amazonaws.com"),
    (KmsRef(key_id="k", region="us-east-2", use_fips_endpoint=True), "https://kms-fips.us-east-2.amazonaws.com"),
    (KmsRef(key_id="k", region="eu-west-1", endpoint_url="https://vpce-1.kms.eu-west-1.vpce.amazonaws.com"),
     "https://vpce-1.kms.eu-west-1.vpce.amazonaws.com"),
])
def test_govcloud_fips_and_explicit_endpoints(ref: KmsRef, endpoint: str) -> None:
    assert make_client(ref).meta.endpoint_url == endpoint


# The DIGEST path, request by request


def _stubbed_key(key: PrivateKey) -> tuple[KmsKey, Stubber]:
    """A KmsKey over a stubbed client whose key is ``key``, adopted through stubbed DescribeKey/GetPublicKey."""
    key_type = KeyType.of(key)
    arn = ACCOUNT_ARN + "1234abcd-12ab-34cd-56ef-1234567890ab"
    client = boto3.client("kms", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.add_response("describe_key", {"KeyMetadata": {
        "KeyId": arn.rsplit("/", 1)[1], "Arn": arn, "KeyState": "Enabled", "KeyUsage": "SIGN_VERIFY",
        "KeySpec": KEY_SPECS[key_type], "SigningAlgorithms": [SIGNING_ALGORITHMS[key_type]]}},
        {"KeyId": "alias/rapki"})
    public_der = key.public_key().public_bytes(serialization.Encoding.DER,
                                               serialization.PublicFormat.SubjectPublicKeyInfo)
    stubber.add_response("get_public_key", {"KeyId": arn, "PublicKey": public_der, "KeySpec": KEY_SPECS[key_type],
                                            "KeyUsage": "SIGN_VERIFY"}, {"KeyId": arn})
    stubber.activate()
    return KmsKey.adopt(KmsRef(key_id="alias/rapki", region="us-east-1"), client=client), stubber


def _expect_sign(stubber: Stubber, kms_key: KmsKey, key: PrivateKey, tbs: bytes) -> None:
    """The one Sign request signing ``tbs`` may make, and KMS's answer (made with the local key)."""
    message, message_type = _kms_message(kms_key.key_type, key, tbs)
    signature = MemorySigner(key).sign(tbs)
    algorithm = SIGNING_ALGORITHMS[kms_key.key_type]
    stubber.add_response("sign", {"KeyId": kms_key.ref.key_id, "Signature": signature, "SigningAlgorithm": algorithm},
                         {"KeyId": kms_key.ref.key_id, "Message": message, "MessageType": message_type,
                          "SigningAlgorithm": algorithm})


def _kms_message(key_type: KeyType, key: PrivateKey, tbs: bytes) -> tuple[bytes, str]:
    """What KMS must be sent: a digest (EC, RSA); for ML-DSA the TBS itself up to 4096 bytes, else its
    64-byte mu (SHAKE256 of tr, the empty context and the TBS; FIPS 204, computed here with hashlib)."""
    hash_algorithm = key_type.signature_hash()
    if hash_algorithm is not None:
        return hashlib.new(hash_algorithm.name, tbs).digest(), "DIGEST"
    if len(tbs) <= 4096:
        return tbs, "RAW"
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    tr = hashlib.shake_256(public).digest(64)
    return hashlib.shake_256(tr + b"\x00\x00" + tbs).digest(64), "EXTERNAL_MU"


@pytest.mark.parametrize("key_type", list(KeyType))
def test_kms_signs_digests_raw_or_mu_of_certificates_and_crls_over_4kb(tmp_path: Path, key_type: KeyType) -> None:
    key = key_type.generate()
    kms_key, stubber = _stubbed_key(key)
    public = kms_key.public_key()
    hash_algorithm = key_type.signature_hash()
    workload = ec.generate_private_key(ec.SECP256R1()).public_key()
    certificates = [ca_builder(public), leaf_builder(public, workload, GOOD_SERIAL),
                    leaf_builder(public, workload, REVOKED_SERIAL, dns=("revoked.example.com",))]
    crl = crl_builder(public, [REVOKED_SERIAL, *range(0x2000, 0x2000 + 150)])
    expected_tbs = [b.sign(key, hash_algorithm).tbs_certificate_bytes for b in certificates]  # type: ignore[arg-type]
    crl_tbs = crl.sign(key, hash_algorithm).tbs_certlist_bytes  # type: ignore[arg-type]
    assert len(crl_tbs) > 4096  # KMS would refuse this as a RAW message
    for tbs in [*expected_tbs, crl_tbs]:
        _expect_sign(stubber, kms_key, key, tbs)

    root, good, revoked = (external.sign_certificate(b, kms_key) for b in certificates)
    signed_crl = external.sign_crl(crl, kms_key)
    stubber.assert_no_pending_responses()  # one Sign call each (DIGEST, RAW or EXTERNAL_MU), exactly so
    assert [c.tbs_certificate_bytes for c in (root, good, revoked)] == expected_tbs
    assert signed_crl.tbs_certlist_bytes == crl_tbs
    judged = judge(tmp_path, root, good, revoked, signed_crl)
    assert judged.good_leaf == "OK"
    assert "certificate revoked" in judged.revoked_leaf
    assert judged.lint == CLEAN_LINT


def test_a_kms_signature_that_does_not_verify_is_never_returned() -> None:
    key = KeyType.EC_P256.generate()
    kms_key, stubber = _stubbed_key(key)
    builder = ca_builder(kms_key.public_key())
    tbs = builder.sign(key, KeyType.EC_P256.signature_hash()).tbs_certificate_bytes  # type: ignore[arg-type]
    # What moto answers: the digest hashed once more before signing.
    wrong = MemorySigner(key).sign(hashlib.sha256(tbs).digest())
    digest = hashlib.sha256(tbs).digest()
    stubber.add_response("sign", {"KeyId": kms_key.ref.key_id, "Signature": wrong, "SigningAlgorithm": "ECDSA_SHA_256"},
                         {"KeyId": kms_key.ref.key_id, "Message": digest, "MessageType": "DIGEST",
                          "SigningAlgorithm": "ECDSA_SHA_256"})
    with pytest.raises(external.ExternalSignatureInvalid, match="does not verify"):
        external.sign_certificate(builder, kms_key)


def test_kms_errors_while_signing_name_the_key() -> None:
    kms_key, stubber = _stubbed_key(KeyType.EC_P256.generate())
    stubber.add_client_error("sign", service_error_code="KMSInvalidStateException", service_message="key is disabled",
                             http_status_code=400)
    with pytest.raises(Unavailable, match=f"KMS Sign for key {kms_key.ref.key_id}: KMSInvalidStateException"):
        external.sign_certificate(ca_builder(kms_key.public_key()), kms_key)
    assert isinstance(kms_key.public_key(), ec.EllipticCurvePublicKey)
