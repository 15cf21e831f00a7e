"""The ``file`` backend: a CA key as an encrypted PKCS#8 file, decrypted into memory when opened.

Whoever holds the file and its passphrase holds the key; the key exists in this process's memory
while it signs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from pki.custody.refs import FileRef
from pki.errors import Conflict, InvalidInput
from pki.x509.keys import KeyType, PrivateKey, PublicKey, load_private_key, private_key_pem, sign_message
from pki.x509.pem import Pem

Passphrase = bytes | Callable[[], bytes]


def _passphrase(value: Passphrase | None, path: Path) -> bytes:
    if value is None:
        raise InvalidInput(f"the key file {path} is encrypted with the CA passphrase, and none was given")
    return value() if callable(value) else value


def _resolve(ref: FileRef, base_dir: Path | None) -> Path:
    path = Path(ref.path)
    return path if path.is_absolute() or base_dir is None else base_dir / path


class FileKey:
    """An encrypted PKCS#8 key file, opened (decrypted) once."""

    def __init__(self, ref: FileRef, private_key: PrivateKey, path: Path) -> None:
        self._ref = ref
        self.private_key = private_key
        self.path = path
        self._key_type = KeyType.of(private_key)

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def ref(self) -> FileRef:
        return self._ref

    @classmethod
    def load(cls, ref: FileRef, *, base_dir: Path | None = None, passphrase: Passphrase | None = None) -> FileKey:
        path = _resolve(ref, base_dir)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput(f"cannot read the CA key file {path}: {exc.strerror}") from exc
        key = load_private_key(data, _passphrase(passphrase, path), what=f"CA key {path}")
        return cls(ref, key, path)

    @classmethod
    def create(cls, ref: FileRef, key_type: KeyType, *, base_dir: Path | None = None,
               passphrase: Passphrase | None = None) -> FileKey:
        path = _resolve(ref, base_dir)
        if path.exists():
            raise Conflict(f"{path} already exists: a new CA key never replaces a key file")
        secret = _passphrase(passphrase, path)
        key = key_type.generate()
        Pem(private_key_pem(key, secret)).write_to_path(path, secret=True)
        return cls(ref, key, path)

    def public_key(self) -> PublicKey:
        return self.private_key.public_key()

    def sign(self, data: bytes) -> bytes:
        return sign_message(self.private_key, data, self._key_type.signature_hash())

    def describe(self) -> str:
        return f"file {self._ref.path} (encrypted PKCS#8, {self._key_type})"
