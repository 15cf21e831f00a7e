"""SigV4-X509 signing reproduces the shared known-answer vectors; verification refuses tampering."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa

from pki.rolesanywhere import sigv4x509 as s


# shared/ beside the checkout (as CI lays it out), else the development machine's copy.
def _shared(kind: str) -> Path:
    return next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "vectors" / kind,
                             Path("/work/shared/vectors") / kind) if p.is_dir()),
                Path("/work/shared/vectors") / kind)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if (p / "vector.json").is_file()) if folder.is_dir() else []


VECTORS = _shared("sigv4-x509")
MLDSA_VECTORS = _shared("sigv4-x509-mldsa")
# ML-DSA vectors are named by their folder there; both sets go through the same tests.
VECTOR_NAMES = _names(VECTORS) + _names(MLDSA_VECTORS)


def _folder(name: str) -> Path:
    return VECTORS / name if (VECTORS / name).is_dir() else MLDSA_VECTORS / name


def load_vector(name: str) -> dict[str, Any]:
    folder = _folder(name)
    vector = json.loads((folder / "vector.json").read_text())
    vector["leaf"] = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
    # ``cryptography`` reads ML-DSA keys only in the seed-only form, which ML-DSA vectors also ship.
    key_file = folder / "key-seed.pem" if (folder / "key-seed.pem").exists() else folder / "key.pem"
    vector["key"] = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    chain_file = folder / "chain.pem"
    vector["chain"] = (
        x509.load_pem_x509_certificates(chain_file.read_bytes()) if chain_file.exists() else []
    )
    return vector


def sign_vector(v: dict[str, Any], **overrides: Any) -> s.SignedRequest:
    args: dict[str, Any] = {
        "certificate": v["leaf"],
        "private_key": v["key"],
        "chain": v["chain"],
        "host": v["host"],
        "region": v["region"],
        "query": v["request_query"],
        "body": v["request_body"].encode(),
        "now": s.parse_amz_date(v["amz_date"]),
    }
    args.update(overrides)
    return s.sign_create_session(**args)


def verify(
    signed: s.SignedRequest, *, now: Any, region: str | None = None, **changes: Any
) -> s.VerifiedRequest:
    path, _, query = signed.path_and_query.partition("?")
    args: dict[str, Any] = {
        "method": "POST",
        "path": path,
        "raw_query": query,
        "headers": signed.headers,
        "body": signed.body,
        "now": now,
        "expected_region": region,
    }
    args.update(changes)
    return s.verify_create_session(**args)


pytestmark = pytest.mark.skipif(not VECTOR_NAMES, reason="shared vectors not present")


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_reproduced_exactly(name: str) -> None:
    v = load_vector(name)
    signed = sign_vector(v)
    assert signed.canonical_request == v["canonical_request"]
    assert signed.string_to_sign == v["string_to_sign"]
    auth = signed.headers["Authorization"]
    if v["signature_is_deterministic"]:
        assert auth == v["authorization"]
    else:
        assert auth.startswith(v["authorization_prefix"])
        sig = bytes.fromhex(auth.removeprefix(v["authorization_prefix"]))
        assert s.verify_bytes(v["leaf"].public_key(), sig, v["string_to_sign"].encode())
    assert signed.body == v["request_body"].encode()
    assert signed.headers["Host"] == v["host"]
    assert signed.headers["X-Amz-Date"] == v["amz_date"]
    assert ("X-Amz-X509-Chain" in signed.headers) == v["has_chain"]
    assert signed.path_and_query == "/sessions?" + v["canonical_request"].split("\n")[2]


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_example_authorization_verifies(name: str) -> None:
    """The reference's own signature (RSA, ECDSA or ML-DSA) passes our verifier."""
    v = load_vector(name)
    signed = sign_vector(v)
    headers = dict(signed.headers, Authorization=v["example_authorization"])
    result = verify(
        replace(signed, headers=headers), now=s.parse_amz_date(v["amz_date"]), region=v["region"]
    )
    assert result.certificate.serial_number == v["leaf"].serial_number
    assert len(result.chain) == len(v["chain"])
    assert result.string_to_sign == v["string_to_sign"]


