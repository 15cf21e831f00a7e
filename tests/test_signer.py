"""rapki-signer without the emulator: inputs, endpoints, outputs, the credentials file, retries, serve.

The CreateSession side here is a small loopback server the test controls (canned answers, failures
on demand, every request recorded), so each behaviour is pinned precisely. The same commands run
against the real emulator in test_signer_emulator.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from pki.rolesanywhere import endpoints
from pki.rolesanywhere.arns import IamRoleArn
from pki.signer import material, session, update
from pki.signer.serve import CredentialCache, make_server
from tests.commands import signer_cmd, signer_serving

REPO = Path(__file__).resolve().parents[1]
ANCHOR = "arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/11111111-2222-3333-4444-555555555555"
PROFILE = "arn:aws:rolesanywhere:us-east-1:123456789012:profile/66666666-7777-8888-9999-000000000000"
ROLE = "arn:aws:iam::123456789012:role/path/app-role"



# ------------------------------------------------------------------------------------------------
# Test PKI made with cryptography


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rapki tests"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    )


def make_cert(
    subject_key: Any,
    cn: str,
    issuer: tuple[x509.Certificate, Any] | None = None,
    *,
    ca: bool = False,
    days: int = 30,
) -> x509.Certificate:
    now = datetime.now(UTC) - timedelta(minutes=5)
    issuer_name = issuer[0].subject if issuer else _name(cn)
    signing_key = issuer[1] if issuer else subject_key
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(issuer_name)
        .public_key(subject_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(signing_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> dict[str, Any]:
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = make_cert(root_key, "Test Root", ca=True)
    inter_key = ec.generate_private_key(ec.SECP256R1())
    inter = make_cert(inter_key, "Test Issuing", (root, root_key), ca=True)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ec_leaf = make_cert(ec_key, "ec-app", (inter, inter_key))
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_leaf = make_cert(rsa_key, "rsa-app", (inter, inter_key))
    return {
        "root": root,
        "root_key": root_key,
        "inter": inter,
        "inter_key": inter_key,
        "ec_key": ec_key,
        "ec_leaf": ec_leaf,
        "rsa_key": rsa_key,
        "rsa_leaf": rsa_leaf,
    }


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Any, fmt: serialization.PrivateFormat, password: bytes | None = None) -> bytes:
    enc: Any = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    return key.private_bytes(serialization.Encoding.PEM, fmt, enc)


@pytest.fixture
def files(tmp_path: Path, pki: dict[str, Any]) -> dict[str, Path]:
    out = {
        "cert": tmp_path / "cert.pem",
        "key": tmp_path / "key.pem",
        "chain": tmp_path / "chain.pem",
        "rsa_cert": tmp_path / "rsa-cert.pem",
        "rsa_key": tmp_path / "rsa-key.pem",
    }
    out["cert"].write_bytes(pem(pki["ec_leaf"]))
    out["key"].write_bytes(key_pem(pki["ec_key"], serialization.PrivateFormat.PKCS8))
    out["chain"].write_bytes(pem(pki["inter"]))
    out["rsa_cert"].write_bytes(pem(pki["rsa_leaf"]))
    out["rsa_key"].write_bytes(key_pem(pki["rsa_key"], serialization.PrivateFormat.TraditionalOpenSSL))
    return out


# ------------------------------------------------------------------------------------------------
# A controllable loopback CreateSession endpoint


def credential_body(expires_in: int = 3600, key_id: str = "ASIATESTKEY") -> bytes:
    expiration = (datetime.now(UTC) + timedelta(seconds=expires_in)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return json.dumps(
        {
            "credentialSet": [
                {
                    "assumedRoleUser": {
                        "arn": "arn:aws:sts::123456789012:assumed-role/app-role/x",
                        "assumedRoleId": "AROA:x",
                    },
                    "credentials": {
                        "accessKeyId": key_id,
                        "secretAccessKey": "secret/with+chars<&>",
                        "sessionToken": "token==",
                        "expiration": expiration,
                    },
                    "packedPolicySize": 0,
                    "roleArn": ROLE,
                    "sourceIdentity": "CN=ec-app",
                }
            ],
            "subjectArn": "arn:aws:rolesanywhere:us-east-1:123456789012:subject/x",
        }
    ).encode()


class FakeService:
    """Answers POST /sessions from a script of (status, error type, body); records each request."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1") -> None:
        self.requests: list[dict[str, Any]] = []
        self.script: list[tuple[int, str, bytes]] = []
        self.default: tuple[int, str, bytes] | None = None
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                service.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                if service.script:
                    status, error_type, payload = service.script.pop(0)
                elif service.default is not None:
                    status, error_type, payload = service.default
                else:
                    status, error_type, payload = 201, "", credential_body()
                self.send_response(status)
                if error_type:
                    self.send_header("X-Amzn-ErrorType", error_type)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail(self, status: int, error_type: str, message: str, times: int = 1) -> None:
        self.script.extend([(status, error_type, json.dumps({"message": message}).encode())] * times)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake() -> Iterator[FakeService]:
    service = FakeService()
    yield service
    service.close()


def base_args(files: dict[str, Path], endpoint: str, *extra: str) -> list[str]:
    return [
        "--certificate",
        str(files["cert"]),
        "--private-key",
        str(files["key"]),
        "--intermediates",
        str(files["chain"]),
        "--trust-anchor-arn",
        ANCHOR,
        "--profile-arn",
        PROFILE,
        "--role-arn",
        ROLE,
        "--endpoint",
        endpoint,
        *extra,
    ]


