"""The enrollment API's client (``rapki enroll``, ``rapki renew``) and its request-signature scheme.

Standard library only (``http.client`` + ``ssl``), so a workload needs nothing beyond rapki's own
dependencies. Files are written atomically (temporary file + ``rename``), the key 0600 from the
start; on renewal the key is replaced first, then the certificate, then the chain, so a running
``rapki-signer serve`` that reads the pair in between gets a mismatch, keeps its last good
credentials and retries shortly (it never uses a half-written file).

Request signatures (``RAPKI-SIG-V1``), for deployments where TLS ends at a proxy and the client
certificate does not reach rapki. The client sends three headers::

    X-Rapki-Certificate: base64(DER of its current certificate)
    X-Rapki-Timestamp:   Unix time in seconds
    X-Rapki-Signature:   base64(signature over the string below, made with the certificate's key)

    RAPKI-SIG-V1\\n<METHOD>\\n<PATH>\\n<TIMESTAMP>\\n<hex SHA-256 of the body>

ECDSA keys sign with ECDSA-SHA256 (DER), RSA keys with PKCS#1 v1.5 SHA-256, ML-DSA keys with pure
ML-DSA (FIPS 204, empty context) over the string itself. The server accepts a
timestamp within 5 minutes of its clock and each signature once (replays are refused), and checks
the certificate as for mutual TLS: issued by this CA (the exact DER is on record), unexpired,
unrevoked.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID

from pki.errors import InvalidInput, RapkiError, Unauthenticated, Unavailable
from pki.files import atomic_write
from pki.rolesanywhere.credential_process import credential_process_line as signer_line
from pki.x509.keys import (
    KeyType,
    PrivateKey,
    key_family,
    load_private_key,
    sign_message,
    signature_verifies,
    workload_key_pem,
)
from pki.x509.pem import Pem, load_certificate, load_certificates, pkcs12_bundle

SIGNATURE_SCHEME = "RAPKI-SIG-V1"
SIGNATURE_MAX_SKEW = 300
RENEW_FRACTION = 2 / 3
TIMEOUT = 30.0


# --- request signatures ----------------------------------------------------------------------------
def string_to_sign(method: str, path: str, timestamp: str, body: bytes) -> bytes:
    return "\n".join([SIGNATURE_SCHEME, method.upper(), path, timestamp,
                      hashlib.sha256(body).hexdigest()]).encode()


def sign_request(key: PrivateKey, certificate: x509.Certificate, method: str, path: str, body: bytes,
                 now: float | None = None) -> dict[str, str]:
    """The three headers that authenticate a request with the certificate's key."""
    timestamp = str(int(now if now is not None else time.time()))
    message = string_to_sign(method, path, timestamp, body)
    signature = sign_message(key, message, hashes.SHA256())  # ML-DSA: pure, empty context, no hash
    return {
        "X-Rapki-Certificate": base64.b64encode(certificate.public_bytes(serialization.Encoding.DER)).decode(),
        "X-Rapki-Timestamp": timestamp,
        "X-Rapki-Signature": base64.b64encode(signature).decode(),
    }


def verify_request_signature(headers: dict[str, str], method: str, path: str, body: bytes,
                             now: float | None = None) -> tuple[x509.Certificate, bytes]:
    """The certificate a signed request was made with, and the signature (for replay checks).
    Unauthenticated when the signature, its timestamp or its headers are wrong."""
    try:
        der = base64.b64decode(headers["X-Rapki-Certificate"], validate=True)
        timestamp = headers["X-Rapki-Timestamp"]
        signature = base64.b64decode(headers["X-Rapki-Signature"], validate=True)
        certificate = x509.load_der_x509_certificate(der)
        when = int(timestamp)
    except KeyError as exc:  # str() of a KeyError is the bare quoted name: say what it is
        raise Unauthenticated(f"malformed {SIGNATURE_SCHEME} signature headers: {exc.args[0]} is missing "
                              "(a signed request sends X-Rapki-Certificate, X-Rapki-Timestamp and "
                              "X-Rapki-Signature)") from exc
    except ValueError as exc:
        raise Unauthenticated(f"malformed {SIGNATURE_SCHEME} signature headers: {exc}") from exc
    now = now if now is not None else time.time()
    if abs(now - when) > SIGNATURE_MAX_SKEW:
        raise Unauthenticated("the request signature's timestamp is more than 5 minutes off the server clock: "
                              "check the client's clock")
    message = string_to_sign(method, path, timestamp, body)
    public_key = certificate.public_key()
    if not key_family(public_key):
        raise Unauthenticated("the certificate's key type cannot sign requests")
    if not signature_verifies(public_key, signature, message, hashes.SHA256()):
        raise Unauthenticated("the request signature does not verify with the certificate's key")
    return certificate, signature


