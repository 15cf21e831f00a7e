"""Hostile inputs, counted: a table of requests, command lines and files built to break rapki, each
of which must be refused cleanly.

* HTTP (the app in-process, through Werkzeug's client): every answer a 4xx with the JSON error body
  ``{"error": ..., "message": ...}``, never a 5xx, and nothing written (row counts of certificates,
  tokens and the audit log, and the tokens' uses left, the same before and after).
* CLI (``rapki`` in-process through click's runner): exit 2, one line on stderr, no traceback, and
  nothing written; malformed ``rapki.toml`` variants each in a copy of the home.
* Files: broken PEM/DER, binary, empty and misnamed files given to the commands that read a
  certificate, a CSR, a key or a CA bundle.

The test prints ``hostile inputs: N tried, T tracebacks, F 5xx`` for the closing note of the issue.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import tomllib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import tomli_w
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID
from werkzeug.test import Client

from pki.ca.home import Home
from pki.ca.tokens import TokenStore
from service.api import create_app
from service.cli import main
from tests.conftest import PASSPHRASE, make_ca

MIN_HOSTILE_INPUTS = 150  # issue 14's target across HTTP, CLI and files


# --- the world the inputs are thrown at --------------------------------------------------------
@dataclass
class Target:
    home: Path
    files: Path
    enrollment_token: str  # CN pattern web-[0-9]+, many uses
    single_token: str  # exactly web-5, one use
    operator_token: str
    serial: str  # an active workload certificate
    token_id: str
    workload_pem: str
    foreign_pem: str  # a certificate from another CA
    problems: list[str] = field(default_factory=list)
    tried: dict[str, int] = field(default_factory=lambda: {"HTTP": 0, "CLI": 0, "files": 0})
    tracebacks: int = 0
    server_errors: int = 0

    def state(self, home: Path | None = None) -> tuple[int, ...]:
        """What a refusal must leave unchanged: row counts and the tokens' uses left."""
        db = sqlite3.connect((home or self.home) / "rapki.db")
        try:
            return tuple(db.execute(query).fetchone()[0] or 0 for query in (
                "SELECT count(*) FROM certificates", "SELECT count(*) FROM enrollment_tokens",
                "SELECT count(*) FROM audit_log", "SELECT sum(uses_left) FROM enrollment_tokens",
                "SELECT count(*) FROM certificates WHERE revoked_at IS NOT NULL",
                "SELECT count(*) FROM enrollment_tokens WHERE revoked_at IS NOT NULL"))
        finally:
            db.close()


def _csr(key: Any, cn: str | None, algorithm: hashes.HashAlgorithm | None = None,
         names: list[x509.NameAttribute] | None = None) -> str:
    attributes = names if names is not None else ([x509.NameAttribute(NameOID.COMMON_NAME, cn)] if cn else [])
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if algorithm is None and not isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm = hashes.SHA256()
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def _resigned_csr(key: Any, algorithm: str, *, oid: str | None = None, signer: Any = None) -> str:
    """A CSR for web-1 signed with ``algorithm`` (asn1crypto's name), which cryptography will not
    produce itself (SHA-1, MD5); ``oid`` names the signature algorithm instead, ``signer`` signs
    with another key than the CSR's."""
    from asn1crypto import csr as asn1_csr
    from asn1crypto.core import Sequence
    from cryptography.hazmat.primitives.asymmetric import padding

    request = asn1_csr.CertificationRequest.load(
        x509.load_pem_x509_csr(_csr(key, "web-1").encode()).public_bytes(serialization.Encoding.DER))
    info = request["certification_request_info"]
    digest = {"sha1": hashes.SHA1(), "md5": hashes.MD5(), "sha256": hashes.SHA256()}[algorithm.split("_")[0]]  # noqa: S303 - weak hashes on purpose
    signing = signer or key
    signature = (signing.sign(info.dump(), ec.ECDSA(digest)) if isinstance(signing, ec.EllipticCurvePrivateKey)
                 else signing.sign(info.dump(), padding.PKCS1v15(), digest))
    signed = asn1_csr.CertificationRequest({"certification_request_info": info,
                                            "signature_algorithm": {"algorithm": algorithm}, "signature": signature})
    der = signed.dump()
    if oid is not None:
        named = Sequence.load(signed["signature_algorithm"].dump())[0].dump()
        from asn1crypto.core import ObjectIdentifier
        der = der.replace(named, ObjectIdentifier(oid).dump())
    return "-----BEGIN CERTIFICATE REQUEST-----\n" + __import__("base64").encodebytes(der).decode() + \
        "-----END CERTIFICATE REQUEST-----\n"


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
        patch.delenv("RAPKI_DATABASE_URL", raising=False)
        patch.delenv("RAPKI_HOME", raising=False)
        tmp = tmp_path_factory.mktemp("hostile")
        ca = make_ca(tmp / "home")
        Home(tmp / "home").update_section("api", {"rate_limit_per_address": "off", "rate_limit_per_identity": "off"})
        tokens = TokenStore(ca)
        issued = ca.issue("web", cn="web-1")
        foreign = make_ca(tmp / "foreign").issue("web", cn="web-1")
        world = Target(
            home=tmp / "home", files=tmp / "files",
            enrollment_token=tokens.create("web", cn_pattern=r"web-[0-9]+", uses=1000, ttl=timedelta(hours=1)).token,
            single_token=tokens.create("web", cn="web-5").token,
            operator_token=tokens.create_operator("hostile").token,
            serial=issued.serial_hex, token_id=tokens.create("web", cn="web-6").record.id,
            workload_pem=issued.cert_pem.text(), foreign_pem=foreign.cert_pem.text())
        world.files.mkdir()
        ca.db.engine.dispose()
        yield world


