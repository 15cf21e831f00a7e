"""Crash test: 16 clients enroll against a real ``rapki serve`` (2 workers, SQLite) while one worker,
then the master with its whole process group, is killed with SIGKILL; the server is started again on
the same home and port and the clients carry on, retrying a bounded number of times.

What must hold afterwards: no 5xx outside the two outage windows (a refused or reset connection
inside them is expected; every answer and every connection error is recorded with its time), no
serial twice, every certificate a client received recorded in the database with the same DER, no
limited-use token redeemed more often than allowed, and SQLite's ``integrity_check`` ``ok``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from pki.workload.client import make_csr
from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import RAPKI, free_port

pytestmark = pytest.mark.e2e

CLIENTS = 16
RUN_FOR = 20.0  # seconds of enrolling, all told (longer only when the restart is slow)
KILL_WORKER_AT = 5.0
KILL_MASTER_AT = 10.0
MIN_AFTER_RESTART = 4.0  # the clients keep enrolling at least this long against the restarted server
OUTAGE_MARGIN = 3.0  # an outage window closes this long after the server is answering again
RETRIES = 150  # per request, spaced RETRY_PAUSE apart: longer than a restart takes
RETRY_PAUSE = 0.1
LIMITED_TOKENS = 4
LIMITED_USES = 3
STARTUP = 30.0


@dataclass
class Event:
    at: float  # seconds since the clients started
    client: int
    outcome: str  # an HTTP status ("201") or the connection error's class name


@dataclass
class Received:
    serial: str
    der: bytes
    token: str


@dataclass
class Run:
    """Everything that happened, as the clients and the killer saw it."""

    started: float = field(default_factory=time.monotonic)
    events: list[Event] = field(default_factory=list)
    received: list[Received] = field(default_factory=list)
    outages: list[tuple[float, float]] = field(default_factory=list)
    gave_up: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.started

    def record(self, client: int, outcome: str) -> None:
        with self.lock:
            self.events.append(Event(self.now(), client, outcome))

    def in_outage(self, at: float) -> bool:
        return any(start <= at <= end for start, end in self.outages)


class Serve:
    """``rapki serve`` in a session of its own, so its whole process group can be killed."""

    def __init__(self, home: Path, port: int, log: Path) -> None:
        self.home, self.port, self.log = home, port, log
        self.url = f"https://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.proc = subprocess.Popen([*RAPKI, "serve", "--home", str(self.home), "--port", str(self.port),
                                          "--workers", "2", "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                                         env={**os.environ, "RAPKI_PASSPHRASE": PASSPHRASE}, start_new_session=True)

    def wait_healthy(self) -> None:
        assert self.proc is not None
        root = str(self.home / "ca" / "root.pem")
        deadline = time.monotonic() + STARTUP
        while time.monotonic() < deadline:
            try:
                if requests.get(self.url + "/healthz", verify=root, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        pytest.fail("rapki serve did not come up: " + self.log.read_text()[-3000:])

    def workers(self) -> list[int]:
        """The master's children, read from /proc."""
        assert self.proc is not None
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process ended while we looked
            if int(fields[1]) == self.proc.pid:  # fields: state, ppid, pgrp, ...
                children.append(int(stat.parent.name))
        return sorted(children)

    def kill_group(self) -> None:
        """SIGKILL to the master and every process of its group, and reap the master."""
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the group this test created (start_new_session)
        self.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.05)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill_group()


@pytest.fixture
def served(tmp_path: Path, passphrase_env: str) -> Iterator[tuple[Serve, TokenStore]]:
    home = tmp_path / "home"
    ca = make_ca(home)
    Home(home).update_section("api", {"rate_limit_per_address": "off", "rate_limit_per_identity": "off"})
    server = Serve(home, free_port(), tmp_path / "serve.log")
    server.start()
    try:
        server.wait_healthy()
        yield server, TokenStore(ca)
    finally:
        server.stop()
        ca.db.engine.dispose()


def enroll_body(client: int, n: int) -> dict[str, str]:
    cn = f"web-{client * 1_000_000 + n}"
    if (client + n) % 2:  # CSR mode: the key stays here
        key = ec.generate_private_key(ec.SECP256R1())
        return {"csr": make_csr(key, cn).decode()}
    return {"key_type": "ec-p256", "cn": cn}  # keygen mode: the server makes the key


def client_loop(client: int, url: str, root: Path, bulk: str, limited: list[str], finish: threading.Event,
                run: Run) -> None:
    """Enroll until ``finish`` is set: every tenth request with one of the limited-use tokens, a
    connection error retried (on a new connection) up to ``RETRIES`` times."""
    with requests.Session() as session:  # closed at the end, so the server's graceful stop need not wait
        _enroll_until(client, session, url, root, bulk, limited, finish, run)


def post(session: requests.Session, url: str, root: Path, token: str, body: dict[str, str]) -> tuple[int, dict[str, Any]]:
    """One enrollment: its status and JSON answer. The response is closed here: one left to the
    garbage collector keeps its connection open, and the server's graceful stop waits for it."""
    with session.post(url + "/v1/enroll", json=body, headers={"Authorization": f"Bearer {token}"},
                      verify=str(root), timeout=30) as response:  # verify per request: REQUESTS_CA_BUNDLE beats Session.verify
        return response.status_code, response.json()