def test_algorithm_from_key_type_only() -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    assert s.algorithm_for_key(p384) == s.ALGORITHM_ECDSA
    assert s.algorithm_for_key(p384.public_key()) == s.ALGORITHM_ECDSA
    for key in (mldsa.MLDSA44PrivateKey.generate(), mldsa.MLDSA87PrivateKey.generate()):
        assert s.algorithm_for_key(key) == s.algorithm_for_key(key.public_key()) == "AWS4-X509-MLDSA"


# ---- ML-DSA, checked by a second implementation (dilithium-py) --------------------------------

MLDSA_NAMES = _names(MLDSA_VECTORS)


def _dilithium(key_type: str) -> Any:
    ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
    return {"ml-dsa-44": ml_dsa.ML_DSA_44, "ml-dsa-65": ml_dsa.ML_DSA_65, "ml-dsa-87": ml_dsa.ML_DSA_87}[key_type]


@pytest.mark.parametrize("name", MLDSA_NAMES)
def test_mldsa_signature_verified_by_dilithium_py(name: str) -> None:
    """Pure ML-DSA over the string to sign, empty context: what the helper signs and AWS checks."""
    v = load_vector(name)
    signed = sign_vector(v)
    signature = bytes.fromhex(signed.headers["Authorization"].removeprefix(v["authorization_prefix"]))
    public = v["leaf"].public_key().public_bytes_raw()
    scheme = _dilithium(v["key_type"])
    assert scheme.verify(public, v["string_to_sign"].encode(), signature, ctx=b"")
    assert not scheme.verify(public, v["string_to_sign"].encode(), signature, ctx=b"rolesanywhere")
    assert not scheme.verify(public, v["string_to_sign"].encode() + b" ", signature)


@pytest.mark.parametrize("name", MLDSA_NAMES)
def test_mldsa_example_is_the_deterministic_signature(name: str) -> None:
    """The vector's example header is FIPS 204 deterministic signing (the helper's mode) of the
    string to sign with the seed of key.pem: a second implementation makes the very same bytes."""
    v = load_vector(name)
    _, expanded = _dilithium(v["key_type"]).key_derive(v["key"].private_bytes_raw())
    signature = _dilithium(v["key_type"]).sign(expanded, v["string_to_sign"].encode(), ctx=b"", deterministic=True)
    assert v["example_authorization"] == v["authorization_prefix"] + signature.hex()


@pytest.mark.parametrize("name", MLDSA_NAMES)
def test_mldsa_signature_refused_for_another_key_or_string(name: str) -> None:
    v = load_vector(name)
    signed = sign_vector(v)
    signature = bytes.fromhex(signed.headers["Authorization"].removeprefix(v["authorization_prefix"]))
    other = mldsa.MLDSA65PrivateKey.generate().public_key()
    assert not s.verify_bytes(other, signature, v["string_to_sign"].encode())
    assert not s.verify_bytes(v["leaf"].public_key(), signature, v["string_to_sign"].encode()[:-1])
    ecdsa_header = signed.headers["Authorization"].replace("AWS4-X509-MLDSA", "AWS4-X509-ECDSA-SHA256", 1)
    with pytest.raises(s.InvalidSignatureError):
        verify(replace(signed, headers=dict(signed.headers, Authorization=ecdsa_header)), now=_now(v))


def test_canonical_query_encoding() -> None:
    assert s.canonical_query({"b": "a:b/c d~", "a": "x"}) == "a=x&b=a%3Ab%2Fc%20d~"
    assert s.canonical_query_from_raw("b=a%3Ab%2Fc%20d~&a=x") == "a=x&b=a%3Ab%2Fc%20d~"
    assert s.canonical_query_from_raw("a=1+2&b&c=%7e") == "a=1%2B2&b=&c=~"


def test_canonical_headers_trim_and_collapse() -> None:
    block, signed = s.canonical_headers(
        {"X-B": "  a   b  ", "Host": "h", "Authorization": "x", "User-Agent": "u"}
    )
    assert block == "host:h\nx-b:a b\n"
    assert signed == "host;x-b"


# ---- refusals ----------------------------------------------------------------------------------


