"""``rapki serve``: the API under gunicorn, over TLS (1.2 minimum), with optional client certificates.

* Workers: ``gthread`` (threads per process), so HTTPS keep-alive works; each worker opens its own
  CA (database engine) after the fork, nothing is shared but files.
* TLS: gunicorn's context, tightened in ``ssl_context``: TLS 1.2 minimum, client certificates
  requested but optional (``CERT_OPTIONAL``: enrollment by token needs none; renewal and
  self-revocation use them), verified against root + issuing CAs. One context per worker, built
  once (gunicorn otherwise builds one per connection).
* Metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set by ``rapki serve`` before this package (and so
  ``prometheus_client``) is imported at all (see ``metrics``).
* CPU affinity (``--cpu-affinity``, on by default when there is one worker per CPU): each
  worker, with all its threads, runs on a CPU of its own. A worker's threads hand the GIL to each
  other many times per request (around every ECDSA operation, SQLite call and socket read); on one
  CPU that is a cheap switch in a warm cache, spread over several it is a cross-CPU wake-up and a
  cold one. Measured on 2 vCPUs: 15-25 % more enrollments per second, half the voluntary context
  switches. The cost: a pinned worker cannot move off a CPU that something else keeps busy.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication
from gunicorn.workers.gthread import ThreadWorker

try:  # gthread internals the worker below builds on (gunicorn >= 25)
    from gunicorn.workers.gthread import _DEFER, DEFAULT_WORKER_DATA_TIMEOUT
except ImportError:  # pragma: no cover - older gunicorn: plain gthread
    _DEFER = DEFAULT_WORKER_DATA_TIMEOUT = None

_CONTEXT: dict[str, ssl.SSLContext] = {}


def ssl_context(config: Any, default_factory: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
    """gunicorn hook: the TLS context of this worker (cached; see module doc)."""
    context = _CONTEXT.get("ctx")
    if context is None:
        context = default_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.options |= ssl.OP_NO_COMPRESSION
        if config.ca_certs:
            context.verify_mode = ssl.CERT_OPTIONAL
        _CONTEXT["ctx"] = context
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
    _CONTEXT.clear()  # never share a parent's context (and its session cache) with a worker
    cpus, slot = _CPUS.get("cpus"), getattr(worker, "rapki_cpu_slot", None)
    if cpus and slot is not None:
        os.sched_setaffinity(0, {cpus[slot]})  # before the worker starts its threads: they inherit it


_CPUS: dict[str, list[int]] = {}


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


class TlsThreadWorker(ThreadWorker):  # type: ignore[misc]
    """gunicorn's ``gthread`` worker, made safe for clients that open TLS connections ahead of use.

    gthread gives a new connection a thread once its first bytes arrive. Over TLS those bytes are
    the ClientHello: the thread does the handshake and then blocks reading a request that may
    never come soon (HTTP clients such as Go's dial spare connections and park them idle). With
    as many idle connections as threads, the worker stops serving while requests queue on other
    connections. Here the thread does the handshake, and if no request bytes are there yet the
    connection goes back to the poller (gthread's own "deferred" path) and the thread is freed.

    After a keep-alive response gthread also waits for the kernel socket to become readable;
    bytes already inside the TLS buffer would never wake it, so such connections are handed
    straight back to a thread.
    """

    def handle(self, conn: Any) -> Any:
        if not self.cfg.is_ssl or conn.initialized:
            return super().handle(conn)
        if not conn.data_ready and not conn.wait_for_data(DEFAULT_WORKER_DATA_TIMEOUT):
            return _DEFER
        try:
            conn.sock.setblocking(True)
            conn.init()  # the TLS handshake
        except (OSError, ssl.SSLError) as exc:
            self.log.debug("TLS handshake failed: %s", exc)
            return False
        if conn.sock.pending() == 0:
            conn.data_ready = False
            if not conn.wait_for_data(0.0):
                return _DEFER  # finish_request parks it in the poller; readable -> handled then
        return super().handle(conn)

    def finish_request(self, conn: Any, fs: Any) -> None:
        try:
            keep = not fs.cancelled() and fs.exception() is None and fs.result() is True
        except Exception:
            keep = False
        pending = getattr(conn.sock, "pending", None)
        if keep and self.alive and pending is not None and pending() > 0:
            self.enqueue_req(conn)
            return
        super().finish_request(conn, fs)


class ApiServer(BaseApplication):  # type: ignore[misc]
    def __init__(self, home: Path, options: dict[str, Any]) -> None:
        self.home = home
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            if key in self.cfg.settings:  # settings newer than the installed gunicorn are skipped
                self.cfg.set(key, value)

    def load(self) -> Any:
        from service.api import create_app

        return create_app(self.home)


def run(home: Path, *, host: str, port: int, workers: int, threads: int, certfile: Path, keyfile: Path,
        client_ca: Path | None, access_log: bool = True, pidfile: Path | None = None,
        cpus: list[int] | None = None) -> None:
    """``cpus``: one CPU per worker to pin it to (``cpu_affinity_plan``), or None."""
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "service.api.server.TlsThreadWorker" if _DEFER is not None else "gthread",
        "threads": threads,
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
    ApiServer(home, options).run()
