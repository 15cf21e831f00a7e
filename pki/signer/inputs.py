"""Certificate, key and chain from anywhere: files, ``pkcs11:`` URIs, bytes or loaded objects.

:func:`load_any` is what the commands and the Python API call; it sends paths to
:func:`pki.signer.material.load_material`, token URIs to :mod:`pki.signer.pkcs11`, and handles
bytes and objects here.

``load_any(certificate=pem_bytes, private_key=key_object)``: the same checks as for files
(key matches certificate, key type accepted, chain length), nothing written to disk. Bytes are
PEM or DER; a certificate given as bytes with no key is a PKCS#12 bundle, or a PEM holding both.
"""

from __future__ import annotations

from cryptography import x509

from pki.signer.material import (
    Material,
    MaterialError,
    _has_pem_key,
    _is_pem_certificate,
    _read,
    check_material,
    load_material,
    parse_bundle,
    parse_certificate,
    parse_pkcs12,
    parse_private_key,
)
from pki.x509.keys import PrivateKey


def _certificate(value: bytes | x509.Certificate) -> x509.Certificate:
    if isinstance(value, x509.Certificate):
        return value
    return parse_certificate(bytes(value), "certificate (bytes)")


def _key(value: bytes | PrivateKey, password: str | None) -> PrivateKey:
    if isinstance(value, bytes | bytearray | memoryview):
        return parse_private_key(bytes(value), password, "private key (bytes)")
    return value


def _chain(value: str | bytes | list[x509.Certificate] | None) -> tuple[x509.Certificate, ...]:
    if value is None or value == "" or value == b"":
        return ()
    if isinstance(value, str):
        return tuple(parse_bundle(_read(value, "intermediates bundle"), value))
    if isinstance(value, bytes | bytearray | memoryview):
        return tuple(parse_bundle(bytes(value), "intermediates (bytes)"))
    return tuple(value)


def load_any(
    certificate: str | bytes | x509.Certificate,
    private_key: str | bytes | PrivateKey | None = None,
    intermediates: str | bytes | list[x509.Certificate] | None = None,
    pkcs8_password: str | None = None,
    *,
    pkcs11_lib: str | None = None,
    reuse_pin: bool = False,
) -> Material:
    if not (isinstance(certificate, str) and isinstance(private_key, str | None)
            and isinstance(intermediates, str | None)):  # fmt: skip
        return load_given(certificate, private_key, intermediates, pkcs8_password)
    if certificate.startswith("pkcs11:") or (private_key or "").startswith("pkcs11:"):
        from pki.signer.pkcs11 import load_token_material

        return load_token_material(certificate, private_key, intermediates, pkcs11_lib, reuse_pin)
    return load_material(certificate, private_key, intermediates, pkcs8_password)


def load_given(
    certificate: str | bytes | x509.Certificate,
    private_key: str | bytes | PrivateKey | None,
    intermediates: str | bytes | list[x509.Certificate] | None,
    password: str | None,
) -> Material:
    """:func:`pki.signer.material.load_material` for arguments that are not all paths."""
    if isinstance(certificate, str):
        certificate = _read(certificate, "certificate") if certificate else b""
    if not certificate:
        raise MaterialError("certificate is required")
    if isinstance(private_key, str):
        private_key = _read(private_key, "private key") if private_key else None
    if private_key is None and isinstance(certificate, bytes | bytearray | memoryview):
        data = bytes(certificate)
        if not (_is_pem_certificate(data) and _has_pem_key(data)):
            if intermediates:
                raise MaterialError("can't specify certificate chain when using PKCS#12 data")
            material = parse_pkcs12(data, password, "PKCS#12 (bytes)")
            check_material(material, "PKCS#12 (bytes)", "PKCS#12 (bytes)")
            return material
        private_key = data
    if private_key is None:
        raise MaterialError("private key is required with a certificate object")
    material = Material(_certificate(certificate), _key(private_key, password), _chain(intermediates))
    check_material(material, "certificate", "private key")
    return material