# --- HTTP ------------------------------------------------------------------------------------------
class ApiError(RapkiError):
    """An error answer of the enrollment API: its code, status and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} (HTTP {status} {code})")
        self.http_status = status
        self.code = code
        self.exit_code = 2 if 400 <= status < 500 else 1


@dataclass
class EnrollmentClient:
    url: str
    ca_bundle: Path | None = None
    client_cert: tuple[Path, Path] | None = None  # certificate, key: mutual TLS
    timeout: float = TIMEOUT

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "https" or not parts.hostname:
            raise InvalidInput(f"the URL must be https://host[:port], not {self.url!r}")
        self.host = parts.hostname
        self.port = parts.port or 443
        self.prefix = parts.path.rstrip("/")

    def _context(self) -> ssl.SSLContext:
        try:
            context = ssl.create_default_context(cafile=str(self.ca_bundle) if self.ca_bundle else None)
        except ssl.SSLError as exc:  # a file that holds no PEM certificate: bad input, not a connection failure
            raise InvalidInput(f"the CA bundle {self.ca_bundle} holds no PEM certificate ({exc.reason}): pass the "
                               "CA's root certificate ('rapki ca root')") from None
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.client_cert is not None:
            try:
                context.load_cert_chain(str(self.client_cert[0]), str(self.client_cert[1]))
            except ssl.SSLError as exc:  # e.g. an ML-DSA certificate under an OpenSSL before 3.5
                raise InvalidInput(f"{self.client_cert[0]} cannot be used for mutual TLS by this Python's TLS "
                                   f"library ({ssl.OPENSSL_VERSION}: {exc.reason or exc}): renew with --signed "
                                   "(a RAPKI-SIG-V1 request signature) instead") from None
        return context

    def request(self, method: str, path: str, body: dict[str, Any] | None = None,
                headers: dict[str, str] | None = None, signer: tuple[PrivateKey, x509.Certificate] | None = None,
                ) -> tuple[int, dict[str, str], bytes]:
        data = json.dumps(body).encode() if body is not None else b""
        all_headers = {"Accept": "application/json", **(headers or {})}
        if body is not None:
            all_headers["Content-Type"] = "application/json"
        full_path = self.prefix + path
        if signer is not None:
            all_headers.update(sign_request(signer[0], signer[1], method, full_path, data))
        conn = http.client.HTTPSConnection(self.host, self.port, context=self._context(), timeout=self.timeout)
        try:
            conn.request(method, full_path, body=data or None, headers=all_headers)
            response = conn.getresponse()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        except ssl.SSLCertVerificationError as exc:
            raise Unavailable(self._untrusted(exc)) from exc
        except ssl.SSLError as exc:
            refused = " (is the client certificate one this CA issued, still valid?)" if self.client_cert else ""
            raise Unavailable(f"TLS with {self.host}:{self.port} failed: {exc.reason or exc}{refused}") from exc
        except OSError as exc:
            raise Unavailable(f"cannot reach {self.url}: {exc}") from exc
        finally:
            conn.close()

    def _untrusted(self, exc: ssl.SSLCertVerificationError) -> str:
        why = exc.verify_message or exc.reason or str(exc)
        if self.ca_bundle is None:
            return (f"the server {self.host}:{self.port} presented a certificate this machine does not trust "
                    f"({why}): pass --ca-bundle with the rapki root CA (the operator's 'rapki ca root', or "
                    "GET /v1/ca/root fetched over a channel you trust)")
        return f"the server {self.host}:{self.port} is not trusted by --ca-bundle {self.ca_bundle} ({why})"

    def call(self, method: str, path: str, body: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        status, _headers, data = self.request(method, path, body, **kwargs)
        try:
            answer = json.loads(data) if data else {}
        except ValueError:
            raise ApiError(status, "bad_response", f"the server answered non-JSON: {data[:200]!r}") from None
        if status >= 400:
            raise ApiError(status, answer.get("error", "error"), answer.get("message", "request failed"))
        return answer


# --- files -----------------------------------------------------------------------------------------
def make_csr(key: PrivateKey, cn: str | None, sans: Sequence[str] = ()) -> bytes:
    """A CSR for ``key`` with only a CN (and SANs): what rapki issues, nothing it would refuse."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else []))
    names: list[x509.GeneralName] = []
    for san in sans:
        kind, _, value = san.partition(":")
        names.append(x509.UniformResourceIdentifier(value) if kind == "uri" else x509.DNSName(value))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(key, KeyType.of(key).signature_hash()).public_bytes(serialization.Encoding.PEM)


