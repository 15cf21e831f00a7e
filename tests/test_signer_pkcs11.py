"""rapki-signer with keys on a PKCS#11 token (SoftHSM2), end to end against the emulator.

The keys are generated on the token (never extractable), their certificates issued by a test CA
whose root is the trust anchor; the issuing CA's certificate is stored on the token too, so the
chain can come from there. The signer runs as a program, as an SDK would start it.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from pki.signer.tools import fixed_string_to_sign
from tests.commands import signer_cmd
from tests.emulator_fixture import RunningEmulator, make_ca, pem_of
from tests.softhsm_fixture import SoftHsmToken, open_rw_session

pkcs11 = pytest.importorskip("pkcs11")
from pkcs11 import Attribute, CertificateType, ObjectClass  # noqa: E402
from pkcs11 import KeyType as P11KeyType  # noqa: E402
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters  # noqa: E402

pytestmark = pytest.mark.e2e
ROLE = "arn:aws:iam::123456789012:role/signer-pkcs11"


@dataclass
class TokenSetup:
    token: SoftHsmToken
    emulator: RunningEmulator
    anchor: str
    profile: str
    folder: Path
    leaves: dict[str, x509.Certificate]
    issuing: Any  # the issuing CA, with its key

    def args(self, *extra: str) -> list[str]:
        return [*extra, "--trust-anchor-arn", self.anchor, "--profile-arn", self.profile, "--role-arn", ROLE,
                "--endpoint", self.emulator.endpoint_url, "--ca-bundle", self.emulator.ca_bundle,
                "--pkcs11-lib", self.token.module]  # fmt: skip

    def key_uri(self, kind: str, pin: bool = True) -> str:
        return f"pkcs11:token={self.token.label};object=signer-{kind}" + (f"?pin-value={self.token.pin}" if pin else "")


def _public_key(pub: Any) -> Any:
    if pub.key_type == P11KeyType.EC:
        return serialization.load_der_public_key(encode_ec_public_key(pub))
    numbers = rsa.RSAPublicNumbers(int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big"),
                                   int.from_bytes(pub[Attribute.MODULUS], "big"))  # fmt: skip
    return numbers.public_key()


def _leaf(issuer: Any, public_key: Any, cn: str) -> x509.Certificate:
    now = datetime.now(UTC) - timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer.cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )


def _store_certificate(session: Any, cert: x509.Certificate, label: str, key_id: bytes) -> None:
    session.create_object({
        Attribute.CLASS: ObjectClass.CERTIFICATE, Attribute.CERTIFICATE_TYPE: CertificateType.X_509,
        Attribute.TOKEN: True, Attribute.LABEL: label, Attribute.ID: key_id,
        Attribute.SUBJECT: cert.subject.public_bytes(), Attribute.VALUE: cert.public_bytes(serialization.Encoding.DER),
    })  # fmt: skip


@pytest.fixture(scope="module")
def hsm(softhsm_token: SoftHsmToken, emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> TokenSetup:
    root = make_ca("PKCS11 Root")
    issuing = make_ca("PKCS11 Issuing", parent=root)
    lib = pkcs11.lib(softhsm_token.module)
    token = lib.get_token(token_label=softhsm_token.label)
    folder = tmp_path_factory.mktemp("signer-pkcs11")
    leaves = {}
    with open_rw_session(token, softhsm_token.pin) as session:
        _store_certificate(session, issuing.cert, "signer-issuing", b"\x7f\x01")
        for kind, key_id in (("ec", b"\x51\x01"), ("rsa", b"\x51\x02")):
            common = {"store": True, "label": f"signer-{kind}", "id": key_id}
            if kind == "ec":
                params = session.create_domain_parameters(
                    P11KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
                pub, _priv = params.generate_keypair(**common)
            else:
                pub, _priv = session.generate_keypair(P11KeyType.RSA, 2048, **common)
            leaf = _leaf(issuing, _public_key(pub), f"pkcs11-{kind}")
            _store_certificate(session, leaf, f"signer-{kind}", key_id)
            (folder / f"{kind}.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
            leaves[kind] = leaf
    (folder / "chain.pem").write_text(pem_of(issuing.cert))
    client = emulator.boto3_client()
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    anchor = client.create_trust_anchor(name="pkcs11", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    profile = client.create_profile(name="pkcs11", roleArns=[ROLE], enabled=True)["profile"]["profileArn"]
    return TokenSetup(softhsm_token, emulator, anchor, profile, folder, leaves, issuing)


def run_signer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_") and k != "RAPKI_SIGNER_PKCS11_PIN"}
    return subprocess.run([*signer_cmd(), *args], capture_output=True, env={**clean, **(env or {})},
                          stdin=subprocess.DEVNULL, timeout=120, check=False)  # fmt: skip


def assert_credentials(result: subprocess.CompletedProcess[bytes]) -> None:
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["AccessKeyId"]


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_certificate_file_and_token_key(hsm: TokenSetup, kind: str) -> None:
    args = hsm.args("--certificate", str(hsm.folder / f"{kind}.pem"), "--private-key", hsm.key_uri(kind),
                    "--intermediates", str(hsm.folder / "chain.pem"))  # fmt: skip
    assert_credentials(run_signer("credential-process", *args))


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_key_uri_alone_finds_certificate_and_chain_on_the_token(hsm: TokenSetup, kind: str) -> None:
    """The PIN from $RAPKI_SIGNER_PKCS11_PIN; certificate and issuing CA from the token."""
    args = hsm.args("--private-key", hsm.key_uri(kind, pin=False))
    assert_credentials(run_signer("credential-process", *args, env={"RAPKI_SIGNER_PKCS11_PIN": hsm.token.pin}))


def test_certificate_uri_alone_with_pin_source(hsm: TokenSetup, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(hsm.token.pin + "\n")
    uri = f"pkcs11:token={hsm.token.label};object=signer-ec?pin-source=file:{pin_file}"
    assert_credentials(run_signer("credential-process", *hsm.args("--certificate", uri)))


def test_no_pin_without_a_terminal_says_where_to_put_it(hsm: TokenSetup) -> None:
    result = run_signer("credential-process", *hsm.args("--private-key", hsm.key_uri("ec", pin=False)))
    assert result.returncode == 1 and result.stdout == b""
    assert b"pin-value=" in result.stderr and b"RAPKI_SIGNER_PKCS11_PIN" in result.stderr


@pytest.mark.parametrize(("uri", "message"), [
    ("pkcs11:token=t;object=k;pin-value=123456", "pin-value is a query attribute: put it after '?'"),
    ("pkcs11:token=t;pin-source=/run/pin", "pin-source is a query attribute"),
    ("pkcs11:tokn=t", "unknown attribute 'tokn'"),
    ("pkcs11://token=t", "unknown attribute '//token'"),
    ("pkcs11:token=a%ZZb", "'%' not followed by two hex digits"),
])
def test_uri_mistakes_are_named_without_echoing_a_pin(uri: str, message: str) -> None:
    from pki.signer.pkcs11 import Pkcs11Error, Pkcs11Uri

    with pytest.raises(Pkcs11Error, match=message) as caught:
        Pkcs11Uri.parse(uri)
    assert "123456" not in str(caught.value)
    assert Pkcs11Uri.parse("pkcs11:token=t;object=k;x-vendor=1?pin-value=1&other=2").query["pin-value"] == b"1"


def test_wrong_pin(hsm: TokenSetup) -> None:
    uri = f"pkcs11:token={hsm.token.label};object=signer-ec?pin-value=0000-wrong"
    result = run_signer("credential-process", *hsm.args("--private-key", uri))
    assert result.returncode == 1 and b"wrong user PIN" in result.stderr


def test_read_certificate_data_lists_matching_identities(hsm: TokenSetup) -> None:
    result = run_signer("read-certificate-data", "--certificate", f"pkcs11:token={hsm.token.label};object=signer-rsa",
                        "--pkcs11-lib", hsm.token.module)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    lines = result.stdout.decode().split("\n")
    leaf = hsm.leaves["rsa"]
    assert lines[0] == "Matching identities"
    assert lines[1] == f"1) Hex Fingerprint: {hashlib.sha1(leaf.public_bytes(serialization.Encoding.DER)).hexdigest()}"
    assert lines[2] == f"Subject: {leaf.subject.rfc4514_string()}"
    assert lines[4] == f"Serial Number: {leaf.serial_number:X}"
    assert lines[5].startswith("URI: pkcs11:") and "id=Q%02" in lines[5] and "type=cert" in lines[5]
    again = run_signer("read-certificate-data", "--certificate", lines[5][5:], "--pkcs11-lib", hsm.token.module)
    assert again.stdout.decode().split("\n")[1] == lines[1]
    none = run_signer("read-certificate-data", "--certificate", "pkcs11:object=no-such-object",
                      "--pkcs11-lib", hsm.token.module)  # fmt: skip
    assert none.stdout == b"No matching identities\n"


@pytest.mark.parametrize("kind", ["ec", "rsa"])
def test_sign_string_with_a_token_key(hsm: TokenSetup, kind: str) -> None:
    result = run_signer("sign-string", "--private-key", hsm.key_uri(kind), "--pkcs11-lib", hsm.token.module,
                        "--format", "bin")  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    public = hsm.leaves[kind].public_key()
    data = fixed_string_to_sign(public)
    if isinstance(public, ec.EllipticCurvePublicKey):
        public.verify(result.stdout, data, ec.ECDSA(hashes.SHA256()))
    else:
        assert isinstance(public, rsa.RSAPublicKey)
        public.verify(result.stdout, data, padding.PKCS1v15(), hashes.SHA256())


def test_missing_module_is_named(hsm: TokenSetup) -> None:
    result = run_signer("credential-process", *hsm.args("--private-key", hsm.key_uri("ec")), "--pkcs11-lib",
                        "/nonexistent/libnothing.so")  # fmt: skip
    assert result.returncode == 1 and b"cannot load the PKCS#11 module" in result.stderr


def test_serve_refreshes_with_a_token_key(hsm: TokenSetup, tmp_path: Path) -> None:
    """serve reloads its material at every refresh: the token session is reused, not logged in twice."""
    from pki.signer.serve import make_server
    from pki.signer.session import SessionOptions

    opts = SessionOptions(
        private_key=hsm.key_uri("rsa"), pkcs11_lib=hsm.token.module, trust_anchor_arn=hsm.anchor,
        profile_arn=hsm.profile, role_arn=ROLE, endpoint=hsm.emulator.endpoint_url,
        ca_bundle=hsm.emulator.ca_bundle, max_attempts=1,
    )  # fmt: skip
    server = make_server(opts, port=0, fail_fast=True, container_token_file=str(tmp_path / "token"))
    try:
        first = server.cache.credentials
        assert server.cache.refresh(force=True), server.cache.last_error
        assert server.cache.credentials is not None and server.cache.credentials != first
        assert server.cache.material is not None and server.cache.material.certificate == hsm.leaves["rsa"]
    finally:
        server.server_close()


@pytest.fixture(scope="module")
def always_auth_key(hsm: TokenSetup) -> Any:
    """The public half of an EC key marked CKA_ALWAYS_AUTHENTICATE (a PIN before each signature)."""
    token = pkcs11.lib(hsm.token.module).get_token(token_label=hsm.token.label)
    with open_rw_session(token, hsm.token.pin) as session:
        params = session.create_domain_parameters(
            P11KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}, local=True)
        pub, _priv = params.generate_keypair(store=True, label="signer-always", id=b"\x51\x03",
                                             private_template={Attribute.ALWAYS_AUTHENTICATE: True})  # fmt: skip
        return _public_key(pub)


def test_always_authenticate_key_is_refused_with_the_reason(
    hsm: TokenSetup, always_auth_key: Any, tmp_path: Path
) -> None:
    cert = tmp_path / "always.pem"
    cert.write_bytes(_leaf(hsm.issuing, always_auth_key, "pkcs11-always").public_bytes(serialization.Encoding.PEM))
    args = hsm.args("--certificate", str(cert), "--private-key", hsm.key_uri("always"), "--reuse-pin")
    refused = run_signer("credential-process", *args)
    assert refused.returncode == 1 and refused.stdout == b""
    assert b"CKA_ALWAYS_AUTHENTICATE" in refused.stderr, refused.stderr
