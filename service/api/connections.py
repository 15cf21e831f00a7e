"""What one client connection may cost ``rapki serve``, and the JSON answers to requests refused
before the application sees them.

Bounds, from ``[api]`` in ``rapki.toml`` (each overridable by ``RAPKI_API_<NAME>``), read once when
``rapki serve`` starts::

    [api]
    tls_handshake_timeout = 10         # seconds for the TLS handshake, and for the closing exchange
    header_timeout = 10                # seconds until a request's headers are complete
    body_timeout = 30                  # seconds from the end of the headers until the body is complete
    max_connections_per_address = 64   # open connections from one client address, per worker

* The TLS handshake must end within ``tls_handshake_timeout`` of the connection being accepted (a
  client that opens TCP and sends nothing is dropped then); the close_notify exchange that ends a
  TLS connection is bounded alike, so a client that never answers it does not hold its socket.
* A request's headers must be complete within ``header_timeout``: for the first request on a
  connection counted from the moment the connection was accepted (the handshake counts), for a
  later one on a kept-alive connection from its first byte (the idle wait before that is bounded
  by the keep-alive timeout, 30 s). A client that sent part of a request then gets
  ``408 request_timeout``; the connection is closed either way.
* The body must be complete within ``body_timeout`` of the headers (``service.api.asgi``), else
  ``408 request_timeout`` and the connection is closed. gunicorn also ends a body after the worker
  timeout (60 s) without a byte.
* A client address may hold ``max_connections_per_address`` open connections on each worker; one
  more is closed as soon as its TLS handshake ends, without an answer. Connections still in the
  handshake are not counted (the handshake bound ends them). Behind a proxy every connection
  comes from the proxy's address: raise the limit to the proxy's connection pool.

Requests gunicorn refuses while framing them (400 bad request line or header, 414 request line
too long, 431 headers too large, 501 unsupported transfer coding, ...) are answered with the
API's error body, ``{"error": "<code>", "message": "..."}`` and ``Content-Type:
application/json``, keeping gunicorn's status. Every refusal here counts in
``rapki_requests_refused_total`` with endpoint ``unmatched``.

``GuardedProtocol`` does this on top of gunicorn's ASGI connection handler. It relies on these
gunicorn internals (``gunicorn.asgi.protocol.ASGIProtocol``, as of gunicorn 27):
``connection_made``, ``data_received``, ``connection_lost``, ``_on_headers_complete`` (the parser's
callback when a request's headers are complete), ``_arm_keepalive_timer`` (called when a
connection turns idle between requests), ``_send_error_response(status, message,
extra_headers)``, ``_safe_write``, ``_close_transport``, and the attributes ``_callback_parser``,
``_request_ready`` and ``_closed``. ``BoundedTlsLoop`` relies on the worker starting its servers
with ``loop.create_server(..., ssl=context)``. If a gunicorn release changed these, the bounds
would silently stop applying: ``tests/test_api_slow_clients.py`` runs every one of them against a
real server.

``BoundedTlsLoop`` also accepts one connection per wake-up of the listening socket, so that
connections are spread over the workers (``BoundedTlsLoop._accept_connection`` says why). It
overrides asyncio's ``BaseSelectorEventLoop._accept_connection(protocol_factory, sock, sslcontext,
server, backlog, ...)`` (Python 3.11 to 3.13), the listening socket's callback:
``tests/test_api_balance.py`` pins its signature, ``tests/test_api.py`` checks the spread against a
real server.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from gunicorn.asgi.protocol import ASGIProtocol

from pki.errors import InvalidInput
from service.api import metrics
from service.api.context import _setting


@dataclass(frozen=True)
class ConnectionLimits:
    tls_handshake_timeout: float = 10.0
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections_per_address: int = 64

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> ConnectionLimits:
        defaults = cls()
        return cls(
            tls_handshake_timeout=_seconds(section, "tls_handshake_timeout", defaults.tls_handshake_timeout),
            header_timeout=_seconds(section, "header_timeout", defaults.header_timeout),
            body_timeout=_seconds(section, "body_timeout", defaults.body_timeout),
            max_connections_per_address=_count(section, "max_connections_per_address",
                                               defaults.max_connections_per_address),
        )


def _seconds(section: dict[str, Any], name: str, default: float) -> float:
    value = _setting(section, name, default)
    try:
        seconds = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError):
        seconds = math.nan
    if not 0 < seconds < 86400:  # also false for NaN
        raise InvalidInput(f"[api] {name} must be a number of seconds above 0 (and under a day), not {value!r}")
    return seconds


def _count(section: dict[str, Any], name: str, default: int) -> int:
    value = _setting(section, name, default)
    try:
        count = int(value) if not isinstance(value, bool | float) else 0
    except (TypeError, ValueError):
        count = 0
    if count < 1:
        raise InvalidInput(f"[api] {name} must be a whole number above 0, not {value!r}")
    return count


# What gunicorn's own refusals mean, as error code and advice; gunicorn's detail is appended.
_REFUSALS: dict[int, tuple[str, str]] = {
    400: ("malformed_request", "the request could not be read: check its syntax"),
    408: ("request_timeout", "the request did not arrive in time: send it whole"),
    414: ("uri_too_long", "the request line is too long: shorten the path and query"),
    431: ("headers_too_large", "a request header, or the number of headers, is over the server's limit"),
    500: ("internal_error", "the request failed on the server: the operator can see why in the server log"),
    501: ("not_implemented", "the server does not support this request's framing: send a Content-Length "
                             "or Transfer-Encoding: chunked"),
}
_MAX_DETAIL = 200  # gunicorn's detail can quote a whole request line


def refusal(status: int, detail: str) -> tuple[str, str]:
    """The error code and message for a request gunicorn refused with ``status`` and ``detail``."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    code, advice = _REFUSALS.get(status, ("http_error", phrase.lower()))
    detail = detail.strip()
    if not detail or detail.lower() == phrase.lower():
        return code, advice
    if len(detail) > _MAX_DETAIL:
        detail = detail[:_MAX_DETAIL] + "..."
    return code, f"{advice} ({detail})"


