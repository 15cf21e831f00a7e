"""Post-quantum ML-DSA (FIPS 204) on the CA side: both PKCS#8 forms of a key, CA hierarchies of
every mix (EC root with ML-DSA issuing CA or ML-DSA leaves, ML-DSA roots), CSR enrollment and
server-made keys, CRLs, RAPKI-SIG-V1 request signatures, a CA key in KMS (moto's stand-in) and the
refusal of PKCS#12 (PKCS#11's: tests/test_custody_pkcs11.py). Every ML-DSA signature is checked by dilithium-py, a second FIPS 204
implementation; every certificate and CRL by pkilint (0.13 knows ML-DSA keys; it does not check
ML-DSA signatures, and the installed openssl 3.0 has no ML-DSA)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from asn1crypto import core
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from dilithium_py import ml_dsa

from pki.ca.authority import CertificateAuthority, InitOptions
from pki.ca.tokens import TokenStore
from pki.custody.refs import KmsRef
from pki.errors import InvalidInput
from pki.workload.client import EnrollmentClient, make_csr, sign_request, string_to_sign
from pki.workload.client import enroll as do_enroll
from pki.x509.issuance import load_csr
from pki.x509.keys import (
    KeyType,
    key_family,
    load_private_key,
    workload_key_pem,
)
from pki.x509.mldsa_params import MLDSA_OIDS
from pki.x509.pem import pkcs12_bundle
from pki.x509.preflight import leaf_problems
from pki.x509.profiles import Profile
from service.api import create_app
from service.cli import main
from tests.conftest import PASSPHRASE, make_ca
from tests.custody_builders import ca_builder
from tests.validators import dilithium_verifies, dilithium_verifies_issued, lint_cert, lint_chain, lint_crl

VECTORS = Path("/work/shared/vectors/sigv4-x509-mldsa/mldsa65-commercial-chain")
MLDSA = [KeyType.ML_DSA_44, KeyType.ML_DSA_65, KeyType.ML_DSA_87]
_SCHEMES = {KeyType.ML_DSA_44: ml_dsa.ML_DSA_44, KeyType.ML_DSA_65: ml_dsa.ML_DSA_65,
            KeyType.ML_DSA_87: ml_dsa.ML_DSA_87}


def _der(pem: bytes) -> bytes:
    return base64.b64decode(b"".join(pem.strip().splitlines()[1:-1]))


# --- the two PKCS#8 forms ---------------------------------------------------------------------------
@pytest.mark.skipif(not VECTORS.is_dir(), reason="the shared ML-DSA vectors are not on this machine")
def test_both_forms_of_the_shared_vector_key_are_one_key_and_ours_is_byte_identical() -> None:
    both, seed_only = (VECTORS / "key.pem").read_bytes(), (VECTORS / "key-seed.pem").read_bytes()
    key, same = load_private_key(both), load_private_key(seed_only)
    assert KeyType.of(key) is KeyType.ML_DSA_65
    assert key.private_bytes_raw() == same.private_bytes_raw()  # type: ignore[union-attr]
    assert _der(workload_key_pem(same)) == _der(both)  # the form AWS's helper reads, as OpenSSL writes it


@pytest.mark.parametrize("key_type", MLDSA)
def test_workload_keys_are_seed_and_expanded_and_sign_with_dilithium_py(key_type: KeyType) -> None:
    """What a workload gets is SEQUENCE {seed, expandedKey}; a second implementation signs with the
    expanded key and the signature verifies with the key's public key."""
    key = key_type.generate()
    pem = workload_key_pem(key)
    info = core.Sequence.load(_der(pem))
    assert core.ObjectIdentifier.load(info[1].contents[:11]).dotted == MLDSA_OIDS[key_type.value]
    inner = core.Sequence.load(core.OctetString.load(info[2].dump()).native)
    seed, expanded = core.OctetString.load(inner[0].dump()).native, core.OctetString.load(inner[1].dump()).native
    assert seed == key.private_bytes_raw()  # type: ignore[union-attr]
    signature = _SCHEMES[key_type].sign(expanded, b"message", ctx=b"")
    key.public_key().verify(signature, b"message")  # type: ignore[call-arg]
    assert load_private_key(pem).private_bytes_raw() == seed  # type: ignore[union-attr]


