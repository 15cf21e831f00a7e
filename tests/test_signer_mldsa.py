"""rapki-signer with ML-DSA keys (FIPS 204): the key forms it reads, its diagnostic commands, and
the shared AWS4-X509-MLDSA vectors from the command itself.

Request signatures are checked with dilithium-py, a second ML-DSA implementation, not with the
library that made them. Keys in the helper's form (``SEQUENCE { seed, expandedKey }``) come from
the shared vectors (written by OpenSSL's layout) or are built here from dilithium-py's expanded key.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from asn1crypto import algos, core, keys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import ec, mldsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pki.rolesanywhere import sigv4x509
from pki.signer import material
from pki.signer.tools import fixed_string_to_sign
from pki.x509.keys import KeyType
from tests.emulator_fixture import InProcessEmulator, RunningEmulator, make_ca, make_leaf, pem_of
from tests.test_signer import FakeService, _vector_command, run_signer

ml_dsa = pytest.importorskip("dilithium_py.ml_dsa")
VECTORS = next((p for p in (Path(__file__).resolve().parents[2] / "shared" / "vectors" / "sigv4-x509-mldsa",
                            Path("/work/shared/vectors/sigv4-x509-mldsa")) if p.is_dir()), None)
VECTOR_NAMES = sorted(p.name for p in VECTORS.iterdir() if (p / "vector.json").is_file()) if VECTORS else []
SCHEMES = {"ml-dsa-44": ml_dsa.ML_DSA_44, "ml-dsa-65": ml_dsa.ML_DSA_65, "ml-dsa-87": ml_dsa.ML_DSA_87}
OIDS = {"ml-dsa-44": "2.16.840.1.101.3.4.3.17", "ml-dsa-65": "2.16.840.1.101.3.4.3.18",
        "ml-dsa-87": "2.16.840.1.101.3.4.3.19"}


# ------------------------------------------------------------------------------------------------
# PKCS#8 in the forms other tools write, built by hand (asn1crypto), independently of the signer


class _Algorithm(core.Sequence):
    _fields = [("algorithm", core.ObjectIdentifier), ("parameters", core.Any, {"optional": True})]


class _PrivateKeyInfo(core.Sequence):
    _fields = [("version", core.Integer), ("algorithm", _Algorithm), ("private_key", core.OctetString)]


class _SeedAndExpanded(core.Sequence):
    _fields = [("seed", core.OctetString), ("expanded", core.OctetString)]


def pkcs8(key_type: str, inner: bytes) -> bytes:
    return _PrivateKeyInfo({"version": 0, "algorithm": {"algorithm": OIDS[key_type]}, "private_key": inner}).dump()


def seed_and_expanded(key_type: str, seed: bytes, expanded: bytes | None = None) -> bytes:
    """OpenSSL's default form: the seed and FIPS 204's expanded key (from dilithium-py)."""
    if expanded is None:
        expanded = SCHEMES[key_type].key_derive(seed)[1]
    return pkcs8(key_type, _SeedAndExpanded({"seed": seed, "expanded": expanded}).dump())


def pem(der: bytes, label: str = "PRIVATE KEY") -> bytes:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = "\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return f"-----BEGIN {label}-----\n{lines}\n-----END {label}-----\n".encode()


class _ScryptParams(core.Sequence):
    _fields = [("salt", core.OctetString), ("cost", core.Integer), ("block_size", core.Integer),
               ("parallelization", core.Integer)]


def encrypt_pkcs8(der: bytes, password: bytes, kdf: str) -> bytes:
    """RFC 8018 PBES2, AES-256-CBC, with PBKDF2-HMAC-SHA-512 or scrypt (RFC 7914): as ``openssl
    pkcs8 -topk8 -v2 aes-256-cbc [-v2prf hmacWithSHA512 | -scrypt]`` writes it."""
    salt, iv = os.urandom(16), os.urandom(16)
    if kdf == "scrypt":
        key = Scrypt(salt=salt, length=32, n=1024, r=8, p=1).derive(password)
        kdf_value: Any = {"algorithm": "1.3.6.1.4.1.11591.4.11",
                          "parameters": core.Any.load(_ScryptParams({"salt": salt, "cost": 1024, "block_size": 8,
                                                                      "parallelization": 1}).dump())}
        kdf_asn1 = _Algorithm(kdf_value)
    else:
        key = PBKDF2HMAC(algorithm=hashes.SHA512(), length=32, salt=salt, iterations=2048).derive(password)
        kdf_asn1 = algos.KdfAlgorithm({"algorithm": "pbkdf2", "parameters": {
            "salt": ("specified", salt), "iteration_count": 2048, "prf": {"algorithm": "sha512", "parameters": core.Null()}}})
    padder = sym_padding.PKCS7(128).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    data = encryptor.update(padder.update(der) + padder.finalize()) + encryptor.finalize()
    scheme = core.Sequence()
    scheme._contents = core.Any.load(kdf_asn1.dump()).dump() + \
        algos.EncryptionAlgorithm({"algorithm": "aes256_cbc", "parameters": iv}).dump()
    algorithm = _Algorithm({"algorithm": "1.2.840.113549.1.5.13", "parameters": core.Any.load(scheme.dump())})
    info = core.Sequence()
    info._contents = algorithm.dump() + core.OctetString(data).dump()
    return pem(info.dump(), "ENCRYPTED PRIVATE KEY")


@pytest.mark.parametrize("kdf", ["pbkdf2", "scrypt"])
def test_encryption_built_here_is_standard(kdf: str) -> None:
    """The encrypted PKCS#8 built above opens in ``cryptography`` for an EC key (so the ML-DSA
    cases below test the signer, not this file's encoding)."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    opened = serialization.load_pem_private_key(encrypt_pkcs8(der, b"s3cret", kdf), b"s3cret")
    assert isinstance(opened, ec.EllipticCurvePrivateKey)
    assert opened.private_numbers() == key.private_numbers()
    assert keys.EncryptedPrivateKeyInfo.load(base64.b64decode(b"".join(
        encrypt_pkcs8(der, b"x", kdf).splitlines()[1:-1])))["encryption_algorithm"]["algorithm"].native == "pbes2"


