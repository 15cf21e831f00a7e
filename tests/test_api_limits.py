"""Rate limits shared by gunicorn workers, and JSON 503s when the database is down."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from pki.store import Database
from pki.x509.keys import KeyType
from service.api.state import Limit
from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import RAPKI, free_port, stop


@pytest.mark.e2e
def test_rate_limit_is_shared_by_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-address limit 12/h with 3 workers: exactly 12 requests pass, whichever worker
    answers (each worker counting alone would let up to 36 through)."""
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    ca = make_ca(home)
    token = TokenStore(ca).create("web", cn="web-1", uses=100).token
    Home(home).update_section("api", {"rate_limit_per_address": "12/1h", "rate_limit_per_identity": "1000/m"})
    port = free_port()
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--workers", "3",
                             "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    url, root = f"https://127.0.0.1:{port}", str(home / "ca" / "root.pem")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url + "/healthz", verify=root, timeout=2)
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail("rapki serve did not start: " + (tmp_path / "serve.log").read_text()[-2000:])
                time.sleep(0.2)
        # Windows are fixed (aligned to the hour here): keep all requests inside one.
        if time.time() % 3600 > 3590:
            time.sleep(3601 - time.time() % 3600)
        statuses = Counter()
        for _ in range(20):  # new connection each time: spread over the workers
            response = requests.post(url + "/v1/enroll", json={"key_type": "ec-p256"}, verify=root, timeout=30,
                                     headers={"Authorization": f"Bearer {token}"})
            statuses[response.status_code] += 1
            if response.status_code == 429:
                assert response.json()["error"] == "rate_limited"
                assert int(response.headers["Retry-After"]) >= 1
        assert statuses == Counter({201: 12, 429: 8})
        assert TokenStore(CertificateAuthority.open(home)).authenticate(token).uses_left == 88
    finally:
        stop(proc)
        log.close()


def test_limit_parsing() -> None:
    """Counting itself, shared by workers and replicas: tests/test_api_shared_state.py (file and PostgreSQL)."""
    assert Limit.parse("30/m") == Limit(30, 60)
    assert Limit.parse("1000/1h") == Limit(1000, 3600)
    assert Limit.parse("off") is None


def test_database_down_is_a_json_503(ca: CertificateAuthority) -> None:
    from service.api import create_app

    app = create_app(ca=ca)
    token = TokenStore(ca).create("web", cn="web-1").token
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    ca.db = Database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")  # nothing listens there
    ca._profile_cache = {}  # type: ignore[attr-defined]  # whatever the core caches, the database is gone
    health = client.get("/healthz")
    assert health.status_code == 503 and health.json["status"] == "unavailable"
    assert "database" in health.json["message"]
    enroll = client.post("/v1/enroll", json={"key_type": "ec-p256"}, headers={"Authorization": f"Bearer {token}"})
    assert enroll.status_code == 503
    assert enroll.json["error"] == "unavailable" and "retry" in enroll.json["message"]
    assert enroll.headers["Retry-After"] == "5"


def test_unknown_route_and_method_are_json(ca: CertificateAuthority) -> None:
    from service.api import create_app

    client = create_app(ca=ca).test_client()
    missing = client.get("/v2/enroll")
    assert missing.status_code == 404 and missing.json["error"] == "not_found"
    wrong = client.get("/v1/enroll")
    assert wrong.status_code == 405 and wrong.json["error"] == "method_not_allowed"
    no_cert = client.post("/v1/renew", json={})
    assert no_cert.status_code == 401 and no_cert.json["error"] == "unauthenticated"


def _cpus_allowed(pid: int) -> str:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Cpus_allowed_list:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(f"no Cpus_allowed_list for {pid}")


def _workers(master: int, count: int, deadline: float) -> list[int]:
    while True:
        out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(master)], capture_output=True, text=True).stdout
        pids = [int(p) for p in out.split()]
        if len(pids) == count or time.monotonic() > deadline:
            return pids
        time.sleep(0.2)


