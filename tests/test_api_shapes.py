"""The OpenAPI document and the API agree: every Flask route is documented and every documented
path is a route; the document validates; each request body's published schema accepts exactly what
the endpoint's validation accepts (``service.api.shapes`` is the one declaration of both).

Judges independent of the declarations: openapi-spec-validator for the document, a JSON Schema
validator (openapi-schema-validator's OAS 3.1) for the published request schemas, the Flask app's
own ``url_map`` for the routes, and the real endpoints for what validation refuses.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import pytest
from flask import Flask

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore
from pki.errors import InvalidInput
from pki.workload.client import sign_request
from service.api import create_app
from service.api.openapi import spec
from service.api.shapes import REQUEST_SHAPES, TOKEN_CREATE_REQUEST, Shape

METHODS = ("get", "put", "post", "delete", "patch")


@pytest.fixture
def app(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> Flask:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "1000/h")
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_ADDRESS", "1000/h")
    return create_app(ca=ca)


def _template(path: str) -> str:
    """A path with its parameters unnamed: /v1/tokens/<token_id> and /v1/tokens/{id} are one path."""
    return re.sub(r"<[^>]+>|\{[^}]+\}", "{}", path)


def test_every_route_is_documented_and_every_documented_path_is_a_route(app: Flask) -> None:
    routes = {(_template(rule.rule), method.lower()) for rule in app.url_map.iter_rules()
              for method in rule.methods or () if method not in ("HEAD", "OPTIONS")}
    documented = {(_template(path), method) for path, item in spec()["paths"].items()
                  for method in item if method in METHODS}
    assert routes, "the app has no routes"
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "documented operations the app does not serve"


def test_the_document_validates() -> None:
    from openapi_spec_validator import validate

    document = spec()
    validate(document)
    assert json.loads(json.dumps(document)) == document  # what GET /v1/openapi.json sends is this


# --- each published request schema accepts exactly what validation accepts ------------------------
# Values of every JSON type, and edge values for strings, enums and bounds; independent of the
# declarations, so a field whose schema and check disagree on any of them is found.
CANDIDATES: list[Any] = [None, "", "x", "pem", "pkcs12", "PEM", "ec-p256", "EC-P256", "24h", 0, 1, -1, 2, 99_999,
                         100_000, 100_001, True, False, 1.5, [], ["dns:a.example.com"], ["a", 1], [None], {}, {"a": 1}]


def _published(shape: Shape) -> Any:
    from openapi_schema_validator import OAS31Validator

    document = spec()
    return OAS31Validator({"components": document["components"], "$ref": f"#/components/schemas/{shape.name}"})


def _minimal(shape: Shape) -> dict[str, Any]:
    """A body with the required fields only, each with a value both sides accept."""
    return {f.name: (f.choices[0] if f.choices else "x") for f in shape.fields if f.required}


def _accepted(shape: Shape, body: dict[str, Any]) -> bool:
    try:
        shape.read(body)
    except InvalidInput:
        return False
    return True


@pytest.mark.parametrize("shape", REQUEST_SHAPES, ids=lambda s: s.name)
def test_published_schema_accepts_what_validation_accepts(shape: Shape) -> None:
    published = _published(shape)
    bodies: list[dict[str, Any]] = [{}, _minimal(shape), {**_minimal(shape), "unexpected": 1}]
    names = set(spec()["components"]["schemas"][shape.name]["properties"])
    assert names == {f.name for f in shape.fields}
    for name in sorted(names):
        bodies += [{**_minimal(shape), name: value} for value in CANDIDATES]
    accepted = 0
    for body in bodies:
        by_schema = published.is_valid(body)
        assert _accepted(shape, body) == by_schema, (shape.name, body, "accepted by the schema" if by_schema else
                                                     "refused by the schema")
        accepted += by_schema
    assert 0 < accepted < len(bodies)  # the table holds both kinds


def _auth(ca: CertificateAuthority, security: list[dict[str, Any]], method: str, path: str,
          data: bytes) -> dict[str, str]:
    """Credentials for the operation's first documented security scheme."""
    scheme = next(iter(security[0]))
    if scheme == "enrollmentToken":
        return {"Authorization": f"Bearer {TokenStore(ca).create('web', cn='web-1').token}"}
    if scheme == "operatorToken":
        return {"Authorization": f"Bearer {TokenStore(ca).create_operator('shapes').token}"}
    if scheme in ("requestSignature", "mutualTLS"):
        issued = ca.issue("web", cn="web-2")
        assert issued.private_key is not None
        return sign_request(issued.private_key, issued.certificate, method.upper(), path, data)
    raise AssertionError(f"no credentials for {scheme}")


def test_each_endpoint_refuses_fields_its_schema_does_not_declare(ca: CertificateAuthority, app: Flask) -> None:
    """Through the real routes (POST /v1/enroll through the fast path in front of Flask): a body
    with an undeclared field is refused, naming exactly the fields of the documented schema."""
    document = spec()
    client = app.test_client()
    checked = []
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method not in METHODS or "requestBody" not in operation:
                continue
            ref = operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
            declared = sorted(document["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"])
            data = json.dumps({"zz_unknown": 1}).encode()
            headers = {"Content-Type": "application/json",
                       **_auth(ca, operation["security"], method, path, data)}
            response = client.open(path, method=method.upper(), data=data, headers=headers)
            assert response.status_code == 400, (path, response.get_json())
            assert response.get_json() == {
                "error": "invalid_input",
                "message": f"unknown field(s) zz_unknown: allowed are {', '.join(declared)}",
            }, path
            checked.append(path)
    assert sorted(checked) == ["/v1/enroll", "/v1/renew", "/v1/revoke", "/v1/tokens"]


@pytest.mark.parametrize(("body", "message"), [
    ({"cn": "web-1"}, '"profile" is required'),
    ({"profile": None, "cn": "web-1"}, '"profile" is required'),
    ({"profile": "web", "cn": 5}, '"cn" must be a str'),
    ({"profile": "web", "cn": "web-1", "uses": True}, '"uses" must be a int'),
    ({"profile": "web", "cn": "web-1", "uses": 0}, '"uses" must be between 1 and 100000'),
])
def test_token_creation_refusals_name_the_field(ca: CertificateAuthority, app: Flask, body: dict[str, Any],
                                                message: str) -> None:
    token = TokenStore(ca).create_operator("shapes").token
    response = app.test_client().post("/v1/tokens", json=body, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 400
    assert response.get_json() == {"error": "invalid_input", "message": message}
    assert TokenStore(ca).list_tokens() == []


def test_defaults_come_from_the_declaration(ca: CertificateAuthority, app: Flask) -> None:
    token = TokenStore(ca).create_operator("shapes").token
    response = app.test_client().post("/v1/tokens", json={"profile": "web", "cn": "web-1"},
                                      headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 201, response.get_json()
    created = response.get_json()
    defaults = {f.name: f.default for f in TOKEN_CREATE_REQUEST.fields}
    assert created["max_uses"] == defaults["uses"] == 1
    lifetime = datetime.fromisoformat(created["expires_at"]) - datetime.fromisoformat(created["created_at"])
    assert defaults["ttl"] == "15m" and lifetime == timedelta(minutes=15)
