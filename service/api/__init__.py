"""The enrollment API: a Flask application on top of ``pki``.

``create_app(home)`` builds it; ``rapki serve`` (``service.api.server``) runs it under gunicorn
with TLS. The Flask development server is never used to serve it.

Request bodies are declared once in ``service.api.shapes``; both the OpenAPI document
(``service.api.openapi``) and the endpoints' validation are derived from those declarations.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path

from flask import Flask, Response, g, request

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore
from pki.errors import RapkiError
from service.api import errors, metrics
from service.api.context import ApiContext, Settings
from service.api.jsonio import JsonProvider
from service.api.state import DatabaseState, FileState, SharedState

STATE_FILE = "api-state.db"


def create_app(home: str | Path | None = None, *, ca: CertificateAuthority | None = None) -> Flask:
    """The WSGI application for the CA in ``home`` (or the already open ``ca``)."""
    if ca is None:
        if home is None:
            raise ValueError("create_app needs a home or a CertificateAuthority")
        ca = CertificateAuthority.open(home)
    app = Flask("rapki", static_folder=None)  # no /static/<path> route: the API serves no files
    app.config["MAX_CONTENT_LENGTH"] = errors.MAX_BODY
    app.json = JsonProvider(app)
    settings = Settings.from_config(ca.config.extra.get("api", {}))
    ca.db.serialize_writers(ca.home.path / "run" / "sqlite-writer.lock")  # workers take turns in the kernel
    _load_ca_material(ca)
    app.extensions["rapki"] = ApiContext(ca, TokenStore(ca), shared_state(ca), settings)
    logging.getLogger("rapki.api").setLevel(logging.INFO)

    from service.api.routes import ops, v1

    app.register_blueprint(v1)
    app.register_blueprint(ops)
    errors.register(app)

    @app.before_request
    def _start_timer() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        started = g.get("started")
        if started is not None:
            metrics.LATENCY.labels(request.method, endpoint, str(response.status_code)).observe(
                time.perf_counter() - started)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    from service.api.crlfiles import CrlFiles
    from service.api.direct import DirectEnroll

    # Flask's documented way to add WSGI middleware is to replace the wsgi_app method. Enrollment,
    # the hot path, is looked at first.
    app.wsgi_app = DirectEnroll(app, CrlFiles(ca, app.wsgi_app))  # type: ignore[method-assign]
    return app


def shared_state(ca: CertificateAuthority) -> SharedState:
    """Where the API counts requests and remembers signatures: the CA database when it is
    PostgreSQL (shared by every replica), else a file of this host's (``service.api.state``)."""
    if ca.db.is_sqlite:
        return FileState(ca.home.path / STATE_FILE)
    return DatabaseState(ca.db)


def _load_ca_material(ca: CertificateAuthority) -> None:
    """The root and issuing CA certificates into memory now (each process keeps them), so that
    ``GET /v1/ca/root`` and ``/v1/ca/chain`` are answered from memory, never waiting on the
    database. A home missing them still starts; those endpoints then say what is missing."""
    with contextlib.suppress(RapkiError):
        ca.root_certificate  # noqa: B018 - loaded for its side effect, the cache
    ca.issuers()
