"""The enrollment client's pieces that need no server: renewal timing, request signatures, files."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from pki.ca.authority import CertificateAuthority
from pki.custody.keys import signing_key
from pki.errors import InvalidInput, Unauthenticated, Unavailable
from pki.workload.client import EnrollmentClient, make_csr, renewal_due, sign_request, verify_request_signature
from pki.x509.external import certificate_signed_by
from pki.x509.issuance import load_csr, read_csr
from pki.x509.keys import KeyType


def test_renewal_due_after_two_thirds(ca: CertificateAuthority) -> None:
    cert = ca.issue("web", cn="web-1", ttl=timedelta(hours=30)).certificate
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    at = start + (end - start) * 2 / 3
    assert not renewal_due(cert, at - timedelta(seconds=1)).due
    assert renewal_due(cert, at).due
    assert renewal_due(cert, at).not_after == end


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048, KeyType.ML_DSA_44,
                                      KeyType.ML_DSA_65, KeyType.ML_DSA_87])
def test_request_signature_round_trip_and_tampering(ca: CertificateAuthority, key_type: KeyType) -> None:
    key = key_type.generate()
    issued = ca.issue("web", csr=make_csr(key, "web-2"))
    now = 1_800_000_000.0
    headers = sign_request(key, issued.certificate, "POST", "/v1/renew", b'{"a":1}', now=now)
    cert, _sig = verify_request_signature(headers, "POST", "/v1/renew", b'{"a":1}', now=now + 10)
    assert cert == issued.certificate
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_request_signature(headers, "POST", "/v1/renew", b'{"a":2}', now=now)
    with pytest.raises(Unauthenticated, match="does not verify"):
        verify_request_signature(headers, "POST", "/v1/revoke", b'{"a":1}', now=now)
    with pytest.raises(Unauthenticated, match="5 minutes"):
        verify_request_signature(headers, "POST", "/v1/renew", b'{"a":1}', now=now + 301)
    forged = sign_request(key_type.generate(), issued.certificate, "POST", "/v1/renew", b'{"a":1}', now=now)
    with pytest.raises(Unauthenticated):
        verify_request_signature(forged, "POST", "/v1/renew", b'{"a":1}', now=now)
    with pytest.raises(Unauthenticated, match=r"malformed .*: X-Rapki-Certificate is missing"):
        verify_request_signature({}, "POST", "/v1/renew", b"", now=now)


def test_csr_carries_only_cn_and_sans() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    content = read_csr(load_csr(make_csr(key, "web-3", ["dns:a.example.com", "uri:https://example.com/x"])))
    assert content.common_name == "web-3"
    assert content.sans.dns == ("a.example.com",) and content.sans.uri == ("https://example.com/x",)


def test_client_refuses_plain_http() -> None:
    with pytest.raises(InvalidInput):
        EnrollmentClient("http://127.0.0.1:8443")


def test_renew_refuses_expired_certificate_locally(ca: CertificateAuthority, tmp_path: Path) -> None:
    """An expired certificate cannot renew itself: say so without calling the server."""
    from pki.workload.client import renew

    issued = ca.issue("web", cn="web-4")
    issued.write_to(tmp_path)
    # Rewrite cert.pem with a certificate that expired (same key), signed by the same issuer.
    issuer = ca.issuer()
    old = certificate_signed_by(
        x509.CertificateBuilder().subject_name(issued.certificate.subject).issuer_name(issuer.certificate.subject)
        .public_key(issued.private_key.public_key()).serial_number(x509.random_serial_number())  # type: ignore[union-attr]
        .not_valid_before(datetime.now(UTC) - timedelta(days=2))
        .not_valid_after(datetime.now(UTC) - timedelta(days=1)),
        signing_key(ca.issuer_key(issuer)))
    from cryptography.hazmat.primitives import serialization

    (tmp_path / "cert.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(InvalidInput, match="expired"):
        renew("https://127.0.0.1:1", tmp_path, force=True)


@pytest.fixture
def tls_server(ca: CertificateAuthority, tmp_path: Path) -> Iterator[int]:
    """A TLS listener on 127.0.0.1 presenting a server certificate of ``ca``; handshakes, then closes."""
    issued = ca.issue_server_certificate(["127.0.0.1"])
    paths = issued.write_to(tmp_path / "server")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(paths["certificate"]), str(paths["private_key"]))
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = listener.accept()
                with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                    pass

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1]
    listener.close()


def test_an_untrusted_server_says_to_pass_the_ca_bundle(tls_server: int, tmp_path: Path,
                                                        passphrase_env: str) -> None:
    client = EnrollmentClient(f"https://127.0.0.1:{tls_server}")
    with pytest.raises(Unavailable, match=r"does not trust .*pass --ca-bundle with the rapki root CA"):
        client.request("GET", "/healthz")
    other = CertificateAuthority.init(tmp_path / "other", passphrase=b"x" * 16)
    bundle = other.home.root_cert_path
    client = EnrollmentClient(f"https://127.0.0.1:{tls_server}", ca_bundle=bundle)
    with pytest.raises(Unavailable, match=rf"not trusted by --ca-bundle {bundle}"):
        client.request("GET", "/healthz")


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO >= (3, 5), reason="this OpenSSL does mutual TLS with ML-DSA")
def test_an_ml_dsa_client_certificate_points_to_signed_renewal(ca: CertificateAuthority, tmp_path: Path) -> None:
    """OpenSSL before 3.5 cannot load an ML-DSA certificate for TLS: one line naming --signed, no traceback."""
    from pki.x509.keys import private_key_pem

    key = KeyType.ML_DSA_44.generate()
    issued = ca.issue("web", csr=make_csr(key, "web-4"))
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    issued.cert_pem.write_to_path(cert)
    key_file.write_bytes(private_key_pem(key))
    client = EnrollmentClient("https://127.0.0.1:1", client_cert=(cert, key_file))
    with pytest.raises(InvalidInput, match=r"cannot be used for mutual TLS.*renew with --signed"):
        client.request("POST", "/v1/renew", {})
