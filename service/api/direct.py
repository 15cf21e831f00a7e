"""``POST /v1/enroll`` served straight from the WSGI environ, in front of Flask.

Enrollment is the endpoint workloads hit in bulk. Flask's per-request machinery (request and
application contexts, URL matching, Werkzeug's request and response objects, before/after hooks)
cost about as much CPU as the token look-up and the certificate's recording together. This
middleware serves that one route itself and hands every other request to Flask unchanged.

It does exactly what the Flask view does (``routes.serve_enroll``, shared by both), with the same
answers: the body read under the same 64 KiB limit (413) and checked against the same declaration
(``service.api.shapes.ENROLL_REQUEST``, in ``enrollment.enroll``), the same JSON bytes (the app's JSON
provider, ``service.api.jsonio``), the same errors (``errors.describe``), ``Cache-Control:
no-store``, and the same metrics (``rapki_http_request_duration_seconds``,
``rapki_requests_refused_total``).

Group commit: served by ``InlineWsgi`` (``environ[ANSWER_LATER]``) on SQLite, an enrollment does
its work (token, CSR, policy, signing) at once but hands its recording to the worker's
``CommitGroup`` and answers later (``AnswerLater``): every request the event loop had in hand at
once is recorded in one transaction, committed once that pass of the loop is over
(``GroupCommitter``), and each is answered after that commit: 201 when its write is in it, else
the error of its own write (409 token used up meanwhile) or of the group's commit. A worker with
a single request in hand commits it alone, with no added wait.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.http import HTTP_STATUS_CODES

from pki.store.db import CommitGroup, PendingWrite
from pki.store.statements import Write
from service.api import errors, metrics
from service.api.asgi import ANSWER_LATER, AnswerLater
from service.api.context import ApiContext
from service.api.routes import parse_json, serve_enroll

ENROLL_PATH = "/v1/enroll"

StartResponse = Callable[..., Any]
WsgiApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def read_body(environ: dict[str, Any], limit: int = errors.MAX_BODY) -> bytes:
    """The request body: by Content-Length (413 when over the limit, as Werkzeug), else, when the
    server terminates the input (``wsgi.input_terminated``, for chunked bodies), up to the limit and 413 past it
    (Werkzeug would cut it at the limit and the JSON would not parse), else nothing."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        try:
            size = max(0, int(length))
        except ValueError:
            size = 0
        if size > limit:
            raise RequestEntityTooLarge()
        return bytes(stream.read(size)) if size else b""
    if "wsgi.input_terminated" in environ:
        data = stream.read(limit + 1)
        if len(data) > limit:
            raise RequestEntityTooLarge()
        return bytes(data)
    return b""


class GroupCommitter:
    """The worker's ``CommitGroup`` committed once per pass of the event loop: the first request
    to wait (``committed``) schedules the commit after every callback ready in this pass, which
    includes each request whose body had arrived; the ones that come later form the next group."""

    def __init__(self, group: CommitGroup) -> None:
        self.group = group
        self._waiting: list[asyncio.Future[None]] = []

    def add(self, write: Write) -> PendingWrite:
        return self.group.add(write)

    async def committed(self) -> None:
        # A future per request: a request whose client went away is cancelled alone, the commit
        # and the others' answers go on.
        loop = asyncio.get_running_loop()
        if not self._waiting:
            loop.call_soon(self._commit)
        done = loop.create_future()
        self._waiting.append(done)
        await done

    def _commit(self) -> None:
        waiting, self._waiting = self._waiting, []
        try:
            self.group.commit()
        finally:
            for done in waiting:
                if not done.done():
                    done.set_result(None)


class _Recorded(AnswerLater):
    """An enrollment answered once its recording is committed."""

    __slots__ = ("_answer", "_enroll", "_pending", "_started")

    def __init__(self, enroll: DirectEnroll, pending: PendingWrite, answer: dict[str, Any], started: float) -> None:
        self._enroll, self._pending, self._answer, self._started = enroll, pending, answer, started

    async def answer(self, start_response: StartResponse) -> Iterable[bytes]:
        enroll = self._enroll
        assert enroll.committer is not None
        await enroll.committer.committed()
        error = self._pending.error
        if error is None:
            metrics.ISSUED.labels(self._answer["profile"]).inc()
            return enroll.respond(start_response, 201, {}, self._answer, self._started)
        return enroll.respond(start_response, *enroll.refusal(error), self._started)


class DirectEnroll:
    """WSGI middleware: ``POST /v1/enroll`` here, everything else to ``fallback`` (Flask)."""

    def __init__(self, app: Flask, fallback: WsgiApp) -> None:
        self.ctx: ApiContext = app.extensions["rapki"]
        self.fallback = fallback
        self._encode = app.json.dumps  # the app's JSON provider: the bytes jsonify() would send
        self._issued_latency = metrics.LATENCY.labels("POST", ENROLL_PATH, "201")
        group = self.ctx.ca.db.commit_group()
        self.committer = GroupCommitter(group) if group is not None else None

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != ENROLL_PATH or environ.get("REQUEST_METHOD") != "POST":
            return self.fallback(environ, start_response)
        started = time.perf_counter()
        headers: dict[str, str]
        pending: list[PendingWrite] = []
        committer = self.committer if environ.get(ANSWER_LATER) else None
        later = (lambda write: pending.append(committer.add(write))) if committer is not None else None
        try:
            answer = serve_enroll(self.ctx, environ.get("REMOTE_ADDR") or "unknown",
                                  environ.get("HTTP_AUTHORIZATION", ""), lambda: parse_json(read_body(environ)),
                                  later)
            status, headers = 201, {}
        except Exception as exc:
            status, headers, answer = self.refusal(exc)
        if pending and committer is not None:
            if status == 201:
                return _Recorded(self, pending[0], answer, started)
            committer.group.withdraw(pending[0])  # failed after issuing: nothing of it is recorded
        return self.respond(start_response, status, headers, answer, started)

    @staticmethod
    def refusal(exc: Exception) -> tuple[int, dict[str, str], dict[str, Any]]:
        code, message, status, headers = errors.describe(exc)
        metrics.REFUSED.labels(ENROLL_PATH, code).inc()
        return status, headers, {"error": code, "message": message}

    def respond(self, start_response: StartResponse, status: int, headers: dict[str, str],
                answer: dict[str, Any], started: float) -> Iterable[bytes]:
        data = f"{self._encode(answer)}\n".encode()
        start_response(f"{status} {HTTP_STATUS_CODES[status].upper()}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(data))), *headers.items(),
            ("Cache-Control", "no-store"),
        ])
        latency = self._issued_latency if status == 201 else metrics.LATENCY.labels("POST", ENROLL_PATH, str(status))
        latency.observe(time.perf_counter() - started)
        return [data]
