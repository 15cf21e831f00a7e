"""Workload certificates: what a request may ask for, and how the certificate is built.

``load_csr`` parses a CSR and checks its signature (``VerifiedCsr``); ``read_csr`` says what it asks
for (``CsrContent``), refusing, never rewriting, anything a workload certificate must not have.
``LeafSpec`` is what goes into a certificate; ``leaf_extensions`` and ``build_leaf`` make it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, cast

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, ExtensionOID, NameOID, SignatureAlgorithmOID

from pki.errors import InvalidInput, PolicyViolation
from pki.x509 import external
from pki.x509.keys import KeyType, PrivateKey, PublicKey, key_family, subject_key_identifier

BACKDATE = timedelta(minutes=5)  # tolerate clients whose clock runs a little behind


_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def dns_name_problem(name: str) -> str | None:
    """Why ``name`` is not a fully qualified host name in RFC 1034 preferred syntax, or None.

    Single-label names (``localhost``) and numeric top-level labels are refused: linters (and the
    CA/B rules they encode) reject them, and a certificate rapki makes must pass the linters.
    A leading ``*.`` wildcard label is allowed.
    """
    labels = name.removeprefix("*.").split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{name!r} is not a fully qualified DNS name (labels of letters, digits and '-', at least two)"
    if labels[-1].isdigit():
        return f"{name!r} ends in a numeric label: use an ip: SAN for addresses"
    return None


@dataclass(frozen=True)
class SubjectAltNames:
    dns: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()
    ip: tuple[str, ...] = ()  # only in rapki's own TLS server certificates, never in workload ones

    @classmethod
    def parse(cls, values: Sequence[str]) -> SubjectAltNames:
        """``dns:name``, ``uri:scheme://...``, ``ip:address`` or a bare name (DNS, or URI when it has
        ``://``)."""
        if not values:
            return _NO_SANS
        dns: list[str] = []
        uri: list[str] = []
        ip: list[str] = []
        for value in values:
            kind, _, rest = value.partition(":")
            if kind.lower() == "dns" and rest:
                dns.append(_checked_dns(rest))
            elif kind.lower() == "uri" and rest:
                uri.append(rest)
            elif kind.lower() == "ip" and rest:
                try:
                    ip.append(str(ipaddress.ip_address(rest)))
                except ValueError:
                    raise InvalidInput(f"invalid IP SAN {rest!r}") from None
            elif "://" in value:
                uri.append(value)
            elif value and "://" not in value and ":" not in value:
                dns.append(_checked_dns(value))
            else:
                raise InvalidInput(f"invalid SAN {value!r}: use dns:NAME or uri:URI")
        return cls(tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(uri)), tuple(dict.fromkeys(ip)))

    def merged(self, other: SubjectAltNames) -> SubjectAltNames:
        if not (other.dns or other.uri or other.ip):
            return self
        return SubjectAltNames(
            tuple(dict.fromkeys(self.dns + other.dns)), tuple(dict.fromkeys(self.uri + other.uri)),
            tuple(dict.fromkeys(self.ip + other.ip)),
        )

    def as_list(self) -> list[str]:
        if not (self.dns or self.uri or self.ip):
            return []
        return [f"dns:{d}" for d in self.dns] + [f"uri:{u}" for u in self.uri] + [f"ip:{a}" for a in self.ip]

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
        names.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in self.ip)
        return names


_NO_SANS = SubjectAltNames()


def _checked_dns(name: str) -> str:
    if (problem := dns_name_problem(name)) is not None:
        raise InvalidInput(f"invalid DNS SAN: {problem}")
    return name


class VerifiedCsr(NamedTuple):
    """A CSR whose signature verified, the public key it verified with and its subject. Key and
    subject are read out of the CSR once (each ``public_key()`` or ``subject`` access parses them
    again), and holding one of these means the signature was checked: ``load_csr`` makes them."""

    request: x509.CertificateSigningRequest
    public_key: PublicKey
    subject: x509.Name


