"""``POST /v1/enroll`` served straight from the WSGI environ, in front of Flask.

Enrollment is the endpoint workloads hit in bulk. Flask's per-request machinery (request and
application contexts, URL matching, Werkzeug's request and response objects, before/after hooks)
cost about as much CPU as the token look-up and the certificate's recording together. This
middleware serves that one route itself and hands every other request to Flask unchanged.

It does exactly what the Flask view does (``routes.serve_enroll``, shared by both), with the same
answers: the body read under the same 64 KiB limit (413) and checked against the same declaration
(``service.api.shapes.ENROLL_REQUEST``, in ``enrollment.enroll``), the same JSON bytes (the app's JSON
provider, ``service.api.jsonio``), the same errors (``errors.describe``), ``Cache-Control:
no-store``, and the same metrics (``rapki_http_request_duration_seconds``,
``rapki_requests_refused_total``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from service.api import errors, metrics
from service.api.context import ApiContext
from service.api.routes import parse_json, serve_enroll

ENROLL_PATH = "/v1/enroll"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def read_body(environ: dict[str, Any], limit: int = errors.MAX_BODY) -> bytes:
    """The request body: by Content-Length (413 when over the limit, as Werkzeug), else, when the
    server terminates the input (``wsgi.input_terminated``, for chunked bodies), up to the limit and 413 past it
    (Werkzeug would cut it at the limit and the JSON would not parse), else nothing."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = max(0, int(length))
        except ValueError:
            size = 0
        if size > limit:
            raise RequestEntityTooLarge()
        return bytes(stream.read(size)) if size else b""
    if "wsgi.input_terminated" in environ:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge()
        return bytes(data)
    return b""


class DirectEnroll:
    """WSGI middleware: ``POST /v1/enroll`` here, everything else to ``fallback`` (Flask)."""

    def __init__(self, app: Flask, fallback: WsgiApp) -> None:
        self.ctx: ApiContext = app.extensions["rapki"]
        self.fallback = fallback
        self._encode = app.json.dumps  # the app's JSON provider: the bytes jsonify() would send
        self._issued_latency = metrics.LATENCY.labels("POST", ENROLL_PATH, "201")

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != ENROLL_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        headers: dict[str, str]
        try:
            answer = serve_enroll(self.ctx, environ.get("REMOTE_ADDR") or "unknown",
                                  environ.get("HTTP_AUTHORIZATION", ""), lambda: parse_json(read_body(environ)))
            status, headers = 201, {}
        except Exception as exc:
            code, message, status, headers = errors.describe(exc)
            metrics.REFUSED.labels(ENROLL_PATH, code).inc()
            answer = {"error": code, "message": message}
        data = f"{self._encode(answer)}\n".encode()
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers.items(),
            ("Cache-Control", "no-store"),
        ])
        latency = self._issued_latency if status == 201 else metrics.LATENCY.labels("POST", ENROLL_PATH, str(status))
        latency.observe(time.perf_counter() - started)
        return [data]
