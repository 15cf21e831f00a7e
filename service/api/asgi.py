"""The WSGI application served by an ASGI server, run on the event loop's own thread.

``rapki serve`` runs under gunicorn's ``asgi`` worker (``service.api.server``): an event loop
reads requests and their bodies off any number of connections, and ``InlineWsgi`` calls the Flask
application for each request that has fully arrived, right there on the loop's thread.

Why inline, and not in a thread pool as the usual WSGI-under-ASGI adapters do: an enrollment is
CPU work (CSR verification, ECDSA signing, a short SQLite transaction on a local file), so another
thread could only wait for the interpreter lock, and every hand-off costs wake-ups and cold caches.
One worker process per CPU, each running its requests one after the other, keeps every CPU busy
with none of that. Measured on 2 vCPUs against gunicorn's threaded worker (2 workers x 2 threads,
the previous way of serving): 17-20 % less CPU per enrollment (24-34 % with one worker each).
What this rules out: a request that waits on something remote. Nothing rapki serves does (the CA
keys are local files); a CA key behind a network (KMS, a network HSM) would have to move requests
to a thread pool first.

Slow clients cost nothing here: a request is dispatched only once its whole body (at most
``max_body`` bytes) has arrived. A body over the limit is read and dropped (up to ``DRAIN_LIMIT``,
so the client is not reset before it reads the answer) and the application answers 413 from
``CONTENT_LENGTH``. A body still incomplete ``body_timeout`` seconds after its headers is answered
``408 request_timeout`` (the API's JSON error body) and the connection closes, as it must: the rest
of that body would be read as the next request.

The TLS client certificate, when the connection has one (verified in the handshake), reaches the
application as ``environ["SSL_CLIENT_CERT"]`` (PEM, as Apache's mod_ssl names it), from the ASGI
TLS extension's ``client_cert_chain``. Request headers become ``HTTP_*`` keys as in CGI; a header
whose name holds ``_`` is dropped (it would be indistinguishable from the same name with ``-``).
"""

from __future__ import annotations

import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from service.api import metrics

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

DRAIN_LIMIT = 1024 * 1024
# Set in every environ ``InlineWsgi`` makes: the application may return an ``AnswerLater``.
ANSWER_LATER = "rapki.answer_later"


class AnswerLater:
    """What a WSGI application run by ``InlineWsgi`` may return (when ``environ[ANSWER_LATER]``)
    before it has called ``start_response``: an answer that waits on the event loop first (group
    commit: ``service.api.direct``). ``InlineWsgi`` awaits ``answer``, which calls
    ``start_response`` and returns the body."""

    __slots__ = ()

    async def answer(self, start_response: Callable[..., Any]) -> Iterable[bytes]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[bytes]:
        raise TypeError("an AnswerLater is answered by InlineWsgi only (environ[ANSWER_LATER])")