# ------------------------------------------------------------------------------------------------
# The key forms


@pytest.mark.parametrize("key_type", sorted(SCHEMES))
def test_both_forms_clear_pem_and_der(key_type: str) -> None:
    seed = os.urandom(32)
    expected = SCHEMES[key_type].key_derive(seed)[0]
    seed_only = pkcs8(key_type, b"\x80\x20" + seed)
    for der in (seed_and_expanded(key_type, seed), seed_only):
        for data in (der, pem(der)):
            key = material.parse_private_key(data, None, "k.pem")
            assert key.public_key().public_bytes_raw() == expected  # type: ignore[union-attr]


@pytest.mark.parametrize("kdf", ["pbkdf2", "scrypt"])
def test_encrypted_both_forms(kdf: str) -> None:
    seed = os.urandom(32)
    for der in (seed_and_expanded("ml-dsa-65", seed), pkcs8("ml-dsa-65", b"\x80\x20" + seed)):
        data = encrypt_pkcs8(der, b"pq pass", kdf)
        key = material.parse_private_key(data, "pq pass", "k.pem")
        assert key.private_bytes_raw() == seed  # type: ignore[union-attr]
        with pytest.raises(material.MaterialError, match="--pkcs8-password"):
            material.parse_private_key(data, None, "k.pem")
        with pytest.raises(material.MaterialError):
            material.parse_private_key(data, "wrong", "k.pem")


def test_encrypted_der() -> None:
    seed = os.urandom(32)
    data = base64.b64decode(b"".join(encrypt_pkcs8(seed_and_expanded("ml-dsa-87", seed), b"pw", "pbkdf2")
                                     .splitlines()[1:-1]))
    assert material.parse_private_key(data, "pw", "k.der").private_bytes_raw() == seed  # type: ignore[union-attr]
    with pytest.raises(material.MaterialError):
        material.parse_private_key(data, "not it", "k.der")


def test_cryptography_encrypted_seed_form() -> None:
    key = mldsa.MLDSA44PrivateKey.generate()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.BestAvailableEncryption(b"pw"))
    assert material.parse_private_key(data, "pw").private_bytes_raw() == key.private_bytes_raw()  # type: ignore[union-attr]


def test_expanded_key_of_another_seed_refused() -> None:
    seed, other = os.urandom(32), os.urandom(32)
    forged = seed_and_expanded("ml-dsa-65", seed, SCHEMES["ml-dsa-65"].key_derive(other)[1])
    with pytest.raises(material.MaterialError, match="expanded key is not the one its seed makes"):
        material.parse_private_key(pem(forged), None, "k.pem")
    cut = seed_and_expanded("ml-dsa-65", seed, SCHEMES["ml-dsa-65"].key_derive(seed)[1][:-1])
    with pytest.raises(material.MaterialError, match="expanded key"):
        material.parse_private_key(pem(cut), None, "k.pem")


def test_expanded_only_form_refused_with_the_way_out() -> None:
    expanded = SCHEMES["ml-dsa-44"].key_derive(os.urandom(32))[1]
    with pytest.raises(material.MaterialError, match=r"only the expanded key.*with the seed"):
        material.parse_private_key(pem(pkcs8("ml-dsa-44", core.OctetString(expanded).dump())), None, "k.pem")


# ------------------------------------------------------------------------------------------------
# The shared vectors: key.pem in the helper's form, key-seed.pem in cryptography's