# --- HTTP ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Http:
    label: str
    method: str
    path: str
    body: bytes | None = None
    auth: str | None = "enrollment"  # enrollment, single, operator, certificate, foreign, raw:<header>, None
    environ: tuple[tuple[str, str], ...] = ()


def _j(value: Any) -> bytes:
    return json.dumps(value).encode()


EC_KEY = ec.generate_private_key(ec.SECP256R1())
RSA_1024 = rsa.generate_private_key(65537, 1024)
RSA_E3 = rsa.generate_private_key(3, 2048)


def _http_cases() -> list[Http]:
    enroll = [  # POST /v1/enroll with a valid token: each body is wrong in its own way
        ("empty body", b""), ("whitespace body", b"   \n"), ("truncated JSON", b'{"key_type": "ec-p256"'),
        ("JSON null", b"null"), ("JSON array", b"[]"), ("JSON string", b'"ec-p256"'), ("JSON number", b"42"),
        ("huge exponent", b"1e999999"), ("huge integer", b"9" * 5000), ("NaN", b"NaN"),
        ("invalid UTF-8", b'{"key_type": "ec-p256", "cn": "web-\xff\xfe"}'), ("UTF-16 body", '{"key_type": "ec-p256"}'.encode("utf-16")),
        ("BOM then JSON", b'\xef\xbb\xbf{"key_type": "ec-p256", "cn": "web-1"}'),
        ("deep nesting", b"[" * 100_000 + b"]" * 100_000), ("deep object nesting", b'{"a":' * 5000 + b"1" + b"}" * 5000),
        ("over 64 KiB", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "x" * 70_000})),
        ("lone surrogate", b'{"key_type": "ec-p256", "cn": "web-\\ud800"}'),
        ("duplicated field, last invalid", b'{"key_type": "ec-p256", "cn": "web-1", "key_type": "rsa-1"}'),
        ("unknown field", _j({"key_type": "ec-p256", "cn": "web-1", "admin": True})),
        ("csr and key_type", _j({"csr": _csr(EC_KEY, "web-1"), "key_type": "ec-p256"})),
        ("neither csr nor key_type", _j({"cn": "web-1"})),
        ("key_type wrong type", _j({"key_type": 256, "cn": "web-1"})), ("key_type list", _j({"key_type": ["ec-p256"], "cn": "web-1"})),
        ("key_type unknown", _j({"key_type": "rsa-512", "cn": "web-1"})), ("key_type dsa", _j({"key_type": "dsa-1024", "cn": "web-1"})),
        ("cn missing for pattern token", _j({"key_type": "ec-p256"})), ("cn wrong type", _j({"key_type": "ec-p256", "cn": 1})),
        ("cn with NUL", _j({"key_type": "ec-p256", "cn": "web-1\x00.evil"})), ("cn with newline", _j({"key_type": "ec-p256", "cn": "web-1\nweb-2"})),
        ("cn wildcard", _j({"key_type": "ec-p256", "cn": "*"})), ("cn off pattern", _j({"key_type": "ec-p256", "cn": "admin"})),
        ("cn huge", _j({"key_type": "ec-p256", "cn": "web-" + "1" * 5000})), ("cn empty", _j({"key_type": "ec-p256", "cn": ""})),
        ("cn with RTL override", _j({"key_type": "ec-p256", "cn": "web-1\u202e"})),
        ("san wildcard", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["dns:*.example.com"]})),
        ("san other domain", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["dns:evil.com"]})),
        ("san ip", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["ip:127.0.0.1"]})),
        ("san unknown kind", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["email:a@example.com"]})),
        ("san no kind, off the profile", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["evil.com"]})),
        ("san javascript uri", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["uri:javascript:alert(1)"]})),
        ("san NUL", _j({"key_type": "ec-p256", "cn": "web-1", "sans": ["dns:a.example.com\x00.evil.com"]})),
        ("sans not a list", _j({"key_type": "ec-p256", "cn": "web-1", "sans": "dns:a.example.com"})),
        ("sans of numbers", _j({"key_type": "ec-p256", "cn": "web-1", "sans": [1, 2]})),
        ("sans nested", _j({"key_type": "ec-p256", "cn": "web-1", "sans": [["dns:a.example.com"]]})),
        ("ttl overflow", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "99999999999999d"})),
        ("ttl negative", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "-5m"})),
        ("ttl zero", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "0s"})),
        ("ttl over profile", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "3650d"})),
        ("ttl number", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": 3600})),
        ("ttl empty", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": ""})),
        ("ttl words", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "forever"})),
        ("ttl float", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "1.5h"})),
        ("ttl huge digits", _j({"key_type": "ec-p256", "cn": "web-1", "ttl": "9" * 5000 + "s"})),
        ("format unknown", _j({"key_type": "ec-p256", "cn": "web-1", "format": "der"})),
        ("pkcs12 no password", _j({"key_type": "ec-p256", "cn": "web-1", "format": "pkcs12"})),
        ("pkcs12 short password", _j({"key_type": "ec-p256", "cn": "web-1", "format": "pkcs12", "password": "abc"})),
        ("password wrong type", _j({"key_type": "ec-p256", "cn": "web-1", "format": "pkcs12", "password": 12345678})),
        ("profile mismatch", _j({"key_type": "ec-p256", "cn": "web-1", "profile": "ops"})),
        ("profile traversal", _j({"key_type": "ec-p256", "cn": "web-1", "profile": "../../etc/passwd"})),
        ("csr garbage", _j({"csr": "not a csr"})), ("csr wrong type", _j({"csr": {"pem": "x"}})),
        ("csr bad base64", _j({"csr": "-----BEGIN CERTIFICATE REQUEST-----\n!!!!\n-----END CERTIFICATE REQUEST-----\n"})),
        ("csr is a certificate", None),
        ("csr ECDSA with SHA-1", _j({"csr": _resigned_csr(EC_KEY, "sha1_ecdsa")})),
        ("csr RSA with SHA-1", _j({"csr": _resigned_csr(RSA_E3, "sha1_rsa")})),
        ("csr RSA with MD5", _j({"csr": _resigned_csr(RSA_E3, "md5_rsa")})),
        ("csr unknown signature algorithm", _j({"csr": _resigned_csr(EC_KEY, "sha256_ecdsa", oid="1.2.840.10045.4.3.9")})),
        ("csr signature of another key", _j({"csr": _resigned_csr(EC_KEY, "sha256_ecdsa", signer=ec.generate_private_key(ec.SECP256R1()))})),
        ("csr RSA 1024", _j({"csr": _csr(RSA_1024, "web-1", hashes.SHA256())})),
        ("csr RSA e=3 off pattern", _j({"csr": _csr(RSA_E3, "evil", hashes.SHA256())})),
        ("csr Ed25519", _j({"csr": _csr(ed25519.Ed25519PrivateKey.generate(), "web-1")})),
        ("csr secp256k1", _j({"csr": _csr(ec.generate_private_key(ec.SECP256K1()), "web-1", hashes.SHA256())})),
        ("csr without CN", _j({"csr": _csr(EC_KEY, None, hashes.SHA256())})),
        ("csr two CNs", _j({"csr": _csr(EC_KEY, None, hashes.SHA256(), [x509.NameAttribute(NameOID.COMMON_NAME, "web-1"),
                                                                         x509.NameAttribute(NameOID.COMMON_NAME, "web-2")])})),
        ("csr CN with NUL", _j({"csr": _csr(EC_KEY, "web-1\x00evil", hashes.SHA256())})),
        ("csr tampered", None),
    ]
    cases = [Http(f"enroll: {label}", "POST", "/v1/enroll", body) for label, body in enroll if body is not None]
    cases += [
        Http("enroll: csr is a certificate", "POST", "/v1/enroll", b"CERT"),
        Http("enroll: csr tampered", "POST", "/v1/enroll", b"TAMPERED"),
        Http("enroll: single-use token, other CN", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-6"}),
             auth="single"),
        Http("enroll: operator token", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}), auth="operator"),
        Http("enroll: no credentials", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}), auth=None),
        Http("enroll: basic auth", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}), auth="raw:Basic YTpi"),
        Http("enroll: forged secret", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}), auth="forged"),
        Http("enroll: huge token", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}),
             auth="raw:Bearer rpk_e_" + "a" * 8000),
        Http("enroll: token with traversal", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}),
             auth="raw:Bearer rpk_e_../../../etc/passwd.x"),
        Http("enroll: token with NUL", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}),
             auth="raw:Bearer rpk_e_0123456789abcdef\x00.x"),
        Http("enroll: header injection in token", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}),
             auth="raw:Bearer x\r\nX-Rapki-Operator: yes"),
        Http("enroll: SQL in token", "POST", "/v1/enroll", _j({"key_type": "ec-p256", "cn": "web-1"}),
             auth="raw:Bearer rpk_e_' OR 1=1 --.x"),
        Http("enroll: Content-Length lies high", "POST", "/v1/enroll", b"{}", environ=(("CONTENT_LENGTH", "99999999999"),)),
        Http("enroll: Content-Length negative", "POST", "/v1/enroll", b"{}", environ=(("CONTENT_LENGTH", "-1"),)),
        Http("enroll: Content-Length not a number", "POST", "/v1/enroll", b"{}", environ=(("CONTENT_LENGTH", "abc"),)),
    ]
    traversals = ["..%2f..%2fetc%2fpasswd", "%2e%2e", "%00", "zz", "0x", "-1", "0", "9" * 5000, "0x" + "f" * 5000,
                  "%27%20OR%201%3D1--", "a" * 10_000, "%E2%80%AE", "1;DROP TABLE certificates", "%ff%fe"]
    cases += [Http(f"show certificate: {s[:20]}", "GET", f"/v1/certificates/{s}", auth="operator") for s in traversals]
    cases += [Http(f"revoke token: {s[:20]}", "DELETE", f"/v1/tokens/{s}", auth="operator") for s in traversals]
    cases += [Http(f"revoke certificate: {label}", "POST", "/v1/revoke", body, auth="operator") for label, body in [
        ("no serial", _j({})), ("serial traversal", _j({"serial": "../../etc/passwd"})), ("serial number", _j({"serial": 12})),
        ("serial empty", _j({"serial": ""})), ("serial unknown", _j({"serial": "deadbeef"})),
        ("serial huge", _j({"serial": "f" * 5000})), ("reason unknown", None), ("reason removeFromCRL", None),
        ("reason wrong type", None), ("unknown field", None)] if body is not None]
    for label, reason in [("reason unknown", "stolen"), ("reason removeFromCRL", "removeFromCRL"), ("reason wrong type", 1),
                          ("reason NUL", "keyCompromise\x00")]:
        cases.append(Http(f"revoke certificate: {label}", "POST", "/v1/revoke", b"SERIAL:" + _j(reason), auth="operator"))
    cases += [Http(f"create token: {label}", "POST", "/v1/tokens", _j(body), auth="operator") for label, body in [
        ("uses 0", {"profile": "web", "cn": "web-7", "uses": 0}), ("uses negative", {"profile": "web", "cn": "web-7", "uses": -1}),
        ("uses over the maximum", {"profile": "web", "cn": "web-7", "uses": 100_001}),
        ("uses huge", {"profile": "web", "cn": "web-7", "uses": 10**40}), ("uses float", {"profile": "web", "cn": "web-7", "uses": 1.5}),
        ("uses string", {"profile": "web", "cn": "web-7", "uses": "5"}), ("uses true", {"profile": "web", "cn": "web-7", "uses": True}),
        ("ttl overflow", {"profile": "web", "cn": "web-7", "ttl": "99999999999999d"}),
        ("ttl negative", {"profile": "web", "cn": "web-7", "ttl": "-1h"}), ("ttl too short", {"profile": "web", "cn": "web-7", "ttl": "10s"}),
        ("ttl too long", {"profile": "web", "cn": "web-7", "ttl": "31d"}), ("ttl number", {"profile": "web", "cn": "web-7", "ttl": 900}),
        ("no profile", {"cn": "web-7"}), ("profile unknown", {"profile": "nope", "cn": "web-7"}),
        ("profile traversal", {"profile": "../web", "cn": "web-7"}), ("profile number", {"profile": 1, "cn": "web-7"}),
        ("cn and pattern", {"profile": "web", "cn": "web-7", "cn_pattern": "web-.*"}), ("neither cn nor pattern", {"profile": "web"}),
        ("cn off the profile", {"profile": "web", "cn": "root"}), ("cn with NUL", {"profile": "web", "cn": "web-7\x00"}),
        ("pattern invalid", {"profile": "web", "cn_pattern": "["}), ("pattern backreference", {"profile": "web", "cn_pattern": r"(a)\1"}),
        ("pattern lookahead", {"profile": "web", "cn_pattern": "(?=web)web-1"}), ("pattern huge", {"profile": "web", "cn_pattern": "a{99999}"}),
        ("unknown field", {"profile": "web", "cn": "web-7", "admin": True}),
    ]]
    cases += [
        Http("create token: enrollment token as operator", "POST", "/v1/tokens", _j({"profile": "web", "cn": "web-7"})),
        Http("create token: workload certificate", "POST", "/v1/tokens", _j({"profile": "web", "cn": "web-7"}), auth="certificate"),
        Http("create token: foreign certificate", "POST", "/v1/tokens", _j({"profile": "web", "cn": "web-7"}), auth="foreign"),
        Http("list tokens: no credentials", "GET", "/v1/tokens", auth=None),
        Http("renew: no certificate", "POST", "/v1/renew", _j({}), auth=None),
        Http("renew: foreign certificate", "POST", "/v1/renew", _j({}), auth="foreign"),
        Http("renew: adds a name", "POST", "/v1/renew", _j({"csr": _csr(EC_KEY, "web-2", hashes.SHA256())}), auth="certificate"),
        Http("renew: ttl overflow", "POST", "/v1/renew", _j({"ttl": "99999999999999d"}), auth="certificate"),
        Http("renew: signature header garbage", "POST", "/v1/renew", _j({}), auth=None,
             environ=(("HTTP_X_RAPKI_CERTIFICATE", "x"), ("HTTP_X_RAPKI_SIGNATURE", "y"), ("HTTP_X_RAPKI_TIMESTAMP", "-1"))),
        Http("crl: issuer traversal", "GET", "/v1/crl?issuer=../../etc/passwd", auth=None),
        Http("crl: issuer NUL", "GET", "/v1/crl?issuer=%00", auth=None),
        Http("method: PUT enroll", "PUT", "/v1/enroll", b"{}"), Http("method: DELETE root", "DELETE", "/v1/ca/root"),
        Http("method: TRACE", "TRACE", "/v1/ca/chain"), Http("path: unknown", "GET", "/v1/admin"),
        Http("path: traversal", "GET", "/v1/../../etc/passwd"), Http("path: static", "GET", "/static/../rapki.toml"),
        Http("path: encoded traversal", "GET", "/v1/%2e%2e/%2e%2e/rapki.db"),
    ]
    return cases