def error_response(status: int, code: str, message: str, extra_headers: Any = ()) -> bytes:
    """A whole HTTP/1.1 response carrying the API's error body; the connection closes after it."""
    body = json.dumps({"error": code, "message": message}).encode()
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    lines = [f"HTTP/1.1 {status} {phrase}", "Content-Type: application/json", f"Content-Length: {len(body)}",
             "Cache-Control: no-store", *(f"{name}: {value}" for name, value in extra_headers),
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


# This worker's open connections by client address (each worker process has its own).
_OPEN_BY_ADDRESS: Counter[str] = Counter()


class GuardedProtocol(ASGIProtocol):
    """gunicorn's ASGI connection handler with the bounds above and JSON refusals."""

    def __init__(self, worker: Any) -> None:
        super().__init__(worker)
        self._limits: ConnectionLimits = getattr(worker, "connection_limits", None) or ConnectionLimits()
        self._accepted_at = worker.loop.time()  # the loop builds the protocol when it accepts
        self._address: str | None = None
        self._refused = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_due = False  # the next byte starts a request whose header deadline is not armed yet
        self._head_begun = False  # bytes of the awaited request have arrived

    def connection_made(self, transport: Any) -> None:
        peer = transport.get_extra_info("peername")
        address = peer[0] if isinstance(peer, tuple) and peer else None
        if address is not None:
            if _OPEN_BY_ADDRESS[address] >= self._limits.max_connections_per_address:
                self._refused = True
                transport.abort()
                metrics.REFUSED.labels("unmatched", "too_many_connections").inc()
                return
            _OPEN_BY_ADDRESS[address] += 1
            self._address = address
        super().connection_made(transport)
        if self._callback_parser is not None:  # HTTP/1 (HTTP/2 and uWSGI are not served)
            elapsed = self.worker.loop.time() - self._accepted_at
            self._arm_head_timer(self._limits.header_timeout - elapsed)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        self._head_begun = True
        if self._head_due:
            self._head_due = False
            self._arm_head_timer(self._limits.header_timeout)
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused:
            return
        self._cancel_head_timer()
        if self._address is not None:
            _OPEN_BY_ADDRESS[self._address] -= 1
            if _OPEN_BY_ADDRESS[self._address] <= 0:
                del _OPEN_BY_ADDRESS[self._address]
            self._address = None
        super().connection_lost(exc)

    def _on_headers_complete(self) -> Any:
        self._cancel_head_timer()
        self._head_due = False
        return super()._on_headers_complete()

    def _arm_keepalive_timer(self) -> None:
        """The connection turned idle, waiting for its next request."""
        super()._arm_keepalive_timer()
        self._cancel_head_timer()
        self._head_due = True
        self._head_begun = False

    def _arm_head_timer(self, delay: float) -> None:
        self._cancel_head_timer()
        self._head_timer = self.worker.loop.call_later(max(delay, 0.0), self._head_timeout)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timeout(self) -> None:
        """The awaited request's headers are late. The timer only runs while no request is being
        served (it starts before a request and stops when its headers are complete), so an
        answer here cannot land inside another response."""
        self._head_timer = None
        if self._closed:
            return
        if self._head_begun:
            seconds = f"{self._limits.header_timeout:g}"
            self._write_refusal(408, "request_timeout",
                                f"the request headers did not arrive within {seconds} s: send the request whole")
        else:
            metrics.REFUSED.labels("unmatched", "request_timeout").inc()
        self._close_transport()
        if self._request_ready is not None:
            self._request_ready.set()  # wake the connection loop: it sees the connection closed and ends

    def _send_error_response(self, status: int, message: str, extra_headers: Any = ()) -> None:
        """gunicorn's refusals (framing errors, an application that failed to answer), as JSON."""
        self._write_refusal(status, *refusal(status, str(message)), extra_headers)

    def _write_refusal(self, status: int, code: str, message: str, extra_headers: Any = ()) -> None:
        self._safe_write(error_response(status, code, message, extra_headers))
        metrics.REFUSED.labels("unmatched", code).inc()


class BoundedTlsLoop(asyncio.SelectorEventLoop):
    """asyncio's event loop, with every TLS server it starts bounding its handshakes (opening and
    closing) by ``tls_timeout`` seconds instead of asyncio's defaults (60 s and 30 s)."""

    def __init__(self, tls_timeout: float) -> None:
        super().__init__()
        self.tls_timeout = tls_timeout

    async def create_server(self, *args: Any, **kwargs: Any) -> asyncio.Server:
        if kwargs.get("ssl") is not None:
            kwargs.setdefault("ssl_handshake_timeout", self.tls_timeout)
            kwargs.setdefault("ssl_shutdown_timeout", self.tls_timeout)
        return await super().create_server(*args, **kwargs)

    def _accept_connection(self, protocol_factory: Any, sock: Any, sslcontext: Any = None, server: Any = None,
                           backlog: int = 100, *rest: Any) -> None:
        """Accept one waiting connection, not up to ``backlog`` of them.

        All of gunicorn's workers watch the one listening socket, and asyncio accepts every
        connection waiting there in one go, in whichever worker wakes first. Clients that connect
        together (a fleet starting, a load balancer's pool) would then land on one worker and be
        served on one CPU for as long as their keep-alive connections last. Taking one per wake-up
        leaves the rest to every worker waiting in its event loop, so an idle worker takes its
        share at once and a busy one takes fewer. The price is a little more CPU per connection
        when new connections queue faster than the workers take them; larger batches, and
        least-connections counts shared between workers, were measured against this and lost
        (docs/benchmarks.md, "Connections spread over the workers")."""
        # An asyncio internal typeshed does not declare (pinned by tests/test_api_balance.py).
        super()._accept_connection(protocol_factory, sock, sslcontext, server, 1, *rest)  # type: ignore[misc]