_ECDSA_SIGNATURES = {  # signature algorithm -> how to verify it (immutable, so shared)
    SignatureAlgorithmOID.ECDSA_WITH_SHA256: ec.ECDSA(hashes.SHA256()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA384: ec.ECDSA(hashes.SHA384()),
    SignatureAlgorithmOID.ECDSA_WITH_SHA512: ec.ECDSA(hashes.SHA512()),
}


# Signatures whose hash no longer proves anything: named in the refusal, never verified.
_WEAK_SIGNATURES = {
    SignatureAlgorithmOID.RSA_WITH_MD5: "RSA with MD5",
    SignatureAlgorithmOID.RSA_WITH_SHA1: "RSA with SHA-1",
    SignatureAlgorithmOID.ECDSA_WITH_SHA1: "ECDSA with SHA-1",
    SignatureAlgorithmOID.DSA_WITH_SHA1: "DSA with SHA-1",
    x509.ObjectIdentifier("1.3.14.3.2.29"): "RSA with SHA-1",  # the old OIW form
}


def load_csr(data: bytes | x509.CertificateSigningRequest) -> VerifiedCsr:
    """Parse (PEM or DER) and verify a CSR; InvalidInput when it is not one or does not verify."""
    try:
        if isinstance(data, x509.CertificateSigningRequest):
            csr = data
        elif b"-----BEGIN" in data:
            csr = x509.load_pem_x509_csr(data)
        elif data[:1] == b"\x30":  # a DER SEQUENCE
            csr = x509.load_der_x509_csr(data)
        else:
            raise ValueError("expected a PEM file (-----BEGIN CERTIFICATE REQUEST-----) or DER")
        public_key = csr.public_key()
        subject = csr.subject
    except ValueError as exc:
        raise InvalidInput(f"not a valid CSR: {exc}") from exc
    except Exception as exc:  # an unsupported key algorithm
        raise InvalidInput(f"the CSR public key cannot be read: {exc}") from exc
    weak = _WEAK_SIGNATURES.get(csr.signature_algorithm_oid)
    if weak is not None:
        raise InvalidInput(f"the CSR is signed with {weak}, which is not accepted: sign it with SHA-256 or stronger")
    try:
        valid = _signature_valid(csr, public_key)
    except Exception as exc:  # a signature algorithm cryptography cannot check
        raise InvalidInput(f"the CSR signature cannot be checked: {exc}") from exc
    if not valid:
        raise InvalidInput("the CSR signature does not verify: it was altered or signed by another key")
    # Any key that verified its CSR; read_csr refuses the types Roles Anywhere does not accept.
    return VerifiedCsr(csr, public_key, subject)  # type: ignore[arg-type]


def _signature_valid(csr: x509.CertificateSigningRequest, public_key: object) -> bool:
    """ECDSA signatures (the common case) are checked with the key already read; anything else
    (RSA, PSS) by ``is_signature_valid``, which reads the key again itself."""
    ecdsa = _ECDSA_SIGNATURES.get(csr.signature_algorithm_oid)
    if ecdsa is not None and key_family(public_key) == "ec":
        try:
            cast(ec.EllipticCurvePublicKey, public_key).verify(csr.signature, csr.tbs_certrequest_bytes, ecdsa)
        except InvalidSignature:
            return False
        return True
    return csr.is_signature_valid


class CsrContent(NamedTuple):
    public_key: PublicKey
    key_type: KeyType
    common_name: str | None
    sans: SubjectAltNames


def read_csr(csr: VerifiedCsr) -> CsrContent:
    """What a CSR asks for, refusing requests a workload certificate can never satisfy."""
    key_type = KeyType.of(csr.public_key)
    cn: str | None = None
    for attr in csr.subject:
        if attr.oid == NameOID.COMMON_NAME and cn is None:
            cn = str(attr.value)
        else:
            raise PolicyViolation(
                f"the CSR subject carries {attr.oid._name}: only a CN is issued, remove the rest"
            )
    try:
        extensions = csr.request.extensions
    except Exception as exc:  # duplicated or malformed extensions
        raise InvalidInput(f"the CSR's extensions cannot be read: {exc}") from exc
    sans = _NO_SANS
    for ext in extensions:
        sans = sans.merged(_check_csr_extension(ext))
    return CsrContent(csr.public_key, key_type, cn, sans)


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
                dns.append(_checked_dns(name.value))
            elif isinstance(name, x509.UniformResourceIdentifier):
                uri.append(name.value)
            else:
                raise PolicyViolation(f"the CSR asks for a {type(name).__name__} SAN: only DNS and URI SANs are issued")
        return SubjectAltNames(tuple(dns), tuple(uri))
    if ext.oid in (ExtensionOID.SUBJECT_KEY_IDENTIFIER,):
        return SubjectAltNames()
    raise PolicyViolation(f"the CSR asks for extension {ext.oid.dotted_string} ({ext.oid._name}), which is not issued")


class LeafSpec(NamedTuple):
    """What goes into one workload certificate. (Immutable values made per certificate are
    NamedTuples here: about a fifth of the cost of a frozen dataclass to create.)"""

    common_name: str
    sans: SubjectAltNames
    public_key: PublicKey
    serial: int
    not_before: datetime
    not_after: datetime
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.CLIENT_AUTH  # SERVER_AUTH for rapki's own TLS


_KEY_USAGE = x509.KeyUsage(
    digital_signature=True, content_commitment=False, key_encipherment=False,
    data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
    encipher_only=False, decipher_only=False,
)
_EKU = {oid: x509.ExtendedKeyUsage([oid]) for oid in (ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH)}
_BASIC = x509.BasicConstraints(ca=False, path_length=None)


@functools.lru_cache(maxsize=4096)
def leaf_subject(common_name: str) -> x509.Name:
    """The subject of every workload certificate: the CN alone (immutable, so shared per CN)."""
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@functools.lru_cache(maxsize=4096)
def leaf_subject_text(common_name: str) -> str:
    """``leaf_subject(cn)`` as RFC 4514 text (as stored); workloads renew under the same CNs."""
    return leaf_subject(common_name).rfc4514_string()


def _extension(value: x509.ExtensionType, *, critical: bool = False) -> x509.Extension[x509.ExtensionType]:
    return x509.Extension(value.oid, critical, value)


@dataclass(frozen=True)
class LeafSigner:
    """One issuing CA as every leaf it signs sees it: its name, its key identifier (the leaves'
    AKI), its key and hash. Made once per issuer (``CertificateAuthority`` keeps it), so issuing
    neither re-reads the issuer's name out of its certificate nor rebuilds what all its leaves
    share: basicConstraints, keyUsage, extendedKeyUsage and AKI, per usage.

    ``key`` is a key object (a file key: ``cryptography`` signs with it directly, ``direct``) or
    an HSM or KMS key (``pki.x509.external`` assembles the certificate around its signature)."""

    issuer_name: x509.Name
    issuer_aki: x509.AuthorityKeyIdentifier
    key: external.SigningKey
    key_type: KeyType
    crl_url: str | None = None  # the CRL Distribution Point of its leaves ([crl].distribution_url)
    direct: PrivateKey | None = field(init=False)
    hash: hashes.SHA256 | hashes.SHA384 | None = field(init=False)
    algorithm: x509.ObjectIdentifier = field(init=False)  # the signatureAlgorithm its certificates carry
    shared: dict[x509.ObjectIdentifier, tuple[x509.Extension[x509.ExtensionType], ...]] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "direct", external.key_object(self.key))
        object.__setattr__(self, "hash", self.key_type.signature_hash())
        distribution = (_extension(crl_distribution_points(self.crl_url)),) if self.crl_url else ()
        object.__setattr__(self, "algorithm", external.signature_algorithm(self.key_type))
        object.__setattr__(self, "shared", {
            usage: (_extension(_BASIC, critical=True), _extension(_KEY_USAGE, critical=True), _extension(eku),
                    _extension(self.issuer_aki), *distribution)
            for usage, eku in _EKU.items()
        })