def write_material(out: Path, certificate_pem: str, chain_pem: str, key_pem: bytes | None) -> dict[str, Path]:
    """Write key.pem (0600), cert.pem and chain.pem atomically, key first (see module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if key_pem is not None:
        written["private_key"] = Pem(key_pem).write_to_path(out / "key.pem", secret=True)
    written["certificate"] = Pem(certificate_pem.encode()).write_to_path(out / "cert.pem")
    written["chain"] = Pem(chain_pem.encode()).write_to_path(out / "chain.pem")
    fsync_dir(out)
    return written


def credential_process_line(out: Path, binding: dict[str, Any]) -> str:
    """The ``credential_process`` line for files in ``out`` (absolute paths)."""
    out = out.resolve()
    return signer_line(
        certificate=str(out / "cert.pem"), private_key=str(out / "key.pem"), intermediates=str(out / "chain.pem"),
        trust_anchor_arn=binding["trust_anchor_arn"], profile_arn=binding["profile_arn"],
        role_arn=binding["role_arn"], endpoint=binding.get("endpoint_url") or "",
        ca_bundle=binding.get("ca_bundle") or "")


def enroll(client: EnrollmentClient, token: str, out: Path, *, key_type: str | None = None,
           csr_mode: bool = False, cn: str | None = None, sans: list[str] | None = None,
           ttl: str | None = None, pkcs12_password: bytes | None = None) -> dict[str, Any]:
    """Redeem ``token``: with ``csr_mode`` the key is made here and never leaves this host.

    With ``pkcs12_password`` the key goes into ``bundle.p12`` (with the certificate and chain,
    encrypted with that password, made here: the password never travels) instead of key.pem;
    cert.pem and chain.pem are written as always. PKCS#12 cannot hold an ML-DSA key