@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_key_forms_are_one_key(name: str) -> None:
    assert VECTORS is not None
    folder = VECTORS / name
    both = material.load_material(str(folder / "leaf.pem"), str(folder / "key.pem"), str(folder / "chain.pem"))
    seed_only = material.parse_private_key((folder / "key-seed.pem").read_bytes(), None)
    assert both.private_key.private_bytes_raw() == seed_only.private_bytes_raw()  # type: ignore[union-attr]
    assert material.key_type_label(both.certificate.public_key()) == "ML-DSA-65"


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("faketime") is None, reason="faketime is not installed")
@pytest.mark.parametrize("key_file", ["key.pem", "key-seed.pem"])
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_vector_from_the_command(name: str, key_file: str) -> None:
    """``credential-process`` at the vector's time sends its canonical request; the signature
    verifies (dilithium-py, empty context) over its string to sign."""
    assert VECTORS is not None
    folder = VECTORS / name
    v = json.loads((folder / "vector.json").read_text())
    service = FakeService()  # as an HTTP proxy: the Host header stays the AWS host, nothing leaves
    try:
        args = [*_vector_command(v, folder), "--endpoint", f"http://{v['host']}", "--with-proxy",
                "--intermediates", str(folder / "chain.pem")]
        args[args.index(str(folder / "key.pem"))] = str(folder / key_file)
        proxy = {"HTTP_PROXY": service.url, "http_proxy": service.url, "NO_PROXY": "", "no_proxy": ""}
        result = subprocess.run(args, capture_output=True, env={**os.environ, **proxy}, timeout=60, check=False)
        assert result.returncode == 0, result.stderr.decode()
    finally:
        service.close()
    (req,) = service.requests
    assert req["path"].split("/sessions?", 1)[1] == v["canonical_request"].split("\n")[2]
    authorization = req["headers"]["Authorization"]
    assert authorization.startswith(v["authorization_prefix"])
    signature = bytes.fromhex(authorization.removeprefix(v["authorization_prefix"]))
    leaf = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
    public = leaf.public_key().public_bytes_raw()  # type: ignore[union-attr]
    assert SCHEMES[v["key_type"]].verify(public, v["string_to_sign"].encode(), signature, ctx=b"")


# ------------------------------------------------------------------------------------------------
# read-certificate-data and sign-string answer as the helper does for ML-DSA


@pytest.mark.e2e
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_read_certificate_data(name: str) -> None:
    assert VECTORS is not None
    folder = VECTORS / name
    result = run_signer("read-certificate-data", "--certificate", str(folder / "leaf.pem"))
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    leaf = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
    assert doc == {
        "keyType": "ML-DSA-65",
        "certificateData": base64.b64encode(leaf.public_bytes(serialization.Encoding.DER)).decode(),
        "serialNumber": str(leaf.serial_number),
        "supportedAlgorithms": ["ML-DSA-65"],
    }


@pytest.mark.e2e
@pytest.mark.parametrize("name", VECTOR_NAMES)
def test_sign_string(name: str) -> None:
    """The helper's fixed string has no key suffix for ML-DSA and is signed as is (pure ML-DSA,
    empty context); ``--digest`` does not apply."""
    assert VECTORS is not None
    folder = VECTORS / name
    result = run_signer("sign-string", "--private-key", str(folder / "key.pem"), "--format", "text",
                        "--digest", "SHA384")
    assert result.returncode == 0, result.stderr.decode()
    leaf = x509.load_pem_x509_certificate((folder / "leaf.pem").read_bytes())
    data = fixed_string_to_sign(leaf.public_key())
    assert data == b"AWS Roles Anywhere Credential Helper Signing Test1"
    public = leaf.public_key().public_bytes_raw()  # type: ignore[union-attr]
    assert SCHEMES["ml-dsa-65"].verify(public, data, bytes.fromhex(result.stdout.decode()), ctx=b"")


# ------------------------------------------------------------------------------------------------
# Proof: ML-DSA leaf -> rapki-signer credential-process -> the emulator's credentials, with the
# request the signer sent verified by dilithium-py


class _ForwardHandler(BaseHTTPRequestHandler):
    server: RecordingEmulator

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = dict(self.headers)
        self.server.requests.append({"path": self.path, "headers": headers, "body": body})
        answer = self.server.emulator.client.post(self.path, data=body, headers=headers,
                                                  base_url=f"http://{headers['Host']}")
        payload = answer.get_data()
        self.send_response(answer.status_code)
        for name in ("Content-Type", "X-Amzn-ErrorType"):
            if name in answer.headers:
                self.send_header(name, answer.headers[name])
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


