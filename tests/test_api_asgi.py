"""``service.api.asgi``: the WSGI application run inline under ASGI (``InlineWsgi``, ``wsgi_environ``).

The ASGI side is driven by hand: ``asyncio.run`` of the application with a ``receive`` that hands out
prepared messages (counting the calls, and failing on a call past the last one: a real server would
block there) and a ``send`` that collects what is sent. The wrapped application is a small real WSGI
callable that records the environ it was given and the body it read.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

from service.api.asgi import DRAIN_LIMIT, InlineWsgi, wsgi_environ

Message = dict[str, Any]
StartResponse = Callable[..., Any]

PEM = "-----BEGIN CERTIFICATE-----\nMIIBfake\n-----END CERTIFICATE-----\n"


class Receiver:
    """An ASGI ``receive``: the prepared messages, one per call."""

    def __init__(self, messages: Iterable[Message]) -> None:
        self.pending = list(messages)
        self.calls = 0

    async def __call__(self) -> Message:
        self.calls += 1
        if not self.pending:
            raise AssertionError("receive() called after the last prepared message")
        return self.pending.pop(0)


class Sender:
    """An ASGI ``send``: collects the messages."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    async def __call__(self, message: Message) -> None:
        self.messages.append(message)


class RecordingApp:
    """A WSGI application answering ``status``/``headers``/``chunks`` and recording each request."""

    def __init__(self, status: str = "200 OK", headers: list[tuple[str, str]] | None = None,
                 chunks: Iterable[bytes] = (b"ok",)) -> None:
        self.status = status
        self.headers = headers if headers is not None else [("Content-Type", "text/plain")]
        self.chunks = list(chunks)
        self.environs: list[dict[str, Any]] = []
        self.bodies: list[bytes] = []

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        self.environs.append(environ)
        self.bodies.append(environ["wsgi.input"].read())
        start_response(self.status, self.headers)
        return self.chunks

    @property
    def environ(self) -> dict[str, Any]:
        assert len(self.environs) == 1, f"the application was called {len(self.environs)} times"
        return self.environs[0]

    @property
    def body(self) -> bytes:
        assert len(self.bodies) == 1
        return self.bodies[0]


def http_scope(method: str = "POST", path: str = "/enroll", *, query: bytes = b"",
               headers: Iterable[tuple[bytes, bytes]] = (), **extra: Any) -> dict[str, Any]:
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": method,
        "scheme": "https",
        "path": path,
        "raw_path": path.encode("utf-8"),
        "query_string": query,
        "root_path": "",
        "headers": list(headers),
        "server": ("ca.example.com", 8443),
        "client": ("192.0.2.7", 50123),
    }
    scope.update(extra)
    return scope


def body(data: bytes, more: bool = False) -> Message:
    return {"type": "http.request", "body": data, "more_body": more}


def serve(app: Callable[..., Any], scope: dict[str, Any], messages: Iterable[Message] = (body(b""),),
          *, max_body: int = 1024) -> tuple[Receiver, Sender]:
    receive, send = Receiver(messages), Sender()
    asyncio.run(InlineWsgi(app, max_body=max_body)(scope, receive, send))
    return receive, send


# --- a whole request ------------------------------------------------------------------------------

def test_post_response_is_sent_as_start_then_body() -> None:
    app = RecordingApp("201 Created", [("Content-Type", "application/json"), ("X-Request-Id", "r-1")],
                       chunks=[b'{"id":', b" 7}"])
    scope = http_scope(headers=[(b"content-type", b"application/json"), (b"content-length", b"9")])
    _, send = serve(app, scope, [body(b'{"a": 1}\n')])

    assert len(send.messages) == 2
    start, answer = send.messages
    assert start == {"type": "http.response.start", "status": 201,
                     "headers": [(b"content-type", b"application/json"), (b"x-request-id", b"r-1")]}
    assert answer["type"] == "http.response.body"
    assert answer["body"] == b'{"id": 7}'  # the chunks, joined
    assert not answer.get("more_body", False)


