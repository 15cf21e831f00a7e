"""Group commit: enrollments a server worker has in hand at once are recorded in one transaction
(``pki.store.db.CommitGroup``, ``service.api.direct.GroupCommitter``) and each is answered after
that commit, with its own outcome.

The requests go through ``InlineWsgi`` (the server's bridge) on one event loop, started together
with ``asyncio.gather``: each one's body is there at once, as when several arrived in one pass of
the loop. The database is the CA's SQLite file.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import func, select

from pki.ca import _issuance
from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore, TokenUsed
from pki.errors import DatabaseBusy
from pki.store.db import CommitGroup, PendingWrite
from pki.store.schema import certificates
from pki.store.statements import Write
from pki.workload.client import make_csr
from service.api import create_app, routes
from service.api.asgi import InlineWsgi


def count(ca: CertificateAuthority) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(certificates)).scalar() or 0)


async def post(app: InlineWsgi, token: str, cn: str) -> tuple[int, dict[str, Any]]:
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), cn).decode()
    body = json.dumps({"csr": csr}).encode()
    scope = {"type": "http", "method": "POST", "path": "/v1/enroll", "raw_path": b"/v1/enroll",
             "query_string": b"", "root_path": "", "scheme": "https", "http_version": "1.1",
             "server": ("127.0.0.1", 8443), "client": ("127.0.0.1", 50000),
             "headers": [(b"authorization", f"Bearer {token}".encode()), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())]}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every group committed."""
    sizes: list[int] = []
    commit = CommitGroup.commit

    def counted(self: CommitGroup) -> None:
        sizes.append(len(self._pending))
        commit(self)

    monkeypatch.setattr(CommitGroup, "commit", counted)
    return sizes


@pytest.fixture
def server(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> InlineWsgi:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "off")
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_ADDRESS", "off")
    return InlineWsgi(create_app(ca=ca), max_body=64 * 1024)


def enroll_together(server: InlineWsgi, *requests: tuple[str, str]) -> list[tuple[int, dict[str, Any]]]:
    async def all_at_once() -> list[tuple[int, dict[str, Any]]]:
        return list(await asyncio.gather(*(post(server, token, cn) for token, cn in requests)))

    return asyncio.run(all_at_once())


def test_requests_in_hand_at_once_share_one_commit(ca: CertificateAuthority, server: InlineWsgi,
                                                    commits: list[int]) -> None:
    token = TokenStore(ca).create("web", cn_pattern=r"web-[0-9]+", uses=10).token
    answers = enroll_together(server, (token, "web-1"), (token, "web-2"), (token, "web-3"))
    assert [status for status, _ in answers] == [201, 201, 201]
    assert commits == [3]
    assert count(ca) == 3
    assert len({answer["serial"] for _, answer in answers}) == 3
    assert ca.verify_audit_log().ok
    # Alone, a request is committed by itself.
    assert enroll_together(server, (token, "web-4"))[0][0] == 201
    assert commits == [3, 1]


def test_a_token_used_up_in_the_group_fails_only_its_request(ca: CertificateAuthority, server: InlineWsgi,
                                                              commits: list[int]) -> None:
    tokens = TokenStore(ca)
    once = tokens.create("web", cn_pattern=r"web-[0-9]+", uses=1).token
    other = tokens.create("web", cn_pattern=r"web-[0-9]+", uses=5).token
    # Both requests with ``once`` pass the token check (nothing is recorded yet); the group decides.
    answers = enroll_together(server, (once, "web-1"), (once, "web-2"), (other, "web-3"))
    assert commits == [3]
    assert [status for status, _ in answers] == [201, 409, 201]
    assert answers[1][1]["error"] == "token_used"
    assert count(ca) == 2
    assert ca.verify_audit_log().ok
    with ca.db.engine.connect() as conn:
        issued = {r.common_name for r in conn.execute(select(certificates.c.common_name))}
    assert issued == {"web-1", "web-3"}


def test_an_unexpected_failure_records_nothing_of_the_group(ca: CertificateAuthority, server: InlineWsgi,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    token = TokenStore(ca).create("web", cn_pattern=r"web-[0-9]+", uses=10).token
    add = CommitGroup.add

    def third_fails(self: CommitGroup, write: Write) -> PendingWrite:
        if len(self._pending) < 2:
            return add(self, write)

        def failing(tx: Any) -> None:
            write(tx)
            raise OSError("disk full")

        return add(self, failing)

    monkeypatch.setattr(CommitGroup, "add", third_fails)
    answers = enroll_together(server, (token, "web-1"), (token, "web-2"), (token, "web-3"))
    assert [status for status, _ in answers] == [500, 500, 500]
    assert count(ca) == 0
    assert ca.verify_audit_log().ok


def test_a_refused_write_is_rolled_back_alone(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its token redemption, which ran before its certificate row failed, is undone; the others stay."""
    group = ca.db.commit_group()
    assert group is not None
    tokens = TokenStore(ca)
    first, second = (tokens.create("web", cn_pattern=r"web-[0-9]+", uses=1).token for _ in range(2))
    monkeypatch.setattr(_issuance, "random_serial", lambda _bytes: 0x1234567890ABCDEF)  # the same serial twice
    pending: list[PendingWrite] = []
    for token, cn in ((first, "web-1"), (second, "web-2")):
        csr = make_csr(ec.generate_private_key(ec.SECP256R1()), cn)
        ca.issue("web", csr=csr, within=tokens.redeemer(token), later=lambda w: pending.append(group.add(w)))
    assert count(ca) == 0  # handed over, not yet recorded
    group.commit()
    assert pending[0].error is None
    assert isinstance(pending[1].error, DatabaseBusy)  # to be retried: a new serial is drawn then
    assert count(ca) == 1
    with pytest.raises(TokenUsed):
        tokens.authenticate(first)
    tokens.authenticate(second)  # its use was given back
    # Alone in its group (its own transaction, no savepoint), it is rolled back whole all the same.
    csr = make_csr(ec.generate_private_key(ec.SECP256R1()), "web-2")
    ca.issue("web", csr=csr, within=tokens.redeemer(second), later=lambda w: pending.append(group.add(w)))
    group.commit()
    assert isinstance(pending[2].error, DatabaseBusy)
    assert count(ca) == 1
    tokens.authenticate(second)
    assert ca.verify_audit_log().ok


def test_a_request_failing_after_its_certificate_was_made_records_nothing(
        ca: CertificateAuthority, server: InlineWsgi, monkeypatch: pytest.MonkeyPatch) -> None:
    token = TokenStore(ca).create("web", cn_pattern=r"web-[0-9]+", uses=10).token

    def broken_answer(*_args: Any) -> dict[str, Any]:
        raise OSError("the answer could not be made")

    monkeypatch.setattr(routes.enrollment, "answer", broken_answer)
    assert enroll_together(server, (token, "web-1"))[0][0] == 500
    monkeypatch.undo()  # the answer works again: the next group must not hold the first write
    assert enroll_together(server, (token, "web-2"))[0][0] == 201
    with ca.db.engine.connect() as conn:
        issued = [r.common_name for r in conn.execute(select(certificates.c.common_name))]
    assert issued == ["web-2"]
    assert ca.verify_audit_log().ok
