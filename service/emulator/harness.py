"""Driving the emulator from outside: a ``rapki emulator`` process started and stopped, requests to it.

:func:`start_emulator` runs ``rapki emulator`` (gunicorn, TLS) on a free 127.0.0.1 port and waits,
for a bounded time, until it answers; :class:`RunningEmulator` talks to it (raw HTTPS, the
``/_emulator`` stats and faults, a boto3 client). :func:`sign_session` signs a CreateSession the way
the official helper does. Used by rapki's tests and benchmarks. Imports the library's SigV4-X509
signer and the emulator's file names; boto3 only when a client is asked for.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509

from pki.rolesanywhere import sigv4x509
from service.emulator.app import DEFAULT_ACCOUNT, DEFAULT_REGION
from service.emulator.server import TLS_CERT_NAME

START_TIMEOUT_S = 30.0


def rapki_command() -> list[str]:
    """The installed ``rapki`` console script, else the module behind it in this interpreter."""
    exe = shutil.which("rapki")
    return [exe] if exe else [sys.executable, "-c", "from service.cli import main; main()"]


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


def free_port() -> int:
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
            aws_access_key_id="test", aws_secret_access_key="test", aws_session_token="test",  # noqa: S106 - the emulator checks no secret
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
    port = free_port()
    state_path = state_dir / "state.json"
    log_path = state_dir / "emulator.log"
    cmd = [*rapki_command(), "emulator", "--host", "127.0.0.1", "--port", str(port),
           "--state", str(state_path), "--threads", str(threads), *extra_args]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    extra = list(extra_args)
    # With --tls-cert the client trusts that certificate; otherwise the self-signed one.
    ca_bundle = extra[extra.index("--tls-cert") + 1] if "--tls-cert" in extra else str(state_dir / TLS_CERT_NAME)
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


__all__ = [
    "DEFAULT_ACCOUNT", "DEFAULT_REGION", "Response", "RunningEmulator", "control_auth_header", "rapki_command",
    "sign_session", "start_emulator", "stop_emulator",
]  # fmt: skip
