"""The ``CaKey`` interface, opening and creating keys by reference, and signing through them.

``open_key`` adopts a key that exists (a file, a key pair on a token, a KMS key); ``create_key``
makes a new one where the reference says (refusing to replace one). ``sign_certificate`` and
``sign_crl`` sign a builder with any ``CaKey``: file keys through ``cryptography`` directly (the key
object is in memory anyway), the others through ``pki.x509.external``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

from cryptography import x509

from pki.custody.file import FileKey, Passphrase
from pki.custody.refs import FileRef, KeyRef, KmsRef, Pkcs11Ref, parse_key_ref
from pki.x509 import external
from pki.x509.keys import KeyType, PublicKey


class CaKey(Protocol):
    """A CA private key wherever it lives: it signs TBS bytes and says what and where it is."""

    @property
    def key_type(self) -> KeyType: ...

    @property
    def ref(self) -> KeyRef:
        """What names this key in configuration and in the database (``str(ref)``)."""
        ...

    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """The X.509 signature over ``data`` (see ``pki.x509.external.ExternalSigner.sign``)."""
        ...

    def describe(self) -> str:
        """One line for ``rapki ca list``: backend, where the key is, its type."""
        ...


RefLike = KeyRef | str | Mapping[str, object]


def open_key(ref: RefLike, *, base_dir: Path | None = None, passphrase: Passphrase | None = None) -> CaKey:
    """The existing key ``ref`` names. ``base_dir`` resolves relative file paths (the home);
    ``passphrase`` (bytes, or a function returning them when first needed) decrypts file keys."""
    parsed = parse_key_ref(ref)
    if isinstance(parsed, FileRef):
        return FileKey.load(parsed, base_dir=base_dir, passphrase=passphrase)
    if isinstance(parsed, Pkcs11Ref):
        from pki.custody.hsm import Pkcs11Key

        return Pkcs11Key.adopt(parsed)
    from pki.custody.kms import KmsKey

    return KmsKey.adopt(parsed)


def create_key(ref: RefLike, key_type: KeyType, *, base_dir: Path | None = None,
               passphrase: Passphrase | None = None, description: str = "rapki CA key") -> CaKey:
    """A new key of ``key_type`` where ``ref`` says: a new encrypted file, a key pair generated on
    the token (under the reference's label/id, which must be free), or a new KMS key (the
    reference's ``key_id`` left empty; the returned key's ``ref`` carries the new ARN)."""
    parsed = parse_key_ref(ref)
    if isinstance(parsed, FileRef):
        return FileKey.create(parsed, key_type, base_dir=base_dir, passphrase=passphrase)
    if isinstance(parsed, Pkcs11Ref):
        from pki.custody.hsm import Pkcs11Key

        return Pkcs11Key.generate(parsed, key_type)
    from pki.custody.kms import KmsKey

    return KmsKey.create(parsed, key_type, description=description)


def signing_key(key: CaKey) -> external.SigningKey:
    """What ``pki.x509``'s builders sign with: a file key's key object (``cryptography`` signs
    with it directly: the fast path), any other key as it is (``pki.x509.external``)."""
    return key.private_key if isinstance(key, FileKey) else key


def make_key(ref: RefLike, key_type: KeyType, *, base_dir: Path | None = None,
             passphrase: Passphrase | None = None, description: str = "rapki CA key") -> CaKey:
    """The key of a new CA: a KMS key named by id is adopted (``open_key``); anything else is
    created (``create_key``: a new file, a key pair generated on the token, a new KMS key)."""
    parsed = parse_key_ref(ref)
    if isinstance(parsed, KmsRef) and parsed.key_id:
        return open_key(parsed)
    return create_key(parsed, key_type, base_dir=base_dir, passphrase=passphrase, description=description)


def _direct(key: CaKey) -> FileKey | None:
    return key if isinstance(key, FileKey) else None


def sign_certificate(builder: x509.CertificateBuilder, key: CaKey) -> x509.Certificate:
    """``builder``'s certificate signed by ``key``."""
    file_key = _direct(key)
    if file_key is not None:
        return builder.sign(file_key.private_key, file_key.key_type.signature_hash())
    return external.sign_certificate(builder, key)


def sign_crl(builder: x509.CertificateRevocationListBuilder, key: CaKey) -> x509.CertificateRevocationList:
    """``builder``'s CRL signed by ``key``."""
    file_key = _direct(key)
    if file_key is not None:
        return builder.sign(file_key.private_key, file_key.key_type.signature_hash())
    return external.sign_crl(builder, key)


def close_all() -> None:
    """Close every PKCS#11 session this process holds (at shutdown, or before a token is reset)."""
    import sys

    hsm = sys.modules.get("pki.custody.hsm")
    if hsm is not None:
        close: Callable[[], None] = hsm.close_all
        close()


__all__ = ["CaKey", "FileRef", "KeyRef", "KmsRef", "Pkcs11Ref", "close_all", "create_key", "make_key", "open_key",
           "parse_key_ref", "sign_certificate", "sign_crl", "signing_key"]