def run_signer(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[bytes]:
    # A developer's AWS_* settings (FIPS, CA bundle, endpoint URL) must not leak into these runs.
    full_env = {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, **(env or {})}
    return subprocess.run([*signer_cmd(), *args], capture_output=True, env=full_env, timeout=timeout, check=False)


# ------------------------------------------------------------------------------------------------
# Inputs


@pytest.mark.parametrize(
    "fmt",
    [serialization.PrivateFormat.PKCS8, serialization.PrivateFormat.TraditionalOpenSSL],
    ids=["pkcs8", "traditional"],
)
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_key_formats_load(tmp_path: Path, pki: dict[str, Any], fmt: Any, kind: str) -> None:
    key, leaf = pki[f"{kind}_key"], pki[f"{kind}_leaf"]
    (tmp_path / "c.pem").write_bytes(pem(leaf))
    (tmp_path / "k.pem").write_bytes(key_pem(key, fmt))
    m = material.load_material(str(tmp_path / "c.pem"), str(tmp_path / "k.pem"))
    assert m.certificate == leaf
    assert m.private_key.private_numbers() == key.private_numbers()
    header = (tmp_path / "k.pem").read_bytes().splitlines()[0]
    if fmt is serialization.PrivateFormat.TraditionalOpenSSL:  # PKCS#1 / SEC1
        assert header == (b"-----BEGIN EC PRIVATE KEY-----" if kind == "ec" else b"-----BEGIN RSA PRIVATE KEY-----")


def test_sec1_key_with_ec_parameters_block(tmp_path: Path, pki: dict[str, Any]) -> None:
    """``openssl ecparam -genkey`` writes an EC PARAMETERS block first."""
    params = b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
    (tmp_path / "c.pem").write_bytes(pem(pki["ec_leaf"]))
    (tmp_path / "k.pem").write_bytes(params + key_pem(pki["ec_key"], serialization.PrivateFormat.TraditionalOpenSSL))
    assert material.load_material(str(tmp_path / "c.pem"), str(tmp_path / "k.pem")).certificate == pki["ec_leaf"]


def test_encrypted_pkcs8(tmp_path: Path, pki: dict[str, Any]) -> None:
    (tmp_path / "c.pem").write_bytes(pem(pki["rsa_leaf"]))
    (tmp_path / "k.pem").write_bytes(key_pem(pki["rsa_key"], serialization.PrivateFormat.PKCS8, b"s3cret"))
    c, k = str(tmp_path / "c.pem"), str(tmp_path / "k.pem")
    assert material.load_material(c, k, pkcs8_password="s3cret").certificate == pki["rsa_leaf"]
    with pytest.raises(material.MaterialError, match="--pkcs8-password"):
        material.load_material(c, k)
    with pytest.raises(material.MaterialError, match="wrong passphrase"):
        material.load_material(c, k, pkcs8_password="nope")


def test_pkcs12_bundle(tmp_path: Path, pki: dict[str, Any]) -> None:
    for password in (None, b"p12pass"):
        enc: Any = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
        blob = pkcs12.serialize_key_and_certificates(b"app", pki["ec_key"], pki["ec_leaf"], [pki["inter"]], enc)
        path = tmp_path / "bundle.p12"
        path.write_bytes(blob)
        m = material.load_material(str(path), pkcs8_password=password.decode() if password else None)
        assert m.certificate == pki["ec_leaf"]
        assert m.chain == (pki["inter"],)
    with pytest.raises(material.MaterialError, match="PKCS#12"):
        material.load_material(str(path))  # password-protected, none given
    with pytest.raises(material.MaterialError, match="within the PKCS#12"):
        material.load_material(str(path), intermediates=str(path), pkcs8_password="p12pass")


def test_material_errors(files: dict[str, Path], pki: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(material.MaterialError, match="does not belong"):
        material.load_material(str(files["cert"]), str(files["rsa_key"]))
    with pytest.raises(material.MaterialError, match="does not exist"):
        material.load_material(str(tmp_path / "missing.pem"), str(files["key"]))
    with pytest.raises(material.MaterialError, match="PKCS#11"):
        material.load_material(str(files["cert"]), "pkcs11:token=x;object=y")
    bad_bundle = tmp_path / "bad-bundle.pem"
    bad_bundle.write_bytes(pem(pki["inter"]) + files["key"].read_bytes())
    with pytest.raises(material.MaterialError, match="only certificates"):
        material.load_material(str(files["cert"]), str(files["key"]), str(bad_bundle))
    with pytest.raises(material.MaterialError, match="--private-key is required"):
        material.load_material(str(files["cert"]))


# ------------------------------------------------------------------------------------------------
# Endpoints


@pytest.mark.parametrize(
    ("region", "fips", "dual", "host"),
    [
        ("us-east-1", False, False, "rolesanywhere.us-east-1.amazonaws.com"),
        ("eu-west-3", False, False, "rolesanywhere.eu-west-3.amazonaws.com"),
        ("us-gov-west-1", False, False, "rolesanywhere.us-gov-west-1.amazonaws.com"),
        ("us-east-2", True, False, "rolesanywhere-fips.us-east-2.amazonaws.com"),
        ("us-gov-east-1", True, False, "rolesanywhere-fips.us-gov-east-1.amazonaws.com"),
        ("ap-southeast-2", False, True, "rolesanywhere.ap-southeast-2.api.aws"),
        ("us-west-2", True, True, "rolesanywhere-fips.us-west-2.api.aws"),
        ("cn-north-1", False, False, "rolesanywhere.cn-north-1.amazonaws.com.cn"),
        ("us-east-1-fips", False, False, "rolesanywhere-fips.us-east-1.amazonaws.com"),
    ],
)
def test_endpoint_resolution(region: str, fips: bool, dual: bool, host: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_ROLESANYWHERE"):
        monkeypatch.delenv(var, raising=False)
    ep = endpoints.resolve_endpoint(region, use_fips=fips, use_dualstack=dual)
    assert (ep.scheme, ep.host_header, ep.port) == ("https", host, 443)


def test_endpoint_override_keeps_port_in_host() -> None:
    ep = endpoints.resolve_endpoint("us-east-1", "https://127.0.0.1:8443")
    assert (ep.host_header, ep.hostname, ep.port) == ("127.0.0.1:8443", "127.0.0.1", 8443)
    assert endpoints.resolve_endpoint("us-east-1", "https://example.test:443").host_header == "example.test"
    assert endpoints.resolve_endpoint("us-east-1", "http://example.test:80").host_header == "example.test"
    assert endpoints.resolve_endpoint("us-east-1", "http://[::1]:9000").host_header == "[::1]:9000"
    with pytest.raises(endpoints.InvalidInput, match="FIPS"):
        endpoints.resolve_endpoint("us-east-1", "https://x.test", use_fips=True)


def test_region_from_trust_anchor() -> None:
    gov_anchor = ANCHOR.replace("arn:aws:", "arn:aws-us-gov:").replace("us-east-1", "us-gov-west-1")
    gov_profile = PROFILE.replace("arn:aws:", "arn:aws-us-gov:").replace("us-east-1", "us-gov-west-1")
    assert endpoints.session_region(gov_anchor, gov_profile, None) == "us-gov-west-1"
    assert endpoints.session_region(ANCHOR, PROFILE, "us-west-2") == "us-west-2"
    with pytest.raises(endpoints.InvalidInput, match="don't match"):
        endpoints.session_region(ANCHOR, gov_profile, None)
    assert IamRoleArn.parse(ROLE).name == "app-role"


def test_fips_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    monkeypatch.setenv("AWS_CA_BUNDLE", "/tmp/bundle.pem")
    opts = session.SessionOptions()
    assert opts.use_fips_endpoint and opts.ca_bundle == "/tmp/bundle.pem"


# ------------------------------------------------------------------------------------------------
# credential-process against the fake service


@pytest.mark.e2e
def test_credential_process_output_and_request(files: dict[str, Path], fake: FakeService) -> None:
    result = run_signer("credential-process", *base_args(files, fake.url, "--session-duration", "900"))
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert not out.endswith("\n")
    doc = json.loads(out)
    assert list(doc) == ["Version", "AccessKeyId", "SecretAccessKey", "SessionToken", "Expiration"]
    assert doc["Version"] == 1 and doc["AccessKeyId"] == "ASIATESTKEY"
    assert "\\u003c\\u0026\\u003e" in out  # Go's HTML-safe escaping, as the helper prints it
    (req,) = fake.requests
    assert req["body"] == b'{"durationSeconds":900}'
    assert req["path"].startswith("/sessions?profileArn=arn%3Aaws%3Arolesanywhere%3Aus-east-1")
    assert req["headers"]["Host"] == f"127.0.0.1:{fake.port}"
    assert req["headers"]["Authorization"].startswith("AWS4-X509-ECDSA-SHA256 Credential=")
    assert "x-amz-x509-chain" in req["headers"]["Authorization"]
    assert result.stderr == b""


@pytest.mark.e2e
def test_role_session_name_in_body(files: dict[str, Path], fake: FakeService) -> None:
    result = run_signer("credential-process", *base_args(files, fake.url, "--role-session-name", "job-42"))
    assert result.returncode == 0, result.stderr.decode()
    assert fake.requests[0]["body"] == b'{"durationSeconds":3600,"roleSessionName":"job-42"}'


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("status", "error_type", "message", "hint"),
    [
        (403, "AccessDeniedException", "Untrusted Signing Certificate", "chain sent in X-Amz-X509-Chain"),
        (403, "AccessDeniedException", "Invalid signature", "clock"),
        (403, "AccessDeniedException", "Certificate revoked", "issue a new certificate"),
        (404, "ResourceNotFoundException", "Profile not found", "--profile-arn"),
    ],
)
def test_service_errors_are_actionable(
    files: dict[str, Path], fake: FakeService, status: int, error_type: str, message: str, hint: str
) -> None:
    fake.fail(status, error_type, message)
    result = run_signer("credential-process", *base_args(files, fake.url))
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert f"{error_type} (HTTP {status}): {message}" in err
    assert "hint:" in err and hint in err
    assert len(fake.requests) == 1  # not retried
    if "Untrusted" in message:
        assert "Test Issuing" in err and ANCHOR in err


def test_hints_name_the_leafs_crl_distribution_point(pki: dict[str, Any]) -> None:
    """An anchor with crlDpRevocationEnabled answers 'Untrusted Signing Certificate' when the CRL at
    the leaf's distribution point is missing: the hint says so, naming the URL."""
    url = "http://crl.example.com/crl/issuing-1.crl"
    point = x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)
    leaf = (x509.CertificateBuilder().subject_name(_name("dp-app")).issuer_name(pki["inter"].subject)
            .public_key(pki["ec_key"].public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(datetime.now(UTC) - timedelta(minutes=5))
            .not_valid_after(datetime.now(UTC) + timedelta(days=1))
            .add_extension(x509.CRLDistributionPoints([point]), critical=False)
            .sign(pki["inter_key"], hashes.SHA256()))
    opts = session.SessionOptions(certificate="cert.pem", private_key="key.pem", trust_anchor_arn=ANCHOR,
                                  profile_arn=PROFILE, role_arn=ROLE)
    error = session.CreateSessionError("Untrusted Signing Certificate", error_type="AccessDeniedException", status=403)
    hint = session.hint_for(error, material.Material(leaf, pki["ec_key"], (pki["inter"],)), opts,
                            endpoints.resolve_endpoint("us-east-1"), datetime.now(UTC))
    assert f"CRL distribution point ({url})" in hint and "crlDpRevocationEnabled" in hint
    revoked = session.CreateSessionError("Certificate revoked", error_type="AccessDeniedException", status=403)
    assert f"at its distribution point {url}" in session.hint_for(
        revoked, material.Material(leaf, pki["ec_key"], (pki["inter"],)), opts, endpoints.resolve_endpoint("us-east-1"),
        datetime.now(UTC))
    plain = session.hint_for(error, material.Material(pki["ec_leaf"], pki["ec_key"], (pki["inter"],)), opts,
                             endpoints.resolve_endpoint("us-east-1"), datetime.now(UTC))
    assert "distribution point" not in plain


def test_retries_throttling_and_5xx_each_attempt_resigned(
    files: dict[str, Path], fake: FakeService, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.fail(429, "ThrottlingException", "Rate exceeded")
    fake.fail(503, "", "unavailable")
    opts = session.SessionOptions(
        certificate=str(files["cert"]),
        private_key=str(files["key"]),
        trust_anchor_arn=ANCHOR,
        profile_arn=PROFILE,
        role_arn=ROLE,
        endpoint=fake.url,
    )
    times = iter(datetime(2026, 7, 1, 0, 0, s, tzinfo=UTC) for s in range(10))
    delays: list[float] = []
    creds = session.create_session(opts, clock=lambda: next(times), sleep=delays.append)
    assert creds.access_key_id == "ASIATESTKEY"
    assert len(fake.requests) == 3 and len(delays) == 2
    dates = [r["headers"]["X-Amz-Date"] for r in fake.requests]
    assert len(set(dates)) == 3  # signed again for every attempt
    assert len({r["headers"]["Authorization"] for r in fake.requests}) == 3


@pytest.mark.e2e
def test_retries_give_up_with_exit_1(files: dict[str, Path], fake: FakeService) -> None:
    fake.default = (500, "InternalServerException", b'{"message":"boom"}')
    result = run_signer("credential-process", *base_args(files, fake.url), env={"AWS_MAX_ATTEMPTS": "2"})
    assert result.returncode == 1 and result.stdout == b""
    assert b"InternalServerException (HTTP 500): boom" in result.stderr
    assert len(fake.requests) == 2


@pytest.mark.e2e
def test_unreachable_endpoint(files: dict[str, Path]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_signer(
        "credential-process", *base_args(files, f"http://127.0.0.1:{port}"), env={"AWS_MAX_ATTEMPTS": "1"}
    )
    assert result.returncode == 1 and result.stdout == b""
    assert b"could not reach" in result.stderr


@pytest.mark.e2e
def test_bad_input_exit_1_nothing_on_stdout(files: dict[str, Path], fake: FakeService) -> None:
    result = run_signer("credential-process", *base_args(files, fake.url, "--private-key", str(files["rsa_key"])))
    assert result.returncode == 1 and result.stdout == b""
    assert b"does not belong" in result.stderr
    result = run_signer("credential-process", "--no-such-flag")
    assert result.returncode == 1 and result.stdout == b""
    result = run_signer(
        "credential-process", *base_args(files, fake.url, "--cert-selector", "Key=x509Subject,Value=CN=a")
    )
    assert result.returncode == 1 and b"not supported" in result.stderr
    assert fake.requests == []


@pytest.mark.e2e
@pytest.mark.parametrize("flag", [[], ["--with-proxy"], ["--with-proxy=false"], ["--with-proxy=true"]])
def test_proxy_from_environment_with_or_without_flag(
    files: dict[str, Path], fake: FakeService, flag: list[str]
) -> None:
    """HTTP_PROXY is honoured whatever --with-proxy says (the Go SDK's default transport reads it);
    the Host header (signed) stays the endpoint's."""
    env = {"HTTP_PROXY": fake.url, "http_proxy": fake.url, "NO_PROXY": "", "no_proxy": ""}
    args = base_args(files, "http://rolesanywhere.example.test")
    result = run_signer("credential-process", *args, *flag, env=env)
    assert result.returncode == 0, result.stderr.decode()
    (req,) = fake.requests
    assert req["path"].startswith("http://rolesanywhere.example.test/sessions?")
    assert req["headers"]["Host"] == "rolesanywhere.example.test"


@pytest.mark.e2e
def test_no_proxy_bypasses_the_proxy(files: dict[str, Path], fake: FakeService) -> None:
    host = fake.url.split("//", 1)[1].split(":")[0]
    env = {"HTTP_PROXY": "http://127.0.0.1:9", "http_proxy": "http://127.0.0.1:9", "NO_PROXY": host, "no_proxy": host}
    result = run_signer("credential-process", *base_args(files, fake.url), env=env)
    assert result.returncode == 0, result.stderr.decode()


# ------------------------------------------------------------------------------------------------
# The shared vectors, from the command itself with its clock fixed


def _vectors_dir() -> Path | None:
    for candidate in (REPO.parent / "shared" / "vectors" / "sigv4-x509", Path("/work/shared/vectors/sigv4-x509")):
        if candidate.is_dir():
            return candidate
    return None


VECTORS = _vectors_dir()
VECTOR_NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "vector.json").is_file()) if VECTORS else []


def _faketime_arg(amz_date: str) -> str:
    return datetime.strptime(amz_date, "%Y%m%dT%H%M%SZ").strftime("%Y-%m-%d %H:%M:%S")


def _vector_command(v: dict, folder: Path) -> list[str]:  # type: ignore[type-arg]
    """``credential-process`` for a shared vector under faketime at its ``amz_date``."""
    return [
        "faketime", "-f", _faketime_arg(v["amz_date"]), *signer_cmd(), "credential-process",
        "--certificate", str(folder / "leaf.pem"), "--private-key", str(folder / "key.pem"),
        "--trust-anchor-arn", v["trust_anchor_arn"], "--profile-arn", v["profile_arn"],
        "--role-arn", v["role_arn"], "--session-duration", str(v["duration_seconds"]),
    ]


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_from_the_command(name: str, tmp_path: Path) -> None:
    assert VECTORS is not None
    folder = VECTORS / name
    v = json.loads((folder / "vector.json").read_text())
    host = v["host"]
    proxy_env: dict[str, str] = {}
    if ":" in host:  # a loopback vector: its host:port must be the server's own address
        bind_host, port = host.rsplit(":", 1)
        try:
            service = FakeService(int(port), bind_host)
        except OSError:
            pytest.skip(f"{host} is busy")
        endpoint = f"http://{host}"
        extra: list[str] = []
    else:
        # A real AWS host name: the request goes to the loopback server as an HTTP proxy, so the
        # Host header (and the signature) are the vector's while nothing leaves the machine.
        service = FakeService()
        endpoint = f"http://{host}"
        proxy_env = {"HTTP_PROXY": service.url, "http_proxy": service.url, "NO_PROXY": "", "no_proxy": ""}
        extra = ["--with-proxy"]
    try:
        args = [
            *_vector_command(v, folder),
            "--endpoint",
            endpoint,
            *extra,
        ]
        if v["has_chain"]:
            args += ["--intermediates", str(folder / "chain.pem")]
        env = {**os.environ, **proxy_env}
        result = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr.decode()
    finally:
        service.close()
    (req,) = service.requests
    headers = req["headers"]
    assert req["body"].decode() == v["request_body"]
    # Every signed header value is the one inside the vector's canonical request.
    canonical_lines = v["canonical_request"].split("\n")
    signed_names = canonical_lines[-2].split(";")
    expected = dict(line.split(":", 1) for line in canonical_lines[3 : 3 + len(signed_names)])
    lowered = {k.lower(): val for k, val in headers.items()}
    assert {n: lowered[n] for n in signed_names} == expected
    assert req["path"].split("/sessions?", 1)[1] == canonical_lines[2]
    if v["signature_is_deterministic"]:
        assert headers["Authorization"] == v["authorization"]
    else:
        assert headers["Authorization"].startswith(v["authorization_prefix"])
        signature = bytes.fromhex(headers["Authorization"].rsplit("Signature=", 1)[1])
        leaf = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
        leaf.public_key().verify(signature, v["string_to_sign"].encode(), ec.ECDSA(hashes.SHA256()))
    # And the string to sign hashes exactly this canonical request.
    assert v["string_to_sign"].endswith(hashlib.sha256(v["canonical_request"].encode()).hexdigest())


# ------------------------------------------------------------------------------------------------
# sign-string, read-certificate-data, version


@pytest.mark.e2e
def test_read_certificate_data(files: dict[str, Path], pki: dict[str, Any]) -> None:
    result = run_signer("read-certificate-data", "--certificate", str(files["rsa_cert"]))
    assert result.returncode == 0
    doc = json.loads(result.stdout)
    assert list(doc) == ["keyType", "certificateData", "serialNumber", "supportedAlgorithms"]
    assert doc["keyType"] == "RSA"
    assert doc["serialNumber"] == str(pki["rsa_leaf"].serial_number)
    assert base64.b64decode(doc["certificateData"]) == pki["rsa_leaf"].public_bytes(serialization.Encoding.DER)
    assert doc["supportedAlgorithms"] == ["RSASHA256", "RSASHA384", "RSASHA512"]


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_sign_string_verifies(files: dict[str, Path], pki: dict[str, Any], kind: str) -> None:
    from pki.signer.tools import fixed_string_to_sign

    key_file = files["key"] if kind == "ec" else files["rsa_key"]
    result = run_signer("sign-string", "--private-key", str(key_file), "--format", "text", "--digest", "SHA384")
    assert result.returncode == 0, result.stderr.decode()
    signature = bytes.fromhex(result.stdout.decode())
    public = pki[f"{kind}_key"].public_key()
    data = fixed_string_to_sign(public)
    assert data.startswith(b"AWS Roles Anywhere Credential Helper Signing Test1")
    if kind == "ec":
        public.verify(signature, data, ec.ECDSA(hashes.SHA384()))
    else:
        public.verify(signature, data, padding.PKCS1v15(), hashes.SHA384())
    as_json = run_signer("sign-string", "--private-key", str(key_file))
    assert as_json.stdout.startswith(b'"') and as_json.stdout.endswith(b'"')


@pytest.mark.e2e
def test_version() -> None:
    from pki import __version__

    result = run_signer("version")
    assert result.returncode == 0 and result.stdout == f"{__version__}\n".encode()


# ------------------------------------------------------------------------------------------------
# update: the helper's six rewrite cases, byte for byte


def _creds() -> session.Credentials:
    return session.Credentials("accessKeyId", "secretAccessKey", "sessionToken", "2030-01-01T00:00:00Z")


HELPER_UPDATE_CASES = [
    (
        "space-separated-keys",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = test\n[test]\naws_secret_access_key = test",
        "test profile",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = accessKeyId\naws_secret_access_key = secretAccessKey\n"
        "aws_session_token = sessionToken\n[test]\naws_secret_access_key = test",
    ),
    (
        "profile-with-other-keys",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = test\ntest_key = test\n"
        "[test]\naws_secret_access_key = test",
        "test profile",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = accessKeyId\ntest_key = test\n"
        "aws_secret_access_key = secretAccessKey\naws_session_token = sessionToken\n"
        "[test]\naws_secret_access_key = test",
    ),
    (
        "commented-profile",
        "test\ntest\ntest\n# [test profile]\naws_access_key_id = test\n[test]\naws_secret_access_key = test",
        "test profile",
        "test\ntest\ntest\n# [test profile]\naws_access_key_id = test\n[test]\naws_secret_access_key = test\n"
        "[test profile]\naws_access_key_id = accessKeyId\naws_secret_access_key = secretAccessKey\n"
        "aws_session_token = sessionToken\n",
    ),
    (
        "profile-does-not-exist",
        "test\ntest\ntest\n[test]\naws_secret_access_key = test",
        "test profile",
        "test\ntest\ntest\n[test]\naws_secret_access_key = test\n[test profile]\naws_access_key_id = accessKeyId\n"
        "aws_secret_access_key = secretAccessKey\naws_session_token = sessionToken\n",
    ),
    (
        "first-word-in-profile-matches",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = test\n[test]\naws_secret_access_key = test",
        "test",
        "test\ntest\ntest\n[test profile]\naws_access_key_id = test\n[test]\naws_access_key_id = accessKeyId\n"
        "aws_secret_access_key = secretAccessKey\naws_session_token = sessionToken",
    ),
    (
        "multiple-profiles-with-same-name",
        "test\ntest\ntest\n[test]\ntest_key = test\n[test profile]\naws_access_key_id = test\n[test]\n"
        "aws_secret_access_key = test",
        "test",
        "test\ntest\ntest\n[test]\ntest_key = test\naws_access_key_id = accessKeyId\n"
        "aws_secret_access_key = secretAccessKey\naws_session_token = sessionToken\n[test profile]\n"
        "aws_access_key_id = test\n[test]\naws_secret_access_key = test",
    ),
]


@pytest.mark.parametrize(
    ("name", "before", "profile", "after"), HELPER_UPDATE_CASES, ids=[c[0] for c in HELPER_UPDATE_CASES]
)
def test_update_rewrite_matches_helper(tmp_path: Path, name: str, before: str, profile: str, after: str) -> None:
    path = tmp_path / "credentials"
    path.write_text(before)
    path.chmod(0o644)
    update.write_credentials(profile, _creds(), path)
    # The helper's test trims the file's last character before comparing.
    assert path.read_text()[:-1] == after
    assert path.stat().st_mode & 0o777 == 0o600


def test_update_keeps_lines_the_helper_drops(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text("[other]\nregion = x\n[app]\naws_access_key_id = old\nregion = eu-west-1\n")
    update.write_credentials("app", _creds(), path)
    assert path.read_text() == (
        "[other]\nregion = x\n[app]\naws_access_key_id = accessKeyId\nregion = eu-west-1\n"
        "aws_secret_access_key = secretAccessKey\naws_session_token = sessionToken\n"
    )


def test_update_new_file_and_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "credentials"
    threads = [threading.Thread(target=update.write_credentials, args=(f"p{i}", _creds(), path)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    text = path.read_text()
    for i in range(8):  # no writer lost another's section
        assert f"[p{i}]\naws_access_key_id = accessKeyId\n" in text
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.e2e
def test_update_command_once(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> None:
    path = tmp_path / "aws" / "credentials"
    path.parent.mkdir()
    path.write_text("[default]\nregion = us-east-1\n")
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(path)}
    result = run_signer("update", *base_args(files, fake.url), "--profile", "ra", "--once", env=env)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b""
    assert path.read_text().startswith("[default]\nregion = us-east-1\n[ra]\naws_access_key_id = ASIATESTKEY\n")
    assert path.stat().st_mode & 0o777 == 0o600
    fake.fail(403, "AccessDeniedException", "Certificate revoked")
    result = run_signer("update", *base_args(files, fake.url), "--profile", "ra", "--once", env=env)
    assert result.returncode == 1 and b"Certificate revoked" in result.stderr


# ------------------------------------------------------------------------------------------------
# serve


def _opts(files: dict[str, Path], endpoint: str, **kw: Any) -> session.SessionOptions:
    return session.SessionOptions(
        certificate=str(files["cert"]),
        private_key=str(files["key"]),
        intermediates=str(files["chain"]),
        trust_anchor_arn=ANCHOR,
        profile_arn=PROFILE,
        role_arn=ROLE,
        endpoint=endpoint,
        max_attempts=1,
        **kw,
    )


@pytest.fixture
def imds(files: dict[str, Path], fake: FakeService) -> Iterator[Any]:
    server = make_server(_opts(files, fake.url), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    yield server
    server.shutdown()
    server.server_close()


def _http(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
    conn.request(method, parts.path, headers=headers or {})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, dict(resp.headers), body


def test_serve_imdsv2_protocol(imds: Any) -> None:
    base = imds.url
    status, _, _ = _http("GET", base + "/latest/meta-data/iam/security-credentials/")
    assert status == 401  # IMDSv1 (no token) refused
    status, _, body = _http("PUT", base + "/latest/api/token", {"X-Forwarded-For": "1.2.3.4"})
    assert status == 400
    for ttl in ("0", "21601", "abc"):
        assert _http("PUT", base + "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": ttl})[0] == 400
    status, headers, token = _http("PUT", base + "/latest/api/token", {"x-aws-ec2-metadata-token-ttl-seconds": "60"})
    assert status == 200 and len(token) == 100
    assert headers["x-aws-ec2-metadata-token-ttl-seconds"] == "60"
    auth = {"x-aws-ec2-metadata-token": token.decode()}
    assert (
        _http("GET", base + "/latest/meta-data/iam/security-credentials/", {"x-aws-ec2-metadata-token": "bad"})[0]
        == 401
    )
    status, _, role = _http("GET", base + "/latest/meta-data/iam/security-credentials/", auth)
    assert (status, role) == (200, b"app-role")
    status, headers, body = _http("GET", base + "/latest/meta-data/iam/security-credentials/app-role", auth)
    assert status == 200 and body.endswith(b"\n")
    doc = json.loads(body)
    assert list(doc) == ["AccessKeyId", "SecretAccessKey", "Token", "Code", "Type", "Expiration", "LastUpdated"]
    assert doc["Code"] == "Success" and doc["Type"] == "AWS-HMAC" and doc["AccessKeyId"] == "ASIATESTKEY"
    assert _http("GET", base + "/latest/meta-data/iam/security-credentials/other-role", auth)[0] == 404
    assert _http("POST", base + "/latest/api/token")[0] == 405


def test_serve_answers_botocore_imds_fetcher(imds: Any, fake: FakeService) -> None:
    from botocore.utils import InstanceMetadataFetcher

    fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=imds.url + "/")
    for _ in range(3):
        creds = fetcher.retrieve_iam_role_credentials()
        assert creds["access_key"] == "ASIATESTKEY" and creds["token"] == "token=="
        assert creds["role_name"] == "app-role"
    assert len(fake.requests) == 1  # cached: the SDK's calls do not reach the service


def test_serve_picks_up_replaced_certificate(
    imds: Any, fake: FakeService, files: dict[str, Path], pki: dict[str, Any]
) -> None:
    from botocore.utils import InstanceMetadataFetcher

    fetcher = InstanceMetadataFetcher(timeout=5, num_attempts=1, base_url=imds.url + "/")
    assert fetcher.retrieve_iam_role_credentials()["access_key"] == "ASIATESTKEY"
    # Renewal: a new key and certificate written over the old files (key first, then certificate).
    new_key = ec.generate_private_key(ec.SECP256R1())
    new_leaf = make_cert(new_key, "ec-app", (pki["inter"], pki["inter_key"]))
    files["key"].write_bytes(key_pem(new_key, serialization.PrivateFormat.PKCS8))
    files["cert"].write_bytes(pem(new_leaf))
    fake.script.append((201, "", credential_body(key_id="ASIARENEWED")))
    assert fetcher.retrieve_iam_role_credentials()["access_key"] == "ASIARENEWED"
    sent = base64.b64decode(fake.requests[-1]["headers"]["X-Amz-X509"])
    assert sent == new_leaf.public_bytes(serialization.Encoding.DER)


def test_serve_outage_never_success_with_bad_credentials(files: dict[str, Path], fake: FakeService) -> None:
    # Credentials that are already inside the refresh window, then the service goes away.
    fake.script.append((201, "", credential_body(expires_in=120)))
    cache = CredentialCache(_opts(files, fake.url, session_duration=900), min_validity=60)
    assert cache.refresh(force=True)
    fake.default = (503, "ServiceUnavailableException", b'{"message":"down"}')
    creds, _ = cache.get()  # refresh fails, last good credentials still have > 60 s: kept
    assert creds.access_key_id == "ASIATESTKEY"
    cache.min_validity = 3600  # now the kept credentials are too close to expiry to hand out
    with pytest.raises(Exception, match="down"):
        cache.get()
    server = make_server(_opts(files, fake.url), port=0, cache=cache)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        _, _, token = _http("PUT", base + "/latest/api/token")
        status, _, body = _http(
            "GET",
            base + "/latest/meta-data/iam/security-credentials/app-role",
            {"x-aws-ec2-metadata-token": token.decode()},
        )
        assert status == 503 and b"Success" not in body and b"no valid credentials" in body
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.e2e
def test_serve_command_binds_loopback_and_prints_endpoint(files: dict[str, Path], fake: FakeService) -> None:
    with signer_serving([*base_args(files, fake.url), "--port", "0"]) as (_proc, url):
        assert url.startswith("http://127.0.0.1:")
        status, _, token = _http("PUT", url + "latest/api/token")
        assert status == 200 and token


def test_serve_binds_another_address_only_when_asked(files: dict[str, Path], fake: FakeService) -> None:
    default = make_server(_opts(files, fake.url), port=0)
    try:
        assert default.server_address[0] == "127.0.0.1"
    finally:
        default.server_close()
    # Another address than the default, still on loopback so the test exposes nothing.
    wide = make_server(_opts(files, fake.url), port=0, bind="127.0.0.2", hop_limit=1)
    thread = threading.Thread(target=wide.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert wide.server_address[0] == "127.0.0.2"
        status, _, token = _http("PUT", f"http://127.0.0.2:{wide.server_address[1]}/latest/api/token")
        assert status == 200 and token
    finally:
        wide.shutdown()
        wide.server_close()


def test_update_loop_refreshes_before_expiry(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> None:
    class Stop(Exception):
        pass

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise Stop

    fake.script.append((201, "", credential_body(expires_in=3600, key_id="ASIAFIRST")))
    fake.script.append((503, "ServiceUnavailableException", b'{"message":"down"}'))
    path = tmp_path / "credentials"
    with pytest.raises(Stop):
        update.run_update(_opts(files, fake.url), "ra", path=path, sleep=sleep, retry_delay=7)
    assert 3200 < waits[0] <= 3300  # 5 minutes before the one-hour expiry
    assert waits[1] == 7  # a failed refresh is retried; the written credentials stay in place
    assert "aws_access_key_id = ASIAFIRST" in path.read_text()


def test_serve_never_queues_behind_a_slow_refresh(files: dict[str, Path], fake: FakeService) -> None:
    fake.script.append((201, "", credential_body(expires_in=300)))  # valid, but due for refresh
    cache = CredentialCache(_opts(files, fake.url), min_validity=60)
    assert cache.refresh(force=True)
    cache._lock.acquire()  # a refresh in flight in another thread (e.g. the service is slow)
    try:
        result: list[Any] = []
        reader = threading.Thread(target=lambda: result.append(cache.get()))
        reader.start()
        reader.join(timeout=5)
        assert not reader.is_alive(), "get() waited for the refresh in flight"
        assert result[0][0].access_key_id == "ASIATESTKEY"
    finally:
        cache._lock.release()


# ------------------------------------------------------------------------------------------------
# The vectors again, with no --endpoint at all: the endpoint comes from the trust anchor ARN, the
# request goes over HTTPS through a loopback CONNECT proxy that plays the AWS host with a test CA.


class MitmProxy:
    """HTTPS_PROXY on loopback: accepts CONNECT, then terminates TLS as the requested host."""

    def __init__(self, certfile: Path, keyfile: Path) -> None:
        import ssl

        self.requests: list[dict[str, Any]] = []
        self.connects: list[str] = []
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(certfile), str(keyfile))
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_CONNECT(self) -> None:
                proxy.connects.append(self.path)
                self.send_response(200, "Connection established")
                self.end_headers()
                self.wfile.flush()
                with context.wrap_socket(self.connection, server_side=True) as tls:
                    reader = tls.makefile("rb")
                    request_line = reader.readline().decode().rstrip("\r\n")
                    headers: dict[str, str] = {}
                    while (line := reader.readline().decode().rstrip("\r\n")) != "":
                        name, value = line.split(":", 1)
                        headers[name.strip()] = value.strip()
                    body = reader.read(int(headers.get("Content-Length", "0")))
                    proxy.requests.append({"line": request_line, "headers": headers, "body": body})
                    payload = credential_body()
                    tls.sendall(
                        b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nConnection: close\r\n"
                        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
                        + payload
                    )
                self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
@pytest.mark.parametrize("name", [n for n in VECTOR_NAMES if not n.endswith("loopback-port")])
def test_vector_default_endpoint_over_https(name: str, tmp_path: Path) -> None:
    assert VECTORS is not None
    folder = VECTORS / name
    v = json.loads((folder / "vector.json").read_text())
    # A TLS certificate for the AWS host, valid at the vector's date, from a CA given by --ca-bundle.
    ca_key = ec.generate_private_key(ec.SECP256R1())
    start, end = datetime(2026, 1, 1, tzinfo=UTC), datetime(2030, 1, 1, tzinfo=UTC)
    ca_name = _name("Test TLS CA")
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    tls_key = ec.generate_private_key(ec.SECP256R1())
    tls_cert = (
        x509.CertificateBuilder()
        .subject_name(_name(v["host"]))
        .issuer_name(ca_name)
        .public_key(tls_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(v["host"])]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    (tmp_path / "tls.pem").write_bytes(pem(tls_cert))
    (tmp_path / "tls.key").write_bytes(key_pem(tls_key, serialization.PrivateFormat.PKCS8))
    (tmp_path / "ca.pem").write_bytes(pem(ca))
    proxy = MitmProxy(tmp_path / "tls.pem", tmp_path / "tls.key")
    try:
        args = [
            *_vector_command(v, folder),
            "--ca-bundle",
            str(tmp_path / "ca.pem"),
            "--with-proxy",
        ]
        if v["has_chain"]:
            args += ["--intermediates", str(folder / "chain.pem")]
        clean = {k: val for k, val in os.environ.items() if not k.startswith("AWS_")}
        env = {**clean, "HTTPS_PROXY": proxy.url, "https_proxy": proxy.url, "NO_PROXY": "", "no_proxy": ""}
        result = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
        assert result.returncode == 0, result.stderr.decode()
    finally:
        proxy.close()
    assert proxy.connects == [f"{v['host']}:443"]  # the endpoint was derived from the trust anchor ARN
    (req,) = proxy.requests
    assert req["line"].startswith("POST /sessions?" + v["canonical_request"].split("\n")[2] + " ")
    assert req["headers"]["Host"] == v["host"]
    assert req["body"].decode() == v["request_body"]
    if v["signature_is_deterministic"]:
        assert req["headers"]["Authorization"] == v["authorization"]
    else:
        assert req["headers"]["Authorization"].startswith(v["authorization_prefix"])
        signature = bytes.fromhex(req["headers"]["Authorization"].rsplit("Signature=", 1)[1])
        leaf = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
        leaf.public_key().verify(signature, v["string_to_sign"].encode(), ec.ECDSA(hashes.SHA256()))
