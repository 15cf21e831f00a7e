"""ML-DSA private keys (FIPS 204) in PKCS#8: every form rapki reads and the one it writes.

The privateKey OCTET STRING of an ML-DSA PrivateKeyInfo holds one of three CHOICEs (RFC 9881): the
32-byte seed alone (``[0] IMPLICIT OCTET STRING``: what ``cryptography`` writes and the only form it
reads), ``SEQUENCE { seed, expandedKey }`` (what OpenSSL writes by default and the only form AWS's
credential helper reads: it takes the seed), or the expanded key alone. rapki writes the second for
keys handed to workloads (:func:`seed_and_expanded_pem`) and reads the first two, clear or encrypted
(PBES2 with PBKDF2 or scrypt and AES-CBC, the schemes the helper decrypts); the key is always
rebuilt from the seed by ``cryptography``. The expanded-only form has no seed and ``cryptography``
cannot sign from it, so it is refused with the way out.

The expanded key of the two-part form must be the seed's, checked one of two ways:
``pki.x509.keys.load_private_key`` generates the whole key in pure Python (dilithium-py, ~30 ms);
the signer's ``credential-process`` runs on every SDK credential refresh, so it checks the part of
the expanded key the seed fixes (:func:`expanded_key_belongs_to_seed`, ~1 ms). Both load this module
only for keys that can be ML-DSA, so that loading any other key never imports asn1crypto.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from asn1crypto import core as asn1
from asn1crypto import keys as asn1keys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pki.x509.mldsa_params import MLDSA_FROM_SEED, MLDSA_OIDS, MLDSAPrivateKey

_NAME_BY_OID = {dotted: name for name, dotted in MLDSA_OIDS.items()}
# FIPS 204 Table 2: (k, l) of each parameter set, and the size of its expanded private key.
_SHAPE = {"ml-dsa-44": (4, 4, 2560), "ml-dsa-65": (6, 5, 4032), "ml-dsa-87": (8, 7, 4896)}
SEED_LENGTH = 32
_PEM_KEY = re.compile(rb"-----BEGIN (ENCRYPTED )?PRIVATE KEY-----(.*?)-----END (?:ENCRYPTED )?PRIVATE KEY-----", re.S)
_AES_CBC_KEY_LENGTHS = {"aes128_cbc": 16, "aes192_cbc": 24, "aes256_cbc": 32}
_SCRYPT_OID = "1.3.6.1.4.1.11591.4.11"
_PBKDF2_PRFS: dict[str, type[hashes.SHA1 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha1": hashes.SHA1, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class _Algorithm(asn1.Sequence):
    _fields = [("algorithm", asn1.ObjectIdentifier), ("parameters", asn1.Any, {"optional": True})]


class _PrivateKeyInfo(asn1.Sequence):
    """RFC 5958 OneAsymmetricKey, without asn1crypto's per-algorithm parsing (it knows no ML-DSA)."""

    _fields = [
        ("version", asn1.Integer),
        ("algorithm", _Algorithm),
        ("private_key", asn1.OctetString),
        ("attributes", asn1.Any, {"implicit": 0, "optional": True}),
        ("public_key", asn1.Any, {"implicit": 1, "optional": True}),
    ]


class _SeedAndExpandedKey(asn1.Sequence):
    _fields = [("seed", asn1.OctetString), ("expanded_key", asn1.OctetString)]


class _ScryptParams(asn1.Sequence):
    _fields = [
        ("salt", asn1.OctetString),
        ("cost", asn1.Integer),
        ("block_size", asn1.Integer),
        ("parallelization", asn1.Integer),
        ("key_length", asn1.Integer, {"optional": True}),
    ]


def parse_mldsa_private_key(data: bytes, password: bytes | None, path: str = "private key") -> MLDSAPrivateKey | None:
    """The ML-DSA key in ``data`` (PEM or DER PKCS#8, clear or encrypted), or None when ``data`` is
    not an ML-DSA PKCS#8 key or the password does not open it (the common loader then says why).
    ValueError, naming ``path``, for an ML-DSA key that cannot be used."""
    der = _pkcs8_der(data)
    info = _private_key_info(der)
    if info is None and password is not None:
        plain = _decrypt_pkcs8(der, password)
        info = _private_key_info(plain) if plain is not None else None
    if info is None:
        return None
    key_type, inner = info
    return MLDSA_FROM_SEED[key_type](mldsa_seed(key_type, inner, path))


def _pkcs8_der(data: bytes) -> bytes:
    if b"-----BEGIN" not in data:
        return data
    match = _PEM_KEY.search(data)
    try:
        return binascii.a2b_base64(b"".join(match.group(2).split()), strict_mode=True) if match else b""
    except binascii.Error:
        return b""


def _private_key_info(der: bytes) -> tuple[str, bytes] | None:
    """``(parameter set, privateKey contents)`` of a clear ML-DSA PrivateKeyInfo, else None."""
    try:
        info = _PrivateKeyInfo.load(der, strict=True)
        key_type = _NAME_BY_OID.get(info["algorithm"]["algorithm"].dotted)
        return None if key_type is None else (key_type, bytes(info["private_key"].native))
    except (ValueError, TypeError, KeyError):
        return None