def _auth(target: Target, case: Http) -> tuple[dict[str, str], dict[str, str]]:
    environ = {"REMOTE_ADDR": "192.0.2.7", **dict(case.environ)}
    tokens = {"enrollment": target.enrollment_token, "single": target.single_token, "operator": target.operator_token,
              "forged": target.enrollment_token.split(".")[0] + "." + "A" * 43}
    if case.auth in tokens:
        environ["HTTP_AUTHORIZATION"] = f"Bearer {tokens[case.auth]}"
    elif case.auth == "certificate":
        environ["SSL_CLIENT_CERT"] = target.workload_pem
    elif case.auth == "foreign":
        environ["SSL_CLIENT_CERT"] = target.foreign_pem
    elif case.auth is not None and case.auth.startswith("raw:"):
        environ["HTTP_AUTHORIZATION"] = case.auth[4:]  # in the environ: Werkzeug's client refuses a newline in a header
    return {"Content-Type": "application/json"}, environ


def _body(target: Target, case: Http) -> bytes | None:
    """Bodies that need the target: a certificate where a CSR belongs, a CSR altered after signing."""
    if case.body == b"CERT":
        return _j({"csr": target.workload_pem})
    if case.body == b"TAMPERED":
        good = x509.load_pem_x509_csr(_csr(EC_KEY, "web-1", hashes.SHA256()).encode()).public_bytes(serialization.Encoding.DER)
        tampered = good.replace(b"web-1", b"web-2")
        return _j({"csr": x509.load_der_x509_csr(tampered).public_bytes(serialization.Encoding.PEM).decode()})
    if case.body is not None and case.body.startswith(b"SERIAL:"):
        return _j({"serial": target.serial, "reason": json.loads(case.body[7:])})
    return case.body


