"""``GET /crl/<issuer>.crl``: each issuing CA's current CRL where its certificates' CRL
Distribution Point says (``[crl].distribution_url``), in DER, for relying parties that fetch it.

Served in front of Flask in ``rapki serve`` (like ``service.api.direct``) and, with
``rapki serve --crl-http-port PORT``, by a plain-HTTP listener of its own that answers this path
only (``python -m service.api.crlfiles``, started and stopped by ``rapki serve``): a relying party
fetching a CRL does not do TLS to a CA it does not know yet, and the CRL is signed anyway.

The CRL is ``CertificateAuthority.current_crl``'s, the rule ``GET /v1/crl`` follows: a revocation is
in the next answer. Answers are cacheable (``Cache-Control: public, max-age`` at most
``MAX_AGE`` and never past nextUpdate; ``ETag`` from the CRL number and its bytes;
``Last-Modified`` its thisUpdate); ``If-None-Match`` with the current ETag gets ``304``. An
unknown issuer is ``404`` with the API's JSON error body.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import socketserver
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from werkzeug.http import HTTP_STATUS_CODES

from pki.ca.authority import CertificateAuthority
from pki.errors import NotFound, RapkiError

CRL_TYPE = "application/pkix-crl"
MAX_AGE = 300  # seconds a cache may keep a CRL: a revocation reaches fetchers behind caches within this
_PATH = re.compile(r"/crl/([A-Za-z0-9._-]{1,64})\.crl")

log = logging.getLogger("rapki.api")

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]
Answer = tuple[int, list[tuple[str, str]], bytes]


def etag_of(number: int, der: bytes) -> str:
    return f'"{number}-{hashlib.sha256(der).hexdigest()[:16]}"'


def _matches(if_none_match: str, etag: str) -> bool:
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _error(status: int, code: str, message: str) -> Answer:
    body = (json.dumps({"error": code, "message": message}) + "\n").encode()
    return status, [("Content-Type", "application/json"), ("Cache-Control", "no-store")], body


def crl_answer(ca: CertificateAuthority, method: str, path: str, if_none_match: str = "",
               now: datetime | None = None) -> Answer:
    """The answer to ``method path``: the CRL (200 or 304) or a JSON error."""
    match = _PATH.fullmatch(path)
    if match is None:
        return _error(404, "not_found", "no such path: CRLs are at /crl/<issuer>.crl")
    if method not in ("GET", "HEAD"):
        return _error(405, "method_not_allowed", "a CRL is fetched with GET")
    try:
        built = ca.current_crl(match.group(1), actor="api:crl")
    except NotFound:
        known = ", ".join(i.name for i in ca.issuers())
        return _error(404, "not_found", f"no issuing CA named {match.group(1)!r} (known: {known})")
    except RapkiError as exc:
        return _error(exc.http_status, exc.code, str(exc))
    assert built is not None  # current_crl builds one when the last is not current
    der = built.der
    etag = etag_of(built.number, der)
    remaining = int((built.next_update - (now or datetime.now(UTC))).total_seconds())
    headers = [("ETag", etag), ("Last-Modified", format_datetime(built.this_update, usegmt=True)),
               ("Cache-Control", f"public, max-age={max(0, min(MAX_AGE, remaining))}")]
    if _matches(if_none_match, etag):
        return 304, headers, b""
    return 200, [("Content-Type", CRL_TYPE), *headers], der


def _respond(start_response: StartResponse, answer: Answer, method: str) -> list[bytes]:
    """The answer; to HEAD without its body (but with the length a GET gets)."""
    status, headers, body = answer
    start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}",
                   [*headers, *([("Content-Length", str(len(body)))] if status != 304 else [])])
    return [b""] if method == "HEAD" else [body]


class CrlFiles:
    """WSGI middleware: ``/crl/...`` here, everything else to ``fallback`` (or, without one, 404)."""

    def __init__(self, ca: CertificateAuthority, fallback: WsgiApp | None = None) -> None:
        self.ca = ca
        self.fallback = fallback

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or ""
        if self.fallback is not None and not path.startswith("/crl/"):
            return self.fallback(environ, start_response)
        method = environ.get("REQUEST_METHOD") or "GET"
        try:
            answer = crl_answer(self.ca, method, path, environ.get("HTTP_IF_NONE_MATCH", ""))
        except Exception:  # the database away: the operator sees why in the log, the client a JSON 503
            log.exception("serving %s failed", path)
            answer = _error(503, "unavailable", "the CRL cannot be read right now: retry later")
        return _respond(start_response, answer, method)


# --- the plain-HTTP listener (rapki serve --crl-http-port) ---------------------------------------
class _Server(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    timeout = 10  # seconds a connection may take to send its request: a slow client holds one thread

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _exit_with_parent(parent: int) -> None:
    """Stop when ``rapki serve`` (the parent) is gone, however it went."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service.api.crlfiles")
    parser.add_argument("--home", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    ca = CertificateAuthority.open(args.home)
    server = make_server(args.host, args.port, CrlFiles(ca), server_class=_Server, handler_class=_QuietHandler)
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    print(f"serving CRLs on http://{args.host}:{server.server_port}/crl/<issuer>.crl", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
