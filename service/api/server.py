"""``rapki serve``: the API under gunicorn, over TLS (1.2 minimum), with optional client certificates.

* Workers: gunicorn's ``asgi`` worker, one asyncio event loop per process (``ApiWorker``); the
  Flask application runs inline on the loop's thread, each request once it has fully arrived
  (``service.api.asgi.InlineWsgi``, which says why). Any number of keep-alive connections per
  worker, idle or slow ones cost nothing. Each worker opens its own CA (database engine) after the
  fork; nothing is shared but files. Each worker accepts one connection per wake-up, so
  connections that arrive together are spread over the workers
  (``connections.BoundedTlsLoop._accept_connection``).
* TLS: gunicorn's context, tightened in ``ssl_context``: TLS 1.2 minimum, client certificates
  requested but optional (``CERT_OPTIONAL``: enrollment by token needs none; renewal and
  self-revocation use them), verified against root + issuing CAs, including those a rotation
  adds while the server runs (``tls.ClientTrust``). The verified client certificate
  reaches the application through the ASGI TLS extension (``TlsScopeProtocol``).
* Metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set by ``rapki serve`` before this package (and so
  ``prometheus_client``) is imported at all (see ``metrics``).
* CPU affinity (``--cpu-affinity``, off by default): each worker runs on a CPU of its own. With
  single-threaded workers it measured within noise on 2 vCPUs (it was worth 15-25 % with threaded
  ones), so it is not on unless asked; the cost: a pinned worker cannot move off a CPU that
  something else keeps busy.
* ``ApiWorker`` overrides gunicorn's ``_get_ssl_context`` so that a TLS context that cannot be
  built stops the worker instead of leaving it serving plain HTTP.
* ``TlsScopeProtocol`` builds on two gunicorn internals (``ASGIProtocol._build_http_scope`` and
  the worker module's ``ASGIProtocol`` name): if a gunicorn release changed them, client
  certificates would stop reaching the application and renewal over mutual TLS would be refused
  (fails closed); the end-to-end tests renew over mutual TLS through the real server.

Slow clients are cut off (``service.api.connections``, settings in ``[api]`` of ``rapki.toml``):

=================================  =======  ===============================================
setting                            default  bound
=================================  =======  ===============================================
``tls_handshake_timeout``          10 s     TLS handshake, from the accept; also the closing
                                            close_notify exchange
``header_timeout``                 10 s     request headers complete: from the accept for a
                                            connection's first request (handshake included),
                                            from its first byte for a later one (the idle wait
                                            before it: the keep-alive timeout, 30 s)
``body_timeout``                   30 s     request body complete, from the end of its headers
``max_connections_per_address``    64       open connections from one address, per worker
                                            (behind a proxy: at least its connection pool)
=================================  =======  ===============================================

A late request that had begun gets ``408 request_timeout`` (JSON) and the connection closes; a
connection that sent nothing, did not finish its handshake or is one too many for its address is
closed without an answer. With the defaults, a client trickling its headers is cut off 10 s after
it connected, whatever it sends. Requests gunicorn refuses while framing them (400 malformed
request line or header, 414 request line too long, 431 a header over 16 KiB or more than 100
headers, 501 a transfer coding other than chunked) get the API's error body too:
``{"error": "malformed_request" | "uri_too_long" | "headers_too_large" | "not_implemented",
"message": "..."}`` with ``Content-Type: application/json`` and the same status. All of these count
in ``rapki_requests_refused_total{endpoint="unmatched"}``. ``ApiWorker`` runs asyncio's own event
loop (``BoundedTlsLoop``), never uvloop. The gunicorn internals this relies on are listed in
``service.api.connections``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn import sock as gunicorn_sock
from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter
from gunicorn.workers import gasgi
from gunicorn.workers.gasgi import ASGIWorker

from pki.ca.home import Home
from service.api.connections import BoundedTlsLoop, ConnectionLimits, GuardedProtocol
from service.api.errors import MAX_BODY


def ssl_context(config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn hook, called once per worker: its TLS context (TLS 1.2 minimum, optional client
    certificates)."""
    context = default_factory()
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_COMPRESSION
    if config.ca_certs:
        context.verify_mode = ssl.CERT_OPTIONAL
        from service.api.tls import CLIENT_TRUST

        CLIENT_TRUST.attach(context)  # issuing CAs made after the start are trusted too
    return context


def child_exit(_server: Any, worker: Any) -> None:
    from service.api.metrics import mark_process_dead

    mark_process_dead(worker.pid)


def pre_fork(server: Any, worker: Any) -> None:
    """In the arbiter: give the new worker the lowest CPU slot no live worker holds (a replaced
    worker's slot is reused, so workers never double up on one CPU)."""
    cpus = _CPUS.get("cpus")
    if not cpus:
        return
    taken = {getattr(w, "rapki_cpu_slot", None) for w in server.WORKERS.values()}
    worker.rapki_cpu_slot = next((slot for slot in range(len(cpus)) if slot not in taken), None)


def post_fork(_server: Any, worker: Any) -> None:
    cpus, slot = _CPUS.get("cpus"), getattr(worker, "rapki_cpu_slot", None)
    if cpus and slot is not None:
        os.sched_setaffinity(0, {cpus[slot]})


_CPUS: dict[str, list[int]] = {}

MAX_DEFAULT_WORKERS = 8