def run_http(target: Target, client: Client) -> None:
    for case in _http_cases():
        headers, environ = _auth(target, case)
        before = target.state()
        response = client.open(case.path, method=case.method, headers=headers, data=_body(target, case),
                               environ_overrides=environ)
        target.tried["HTTP"] += 1
        text = response.get_data(as_text=True)
        if response.status_code >= 500:
            target.server_errors += 1
        if "Traceback" in text:
            target.tracebacks += 1
        problem = _http_problem(response.status_code, response.headers.get("Content-Type", ""), text)
        if problem is None and target.state() != before:
            problem = "wrote to the database"
        if problem:
            target.problems.append(f"HTTP {case.label}: {problem}: {response.status_code} {text[:200]}")


def _http_problem(status: int, content_type: str, text: str) -> str | None:
    if not 400 <= status < 500:
        return "not a 4xx"
    if not content_type.startswith("application/json"):
        return f"content type {content_type}"
    try:
        body = json.loads(text)
    except ValueError:
        return "body not JSON"
    if not (isinstance(body, dict) and isinstance(body.get("error"), str) and isinstance(body.get("message"), str)
            and body["error"] and body["message"]):
        return "not the error body"
    return None


# --- CLI -------------------------------------------------------------------------------------------
def _cli_cases(target: Target) -> list[tuple[str, list[str]]]:
    h = ["--home", str(target.home)]
    cases: list[tuple[str, list[str]]] = []
    for label, extra in [
        ("ttl overflow", ["--ttl", "99999999999999d"]), ("ttl negative", ["--ttl", "-5m"]), ("ttl zero", ["--ttl", "0s"]),
        ("ttl words", ["--ttl", "forever"]), ("ttl empty", ["--ttl", ""]), ("ttl over profile", ["--ttl", "3650d"]),
        ("ttl huge digits", ["--ttl", "9" * 5000]), ("cn off pattern", ["--cn", "root"]), ("cn NUL", ["--cn", "web-1\x00x"]),
        ("cn empty", ["--cn", ""]), ("san wildcard", ["--cn", "web-1", "--san", "dns:*.example.com"]),
        ("san unknown kind", ["--cn", "web-1", "--san", "ip:1.2.3.4"]), ("san no kind", ["--cn", "web-1", "--san", "x"]),
        ("key type unknown", ["--cn", "web-1", "--key-type", "rsa-512"]), ("missing cn", []),
        ("csr missing", ["--csr", str(target.files / "nope.pem")]), ("csr a directory", ["--csr", str(target.files)]),
        ("csr and key type", ["--csr", "CSR", "--key-type", "ec-p256"]),
        ("out is a file", ["--cn", "web-1", "--out", "FILE"]), ("unknown flag", ["--cn", "web-1", "--admin"]),
    ]:
        cases.append((f"issue: {label}", ["issue", *h, "--profile", "web", *extra]))
    cases.append(("issue: profile unknown", ["issue", *h, "--profile", "nope", "--cn", "web-1"]))
    cases.append(("issue: profile missing", ["issue", *h, "--cn", "web-1"]))
    for label, extra in [
        ("uses 0", ["--uses", "0"]), ("uses negative", ["--uses", "-1"]), ("uses over the maximum", ["--uses", "100001"]),
        ("uses words", ["--uses", "many"]), ("uses huge", ["--uses", "1" + "0" * 40]), ("uses float", ["--uses", "1.5"]),
        ("ttl overflow", ["--ttl", "99999999999999d"]), ("ttl too short", ["--ttl", "10s"]), ("ttl too long", ["--ttl", "31d"]),
        ("ttl negative", ["--ttl", "-1h"]),
    ]:
        cases.append((f"token create: {label}", ["token", "create", *h, "--profile", "web", "--cn", "web-7", *extra]))
    for label, extra in [
        ("cn and pattern", ["--cn", "web-7", "--cn-pattern", "web-.*"]), ("neither cn nor pattern", []),
        ("pattern invalid", ["--cn-pattern", "["]), ("pattern backreference", ["--cn-pattern", r"(a)\1"]),
        ("cn off profile", ["--cn", "root"]),
    ]:
        cases.append((f"token create: {label}", ["token", "create", *h, "--profile", "web", *extra]))
    cases.append(("token create: profile unknown", ["token", "create", *h, "--profile", "nope", "--cn", "web-7"]))
    for command in ("add", "update"):
        name = "new" if command == "add" else "web"
        for label, extra in [
            ("pattern invalid", ["--cn-pattern", "["]), ("pattern backreference", ["--cn-pattern", r"(x)\1"]),
            ("san pattern invalid", ["--cn-pattern", "x", "--san-dns-pattern", "("]),
            ("max ttl words", ["--cn-pattern", "x", "--max-ttl", "lots"]),
            ("max ttl overflow", ["--cn-pattern", "x", "--max-ttl", "99999999999999d"]),
            ("default over max", ["--cn-pattern", "x", "--default-ttl", "30d", "--max-ttl", "1d"]),
            ("key types unknown", ["--cn-pattern", "x", "--key-types", "dsa-1024"]),
            ("key types empty", ["--cn-pattern", "x", "--key-types", ""]),
            ("session duration words", ["--cn-pattern", "x", "--session-duration", "long"]),
            ("session duration negative", ["--cn-pattern", "x", "--session-duration", "-1"]),
        ]:
            cases.append((f"profile {command}: {label}", ["profile", command, *h, name, *extra]))
    cases += [
        ("profile add: name exists", ["profile", "add", *h, "web", "--cn-pattern", "x"]),
        ("profile add: name with slash", ["profile", "add", *h, "../evil", "--cn-pattern", "x"]),
        ("profile add: name empty", ["profile", "add", *h, "", "--cn-pattern", "x"]),
        ("profile update: unknown", ["profile", "update", *h, "nope", "--cn-pattern", "x"]),
    ]
    for label, serial in [("hex garbage", "zz"), ("empty", ""), ("traversal", "../../etc/passwd"), ("huge", "f" * 5000),
                          ("unknown", "deadbeef"), ("negative", "-1"), ("NUL", "ab\x00cd")]:
        cases.append((f"revoke: {label}", ["revoke", *h, serial]))
        cases.append((f"show: {label}", ["show", *h, serial]))
    cases.append(("revoke: reason unknown", ["revoke", *h, target.serial, "--reason", "stolen"]))
    cases.append(("revoke: removeFromCRL", ["revoke", *h, target.serial, "--reason", "removeFromCRL"]))
    cases += [
        ("list: status unknown", ["list", *h, "--status", "lost"]), ("list: limit 0", ["list", *h, "--limit", "0"]),
        ("list: limit words", ["list", *h, "--limit", "ten"]), ("list: expiring words", ["list", *h, "--expiring-within", "soon"]),
        ("list: expiring overflow", ["list", *h, "--expiring-within", "99999999999999d"]),
        ("crl: unknown subcommand", ["crl", "burn", *h]), ("crl build: unknown flag", ["crl", "build", *h, "--all-of-them"]),
        ("crl publish: lock timeout negative", ["crl", "publish", *h, "--lock-timeout", "-1"]),
        ("ca sign-intermediate: key type unknown", ["ca", "sign-intermediate", *h, "--key-type", "dsa"]),
        ("ca sign-intermediate: lifetime words", ["ca", "sign-intermediate", *h, "--lifetime", "forever"]),
        ("ca sign-intermediate: lifetime overflow", ["ca", "sign-intermediate", *h, "--lifetime", "99999999999999d"]),
        ("ca sign-intermediate: root key missing", ["ca", "sign-intermediate", *h, "--root-key", str(target.files / "nope")]),
        ("home: a file", ["list", "--home", "FILE"]), ("home: missing", ["list", "--home", str(target.files / "no-home")]),
        ("unknown command", ["mint", *h]),
    ]
    return cases


