"""Loading what a workload signs with: its certificate, private key and intermediates.

Accepted inputs, as with ``aws_signing_helper``:

- ``--certificate``: a PEM certificate (the first CERTIFICATE block is the leaf), or a PKCS#12
  bundle holding the leaf, its key and optionally its chain (then ``--private-key`` is omitted);
- ``--private-key``: PEM or DER, PKCS#1 (``RSA PRIVATE KEY``), SEC1 (``EC PRIVATE KEY``), PKCS#8 or
  encrypted PKCS#8 (``ENCRYPTED PRIVATE KEY`` with ``--pkcs8-password``); ML-DSA keys as PKCS#8 in
  both of their forms, clear or encrypted (see :mod:`pki.x509.pkcs8_mldsa`);
- ``--intermediates``: a PEM bundle of CA certificates sent in ``X-Amz-X509-Chain``.

- ``-`` for ``--certificate`` and/or ``--private-key``: one PEM stream on standard input holding the
  certificate, the key and optionally the chain (read once per process), and a single PEM file
  holding both certificate and key with no ``--private-key``, as the helper accepts;
- ``pkcs11:`` URIs (RFC 7512) for either: :mod:`pki.signer.pkcs11`. TPM ``handle:`` references and
  TSS2 key files are refused with the way out (tpm2-pkcs11 as a PKCS#11 module).

The Python API also takes bytes and objects (:func:`pki.signer.inputs.load_any`). Files are
re-read by :func:`load_material` on every call, which is what lets
``serve`` and ``update`` pick up a renewed certificate without a restart.
"""

from __future__ import annotations

import binascii
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pki.errors import InvalidInput, RapkiError
from pki.signer.stdin import STDIN, read_stdin
from pki.x509.keys import KeyType, PrivateKey, key_family, load_private_key, public_key_matches

# The service refuses a longer X-Amz-X509-Chain.
MAX_CHAIN = 5

# The DER of the three ML-DSA algorithm OIDs (2.16.840.1.101.3.4.3.17-19), as found in a DER key.
_MLDSA_OID_MARKS = tuple(b"\x06\x09\x60\x86\x48\x01\x65\x03\x04\x03" + bytes([n]) for n in (17, 18, 19))
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)


class MaterialError(RapkiError):
    """The certificate, key or bundle cannot be used; the message names the file and the fix."""

    code = "material_error"
    exit_code = 1


@dataclass(frozen=True)
class Material:
    """A leaf certificate, its private key and the chain to send, read at one moment."""

    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    # (path, mtime_ns, size, inode) of each file read: serve compares them to notice a renewal.
    sources: tuple[tuple[str, int, int, int], ...] = field(default=(), compare=False)


