"""Prometheus metrics, correct with several gunicorn workers.

Counters and histograms are per process; under ``rapki serve`` the environment variable
``PROMETHEUS_MULTIPROC_DIR`` is set before any worker imports ``prometheus_client``, so each worker
writes its values to files there and a scrape (answered by any worker) sums all of them
(``MultiProcessCollector``). Dead workers' files are marked by gunicorn's ``child_exit`` hook.

Gauges about the CA (CRL age and size, days until each CA certificate expires) are not kept in
processes at all: they are read from the database and the certificates at scrape time, so every
worker answers the same.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from pki.ca.authority import CertificateAuthority

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# registry=None: created once per process and never registered globally, so several apps in one
# process (tests) do not collide; the scrape registry below picks them up.
ISSUED = Counter("rapki_certificates_issued", "Certificates issued by enrollment", ["profile"], registry=None)
RENEWED = Counter("rapki_certificates_renewed", "Certificates renewed", ["profile"], registry=None)
REVOKED = Counter("rapki_certificates_revoked", "Certificates revoked through the API", ["profile"],
                  registry=None)
REFUSED = Counter("rapki_requests_refused", "Requests refused, by error code", ["endpoint", "error"],
                  registry=None)
LATENCY = Histogram(
    "rapki_http_request_duration_seconds", "HTTP request latency", ["method", "endpoint", "status"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=None,
)
_PROCESS_METRICS = (ISSUED, RENEWED, REVOKED, REFUSED, LATENCY)


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class CaCollector(Collector):
    """CA gauges computed at scrape time from the database and the CA certificates."""

    def __init__(self, ca: CertificateAuthority) -> None:
        self.ca = ca

    def collect(self) -> Iterator[Any]:
        now = datetime.now(UTC)
        expiry = GaugeMetricFamily("rapki_ca_expiry_days", "Days until the CA certificate expires", labels=["ca"])
        expiry.add_metric(["root"], (self.ca.root_certificate.not_valid_after_utc - now).total_seconds() / 86400)
        crl_age = GaugeMetricFamily("rapki_crl_age_seconds", "Seconds since the last CRL was built (thisUpdate)",
                                    labels=["issuer"])
        crl_size = GaugeMetricFamily("rapki_crl_size_bytes", "Size of the last CRL built, DER", labels=["issuer"])
        crl_entries = GaugeMetricFamily("rapki_crl_entries", "Entries of the last CRL built", labels=["issuer"])
        for issuer in self.ca.issuers():
            expiry.add_metric([issuer.name], (issuer.not_after - now).total_seconds() / 86400)
            state = self.ca.crl_state(issuer.name)
            if state["this_update"] is not None:
                crl_age.add_metric([issuer.name], (now - state["this_update"]).total_seconds())
                crl_size.add_metric([issuer.name], len(state["der"] or b""))
                crl_entries.add_metric([issuer.name], state["entries"])
        yield expiry
        yield crl_age
        yield crl_size
        yield crl_entries


def render(ca: CertificateAuthority) -> bytes:
    """The exposition text: this process's (or all workers') metrics plus the CA gauges."""
    registry = CollectorRegistry()
    directory = multiprocess_dir()
    if directory:
        from prometheus_client import multiprocess

        multiprocess.MultiProcessCollector(registry, path=directory)
    else:
        for metric in _PROCESS_METRICS:
            registry.register(metric)
    registry.register(CaCollector(ca))
    return generate_latest(registry)


def mark_process_dead(pid: int) -> None:
    """gunicorn ``child_exit`` hook: let the live-gauge files of a dead worker go."""
    if multiprocess_dir():
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)
