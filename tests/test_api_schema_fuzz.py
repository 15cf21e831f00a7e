"""The API against its own OpenAPI document, fuzzed by schemathesis.

The document (``GET /v1/openapi.json``) is loaded from the application in-process and every
operation gets a bounded number of generated requests (valid and invalid ones), sent through the
WSGI application with the credential its security scheme names: the enrollment token, the
operator token, or a workload certificate as ``SSL_CLIENT_CERT`` (as ``rapki serve`` hands over a
client certificate verified in the TLS handshake). Every answer must be no 5xx, a status code the
document lists for the operation, with a content type it lists, and a body matching its schema.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from cryptography.hazmat.primitives import serialization
from flask import Flask
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from service.api import create_app
from tests.conftest import PASSPHRASE, make_ca

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 25


@dataclass
class Api:
    app: Flask
    ca: CertificateAuthority
    enrollment_token: str
    operator_token: str

    def credentials(self, security: list[dict[str, Any]]) -> dict[str, Any]:
        """What to send for an operation's security requirement: the first scheme this test holds."""
        schemes = [name for requirement in security for name in requirement]
        if "enrollmentToken" in schemes:
            return {"headers": {"Authorization": f"Bearer {self.enrollment_token}"}}
        if "operatorToken" in schemes:
            return {"headers": {"Authorization": f"Bearer {self.operator_token}"}}
        if "mutualTLS" in schemes:  # a fresh certificate each time: a renewal or revocation uses it up
            cert = self.ca.issue("web", cn="web-7").certificate
            return {"environ_overrides": {"SSL_CLIENT_CERT": cert.public_bytes(serialization.Encoding.PEM).decode()}}
        return {}


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
        patch.delenv("RAPKI_DATABASE_URL", raising=False)
        home = tmp_path_factory.mktemp("fuzz") / "home"
        ca = make_ca(home)
        Home(home).update_section("api", {"rate_limit_per_address": "off", "rate_limit_per_identity": "off"})
        tokens = TokenStore(ca)
        enrollment = tokens.create("web", cn_pattern=r"web-[0-9]+", uses=100_000, ttl=timedelta(hours=1))
        operator = tokens.create_operator("fuzz")
        yield Api(create_app(Path(home)), ca, enrollment.token, operator.token)


@pytest.fixture(scope="module")
def api_schema(api: Api) -> Any:
    return schemathesis.openapi.from_wsgi("/v1/openapi.json", api.app)


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture])
def test_api_conforms_to_its_document(case: Any, api: Api) -> None:
    security = case.operation.definition.raw.get("security", [])
    case.call_and_validate(checks=CHECKS, **api.credentials(security))