@pytest.fixture
def rsa_vector() -> dict[str, Any]:
    return load_vector("rsa2048-loopback-port")


def _now(v: dict[str, Any]) -> Any:
    return s.parse_amz_date(v["amz_date"])


def test_untouched_request_verifies(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    assert verify(signed, now=_now(rsa_vector) + timedelta(minutes=4), region=rsa_vector["region"])


def test_tampered_signature_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    auth = signed.headers["Authorization"]
    flipped = auth[:-1] + ("0" if auth[-1] != "0" else "1")
    with pytest.raises(s.InvalidSignatureError) as info:
        verify(
            replace(signed, headers=dict(signed.headers, Authorization=flipped)),
            now=_now(rsa_vector),
        )
    assert info.value.message == "Invalid signature"
    assert info.value.http_status == 403 and info.value.error_type == "AccessDeniedException"


def test_wrong_key_refused(rsa_vector: dict[str, Any]) -> None:
    other = load_vector("rsa2048-commercial")["key"]
    signed = sign_vector(rsa_vector, private_key=other)
    with pytest.raises(s.InvalidSignatureError, match="Invalid signature"):
        verify(signed, now=_now(rsa_vector))


def test_stale_date_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    with pytest.raises(s.SignatureExpiredError, match="Signature expired"):
        verify(signed, now=_now(rsa_vector) + timedelta(minutes=5, seconds=1))
    with pytest.raises(s.SignatureExpiredError):
        verify(signed, now=_now(rsa_vector) - timedelta(minutes=6))


def test_wrong_region_in_scope_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector, region="us-west-2")
    with pytest.raises(s.InvalidSignatureError, match="Invalid signature"):
        verify(signed, now=_now(rsa_vector), region=rsa_vector["region"])


def test_altered_body_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    with pytest.raises(s.InvalidSignatureError, match="Invalid signature"):
        verify(signed, now=_now(rsa_vector), body=b'{"durationSeconds": 43200}')


def test_altered_query_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    _, _, query = signed.path_and_query.partition("?")
    with pytest.raises(s.InvalidSignatureError):
        verify(signed, now=_now(rsa_vector), raw_query=query.replace("role%2Fdev", "role%2Fadmin"))


def test_missing_signed_header_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    headers = {k: v for k, v in signed.headers.items() if k != "Content-Type"}
    with pytest.raises(s.InvalidSignatureError, match="Invalid signature") as info:
        verify(replace(signed, headers=headers), now=_now(rsa_vector))
    assert "content-type" in (info.value.detail or "")


def test_certificate_header_must_be_signed(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    auth = signed.headers["Authorization"].replace(";x-amz-x509;", ";")
    with pytest.raises(s.InvalidSignatureError):
        verify(
            replace(signed, headers=dict(signed.headers, Authorization=auth)), now=_now(rsa_vector)
        )


def test_swapped_certificate_refused(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    other = load_vector("rsa2048-commercial")["leaf"]
    headers = dict(signed.headers, **{"X-Amz-X509": s.certificate_header(other)})
    with pytest.raises(s.InvalidSignatureError):
        verify(replace(signed, headers=headers), now=_now(rsa_vector))


def test_missing_authorization(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    headers = {k: v for k, v in signed.headers.items() if k != "Authorization"}
    with pytest.raises(s.MissingAuthenticationError):
        verify(replace(signed, headers=headers), now=_now(rsa_vector))


def test_garbage_certificate_header(rsa_vector: dict[str, Any]) -> None:
    signed = sign_vector(rsa_vector)
    with pytest.raises(s.CertificateHeaderError, match="Untrusted Signing Certificate"):
        verify(
            replace(signed, headers=dict(signed.headers, **{"X-Amz-X509": "!!notbase64"})),
            now=_now(rsa_vector),
        )


def test_body_formatting_free_when_signed_as_sent(rsa_vector: dict[str, Any]) -> None:
    body = b'{\n  "durationSeconds" : 900,\n  "roleSessionName": "x"\n}'
    signed = sign_vector(rsa_vector, body=body, query={})
    result = verify(signed, now=_now(rsa_vector))
    assert result.canonical_request.split("\n")[2] == ""