(``pki.x509.pem.pkcs12_bundle`` refuses it). ``rapki renew`` needs key.pem, so a PKCS#12
    enrollment is renewed by enrolling again."""
    body: dict[str, Any] = {}
    key: PrivateKey | None = None
    if pkcs12_password is not None and KeyType.parse(key_type or "ec-p256").is_mldsa:
        raise InvalidInput(f"--format pkcs12 cannot hold an {key_type} key (PKCS#12 has no ML-DSA here): use pem")
    if csr_mode:
        key = KeyType.parse(key_type or "ec-p256").generate()
        body["csr"] = make_csr(key, cn, list(sans or ())).decode()
    else:
        body["key_type"] = key_type or "ec-p256"
        if cn:
            body["cn"] = cn
        if sans:
            body["sans"] = list(sans)
    if ttl:
        body["ttl"] = ttl
    answer = client.call("POST", "/v1/enroll", body, headers={"Authorization": f"Bearer {token}"})
    key_pem = workload_key_pem(key) if key is not None else answer["private_key"].encode()
    if pkcs12_password is None:
        files = write_material(out, answer["certificate"], answer["chain"], key_pem)
    else:
        files = write_material(out, answer["certificate"], answer["chain"], None)
        certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
        bundle = pkcs12_bundle(certificate.subject.rfc4514_string().encode(), load_private_key(key_pem), certificate,
                               load_certificates(answer["chain"].encode()), pkcs12_password)
        files["pkcs12"] = atomic_write(out / "bundle.p12", bundle, private=True)
    return _summary(answer, files, out)


def _summary(answer: dict[str, Any], files: dict[str, Path], out: Path) -> dict[str, Any]:
    result = {"serial": answer["serial"], "not_after": answer["not_after"], "profile": answer["profile"],
              "files": {k: str(v) for k, v in files.items()}}
    if answer.get("roles_anywhere"):
        result["credential_process"] = credential_process_line(out, answer["roles_anywhere"])
    return result


@dataclass(frozen=True)
class RenewalDue:
    due: bool
    at: datetime
    not_after: datetime


def renewal_due(cert: x509.Certificate, now: datetime | None = None, fraction: float = RENEW_FRACTION) -> RenewalDue:
    now = now or datetime.now(UTC)
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    at = start + (end - start) * fraction
    return RenewalDue(now >= at, at, end)


def renew(client_url: str, cert_dir: Path, *, ca_bundle: Path | None = None, force: bool = False,
          signed: bool = False, ttl: str | None = None) -> dict[str, Any]:
    """Renew the certificate in ``cert_dir`` once two thirds of its lifetime has passed (or
    ``force``): a new key is made here, sent as a CSR, authenticated with the current certificate
    (mutual TLS, or a request signature with ``signed``)."""
    cert_path, key_path = cert_dir / "cert.pem", cert_dir / "key.pem"
    try:
        current = load_certificates(cert_path.read_bytes(), what=str(cert_path))[0]
        current_key = load_private_key(key_path.read_bytes(), what=str(key_path))
    except OSError as exc:
        raise InvalidInput(f"cannot read the current certificate and key in {cert_dir}: {exc.strerror}") from exc
    due = renewal_due(current)
    if not force and not due.due:
        return {"renewed": False, "serial": format(current.serial_number, "x"),
                "renew_after": due.at.isoformat(), "not_after": due.not_after.isoformat()}
    if due.not_after <= datetime.now(UTC):
        raise InvalidInput(f"the certificate in {cert_dir} expired at {due.not_after:%Y-%m-%d %H:%M}Z: "
                           "it cannot renew itself, enroll again with a new token")
    key = KeyType.of(current_key).generate()
    cn_attrs = current.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    try:
        san_ext = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"dns:{n}" for n in san_ext.get_values_for_type(x509.DNSName)] + \
               [f"uri:{n}" for n in san_ext.get_values_for_type(x509.UniformResourceIdentifier)]
    except x509.ExtensionNotFound:
        sans = []
    body: dict[str, Any] = {"csr": make_csr(key, str(cn_attrs[0].value) if cn_attrs else None, sans).decode()}
    if ttl:
        body["ttl"] = ttl
    if signed:
        client = EnrollmentClient(client_url, ca_bundle)
        answer = client.call("POST", "/v1/renew", body, signer=(current_key, current))
    else:
        client = EnrollmentClient(client_url, ca_bundle, client_cert=(cert_path, key_path))
        answer = client.call("POST", "/v1/renew", body)
    new_cert = load_certificate(answer["certificate"].encode())
    if new_cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo) != \
            key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo):
        raise RapkiError("the server returned a certificate for another key: files left unchanged")
    files = write_material(cert_dir, answer["certificate"], answer["chain"], workload_key_pem(key))
    result = _summary(answer, files, cert_dir)
    result.update({"renewed": True, "replaced": format(current.serial_number, "x")})
    return result


def fsync_dir(path: Path) -> None:
    """Make the renames durable (best effort: not every filesystem supports it)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