def test_post_environ() -> None:
    app = RecordingApp()
    scope = http_scope("POST", "/enroll", query=b"profile=web&x=%20y",
                       headers=[(b"content-type", b"application/json"), (b"content-length", b"11")])
    serve(app, scope, [body(b'{"csr": ""}')])

    environ = app.environ
    assert environ["REQUEST_METHOD"] == "POST"
    assert environ["SCRIPT_NAME"] == ""
    assert environ["PATH_INFO"] == "/enroll"
    assert environ["QUERY_STRING"] == "profile=web&x=%20y"
    assert environ["CONTENT_TYPE"] == "application/json"
    assert environ["CONTENT_LENGTH"] == "11"
    assert "HTTP_CONTENT_TYPE" not in environ and "HTTP_CONTENT_LENGTH" not in environ
    assert environ["REMOTE_ADDR"] == "192.0.2.7"
    assert environ["SERVER_NAME"] == "ca.example.com"
    assert environ["SERVER_PORT"] == "8443"
    assert environ["SERVER_PROTOCOL"] == "HTTP/1.1"
    assert environ["wsgi.url_scheme"] == "https"
    assert environ["wsgi.version"] == (1, 0)
    assert app.body == b'{"csr": ""}'


def test_get_without_body_has_content_length_zero() -> None:
    app = RecordingApp()
    serve(app, http_scope("GET", "/crl", server=None, client=None, scheme="http"))

    environ = app.environ
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["CONTENT_LENGTH"] == "0"
    assert "CONTENT_TYPE" not in environ
    assert app.body == b""
    assert environ["wsgi.url_scheme"] == "http"
    assert (environ["SERVER_NAME"], environ["SERVER_PORT"]) == ("localhost", "")  # no server address given
    assert environ["REMOTE_ADDR"] == ""


def test_non_ascii_path_is_utf8_bytes_as_latin1() -> None:
    # ASGI gives the path decoded from UTF-8; PEP 3333 wants the raw bytes, one character per byte.
    app = RecordingApp()
    serve(app, http_scope("GET", "/profiles/café"))

    path_info = app.environ["PATH_INFO"]
    assert path_info == "/profiles/caf\xc3\xa9"  # é is C3 A9 in UTF-8
    assert path_info.encode("latin-1").decode("utf-8") == "/profiles/café"


def test_root_path_goes_to_script_name() -> None:
    app = RecordingApp()
    serve(app, http_scope("GET", "/pki/v1/certificates", root_path="/pki"))

    assert app.environ["SCRIPT_NAME"] == "/pki"
    assert app.environ["PATH_INFO"] == "/v1/certificates"


def test_path_equal_to_root_path_leaves_empty_path_info() -> None:
    app = RecordingApp()
    serve(app, http_scope("GET", "/pki", root_path="/pki"))

    assert (app.environ["SCRIPT_NAME"], app.environ["PATH_INFO"]) == ("/pki", "")


def test_root_path_is_stripped_only_on_a_segment_boundary() -> None:
    # CGI (RFC 3875): PATH_INFO is empty or starts with "/". "/pkix/a" is not under "/pki".
    environ = wsgi_environ(http_scope("GET", "/pkix/a", root_path="/pki"), b"", 0)

    assert environ["PATH_INFO"] == "" or environ["PATH_INFO"].startswith("/")


# --- the body -------------------------------------------------------------------------------------

def test_body_in_several_chunks_is_joined() -> None:
    app = RecordingApp()
    messages = [body(b"abc", more=True), body(b"", more=True), body(b"def", more=True), body(b"gh")]
    receive, _ = serve(app, http_scope(), messages)

    assert app.body == b"abcdefgh"
    assert app.environ["CONTENT_LENGTH"] == "8"
    assert receive.calls == 4 and not receive.pending


def test_body_of_exactly_max_body_is_kept() -> None:
    app = RecordingApp()
    serve(app, http_scope(), [body(b"x" * 6, more=True), body(b"y" * 4)], max_body=10)

    assert app.body == b"x" * 6 + b"y" * 4
    assert app.environ["CONTENT_LENGTH"] == "10"


def test_declared_length_over_max_body_is_drained_and_reported() -> None:
    app = RecordingApp("413 Content Too Large")
    scope = http_scope(headers=[(b"content-length", b"30")])
    messages = [body(b"a" * 10, more=True), body(b"b" * 10, more=True), body(b"c" * 10)]
    receive, send = serve(app, scope, messages, max_body=16)

    assert app.environ["CONTENT_LENGTH"] == "30"  # the declared length, so the application can refuse it
    assert app.body == b""
    assert receive.calls == 3 and not receive.pending  # the whole body was read (and dropped)
    assert send.messages[0]["status"] == 413


def test_declared_length_over_drain_limit_is_not_read() -> None:
    app = RecordingApp("413 Content Too Large")
    declared = DRAIN_LIMIT + 1
    scope = http_scope(headers=[(b"content-length", str(declared).encode())])
    receive, send = serve(app, scope, [body(b"a" * 100, more=True)], max_body=16)

    assert receive.calls == 0
    assert app.environ["CONTENT_LENGTH"] == str(declared)
    assert app.body == b""
    assert send.messages[0]["status"] == 413


