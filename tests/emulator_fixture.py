"""Pytest plugin: the Roles Anywhere emulator, in process and as a real HTTPS server.

Fixtures
--------
``emulator`` (session scope): a real ``rapki emulator`` subprocess (gunicorn, TLS) on a free
127.0.0.1 port with a temporary state directory. Yields a :class:`RunningEmulator`:
``endpoint_url``, ``ca_bundle``, ``region``, ``state_path``, ``stats()``, ``reset_stats()``,
``set_faults(**settings)``, ``clear_faults()``, ``boto3_client()``, ``create_session(...)``.
The server is shared by the whole session: tests should create their own resources and not rely
on counters or faults left by others (call ``reset_stats()``/``clear_faults()`` first).

``emulator_app`` (function scope): the same application in process (Flask test client, state in
a temporary file): :class:`InProcessEmulator`, for fast tests.

Helpers to build a test PKI without the CA core: :func:`make_ca`, :func:`make_leaf`,
:func:`make_crl`, :func:`pem_of`.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pki.rolesanywhere import sigv4x509
from tests.commands import rapki_cmd

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
START_TIMEOUT_S = 30.0

# --------------------------------------------------------------------------------------------
# A test PKI built directly with cryptography


@dataclass
class SimpleCa:
    """A CA certificate with its key (root when ``cert.issuer == cert.subject``)."""

    cert: x509.Certificate
    key: Any


def _new_key(key_type: str) -> Any:
    if key_type == "ec-p256":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "ec-p384":
        return ec.generate_private_key(ec.SECP384R1())
    if key_type.startswith("rsa-"):
        return rsa.generate_private_key(public_exponent=65537, key_size=int(key_type[4:]))
    raise ValueError(key_type)


def _name(cn: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rapki tests"),
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
    ])  # fmt: skip


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not ca, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip


def make_ca(
    cn: str = "Test Root CA",
    *,
    parent: SimpleCa | None = None,
    key_type: str = "ec-p256",
    path_len: int | None = None,
    ca: bool = True,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    subject: x509.Name | None = None,
) -> SimpleCa:
    """A root (no parent) or an intermediate CA, with RFC 5280 extensions; ``subject`` replaces the
    name made from ``cn`` (to copy another CA's name: a different CA with the same name)."""
    key = _new_key(key_type)
    now = datetime.now(UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    name = subject or _name(cn)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(parent.cert.subject if parent else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(days=1))
        .not_valid_after(not_after or now + timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_len if ca else None), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(ski, critical=False)
    )
    signer = parent.key if parent else key
    issuer_key = parent.cert.public_key() if parent else key.public_key()
    builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key), critical=False)
    return SimpleCa(builder.sign(signer, hashes.SHA256()), key)


def make_leaf(
    issuer: SimpleCa,
    cn: str = "workload-1",
    *,
    key_type: str = "ec-p256",
    serial: int | None = None,
    not_before: datetime | None = None,
    not_after: datetime | None = None,
    digital_signature: bool = True,
) -> tuple[x509.Certificate, Any]:
    """An end-entity certificate Roles Anywhere accepts (unless told otherwise) and its key."""
    key = _new_key(key_type)
    now = datetime.now(UTC)
    usage = _key_usage(ca=False)
    if not digital_signature:
        usage = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer.cert.subject)
        .public_key(key.public_key())
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before or now - timedelta(hours=1))
        .not_valid_after(not_after or now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.cert.public_key()), critical=False)
        .sign(issuer.key, hashes.SHA256())
    )
    return cert, key


def make_crl(issuer: SimpleCa, serials: Sequence[int] = (), *, signer_key: Any = None) -> bytes:
    """A PEM CRL by ``issuer`` listing ``serials`` (signed by ``signer_key`` to forge one)."""
    now = datetime.now(UTC)
    revoked = [
        x509.RevokedCertificateBuilder().serial_number(s).revocation_date(now - timedelta(minutes=1)).build()
        for s in serials
    ]
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.cert.subject)
        .last_update(now - timedelta(minutes=1))
        .next_update(now + timedelta(days=7))
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(signer_key or issuer.key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)


def pem_of(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode("ascii") for c in certs)


# --------------------------------------------------------------------------------------------
# Signing CreateSession requests