def mldsa_seed(key_type: str, inner: bytes, path: str) -> bytes:
    """The seed of either readable form; in the two-part form the expanded key must be the seed's
    (:func:`expanded_key_belongs_to_seed`), or which of the two would be the key?"""
    if len(inner) == 2 + SEED_LENGTH and inner[:2] == bytes([0x80, SEED_LENGTH]):
        return inner[2:]
    try:
        seed, expanded = _seed_and_expanded(inner)
    except (ValueError, TypeError):
        if inner[:1] == b"\x04":
            raise ValueError(
                f"private key {path!r} is a {key_type} key holding only the expanded key, without its seed: "
                "export it with the seed (OpenSSL writes seed and expanded key by default)"
            ) from None
        raise ValueError(f"private key {path!r} is not a valid {key_type} PKCS#8 key") from None
    if len(seed) != SEED_LENGTH or not expanded_key_belongs_to_seed(key_type, seed, expanded):
        raise ValueError(
            f"private key {path!r}: the {key_type} expanded key is not the one its seed makes (a damaged file?)"
        )
    return seed


def _seed_and_expanded(inner: bytes) -> tuple[bytes, bytes]:
    """Seed and expanded key of a ``SEQUENCE { seed, expandedKey }``; ValueError or TypeError else."""
    both = _SeedAndExpandedKey.load(inner, strict=True)
    return bytes(both["seed"].native), bytes(both["expanded_key"].native)


def read_seed_and_expanded(der: bytes) -> tuple[str, bytes, bytes] | None:
    """Parameter set, seed and expanded key of a clear ML-DSA PKCS#8 in the two-part form; None for
    anything else (the seed-only form, another key, not PKCS#8)."""
    info = _private_key_info(der)
    if info is None or not info[1].startswith(b"\x30"):
        return None
    try:
        return (info[0], *_seed_and_expanded(info[1]))
    except (ValueError, TypeError):
        return None


def seed_and_expanded_pem(key_type: str, seed: bytes, expanded: bytes) -> bytes:
    """Clear PKCS#8 PEM of ``key_type`` whose privateKey is ``SEQUENCE { seed, expandedKey }``
    (``PRIVATE KEY``, 64 characters a line, as OpenSSL writes it)."""
    inner = _SeedAndExpandedKey({"seed": seed, "expanded_key": expanded}).dump()
    der = _PrivateKeyInfo({"version": 0, "algorithm": {"algorithm": MLDSA_OIDS[key_type]}, "private_key": inner}).dump()
    body = base64.b64encode(der)
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN PRIVATE KEY-----\n" + lines + b"\n-----END PRIVATE KEY-----\n"


def expanded_key_belongs_to_seed(key_type: str, seed: bytes, expanded: bytes) -> bool:
    """The size and first 128 bytes of the expanded key (FIPS 204 skEncode: rho || K || tr || s1 ||
    s2 || t0) are the seed's: rho and K come straight from the seed (ML-DSA.KeyGen_internal step 1),
    tr is the hash of the public key the seed makes.

    The secret vectors after them would take the whole key generation in pure Python (~20 ms with
    dilithium-py) on every credential refresh. An expanded key made from another seed already
    differs in rho, K and tr; one whose head is this seed's but whose tail is not was damaged after
    it was written, and is harmless here since only the seed is used."""
    k, l_, size = _SHAPE[key_type]
    rho_rhoprime_k = hashlib.shake_256(seed + bytes([k, l_])).digest(128)
    public = MLDSA_FROM_SEED[key_type](seed).public_key().public_bytes_raw()
    head = rho_rhoprime_k[:32] + rho_rhoprime_k[96:] + hashlib.shake_256(public).digest(64)
    return len(expanded) == size and expanded[:128] == head


def _decrypt_pkcs8(der: bytes, password: bytes) -> bytes | None:
    """The PrivateKeyInfo inside a PBES2 EncryptedPrivateKeyInfo (PBKDF2 or scrypt, AES-CBC), or
    None when ``der`` is something else or the password does not open it."""
    try:
        encrypted = asn1keys.EncryptedPrivateKeyInfo.load(der, strict=True)
        algorithm = encrypted["encryption_algorithm"]
        if algorithm["algorithm"].native != "pbes2":
            return None
        params = algorithm["parameters"]
        cipher = params["encryption_scheme"]
        key_length = _AES_CBC_KEY_LENGTHS.get(cipher["algorithm"].native)
        key = _pbes2_key(params["key_derivation_func"], password, key_length) if key_length else None
        if key is None:
            return None
        decryptor = Cipher(algorithms.AES(key), modes.CBC(bytes(cipher["parameters"].native))).decryptor()
        padded = decryptor.update(bytes(encrypted["encrypted_data"].native)) + decryptor.finalize()
        unpadder = sym_padding.PKCS7(128).unpadder()
        return unpadder.update(padded) + unpadder.finalize()
    except (ValueError, TypeError, KeyError):
        return None


def _pbes2_key(kdf: asn1.Sequence, password: bytes, length: int) -> bytes | None:
    """The AES key PBKDF2 (HMAC-SHA-1/256/384/512) or scrypt (RFC 7914) derives from the password."""
    if kdf["algorithm"].dotted == _SCRYPT_OID:
        params = _ScryptParams.load(kdf["parameters"].dump(), strict=True)
        return Scrypt(salt=bytes(params["salt"].native), length=length, n=params["cost"].native,
                      r=params["block_size"].native, p=params["parallelization"].native).derive(password)
    if kdf["algorithm"].native != "pbkdf2":
        return None
    params = kdf["parameters"]
    prf = _PBKDF2_PRFS.get(params["prf"]["algorithm"].native)
    if prf is None:
        return None
    return PBKDF2HMAC(algorithm=prf(), length=length, salt=bytes(params["salt"].native),
                      iterations=params["iteration_count"].native).derive(password)
