"""``sign-string`` and ``read-certificate-data``: the helper's diagnostic commands.

``sign-string`` signs the helper's fixed test string, which binds the signature to the public key:
``"AWS Roles Anywhere Credential Helper Signing Test" || "1" || SHA256("IAM RA" || public key)``,
the public key being the uncompressed EC point or the PKCS#1 RSA public key. Tools built on the
helper (e.g. checks that a key is usable before enrolling it) verify against exactly that string.

For an ML-DSA key the helper adds no suffix (its suffix covers EC and RSA keys only) and signs the
string itself with pure ML-DSA, empty context, ignoring ``--digest``; so do we. The helper's
ML-DSA signature is deterministic, ours hedged: both verify, the bytes differ (as for ECDSA).
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.errors import InvalidInput
from pki.signer.material import _read, key_type_label, load_material, parse_certificate, parse_private_key
from pki.signer.session import go_json
from pki.x509.keys import PrivateKey, sign_message

FIXED_STRING_PREFIX = b"AWS Roles Anywhere Credential Helper Signing Test"
SIGN_STRING_TEST_VERSION = 1
_DIGESTS: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "SHA256": hashes.SHA256, "SHA384": hashes.SHA384, "SHA512": hashes.SHA512}


def fixed_string_to_sign(public_key: object) -> bytes:
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        raw = public_key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif isinstance(public_key, rsa.RSAPublicKey):
        raw = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        raw = b""
    suffix = hashlib.sha256(b"IAM RA" + raw).digest() if raw else b""
    return FIXED_STRING_PREFIX + str(SIGN_STRING_TEST_VERSION).encode() + suffix


def sign_fixed_string(key: PrivateKey, digest: str = "SHA256") -> bytes:
    """The signature bytes: PKCS#1 v1.5 for RSA, DER ECDSA for EC, over the chosen digest; pure
    ML-DSA (no digest) for ML-DSA."""
    algorithm = _DIGESTS[digest.upper()]()
    data = fixed_string_to_sign(key.public_key())
    return sign_message(key, data, algorithm)


def signing_key(
    certificate: str, private_key: str, password: str | None, pkcs11_lib: str | None = None, reuse_pin: bool = False
) -> PrivateKey:
    """The key ``sign-string`` signs with: a key file, a token key, or the key inside a PKCS#12
    bundle or a PEM file holding both (``--certificate`` alone, as the helper allows)."""
    if private_key.startswith("pkcs11:") or (not private_key and certificate.startswith("pkcs11:")):
        from pki.signer.pkcs11 import token_key

        return token_key(certificate, private_key, pkcs11_lib, reuse_pin)
    if private_key:
        return parse_private_key(_read(private_key, "private key"), password, private_key)
    if not certificate:
        raise InvalidInput("--private-key is required (or --certificate with a PKCS#12 bundle)")
    return load_material(certificate, None, None, password).private_key


def certificate_data(path: str) -> str:
    """The helper's JSON: keyType, certificateData (base64 DER), serialNumber (decimal), algorithms."""
    cert = parse_certificate(_read(path, "certificate"), path)
    kind = key_type_label(cert.public_key())
    der = cert.public_bytes(serialization.Encoding.DER)
    # ML-DSA has no separate digest: the helper lists the parameter set as the only algorithm.
    algorithms = [kind] if kind.startswith("ML-DSA") else [f"{kind}SHA256", f"{kind}SHA384", f"{kind}SHA512"]
    return go_json(
        {
            "keyType": kind,
            "certificateData": base64.b64encode(der).decode(),
            "serialNumber": str(cert.serial_number),
            "supportedAlgorithms": algorithms,
        }
    )