def crl_distribution_points(url: str) -> x509.CRLDistributionPoints:
    """One distribution point: the full name ``url``, no reasons, no cRLIssuer (the CA signs its
    own CRL, which covers every reason), as RFC 5280 4.2.1.13 and the CA/B profile want."""
    return x509.CRLDistributionPoints([x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)])


def _naive_utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=None) if moment.tzinfo is UTC else moment.astimezone(UTC).replace(tzinfo=None)


def leaf_extensions(spec: LeafSpec, signer: LeafSigner) -> list[x509.Extension[x509.ExtensionType]]:
    """The extensions of the certificate ``spec`` describes: what ``signer``'s leaves share, its SKI
    and, when it has names, its SAN."""
    extensions = [*signer.shared[spec.usage], _extension(subject_key_identifier(spec.public_key))]
    names = spec.sans.general_names()
    if names:
        extensions.append(_extension(x509.SubjectAlternativeName(names)))
    return extensions


def build_leaf(spec: LeafSpec, signer: LeafSigner,
               extensions: list[x509.Extension[x509.ExtensionType]]) -> x509.Certificate:
    """The certificate ``spec`` describes, with ``extensions`` (``leaf_extensions``), signed by ``signer``.

    The builder is constructed with all its fields at once (times as naive UTC, as its setters
    would store them) rather than through its setters: each setter copies the builder and re-checks
    its argument, a fifth of the cost of building. Every field here is made by rapki, and the CA
    checks each of them against the Roles Anywhere rules first
    (``pki.x509.preflight.leaf_content_problems``: serial, hash, key, CN, extensions).
    """
    builder = x509.CertificateBuilder(
        signer.issuer_name, leaf_subject(spec.common_name), spec.public_key, spec.serial,
        _naive_utc(spec.not_before), _naive_utc(spec.not_after), extensions,
    )
    if signer.direct is not None:
        return builder.sign(signer.direct, signer.hash)
    return external.sign_certificate(builder, cast(external.ExternalSigner, signer.key))
