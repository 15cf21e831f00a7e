"""The OpenAPI 3.1 document of the enrollment API (``GET /v1/openapi.json``).

The request bodies' schemas are not written here: they are derived from the declarations in
``service.api.shapes``, the same ones the endpoints check requests with, so the document and
the validation cannot disagree. The paths, responses and answer schemas are written here, next
to the routes. ``tests/test_api_shapes.py`` checks that every Flask route is documented and
every documented path is a route, that the document validates (openapi-spec-validator), and that
each request schema accepts and refuses what the endpoint does; ``tests/test_api.py`` checks real
answers against the response schemas.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from service.api.shapes import (
    ENROLL_REQUEST,
    RENEW_REQUEST,
    REQUEST_SHAPES,
    REVOKE_REQUEST,
    TOKEN_CREATE_REQUEST,
    Shape,
)

VERSION = "1.0.0"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(shape: Shape, *, required: bool) -> dict[str, Any]:
    return {"required": required, "content": {"application/json": {"schema": _ref(shape.name)}}}


_ERROR_TEXT = {
    400: "Malformed request: bad JSON, unknown field, not a CSR, unknown key type, bad duration.",
    401: "Missing or bad credentials: no/unknown/expired/revoked token, unknown or revoked certificate.",
    403: "Authenticated but not allowed: token bound to another profile or CN, not an operator.",
    404: "No such certificate, token, profile or endpoint.",
    409: "The enrollment token was already used; the certificate presented for renewal was already renewed.",
    413: "Request body over 64 KiB.",
    422: "Refused by policy: CN, SAN, key type or TTL outside the profile; CSR asking for CA:TRUE.",
    429: "Rate limit reached (per client address and per credential); see Retry-After.",
    503: ("The CA database is unreachable (unavailable) or another process holds its write lock "
          "(database_busy); retry after Retry-After."),
}

_WRITE_ERRORS = (400, 401, 403, 413, 429, 503)


def _schemas() -> dict[str, Any]:
    ts = {"type": "string", "format": "date-time"}
    nullable_ts = {"type": ["string", "null"], "format": "date-time"}
    pem = {"type": "string", "description": "PEM text"}
    return {
        **{shape.name: shape.schema() for shape in REQUEST_SHAPES},
        "Error": {
            "type": "object", "required": ["error", "message"], "additionalProperties": False,
            "properties": {
                "error": {"type": "string", "description": "machine-readable code, e.g. token_used"},
                "message": {"type": "string", "description": "what was wrong and what to do"},
                "serial": {"type": "string", "description": "already_renewed: the certificate presented"},
                "superseded_by": {"type": "string",
                                  "description": "already_renewed: the certificate that replaced it"},
            },
        },
        "RolesAnywhere": {
            "type": "object",
            "required": ["trust_anchor_arn", "profile_arn", "role_arn", "role_arns", "session_duration",
                         "credential_process"],
            "properties": {
                "trust_anchor_arn": {"type": "string"}, "profile_arn": {"type": "string"},
                "role_arn": {"type": "string"}, "role_arns": {"type": "array", "items": {"type": "string"}},
                "session_duration": {"type": "integer"},
                "endpoint_url": {"type": ["string", "null"],
                                 "description": "the Roles Anywhere endpoint registered, when not AWS's own"},
                "ca_bundle": {"type": ["string", "null"],
                              "description": "the CA bundle for that endpoint, as registered"},
                "credential_process": {"type": "string", "description": "rapki-signer credential-process ... "
                                       "with cert.pem, key.pem, chain.pem relative to the certificate directory"},
            },
        },
        "IssuedCertificate": {
            "type": "object", "required": ["serial", "profile", "subject", "not_before", "not_after", "format",
                                           "certificate", "chain"],
            "properties": {
                "serial": {"type": "string", "pattern": "^[0-9a-f]+$"},
                "profile": {"type": "string"}, "subject": {"type": "string"},
                "not_before": ts, "not_after": ts,
                "format": {"type": "string", "enum": ["pem", "pkcs12"]},
                "certificate": pem,
                "chain": {"type": "string", "description": "PEM intermediates (X-Amz-X509-Chain)"},
                "private_key": {"type": "string", "description": "PKCS#8 PEM, only when the server made the key"},
                "pkcs12": {"type": "string", "contentEncoding": "base64",
                           "description": "format pkcs12: key and certificate (when the key was made here), "
                                          "else the certificate first among the bundle's certificates; then the chain"},
                "roles_anywhere": _ref("RolesAnywhere"),
            },
        },
        "CertificateRecord": {
            "type": "object",
            "required": ["serial", "issuer", "subject", "common_name", "sans", "profile", "key_type", "not_before",
                         "not_after", "status", "revoked_at", "revocation_reason", "superseded_by",
                         "fingerprint_sha256"],
            "properties": {
                "serial": {"type": "string"}, "issuer": {"type": "string"}, "subject": {"type": "string"},
                "common_name": {"type": "string"}, "sans": {"type": "array", "items": {"type": "string"}},
                "profile": {"type": "string"}, "key_type": {"type": "string"},
                "not_before": ts, "not_after": ts,
                "status": {"type": "string", "enum": ["active", "revoked", "expired", "superseded"]},
                "revoked_at": nullable_ts, "revocation_reason": {"type": ["string", "null"]},
                "superseded_by": {"type": ["string", "null"]},
                "fingerprint_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "certificate": pem,
                "already_revoked": {"type": "boolean"},
            },
        },
        "Token": {
            "type": "object",
            "required": ["id", "profile", "cn", "cn_is_pattern", "uses_left", "max_uses", "status", "expires_at",
                         "created_at", "created_by", "revoked_at", "last_used_at"],
            "properties": {
                "id": {"type": "string"}, "profile": {"type": "string"}, "cn": {"type": "string"},
                "cn_is_pattern": {"type": "boolean"}, "uses_left": {"type": "integer"},
                "max_uses": {"type": "integer"},
                "status": {"type": "string", "enum": ["active", "used", "expired", "revoked"]},
                "expires_at": ts, "created_at": ts, "created_by": {"type": "string"},
                "revoked_at": nullable_ts, "last_used_at": nullable_ts,
                "token": {"type": "string", "description": "only in the creation answer; shown once"},
            },
        },
        "TokenList": {"type": "object", "required": ["tokens"],
                      "properties": {"tokens": {"type": "array", "items": _ref("Token")}}},
        "Health": {
            "type": "object", "required": ["status", "checks"],
            "properties": {
                "status": {"type": "string", "enum": ["ok", "unavailable"]},
                "checks": {"type": "object", "additionalProperties": {"type": "string"}},
                "error": {"type": "string"}, "message": {"type": "string"},
            },
        },
    }


def _resp(*statuses: int) -> dict[str, Any]:
    return {str(s): {"$ref": f"#/components/responses/E{s}"} for s in statuses}


@cache
def spec() -> dict[str, Any]:
    bearer: list[dict[str, list[str]]] = [{"enrollmentToken": []}]
    cert_auth: list[dict[str, list[str]]] = [{"mutualTLS": []}, {"requestSignature": []}]
    operator: list[dict[str, list[str]]] = [{"operatorToken": []}, {"mutualTLS": []}, {"requestSignature": []}]
    pem_file = {"description": "PEM", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rapki enrollment API", "version": VERSION,
            "description": "Workloads get certificates for AWS IAM Roles Anywhere. Every error is JSON "
                           '{"error": code, "message": text}. Request signatures (RAPKI-SIG-V1): headers '
                           "X-Rapki-Certificate (base64 DER), X-Rapki-Timestamp (Unix seconds), "
                           "X-Rapki-Signature (base64 signature with the certificate's key over "
                           '"RAPKI-SIG-V1\\nMETHOD\\nPATH\\nTIMESTAMP\\nhex(sha256(body))"; ECDSA-SHA256 or '
                           "RSA PKCS#1 v1.5 SHA-256), within 5 minutes, each signature once.",
        },
        "servers": [{"url": "/"}],
        "components": {
            "schemas": _schemas(),
            "responses": {f"E{s}": _json(_ref("Error"), text) for s, text in _ERROR_TEXT.items()},
            "securitySchemes": {
                "enrollmentToken": {"type": "http", "scheme": "bearer",
                                    "description": "rpk_e_... from 'rapki token create'"},
                "operatorToken": {"type": "http", "scheme": "bearer",
                                  "description": "rpk_o_... from 'rapki operator token create'"},
                "mutualTLS": {"type": "mutualTLS", "description": "a certificate issued by this CA"},
                "requestSignature": {"type": "apiKey", "in": "header", "name": "X-Rapki-Signature",
                                     "description": "RAPKI-SIG-V1 (see info.description)"},
            },
        },
        "paths": {
            "/v1/enroll": {"post": {
                "summary": "Redeem an enrollment token for a certificate", "operationId": "enroll",
                "security": bearer,
                "requestBody": _body(ENROLL_REQUEST, required=True),
                "responses": {"201": _json(_ref("IssuedCertificate"), "Issued"),
                              **_resp(400, 401, 403, 409, 413, 422, 429, 503)},
            }},
            "/v1/renew": {"post": {
                "summary": "Renew the calling certificate (same subject and profile)", "operationId": "renew",
                "security": cert_auth,
                "requestBody": _body(RENEW_REQUEST, required=False),
                "responses": {"201": _json(_ref("IssuedCertificate"), "Renewed; the old certificate is superseded"),
                              **_resp(400, 401, 403, 409, 413, 422, 429, 503)},
            }},
            "/v1/revoke": {"post": {
                "summary": "Revoke a certificate (operator) or the calling certificate (self-revocation)",
                "operationId": "revoke", "security": operator,
                "requestBody": _body(REVOKE_REQUEST, required=True),
                "responses": {"200": _json(_ref("CertificateRecord"), "Revoked (or already revoked)"),
                              **_resp(400, 401, 403, 404, 413, 429, 503)},
            }},
            "/v1/certificates/{serial}": {"get": {
                "summary": "A certificate's record (operator)", "operationId": "getCertificate", "security": operator,
                "parameters": [{"name": "serial", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("CertificateRecord"), "The record and the certificate PEM"),
                              **_resp(400, 401, 403, 404, 429, 503)},
            }},
            "/v1/tokens": {
                "post": {
                    "summary": "Create an enrollment token (operator); the token is shown once",
                    "operationId": "createToken", "security": operator,
                    "requestBody": _body(TOKEN_CREATE_REQUEST, required=True),
                    "responses": {"201": _json(_ref("Token"), "Created"), **_resp(*_WRITE_ERRORS, 404)},
                },
                "get": {
                    "summary": "List active enrollment tokens (?all=1: all)", "operationId": "listTokens",
                    "security": operator,
                    "parameters": [{"name": "all", "in": "query", "required": False, "schema": {"type": "string"}}],
                    "responses": {"200": _json(_ref("TokenList"), "Tokens (never their secrets)"),
                                  **_resp(401, 403, 429, 503)},
                },
            },
            "/v1/tokens/{id}": {"delete": {
                "summary": "Revoke an enrollment token (operator)", "operationId": "revokeToken", "security": operator,
                "parameters": [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": _json(_ref("Token"), "Revoked"), **_resp(401, 403, 404, 429, 503)},
            }},
            "/v1/ca/chain": {"get": {"summary": "Intermediates (X-Amz-X509-Chain)", "operationId": "caChain",
                                     "security": [], "responses": {"200": pem_file}}},
            "/v1/ca/root": {"get": {"summary": "The root CA certificate (the trust anchor)", "operationId": "caRoot",
                                    "security": [], "responses": {"200": pem_file}}},
            "/v1/crl": {"get": {
                "summary": "The current CRL: DER, or PEM with Accept: application/x-pem-file", "operationId": "crl",
                "security": [],
                "parameters": [{"name": "issuer", "in": "query", "required": False, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "CRL", "content": {
                    "application/pkix-crl": {"schema": {"type": "string", "format": "binary"}},
                    "application/x-pem-file": {"schema": {"type": "string"}}}},
                    **_resp(404, 503)},
            }},
            "/crl/{issuer}.crl": {"get": {
                "summary": "An issuing CA's current CRL, where its certificates' CRL Distribution Point leads (DER; "
                           "ETag, If-None-Match -> 304)", "operationId": "distributionPointCrl", "security": [],
                "parameters": [{"name": "issuer", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {"200": {"description": "CRL", "content": {
                    "application/pkix-crl": {"schema": {"type": "string", "format": "binary"}}}},
                    "304": {"description": "The CRL named by If-None-Match is still the current one"},
                    **_resp(404, 503)},
            }},
            "/v1/openapi.json": {"get": {"summary": "This document", "operationId": "openapi", "security": [],
                                         "responses": {"200": {"description": "OpenAPI 3.1",
                                                               "content": {"application/json": {"schema": {
                                                                   "type": "object"}}}}}}},
            "/healthz": {"get": {"summary": "Database and CA key reachable", "operationId": "healthz",
                                 "security": [],
                                 "responses": {"200": _json(_ref("Health"), "Healthy"),
                                               "503": _json(_ref("Health"), "Unhealthy")}}},
            "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": [],
                                 "responses": {"200": {"description": "Prometheus text format",
                                                       "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        },
    }