# Whole files, or (section, key, value) set in the home's own rapki.toml.
BROKEN_TOML: dict[str, bytes | tuple[str, str, Any]] = {
    "not UTF-8": b"[ca]\nkey_type = \"\xff\xfe\"\n", "syntax error": b"[ca\nkey_type = ", "binary": bytes(range(256)),
    "NUL bytes": b"[ca]\x00\nkey_type = 1\n", "duplicate table": b"[ca]\n[ca]\n",
    "serial_bytes words": ("ca", "serial_bytes", "lots"), "serial bytes huge": ("ca", "serial_bytes", 2**62),
    "serial bytes negative": ("ca", "serial_bytes", -4), "serial bytes float": ("ca", "serial_bytes", 1.5),
    "key type unknown": ("ca", "key_type", "dsa-1024"), "key type a table": ("ca", "key_type", {"a": 1}),
    "database url number": ("database", "url", 5), "database url foreign": ("database", "url", "mysql://root@127.0.0.1/x"),
    "sqlite synchronous unknown": ("database", "sqlite_synchronous", "sometimes"),
    "crl validity words": ("crl", "validity", "lots"), "crl validity overflow": ("crl", "validity", "99999999999999d"),
    "crl validity negative": ("crl", "validity", -5), "section a string": ("ca", "", "x"),
    "crl a list": ("crl", "", [1, 2]),
}


