"""Workload certificates: what a request may ask for, and how the certificate is built.

``IssueRequest`` is what a caller wants (a CN, SANs, a TTL, a public key from a CSR or one made
here). ``request_from_csr`` turns a CSR into one, refusing, never rewriting, anything the CSR asks
for that a workload certificate must not have. ``build_leaf`` makes the certificate.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID

from pki.errors import InvalidInput, PolicyViolation
from pki.keys import KeyType, PrivateKey, PublicKey

BACKDATE = timedelta(minutes=5)  # tolerate clients whose clock runs a little behind


@dataclass(frozen=True)
class SubjectAltNames:
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()

    @classmethod
    def parse(cls, values: list[str] | tuple[str, ...]) -> SubjectAltNames:
        """``dns:name``, ``uri:scheme://...`` or a bare name (DNS, or URI when it has ``://``)."""
        dns: list[str] = []
        uri: list[str] = []
        for value in values:
            kind, _, rest = value.partition(":")
            if kind.lower() == "dns" and rest:
                dns.append(rest)
            elif kind.lower() == "uri" and rest:
                uri.append(rest)
            elif "://" in value:
                uri.append(value)
            elif value and "://" not in value and ":" not in value:
                dns.append(value)
            else:
                raise InvalidInput(f"invalid SAN {value!r}: use dns:NAME or uri:URI")
        return cls(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(uri)))

    def merged(self, other: SubjectAltNames) -> SubjectAltNames:
        return SubjectAltNames(
            tuple(dict.fromkeys(self.dns + other.dns)), tuple(dict.fromkeys(self.uri + other.uri))
        )

    def as_list(self) -> list[str]:
        return [f"dns:{d}" for d in self.dns] + [f"uri:{u}" for u in self.uri]

    def general_names(self) -> list[x509.GeneralName]:
        names: list[x509.GeneralName] = []
        for name in self.dns:
            try:
                ipaddress.ip_address(name)
            except ValueError:
                names.append(x509.DNSName(name))
            else:
                raise InvalidInput(f"{name!r} is an IP address, not a DNS name")
        names.extend(x509.UniformResourceIdentifier(u) for u in self.uri)
        return names


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    try:
        if b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        else:
            csr = x509.load_der_x509_csr(data)
    except ValueError as exc:
        raise InvalidInput(f"not a valid CSR: {exc}") from exc
    if not csr.is_signature_valid:
        raise InvalidInput("the CSR signature does not verify: it was altered or signed by another key")
    return csr


@dataclass(frozen=True)
class CsrContent:
    public_key: PublicKey
    key_type: KeyType
    common_name: str | None
    sans: SubjectAltNames


def read_csr(csr: x509.CertificateSigningRequest) -> CsrContent:
    """What a CSR asks for, refusing requests a workload certificate can never satisfy."""
    try:
        public_key = csr.public_key()
    except Exception as exc:
        raise InvalidInput(f"the CSR public key cannot be read: {exc}") from exc
    key_type = KeyType.of(public_key)  # type: ignore[arg-type]
    cn: str | None = None
    for attr in csr.subject:
        if attr.oid == NameOID.COMMON_NAME and cn is None:
            cn = str(attr.value)
        else:
            raise PolicyViolation(
                f"the CSR subject carries {attr.oid._name}: only a CN is issued, remove the rest"
            )
    sans = SubjectAltNames()
    for ext in csr.extensions:
        sans = sans.merged(_check_csr_extension(ext))
    return CsrContent(public_key, key_type, cn, sans)  # type: ignore[arg-type]


def _check_csr_extension(ext: x509.Extension[x509.ExtensionType]) -> SubjectAltNames:
    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        if value.ca:
            raise PolicyViolation("the CSR asks for CA:TRUE: workload certificates are never CAs")
        return SubjectAltNames()
    if isinstance(value, x509.ExtendedKeyUsage):
        others = [u._name for u in value if u != ExtendedKeyUsageOID.CLIENT_AUTH]
        if others:
            raise PolicyViolation(f"the CSR asks for extended key usages {others}: only clientAuth is issued")
        return SubjectAltNames()
    if isinstance(value, x509.KeyUsage):
        if value.key_cert_sign or value.crl_sign:
            raise PolicyViolation("the CSR asks for keyCertSign/cRLSign: workload certificates are never CAs")
        return SubjectAltNames()
    if isinstance(value, x509.SubjectAlternativeName):
        dns, uri = [], []
        for name in value:
            if isinstance(name, x509.DNSName):
                dns.append(name.value)
            elif isinstance(name, x509.UniformResourceIdentifier):
                uri.append(name.value)
            else:
                raise PolicyViolation(f"the CSR asks for a {type(name).__name__} SAN: only DNS and URI SANs are issued")
        return SubjectAltNames(tuple(dns), tuple(uri))
    if ext.oid in (ExtensionOID.SUBJECT_KEY_IDENTIFIER,):
        return SubjectAltNames()
    raise PolicyViolation(f"the CSR asks for extension {ext.oid.dotted_string} ({ext.oid._name}), which is not issued")


@dataclass(frozen=True)
class LeafSpec:
    common_name: str
    sans: SubjectAltNames
    public_key: PublicKey
    serial: int
    not_before: datetime
    not_after: datetime


_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)
_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH])
_BASIC = x509.BasicConstraints(ca=False, path_length=None)


def build_leaf(spec: LeafSpec, *, issuer_cert: x509.Certificate, issuer_aki: x509.AuthorityKeyIdentifier,
               issuer_key: PrivateKey, issuer_key_type: KeyType) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, spec.common_name)]))
        .issuer_name(issuer_cert.subject)
        .public_key(spec.public_key)
        .serial_number(spec.serial)
        .not_valid_before(spec.not_before)
        .not_valid_after(spec.not_after)
        .add_extension(_BASIC, critical=True)
        .add_extension(_KEY_USAGE, critical=True)
        .add_extension(_EKU, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(spec.public_key), critical=False)
        .add_extension(issuer_aki, critical=False)
    )
    names = spec.sans.general_names()
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return builder.sign(issuer_key, issuer_key_type.signature_hash())
