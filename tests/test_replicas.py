"""Replicas and live rotation, end to end: real ``rapki serve`` processes on 127.0.0.1, two homes
(as two hosts would have) sharing one PostgreSQL database.

* A rotation made by the CLI reaches running servers (every worker) and the other replica without a
  restart: enrollments move to the new CA, ``/v1/ca/chain`` changes, certificates of either CA renew
  (mutual TLS and signed) and revoke, and a replica without the new key file answers 503
  ``issuer_key_missing`` naming the file (``rapki check`` says the same), never a 500.
* A race: two replicas, 16 concurrent clients, a staged rotation in the middle.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from sqlalchemy import create_engine, func, select

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from pki.store.schema import certificates, enrollment_tokens
from pki.x509.profiles import Profile
from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import RAPKI, free_port, rapki, stop

pytestmark = pytest.mark.e2e

SETTLE = 20.0  # seconds a server may take to notice a change in the database (it re-reads every 2 s)


@dataclass
class Replica:
    home: Path
    url: str
    root: Path
    proc: subprocess.Popen[bytes]

    def post(self, path: str, body: Any, *, token: str) -> requests.Response:
        return requests.post(self.url + path, json=body, headers={"Authorization": f"Bearer {token}"},
                             verify=str(self.root), timeout=60)

    def enroll(self, token: str, cn: str) -> requests.Response:
        return self.post("/v1/enroll", {"key_type": "ec-p256", "cn": cn}, token=token)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.url + path, verify=str(self.root), timeout=30)


def serve(home: Path, workers: int) -> Replica:
    port = free_port()
    log = (home.parent / f"{home.name}-serve.log").open("w")
    proc = subprocess.Popen([*RAPKI, "serve", "--home", str(home), "--port", str(port), "--workers", str(workers),
                             "--quiet", "--cpu-affinity", "off"], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    replica = Replica(home, f"https://127.0.0.1:{port}", home / "ca" / "root.pem", proc)
    deadline = time.monotonic() + 40
    while True:
        try:
            if replica.get("/healthz").status_code == 200:
                return replica
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"rapki serve --home {home} did not come up: "
                        + (home.parent / f"{home.name}-serve.log").read_text()[-3000:])
        time.sleep(0.2)


def replica_home(primary: Path, to: Path) -> Path:
    """A second host's home: a copy of the primary's config, certificates and keys (not its
    run-time files), the database shared."""
    shutil.copytree(primary, to, ignore=shutil.ignore_patterns("tls", "run", "api-state.db*", "root.key.pem"))
    return to


def issuer_cn(response: requests.Response) -> str:
    assert response.status_code == 201, response.text
    cert = x509.load_pem_x509_certificate(response.json()["certificate"].encode())
    return str(cert.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value)


def write_cert_dir(response: requests.Response, out: Path) -> Path:
    body = response.json()
    out.mkdir(parents=True)
    (out / "cert.pem").write_text(body["certificate"])
    (out / "chain.pem").write_text(body["chain"])
    (out / "key.pem").write_text(body["private_key"])
    (out / "key.pem").chmod(0o600)
    return out


def until(what: str, condition: Any) -> Any:
    """Poll ``condition`` until it returns something true, for at most ``SETTLE`` seconds."""
    deadline = time.monotonic() + SETTLE
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {SETTLE:.0f}s: {what}")
        time.sleep(0.3)


@pytest.fixture
def homes(tmp_path: Path, pg_database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, Path]]:
    """Primary and replica homes on one fresh PostgreSQL database (the URL comes from the
    environment at init only: the homes keep it)."""
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    primary = tmp_path / "primary"
    ca = make_ca(primary)
    ca.db.dispose()
    monkeypatch.delenv("RAPKI_DATABASE_URL")
    Home(primary).update_section("api", {"rate_limit_per_address": "100000/m", "rate_limit_per_identity": "100000/m"})
    yield primary, replica_home(primary, tmp_path / "replica")


def tokens(home: Path) -> TokenStore:
    return TokenStore(CertificateAuthority.open(home))


def test_rotation_reaches_running_servers_and_replicas(homes: tuple[Path, Path], tmp_path: Path) -> None:
    primary_home, replica_home_ = homes
    store = tokens(primary_home)
    token = store.create("web", cn_pattern=r"web-[0-9]+", uses=200).token
    operator = store.create_operator("tests").token
    primary, replica = serve(primary_home, workers=2), serve(replica_home_, workers=1)
    try:
        first = primary.enroll(token, "web-1")
        assert issuer_cn(first).startswith("rapki Issuing CA 1 ")
        assert issuer_cn(replica.enroll(token, "web-2")).startswith("rapki Issuing CA 1 ")
        old_cert = write_cert_dir(first, tmp_path / "old")
        chain_before = primary.get("/v1/ca/chain").text

        rotated = rapki("ca", "sign-intermediate", "--home", str(primary_home))
        assert "issuing-2 is now the active issuing CA" in rotated.stdout

        # every worker of the running primary issues from the new CA, and the chain it serves changed
        until("the primary enrolls from CA 2", lambda: all(
            issuer_cn(primary.enroll(token, "web-3")).startswith("rapki Issuing CA 2 ") for _ in range(6)))
        assert primary.get("/v1/ca/chain").text != chain_before
        assert "rapki Issuing CA 2" in x509.load_pem_x509_certificate(primary.get("/v1/ca/chain").content) \
            .subject.rfc4514_string()

        # the replica lacks the new key file: a clear 503 naming it, never a 500
        missing = replica_home_ / "ca" / "issuing-2.key.pem"
        [refused] = until("the replica notices CA 2",
                          lambda: [r] if (r := replica.enroll(token, "web-4")).status_code != 201 else None)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "issuer_key_missing"
        assert str(missing) in refused.json()["message"]
        check = rapki("check", "--home", str(replica_home_), check=False)
        assert check.returncode == 1 and str(missing) in check.stdout
        cli = rapki("issue", "--home", str(replica_home_), "--profile", "web", "--cn", "web-5",
                    "--out", str(tmp_path / "cli"), check=False)
        assert cli.returncode == 2 and str(missing) in cli.stderr and len(cli.stderr.strip().splitlines()) == 1

        # copied: the replica issues from CA 2 at once, no restart
        shutil.copy2(primary_home / "ca" / "issuing-2.key.pem", missing)
        assert rapki("check", "--home", str(replica_home_)).returncode == 0
        assert issuer_cn(replica.enroll(token, "web-6")).startswith("rapki Issuing CA 2 ")

        # a certificate of CA 2 (issued by the CLI) renews over mutual TLS against the replica, whose
        # TLS trust store was built before CA 2 existed, and signed against the primary
        new_cert = tmp_path / "new"
        rapki("issue", "--home", str(primary_home), "--profile", "web", "--cn", "web-7", "--out", str(new_cert))
        renew = ["renew", "--cert-dir", str(new_cert), "--ca-bundle", str(primary.root), "--force", "--json"]
        mtls = json.loads(rapki(*renew, "--url", replica.url).stdout)
        signed = json.loads(rapki(*renew, "--url", primary.url, "--signed").stdout)
        # and a certificate of CA 1 renews too (into CA 2)
        renewed_old = json.loads(rapki("renew", "--cert-dir", str(old_cert), "--ca-bundle", str(primary.root),
                                       "--force", "--json", "--url", replica.url).stdout)
        assert mtls["serial"] != signed["serial"] != renewed_old["serial"]
        assert "Issuing CA 2" in x509.load_pem_x509_certificate((old_cert / "cert.pem").read_bytes()) \
            .issuer.rfc4514_string()

        # certificates of either CA revoke, through either replica
        ca1_serial = format(x509.load_pem_x509_certificate(first.json()["certificate"].encode()).serial_number, "x")
        for server, serial in ((replica, ca1_serial), (primary, signed["serial"])):
            revoked = server.post("/v1/revoke", {"serial": serial, "reason": "keyCompromise"}, token=operator)
            assert revoked.status_code == 200, revoked.text
        crl1 = x509.load_der_x509_crl(replica.get("/v1/crl?issuer=issuing-1").content)
        assert crl1.get_revoked_certificate_by_serial_number(int(ca1_serial, 16)) is not None
    finally:
        stop(primary.proc)
        stop(replica.proc)


CLIENTS = 16
PER_CLIENT = 6
SHARED_USES = 20


def test_two_replicas_sixteen_clients_staged_rotation_in_the_middle(homes: tuple[Path, Path], tmp_path: Path) -> None:
    """16 clients enroll through two replicas while a rotation is staged (new CA made inactive, its
    key copied to the replica) and activated. No 5xx, no duplicate serial, every certificate
    recorded, every token redeemed exactly as often as it allows (a shared one raced for)."""
    primary_home, replica_home_ = homes
    store = tokens(primary_home)
    own = [store.create("web", cn_pattern=r"web-[0-9]+", uses=PER_CLIENT).token for _ in range(CLIENTS)]
    shared = store.create("web", cn_pattern=r"web-[0-9]+", uses=SHARED_USES).token
    primary, replica = serve(primary_home, workers=2), serve(replica_home_, workers=1)
    results: list[tuple[str, int, str]] = []  # (token kind, status, serial or error)
    lock = threading.Lock()
    halfway = threading.Event()

    def client(n: int) -> None:
        servers = (primary, replica) if n % 2 else (replica, primary)
        attempts = [(own[n], "own")] * PER_CLIENT + [(shared, "shared")] * 2 + [(own[n], "spent")]
        for i, (token, kind) in enumerate(attempts):
            response = servers[i % 2].enroll(token, f"web-{n * 100 + i}")
            body = response.json()
            with lock:
                results.append((kind, response.status_code, body.get("serial") or body.get("error")))
                if len(results) >= CLIENTS * 3:
                    halfway.set()

    started = time.monotonic()
    try:
        with ThreadPoolExecutor(CLIENTS) as pool:
            futures = [pool.submit(client, n) for n in range(CLIENTS)]
            assert halfway.wait(60)
            made = json.loads(rapki("ca", "sign-intermediate", "--home", str(primary_home), "--inactive",
                                    "--json").stdout)
            shutil.copy2(primary_home / "ca" / f"{made['name']}.key.pem", replica_home_ / "ca")
            rapki("ca", "activate", made["name"], "--home", str(primary_home))
            for future in futures:
                future.result()
        elapsed = time.monotonic() - started
        statuses = Counter(status for _, status, _ in results)
        print(f"\n{len(results)} enrollment requests through 2 replicas, {CLIENTS} clients, rotation "
              f"in the middle: {dict(statuses)} in {elapsed:.1f}s")
        assert not [r for r in results if r[1] >= 500], results
        issued = [serial for kind, status, serial in results if status == 201]
        assert len(issued) == len(set(issued)), "duplicate serials"
        assert Counter(kind for kind, status, _ in results if status == 201) == {
            "own": CLIENTS * PER_CLIENT, "shared": SHARED_USES}
        assert all(status in (401, 409) for kind, status, _ in results if kind == "spent")
        assert sum(1 for kind, status, _ in results if kind == "shared" and status != 201) == 2 * CLIENTS - SHARED_USES
        engine = create_engine(CertificateAuthority.open(primary_home).db.url)
        with engine.connect() as conn:
            recorded = set(conn.execute(select(certificates.c.serial)
                                        .where(certificates.c.profile != "_server")).scalars())
            left = conn.execute(select(func.sum(enrollment_tokens.c.uses_left))).scalar()
        engine.dispose()
        assert set(issued) == recorded
        assert left == 0
        # after the rotation both replicas issue from the new CA
        late = store.create("web", cn_pattern=r"web-[0-9]+", uses=200).token  # each poll spends two
        until("both replicas enroll from the new CA", lambda: all(
            issuer_cn(server.enroll(late, "web-9999")).startswith("rapki Issuing CA 2 ") for server in (primary, replica)))
    finally:
        stop(primary.proc)
        stop(replica.proc)


def test_healthz_of_a_replica_without_the_active_key_is_503(homes: tuple[Path, Path]) -> None:
    """A load balancer takes a replica that cannot sign out of rotation (its health check names the file)."""
    primary_home, replica_home_ = homes
    replica = serve(replica_home_, workers=1)
    try:
        ca = CertificateAuthority.open(primary_home)
        ca.sign_intermediate()
        ca.db.dispose()
        [health] = until("the replica notices CA 2",
                         lambda: [r] if (r := replica.get("/healthz")).status_code == 503 else None)
        assert "issuing-2" in health.json()["checks"]["ca_key"]
    finally:
        stop(replica.proc)


def test_profiles_added_on_one_home_serve_on_the_other(homes: tuple[Path, Path]) -> None:
    """Shared state lives in the database: a profile added through one home is there for the other."""
    primary_home, replica_home_ = homes
    CertificateAuthority.open(primary_home).add_profile(Profile(name="db", cn_pattern=r"db-[0-9]+"))
    assert "db" in [p.name for p in CertificateAuthority.open(replica_home_).profiles()]
    assert not (replica_home_ / "rapki.db").exists() and not (primary_home / "rapki.db").exists()
    assert os.environ.get("RAPKI_DATABASE_URL") is None
