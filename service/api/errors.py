"""Every error leaves the API as ``{"error": "<code>", "message": "<what was wrong, what to do>"}``
(plus the members an error names in ``RapkiError.fields``, e.g. ``superseded_by``).

Library errors (``pki.errors``) carry their own code and status (a lock wait that timed out is
``DatabaseBusy``: 503 ``database_busy``, ``Retry-After: 1``); HTTP-level failures from Werkzeug
(404, 405, 413) and database outages are mapped here, so no handler ever answers with an HTML page
or a traceback.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from pki.errors import DatabaseBusy, InvalidInput, RapkiError
from service.api import metrics

log = logging.getLogger("rapki.api")

MAX_BODY = 64 * 1024

_HTTP_CODES = {
    400: ("malformed_request", "the request could not be read: check its syntax"),
    404: ("not_found", "no such endpoint: see GET /v1/openapi.json"),
    405: ("method_not_allowed", "this endpoint does not take this method: see GET /v1/openapi.json"),
    413: ("body_too_large", f"the request body is over {MAX_BODY // 1024} KiB: send only the CSR and options"),
    415: ("unsupported_media_type", "send the body as application/json"),
}


class MalformedJson(InvalidInput):
    code = "malformed_json"


def describe(exc: BaseException) -> tuple[str, str, int, dict[str, str]]:
    """The answer for ``exc``: error code, message, HTTP status and extra headers. Logs what the
    operator must see (server faults; never the request itself)."""
    if isinstance(exc, RapkiError):
        headers = {}
        retry_after = getattr(exc, "retry_after", None)
        if retry_after:
            headers["Retry-After"] = str(retry_after)
        if exc.http_status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="rapki"'
        if isinstance(exc, DatabaseBusy):  # the operator should see who holds the lock, and for how long
            log.warning("write refused: %s", exc)
        elif exc.http_status >= 500 and exc.http_status != 503:
            log.error("request failed: %s", exc)
        return exc.code, str(exc), exc.http_status, headers
    if isinstance(exc, HTTPException):
        status = exc.code or 500
        code, message = _HTTP_CODES.get(status, ("http_error", exc.description or "request failed"))
        return code, message, status, {}
    if isinstance(exc, OperationalError | PoolTimeout) or (isinstance(exc, DBAPIError) and exc.connection_invalidated):
        log.error("database unavailable: %s", exc)
        return "unavailable", "the CA database is unreachable right now: retry later", 503, {"Retry-After": "5"}
    log.error("database error" if isinstance(exc, DBAPIError) else "unexpected error", exc_info=exc)
    return "internal_error", "the request failed on the server: the operator can see why in the server log", 500, {}


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None,
                   fields: dict[str, str] | None = None) -> Response:
    response = jsonify({"error": code, "message": message, **(fields or {})})
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
    metrics.REFUSED.labels(endpoint, code).inc()
    return response


def register(app: Flask) -> None:
    @app.errorhandler(RapkiError)
    @app.errorhandler(HTTPException)
    @app.errorhandler(OperationalError)
    @app.errorhandler(PoolTimeout)
    @app.errorhandler(DBAPIError)
    @app.errorhandler(Exception)
    def _error(exc: Exception) -> Response:
        return error_response(*describe(exc), fields=exc.fields if isinstance(exc, RapkiError) else None)
