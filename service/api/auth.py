"""Who is calling: enrollment tokens, operator tokens, client certificates (mutual TLS or a
``RAPKI-SIG-V1`` request signature, see ``pki.workload.client``).

A client certificate counts only if this CA issued exactly that certificate (its DER is on
record), it is unexpired and unrevoked. Under ``rapki serve`` the TLS layer has already checked
the chain (``CERT_OPTIONAL`` with the CA certificates as trust store); the database check here is
what makes revocation and "issued by us" hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from flask import request

from pki.ca.authority import CertificateAuthority, CertificateRecord
from pki.ca.tokens import OperatorToken, TokenStore
from pki.errors import Forbidden, NotFound, Unauthenticated
from pki.workload.client import SIGNATURE_MAX_SKEW, verify_request_signature


class CertificateRevoked(Unauthenticated):
    code = "certificate_revoked"


class CertificateExpired(Unauthenticated):
    code = "certificate_expired"


class UnknownCertificate(Unauthenticated):
    code = "unknown_certificate"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller; ``actor`` is what the audit log records (never a secret)."""

    kind: str  # enrollment-token | operator-token | certificate | operator-certificate
    id: str
    address: str
    via: str = ""
    certificate: CertificateRecord | None = None

    @property
    def actor(self) -> str:
        via = f"/{self.via}" if self.via else ""
        return f"api:{self.kind}{via}:{self.id}@{self.address}"

    @property
    def is_operator(self) -> bool:
        return self.kind in ("operator-token", "operator-certificate")


def client_address() -> str:
    return request.remote_addr or "unknown"


def parse_bearer(header: str) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, or None."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def bearer_token() -> str | None:
    return parse_bearer(request.headers.get("Authorization", ""))


def require_bearer(header: str | None = None) -> str:
    """The bearer token of this request (or of the ``Authorization`` value given); 401 without one."""
    token = parse_bearer(header if header is not None else request.headers.get("Authorization", ""))
    if token is None:
        raise Unauthenticated("missing credentials: send 'Authorization: Bearer <token>' with the token an "
                              "operator created ('rapki token create')")
    return token


def peer_certificate() -> x509.Certificate | None:
    """The client certificate of this TLS connection, verified in the handshake (the server puts
    it in ``SSL_CLIENT_CERT``, PEM: ``service.api.asgi``); headers can never set that key."""
    pem = request.environ.get("SSL_CLIENT_CERT")
    return x509.load_pem_x509_certificate(pem.encode("ascii")) if pem else None


def has_signature() -> bool:
    return "X-Rapki-Signature" in request.headers


def certificate_caller(ca: CertificateAuthority, replay_check: Callable[[str, int], bool] | None = None, *,
                       operator_profiles: tuple[str, ...] = (), accept_signed: bool = True) -> Caller | None:
    """The certificate holder calling (mutual TLS first, then a request signature), or None."""
    via = "mtls"
    cert = peer_certificate()
    if cert is None and accept_signed and has_signature():
        headers = {k: request.headers.get(k, "") for k in
                   ("X-Rapki-Certificate", "X-Rapki-Timestamp", "X-Rapki-Signature")}
        headers = {k: v for k, v in headers.items() if v}
        cert, signature = verify_request_signature(headers, request.method, request.path,
                                                   request.get_data(cache=True))
        if replay_check is not None:
            digest = hashlib.sha256(signature).hexdigest()
            if not replay_check(digest, 2 * SIGNATURE_MAX_SKEW):
                raise Unauthenticated("this signed request was already used (replay): sign each request anew")
        via = "signature"
    if cert is None:
        return None
    record = known_certificate(ca, cert)
    kind = "operator-certificate" if record.profile in operator_profiles else "certificate"
    return Caller(kind, record.serial, client_address(), via, record)


def known_certificate(ca: CertificateAuthority, cert: x509.Certificate) -> CertificateRecord:
    serial = format(cert.serial_number, "x")
    try:
        record = ca.find(serial)
    except NotFound:
        record = None
    if record is None or record.der != cert.public_bytes(serialization.Encoding.DER):
        raise UnknownCertificate("this client certificate was not issued by this CA: enroll with a token first")
    if record.revoked_at is not None:
        raise CertificateRevoked(f"certificate {serial} is revoked: enroll again with a new token")
    if record.not_after <= datetime.now(UTC):
        raise CertificateExpired(f"certificate {serial} expired: enroll again with a new token")
    return record


def operator_caller(ca: CertificateAuthority, tokens: TokenStore, *, operator_profiles: tuple[str, ...],
                    replay_check: Callable[[str, int], bool] | None = None, accept_signed: bool = True) -> Caller:
    """An operator (operator API token, or a certificate of an operator profile); 401/403 otherwise."""
    token = bearer_token()
    if token is not None:
        record: OperatorToken = tokens.authenticate_operator(token)
        return Caller("operator-token", record.id, client_address())
    caller = certificate_caller(ca, replay_check, operator_profiles=operator_profiles, accept_signed=accept_signed)
    if caller is None:
        raise Unauthenticated("operator credentials needed: 'Authorization: Bearer <operator token>' "
                              "('rapki operator token create') or an operator client certificate")
    if not caller.is_operator:
        raise Forbidden("this certificate is not an operator's: operator profiles are "
                        f"{list(operator_profiles) or 'not configured'} ([api].operator_profiles)")
    return caller
