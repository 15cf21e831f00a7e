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
from cryptography.hazmat.primitives.asymmetric import ec

from pki.rolesanywhere import sigv4x509 as s

# shared/ beside the checkout (as CI lays it out), else the development machine's copy.
VECTORS = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "vectors" / "sigv4-x509",
                            Path("/work/shared/vectors/sigv4-x509")) if p.is_dir()),
               Path("/work/shared/vectors/sigv4-x509"))
VECTOR_NAMES = (
    sorted(p.name for p in VECTORS.iterdir() if (p / "vector.json").is_file())
    if VECTORS.is_dir()
    else []
)


def load_vector(name: str) -> dict[str, Any]:
    folder = VECTORS / name
    vector = json.loads((folder / "vector.json").read_text())
    vector["leaf"] = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
    vector["key"] = serialization.load_pem_private_key(
        (folder / "key.pem").read_bytes(), password=None
    )
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
    """The reference's own signature (RSA or ECDSA) passes our verifier."""
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
