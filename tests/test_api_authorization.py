"""Who may do what: every caller against every endpoint, one table (deny by default).

Each cell is the HTTP status the API must answer. The app runs in-process; a client certificate
reaches it as ``SSL_CLIENT_CERT``, as ``rapki serve`` hands over a certificate verified in the TLS
handshake. Each cell runs against its own copy of one CA home, so one cell's writes (a revocation,
a used token) cannot decide another's answer.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from werkzeug.test import Client

from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from pki.x509.profiles import Profile
from service.api import create_app
from tests.conftest import PASSPHRASE, make_ca


@dataclass
class World:
    home: Path
    credentials: dict[str, dict[str, Any]]  # caller -> headers / environ
    target_serial: str  # a workload certificate the actions aim at ("alice"'s)
    token_id: str  # an enrollment token an operator may revoke

    def client(self, copy: Path) -> Client:
        shutil.copytree(self.home, copy)
        return Client(create_app(copy))


def _pem(cert: Any) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def _world(home: Path) -> World:
    ca = make_ca(home)
    ca.add_profile(Profile(name="ops", cn_pattern=r"ops-[0-9]+"))
    Home(home).update_section("api", {"operator_profiles": ["ops"], "rate_limit_per_address": "off",
                                      "rate_limit_per_identity": "off"})
    tokens = TokenStore(ca)
    alice = ca.issue("web", cn="web-1")
    bob = ca.issue("web", cn="web-2")
    revoked = ca.issue("web", cn="web-3")
    ca.revoke(revoked.serial_hex)
    operator_cert = ca.issue("ops", cn="ops-1")
    enrollment = tokens.create("web", cn="web-1", uses=5)
    other = tokens.create("web", cn="web-9")
    operator = tokens.create_operator("matrix")
    cert = lambda issued: {"environ": {"SSL_CLIENT_CERT": _pem(issued.certificate)}}  # noqa: E731
    bearer = lambda token: {"headers": {"Authorization": f"Bearer {token}"}}  # noqa: E731
    credentials = {
        "anonymous": {},
        "enrollment token": bearer(enrollment.token),
        "operator token": bearer(operator.token),
        "operator certificate": cert(operator_cert),
        "own certificate": cert(alice),
        "another workload": cert(bob),
        "revoked certificate": cert(revoked),
        "forged token": bearer(enrollment.token.split(".")[0] + "." + "A" * 43),
    }
    ca.db.engine.dispose()
    return World(home, credentials, alice.serial_hex, other.record.id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
        patch.delenv("RAPKI_DATABASE_URL", raising=False)
        return _world(tmp_path_factory.mktemp("authz") / "home")


ACTIONS: dict[str, Callable[[World], tuple[str, str, dict[str, Any] | None]]] = {
    "enroll": lambda w: ("POST", "/v1/enroll", {"key_type": "ec-p256"}),
    "renew": lambda w: ("POST", "/v1/renew", {}),
    "revoke target": lambda w: ("POST", "/v1/revoke", {"serial": w.target_serial}),
    "show certificate": lambda w: ("GET", f"/v1/certificates/{w.target_serial}", None),
    "create token": lambda w: ("POST", "/v1/tokens", {"profile": "web", "cn": "web-5"}),
    "list tokens": lambda w: ("GET", "/v1/tokens", None),
    "revoke token": lambda w: ("DELETE", f"/v1/tokens/{w.token_id}", None),
    "chain": lambda w: ("GET", "/v1/ca/chain", None),
    "root": lambda w: ("GET", "/v1/ca/root", None),
    "crl": lambda w: ("GET", "/v1/crl", None),
    "health": lambda w: ("GET", "/healthz", None),
}

CALLERS = ("anonymous", "enrollment token", "operator token", "operator certificate", "own certificate",
           "another workload", "revoked certificate", "forged token")

# Rows: actions; columns: CALLERS in order. 201/200 allowed, 401 unauthenticated, 403 forbidden.
MATRIX: dict[str, tuple[int, ...]] = {
    #                  anon  token  optok  opcert own   other revoked forged
    "enroll":           (401, 201,   401,   401,   401,  401,  401,    401),
    "renew":            (401, 401,   401,   201,   201,  201,  401,    401),
    "revoke target":    (401, 401,   200,   200,   200,  403,  401,    401),
    "show certificate": (401, 401,   200,   200,   403,  403,  401,    401),
    "create token":     (401, 401,   201,   201,   403,  403,  401,    401),
    "list tokens":      (401, 401,   200,   200,   403,  403,  401,    401),
    "revoke token":     (401, 401,   200,   200,   403,  403,  401,    401),
    "chain":            (200, 200,   200,   200,   200,  200,  200,    200),
    "root":             (200, 200,   200,   200,   200,  200,  200,    200),
    "crl":              (200, 200,   200,   200,   200,  200,  200,    200),
    "health":           (200, 200,   200,   200,   200,  200,  200,    200),
}


@pytest.mark.parametrize("action", list(MATRIX))
def test_authorization_matrix(action: str, world: World, tmp_path: Path, passphrase_env: str) -> None:
    expected = dict(zip(CALLERS, MATRIX[action], strict=True))
    answered: dict[str, int] = {}
    for caller in CALLERS:
        client = world.client(tmp_path / caller.replace(" ", "-"))
        method, path, body = ACTIONS[action](world)
        credential = world.credentials[caller]
        headers = {"Content-Type": "application/json", **credential.get("headers", {})}
        response = client.open(path, method=method, headers=headers,
                                     data=json.dumps(body) if body is not None else None,
                                     environ_overrides={"REMOTE_ADDR": "192.0.2.1", **credential.get("environ", {})})
        answered[caller] = response.status_code
        if response.status_code >= 400:
            error = json.loads(response.data)
            assert error["error"] and error["message"], (caller, error)
    assert answered == expected
