"""The ML-DSA parameter sets (FIPS 204) by the names ``KeyType`` gives them: their OIDs, their key
classes and their expanded keys. Apart from ``pki.x509.keys`` so that ``pki.x509.pkcs8_mldsa``
(which ``keys`` loads only for ML-DSA PKCS#8) needs nothing from ``keys``."""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import mldsa

MLDSAPrivateKey = mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey

# The FIPS 204 algorithm identifiers (NIST CSOR): in SubjectPublicKeyInfo, PKCS#8 and, with no
# parameters, as signatureAlgorithm (pure ML-DSA).
MLDSA_OIDS = {
    "ml-dsa-44": "2.16.840.1.101.3.4.3.17",
    "ml-dsa-65": "2.16.840.1.101.3.4.3.18",
    "ml-dsa-87": "2.16.840.1.101.3.4.3.19",
}
MLDSA_FROM_SEED: dict[str, Callable[[bytes], MLDSAPrivateKey]] = {
    "ml-dsa-44": mldsa.MLDSA44PrivateKey.from_seed_bytes,
    "ml-dsa-65": mldsa.MLDSA65PrivateKey.from_seed_bytes,
    "ml-dsa-87": mldsa.MLDSA87PrivateKey.from_seed_bytes,
}


def mldsa_expanded_key(name: str, seed: bytes) -> tuple[bytes, bytes]:
    """The FIPS 204 public key and expanded private key (skEncode) ``seed`` makes for parameter set
    ``name``, computed by dilithium-py (``cryptography`` does not output the expanded key)."""
    from dilithium_py import ml_dsa

    scheme = {"ml-dsa-44": ml_dsa.ML_DSA_44, "ml-dsa-65": ml_dsa.ML_DSA_65, "ml-dsa-87": ml_dsa.ML_DSA_87}[name]
    public, expanded = scheme.key_derive(seed)
    return public, expanded