def _broken_config(original: bytes, variant: bytes | tuple[str, str, Any]) -> bytes:
    if isinstance(variant, bytes):
        return variant
    section, key, value = variant
    document = tomllib.loads(original.decode())
    if key:
        document.setdefault(section, {})[key] = value
    else:
        document[section] = value
    return tomli_w.dumps(document).encode()


def run_cli(target: Target, tmp: Path) -> None:
    runner = CliRunner()
    a_file = tmp / "a-file"
    a_file.write_text("x")
    csr = tmp / "good.csr"
    csr.write_text(_csr(EC_KEY, "web-1", hashes.SHA256()))
    substitutions = {"FILE": str(a_file), "CSR": str(csr)}
    for label, args in _cli_cases(target):
        _check_cli(target, runner, f"CLI {label}", [substitutions.get(a, a) for a in args], "CLI")
    for label, text in BROKEN_TOML.items():  # each in a copy of the home: the config is read before anything else
        home = tmp / f"toml-{len(target.problems)}-{target.tried['CLI']}"
        shutil.copytree(target.home, home)
        config = home / "rapki.toml"
        original = config.read_bytes()
        config.write_bytes(_broken_config(original, text))
        _check_cli(target, runner, f"rapki.toml {label}", ["list", "--home", str(home)], "CLI", home=home)


