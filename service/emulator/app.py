"""The Flask application: routing, request context (account/region), errors, faults, stats.

Control-plane authentication: requests must carry a SigV4 ``Authorization`` header (as every
SDK sends), but its HMAC signature is **not verified**: any access key and secret are accepted.
The emulator only reads the credential scope: its region selects the regional state, and an
access key id of exactly 12 digits selects that account (anything else, e.g. ``test``, maps to the
default account). ``POST /sessions`` is the opposite: its SigV4-X509 signature is checked byte for
byte, because that is what the emulator exists to test.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flask import Flask, Response, request

from pki.rolesanywhere.partitions import region_from_host
from service.emulator.control import ROUTES, ControlPlane, Ctx
from service.emulator.errors import ServiceError, missing_authentication, validation
from service.emulator.faults import FaultInjector, FaultSettings
from service.emulator.sessions import DistributionPoints, SessionInput, create_session
from service.emulator.state import EmulatorState

DEFAULT_ACCOUNT = "123456789012"
DEFAULT_REGION = "us-east-1"
_SCOPE = re.compile(
    r"Credential=(?P<akid>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/(?P<service>[^/,\s]+)/aws4_request"
)
_UNSAFE_HEADER_CHARS = re.compile(r"[^\x20-\x7e]")


def _json_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    response = Response(json.dumps(body, separators=(",", ":")), status=status, mimetype="application/json")
    response.headers["x-amzn-RequestId"] = str(uuid.uuid4())
    for key, value in (headers or {}).items():
        response.headers[key] = value
    return response


def error_response(error: ServiceError) -> Response:
    headers = {"X-Amzn-ErrorType": error.error_type}
    if error.detail:
        # Our own diagnostic, never part of the AWS shape; kept to printable ASCII for HTTP.
        headers["X-Rapki-Emulator-Detail"] = _UNSAFE_HEADER_CHARS.sub("?", error.detail)[:1000]
    return _json_response(error.status, {"message": error.message}, headers)


def create_app(
    state_path: str | Path | None = None,
    *,
    account: str = DEFAULT_ACCOUNT,
    region: str = DEFAULT_REGION,
    faults: FaultSettings | None = None,
    clock: Callable[[], datetime] | None = None,
    crl_dp: DistributionPoints | None = None,
) -> Flask:
    """A ready emulator application. ``state_path=None`` keeps state in memory only.

    ``clock`` replaces the current time (an aware UTC datetime) for tests that replay requests
    signed at a fixed date; it is used for ``X-Amz-Date`` skew, certificate validity and timestamps.
    """
    app = Flask("rapki-emulator")
    state = EmulatorState(Path(state_path) if state_path is not None else None)
    injector = FaultInjector(faults)
    control = ControlPlane(state)
    now: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
    dp = crl_dp or DistributionPoints()  # one CRL cache per process, shared by its threads
    app.extensions["rapki_emulator"] = {"state": state, "faults": injector, "control": control}

    def context() -> Ctx:
        auth = request.headers.get("Authorization", "")
        if not auth:
            raise missing_authentication()
        scope = _SCOPE.search(auth)
        ctx_region = (scope["region"] if scope else None) or region_from_host(request.host) or region
        akid = scope["akid"] if scope else ""
        ctx_account = akid if re.fullmatch(r"\d{12}", akid) else account
        raw = request.get_data(cache=True)
        body: Any = {}
        if raw.strip():
            try:
                body = json.loads(raw)
            except ValueError:
                raise validation("The request body is not valid JSON") from None
            if not isinstance(body, dict):
                raise validation("The request body must be a JSON object")
        return Ctx(account=ctx_account, region=ctx_region, body=body, args=request.args, now=now())

    def make_view(operation: str, method_name: str) -> Callable[..., Response]:
        handler = getattr(control, method_name)

        def view(**params: str) -> Response:
            try:
                injector.before(operation)
                status, body = handler(context(), **params)
            except ServiceError as exc:
                injector.record_error(exc.error_type)
                return error_response(exc)
            injector.record_success(operation)
            return _json_response(status, body)

        view.__name__ = f"op_{method_name}"
        return view

    for method, rule, operation, method_name in ROUTES:
        app.add_url_rule(rule, endpoint=operation + method, view_func=make_view(operation, method_name),
                         methods=[method])  # fmt: skip

    @app.post("/sessions")
    def sessions() -> Response:
        try:
            injector.before("CreateSession")
            injector.check_session_rate(request.headers.get("X-Amz-X509", ""), request.remote_addr or "")
            session = SessionInput(
                method=request.method, path=request.path,
                raw_query=request.query_string.decode("latin-1"),
                query={k: v for k, v in request.args.items()},
                headers=list(request.headers.items()), body=request.get_data(cache=True),
            )  # fmt: skip
            return _json_response(201, create_session(state, session, now(), dp))
        except ServiceError as exc:
            injector.record_error(exc.error_type)
            return error_response(exc)

    # -- test hooks: not part of the AWS API ----------------------------------------------------

    @app.get("/_emulator/health")
    def health() -> Response:
        return _json_response(200, {"status": "ok"})

    @app.get("/_emulator/stats")
    def stats() -> Response:
        return _json_response(200, injector.stats())

    @app.post("/_emulator/stats/reset")
    def reset_stats() -> Response:
        injector.reset_stats()
        return _json_response(200, injector.stats())

    @app.get("/_emulator/faults")
    def get_faults() -> Response:
        return _json_response(200, injector.faults())

    @app.put("/_emulator/faults")
    def put_faults() -> Response:
        try:
            body = json.loads(request.get_data() or b"{}")
            if not isinstance(body, dict):
                raise ValueError("the body must be a JSON object")
            return _json_response(200, injector.set_faults(body))
        except ValueError as exc:
            return error_response(validation(str(exc)))

    @app.delete("/_emulator/faults")
    def clear_faults() -> Response:
        return _json_response(200, injector.clear_faults())

    @app.errorhandler(404)
    def unknown_path(_error: Exception) -> Response:
        return error_response(ServiceError(404, "UnknownOperationException", "Unknown operation"))

    @app.errorhandler(405)
    def wrong_method(_error: Exception) -> Response:
        return error_response(ServiceError(405, "UnknownOperationException", "Unknown operation"))

    return app
