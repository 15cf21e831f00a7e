"""Rate limits and the replay cache shared by API replicas: on PostgreSQL they live in the CA
database (``DatabaseState``), so two replicas (two engines, as two hosts would have) count in the
same rows; on SQLite a per-host file (``FileState``) is shared by the host's workers."""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select
from werkzeug.test import Client

from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from pki.store import Database
from pki.store.schema import rate_counters, seen_signatures
from service.api import STATE_FILE, create_app, state
from service.api.state import DatabaseState, FileState, Limit, RateLimited, SharedState
from tests.conftest import make_ca

Clock = list[float]
MakeState = Callable[[Clock], SharedState]


@pytest.fixture
def databases(pg_database_url: str) -> Iterator[tuple[Database, Database]]:
    """Two engines on one migrated PostgreSQL database: what two replicas hold."""
    first, second = Database(pg_database_url), Database(pg_database_url)
    first.migrate()
    try:
        yield first, second
    finally:
        first.dispose()
        second.dispose()


@pytest.fixture(params=["file", "postgresql"])
def make_state(request: pytest.FixtureRequest, tmp_path: Path) -> MakeState:
    """Instances that share their counters: on one state file, or on one PostgreSQL database
    through two engines in turn (each call a different replica)."""
    if request.param == "file":
        return lambda now: FileState(tmp_path / "state.db", clock=lambda: now[0])
    dbs = request.getfixturevalue("databases")
    made = [0]

    def replica(now: Clock) -> SharedState:
        made[0] += 1
        return DatabaseState(dbs[made[0] % 2], clock=lambda: now[0])

    return replica


def test_counters_and_replays_are_shared(make_state: MakeState) -> None:
    now = [7200.0 + 600]  # 10 minutes into a one-hour window
    one, two = make_state(now), make_state(now)
    limit = Limit(3, 3600)
    one.hit("k", limit, "x")
    two.hit("k", limit, "x")
    one.hit("k", limit, "x")
    with pytest.raises(RateLimited) as refused:
        two.hit("k", limit, "x")
    assert refused.value.retry_after == 3000  # until the window ends
    one.hit("other-key", limit, "x")
    now[0] += 3000  # the next window: counting starts again
    for _ in range(3):
        two.hit("k", limit, "x")
    with pytest.raises(RateLimited):
        one.hit("k", limit, "x")
    assert one.first_use("sig", 600)
    assert not two.first_use("sig", 600)  # a replay, whichever replica sees it
    assert not one.first_use("sig", 600)


def test_one_write_stops_at_the_first_refusal(make_state: MakeState) -> None:
    now = [7200.0]
    one, two = make_state(now), make_state(now)
    per_address, per_token = Limit(2, 3600), Limit(10, 3600)
    one.hit_all([("addr", per_address, "from here"), ("token", per_token, "with it")])
    two.hit_all([("addr", per_address, "from here"), ("token", per_token, "with it")])
    with pytest.raises(RateLimited, match="from here"):  # the address is over: the token is not counted
        one.hit_all([("addr", per_address, "from here"), ("token", per_token, "with it")])
    for _ in range(8):
        two.hit("token", per_token, "with it")
    with pytest.raises(RateLimited, match="with it"):
        one.hit("token", per_token, "with it")
    one.hit_all([("addr", None, "off"), ("fresh", per_token, "x")])  # a limit switched off counts nothing


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_concurrent_hits_on_two_replicas_never_pass_the_limit(databases: tuple[Database, Database]) -> None:
    limit = Limit(30, 3600)
    replicas = [DatabaseState(db, clock=lambda: 7200.0) for db in databases]
    passed, refused = [], []
    start = threading.Barrier(8)

    def client(n: int) -> None:
        start.wait()
        for _ in range(10):
            try:
                replicas[n % 2].hit_all([("addr:198.51.100.7", limit, "from there"), (f"id:{n}", Limit(100, 60), "")])
                passed.append(n)
            except RateLimited:
                refused.append(n)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=100)
    assert (len(passed), len(refused)) == (30, 50)
    with databases[0].engine.connect() as conn:
        counts = dict(conn.execute(select(rate_counters.c.key, rate_counters.c.count)).all())
    assert counts["addr:198.51.100.7"] == 80  # every attempt counted, none lost to a race
    assert sum(v for k, v in counts.items() if k.startswith("id:")) == 30  # counted only behind a pass