def _enroll_until(client: int, session: requests.Session, url: str, root: Path, bulk: str, limited: list[str],
                  finish: threading.Event, run: Run) -> None:
    n = 0
    while not finish.is_set():
        n += 1
        token = limited[(client + n) % len(limited)] if n % 10 == 0 else bulk
        body = enroll_body(client, n)
        for _attempt in range(RETRIES):
            try:
                answer = post(session, url, root, token, body)
            except requests.ConnectionError as exc:
                run.record(client, type(exc).__name__)
                session.close()  # a fresh connection for the retry
                time.sleep(RETRY_PAUSE)
                continue
            status, content = answer
            run.record(client, str(status))
            if status in (200, 201) and "certificate" in content:
                cert = x509.load_pem_x509_certificate(content["certificate"].encode())
                with run.lock:
                    run.received.append(Received(content["serial"], cert.public_bytes(serialization.Encoding.DER),
                                                 token))
            break
        else:
            with run.lock:
                run.gave_up += 1
            return


# A server killed in the middle of a TLS handshake leaves the client's half-made socket inside
# urllib3, which drops it without closing it: only that socket's warning is let through here.
@pytest.mark.filterwarnings("ignore:unclosed <ssl.SSLSocket:ResourceWarning")
@pytest.mark.filterwarnings("ignore:Exception ignored in. <ssl.SSLSocket:pytest.PytestUnraisableExceptionWarning")
def test_kill_worker_then_master_and_restart(served: tuple[Serve, TokenStore]) -> None:
    server, tokens = served
    root = server.home / "ca" / "root.pem"
    bulk = tokens.create("web", cn_pattern=r"web-[0-9]+", uses=100_000, ttl=timedelta(hours=1)).token
    limited_records = [tokens.create("web", cn_pattern=r"web-[0-9]+", uses=LIMITED_USES, ttl=timedelta(hours=1))
                       for _ in range(LIMITED_TOKENS)]
    limited = [t.token for t in limited_records]
    run = Run()
    finish = threading.Event()
    threads = [threading.Thread(target=client_loop, args=(i, server.url, root, bulk, limited, finish, run))
               for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        back_at = _kill_and_restart(server, run)
        time.sleep(max(0.0, max(RUN_FOR, back_at + MIN_AFTER_RESTART) - run.now()))
    finally:
        finish.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    duration = run.now()
    server.stop()

    outcomes = Counter(e.outcome for e in run.events)
    failures = [e for e in run.events if not e.outcome.isdigit()]
    retries = len(failures)
    outside = [e for e in run.events if not run.in_outage(e.at) and not e.outcome.startswith(("2", "409"))]
    after_restart = [e for e in run.events if e.at > back_at and e.outcome == "201"]
    during = Counter(e.outcome for e in run.events if run.in_outage(e.at) and e.outcome != "201")
    print(f"\ncrash test: {len(run.received)} enrollments by {CLIENTS} clients in {duration:.1f} s, "
          f"2 outages ({', '.join(f'{a:.1f}-{b:.1f} s' for a, b in run.outages)}), {retries} retries, "
          f"{run.gave_up} gave up; answers {dict(sorted(outcomes.items()))}, of which other than 201 during the "
          f"outages {dict(sorted(during.items()))}")

    assert run.gave_up == 0
    assert after_restart, "no enrollment succeeded after the restart"
    assert not [e for e in run.events if e.outcome.startswith("5") and not run.in_outage(e.at)]
    # Outside the outages every answer is 201, or 409 for a limited token already used up.
    assert not outside, outside[:10]

    serials = [r.serial for r in run.received]
    assert len(serials) == len(set(serials)), "a serial was handed out twice"
    database = sqlite3.connect(server.home / "rapki.db")
    try:
        assert database.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert not database.execute("SELECT serial FROM certificates GROUP BY serial HAVING count(*) > 1").fetchall()
        recorded = dict(database.execute("SELECT serial, der FROM certificates WHERE profile = 'web'").fetchall())
        missing = [r.serial for r in run.received if recorded.get(r.serial) != r.der]
        assert not missing, f"{len(missing)} certificates received but not recorded as sent: {missing[:5]}"
        for record, token in zip(limited_records, limited, strict=True):
            uses_left, max_uses = database.execute("SELECT uses_left, max_uses FROM enrollment_tokens WHERE id = ?",
                                                   (record.record.id,)).fetchone()
            issued = database.execute("SELECT count(*) FROM audit_log WHERE action = 'certificate.issue' "
                                      "AND actor LIKE ?", (f"api:enrollment-token:{record.record.id}@%",)).fetchone()[0]
            received = sum(1 for r in run.received if r.token == token)
            assert max_uses == LIMITED_USES and uses_left >= 0
            assert received <= issued == max_uses - uses_left <= LIMITED_USES, (received, issued, uses_left)
    finally:
        database.close()


def _kill_and_restart(server: Serve, run: Run) -> float:
    """SIGKILL one worker, later the master's process group; start the server again. Records the
    outage windows; returns when the restarted server answered (seconds into the run)."""
    time.sleep(max(0.0, KILL_WORKER_AT - run.now()))
    workers = server.workers()
    assert len(workers) == 2, workers
    killed_at = run.now()
    os.kill(workers[0], signal.SIGKILL)
    _wait_for_workers(server, 2, exclude=workers[0])
    run.outages.append((killed_at, run.now() + OUTAGE_MARGIN))

    time.sleep(max(0.0, KILL_MASTER_AT - run.now()))
    master_killed_at = run.now()
    server.kill_group()
    server.start()
    server.wait_healthy()
    back_at = run.now()
    run.outages.append((master_killed_at, back_at + OUTAGE_MARGIN))
    return back_at


def _wait_for_workers(server: Serve, count: int, *, exclude: int) -> None:
    """Bounded wait until the master has replaced the killed worker."""
    deadline = time.monotonic() + STARTUP
    while time.monotonic() < deadline:
        workers = [pid for pid in server.workers() if pid != exclude]
        if len(workers) >= count:
            return
        time.sleep(0.05)
    pytest.fail(f"the master did not replace the killed worker: {server.workers()}")