def test_drain_stops_past_drain_limit() -> None:
    # Declared within DRAIN_LIMIT, but the client keeps sending: reading stops once more than
    # DRAIN_LIMIT bytes were dropped. With chunks of half the limit: 1/2, 1 (not past it yet), 3/2.
    app = RecordingApp()
    half = DRAIN_LIMIT // 2
    scope = http_scope(headers=[(b"content-length", str(DRAIN_LIMIT).encode())])
    messages = [body(b"z" * half, more=True) for _ in range(5)]
    receive, _ = serve(app, scope, messages, max_body=16)

    assert receive.calls == 3
    assert len(receive.pending) == 2
    assert app.environ["CONTENT_LENGTH"] == str(DRAIN_LIMIT)
    assert app.body == b""


def test_chunked_body_over_max_body_is_counted_not_kept() -> None:
    app = RecordingApp()
    messages = [body(b"a" * 6, more=True), body(b"b" * 6, more=True), body(b"c" * 6)]
    receive, _ = serve(app, http_scope(), messages, max_body=10)  # no Content-Length

    length = int(app.environ["CONTENT_LENGTH"])
    assert length > 10
    assert length == 18  # every byte that arrived is counted, although none is kept
    assert app.body == b""
    assert not receive.pending


def test_unparsable_content_length_falls_back_to_the_body() -> None:
    app = RecordingApp()
    serve(app, http_scope(headers=[(b"content-length", b"lots")]), [body(b"hello")])

    assert app.environ["CONTENT_LENGTH"] == "5"
    assert app.body == b"hello"


@pytest.mark.parametrize("messages", [
    [{"type": "http.disconnect"}],
    [body(b"partial", more=True), {"type": "http.disconnect"}],
], ids=["before-any-body", "mid-body"])
def test_disconnect_before_the_body_ends_calls_nothing(messages: list[Message]) -> None:
    app = RecordingApp()
    _, send = serve(app, http_scope(), messages)

    assert app.environs == []
    assert send.messages == []


def test_disconnect_while_draining_calls_nothing() -> None:
    app = RecordingApp()
    scope = http_scope(headers=[(b"content-length", b"100")])
    _, send = serve(app, scope, [body(b"a" * 40, more=True), {"type": "http.disconnect"}], max_body=10)

    assert app.environs == []
    assert send.messages == []


def test_disconnect_while_counting_chunked_body_calls_nothing() -> None:
    app = RecordingApp()
    messages = [body(b"a" * 20, more=True), body(b"b" * 5, more=True), {"type": "http.disconnect"}]
    _, send = serve(app, http_scope(), messages, max_body=10)

    assert app.environs == []
    assert send.messages == []


# --- headers and the client certificate ------------------------------------------------------------

def test_client_sent_ssl_client_cert_header_stays_an_http_header() -> None:
    app = RecordingApp()
    serve(app, http_scope(headers=[(b"ssl-client-cert", PEM.replace("\n", " ").encode())]))

    environ = app.environ
    assert environ["HTTP_SSL_CLIENT_CERT"] == PEM.replace("\n", " ")
    assert "SSL_CLIENT_CERT" not in environ


def test_header_with_underscore_is_dropped() -> None:
    app = RecordingApp()
    serve(app, http_scope(headers=[(b"x_forwarded_for", b"203.0.113.9"), (b"x-real-ip", b"198.51.100.1")]))

    environ = app.environ
    assert "HTTP_X_FORWARDED_FOR" not in environ
    assert "203.0.113.9" not in environ.values()  # under no key at all
    assert environ["HTTP_X_REAL_IP"] == "198.51.100.1"  # the same kind of header, spelled with "-", is kept


def test_repeated_header_is_joined_with_comma() -> None:
    app = RecordingApp()
    serve(app, http_scope(headers=[(b"accept", b"application/json"), (b"x-other", b"1"),
                                   (b"accept", b"text/plain")]))

    assert app.environ["HTTP_ACCEPT"] == "application/json,text/plain"
    assert app.environ["HTTP_X_OTHER"] == "1"


def test_header_values_are_latin1() -> None:
    app = RecordingApp()
    serve(app, http_scope(headers=[(b"x-name", "Zoë".encode())]))

    assert app.environ["HTTP_X_NAME"].encode("latin-1").decode("utf-8") == "Zoë"