class RecordingEmulator(ThreadingHTTPServer):
    """A loopback HTTP endpoint that records each request and hands it, bytes and headers as
    received, to the in-process emulator; the emulator's answer goes back to the signer."""

    def __init__(self, emulator: InProcessEmulator) -> None:
        super().__init__(("127.0.0.1", 0), _ForwardHandler)
        self.emulator = emulator
        self.requests: list[dict[str, Any]] = []
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _write_leaf_files(tmp_path: Path, leaf: x509.Certificate, key: Any, chain: list[x509.Certificate],
                      helper_form: bool) -> None:
    (tmp_path / "cert.pem").write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "chain.pem").write_text(pem_of(*chain))
    key_type = str(KeyType.of(key))
    seed = key.private_bytes_raw()
    der = seed_and_expanded(key_type, seed) if helper_form else pkcs8(key_type, b"\x80\x20" + seed)
    (tmp_path / "key.pem").write_bytes(pem(der))


PROOF_CHAINS = {
    # name: (root, issuing CA, leaf) key types; the key file in the helper's form or cryptography's
    "EC root, EC issuing CA, ML-DSA-65 leaf": ("ec-p256", "ec-p384", "ml-dsa-65", True),
    "all ML-DSA": ("ml-dsa-87", "ml-dsa-65", "ml-dsa-65", False),
}


@pytest.mark.e2e
@pytest.mark.parametrize("name", list(PROOF_CHAINS))
def test_mldsa_leaf_gets_credentials_from_the_emulator(name: str, tmp_path: Path,
                                                      emulator_app: InProcessEmulator) -> None:
    root_type, issuing_type, leaf_type, helper_form = PROOF_CHAINS[name]
    root = make_ca("PQ Proof Root", key_type=root_type)
    issuing = make_ca("PQ Proof Issuing", parent=root, key_type=issuing_type)
    leaf, key = make_leaf(issuing, "pq-workload", key_type=leaf_type)
    _write_leaf_files(tmp_path, leaf, key, [issuing.cert], helper_form)
    role = "arn:aws:iam::123456789012:role/pq-proof"
    anchor, profile = emulator_app.trust_anchor(root.cert), emulator_app.profile(role)
    endpoint = RecordingEmulator(emulator_app)
    try:
        result = run_signer(
            "credential-process", "--certificate", str(tmp_path / "cert.pem"), "--private-key",
            str(tmp_path / "key.pem"), "--intermediates", str(tmp_path / "chain.pem"), "--trust-anchor-arn", anchor,
            "--profile-arn", profile, "--role-arn", role, "--endpoint", endpoint.url)
    finally:
        endpoint.shutdown()
        endpoint.server_close()
    assert result.returncode == 0, result.stderr.decode()
    credentials = json.loads(result.stdout)
    assert credentials["Version"] == 1 and credentials["AccessKeyId"] and credentials["SessionToken"]
    (request,) = endpoint.requests
    verified = sigv4x509.verify_create_session(
        method="POST", path="/sessions", raw_query=request["path"].partition("?")[2], headers=request["headers"],
        body=request["body"], now=datetime.now(UTC))
    assert verified.authorization.algorithm == "AWS4-X509-MLDSA"
    public = leaf.public_key().public_bytes_raw()  # type: ignore[union-attr]
    scheme = SCHEMES[leaf_type]
    assert scheme.verify(public, verified.string_to_sign.encode(), verified.authorization.signature, ctx=b"")
    assert not scheme.verify(public, verified.string_to_sign.encode()[:-1], verified.authorization.signature)


@pytest.mark.e2e
def test_largest_mldsa_headers_pass_the_real_emulator(emulator: RunningEmulator, tmp_path: Path) -> None:
    """ML-DSA-87 everywhere, over HTTPS through gunicorn: a 4,627-byte signature (9.3 KB of hex in
    Authorization) and a chain certificate of ~7 KB (9.5 KB of base64) exceed the 8 KB header
    field limit HTTP servers default to."""
    root = make_ca("PQ Big Root", key_type="ml-dsa-87")
    issuing = make_ca("PQ Big Issuing", parent=root, key_type="ml-dsa-87")
    leaf, key = make_leaf(issuing, "pq-big", key_type="ml-dsa-87")
    _write_leaf_files(tmp_path, leaf, key, [issuing.cert], helper_form=True)
    client = emulator.boto3_client()
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    anchor = client.create_trust_anchor(name="pq-big", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    role = "arn:aws:iam::123456789012:role/pq-big"
    profile = client.create_profile(name="pq-big", roleArns=[role], enabled=True)["profile"]["profileArn"]
    result = run_signer(
        "credential-process", "--certificate", str(tmp_path / "cert.pem"), "--private-key", str(tmp_path / "key.pem"),
        "--intermediates", str(tmp_path / "chain.pem"), "--trust-anchor-arn", anchor, "--profile-arn", profile,
        "--role-arn", role, "--endpoint", emulator.endpoint_url, "--ca-bundle", emulator.ca_bundle)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["AccessKeyId"]
