"""``POST /v1/enroll`` served in front of Flask (``service.api.direct``) answers as the Flask view does:
same statuses, error bodies, headers and metrics, the same body limit, chunked bodies included."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from flask import jsonify
from sqlalchemy import func, select
from werkzeug.test import EnvironBuilder

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore
from pki.store.schema import certificates
from pki.workload.client import make_csr
from service.api import create_app, metrics
from service.api.direct import DirectEnroll


def call(wsgi: Any, body: bytes | None, headers: dict[str, str], *, chunked: bool = False,
         path: str = "/v1/enroll", method: str = "POST") -> tuple[int, dict[str, str], Any]:
    environ = EnvironBuilder(path=path, method=method, data=body, headers=headers).get_environ()
    environ["REMOTE_ADDR"] = "127.0.0.1"
    if chunked:  # as gunicorn passes a chunked body: no length, input terminated
        environ.pop("CONTENT_LENGTH", None)
        environ["wsgi.input_terminated"] = True
        environ["wsgi.input"] = io.BytesIO(body or b"")
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        answer["status"] = int(status.split()[0])
        answer["headers"] = dict(response_headers)

    data = b"".join(wsgi(environ, start_response))
    assert answer["headers"]["Content-Length"] == str(len(data))
    return answer["status"], answer["headers"], json.loads(data)


def ca_csr(key: ec.EllipticCurvePrivateKey, cn: str) -> str:
    """A CSR asking for CA:TRUE, which a workload certificate never gets."""
    return (x509.CertificateSigningRequestBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode())


def refused_total(code: str) -> float:
    for family in metrics.REFUSED.collect():
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.labels == {"endpoint": "/v1/enroll", "error": code}:
                return sample.value
    return 0.0


def count(ca: CertificateAuthority) -> int:
    with ca.db.engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(certificates)).scalar() or 0)


@pytest.fixture
def apps(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> tuple[DirectEnroll, Any]:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "1000/h")
    app = create_app(ca=ca)
    direct = app.wsgi_app
    assert isinstance(direct, DirectEnroll)
    # the middleware, and Flask alone (its own /v1/enroll view), past the CRL middleware in between
    return direct, direct.fallback.fallback  # type: ignore[attr-defined]


def test_refusals_match_the_flask_view(ca: CertificateAuthority, apps: tuple[DirectEnroll, Any]) -> None:
    direct, flask_only = apps
    token = TokenStore(ca).create("web", cn="web-1", uses=5).token
    auth = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    key = ec.generate_private_key(ec.SECP256R1())
    cases: list[tuple[bytes | None, dict[str, str], int, str]] = [
        (b'{"key_type": "ec-p256"}', {}, 401, "unauthenticated"),
        (b'{"key_type": "ec-p256"}', {"Authorization": "Bearer rpk_e_0000000000000000." + "A" * 43}, 401,
         "invalid_token"),
        (b'{"key_type": "ec-p256"}', {"Authorization": "Bearer rpk_o_0000000000000000." + "A" * 43}, 401,
         "invalid_token"),
        (b'{"key_type": ', auth, 400, "malformed_json"),
        (b"[]", auth, 400, "malformed_json"),
        (b"", auth, 400, "malformed_json"),
        (b"x" * (65 * 1024), auth, 413, "body_too_large"),
        (b'{"key_type": "ec-p256", "unexpected": 1}', auth, 400, "invalid_input"),
        (json.dumps({"csr": make_csr(key, "web-2").decode()}).encode(), auth, 403, "forbidden"),
        (b'{"key_type": "ec-p256", "ttl": "400d"}', auth, 422, "policy_violation"),
        (json.dumps({"csr": ca_csr(key, "web-1")}).encode(), auth, 422, "policy_violation"),
        # The binding (403) is checked before what the CSR asks for (422), as documented.
        (json.dumps({"csr": ca_csr(key, "web-2")}).encode(), auth, 403, "forbidden"),
    ]
    before = count(ca)
    for body, headers, status, code in cases:
        refused = refused_total(code)
        got = call(direct, body, headers)
        assert got[0] == status and got[2]["error"] == code, (code, got)
        assert refused_total(code) == refused + 1
        assert got == call(flask_only, body, headers), code
        assert got[1]["Content-Type"] == "application/json" and got[1]["Cache-Control"] == "no-store"
        assert ("WWW-Authenticate" in got[1]) == (status == 401)
    assert count(ca) == before
    assert TokenStore(ca).authenticate(token).uses_left == 5


def test_issued_answers_match_the_flask_view(ca: CertificateAuthority, apps: tuple[DirectEnroll, Any]) -> None:
    direct, flask_only = apps
    token = TokenStore(ca).create("web", cn="web-1", uses=2).token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = json.dumps({"csr": make_csr(ec.generate_private_key(ec.SECP256R1()), "web-1").decode()}).encode()
    before = count(ca)
    a, b = call(direct, body, headers), call(flask_only, body, headers)
    assert a[0] == b[0] == 201
    assert {**a[1], "Content-Length": ""} == {**b[1], "Content-Length": ""}  # ECDSA signatures vary in length
    assert list(a[2]) == list(b[2])  # same fields, same order
    assert {k: v for k, v in a[2].items() if k not in ("serial", "not_before", "not_after", "certificate")} == \
        {k: v for k, v in b[2].items() if k not in ("serial", "not_before", "not_after", "certificate")}
    cert = x509.load_pem_x509_certificate(a[2]["certificate"].encode())
    assert format(cert.serial_number, "x") == a[2]["serial"].lower().lstrip("0")
    assert count(ca) == before + 2
    assert call(direct, body, headers)[2]["error"] == "token_used"


def test_chunked_bodies_and_the_limit(ca: CertificateAuthority, apps: tuple[DirectEnroll, Any]) -> None:
    direct, flask_only = apps
    token = TokenStore(ca).create("web", cn="web-1", uses=3).token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    for wsgi in (direct, flask_only):
        assert call(wsgi, b'{"key_type": "ec-p256"}', headers, chunked=True)[0] == 201
    # Past the limit: 413 (Flask alone cuts such a body at the limit and answers 400, unparsable).
    status, _, answer = call(direct, b" " * (64 * 1024) + b"{}", headers, chunked=True)
    assert status == 413 and answer["error"] == "body_too_large"
    assert call(direct, b" " * (64 * 1024 - 2) + b"{}", headers, chunked=True)[2]["error"] == "invalid_input"


def test_other_routes_and_methods_go_to_flask(apps: tuple[DirectEnroll, Any]) -> None:
    direct, _ = apps
    assert call(direct, None, {}, method="GET")[0] == 405
    assert call(direct, b"{}", {}, path="/v1/enroll/")[0] in (404, 308)
    assert call(direct, None, {}, path="/healthz", method="GET")[0] == 200


def test_rate_limits_count_both_paths(ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "3/1h")
    direct = create_app(ca=ca).wsgi_app
    other_worker = create_app(ca=ca).wsgi_app.fallback  # type: ignore[attr-defined]
    token = TokenStore(ca).create("web", cn="web-1", uses=10).token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = b'{"key_type": "ec-p256"}'
    statuses = [call(w, body, headers)[0] for w in (direct, other_worker, direct)]
    assert statuses == [201, 201, 201]
    status, response_headers, answer = call(other_worker, body, headers)
    assert status == 429 and answer["error"] == "rate_limited" and int(response_headers["Retry-After"]) >= 1
    assert call(direct, body, headers)[0] == 429
    assert TokenStore(ca).authenticate(token).uses_left == 7


def test_requests_without_a_token_count_against_the_address(ca: CertificateAuthority,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_ADDRESS", "3/1h")
    direct = create_app(ca=ca).wsgi_app
    token = TokenStore(ca).create("web", cn="web-1", uses=5).token
    good = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    body = b'{"key_type": "ec-p256"}'
    assert call(direct, body, {})[0] == 401
    assert call(direct, body, {"Authorization": "Bearer not-a-token"})[0] == 401
    assert call(direct, body, good)[0] == 201
    assert call(direct, body, {})[2]["error"] == "rate_limited"
    assert call(direct, body, good)[2]["error"] == "rate_limited"
    assert TokenStore(ca).authenticate(token).uses_left == 4


def test_one_json_provider_for_flask_and_the_middleware(apps: tuple[DirectEnroll, Any]) -> None:
    direct, flask_only = apps
    app = flask_only.__self__  # the Flask app whose wsgi_app the middleware wraps
    value = {"z": "é ü", "a": [1, 2], "when": datetime(2026, 11, 28, 12, 0, tzinfo=UTC)}
    with app.app_context():
        flask_bytes = jsonify(value).get_data()
    assert flask_bytes == f"{direct._encode(value)}\n".encode()  # the bytes the middleware sends
    assert flask_bytes.startswith(b'{"z":"\xc3\xa9 \xc3\xbc","a":[1,2],')  # insertion order, compact, UTF-8
    assert json.loads(flask_bytes)["when"] == "Sat, 28 Nov 2026 12:00:00 GMT"  # Flask's datetime form
