"""Key types rapki issues for and accepts, and how CA keys are kept at rest.

Roles Anywhere accepts RSA, EC P-256/P-384 and post-quantum ML-DSA-44/65/87 (FIPS 204) keys;
Ed25519 is refused, RSA below 2048 bits too. CA keys are stored as encrypted PKCS#8
(``BestAvailableEncryption``) and never written in clear.

ML-DSA signs the message itself (no separate hash), so ``KeyType.signature_hash`` is ``None`` for
it, which is what ``cryptography``'s builders take for such keys. rapki signs with pure ML-DSA and
an empty context (RFC 9881 for certificates and CRLs; the same for request signatures).

ML-DSA private keys have three PKCS#8 forms (RFC 9881); two matter here: the seed alone
(``[0] IMPLICIT OCTET STRING``, what ``cryptography`` writes and the only one it reads) and
``SEQUENCE { seed, expandedKey }`` (what OpenSSL writes by default and the only form AWS's
credential helper reads). ``load_private_key`` reads both: from the second it takes the seed and
checks the expanded key is the one the seed makes. ``workload_key_pem`` writes the second for keys
handed to workloads (both with ``pki.x509.pkcs8_mldsa``, which also reads the encrypted forms for
the signer). ``cryptography`` cannot output the
expanded key (FIPS 204 skEncode), so it is derived from the seed with ``dilithium-py`` (pure Python,
about 25-40 ms per key; loaded only then): an OpenSSL 3.5 CLI would do it too, but a subprocess per
key is slower and older systems lack it. CA keys stay in the seed-only form (encrypted PKCS#8;
only rapki reads them).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import re
from typing import cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from pki.errors import InvalidInput, PolicyViolation, WrongPassphrase
from pki.x509.mldsa_params import MLDSA_FROM_SEED, MLDSAPrivateKey, mldsa_expanded_key

MLDSAPublicKey = mldsa.MLDSA44PublicKey | mldsa.MLDSA65PublicKey | mldsa.MLDSA87PublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | MLDSAPrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | MLDSAPublicKey

# The ML-DSA parameter set of each key class (private and public), by the name KeyType uses.
_MLDSA_SETS: dict[type, str] = {
    mldsa.MLDSA44PrivateKey: "ml-dsa-44", mldsa.MLDSA44PublicKey: "ml-dsa-44",
    mldsa.MLDSA65PrivateKey: "ml-dsa-65", mldsa.MLDSA65PublicKey: "ml-dsa-65",
    mldsa.MLDSA87PrivateKey: "ml-dsa-87", mldsa.MLDSA87PublicKey: "ml-dsa-87",
}


_FAMILIES: dict[type, str] = {}


def _family_of_class(cls: type) -> str:
    family = _FAMILIES.get(cls)
    if family is None:
        if issubclass(cls, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
            family = "ec"
        elif issubclass(cls, rsa.RSAPrivateKey | rsa.RSAPublicKey):
            family = "rsa"
        elif any(issubclass(cls, known) for known in _MLDSA_SETS):
            family = "mldsa"
        else:
            family = ""
        _FAMILIES[cls] = family
    return family


def key_family(key: object) -> str:
    """``"ec"``, ``"rsa"``, ``"mldsa"`` or ``""`` for a key (private or public). ``isinstance`` against
    cryptography's key ABCs costs about 0.7 us for its own key classes (registered virtual
    subclasses); issuing asks four times per certificate, so the answer is kept per class."""
    return _family_of_class(type(key))


def _rsa_public(key: object) -> rsa.RSAPublicKey:
    return key.public_key() if isinstance(key, rsa.RSAPrivateKey) else cast(rsa.RSAPublicKey, key)


class KeyType(enum.StrEnum):
    EC_P256 = "ec-p256"
    EC_P384 = "ec-p384"
    RSA_2048 = "rsa-2048"
    RSA_3072 = "rsa-3072"
    RSA_4096 = "rsa-4096"
    ML_DSA_44 = "ml-dsa-44"
    ML_DSA_65 = "ml-dsa-65"
    ML_DSA_87 = "ml-dsa-87"

    @classmethod
    def parse(cls, text: str) -> KeyType:
        try:
            return cls(str(text).strip().lower())
        except ValueError:
            allowed = ", ".join(k.value for k in cls)
            raise InvalidInput(f"unknown key type {text!r}: use one of {allowed}") from None

    @classmethod
    def of(cls, key: object) -> KeyType:
        """The KeyType of a key, or PolicyViolation when Roles Anywhere would refuse it."""
        family = key_family(key)
        if family == "ec":
            name = cast(ec.EllipticCurvePublicKey, key).curve.name
            if name == "secp256r1":
                return cls.EC_P256
            if name == "secp384r1":
                return cls.EC_P384
            raise PolicyViolation(f"EC curve {name} is not accepted by Roles Anywhere: use P-256 or P-384")
        if family == "rsa":
            size = cast(rsa.RSAPublicKey, key).key_size
            if size < 2048:
                raise PolicyViolation(f"RSA-{size} keys are too weak: use at least 2048 bits")
            if size not in (2048, 3072, 4096):
                raise PolicyViolation(f"RSA-{size} keys are not supported: use 2048, 3072 or 4096")
            exponent = _rsa_public(key).public_numbers().e
            if exponent < 65537 or exponent % 2 == 0:
                # NIST SP 800-89 and the CA/Browser Forum ask for an odd e of at least 2**16+1; a
                # small e (3) has a history of padding attacks. Every current tool makes 65537.
                raise PolicyViolation(f"RSA public exponent {exponent} is not accepted: "
                                      "use 65537 (an odd exponent of at least 65537)")
            return cls(f"rsa-{size}")
        if family == "mldsa":
            return cls(mldsa_name(key))
        kind = type(key).__name__.removeprefix("_").replace("PublicKey", "").replace("PrivateKey", "")
        raise PolicyViolation(
            f"{kind or 'this'} keys are not accepted by Roles Anywhere: use EC P-256/P-384, RSA >= 2048 or ML-DSA"
        )

    @property
    def is_ec(self) -> bool:
        return self.value.startswith("ec-")

    @property
    def is_mldsa(self) -> bool:
        return self.value.startswith("ml-dsa-")

    def generate(self) -> PrivateKey:
        if self is KeyType.EC_P256:
            return ec.generate_private_key(ec.SECP256R1())
        if self is KeyType.EC_P384:
            return ec.generate_private_key(ec.SECP384R1())
        if self is KeyType.ML_DSA_44:
            return mldsa.MLDSA44PrivateKey.generate()
        if self is KeyType.ML_DSA_65:
            return mldsa.MLDSA65PrivateKey.generate()
        if self is KeyType.ML_DSA_87:
            return mldsa.MLDSA87PrivateKey.generate()
        return rsa.generate_private_key(public_exponent=65537, key_size=int(self.value[4:]))

    def signature_hash(self) -> hashes.SHA256 | hashes.SHA384 | None:
        """The hash a CA of this type signs with: SHA-384 for P-384 (matched strength), none for
        ML-DSA (it hashes internally), else SHA-256."""
        if self.is_mldsa:
            return None
        return hashes.SHA384() if self is KeyType.EC_P384 else hashes.SHA256()


def subject_key_identifier(key: PublicKey) -> x509.SubjectKeyIdentifier:
    """RFC 5280 4.2.1.2, method 1: SHA-1 of the subjectPublicKey bits, the value
    ``SubjectKeyIdentifier.from_public_key`` computes. EC is asked first (what workloads mostly
    send), which spares that method's RSA-first type checks on the issuance path."""
    family = key_family(key)
    if family == "ec":
        data = key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    elif family == "rsa":
        data = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    else:
        return x509.SubjectKeyIdentifier.from_public_key(key)
    return x509.SubjectKeyIdentifier(hashlib.sha1(data, usedforsecurity=False).digest())


