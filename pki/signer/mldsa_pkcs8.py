"""ML-DSA private keys (FIPS 204) in PKCS#8, in every form AWS's credential helper reads and more.

The privateKey OCTET STRING of an ML-DSA PrivateKeyInfo holds one of three CHOICEs: the 32-byte
seed alone (``[0] IMPLICIT OCTET STRING``: what ``cryptography`` writes and the only form it reads),
``SEQUENCE { seed, expandedKey }`` (what OpenSSL writes by default and the only form the helper
reads: it takes the seed), or the expanded key alone. The first two are read here, clear or
encrypted (PBES2 with PBKDF2 or scrypt and AES-CBC, the schemes the helper decrypts); the key is
always rebuilt from the seed by ``cryptography``. The expanded-only form has no seed and
``cryptography`` cannot sign from it, so it is refused with the way out.

Loaded by :mod:`pki.signer.material` only for keys that can be ML-DSA. ``pki.x509.keys.load_private_key``
reads the clear forms too, but checks the expanded key by generating the whole key in pure Python
(dilithium-py, ~30 ms); ``credential-process`` runs on every SDK credential refresh, so the signer
checks the part of the expanded key the seed fixes cheaply (:func:`expanded_key_belongs_to_seed`,
~1 ms) and reads the encrypted forms, which ``cryptography`` opens only for the seed-only form.
"""

from __future__ import annotations

import binascii
import hashlib
import re
from collections.abc import Callable
from typing import cast

from asn1crypto import core as asn1
from asn1crypto import keys as asn1keys
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import mldsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.pbkdf2 import PBKDF2HMAC
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from pki.x509.keys import MLDSA_OIDS, KeyType, MLDSAPrivateKey, PrivateKey

_KEY_TYPE_BY_OID = {dotted: KeyType(name) for name, dotted in MLDSA_OIDS.items()}
# FIPS 204 Table 2: (k, l) of each parameter set, and the size of its expanded private key.
_SHAPE = {KeyType.ML_DSA_44: (4, 4, 2560), KeyType.ML_DSA_65: (6, 5, 4032), KeyType.ML_DSA_87: (8, 7, 4896)}
_FROM_SEED: dict[KeyType, Callable[[bytes], MLDSAPrivateKey]] = {
    KeyType.ML_DSA_44: mldsa.MLDSA44PrivateKey.from_seed_bytes,
    KeyType.ML_DSA_65: mldsa.MLDSA65PrivateKey.from_seed_bytes,
    KeyType.ML_DSA_87: mldsa.MLDSA87PrivateKey.from_seed_bytes,
}
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


def parse_mldsa_private_key(data: bytes, password: bytes | None, path: str = "private key") -> PrivateKey | None:
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
    return cast(PrivateKey, _FROM_SEED[key_type](mldsa_seed(key_type, inner, path)))


def _pkcs8_der(data: bytes) -> bytes:
    if b"-----BEGIN" not in data:
        return data
    match = _PEM_KEY.search(data)
    try:
        return binascii.a2b_base64(b"".join(match.group(2).split()), strict_mode=True) if match else b""
    except binascii.Error:
        return b""


def _private_key_info(der: bytes) -> tuple[KeyType, bytes] | None:
    """``(parameter set, privateKey contents)`` of a clear ML-DSA PrivateKeyInfo, else None."""
    try:
        info = _PrivateKeyInfo.load(der, strict=True)
        key_type = _KEY_TYPE_BY_OID.get(info["algorithm"]["algorithm"].dotted)
        return None if key_type is None else (key_type, bytes(info["private_key"].native))
    except (ValueError, TypeError, KeyError):
        return None


def mldsa_seed(key_type: KeyType, inner: bytes, path: str) -> bytes:
    """The seed of either readable form; in the two-part form the expanded key must be the seed's
    (:func:`expanded_key_belongs_to_seed`), or which of the two would be the key?"""
    if len(inner) == 2 + SEED_LENGTH and inner[:2] == bytes([0x80, SEED_LENGTH]):
        return inner[2:]
    try:
        both = _SeedAndExpandedKey.load(inner, strict=True)
        seed, expanded = bytes(both["seed"].native), bytes(both["expanded_key"].native)
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


def expanded_key_belongs_to_seed(key_type: KeyType, seed: bytes, expanded: bytes) -> bool:
    """The size and first 128 bytes of the expanded key (FIPS 204 skEncode: rho || K || tr || s1 ||
    s2 || t0) are the seed's: rho and K come straight from the seed (ML-DSA.KeyGen_internal step 1),
    tr is the hash of the public key the seed makes.

    The secret vectors after them would take the whole key generation in pure Python (~20 ms with
    dilithium-py) on every credential refresh. An expanded key made from another seed already
    differs in rho, K and tr; one whose head is this seed's but whose tail is not was damaged after
    it was written, and is harmless here since only the seed is used."""
    k, l_, size = _SHAPE[key_type]
    rho_rhoprime_k = hashlib.shake_256(seed + bytes([k, l_])).digest(128)
    public = _FROM_SEED[key_type](seed).public_key().public_bytes_raw()
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