class InlineWsgi:
    """ASGI application running the WSGI application ``app`` for each HTTP request, inline."""

    def __init__(self, app: WsgiApp, *, max_body: int, body_timeout: float | None = None) -> None:
        self.app = app
        self.max_body = max_body
        self.body_timeout = body_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off in the server; WebSocket is not served
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1003})
            return
        try:
            async with asyncio.timeout(self.body_timeout):
                read = await self._read_body(scope, receive)
        except TimeoutError:
            await self._send_body_timeout(send)
            return
        if read is None:
            return  # the client went away before its request was complete
        answer = _Answer()
        environ = wsgi_environ(scope, *read)
        environ[ANSWER_LATER] = True
        result = self.app(environ, answer.start_response)
        if isinstance(result, AnswerLater):
            result = await result.answer(answer.start_response)
        try:
            data = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        await send({"type": "http.response.start", "status": answer.status, "headers": answer.headers})
        await send({"type": "http.response.body", "body": data})

    async def _send_body_timeout(self, send: Send) -> None:
        body = json.dumps({"error": "request_timeout", "message": f"the request body did not arrive within "
                           f"{self.body_timeout:g} s of its headers: send the request whole"}).encode()
        await send({"type": "http.response.start", "status": 408, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
        metrics.REFUSED.labels("unmatched", "request_timeout").inc()

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, int] | None:
        """The body and its length; None when the client went away first.

        A body over ``max_body`` comes back as ``b""`` with its length (so the application refuses
        it). It is still read and thrown away, up to ``DRAIN_LIMIT`` bytes: a client that is still
        sending when the connection closes gets a TCP reset, often before it reads the 413."""
        declared = _declared_length(scope)
        if declared is not None and declared > self.max_body:
            if declared <= DRAIN_LIMIT and await _drain(receive) is None:
                return None
            return b"", declared
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            if chunk:
                chunks.append(chunk)
                size += len(chunk)
            more = message.get("more_body", False)
            if size > self.max_body:  # no declared length (chunked): count the rest, keep nothing
                rest = await _drain(receive) if more else 0
                return None if rest is None else (b"", size + rest)
            if not more:
                return b"".join(chunks), size  # one chunk: join returns it as it is


async def _drain(receive: Receive) -> int | None:
    """Read and drop the rest of a body, stopping past ``DRAIN_LIMIT`` bytes: how many were read;
    None when the client went away."""
    size = 0
    while size <= DRAIN_LIMIT:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    return size


class _Answer:
    """What the application passed to ``start_response``, in ASGI's terms."""

    __slots__ = ("headers", "status")

    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []

    def start_response(self, status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        # Nothing has been sent before the application returns, so a later call (with exc_info,
        # from an error handler) simply replaces the answer.
        self.status = int(status.split(" ", 1)[0])
        self.headers = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
        return _no_write


def _no_write(_data: bytes) -> None:
    raise RuntimeError("the write() callable of start_response is not supported: return the body")


def _declared_length(scope: Scope) -> int | None:
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


_HEADER_KEYS: dict[bytes, str] = {}
_MAX_HEADER_KEYS = 256  # header names are the client's choice: remember the first few hundred only


def _header_key(raw_name: bytes) -> str:
    """The environ key of a (lower-case) header name: ``HTTP_*``, ``CONTENT_TYPE``, or "" for a
    header left out (a name with "_"; ``Content-Length``, which ``CONTENT_LENGTH`` already says)."""
    name = raw_name.decode("latin-1")
    if "_" in name or name == "content-length":
        key = ""
    elif name == "content-type":
        key = "CONTENT_TYPE"
    else:
        key = "HTTP_" + name.upper().replace("-", "_")
    if len(_HEADER_KEYS) < _MAX_HEADER_KEYS:
        _HEADER_KEYS[raw_name] = key
    return key


def wsgi_environ(scope: Scope, body: bytes, length: int) -> dict[str, Any]:
    """The WSGI (PEP 3333) environ of an ASGI HTTP ``scope`` whose body is ``body`` (``length``
    bytes long, or longer when the body was dropped for its size)."""
    root = scope.get("root_path", "")
    path = scope["path"]
    if root and (path == root or path.startswith(root + "/")):  # only a whole leading segment
        path = path[len(root):]
    server = scope.get("server") or ("localhost", 0)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root.encode("utf-8").decode("latin-1"),
        "PATH_INFO": path.encode("utf-8").decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "RAW_URI": scope.get("raw_path", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or ""),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": client[0],
        "REMOTE_PORT": str(client[1]),
        "CONTENT_LENGTH": str(length),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    keys = _HEADER_KEYS
    for raw_name, raw_value in scope["headers"]:
        key = keys.get(raw_name)
        if key is None:
            key = _header_key(raw_name)
        if key:
            value = raw_value.decode("latin-1")
            environ[key] = f"{environ[key]},{value}" if key in environ else value
    tls = scope.get("extensions", {}).get("tls")
    if tls and tls.get("client_cert_chain"):
        environ["SSL_CLIENT_CERT"] = tls["client_cert_chain"][0]
    return environ