def test_tls_client_certificate_becomes_ssl_client_cert() -> None:
    app = RecordingApp()
    other = PEM.replace("fake", "issuer")
    serve(app, http_scope(extensions={"tls": {"client_cert_chain": [PEM, other], "tls_version": None}}))

    assert app.environ["SSL_CLIENT_CERT"] == PEM  # the leaf: the first of the chain


@pytest.mark.parametrize("extensions", [
    {"tls": {"client_cert_chain": []}},
    {"tls": {"client_cert_name": None}},
    {},
], ids=["empty-chain", "no-chain", "no-tls"])
def test_no_client_certificate_no_ssl_client_cert(extensions: dict[str, Any]) -> None:
    app = RecordingApp()
    serve(app, http_scope(extensions=extensions))

    assert "SSL_CLIENT_CERT" not in app.environ


def test_client_cert_header_does_not_override_tls_certificate() -> None:
    app = RecordingApp()
    scope = http_scope(headers=[(b"ssl-client-cert", b"forged")],
                       extensions={"tls": {"client_cert_chain": [PEM]}})
    serve(app, scope)

    assert app.environ["SSL_CLIENT_CERT"] == PEM
    assert app.environ["HTTP_SSL_CLIENT_CERT"] == "forged"


# --- the WSGI application's side -----------------------------------------------------------------

def test_second_start_response_with_exc_info_wins() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        start_response("200 OK", [("Content-Type", "text/plain"), ("X-First", "1")])
        try:
            raise ValueError("while building the answer")
        except ValueError:
            start_response("500 Internal Server Error", [("Content-Type", "application/json")], sys.exc_info())
        return [b'{"error": "internal"}']

    _, send = serve(app, http_scope())

    assert send.messages[0] == {"type": "http.response.start", "status": 500,
                                "headers": [(b"content-type", b"application/json")]}
    assert send.messages[1]["body"] == b'{"error": "internal"}'


def test_start_response_called_while_iterating_is_honoured() -> None:
    # A generator application calls start_response only once its result is iterated.
    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start_response("202 Accepted", [("X-Lazy", "yes")])
        yield b"later"

    _, send = serve(app, http_scope())

    assert send.messages[0]["status"] == 202
    assert send.messages[0]["headers"] == [(b"x-lazy", b"yes")]
    assert send.messages[1]["body"] == b"later"


class ClosingBody:
    """A WSGI result with ``close``, as PEP 3333 requires the server to call."""

    def __init__(self, chunks: list[bytes], fail: bool = False) -> None:
        self.chunks = chunks
        self.fail = fail
        self.closed = 0

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.fail:
            raise RuntimeError("broken body")

    def close(self) -> None:
        self.closed += 1


def test_result_close_is_called() -> None:
    result = ClosingBody([b"a", b"b"])

    def app(environ: dict[str, Any], start_response: StartResponse) -> ClosingBody:
        start_response("200 OK", [])
        assert result.closed == 0
        return result

    _, send = serve(app, http_scope())

    assert result.closed == 1
    assert send.messages[1]["body"] == b"ab"


def test_result_close_is_called_when_iteration_fails() -> None:
    result = ClosingBody([b"a"], fail=True)

    def app(environ: dict[str, Any], start_response: StartResponse) -> ClosingBody:
        start_response("200 OK", [])
        return result

    with pytest.raises(RuntimeError, match="broken body"):
        serve(app, http_scope())  # the sender collects nothing: the server answers 500 itself

    assert result.closed == 1


def test_write_callable_is_refused() -> None:
    def app(environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        write = start_response("200 OK", [])
        write(b"old style")
        return []

    receive, send = Receiver([body(b"")]), Sender()
    with pytest.raises(RuntimeError, match="write"):
        asyncio.run(InlineWsgi(app, max_body=10)(http_scope(), receive, send))
    assert send.messages == []


# --- other scopes --------------------------------------------------------------------------------

def test_websocket_is_closed_with_1003() -> None:
    app = RecordingApp()
    scope = {"type": "websocket", "path": "/ws", "headers": [], "query_string": b""}
    _, send = serve(app, scope, [{"type": "websocket.connect"}])

    assert send.messages == [{"type": "websocket.close", "code": 1003}]
    assert app.environs == []


def test_lifespan_scope_is_ignored() -> None:
    app = RecordingApp()
    receive, send = serve(app, {"type": "lifespan"}, [{"type": "lifespan.startup"}])

    assert send.messages == []
    assert receive.calls == 0
    assert app.environs == []