def _check_cli(target: Target, runner: CliRunner, label: str, args: list[str], kind: str,
               home: Path | None = None, diagnosis: str | None = None) -> None:
    """Refused: exit 2 and one line on stderr. With ``diagnosis`` (``rapki doctor``, whose job is to
    read what it is given and report): exit 1 and that check reported as FAIL."""
    before = target.state(home)
    result = runner.invoke(main, args, catch_exceptions=True)
    target.tried[kind] += 1
    stderr = result.stderr
    traceback = (result.exception is not None and not isinstance(result.exception, SystemExit)) \
        or "Traceback" in stderr or "Traceback" in result.stdout
    if traceback:
        target.tracebacks += 1
        target.problems.append(f"{label}: traceback {result.exception!r} ({args[:4]})")
        return
    lines = stderr.strip().splitlines()
    if diagnosis is not None:
        if result.exit_code != 1 or f"FAIL  {diagnosis}" not in result.stdout:
            target.problems.append(f"{label}: exit {result.exit_code}, no FAIL for {diagnosis}: {result.stdout[-300:]!r}")
    elif result.exit_code != 2 or len(lines) != 1:
        target.problems.append(f"{label}: exit {result.exit_code}, stderr {stderr.strip()[:300]!r}")
    if target.state(home) != before:
        target.problems.append(f"{label}: wrote to the database")


