"""``Pem``: a small value wrapping PEM bytes, with the few things callers do with them; and the
one way rapki writes a PKCS#12 bundle."""

from __future__ import annotations

import ssl
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pki.errors import InvalidInput
from pki.files import atomic_write
from pki.x509.keys import KeyType, PrivateKey, key_family


@dataclass(frozen=True)
class Pem:
    data: bytes

    @classmethod
    def of_certificates(cls, certs: Iterable[x509.Certificate]) -> Pem:
        return cls(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))

    @classmethod
    def of_certificate_der(cls, der: bytes) -> Pem:
        """One certificate given as DER: the bytes ``public_bytes(PEM)`` gives (64-character base64
        lines), without encoding the certificate again."""
        return cls(ssl.DER_cert_to_PEM_cert(der).encode("ascii"))

    def text(self) -> str:
        return self.data.decode("ascii")

    def write_to_path(self, path: Path, *, secret: bool = False) -> Path:
        """Write atomically; secrets are created 0600."""
        return atomic_write(path, self.data, private=secret)


def load_certificates(data: bytes, *, what: str = "certificate") -> list[x509.Certificate]:
    """All certificates of a PEM bundle (or one DER certificate)."""
    try:
        if b"-----BEGIN" in data:
            certs = x509.load_pem_x509_certificates(data)
        else:
            certs = [x509.load_der_x509_certificate(data)]
    except ValueError as exc:
        raise InvalidInput(f"the {what} is not a valid X.509 certificate: {exc}") from exc
    if not certs:
        raise InvalidInput(f"no {what} found")
    return certs


def load_certificate(data: bytes, *, what: str = "certificate") -> x509.Certificate:
    return load_certificates(data, what=what)[0]


PKCS12_KDF_ROUNDS = 50_000


def pkcs12_bundle(name: bytes, key: PrivateKey | None, certificate: x509.Certificate,
                  chain: Sequence[x509.Certificate], password: bytes) -> bytes:
    """A PKCS#12 file holding ``key`` (None: certificates only), ``certificate`` and ``chain``,
    encrypted with ``password``:
    PBES2 (PBKDF2-SHA256, AES-256-CBC) and an HMAC-SHA256 MAC, which current OpenSSL, Java and
    Windows read (the legacy RC2/3DES forms are not used).

    ML-DSA keys are refused: ``cryptography`` (50) does not put them in PKCS#12, and neither AWS's
    credential helper nor most PKCS#12 readers would read them; such a key is handed out as PEM."""
    if key is not None and key_family(key) == "mldsa":
        raise InvalidInput(f"a PKCS#12 bundle cannot hold an {KeyType.of(key)} key: ask for PEM instead "
                           "(ML-DSA keys are not serialised in PKCS#12)")
    encryption = (
        serialization.PrivateFormat.PKCS12.encryption_builder()
        .kdf_rounds(PKCS12_KDF_ROUNDS)
        .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
        .hmac_hash(hashes.SHA256())
        .build(password)
    )
    return pkcs12.serialize_key_and_certificates(name, key, certificate, list(chain), encryption)  # type: ignore[arg-type]