def sign_session(
    *,
    certificate: x509.Certificate,
    private_key: Any,
    chain: Sequence[x509.Certificate] = (),
    host: str,
    region: str,
    trust_anchor_arn: str,
    profile_arn: str,
    role_arn: str,
    duration_seconds: int | None = 3600,
    extra_body: dict[str, Any] | None = None,
    arns_in: str = "query",
    now: datetime | None = None,
) -> sigv4x509.SignedRequest:
    """A signed CreateSession the way the official helper sends it (or with the ARNs in the body)."""
    arns = {"profileArn": profile_arn, "roleArn": role_arn, "trustAnchorArn": trust_anchor_arn}
    body: dict[str, Any] = {}
    if duration_seconds is not None:
        body["durationSeconds"] = duration_seconds
    if arns_in == "body":
        body.update(arns)
    body.update(extra_body or {})
    return sigv4x509.sign_create_session(
        certificate=certificate, private_key=private_key, chain=chain, host=host, region=region,
        query=arns if arns_in == "query" else {}, body=json.dumps(body, separators=(",", ":")).encode(),
        now=now or datetime.now(UTC),
    )  # fmt: skip


def control_auth_header(region: str = DEFAULT_REGION, access_key: str = "test") -> str:
    """An SDK-looking SigV4 header: the emulator reads its scope and ignores the HMAC."""
    day = datetime.now(UTC).strftime("%Y%m%d")
    return (
        f"AWS4-HMAC-SHA256 Credential={access_key}/{day}/{region}/rolesanywhere/aws4_request, "
        "SignedHeaders=host;x-amz-date, Signature=" + "0" * 64
    )


# --------------------------------------------------------------------------------------------
# In process


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def error_type(self) -> str | None:
        return self.headers.get("x-amzn-errortype")

    @property
    def message(self) -> str | None:
        return self.body.get("message")

    @property
    def detail(self) -> str | None:
        return self.headers.get("x-rapki-emulator-detail")


@dataclass
class InProcessEmulator:
    """The emulator as a Flask app with helpers for the usual set-up calls."""

    app: Any
    region: str = DEFAULT_REGION
    host: str = "localhost"

    @classmethod
    def create(cls, state_path: Path | None = None, **options: Any) -> InProcessEmulator:
        from service.emulator import create_app

        return cls(create_app(state_path, **options))

    @property
    def client(self) -> Any:
        return self.app.test_client()

    def call(
        self, method: str, path: str, body: Any = None, *, query: dict[str, Any] | None = None,
        region: str | None = None, access_key: str = "test",
    ) -> Response:  # fmt: skip
        headers = {"Authorization": control_auth_header(region or self.region, access_key)}
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        resp = self.client.open(path, method=method, data=data, query_string=query, headers=headers,
                                content_type="application/json")  # fmt: skip
        return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.get_json() or {})

    def ok(self, method: str, path: str, body: Any = None, **kw: Any) -> dict[str, Any]:
        resp = self.call(method, path, body, **kw)
        assert resp.status in (200, 201), (resp.status, resp.body, resp.detail)
        return resp.body

    def trust_anchor(self, *cas: x509.Certificate, enabled: bool = True, name: str = "anchor") -> str:
        body = {
            "name": name,
            "enabled": enabled,
            "source": {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(*cas)}},
        }
        return self.ok("POST", "/trustanchors", body)["trustAnchor"]["trustAnchorArn"]

    def profile(self, *roles: str, enabled: bool = True, **fields: Any) -> str:
        body = {"name": "profile", "roleArns": list(roles), "enabled": enabled, **fields}
        return self.ok("POST", "/profiles", body)["profile"]["profileArn"]

    def import_crl(self, anchor_arn: str, crl_pem: bytes, *, enabled: bool = True) -> dict[str, Any]:
        body = {"name": "crl", "trustAnchorArn": anchor_arn, "enabled": enabled,
                "crlData": base64.b64encode(crl_pem).decode()}  # fmt: skip
        return self.ok("POST", "/crls", body)["crl"]

    def send_session(self, signed: sigv4x509.SignedRequest, **overrides: Any) -> Response:
        headers = dict(overrides.pop("headers", signed.headers))
        path = overrides.pop("path_and_query", signed.path_and_query)
        body = overrides.pop("body", signed.body)
        # Werkzeug builds Host from base_url; keep the signed one.
        resp = self.client.post(path, data=body, headers=headers, base_url=f"http://{headers.get('Host', self.host)}")
        return Response(resp.status_code, {k.lower(): v for k, v in resp.headers.items()}, resp.get_json() or {})

    def create_session(self, **kwargs: Any) -> Response:
        kwargs.setdefault("host", self.host)
        kwargs.setdefault("region", self.region)
        return self.send_session(sign_session(**kwargs))


@pytest.fixture
def emulator_app(tmp_path: Path) -> InProcessEmulator:
    """A fresh in-process emulator whose state is saved in ``tmp_path/emulator/state.json``."""
    return InProcessEmulator.create(tmp_path / "emulator" / "state.json")


# --------------------------------------------------------------------------------------------
# The real server


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])



