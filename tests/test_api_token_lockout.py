"""Guessing at a token's secret cannot lock its holder out: a token's own rate limit counts only
requests that proved the secret; failed attempts count against the client's address."""

from __future__ import annotations

import json
from typing import Any

import pytest
from werkzeug.test import Client

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from service.api import create_app


def _client(ca: CertificateAuthority, per_address: str, per_identity: str) -> Client:
    Home(ca.home.path).update_section("api", {"rate_limit_per_address": per_address,
                                              "rate_limit_per_identity": per_identity})
    return Client(create_app(ca.home.path))


def _enroll(client: Client, token: str, address: str) -> tuple[int, dict[str, Any]]:
    response = client.post("/v1/enroll", data=json.dumps({"key_type": "ec-p256"}),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                           environ_overrides={"REMOTE_ADDR": address})
    return response.status_code, json.loads(response.data)


def test_wrong_secrets_do_not_use_up_the_token_limit(ca: CertificateAuthority,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", raising=False)
    client = _client(ca, per_address="1000/h", per_identity="5/h")
    token = TokenStore(ca).create("web", cn="web-1", uses=3).token
    token_id = token.split(".")[0]
    forged = token_id + "." + "A" * 43  # the id is public (token list, audit); the secret is not
    statuses = [_enroll(client, forged, "198.51.100.7")[0] for _ in range(20)]
    assert set(statuses) == {401}
    status, body = _enroll(client, token, "192.0.2.10")
    assert status == 201, body


def test_failed_attempts_count_against_the_address(ca: CertificateAuthority,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", raising=False)
    client = _client(ca, per_address="5/h", per_identity="1000/h")
    token = TokenStore(ca).create("web", cn="web-1").token
    forged = token.split(".")[0] + "." + "B" * 43
    statuses = [_enroll(client, forged, "198.51.100.7")[0] for _ in range(7)]
    assert statuses == [401] * 5 + [429] * 2
    assert _enroll(client, token, "192.0.2.10")[0] == 201  # another address is not affected


def test_proven_requests_count_against_the_token(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", raising=False)
    client = _client(ca, per_address="1000/h", per_identity="2/h")
    token = TokenStore(ca).create("web", cn="web-1", uses=1).token
    statuses = [_enroll(client, token, "192.0.2.10")[0] for _ in range(3)]
    assert statuses == [201, 409, 429]  # used, then over the token's own limit