def file_fingerprint(paths: list[str]) -> tuple[tuple[str, int, int, int], ...]:
    """A cheap identity of the files' current contents (no read): changes when a file is replaced."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((path, st.st_mtime_ns, st.st_size, st.st_ino))
        except OSError:
            out.append((path, -1, -1, -1))
    return tuple(out)


TPM_HINT = (
    "TPM keys are not supported by rapki-signer: use the TPM through tpm2-pkcs11 as a PKCS#11 module "
    "(--pkcs11-lib libtpm2_pkcs11.so.1 --private-key 'pkcs11:token=...;object=...')"
)


def _read(path: str, what: str) -> bytes:
    if path == STDIN:
        data = read_stdin()
        if not data.strip():
            raise MaterialError(f"{what} '-' is standard input, which was empty: pipe the PEM certificate and key "
                                "(and the chain) into it")
        return data
    if path.startswith("pkcs11:"):
        raise MaterialError(f"{what} {path!r} is a PKCS#11 URI: pki.signer.inputs.load_any loads token keys")
    if path.startswith("handle:"):
        raise MaterialError(f"{what} {path!r} is a TPM handle: {TPM_HINT}")
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise MaterialError(f"{what} {path!r} does not exist") from None
    except OSError as exc:
        raise MaterialError(f"{what} {path!r} cannot be read: {exc.strerror}") from None


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    return [(m.group(1).decode(), m.group(0)) for m in _PEM_BLOCK.finditer(data)]


def parse_certificate(data: bytes, path: str = "certificate") -> x509.Certificate:
    """The first CERTIFICATE of a PEM file (or a DER certificate)."""
    if b"-----BEGIN" not in data:
        try:
            return x509.load_der_x509_certificate(data)
        except ValueError:
            raise MaterialError(f"certificate {path!r} is neither PEM nor a DER certificate") from None
    for kind, block in _pem_blocks(data):
        if kind == "CERTIFICATE":
            try:
                return x509.load_pem_x509_certificate(block)
            except ValueError as exc:
                raise MaterialError(f"certificate {path!r} could not be parsed: {exc}") from None
    raise MaterialError(f"certificate {path!r} has no PEM CERTIFICATE block")


def parse_bundle(data: bytes, path: str = "intermediates") -> list[x509.Certificate]:
    """Every certificate of a PEM bundle; any other block type is an error (as in the helper)."""
    blocks = _pem_blocks(data)
    if not blocks:
        raise MaterialError(f"intermediates bundle {path!r} has no PEM CERTIFICATE block")
    certs = []
    for kind, block in blocks:
        if kind != "CERTIFICATE":
            raise MaterialError(f"intermediates bundle {path!r} holds a {kind} block: only certificates belong there")
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError as exc:
            raise MaterialError(f"intermediates bundle {path!r}: bad certificate: {exc}") from None
    return certs


def parse_private_key(data: bytes, password: str | None, path: str = "private key") -> PrivateKey:
    """PKCS#1, SEC1, PKCS#8 or encrypted PKCS#8, PEM or DER.

    An OpenSSL ``ecparam -genkey`` file starts with an ``EC PARAMETERS`` block that the PEM loader
    does not skip, so the key block is cut out first.
    """
    if b"-----BEGIN TSS2 PRIVATE KEY-----" in data:
        raise MaterialError(f"private key {path!r} is a TPM-wrapped (TSS2) key: {TPM_HINT}")
    if b"-----BEGIN" in data:
        keys = [block for kind, block in _pem_blocks(data) if kind.endswith("PRIVATE KEY")]
        if not keys:
            raise MaterialError(f"private key {path!r} has no PEM PRIVATE KEY block")
        data = keys[0]
        encrypted = b"ENCRYPTED PRIVATE KEY" in data or b"Proc-Type: 4,ENCRYPTED" in data
    else:
        encrypted = False
    secret = password.encode() if password else None
    if secret is not None and not encrypted and b"-----BEGIN" in data:
        secret = None  # the helper ignores a password given for a clear key; so do we
    if (mldsa_key := _mldsa_private_key(data, secret, path)) is not None:
        return mldsa_key
    try:
        return load_private_key(data, secret, what=f"private key {path!r}")
    except RapkiError as exc:
        if encrypted and secret is None:
            raise MaterialError(
                f"private key {path!r} is encrypted PKCS#8: pass its password with --pkcs8-password"
            ) from None
        raise MaterialError(str(exc)) from None


def _mldsa_private_key(data: bytes, secret: bytes | None, path: str) -> PrivateKey | None:
    """An ML-DSA PKCS#8 key read by :mod:`pki.x509.pkcs8_mldsa`, else None for the common loader.

    That module is loaded only when the key can be ML-DSA: a clear key naming an ML-DSA OID, or
    one given a password that ``cryptography`` does not open (it decrypts, then reads only the
    seed-only ML-DSA form); an RSA or EC key gets there only with a wrong password."""
    if secret is not None:  # encrypted PEM, or DER (whose encryption shows only once parsed)
        try:
            return load_private_key(data, secret, what=f"private key {path!r}")
        except RapkiError:
            pass
    elif not any(oid in _der_of(data) for oid in _MLDSA_OID_MARKS):
        return None
    from pki.x509.pkcs8_mldsa import parse_mldsa_private_key  # loaded here: see the docstring

    try:
        return parse_mldsa_private_key(data, secret, path)
    except ValueError as exc:
        raise MaterialError(str(exc)) from None


def _der_of(data: bytes) -> bytes:
    """The DER of a (single-block) PEM, or ``data`` itself; b"" when the base64 is broken."""
    if b"-----BEGIN" not in data:
        return data
    try:
        return binascii.a2b_base64(b"".join(data.strip().splitlines()[1:-1]), strict_mode=True)
    except binascii.Error:
        return b""


def parse_pkcs12(data: bytes, password: str | None, path: str) -> Material:
    """Leaf, key and chain from a PKCS#12 bundle.

    The leaf is the certificate matching the key (the helper picks the one that issued nothing,
    which is the same thing for a sane bundle and cannot pick a CA when the order is odd).
    """
    from cryptography.hazmat.primitives.serialization import pkcs12  # only PKCS#12 users pay for it

    passwords: list[bytes | None] = [None, b""]
    if password:
        passwords.insert(0, password.encode())
    last_error: Exception | None = None
    for secret in passwords:
        try:
            key, cert, extra = pkcs12.load_key_and_certificates(data, secret)
            break
        except ValueError as exc:
            last_error = exc
    else:
        hint = "" if password else " (if it has a password, pass it with --pkcs8-password)"
        raise MaterialError(f"PKCS#12 file {path!r} could not be opened: {last_error}{hint}")
    if key is None:
        raise MaterialError(f"PKCS#12 file {path!r} holds no private key")
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MaterialError(f"PKCS#12 file {path!r}: only RSA and EC keys are read from PKCS#12 "
                            "(for an ML-DSA key, pass the PEM certificate and --private-key)")
    certs = ([cert] if cert is not None else []) + list(extra)
    leaf = next((c for c in certs if public_key_matches(key, c.public_key())), None)
    if leaf is None:
        raise MaterialError(f"PKCS#12 file {path!r} holds no certificate for its private key")
    chain = tuple(c for c in certs if c is not leaf)
    return Material(certificate=leaf, private_key=key, chain=chain)


def _is_pem_certificate(data: bytes) -> bool:
    return b"-----BEGIN CERTIFICATE-----" in data


def _stdin_chain(data: bytes) -> list[x509.Certificate]:
    """The certificates after the leaf in a PEM stream on standard input: the chain to send."""
    blocks = [block for kind, block in _pem_blocks(data) if kind == "CERTIFICATE"][1:]
    return parse_bundle(b"".join(blocks), "standard input") if blocks else []


def _has_pem_key(data: bytes) -> bool:
    return any(kind.endswith("PRIVATE KEY") for kind, _ in _pem_blocks(data))


def load_material(
    certificate: str,
    private_key: str | None = None,
    intermediates: str | None = None,
    pkcs8_password: str | None = None,
) -> Material:
    """Read and check everything needed to sign; every problem becomes one MaterialError.

    Paths only (``-``: standard input); :func:`pki.signer.inputs.load_any` also takes ``pkcs11:``
    URIs, bytes and loaded objects.
    """
    if not certificate:
        raise MaterialError("--certificate is required (a PEM certificate or a PKCS#12 bundle)")
    cert_data = _read(certificate, "certificate")
    paths = [certificate]
    if not private_key and _is_pem_certificate(cert_data) and _has_pem_key(cert_data):
        private_key = certificate  # one PEM file (or stdin) with both, as the helper accepts
    if not private_key:
        if _is_pem_certificate(cert_data):
            raise MaterialError(
                f"--private-key is required: {certificate!r} is a PEM certificate, not a PKCS#12 bundle"
            )
        if intermediates:
            raise MaterialError(
                "can't specify certificate chain when using PKCS#12 files; certificate bundle "
                "should be provided within the PKCS#12 file"
            )
        material = parse_pkcs12(cert_data, pkcs8_password, certificate)
    else:
        leaf = parse_certificate(cert_data, certificate)
        key = parse_private_key(_read(private_key, "private key"), pkcs8_password, private_key)
        if private_key != certificate:
            paths.append(private_key)
        chain: tuple[x509.Certificate, ...] = ()
        if intermediates:
            chain = tuple(parse_bundle(_read(intermediates, "intermediates bundle"), intermediates))
            paths.append(intermediates)
        elif certificate == STDIN:
            chain = tuple(_stdin_chain(cert_data))
        material = Material(certificate=leaf, private_key=key, chain=chain)
    check_material(material, certificate, private_key or certificate)
    return Material(
        certificate=material.certificate,
        private_key=material.private_key,
        chain=material.chain,
        sources=file_fingerprint([p for p in paths if p != STDIN]),
    )


def check_material(material: Material, cert_path: str, key_path: str) -> None:
    """Refuse what the service would refuse anyway, with the precise reason and no network call."""
    try:
        KeyType.of(material.private_key)
    except RapkiError as exc:
        raise MaterialError(f"private key {key_path!r}: {exc}") from None
    if not public_key_matches(material.private_key, material.certificate.public_key()):
        raise MaterialError(
            f"private key {key_path!r} does not belong to certificate {cert_path!r} "
            "(the service would answer 'Invalid signature')"
        )
    if len(material.chain) > MAX_CHAIN:
        raise MaterialError(
            f"{len(material.chain)} intermediate certificates given: the service accepts at most {MAX_CHAIN}"
        )


def describe_certificate(cert: x509.Certificate) -> str:
    """``subject (issuer ..., serial N)`` in RFC 4514 form, for diagnostics."""
    return (
        f"{cert.subject.rfc4514_string() or '<empty subject>'} "
        f"(issuer {cert.issuer.rfc4514_string()}, serial {cert.serial_number:x})"
    )


def key_type_label(key: object) -> str:
    """``RSA``, ``EC`` or ``ML-DSA-44``/``-65``/``-87``: the helper's ``keyType`` in
    read-certificate-data (for ML-DSA the parameter set, which is also its only algorithm)."""
    if key_family(key) == "mldsa":
        return str(KeyType.of(key)).upper()
    return key_family(key).upper()


__all__ = [
    "MAX_CHAIN",
    "InvalidInput",
    "Material",
    "MaterialError",
    "describe_certificate",
    "file_fingerprint",
    "key_type_label",
    "load_material",
    "parse_bundle",
    "parse_certificate",
    "parse_pkcs12",
    "parse_private_key",
]
