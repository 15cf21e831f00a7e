"""The trust decision of CreateSession: does this certificate chain up to the trust anchor, unrevoked?

Given the leaf, the intermediates it sent (``X-Amz-X509-Chain``), the trust anchor's certificates,
the anchor's enabled CRLs and a time, :func:`check` returns a :class:`Verdict`: ok, or the first
problem the service would meet, in its order:

1. ``chain-too-long``: more than 5 intermediates;
2. ``leaf``: the end-entity rules of :func:`pki.x509.preflight.leaf_problems` (validity, CA:TRUE,
   keyUsage, algorithms, CN...);
3. ``issuer-not-found`` / ``foreign-ca``: no certificate issued the current link, or one with the
   issuer's name is there but its key did not sign it (another CA with the same name);
4. ``ca-rule``: a CA of the path is not valid at that time, is not CA:TRUE, lacks keyCertSign or
   breaks its pathLen;
5. ``revoked``: an enabled CRL, validly signed by the CA above, lists a certificate of the path.

With ``crlDpRevocationEnabled`` on the anchor, step 5 reads the CRLs at the certificates' CRL
Distribution Points instead (:func:`check_distribution_points`); a CRL that cannot be had there is
``crl-dp-unusable`` unless the caller lets it through.

The emulator's CreateSession refuses with the first problem; ``rapki doctor`` runs the steps
(:func:`build_path`, :func:`find_revocation`) one by one to show each. Verified issuer links are
cached (the emulator checks the same few links on every call); everything here is pure otherwise.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from itertools import pairwise

from cryptography import x509
from cryptography.exceptions import InvalidSignature

from pki.rolesanywhere.sigv4x509 import MAX_CHAIN_CERTIFICATES
from pki.x509.preflight import leaf_problems

CHAIN_TOO_LONG = "chain-too-long"
LEAF = "leaf"
ISSUER_NOT_FOUND = "issuer-not-found"
FOREIGN_CA = "foreign-ca"
CA_RULE = "ca-rule"
REVOKED = "revoked"
DP_UNUSABLE = "crl-dp-unusable"


@dataclass(frozen=True)
class Verdict:
    """ok (``problem`` None) or the first problem, with the path as far as it was built."""

    path: tuple[x509.Certificate, ...]
    problem: str | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.problem is None


def subject_of(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


@lru_cache(maxsize=8192)
def issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s subject names ``child``'s issuer and its key verifies the signature:
    RSA or ECDSA with the hash the certificate names, or pure ML-DSA (FIPS 204, empty context, RFC
    9881), which ``cryptography`` checks from the signature algorithm alone. Any mix of the three
    along a path is accepted, as by the service (an EC root over an ML-DSA CA, and so on)."""
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # bad signature, unsupported algorithm or key
        return False
    return True


def ca_problem(cert: x509.Certificate, below: int, now: datetime) -> str | None:
    """Why ``cert`` cannot act as a CA with ``below`` intermediate CAs under it, or None."""
    name = cert.subject.rfc4514_string()
    if now < cert.not_valid_before_utc or now > cert.not_valid_after_utc:
        return f"CA certificate {name} is not valid at {now:%Y-%m-%dT%H:%M:%SZ}"
    try:
        bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        return f"CA certificate {name} has no basicConstraints"
    if not bc.ca:
        return f"certificate {name} is not a CA (basicConstraints CA:FALSE)"
    if bc.path_length is not None and below > bc.path_length:
        return f"CA certificate {name} has pathLen {bc.path_length} but {below} CA(s) below it"
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not ku.key_cert_sign:
            return f"CA certificate {name} lacks keyUsage keyCertSign"
    except x509.ExtensionNotFound:
        pass
    return None


def build_path(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    now: datetime,
) -> Verdict:
    """leaf -> chain certificates -> one anchor certificate, every link signature and CA rule checked."""
    path = [leaf]
    remaining = list(chain)
    current = leaf
    while True:  # bounded: each round ends at an anchor, fails, or consumes one chain certificate
        anchor = next((a for a in anchors if issued_by(current, a)), None)
        if anchor is not None:
            path.append(anchor)
            break
        nxt = next((c for c in remaining if issued_by(current, c)), None)
        if nxt is None:
            same_name = any(c.subject == current.issuer for c in (*anchors, *remaining))
            reason = "signed by another key" if same_name else "not found"
            return Verdict(
                tuple(path), FOREIGN_CA if same_name else ISSUER_NOT_FOUND,
                f"no path from {current.subject.rfc4514_string()} to a trust anchor certificate "
                f"(issuer {current.issuer.rfc4514_string()} {reason})",
            )
        remaining.remove(nxt)
        path.append(nxt)
        current = nxt
    for index, ca in enumerate(path[1:], start=1):
        if (problem := ca_problem(ca, index - 1, now)) is not None:
            return Verdict(tuple(path), CA_RULE, problem)
    return Verdict(tuple(path))