def test_a_key_whose_expanded_half_is_not_its_seeds_is_refused() -> None:
    der = bytearray(_der(workload_key_pem(KeyType.ML_DSA_65.generate())))
    der[-10] ^= 0x01
    with pytest.raises(InvalidInput, match="expanded key is not the one its seed makes"):
        load_private_key(bytes(der))


def test_pkcs12_refuses_ml_dsa_keys_clearly() -> None:
    key = KeyType.ML_DSA_65.generate()
    with pytest.raises(InvalidInput, match="PKCS#12 bundle cannot hold an ml-dsa-65 key"):
        pkcs12_bundle(b"x", key, ca_builder(key.public_key()).sign(key, None), [], b"password-password")


# --- hierarchies ------------------------------------------------------------------------------------
def _verified_by(issuer: x509.Certificate, signed: x509.Certificate | x509.CertificateRevocationList) -> None:
    """``signed`` carries ``issuer``'s signature: dilithium-py for ML-DSA (its algorithm identifier
    without parameters, RFC 9881), cryptography otherwise (openssl judges those in the EC tests)."""
    public_key = issuer.public_key()
    if key_family(public_key) == "mldsa":
        assert signed.signature_algorithm_oid.dotted_string == MLDSA_OIDS[KeyType.of(public_key).value]
        assert signed.signature_algorithm_parameters is None
        assert dilithium_verifies_issued(public_key, signed)
    elif isinstance(signed, x509.Certificate):
        signed.verify_directly_issued_by(issuer)
    else:
        assert signed.is_signature_valid(public_key)  # type: ignore[arg-type]


def _pem(path: Path, item: x509.Certificate | x509.CertificateRevocationList) -> Path:
    path.write_bytes(item.public_bytes(serialization.Encoding.PEM))
    return path


MIXES = [  # root, issuing CA, leaf
    (KeyType.EC_P256, KeyType.ML_DSA_65, KeyType.ML_DSA_65),
    (KeyType.EC_P256, KeyType.EC_P256, KeyType.ML_DSA_44),
    (KeyType.ML_DSA_65, KeyType.ML_DSA_65, KeyType.EC_P256),
    (KeyType.ML_DSA_44, KeyType.ML_DSA_44, KeyType.RSA_2048),
    (KeyType.ML_DSA_87, KeyType.ML_DSA_87, KeyType.ML_DSA_87),
    (KeyType.RSA_2048, KeyType.ML_DSA_87, KeyType.ML_DSA_65),
]


@pytest.mark.parametrize(("root_type", "issuing_type", "leaf_type"), MIXES, ids=lambda k: str(k))
def test_mixed_hierarchies_issue_csr_and_server_keys_and_sign_crls(
        tmp_path: Path, passphrase_env: str, root_type: KeyType, issuing_type: KeyType, leaf_type: KeyType) -> None:
    ca = make_ca(tmp_path / "home", root_type)
    if issuing_type is not root_type:
        ca.sign_intermediate(key_type=issuing_type)  # rotation into another key type: `ca sign-intermediate`
    root, issuing = ca.root_certificate, ca.issuer().certificate
    assert KeyType.of(issuing.public_key()) is issuing_type
    server_made = ca.issue("web", cn="web-1", key_type=leaf_type)
    own_key = leaf_type.generate()
    from_csr = ca.issue("web", csr=load_csr(make_csr(own_key, "web-2", ["dns:a.example.com"])))
    assert KeyType.of(from_csr.certificate.public_key()) is leaf_type
    assert server_made.private_key is not None and load_private_key(server_made.key_pem.data)  # type: ignore[union-attr]
    ca.revoke(from_csr.serial_hex, reason="keyCompromise")
    crl = ca.build_crl().crl
    assert crl.get_revoked_certificate_by_serial_number(from_csr.certificate.serial_number) is not None
    _verified_by(root, root)
    _verified_by(root, issuing)
    for leaf in (server_made.certificate, from_csr.certificate):
        _verified_by(issuing, leaf)
        assert leaf_problems(leaf) == []
    _verified_by(issuing, crl)
    paths = {name: _pem(tmp_path / f"{name}.pem", item) for name, item in
             (("root", root), ("issuing", issuing), ("leaf", server_made.certificate), ("crl", crl))}
    for name in ("root", "issuing", "leaf"):
        assert lint_cert(paths[name]) == "", name
    assert lint_chain(paths["root"], paths["issuing"]) == ""
    assert lint_chain(paths["issuing"], paths["leaf"]) == ""
    assert lint_crl(paths["crl"]) == ""


