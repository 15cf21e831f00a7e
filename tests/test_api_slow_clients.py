"""Slow and malformed clients against a real ``rapki serve`` (TLS on 127.0.0.1, one worker, small
limits): slowloris connections, a TCP connection that never starts TLS and a slow body are cut
off within a bounded time while other clients are served; one address cannot hold more than its
share of connections; requests gunicorn refuses while framing them get the API's JSON error body.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from pki.ca.home import Home
from pki.errors import InvalidInput
from service.api.connections import ConnectionLimits
from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import RAPKI, free_port, stop

pytestmark = pytest.mark.e2e

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
HANDSHAKE_TIMEOUT = 2
PER_ADDRESS = 6
# Far above every limit (and far below asyncio's 60 s handshake default), so only a missing bound fails.
DEADLINE = 20.0
TRICKLE_EVERY = 0.5


@dataclass
class Served:
    home: Path
    port: int
    root: Path
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def tls(self) -> ssl.SSLSocket:
        context = ssl.create_default_context(cafile=str(self.root))
        raw = socket.create_connection(("127.0.0.1", self.port), timeout=10)
        return context.wrap_socket(raw, server_hostname="127.0.0.1")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("slow")
    home = tmp / "home"
    saved = {k: os.environ.get(k) for k in ("RAPKI_PASSPHRASE", "RAPKI_DATABASE_URL")}
    os.environ["RAPKI_PASSPHRASE"] = PASSPHRASE
    os.environ.pop("RAPKI_DATABASE_URL", None)
    make_ca(home)
    Home(home).update_section("api", {"header_timeout": HEADER_TIMEOUT, "body_timeout": BODY_TIMEOUT,
                                      "tls_handshake_timeout": HANDSHAKE_TIMEOUT,
                                      "max_connections_per_address": PER_ADDRESS})
    port = free_port()
    log_path = tmp / "serve.log"
    log = log_path.open("w")
    # One worker: every connection lands on it, so the per-address count is exact.
    proc = subprocess.Popen([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--workers", "1",
                             "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    server = Served(home, port, home / "ca" / "root.pem", log_path)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(server.url + "/healthz", verify=str(server.root), timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rapki serve did not come up: " + log_path.read_text()[-3000:])
            time.sleep(0.2)
        yield server
    finally:
        stop(proc)
        log.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class Outcome:
    received: bytes
    closed_by_server: bool


def trickle(sock: socket.socket, start: bytes, more: bytes) -> Outcome:
    """Send ``start``, then ``more`` every ``TRICKLE_EVERY`` seconds until the server answers or
    closes, for at most ``DEADLINE`` seconds: what came back, and whether the server closed."""
    received = b""
    deadline = time.monotonic() + DEADLINE
    sock.settimeout(TRICKLE_EVERY)
    try:
        if start:
            sock.sendall(start)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if not received and more:
                    sock.sendall(more)
                continue
            if not chunk:
                return Outcome(received, True)
            received += chunk
    except (ConnectionError, ssl.SSLError):
        return Outcome(received, True)
    finally:
        sock.close()
    return Outcome(received, False)


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    return status, headers, body


def assert_json_error(raw: bytes, status: int, code: str) -> str:
    """``raw`` is one whole response with ``status`` and the API's error body for ``code``: its message."""
    got_status, headers, body = parse_response(raw)
    assert got_status == status, raw[:300]
    assert headers["content-type"] == "application/json"
    assert int(headers["content-length"]) == len(body)
    document = json.loads(body)
    assert set(document) == {"error", "message"} and document["error"] == code
    assert isinstance(document["message"], str) and document["message"]
    return str(document["message"])


def request_on(sock: ssl.SSLSocket, path: str = "/healthz") -> int:
    """One keep-alive GET on an open connection: the response status (the body is read whole)."""
    sock.settimeout(10)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
    raw = b""
    while b"\r\n\r\n" not in raw:
        chunk = sock.recv(65536)
        assert chunk, "the server closed a connection it should have served"
        raw += chunk
    status, headers, body = parse_response(raw)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status


