"""A database another process keeps locked: writes give up within ``[database] busy_timeout``
with ``database_busy`` (503 and ``Retry-After`` over HTTP, one line from the CLI), reads of CA
material still answer.

The lock is real: ``BEGIN EXCLUSIVE`` on the SQLite file from a connection of the test process
(the CLI and the server are other processes), ``LOCK TABLE ... IN ACCESS EXCLUSIVE MODE`` on
PostgreSQL. Each test has a hang guard (``pytest.mark.timeout``) well under the 30 s a write used
to wait: without the bound it hangs and the guard fails it.
"""

from __future__ import annotations

import sqlite3
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import requests
from sqlalchemy import create_engine, func, select, text

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Config, Home
from pki.ca.tokens import TokenStore
from pki.errors import DatabaseBusy, InvalidInput
from pki.store import Database
from pki.store.schema import certificates
from pki.store.writelock import WriterLock
from pki.workload.client import make_csr
from pki.x509.keys import KeyType
from service.api import create_app
from tests.conftest import make_ca
from tests.test_api import RAPKI, free_port, stop


@contextmanager
def sqlite_locked(db: Path) -> Iterator[None]:
    """Another connection holds the database's write lock (as ``sqlite3 rapki.db`` would with
    ``BEGIN EXCLUSIVE;`` typed and the transaction left open)."""
    conn = sqlite3.connect(db, isolation_level=None, timeout=0)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def issue_cli(home: Path, cn: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*RAPKI, "issue", "--home", str(home), "--profile", "web", "--cn", cn, "--out",
                           str(home.parent / cn)], capture_output=True, text=True, check=False)


def workload_rows(ca: CertificateAuthority) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(certificates)
                                .where(certificates.c.profile != "_server")).scalar_one())


def csr_pem(cn: str) -> str:
    return make_csr(KeyType.EC_P256.generate(), cn).decode()


# --- SQLite --------------------------------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.timeout(25)
def test_cli_issue_gives_up_in_one_line_while_sqlite_is_locked(ca: CertificateAuthority) -> None:
    db = ca.home.path / "rapki.db"
    with sqlite_locked(db):
        done = issue_cli(ca.home.path, "web-1")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"rapki: error: database busy: another process holds a write lock on {db.resolve()}; "
                           "try again\n")
    assert workload_rows(ca) == 0
    assert issue_cli(ca.home.path, "web-2").returncode == 0  # the lock let go: it works again


def test_busy_timeout_is_read_from_rapki_toml(tmp_path: Path) -> None:
    home = Home(tmp_path)
    home.save_config(replace(Config(), busy_timeout=timedelta(seconds=5)))
    assert home.load_config().busy_timeout == timedelta(seconds=5)
    assert Config().busy_timeout == timedelta(seconds=2)
    with pytest.raises(InvalidInput, match="busy_timeout must be at most 30s"):
        Config(busy_timeout=timedelta(minutes=5))
    (tmp_path / "rapki.toml").write_text('[rapki]\nconfig_version = 1\n[database]\nbusy_timeout = "soon"\n')
    with pytest.raises(InvalidInput, match="invalid duration 'soon'"):
        home.load_config()


