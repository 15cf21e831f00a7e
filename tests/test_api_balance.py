"""Connections spread over ``rapki serve``'s workers: each accepts one connection per wake-up
(``service.api.connections.BoundedTlsLoop._accept_connection``). The asyncio internal it
overrides, and one wake-up taking one connection; the spread through a real server with two
workers is ``tests/test_api.py::test_clients_connecting_together_are_spread_over_the_workers``."""

from __future__ import annotations

import asyncio
import inspect
import socket
import time

from service.api.connections import BoundedTlsLoop


def test_the_asyncio_internal_overridden_keeps_its_signature() -> None:
    """``BoundedTlsLoop._accept_connection`` passes these arguments on by position: a Python
    release that changed them must fail here."""
    from asyncio import selector_events

    base = selector_events.BaseSelectorEventLoop
    assert list(inspect.signature(base._accept_connection).parameters) == [  # type: ignore[attr-defined]
        "self", "protocol_factory", "sock", "sslcontext", "server", "backlog",
        "ssl_handshake_timeout", "ssl_shutdown_timeout"]


def test_one_wake_up_accepts_one_of_the_waiting_connections() -> None:
    loop = BoundedTlsLoop(tls_timeout=5)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(3)]
    made: list[asyncio.BaseTransport] = []

    class Made(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            made.append(transport)

    try:
        time.sleep(0.1)  # the three are in the listening socket's queue
        loop._accept_connection(Made, listener, None, None, 100, 5.0, 5.0)
        loop.run_until_complete(asyncio.sleep(0.05))  # the accepted one gets its protocol
        assert len(made) == 1
        left = []
        for _ in range(2):  # the other two still wait for the next wake-up (any worker's)
            conn, _addr = listener.accept()
            left.append(conn)
        assert len(left) == 2
        for conn in left:
            conn.close()
    finally:
        for transport in made:
            transport.close()
        loop.run_until_complete(asyncio.sleep(0))
        for client in clients:
            client.close()
        listener.close()
        loop.close()