@pytest.mark.postgres
def test_concurrent_first_use_admits_one(databases: tuple[Database, Database]) -> None:
    replicas = [DatabaseState(db) for db in databases]
    firsts: list[bool] = []
    start = threading.Barrier(6)

    def client(n: int) -> None:
        start.wait()
        firsts.append(replicas[n % 2].first_use("d" * 64, 600))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(firsts) == [False] * 5 + [True]


@pytest.mark.postgres
def test_finished_windows_and_old_signatures_are_dropped(databases: tuple[Database, Database],
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    now = [7200.0]
    shared = DatabaseState(databases[0], clock=lambda: now[0])
    shared.hit("old", Limit(5, 60), "x")
    assert shared.first_use("old-signature", 60)
    now[0] += 3600
    monkeypatch.setattr(state, "HOUSEKEEPING", 1.0)  # this time, every call cleans up
    shared.hit("new", Limit(5, 60), "x")
    assert shared.first_use("new-signature", 60)
    with databases[0].engine.connect() as conn:
        keys = set(conn.execute(select(rate_counters.c.key)).scalars())
        digests = set(conn.execute(select(seen_signatures.c.digest)).scalars())
        assert conn.execute(select(func.count()).select_from(rate_counters)).scalar() == 1
    assert (keys, digests) == ({"new"}, {"new-signature"})


def _enroll(client: Client, token: str, address: str) -> int:
    response = client.post("/v1/enroll", data=json.dumps({"key_type": "ec-p256"}),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
                           environ_overrides={"REMOTE_ADDR": address})
    return response.status_code


@pytest.mark.postgres
@pytest.mark.timeout(120)
def test_two_replicas_share_the_per_address_limit(tmp_path: Path, passphrase_env: str, pg_database_url: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Two applications on two homes (two hosts) over one PostgreSQL database: a client that
    alternates between them gets the per-address limit once, not once per replica."""
    monkeypatch.delenv("RAPKI_API_RATE_LIMIT_PER_ADDRESS", raising=False)
    monkeypatch.delenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", raising=False)
    primary = tmp_path / "primary"
    made = make_ca(primary, database_url=pg_database_url)
    token = TokenStore(made).create("web", cn="web-1").token
    made.db.dispose()
    Home(primary).update_section("api", {"rate_limit_per_address": "6/1h", "rate_limit_per_identity": "1000/h"})
    replica = tmp_path / "replica"
    shutil.copytree(primary, replica, ignore=shutil.ignore_patterns("tls", "run", "root.key.pem"))
    apps = [create_app(primary), create_app(replica)]
    clients = [Client(app) for app in apps]
    forged = token.split(".")[0] + "." + "C" * 43
    # Windows are fixed (aligned to the hour): keep every request inside one.
    if time.time() % 3600 > 3590:
        time.sleep(3601 - time.time() % 3600)
    statuses = [_enroll(clients[n % 2], forged, "198.51.100.7") for n in range(9)]
    assert statuses == [401] * 6 + [429] * 3  # each replica counting alone would allow 12
    assert _enroll(clients[1], token, "192.0.2.10") == 201  # another address is not affected
    assert not (primary / STATE_FILE).exists() and not (replica / STATE_FILE).exists()
    for app in apps:
        app.extensions["rapki"].ca.db.dispose()


def test_a_sqlite_home_counts_in_its_own_file(tmp_path: Path, passphrase_env: str) -> None:
    home = tmp_path / "home"
    made = make_ca(home)
    app = create_app(ca=made)
    assert isinstance(app.extensions["rapki"].state, FileState)
    assert (home / STATE_FILE).exists()
    with pytest.raises(ValueError, match="FileState"):
        DatabaseState(made.db)


