"""A CA whose keys are on a PKCS#11 token (SoftHSM2) or in AWS KMS (moto on 127.0.0.1, signing
DIGEST messages as AWS does: service/emulator/kms.py): everything it signs (CA certificates, leaves, its
own TLS certificate, CRLs) is judged by pkilint and ``openssl verify -x509_strict -crl_check``, no
key file is ever written, and the whole loop runs end to end on SoftHSM2: ``rapki init`` ->
``rapki serve`` -> enroll over HTTPS -> ``rapki-signer`` credentials from the emulator -> revoke ->
``rapki crl publish`` -> refused."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.custody.keys import create_key
from pki.custody.refs import KmsRef, Pkcs11Ref, key_ref_for, parse_key_ref, placement_of
from pki.errors import Conflict
from pki.x509.keys import KeyType
from pki.x509.profiles import Profile
from tests.commands import rapki_cmd, signer_cmd
from tests.conftest import PASSPHRASE
from tests.emulator_fixture import RunningEmulator
from tests.softhsm_fixture import SoftHsmToken
from tests.validators import lint_cert, lint_chain, lint_crl, openssl_verify

ROLE = "arn:aws:iam::123456789012:role/custody-e2e"


def _placement(token: SoftHsmToken, prefix: str) -> Pkcs11Ref:
    return Pkcs11Ref(module=token.module, token=token.label, label=prefix, pin_env=token.pin_env)


def _pem(path: Path, *items: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(b"".join(item.public_bytes(serialization.Encoding.PEM) for item in items))
    return path


def _judge(folder: Path, ca: CertificateAuthority, good: x509.Certificate, revoked: x509.Certificate) -> None:
    """pkilint finds nothing in the CA certificates, the leaves and each issuer's CRL; openssl
    accepts the good leaf and says the revoked one is revoked, checking the CRLs."""
    folder.mkdir(exist_ok=True)
    root = _pem(folder / "root.pem", ca.root_certificate)
    issuers = [_pem(folder / f"{i.name}.pem", i.certificate) for i in ca.issuers()]
    crls = _pem(folder / "crls.pem", *(ca.build_crl(i.name).crl for i in ca.issuers()))
    for index, issuer in enumerate(ca.issuers()):
        assert lint_cert(issuers[index]) == ""
        assert lint_chain(root, issuers[index]) == ""
        single = _pem(folder / f"{issuer.name}.crl.pem", ca.build_crl(issuer.name).crl)
        assert lint_crl(single) == ""
    assert lint_cert(root) == ""
    chain = _pem(folder / "chain.pem", *(i.certificate for i in ca.issuers()))
    for leaf, verdict in ((good, "OK"), (revoked, "certificate revoked")):
        path = _pem(folder / f"{leaf.serial_number:x}.pem", leaf)
        assert lint_cert(path) == ""
        result = openssl_verify(path, root=root, untrusted=chain, crl=crls)
        assert verdict in result.stdout + result.stderr, result.stdout + result.stderr


def _no_key_files(home: Path) -> None:
    assert sorted(p.name for p in (home / "ca").iterdir() if p.name.endswith(".key.pem")) == []


# --- PKCS#11 (SoftHSM2), in process ------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.EC_P384, KeyType.RSA_2048])
def test_a_ca_on_a_token_signs_what_pkilint_and_openssl_accept(
        tmp_path: Path, softhsm_token: SoftHsmToken, key_type: KeyType) -> None:
    placement = _placement(softhsm_token, f"ca-{key_type}")
    ca = CertificateAuthority.init(tmp_path / "home", InitOptions(
        key_type=key_type, root_key_placement=placement, issuing_key_placement=placement),
        passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+"))
    assert ca.issuer().backend == "pkcs11" and ca.config.root_key.startswith("pkcs11:")
    first = ca.issue("web", cn="web-1").certificate
    ca.sign_intermediate()  # by default the new key goes where the active one is: on the token
    assert ca.issuer().name == "issuing-2" and f"object=ca-{key_type}-issuing-2" in ca.issuer().key_ref
    server = ca.issue_server_certificate(["localhost.example.com", "127.0.0.1"]).certificate
    good = ca.issue("web", cn="web-2").certificate
    revoked = ca.issue("web", cn="web-3").certificate
    ca.revoke(revoked.serial_number)
    ca.revoke(first.serial_number)
    _judge(tmp_path / "judged", ca, good, revoked)
    assert openssl_verify(_pem(tmp_path / "server.pem", server), root=_pem(tmp_path / "r.pem", ca.root_certificate),
                          untrusted=_pem(tmp_path / "i.pem", ca.issuer().certificate)).returncode == 0
    _no_key_files(ca.home.path)
    reopened = CertificateAuthority.open(ca.home.path)  # a new process's view: keys found by reference
    assert reopened.issue("web", cn="web-4").certificate.issuer == ca.issuer().certificate.subject


def test_a_file_home_rotates_onto_the_token_and_refuses_a_reused_key(
        tmp_path: Path, softhsm_token: SoftHsmToken, passphrase_env: str) -> None:
    ca = CertificateAuthority.init(tmp_path / "home", passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+"))
    before = ca.issue("web", cn="web-1").certificate
    issuer = ca.sign_intermediate(placement=_placement(softhsm_token, "rotated"))
    assert issuer.backend == "pkcs11" and (ca.home.path / "ca" / "issuing-1.key.pem").is_file()
    assert not (ca.home.path / "ca" / "issuing-2.key.pem").exists()
    after = ca.issue("web", cn="web-2").certificate
    ca.revoke(before.serial_number)  # the file-key issuer still signs its CRL
    _judge(tmp_path / "judged", ca, after, before)
    create_key(_placement(softhsm_token, "rotated-issuing-3"), KeyType.EC_P256)  # the next label, taken
    with pytest.raises(Conflict, match="already holds a key rotated-issuing-3"):
        ca.sign_intermediate(placement=_placement(softhsm_token, "rotated"))
    assert [i.name for i in ca.issuers()] == ["issuing-1", "issuing-2"]
    assert not (ca.home.path / "ca" / "issuing-3.pem").exists()
    kms_like = KmsRef(key_id="arn:aws:kms:us-east-1:123456789012:key/k", endpoint_url="http://127.0.0.1:1")
    assert key_ref_for(kms_like, "issuing-3") is kms_like  # a named KMS key is adopted as it is
    assert placement_of(kms_like).key_id == ""  # and the next one is a new key


# --- KMS (moto, DIGEST signing) -----------------------------------------------------------------------


@pytest.mark.parametrize("key_type", [KeyType.EC_P256, KeyType.RSA_2048])
def test_a_ca_in_kms_issues_and_signs_a_crl_over_the_raw_message_limit(
        tmp_path: Path, aws_env: dict[str, str], kms_url: str, key_type: KeyType) -> None:
    placement = KmsRef(key_id="", region="us-east-1", endpoint_url=kms_url)
    ca = CertificateAuthority.init(tmp_path / "home", InitOptions(
        key_type=key_type, root_key_placement=placement, issuing_key_placement=placement),
        passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+"))
    assert ca.issuer().key_ref.startswith("kms:arn:aws:kms:us-east-1:") and ca.config.root_key.startswith("kms:")
    good = ca.issue("web", cn="web-1").certificate
    revoked = [ca.issue("web", cn=f"web-{n}").certificate for n in range(2, 122)]
    for certificate in revoked:
        ca.revoke(certificate.serial_number, reason="keyCompromise")
    crl = ca.build_crl()
    assert len(crl.crl.tbs_certlist_bytes) > 4096  # KMS refuses RAW messages this long: DIGEST signs it
    assert crl.entries == 120
    _judge(tmp_path / "judged", ca, good, revoked[0])
    _no_key_files(ca.home.path)


def test_a_file_home_rotates_into_kms(tmp_path: Path, aws_env: dict[str, str], kms_url: str) -> None:
    ca = CertificateAuthority.init(tmp_path / "home", passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+"))
    issuer = ca.sign_intermediate(placement=KmsRef(key_id="", region="us-east-1", endpoint_url=kms_url))
    assert issuer.backend == "kms"
    rotated = ca.sign_intermediate()  # the next one: a new key in the same region and endpoint
    assert rotated.backend == "kms" and rotated.key_ref != issuer.key_ref
    with pytest.raises(Conflict, match="is already the key of issuing-2"):  # two CAs never share a key
        ca.sign_intermediate(placement=parse_key_ref(issuer.key_ref))
    good, revoked = ca.issue("web", cn="web-1").certificate, ca.issue("web", cn="web-2").certificate
    ca.revoke(revoked.serial_number)
    _judge(tmp_path / "judged", ca, good, revoked)


# --- the CLI ------------------------------------------------------------------------------------------


def _rapki(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*rapki_cmd(), *args], capture_output=True, text=True, check=False, timeout=120,
                            env={**os.environ, "RAPKI_PASSPHRASE": PASSPHRASE, **(env or {})})
    if check:
        assert result.returncode == 0, result.stderr
    return result


def _pkcs11_args(token: SoftHsmToken, label: str) -> list[str]:
    return ["--key-backend", "pkcs11", "--pkcs11-module", token.module, "--pkcs11-token", token.label,
            "--pkcs11-pin-env", token.pin_env, "--key-label", label]


def _one_line_exit_2(result: subprocess.CompletedProcess[str], says: str) -> None:
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("rapki: error:")]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_cli_init_and_rotation_on_a_token_and_its_errors(tmp_path: Path, softhsm_token: SoftHsmToken) -> None:
    home = tmp_path / "home"
    _rapki("init", "--home", str(home), *_pkcs11_args(softhsm_token, "cli"))
    _rapki("ca", "sign-intermediate", "--home", str(home))
    rows = json.loads(_rapki("ca", "list", "--home", str(home), "--json").stdout)
    assert [(r["name"], r["backend"], r["active"]) for r in rows] == [
        ("root", "pkcs11", False), ("issuing-1", "pkcs11", False), ("issuing-2", "pkcs11", True)]
    assert "object=cli-issuing-2" in rows[2]["key_ref"]
    assert "pkcs11" in _rapki("ca", "list", "--home", str(home)).stdout
    _no_key_files(home)
    _one_line_exit_2(_rapki("ca", "sign-intermediate", "--home", str(home), env={softhsm_token.pin_env: "0000"},
                            check=False), "wrong PIN for token 'rapki-test'")
    missing = [*_pkcs11_args(softhsm_token, "nope")]
    missing[missing.index(softhsm_token.label)] = "no-such-token"
    _one_line_exit_2(_rapki("init", "--home", str(tmp_path / "other"), *missing, check=False),
                     "no token labelled 'no-such-token'")
    _one_line_exit_2(_rapki("init", "--home", str(tmp_path / "third"), "--kms-region", "us-east-1", check=False),
                     "--kms-region does not apply to --key-backend file")


@pytest.mark.e2e
def test_cli_init_in_kms_and_an_unreachable_endpoint(tmp_path: Path, aws_env: dict[str, str], kms_url: str) -> None:
    home = tmp_path / "home"
    _rapki("init", "--home", str(home), "--key-backend", "kms", "--kms-region", "us-east-1",
           "--kms-endpoint-url", kms_url, "--key-type", "ec-p384")
    rows = json.loads(_rapki("ca", "list", "--home", str(home), "--json").stdout)
    assert [r["backend"] for r in rows] == ["kms", "kms"]
    assert rows[1]["key_ref"].startswith("kms:arn:aws:kms:us-east-1:")
    _rapki("profile", "add", "web", "--home", str(home), "--cn-pattern", "web-[0-9]+")
    _rapki("issue", "--home", str(home), "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "out"))
    assert openssl_verify(tmp_path / "out" / "cert.pem", root=home / "ca" / "root.pem",
                          untrusted=tmp_path / "out" / "chain.pem").returncode == 0
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    started = time.monotonic()
    result = _rapki("init", "--home", str(tmp_path / "unreachable"), "--key-backend", "kms", "--kms-region",
                    "us-east-1", "--kms-endpoint-url", f"http://127.0.0.1:{closed}", check=False)
    _one_line_exit_2(result, "Could not connect to the endpoint URL")
    assert "after 3 attempts" in result.stderr
    assert time.monotonic() - started < 100  # bounded (the subprocess itself times out at 120 s)


# --- the whole loop on SoftHSM2 -----------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _signer(out: Path, anchor: str, profile: str, emulator: RunningEmulator) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [*signer_cmd(), "credential-process", "--certificate", str(out / "cert.pem"), "--private-key",
         str(out / "key.pem"), "--intermediates", str(out / "chain.pem"), "--trust-anchor-arn", anchor,
         "--profile-arn", profile, "--role-arn", ROLE, "--endpoint", emulator.endpoint_url,
         "--ca-bundle", emulator.ca_bundle], capture_output=True, env=clean, timeout=120, check=False)


@pytest.mark.e2e
def test_full_loop_on_softhsm(tmp_path: Path, softhsm_token: SoftHsmToken, emulator: RunningEmulator) -> None:
    home = tmp_path / "home"
    account = f"{secrets.randbelow(10**11) + 10**11:012d}"
    aws = {"AWS_ACCESS_KEY_ID": account, "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": emulator.region,
           "AWS_ENDPOINT_URL_ROLESANYWHERE": emulator.endpoint_url, "AWS_CA_BUNDLE": emulator.ca_bundle,
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "RAPKI_AWS_RETRY_BASE": "0.05"}
    _rapki("init", "--home", str(home), *_pkcs11_args(softhsm_token, "loop"))
    _rapki("profile", "add", "app", "--home", str(home), "--cn-pattern", "app-[0-9]+")
    _no_key_files(home)

    import boto3

    client: Any = boto3.session.Session().client(
        "rolesanywhere", endpoint_url=emulator.endpoint_url, verify=emulator.ca_bundle, region_name=emulator.region,
        aws_access_key_id=account, aws_secret_access_key="test")
    source = {"sourceType": "CERTIFICATE_BUNDLE",
              "sourceData": {"x509CertificateData": (home / "ca" / "root.pem").read_text()}}
    anchor = client.create_trust_anchor(name="custody-loop", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    profile = client.create_profile(name="custody-loop", roleArns=[ROLE], enabled=True)["profile"]["profileArn"]

    port = _free_port()
    log = (tmp_path / "serve.log").open("w")
    serve = subprocess.Popen([*rapki_cmd(), "serve", "--home", str(home), "--port", str(port), "--workers", "2",
                              "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                             env={**os.environ, "RAPKI_PASSPHRASE": PASSPHRASE})
    url, root = f"https://127.0.0.1:{port}", home / "ca" / "root.pem"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                health = requests.get(url + "/healthz", verify=str(root), timeout=2)
                if health.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if serve.poll() is not None or time.monotonic() > deadline:
                pytest.fail("rapki serve did not come up: " + (tmp_path / "serve.log").read_text()[-3000:])
            time.sleep(0.2)
        assert health.json()["checks"]["ca_key"] == "ok"
        # rapki's own TLS certificate was signed on the token: requests verified it against the root.
        token = json.loads(_rapki("token", "create", "--home", str(home), "--profile", "app", "--cn", "app-1",
                                  "--json").stdout)["token"]
        out = tmp_path / "workload"
        _rapki("enroll", "--url", url, "--token", token, "--out", str(out), "--ca-bundle", str(root))
        assert lint_cert(out / "cert.pem") == ""
        assert openssl_verify(out / "cert.pem", root=root, untrusted=out / "chain.pem").returncode == 0

        first = _signer(out, anchor, profile, emulator)
        assert first.returncode == 0, first.stderr.decode()
        assert json.loads(first.stdout)["AccessKeyId"]

        serial = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes()).serial_number
        _rapki("revoke", "--home", str(home), f"{serial:x}")
        _rapki("crl", "publish", "--home", str(home), "--trust-anchor-arn", anchor, env=aws)
        published = [c for c in client.list_crls()["crls"] if c["trustAnchorArn"] == anchor]
        assert len(published) == 1 and published[0]["enabled"]
        crl_path = tmp_path / "published.crl.pem"
        data = bytes(published[0]["crlData"])
        crl = x509.load_pem_x509_crl(data) if data.startswith(b"-----") else x509.load_der_x509_crl(data)
        _pem(crl_path, crl)
        assert lint_crl(crl_path) == ""
        verdict = openssl_verify(out / "cert.pem", root=root, untrusted=out / "chain.pem", crl=crl_path)
        assert "certificate revoked" in verdict.stdout + verdict.stderr

        refused = _signer(out, anchor, profile, emulator)
        assert refused.returncode == 1 and refused.stdout == b""
        assert "Certificate revoked" in refused.stderr.decode()
    finally:
        serve.terminate()
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
        log.close()