def private_key_pem(key: PrivateKey, passphrase: bytes | None = None) -> bytes:
    """PKCS#8 PEM, encrypted when a passphrase is given."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    )
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)


def load_private_key(data: bytes, passphrase: bytes | None = None, *, what: str = "private key") -> PrivateKey:
    """Load a PEM (PKCS#1, SEC1, PKCS#8, encrypted PKCS#8) or DER private key; ML-DSA in either
    PKCS#8 form (the seed+expanded one only unencrypted: ``cryptography`` decrypts only what it reads)."""
    mldsa_key = _mldsa_seed_and_expanded_key(data, what)
    if mldsa_key is not None:
        return mldsa_key
    loader = serialization.load_pem_private_key if b"-----BEGIN" in data else serialization.load_der_private_key
    try:
        key = loader(data, password=passphrase)
    except TypeError as exc:  # encrypted without passphrase, or passphrase for clear key
        if passphrase is None:
            raise WrongPassphrase(f"the {what} is encrypted: a passphrase is needed") from exc
        raise InvalidInput(f"the {what} is not encrypted but a passphrase was given") from exc
    except ValueError as exc:
        if passphrase is not None and b"ENCRYPTED" in data:
            raise WrongPassphrase(f"wrong passphrase for the {what}") from exc
        raise InvalidInput(f"the {what} could not be read: {exc}") from exc
    except Exception as exc:  # pragma: no cover - unexpected backend errors still become clear input errors
        raise InvalidInput(f"the {what} could not be read: {exc}") from exc
    KeyType.of(key)  # refuses every key that is not a PrivateKey
    return cast(PrivateKey, key)


def public_key_matches(private_key: PrivateKey, public_key: CertificatePublicKeyTypes) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return private_key.public_key().public_bytes(enc, fmt) == public_key.public_bytes(enc, fmt)


def sign_message(key: PrivateKey, data: bytes, algorithm: hashes.HashAlgorithm | None) -> bytes:
    """``key``'s signature over ``data``: ECDSA (DER) or RSA PKCS#1 v1.5 with ``algorithm``, or pure
    ML-DSA with an empty context (``algorithm`` is not used: ML-DSA hashes internally)."""
    family = key_family(key)
    if family == "mldsa":
        return cast(MLDSAPrivateKey, key).sign(data)
    if algorithm is None:
        raise ValueError(f"a {family} signature needs a hash")
    if family == "ec":
        return cast(ec.EllipticCurvePrivateKey, key).sign(data, ec.ECDSA(algorithm))
    return cast(rsa.RSAPrivateKey, key).sign(data, padding.PKCS1v15(), algorithm)


def signature_verifies(public_key: object, signature: bytes, data: bytes,
                       algorithm: hashes.HashAlgorithm | None) -> bool:
    """Whether ``signature`` over ``data`` verifies as ``sign_message`` signs (False for a key of
    another kind, or an ECDSA/RSA check without a hash)."""
    family = key_family(public_key)
    try:
        if family == "mldsa":
            cast(MLDSAPublicKey, public_key).verify(signature, data)
        elif family == "ec" and algorithm is not None:
            cast(ec.EllipticCurvePublicKey, public_key).verify(signature, data, ec.ECDSA(algorithm))
        elif family == "rsa" and algorithm is not None:
            cast(rsa.RSAPublicKey, public_key).verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def workload_key_pem(key: PrivateKey) -> bytes:
    """A key handed to a workload, as clear PKCS#8 PEM that AWS's credential helper reads: for
    ML-DSA the seed+expanded form (``pki.x509.pkcs8_mldsa``), else what ``private_key_pem`` writes."""
    if key_family(key) != "mldsa":
        return private_key_pem(key)
    from pki.x509.pkcs8_mldsa import seed_and_expanded_pem

    name, seed = mldsa_name(key), cast(MLDSAPrivateKey, key).private_bytes_raw()
    public, expanded = mldsa_expanded_key(name, seed)
    if public != key.public_key().public_bytes_raw():  # type: ignore[union-attr]  # pragma: no cover
        raise ValueError(f"the {name} public key derived from the seed differs between implementations")
    return seed_and_expanded_pem(name, seed, expanded)


_CLEAR_PKCS8_PEM = re.compile(rb"-----BEGIN PRIVATE KEY-----(.+?)-----END PRIVATE KEY-----", re.S)
_MLDSA_OID_PREFIX = bytes.fromhex("0609608648016503040311")[:-1]  # DER of 2.16.840.1.101.3.4.3.1x, less the last arc


def _mldsa_seed_and_expanded_key(data: bytes, what: str) -> PrivateKey | None:
    """The ML-DSA key in ``data`` when it is clear PKCS#8 in the seed+expanded form, else None (any
    other key is left to ``cryptography``). Only ML-DSA PKCS#8 is parsed (``pki.x509.pkcs8_mldsa``,
    asn1crypto): the signer loads keys on every refresh, and other keys pay no parser import."""
    match = _CLEAR_PKCS8_PEM.search(data)
    try:
        der = base64.b64decode(b"".join(match.group(1).split()), validate=True) if match else data
    except ValueError:
        return None
    if _MLDSA_OID_PREFIX not in der[:32]:
        return None
    from pki.x509.pkcs8_mldsa import SEED_LENGTH, read_seed_and_expanded

    found = read_seed_and_expanded(der)
    if found is None:
        return None  # the seed-only form (cryptography reads it), or another key
    key_type, seed, expanded = found
    if len(seed) != SEED_LENGTH or mldsa_expanded_key(key_type, seed)[1] != expanded:  # the whole key (~30 ms)
        raise InvalidInput(f"the {what} is an {key_type} key whose expanded key is not the one its seed makes")
    return cast(PrivateKey, MLDSA_FROM_SEED[key_type](seed))


def mldsa_name(key: object) -> str:
    """``"ml-dsa-44"``, ``"ml-dsa-65"`` or ``"ml-dsa-87"`` for an ML-DSA key (private or public)."""
    return next(name for known, name in _MLDSA_SETS.items() if isinstance(key, known))
