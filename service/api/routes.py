"""The HTTP endpoints. Thin: read the request, authenticate, call ``pki``, shape the answer.

Request bodies are read through their declarations in ``service.api.shapes`` (the OpenAPI
document, ``service.api.openapi``, is derived from the same ones); a route added here belongs in
that document too (``tests/test_api_shapes.py`` checks both ways).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, current_app, jsonify, request

from pki.ca.tokens import TokenExpired, TokenRevoked, TokenUsed, parse_token
from pki.errors import AlreadyRenewed, InvalidInput, RapkiError, Unauthenticated, Unavailable
from pki.store.statements import Defer
from pki.x509.durations import parse_duration
from pki.x509.pem import Pem
from service.api import crlfiles, enrollment, jsonio, metrics
from service.api.auth import Caller, certificate_caller, client_address, operator_caller, require_bearer
from service.api.context import ApiContext
from service.api.errors import MalformedJson
from service.api.openapi import spec
from service.api.shapes import TOKEN_CREATE_REQUEST
from service.api.state import Limit

v1 = Blueprint("v1", __name__, url_prefix="/v1")
ops = Blueprint("ops", __name__)

PEM_TYPE = "application/x-pem-file"

log = logging.getLogger("rapki.api")


def ctx() -> ApiContext:
    context: ApiContext = current_app.extensions["rapki"]
    return context


def json_body(*, optional: bool = False) -> dict[str, Any]:
    return parse_json(request.get_data(cache=True), optional=optional)  # 413 past MAX_CONTENT_LENGTH


def parse_json(data: bytes, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object a request body holds; 400 (``malformed_json``) for anything else."""
    if not data.strip():
        if optional:
            return {}
        raise MalformedJson("the request body is empty: send a JSON object")
    try:
        body = jsonio.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise MalformedJson(f"the request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise MalformedJson("the request body must be a JSON object")
    return body


def _limit_address() -> None:
    c = ctx()
    c.state.hit(f"addr:{client_address()}", c.settings.per_address, f"from {client_address()}")


def _limit_identity(key: str) -> None:
    c = ctx()
    c.state.hit(key, c.settings.per_identity, "with these credentials")


def _certificate_caller() -> Caller | None:
    c = ctx()
    return certificate_caller(c.ca, c.state.first_use, operator_profiles=c.settings.operator_profiles,
                              accept_signed=c.settings.accept_signed)


def _operator() -> Caller:
    c = ctx()
    caller = operator_caller(c.ca, c.tokens, operator_profiles=c.settings.operator_profiles,
                             replay_check=c.state.first_use, accept_signed=c.settings.accept_signed)
    _limit_identity(f"{caller.kind}:{caller.id}")
    return caller


# --- workload endpoints ----------------------------------------------------------------------------
@v1.post("/enroll")
def enroll() -> tuple[Response, int]:
    # Served by service.api.direct in front of Flask; this view answers when the app is called
    # without it (e.g. mounted under another WSGI server's dispatcher) and keeps the route known.
    answer = serve_enroll(ctx(), client_address(), request.headers.get("Authorization", ""), json_body)
    return jsonify(answer), 201


def serve_enroll(c: ApiContext, address: str, authorization: str,
                 body: Callable[[], dict[str, Any]], later: Defer | None = None) -> dict[str, Any]:
    """``POST /v1/enroll``: rate limits, token (401/409), then ``body()`` (400/413), binding (403),
    policy (422), issuance; the JSON answer. Refusals raise before anything is written.
    ``later``: the certificate's recording is handed there (group commit, ``service.api.direct``),
    whose caller counts it as issued once it is committed."""
    hits = [(f"addr:{address}", c.settings.per_address, f"from {address}")]
    # A token's own counter moves only once its secret matched: token ids are not secret, so
    # counting guesses against the id would let anyone lock its holder out. Every attempt,
    # failed or not, counts against the client address (both counters in one write).
    try:
        token = require_bearer(authorization)
        record = c.tokens.authenticate(token)
    except (TokenUsed, TokenExpired, TokenRevoked):  # the secret matched: the token's counter moves too
        c.state.hit_all([*hits, _token_hit(c, token)])
        raise
    except RapkiError:
        c.state.hit_all(hits)
        raise
    c.state.hit_all([*hits, _token_hit(c, token)])
    issued, req, profile = enrollment.enroll(c.ca, c.tokens, token, record, body(), address, later)
    if later is None:
        metrics.ISSUED.labels(issued.profile).inc()
    return enrollment.answer(issued, req, profile)


def _token_hit(c: ApiContext, token: str) -> tuple[str, Limit | None, str]:
    return f"enrollment-token:{parse_token(token, 'e')}", c.settings.per_identity, "with these credentials"


@v1.post("/renew")
def renew() -> tuple[Response, int]:
    _limit_address()
    caller = _certificate_caller()
    if caller is None:
        raise Unauthenticated("renewal needs the current certificate: connect with it (mutual TLS) or sign the "
                              "request with its key (RAPKI-SIG-V1)")
    _limit_identity(f"certificate:{caller.id}")
    try:
        issued, req, profile = enrollment.renew(ctx().ca, caller, json_body(optional=True))
    except AlreadyRenewed as exc:  # audited by the library; the operator should look (docs/api.md)
        log.warning("renewal refused: certificate %s was already renewed (replaced by %s), presented by %s via "
                    "%s: if that holder did not make the replacement, a copy of the key is in other hands",
                    exc.serial, exc.superseded_by, caller.address, caller.via)
        raise
    metrics.RENEWED.labels(issued.profile).inc()
    return jsonify(enrollment.answer(issued, req, profile)), 201


@v1.post("/revoke")
def revoke() -> Response:
    _limit_address()
    c = ctx()
    caller: Caller | None
    if request.headers.get("Authorization"):
        caller = _operator()
    else:
        caller = _certificate_caller()  # self-revocation: proof of possession of the key
        if caller is None:
            raise Unauthenticated("revocation needs an operator token, an operator certificate, or the "
                                  "certificate itself (mutual TLS or a RAPKI-SIG-V1 signature)")
        _limit_identity(f"certificate:{caller.id}")
    serial, reason = enrollment.revoke_request(json_body(), caller)
    result = c.ca.revoke(serial, reason=reason, actor=caller.actor)
    if not result.already_revoked:
        metrics.REVOKED.labels(result.record.profile).inc()
    return jsonify({**result.record.to_dict(), "already_revoked": result.already_revoked})


# --- operator endpoints ----------------------------------------------------------------------------
@v1.get("/certificates/<serial>")
def certificate(serial: str) -> Response:
    _limit_address()
    _operator()
    record = ctx().ca.find(serial)
    return jsonify({**record.to_dict(), "certificate": Pem.of_certificates([record.certificate]).text()})


@v1.post("/tokens")
def create_token() -> tuple[Response, int]:
    _limit_address()
    caller = _operator()
    fields = TOKEN_CREATE_REQUEST.read(json_body())
    created = ctx().tokens.create(fields["profile"], cn=fields["cn"], cn_pattern=fields["cn_pattern"],
                                  ttl=parse_duration(fields["ttl"]), uses=fields["uses"], actor=caller.actor)
    return jsonify({**created.record.to_dict(), "token": created.token}), 201


@v1.get("/tokens")
def list_tokens() -> Response:
    _limit_address()
    _operator()
    include = request.args.get("all") in ("1", "true", "yes")
    return jsonify({"tokens": [t.to_dict() for t in ctx().tokens.list_tokens(include_inactive=include)]})


@v1.delete("/tokens/<token_id>")
def revoke_token(token_id: str) -> Response:
    _limit_address()
    caller = _operator()
    return jsonify(ctx().tokens.revoke(token_id, actor=caller.actor).to_dict())


# --- public CA material ----------------------------------------------------------------------------
def _pem(data: bytes) -> Response:
    return Response(data, mimetype=PEM_TYPE)


@v1.get("/ca/chain")
def ca_chain() -> Response:
    return _pem(Pem.of_certificates(ctx().ca.chain()).data)


@v1.get("/ca/root")
def ca_root() -> Response:
    return _pem(Pem.of_certificates([ctx().ca.root_certificate]).data)


@v1.get("/crl")
def crl() -> Response:
    """The issuing CA's current CRL (``?issuer=NAME`` for another), by the library's rule
    (``CertificateAuthority.current_crl``): rebuilt when there is none yet, when its nextUpdate is
    within ``[crl].republish_before``, or when it does not list exactly the revoked, unexpired
    certificates, so a relying party never fetches a CRL that misses a revocation the API already
    confirmed."""
    built = ctx().ca.current_crl(request.args.get("issuer") or None, actor="api:crl")
    assert built is not None  # current_crl builds a CRL when the last one is not current
    if PEM_TYPE in request.headers.get("Accept", ""):
        return _pem(built.pem)
    return Response(built.der, mimetype="application/pkix-crl")


@ops.get("/crl/<issuer>.crl")
def distribution_point_crl(issuer: str) -> Response:
    """Served by ``service.api.crlfiles`` in front of Flask (and on the plain-HTTP listener); this
    view answers when the app is called without it and keeps the route known."""
    status, headers, body = crlfiles.crl_answer(ctx().ca, request.method, request.path,
                                                request.headers.get("If-None-Match", ""))
    return Response(body, status=status, headers=headers)  # Werkzeug drops the body of a HEAD answer


@v1.get("/openapi.json")
def openapi() -> Response:
    return jsonify(spec())


# --- operations ------------------------------------------------------------------------------------
@ops.get("/healthz")
def healthz() -> tuple[Response, int]:
    c = ctx()
    checks: dict[str, str] = {}
    status = 200
    try:
        c.ca.db.ping()
        checks["database"] = "ok"
    except Unavailable as exc:
        checks["database"] = str(exc)
        status = 503
    try:
        issuer = c.ca.issuer()
        if issuer.backend == "file" and not c.ca.home.resolve(issuer.key_ref).is_file():
            raise InvalidInput(f"the key file of {issuer.name} is missing")
        c.ca.issuer_key(issuer)
        checks["ca_key"] = "ok"
    except Exception as exc:
        checks["ca_key"] = str(exc)
        status = 503
    body: dict[str, Any] = {"status": "ok" if status == 200 else "unavailable", "checks": checks}
    if status != 200:
        body.update({"error": "unavailable", "message": "; ".join(f"{k}: {v}" for k, v in checks.items()
                                                                   if v != "ok")})
    return jsonify(body), status


@ops.get("/metrics")
def prometheus() -> Response:
    return Response(metrics.render(ctx().ca), content_type=metrics.CONTENT_TYPE)