# --- files ---------------------------------------------------------------------------------------
def _broken_files(target: Target) -> dict[str, bytes]:
    cert_der = x509.load_pem_x509_certificate(target.workload_pem.encode()).public_bytes(serialization.Encoding.DER)
    key_pem = EC_KEY.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption())
    return {
        "empty": b"", "binary": bytes(range(256)) * 4, "NUL bytes": b"\x00" * 512,
        "PEM header only": b"-----BEGIN CERTIFICATE-----\n",
        "PEM bad base64": b"-----BEGIN CERTIFICATE-----\n!!!notbase64!!!\n-----END CERTIFICATE-----\n",
        "PEM of garbage": b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
        "PEM of a truncated certificate": b"-----BEGIN CERTIFICATE-----\n"
        + __import__("base64").encodebytes(cert_der[: len(cert_der) // 2]) + b"-----END CERTIFICATE-----\n",
        "truncated DER": cert_der[: len(cert_der) // 2], "DER with trailing junk": cert_der + b"JUNK",
        "PEM label mismatch": key_pem.replace(b"PRIVATE KEY", b"CERTIFICATE"),
        "UTF-16 PEM": target.workload_pem.encode("utf-16"), "not UTF-8 text": b"\xff\xfe\xfd certificate",
        "huge": b"A" * (2 << 20),
    }


def run_files(target: Target, tmp: Path) -> None:
    runner = CliRunner()
    good_cert = tmp / "good-cert.pem"
    good_cert.write_text(target.workload_pem)
    h = ["--home", str(target.home)]
    for label, data in _broken_files(target).items():
        path = tmp / f"broken-{len(label)}-{abs(hash(label))}"
        path.write_bytes(data)
        refused = [
            ("issue --csr", ["issue", *h, "--profile", "web", "--csr", str(path)]),
            ("enroll --ca-bundle", ["enroll", "--url", "https://127.0.0.1:9", "--token", target.enrollment_token,
                                    "--out", str(tmp / "enrolled"), "--ca-bundle", str(path)]),
        ]
        for command, args in refused:
            _check_cli(target, runner, f"file {label} to {command}", args, "files")
        _check_cli(target, runner, f"file {label} to doctor --certificate", ["doctor", *h, "--offline", "--certificate",
                   str(path)], "files", diagnosis="certificate readable")
        if data:  # an empty chain file is no intermediates, which is fine
            _check_cli(target, runner, f"file {label} to doctor --intermediates", [
                "doctor", *h, "--offline", "--certificate", str(good_cert), "--intermediates", str(path)], "files",
                diagnosis="intermediates readable")


# --- the test ------------------------------------------------------------------------------------
def test_hostile_inputs_are_refused_cleanly(target: Target, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    monkeypatch.delenv("RAPKI_HOME", raising=False)
    app = create_app(target.home)
    run_http(target, Client(app))
    app.extensions["rapki"].ca.db.engine.dispose()
    run_cli(target, tmp_path)
    run_files(target, tmp_path)
    total = sum(target.tried.values())
    print(f"\nhostile inputs: {total} tried ({', '.join(f'{k} {v}' for k, v in target.tried.items())}), "
          f"{target.tracebacks} tracebacks, {target.server_errors} 5xx")
    assert not target.problems, "\n".join(target.problems)
    assert target.tracebacks == 0 and target.server_errors == 0
    assert total >= MIN_HOSTILE_INPUTS