def test_a_profile_limited_to_ml_dsa_refuses_ec(ca: CertificateAuthority) -> None:
    ca.add_profile(Profile(name="pq", cn_pattern=r"pq-[0-9]+", key_types=(KeyType.ML_DSA_65,)))
    assert KeyType.of(ca.issue("pq", cn="pq-1").certificate.public_key()) is KeyType.ML_DSA_65  # the default
    with pytest.raises(Exception, match="ec-p256"):
        ca.issue("pq", cn="pq-2", key_type=KeyType.EC_P256)


# --- request signatures and the API -----------------------------------------------------------------
def test_request_signature_with_ml_dsa_is_pure_ml_dsa_and_accepted_by_the_server(
        tmp_path: Path, passphrase_env: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """RAPKI-SIG-V1 with an ML-DSA key: dilithium-py verifies the signature over the string to sign
    (pure ML-DSA, empty context), and the API renews with it."""
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "1000/h")
    ca = make_ca(tmp_path / "home", KeyType.ML_DSA_65)
    key = KeyType.ML_DSA_44.generate()
    issued = ca.issue("web", csr=load_csr(make_csr(key, "web-3")))
    data = json.dumps({}).encode()
    headers = sign_request(key, issued.certificate, "POST", "/v1/renew", data)
    message = string_to_sign("POST", "/v1/renew", headers["X-Rapki-Timestamp"], data)
    assert dilithium_verifies(key.public_key(), message, base64.b64decode(headers["X-Rapki-Signature"]))
    client = create_app(ca=ca).test_client()
    answer = client.post("/v1/renew", data=data, headers={"Content-Type": "application/json", **headers})
    assert answer.status_code == 201, answer.get_json()
    renewed = x509.load_pem_x509_certificate(answer.get_json()["certificate"].encode())
    assert KeyType.of(renewed.public_key()) is KeyType.ML_DSA_44
    forged = sign_request(KeyType.ML_DSA_44.generate(), issued.certificate, "POST", "/v1/renew", data)
    refused = client.post("/v1/renew", data=data, headers={"Content-Type": "application/json", **forged})
    assert refused.status_code == 401