def default_workers() -> int:
    """One worker per CPU this process may use (a worker runs one request at a time, on one CPU),
    at most ``MAX_DEFAULT_WORKERS``: past that, workers mostly queue for the SQLite write lock."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus, MAX_DEFAULT_WORKERS))


def cpu_affinity_plan(mode: str, workers: int) -> list[int] | None:
    """The CPUs workers are pinned to (one each), or None. ``mode``: ``auto`` pins when the
    platform can and there is exactly one worker per CPU this process may use (a machine, VM or
    cpuset given to rapki: on a larger shared host the kernel is left to place the workers); ``on``
    pins whenever the platform can (workers beyond the CPUs then share); ``off`` never does."""
    if mode == "off" or not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if mode == "auto" and (workers != len(allowed) or len(allowed) < 2):
        return None
    return [allowed[i % len(allowed)] for i in range(workers)]


def tls_extension(ssl_object: Any) -> dict[str, Any]:
    """The ASGI TLS extension of a connection: the client's certificate (PEM) when it sent one (it
    was verified in the handshake, against the CA's roots: ``ssl_context``)."""
    der = ssl_object.getpeercert(binary_form=True)
    return {"server_cert": None, "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None, "client_cert_error": None, "tls_version": None, "cipher_suite": None}


class TlsScopeProtocol(GuardedProtocol):
    """gunicorn's ASGI connection handler with rapki's connection bounds (``GuardedProtocol``), plus
    the ASGI TLS extension in each request's scope (which gunicorn does not fill in): renewal and
    self-revocation authenticate with the client certificate."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")  # the handshake is done by now
        self._tls = tls_extension(ssl_object) if ssl_object is not None else None

    def _build_http_scope(self, request: Any, sockname: Any, peername: Any) -> dict[str, Any]:
        scope: dict[str, Any] = super()._build_http_scope(request, sockname, peername)
        if self._tls is not None:
            scope.setdefault("extensions", {})["tls"] = self._tls
        return scope


class ApiWorker(ASGIWorker):
    """gunicorn's ``asgi`` worker (an asyncio event loop per process) with ``TlsScopeProtocol``.

    The worker builds each connection's handler from its module's ``ASGIProtocol`` name, which is
    pointed at the subclass here, in the worker process only, before the loop starts serving."""

    connection_limits = ConnectionLimits()

    def init_process(self) -> None:
        gasgi.ASGIProtocol = TlsScopeProtocol
        self.connection_limits = getattr(self.app, "connection_limits", None) or ConnectionLimits()
        super().init_process()

    def _setup_event_loop(self) -> None:
        """asyncio's event loop (rapki does not use uvloop), bounding TLS handshakes."""
        self.loop = BoundedTlsLoop(self.connection_limits.tls_handshake_timeout)
        asyncio.set_event_loop(self.loop)

    def _get_ssl_context(self) -> ssl.SSLContext | None:
        """The worker's TLS context. gunicorn's own version logs a failure to build it and then
        serves plain HTTP on the TLS port; here the failure stops the worker as a boot error, which
        stops gunicorn (fails closed). ``rapki serve`` checks the files before it starts
        (``tls.check_pair``): this covers files that changed since."""
        if not self.cfg.is_ssl:
            return None
        try:
            return gunicorn_sock.ssl_context(self.cfg)
        except Exception as exc:
            self.log.error("cannot build the TLS context, not serving: %s", exc)
            sys.exit(Arbiter.WORKER_BOOT_ERROR)


class ApiServer(BaseApplication):
    def __init__(self, home: Path, options: dict[str, Any], connection_limits: ConnectionLimits) -> None:
        self.home = home
        self.options = options
        self.connection_limits = connection_limits
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self) -> Any:
        from service.api import create_app
        from service.api.asgi import InlineWsgi
        from service.api.tls import CLIENT_TRUST

        app = create_app(self.home)
        CLIENT_TRUST.ca = app.extensions["rapki"].ca
        return InlineWsgi(app, max_body=MAX_BODY, body_timeout=self.connection_limits.body_timeout)


def crl_listener(home: Path, host: str, port: int) -> subprocess.Popen[bytes]:
    """The plain-HTTP CRL listener (``service.api.crlfiles``), a process of its own: gunicorn's
    workers all serve TLS, and this one must not. It stops with ``rapki serve``, however that ends."""
    return subprocess.Popen([sys.executable, "-m", "service.api.crlfiles", "--home", str(home), "--host", host,
                             "--port", str(port)])


def run(home: Path, *, host: str, port: int, workers: int, certfile: Path, keyfile: Path,
        client_ca: Path | None, access_log: bool = True, pidfile: Path | None = None,
        cpus: list[int] | None = None, crl_http_port: int | None = None) -> None:
    """``cpus``: one CPU per worker to pin it to (``cpu_affinity_plan``), or None. ``crl_http_port``:
    also answer ``GET /crl/<issuer>.crl`` over plain HTTP on that port (nothing else)."""
    connection_limits = ConnectionLimits.from_config(Home(home).load_config().extra.get("api", {}))
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "service.api.server.ApiWorker",
        "asgi_lifespan": "off",
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "ssl_context": ssl_context,
        "keepalive": 30,
        "timeout": 60,
        "graceful_timeout": 20,
        "child_exit": child_exit,
        "pre_fork": pre_fork,
        "post_fork": post_fork,
        "proc_name": "rapki-serve",
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "limit_request_field_size": 16384,  # a signed request carries a certificate in a header
        # gunicorn >= 25 opens a control socket at one per-user path: several servers would clash.
        "control_socket_disable": True,
    }
    if client_ca is not None:
        options["ca_certs"] = str(client_ca)
        options["cert_reqs"] = ssl.CERT_OPTIONAL
    if pidfile is not None:
        options["pidfile"] = str(pidfile)
    if cpus:
        _CPUS["cpus"] = cpus
    listener = crl_listener(home, host, crl_http_port) if crl_http_port is not None else None
    try:
        ApiServer(home, options, connection_limits).run()
    finally:
        if listener is not None:
            listener.terminate()
            listener.wait(timeout=10)
