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

The process handling and request signing live in ``service.emulator.harness`` and the test PKI
(:func:`make_ca`, :func:`make_leaf`, :func:`make_crl`, :func:`pem_of`) in
``service.emulator.testpki``, shared with the benchmarks; both are re-exported here.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from pki.rolesanywhere import sigv4x509
from service.emulator.harness import (
    DEFAULT_ACCOUNT,
    DEFAULT_REGION,
    START_TIMEOUT_S,
    Response,
    RunningEmulator,
    control_auth_header,
    sign_session,
    start_emulator,
    stop_emulator,
)
from service.emulator.testpki import SimpleCa, make_ca, make_crl, make_leaf, pem_of

# --------------------------------------------------------------------------------------------
# In process


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


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningEmulator]:
    """A real ``rapki emulator`` (HTTPS, gunicorn) shared by the test session."""
    running = start_emulator(tmp_path_factory.mktemp("emulator"))
    try:
        yield running
    finally:
        stop_emulator(running)


__all__ = [
    "DEFAULT_ACCOUNT", "DEFAULT_REGION", "START_TIMEOUT_S", "InProcessEmulator", "Response", "RunningEmulator",
    "SimpleCa", "control_auth_header", "make_ca", "make_crl", "make_leaf", "pem_of", "sign_session",
    "start_emulator", "stop_emulator",
]  # fmt: skip