def test_the_api_hands_out_ml_dsa_keys_as_pem_and_refuses_pkcs12_before_issuing(
        ca: CertificateAuthority, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_API_RATE_LIMIT_PER_IDENTITY", "1000/h")
    client = create_app(ca=ca).test_client()
    tokens = TokenStore(ca)
    body = {"key_type": "ml-dsa-65", "format": "pkcs12", "password": "a-long-bundle-password"}
    token = tokens.create("web", cn="web-5").token
    refused = client.post("/v1/enroll", json=body, headers={"Authorization": f"Bearer {token}"})
    assert refused.status_code == 400 and "pkcs12" in refused.get_json()["message"]
    assert ca.list_certificates() == []
    answer = client.post("/v1/enroll", json={"key_type": "ml-dsa-65"}, headers={"Authorization": f"Bearer {token}"})
    assert answer.status_code == 201, answer.get_json()
    pem = answer.get_json()["private_key"].encode()
    assert core.Sequence.load(_der(pem))[2].contents[:2] != b"\x80\x20"  # not the seed-only form
    certificate = x509.load_pem_x509_certificate(answer.get_json()["certificate"].encode())
    assert load_private_key(pem).public_key() == certificate.public_key()


# --- KMS --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("key_type", [KeyType.ML_DSA_65, KeyType.ML_DSA_87])
def test_a_ca_in_kms_signs_raw_and_external_mu(tmp_path: Path, aws_env: dict[str, str], kms_url: str,
                                               key_type: KeyType) -> None:
    """Certificates (TBS under 4096 bytes: MessageType RAW) and a CRL over it (EXTERNAL_MU, mu
    computed here) signed by an ML-DSA key in KMS (moto's stand-in), checked by dilithium-py."""
    placement = KmsRef(key_id="", region="us-east-1", endpoint_url=kms_url)
    ca = CertificateAuthority.init(tmp_path / "home", InitOptions(
        key_type=key_type, root_key_placement=placement, issuing_key_placement=placement),
        passphrase=PASSPHRASE.encode())
    ca.add_profile(Profile(name="web", cn_pattern=r"web-[0-9]+"))
    issuing = ca.issuer().certificate
    leaf = ca.issue("web", cn="web-1", key_type=KeyType.EC_P256).certificate
    assert len(leaf.tbs_certificate_bytes) <= 4096
    for n in range(2, 122):
        ca.revoke(ca.issue("web", cn=f"web-{n}", key_type=KeyType.EC_P256).serial_hex)
    crl = ca.build_crl().crl
    assert len(crl.tbs_certlist_bytes) > 4096
    _verified_by(ca.root_certificate, issuing)
    _verified_by(issuing, leaf)
    _verified_by(issuing, crl)
    assert sorted(p.name for p in (ca.home.path / "ca").iterdir() if p.name.endswith(".key.pem")) == []


# --- the CLI ----------------------------------------------------------------------------------------
def _cli(*args: str, code: int = 0) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"rapki {' '.join(args)} -> {result.exit_code}: {result.output}{result.stderr}"
    return result.stdout + result.stderr


def test_cli_init_rotation_issue_and_crl_with_ml_dsa(tmp_path: Path, passphrase_env: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``rapki init --key-type ml-dsa-65`` (root and issuing CA), ``ca sign-intermediate --key-type``
    into ML-DSA-87, ``issue --key-type ml-dsa-44`` (key.pem in the helper's form) and ``crl build``."""
    monkeypatch.setenv("RAPKI_HOME", str(tmp_path / "home"))
    _cli("init", "--key-type", "ml-dsa-65")
    _cli("profile", "add", "web", "--cn-pattern", "web-[0-9]+", "--key-types", "ml-dsa-44,ec-p256")
    _cli("ca", "sign-intermediate", "--key-type", "ml-dsa-87")
    out = tmp_path / "leaf"
    issued = json.loads(_cli("issue", "--profile", "web", "--cn", "web-1", "--key-type", "ml-dsa-44",
                             "--out", str(out), "--json"))
    leaf = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificate((out / "chain.pem").read_bytes())
    root = x509.load_pem_x509_certificate(_cli("ca", "root").encode())
    assert [KeyType.of(c.public_key()) for c in (root, chain, leaf)] == [
        KeyType.ML_DSA_65, KeyType.ML_DSA_87, KeyType.ML_DSA_44]
    _verified_by(root, chain)
    _verified_by(chain, leaf)
    assert core.Sequence.load(_der((out / "key.pem").read_bytes()))[2].contents[:2] != b"\x80\x20"
    assert load_private_key((out / "key.pem").read_bytes()).public_key() == leaf.public_key()
    _cli("revoke", issued["serial"], "--reason", "keyCompromise")
    crl_path = tmp_path / "crl.pem"
    _cli("crl", "build", "--out", str(crl_path))
    crl = x509.load_pem_x509_crl(crl_path.read_bytes())
    _verified_by(chain, crl)
    assert crl.get_revoked_certificate_by_serial_number(leaf.serial_number) is not None
    assert lint_crl(crl_path) == ""
    with pytest.raises(InvalidInput, match="pkcs12 cannot hold an ml-dsa-65 key"):
        do_enroll(EnrollmentClient("https://127.0.0.1:1"), "token", tmp_path / "never", key_type="ml-dsa-65",
                  pkcs12_password=b"a-long-password")
    assert not (tmp_path / "never").exists()


def test_pkilint_judges_ml_dsa_keys(tmp_path: Path) -> None:
    """pkilint reads ML-DSA keys (its RFC 9881 rules), so its silence on ours means something: an
    ML-DSA leaf with keyEncipherment, which RFC 9881 prohibits, is flagged."""
    from datetime import UTC, datetime, timedelta

    key = KeyType.ML_DSA_65.generate()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "web-1")])
    now = datetime.now(UTC)
    usage = x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                          data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                          encipher_only=False, decipher_only=False)
    bad = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + timedelta(days=1))
           .add_extension(usage, critical=True).sign(key, None))
    assert "key_usage_value_prohibited_for_mldsa" in lint_cert(_pem(tmp_path / "bad.pem", bad))