@pytest.mark.e2e
@pytest.mark.skipif(not hasattr(os, "sched_getaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs Linux and at least 2 CPUs")
def test_serve_pins_each_worker_to_a_cpu_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--cpu-affinity on: two workers on two different single CPUs; a worker killed and replaced
    gets the CPU its predecessor had, not one already taken."""

    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    make_ca(home)
    port, pidfile = free_port(), tmp_path / "serve.pid"
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--workers", "2",
                             "--cpu-affinity", "on", "--pidfile", str(pidfile), "--quiet"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        master = int(pidfile.read_text().strip())
        workers = _workers(master, 2, deadline)
        pinned = {pid: _cpus_allowed(pid) for pid in workers}
        assert len(pinned) == 2 and len(set(pinned.values())) == 2, pinned
        assert all(cpu.isdigit() for cpu in pinned.values()), pinned  # one CPU each, not a range
        victim = workers[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            now = _workers(master, 2, deadline)
            if (victim not in now and len(now) == 2) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        replacement = next(pid for pid in now if pid != workers[1])
        assert _cpus_allowed(replacement) == pinned[victim]
        assert _cpus_allowed(workers[1]) == pinned[workers[1]]
    finally:
        stop(proc)
        log.close()


def test_cpu_affinity_plan() -> None:
    from service.api.server import cpu_affinity_plan

    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    assert cpu_affinity_plan("off", 1) is None
    if len(allowed) >= 2:
        assert cpu_affinity_plan("auto", len(allowed)) == allowed  # one worker per CPU
        assert cpu_affinity_plan("auto", len(allowed) + 1) is None  # more workers than CPUs: the kernel places them
        assert cpu_affinity_plan("auto", 1) is None  # fewer: a shared host, the kernel places them
        assert cpu_affinity_plan("on", len(allowed) + 1) == [*allowed, allowed[0]]
        assert cpu_affinity_plan("on", 1) == allowed[:1]


def test_cpu_pinning_is_off_unless_asked() -> None:
    """Pinning measured within noise for the current workers: ``rapki serve`` pins only when told."""
    import re

    from click.testing import CliRunner

    from service.cli import main

    usage = CliRunner().invoke(main, ["serve", "--help"], terminal_width=200).output
    assert re.search(r"--cpu-affinity \[auto\|on\|off\].*?\[default: off\]", usage, re.S), usage


def _mismatched_tls_pair(tmp_path: Path, ca: CertificateAuthority) -> tuple[Path, Path]:
    """A server certificate and a key that is not its own."""
    from cryptography.hazmat.primitives.asymmetric import ec

    from pki.x509.keys import private_key_pem

    issued = ca.issue_server_certificate(["127.0.0.1"])
    cert, key = tmp_path / "server.pem", tmp_path / "other.key.pem"
    issued.cert_pem.write_to_path(cert)
    key.write_bytes(private_key_pem(ec.generate_private_key(ec.SECP256R1())))
    return cert, key


@pytest.mark.e2e
def test_serve_refuses_a_certificate_with_another_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A TLS pair that cannot work is bad input: exit 2, one line, nothing listening (the server
    underneath would otherwise log the failure and serve plain HTTP on the port)."""
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    cert, key = _mismatched_tls_pair(tmp_path, make_ca(home))
    port = free_port()
    result = subprocess.run([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--tls-cert", str(cert),
                             "--tls-key", str(key)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "the TLS certificate and key cannot be used together" in result.stderr
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


@pytest.mark.skipif(ssl.OPENSSL_VERSION_INFO >= (3, 5), reason="this OpenSSL serves ML-DSA certificates")
def test_an_ml_dsa_server_certificate_is_refused_by_name(tmp_path: Path) -> None:
    """OpenSSL before 3.5 refuses an ML-DSA-signed certificate as 'ca md too weak': the refusal
    says ML-DSA and what to give instead."""
    from pki.errors import InvalidInput
    from service.api import tls

    ca = make_ca(tmp_path / "home", KeyType.ML_DSA_44)
    material = tls.server_material(ca, ["127.0.0.1"])
    with pytest.raises(InvalidInput, match=r"signed with ML-DSA.*--tls-cert and --tls-key issued by an EC or RSA CA"):
        tls.check_pair(material.certfile, material.keyfile)


def test_worker_that_cannot_build_its_tls_context_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files that went bad after the start: the worker exits as a boot error (which stops
    gunicorn) instead of serving plain HTTP, as gunicorn's own asgi worker would."""
    import logging
    from types import SimpleNamespace

    from gunicorn.arbiter import Arbiter
    from gunicorn.config import Config

    from service.api.server import ApiWorker

    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    cert, key = _mismatched_tls_pair(tmp_path, make_ca(tmp_path / "home"))
    cfg = Config()
    cfg.set("certfile", str(cert))
    cfg.set("keyfile", str(key))
    worker = SimpleNamespace(cfg=cfg, log=logging.getLogger("test"))
    with pytest.raises(SystemExit) as stopped:
        ApiWorker._get_ssl_context(worker)
    assert stopped.value.code == Arbiter.WORKER_BOOT_ERROR