@dataclass
class RunningEmulator:
    """A ``rapki emulator`` subprocess and what tests need to talk to it."""

    endpoint_url: str
    ca_bundle: str
    region: str
    state_path: Path
    host: str
    port: int
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path = field(repr=False)

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca_bundle)

    def connection(self, timeout: float = 30.0) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ssl_context(), timeout=timeout)

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> Response:
        conn = self.connection()
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            raw = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw or b"{}"))
        finally:
            conn.close()

    def stats(self) -> dict[str, Any]:
        """``{"calls": {op: n}, "writes": {op: n}, "writesTotal": n, "errors": {...}, "injected": {...}}``."""
        return self.request("GET", "/_emulator/stats").body

    def reset_stats(self) -> dict[str, Any]:
        return self.request("POST", "/_emulator/stats/reset").body

    def set_faults(self, **settings: Any) -> dict[str, Any]:
        """E.g. ``set_faults(throttleNext=2, operations=["ImportCrl"])``; keys: failRate, throttle,
        latency, failNext, throttleNext, operations."""
        resp = self.request("PUT", "/_emulator/faults", json.dumps(settings).encode(),
                            {"Content-Type": "application/json"})  # fmt: skip
        assert resp.status == 200, resp.body
        return resp.body

    def clear_faults(self) -> dict[str, Any]:
        return self.request("DELETE", "/_emulator/faults").body

    def boto3_client(self, service: str = "rolesanywhere", *, region: str | None = None, **config: Any) -> Any:
        """A boto3 client for the emulator; dummy credentials live in the client, not os.environ."""
        import boto3
        from botocore.config import Config

        retries = config.pop("retries", {"total_max_attempts": 1, "mode": "standard"})  # no hidden retries
        return boto3.session.Session().client(
            service, endpoint_url=self.endpoint_url, verify=self.ca_bundle, region_name=region or self.region,
            aws_access_key_id="test", aws_secret_access_key="test", aws_session_token="test",
            config=Config(retries=retries, **config),
        )  # fmt: skip

    def create_session(self, **kwargs: Any) -> Response:
        """Sign (see :func:`sign_session`) and send a CreateSession; Host is this server's."""
        kwargs.setdefault("host", f"{self.host}:{self.port}")
        kwargs.setdefault("region", self.region)
        signed = sign_session(**kwargs)
        return self.request("POST", signed.path_and_query, signed.body, signed.headers)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def start_emulator(state_dir: Path, *, extra_args: Sequence[str] = (), threads: int = 8) -> RunningEmulator:
    """Start ``rapki emulator`` and wait (bounded) until it answers over TLS."""
    port = _free_port()
    state_path = state_dir / "state.json"
    log_path = state_dir / "emulator.log"
    cmd = [*rapki_cmd(), "emulator", "--host", "127.0.0.1", "--port", str(port),
           "--state", str(state_path), "--threads", str(threads), *extra_args]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    extra = list(extra_args)
    # With --tls-cert the client trusts that certificate; otherwise the self-signed one.
    ca_bundle = extra[extra.index("--tls-cert") + 1] if "--tls-cert" in extra else str(state_dir / "emulator-tls.pem")
    running = RunningEmulator(
        endpoint_url=f"https://127.0.0.1:{port}", ca_bundle=ca_bundle,
        region=DEFAULT_REGION, state_path=state_path, host="127.0.0.1", port=port, process=process,
        log_path=log_path,
    )  # fmt: skip
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"rapki emulator exited with {process.returncode}:\n{running.log()}")
        if Path(running.ca_bundle).exists():
            try:
                if running.request("GET", "/_emulator/health").status == 200:
                    return running
            except (OSError, ssl.SSLError, http.client.HTTPException, ValueError):
                pass
        time.sleep(0.1)
    stop_emulator(running)
    raise RuntimeError(f"rapki emulator did not answer within {START_TIMEOUT_S}s:\n{running.log()}")


def stop_emulator(running: RunningEmulator) -> None:
    """SIGTERM the gunicorn master (it stops its worker); SIGKILL only if it hangs."""
    if running.process.poll() is None:
        running.process.terminate()
        try:
            running.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            running.process.kill()
            running.process.wait(timeout=5)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """A real ``rapki emulator`` (HTTPS, gunicorn) shared by the test session."""
    running = start_emulator(tmp_path_factory.mktemp("emulator"))
    try:
        yield running
    finally:
        stop_emulator(running)


__all__ = [
    "InProcessEmulator", "Response", "RunningEmulator", "SimpleCa", "control_auth_header", "make_ca",
    "make_crl", "make_leaf", "pem_of", "sign_session", "start_emulator", "stop_emulator",
]  # fmt: skip
