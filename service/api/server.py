"""``rapki serve``: the API under gunicorn, over TLS (1.2 minimum), with optional client certificates.

* Workers: ``gthread`` (threads per process), so HTTPS keep-alive works; each worker opens its own
  CA (database engine) after the fork, nothing is shared but files.
* TLS: gunicorn's context, tightened in ``ssl_context``: TLS 1.2 minimum, client certificates
  requested but optional (``CERT_OPTIONAL``: enrollment by token needs none; renewal and
  self-revocation use them), verified against root + issuing CAs. One context per worker, built
  once (gunicorn otherwise builds one per connection).
* Metrics: ``PROMETHEUS_MULTIPROC_DIR`` is set by ``rapki serve`` before this package (and so
  ``prometheus_client``) is imported at all (see ``metrics``).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gunicorn.app.base import BaseApplication

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


def post_fork(_server: Any, _worker: Any) -> None:
    _CONTEXT.clear()  # never share a parent's context (and its session cache) with a worker


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
        client_ca: Path | None, access_log: bool = True, pidfile: Path | None = None) -> None:
    options: dict[str, Any] = {
        "bind": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
        "workers": workers,
        "worker_class": "gthread",
        "threads": threads,
        "certfile": str(certfile),
        "keyfile": str(keyfile),
        "ssl_context": ssl_context,
        "keepalive": 30,
        "timeout": 60,
        "graceful_timeout": 20,
        "child_exit": child_exit,
        "post_fork": post_fork,
        "proc_name": "rapki-serve",
        "accesslog": "-" if access_log else None,
        "errorlog": "-",
        "forwarded_allow_ips": "127.0.0.1",
        "limit_request_field_size": 16384,  # a signed request carries a certificate in a header
        # gunicorn >= 25 opens a control socket at one per-user path: several servers would clash.
        "control_socket_disable": True,
    }
    if client_ca is not None:
        options["ca_certs"] = str(client_ca)
        options["cert_reqs"] = ssl.CERT_OPTIONAL
    if pidfile is not None:
        options["pidfile"] = str(pidfile)
    ApiServer(home, options).run()