def test_one_address_holds_at_most_its_share_of_connections(served: Served) -> None:
    """Runs first, on a server that has no other connections open."""
    held = [served.tls() for _ in range(PER_ADDRESS)]
    try:
        for sock in held:  # each one served (and so counted) before the next opens
            assert request_on(sock) == 200
        refused = trickle(served.tls(), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", b"")
        assert refused.closed_by_server and refused.received == b""  # closed at once, no answer
        assert request_on(held[0]) == 200  # the address's open connections still work
        held.pop().close()
        deadline = time.monotonic() + DEADLINE
        while True:  # the server learns of the close a moment later; then a new connection is served
            outcome = trickle(served.tls(), b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"")
            if outcome.received:
                assert parse_response(outcome.received)[0] == 200
                break
            assert time.monotonic() < deadline, "no connection served after one of the address's closed"
            time.sleep(0.2)
    finally:
        for sock in held:
            sock.close()


def test_slow_and_silent_clients_are_cut_off_while_others_are_served(served: Served) -> None:
    slowloris = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with ThreadPoolExecutor(max_workers=5) as pool:
        slow = [pool.submit(trickle, served.tls(), slowloris, b"X-Slow: 1\r\n") for _ in range(3)]
        raw_tcp = socket.create_connection(("127.0.0.1", served.port), timeout=10)  # never starts TLS
        silent = pool.submit(trickle, raw_tcp, b"", b"")
        kept_alive = served.tls()
        assert request_on(kept_alive) == 200  # then the next request's head trickles in
        slow_next = pool.submit(trickle, kept_alive, slowloris, b"X-Slow: 1\r\n")
        # Meanwhile, an ordinary client on a connection of its own.
        assert requests.get(served.url + "/healthz", verify=str(served.root), timeout=8).status_code == 200
        for future in [*slow, slow_next]:
            outcome = future.result()
            assert outcome.closed_by_server, "a slowloris connection was still open after the deadline"
            assert "headers" in assert_json_error(outcome.received, 408, "request_timeout")
        outcome = silent.result()
        assert outcome.closed_by_server and outcome.received == b"", "a connection without TLS was kept"


def test_slow_body_is_cut_off_with_408(served: Served) -> None:
    start = b"POST /v1/enroll HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
    outcome = trickle(served.tls(), start, b" ")
    assert outcome.closed_by_server, "a slow body was still being read after the deadline"
    assert "body" in assert_json_error(outcome.received, 408, "request_timeout")
    assert requests.get(served.url + "/healthz", verify=str(served.root), timeout=8).status_code == 200


@pytest.mark.parametrize(("request_bytes", "status", "code"), [
    (b"GE T / HTTP/1.1\r\nHost: x\r\n\r\n", 400, "malformed_request"),  # bad request line
    (b"GET / HTTP/1.1\r\nHost: x\r\nBad Name: 1\r\n\r\n", 400, "malformed_request"),  # bad header name
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
     431, "headers_too_large"),  # too many headers
    (b"POST /v1/enroll HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\n", 501, "not_implemented"),
], ids=["request-line", "header-name", "uri-too-long", "header-too-large", "too-many-headers",
        "transfer-coding"])
def test_framing_errors_get_the_json_error_body(served: Served, request_bytes: bytes, status: int,
                                                 code: str) -> None:
    outcome = trickle(served.tls(), request_bytes, b"")
    assert outcome.closed_by_server
    assert_json_error(outcome.received, status, code)


def test_connection_limit_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert ConnectionLimits.from_config({}) == ConnectionLimits(10.0, 10.0, 30.0, 64)
    limits = ConnectionLimits.from_config({"header_timeout": 2.5, "max_connections_per_address": 3})
    assert (limits.header_timeout, limits.max_connections_per_address) == (2.5, 3)
    monkeypatch.setenv("RAPKI_API_BODY_TIMEOUT", "7")
    assert ConnectionLimits.from_config({"body_timeout": 1}).body_timeout == 7.0
    monkeypatch.delenv("RAPKI_API_BODY_TIMEOUT")
    for name, value in [("header_timeout", "lots"), ("header_timeout", 0), ("body_timeout", -1),
                        ("tls_handshake_timeout", True), ("body_timeout", float("nan")),
                        ("max_connections_per_address", 0), ("max_connections_per_address", 2.5),
                        ("max_connections_per_address", "many")]:
        with pytest.raises(InvalidInput, match=name):
            ConnectionLimits.from_config({name: value})


def test_serve_refuses_a_bad_limit_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    make_ca(tmp_path / "home")
    Home(tmp_path / "home").update_section("api", {"header_timeout": "lots"})
    result = subprocess.run([*RAPKI, "serve", "--home", str(tmp_path / "home"), "--port", str(free_port())],
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("rapki: error")]
    assert len(errors) == 1 and "header_timeout" in errors[0]