@dataclass
class ParsedCrl:
    """A CRL with its revoked serials as a set; which issuers' keys verify it is learnt once each."""

    crl: x509.CertificateRevocationList
    revoked: frozenset[int]
    signed_by: dict[x509.Certificate, bool] = field(default_factory=dict)

    @classmethod
    def of(cls, crl: x509.CertificateRevocationList) -> ParsedCrl:
        return cls(crl, frozenset(r.serial_number for r in crl))

    def signature_valid_for(self, issuer: x509.Certificate) -> bool:
        known = self.signed_by.get(issuer)
        if known is None:
            known = self.crl.issuer == issuer.subject and _crl_signature_ok(self.crl, issuer)
            self.signed_by[issuer] = known
        return known


def _crl_signature_ok(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        # The issuer of a CRL we trust is a CA with an RSA, EC or ML-DSA key (ML-DSA CRLs are pure
        # ML-DSA: no hash to pick). is_signature_valid refuses key-agreement keys by type (TypeError);
        # a CA certificate never holds one.
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@dataclass(frozen=True)
class Revocation:
    certificate: x509.Certificate
    crl: ParsedCrl


def find_revocation(path: Sequence[x509.Certificate], crls: Iterable[ParsedCrl]) -> Revocation | None:
    """The first certificate of ``path`` listed on a CRL validly signed by the certificate above it."""
    for parsed in crls:
        for child, parent in pairwise(path):
            if child.issuer != parsed.crl.issuer or not parsed.signature_valid_for(parent):
                continue
            if child.serial_number in parsed.revoked:
                return Revocation(child, parsed)
    return None


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The http(s) URLs of ``cert``'s CRL Distribution Points (full names only; LDAP and relative
    names are not fetched)."""
    try:
        cdp = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return [name.value for point in cdp for name in point.full_name or ()
            if isinstance(name, x509.UniformResourceIdentifier) and name.value.lower().startswith(("http://",
                                                                                                  "https://"))]


def check_distribution_points(path: Sequence[x509.Certificate], fetch: Callable[[str], ParsedCrl], *,
                              allow_unusable: bool = False) -> Verdict | None:
    """Revocation by distribution point: each certificate of ``path`` (but the anchor) with a CRL
    Distribution Point is looked up on the CRL ``fetch(url)`` gives (raising ``Exception`` with the
    reason when it has none), which must be signed by the certificate above it. None when nothing
    is revoked; a ``REVOKED`` verdict, or ``DP_UNUSABLE`` when a CRL could not be had or was not
    the issuer's (unless ``allow_unusable``). A certificate without a distribution point is not
    checked: there is nothing to fetch."""
    for child, parent in pairwise(path):
        for url in distribution_points(child):
            try:
                parsed = fetch(url)
                if child.issuer != parsed.crl.issuer or not parsed.signature_valid_for(parent):
                    raise ValueError(f"{url}: the CRL there is not signed by {parent.subject.rfc4514_string()}")
            except Exception as exc:
                if allow_unusable:
                    continue
                return Verdict(tuple(path), DP_UNUSABLE, f"no usable CRL for {child.subject.rfc4514_string()}: {exc}")
            if child.serial_number in parsed.revoked:
                return Verdict(tuple(path), REVOKED, f"serial {child.serial_number:x} of "
                               f"{child.subject.rfc4514_string()} is on the CRL at {url}")
    return None


def check(
    leaf: x509.Certificate,
    chain: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    crls: Iterable[ParsedCrl],
    now: datetime,
) -> Verdict:
    """Every step in the service's order; the first problem wins."""
    if len(chain) > MAX_CHAIN_CERTIFICATES:
        return Verdict((leaf,), CHAIN_TOO_LONG,
                       f"X-Amz-X509-Chain has {len(chain)} certificates: at most {MAX_CHAIN_CERTIFICATES}")
    if problems := leaf_problems(leaf, now=now):
        return Verdict((leaf,), LEAF, "; ".join(problems))
    verdict = build_path(leaf, chain, anchors, now)
    if not verdict.ok:
        return verdict
    if (hit := find_revocation(verdict.path, crls)) is not None:
        cert = hit.certificate
        return Verdict(verdict.path, REVOKED,
                       f"serial {cert.serial_number:x} of {cert.subject.rfc4514_string()} is on a CRL")
    return verdict
