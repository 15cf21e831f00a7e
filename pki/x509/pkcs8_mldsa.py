"""The seed+expanded PKCS#8 form of ML-DSA private keys, read and written with asn1crypto.

RFC 9881 allows three forms of an ML-DSA private key in PKCS#8: the seed alone (``[0] IMPLICIT
OCTET STRING``, what ``cryptography`` writes and the only form it reads), the expanded key alone,
and ``SEQUENCE { seed OCTET STRING (32), expandedKey OCTET STRING }`` (what OpenSSL writes by
default and the only form AWS's credential helper reads: it takes the seed from it). rapki writes
the last for keys it hands to workloads and reads it (``pki.x509.keys.load_private_key``, which
checks the expanded key against the seed). Apart from ``pki.x509.keys`` (which computes the
expanded key and imports this lazily), so that loading any other key never imports asn1crypto: the
signer loads its key on every refresh.
"""

from __future__ import annotations

import base64

from asn1crypto import core as asn1


class _SeedAndExpanded(asn1.Sequence):
    _fields = [("seed", asn1.OctetString), ("expanded_key", asn1.OctetString)]


class _AlgorithmIdentifier(asn1.Sequence):
    _fields = [("algorithm", asn1.ObjectIdentifier), ("parameters", asn1.Any, {"optional": True})]


class _PrivateKeyInfo(asn1.Sequence):
    """RFC 5958 OneAsymmetricKey, as far as rapki reads it."""

    _fields = [("version", asn1.Integer), ("algorithm", _AlgorithmIdentifier), ("private_key", asn1.OctetString),
               ("attributes", asn1.Any, {"implicit": 0, "optional": True}),
               ("public_key", asn1.Any, {"implicit": 1, "optional": True})]


def seed_and_expanded_der(oid: str, seed: bytes, expanded: bytes) -> bytes:
    """Unencrypted PKCS#8 DER of algorithm ``oid`` whose privateKey is ``SEQUENCE { seed, expandedKey }``."""
    inner = _SeedAndExpanded({"seed": seed, "expanded_key": expanded}).dump()
    return bytes(_PrivateKeyInfo({"version": 0, "algorithm": {"algorithm": oid}, "private_key": inner}).dump())


def seed_and_expanded_pem(oid: str, seed: bytes, expanded: bytes) -> bytes:
    """``seed_and_expanded_der`` as PEM (``PRIVATE KEY``, 64 characters a line, as OpenSSL writes it)."""
    body = base64.b64encode(seed_and_expanded_der(oid, seed, expanded))
    lines = b"\n".join(body[i:i + 64] for i in range(0, len(body), 64))
    return b"-----BEGIN PRIVATE KEY-----\n" + lines + b"\n-----END PRIVATE KEY-----\n"


def read_seed_and_expanded(der: bytes) -> tuple[str, bytes, bytes] | None:
    """Algorithm OID (dotted), seed and expanded key of an unencrypted PKCS#8 whose privateKey is
    ``SEQUENCE { seed, expandedKey }``; None for anything else (the seed-only form, not PKCS#8)."""
    try:
        info = _PrivateKeyInfo.load(der, strict=True)
        inner = info["private_key"].native
        if not inner.startswith(b"\x30"):
            return None
        both = _SeedAndExpanded.load(inner, strict=True)
        return info["algorithm"]["algorithm"].dotted, both["seed"].native, both["expanded_key"].native
    except (ValueError, TypeError, KeyError):
        return None