@pytest.mark.timeout(25)
def test_api_writers_do_not_queue_behind_one_that_gave_up(ca: CertificateAuthority) -> None:
    """Writers sharing the writer lock (the API's workers): once one has waited out its busy
    timeout in vain, the next wait only briefly, even with a busy timeout far beyond the hang
    guard; the first write that gets through after the lock is let go clears the stamp."""
    lock_file = ca.home.path / "run" / "sqlite-writer.lock"
    ca.db.serialize_writers(lock_file)
    patient = CertificateAuthority(ca.home, ca.config, Database(ca.db.url, busy_timeout=60))
    patient.db.serialize_writers(lock_file)
    with sqlite_locked(ca.home.path / "rapki.db"):
        with pytest.raises(DatabaseBusy):
            ca.issue("web", cn="web-1")  # waits its busy timeout (2 s), then stamps the lock file
        with pytest.raises(DatabaseBusy, match="database busy: another process holds a write lock on"):
            patient.issue("web", cn="web-2")  # would wait 60 s without the stamp
    patient.issue("web", cn="web-3")
    probe = WriterLock(lock_file)
    try:
        assert not probe.recently_busy()
    finally:
        probe.close()
    assert workload_rows(ca) == 1


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_served_writes_get_503_database_busy_and_reads_answer(tmp_path: Path, passphrase_env: str) -> None:
    """A real ``rapki serve``: while another process holds the write lock, enrollment and token
    creation answer 503 ``database_busy`` with ``Retry-After: 1``, within ``busy_timeout`` (1 s
    here, from rapki.toml); the CA's certificates and /healthz still answer 200; enrollment works
    again once the lock is let go."""
    home = tmp_path / "home"
    ca = make_ca(home)
    Home(home).save_config(replace(ca.config, busy_timeout=timedelta(seconds=1)))
    tokens = TokenStore(ca)
    enrollment = [tokens.create("web", cn="web-1").token for _ in range(2)]
    operator = tokens.create_operator("tests").token
    port = free_port()
    with (tmp_path / "serve.log").open("w") as log:
        proc = subprocess.Popen([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--workers", "1",
                                 "--quiet"], stdout=log, stderr=subprocess.STDOUT)
    url, root = f"https://127.0.0.1:{port}", str(home / "ca" / "root.pem")
    try:
        while True:
            try:
                if requests.get(url + "/healthz", verify=root, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(0.2)

        def enroll(token: str) -> requests.Response:
            return requests.post(url + "/v1/enroll", json={"csr": csr_pem("web-1")}, verify=root, timeout=30,
                                 headers={"Authorization": f"Bearer {token}"})

        with sqlite_locked(home / "rapki.db"):
            refused = [enroll(enrollment[0]),
                       requests.post(url + "/v1/tokens", json={"profile": "web", "cn": "web-2"}, verify=root,
                                     timeout=30, headers={"Authorization": f"Bearer {operator}"})]
            root_pem = requests.get(url + "/v1/ca/root", verify=root, timeout=30)
            chain = requests.get(url + "/v1/ca/chain", verify=root, timeout=30)
            health = requests.get(url + "/healthz", verify=root, timeout=30)
        for answer in refused:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "database_busy"
            assert answer.json()["message"].startswith("database busy: another process holds a write lock on ")
            assert answer.headers["Retry-After"] == "1"
        assert root_pem.status_code == 200 and root_pem.content == (home / "ca" / "root.pem").read_bytes()
        assert chain.status_code == 200 and chain.content == (home / "ca" / "issuing-1.pem").read_bytes()
        assert health.status_code == 200, health.text
        again = enroll(enrollment[0])  # the refused enrollment did not use up the token
        assert again.status_code == 201, again.text
    finally:
        stop(proc)
    assert workload_rows(ca) == 1


# --- PostgreSQL ----------------------------------------------------------------------------------
@contextmanager
def pg_table_locked(url: str, table: str) -> Iterator[None]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(text(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
            yield
            conn.rollback()
    finally:
        engine.dispose()


@pytest.mark.e2e
@pytest.mark.timeout(60)
def test_postgresql_writes_give_up_with_database_busy(tmp_path: Path, passphrase_env: str,
                                                      pg_database_url: str) -> None:
    home = tmp_path / "home"
    made = make_ca(home, database_url=pg_database_url)
    Home(home).save_config(replace(made.config, busy_timeout=timedelta(seconds=1)))
    made.db.dispose()
    ca = CertificateAuthority.open(home)
    token = TokenStore(ca).create("web", cn="web-1").token
    client = create_app(ca=ca).test_client()
    with pg_table_locked(pg_database_url, "certificates"):
        done = issue_cli(home, "web-1")
        refused = client.post("/v1/enroll", json={"csr": csr_pem("web-1")},
                              headers={"Authorization": f"Bearer {token}"})
        root_pem = client.get("/v1/ca/root")
    assert done.returncode == 1, done.stderr
    assert done.stderr == (f"rapki: error: database busy: another process holds a write lock on {pg_database_url}; "
                           "try again\n")
    assert refused.status_code == 503, refused.text
    assert refused.get_json()["error"] == "database_busy"
    assert refused.headers["Retry-After"] == "1"
    assert root_pem.status_code == 200 and root_pem.data == (home / "ca" / "root.pem").read_bytes()
    again = client.post("/v1/enroll", json={"csr": csr_pem("web-1")}, headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 201, again.text
    assert workload_rows(ca) == 1
