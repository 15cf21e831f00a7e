"""Enroll, renew and revoke: the request bodies read and checked, then handed to ``pki``.

Policy lives in ``pki`` (profiles, CSR rules, Roles Anywhere preflight in
``CertificateAuthority.issue``; token binding and redemption in ``pki.ca.tokens``). The shapes of
the bodies are declared once, in ``service.api.shapes``: the OpenAPI document and the checks are
both derived from them. This module reads the bodies through them, checks what spans several
fields (``csr`` or ``key_type``, the PKCS#12 password), orders the checks so that every refusal
happens before anything is written, and shapes the answer (PEM or PKCS#12, Roles Anywhere binding).

Order for ``/v1/enroll``: token known and redeemable (401/409) -> body shape (400/413) -> token
bound to this profile and CN (403) -> CSR content and profile policy (422, inside ``issue`` before
any key or certificate is made) -> certificate recorded and token use consumed in one transaction.
"""

from __future__ import annotations

import base64
from datetime import timedelta
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

from pki.ca.authority import CertificateAuthority, IssuedCertificate
from pki.ca.tokens import EnrollmentToken, TokenStore
from pki.errors import Forbidden, InvalidInput
from pki.rolesanywhere.credential_process import credential_process_line
from pki.store.statements import Defer
from pki.x509.crl import parse_reason
from pki.x509.durations import parse_duration
from pki.x509.issuance import CsrContent, SubjectAltNames, load_csr, read_csr
from pki.x509.keys import KeyType
from pki.x509.pem import Pem, pkcs12_bundle
from pki.x509.profiles import Profile
from service.api.auth import Caller
from service.api.shapes import ENROLL_REQUEST, MIN_PKCS12_PASSWORD, RENEW_REQUEST, REVOKE_REQUEST, Shape


class Request:
    """The fields of /v1/enroll and /v1/renew (``shape``), checked, then read into what ``issue`` takes."""

    def __init__(self, body: dict[str, Any], shape: Shape) -> None:
        fields = shape.read(body)
        csr_text = fields["csr"]
        key_type = fields["key_type"]
        if csr_text is not None and key_type is not None:
            raise InvalidInput('give "csr" (your own key) or "key_type" (key made by the server), not both')
        self.csr = load_csr(csr_text.encode()) if csr_text is not None else None
        self.csr_content: CsrContent | None = None  # read by check_csr(), after authentication
        self.key_type = KeyType.parse(key_type) if key_type is not None else None
        ttl = fields["ttl"]
        self.ttl: timedelta | None = parse_duration(ttl) if ttl is not None else None
        self.format: str = fields["format"]
        self.password: str | None = fields["password"]
        if self.format == "pkcs12" and (self.password is None or len(self.password) < MIN_PKCS12_PASSWORD):
            raise InvalidInput(f'"format": "pkcs12" needs a "password" of at least {MIN_PKCS12_PASSWORD} characters')
        self.refuse_pkcs12_of(self.key_type)
        self.sans = SubjectAltNames.parse(fields.get("sans") or [])  # renewal keeps the names: no "sans"
        self.cn: str | None = fields.get("cn")
        self.profile: str | None = fields.get("profile")

    def refuse_pkcs12_of(self, key_type: KeyType | None) -> None:
        """Refused before anything is issued: a PKCS#12 bundle cannot hold an ML-DSA key
        (``pki.x509.pem.pkcs12_bundle``)."""
        if self.format == "pkcs12" and key_type is not None and key_type.is_mldsa:
            raise InvalidInput(f'"format": "pkcs12" cannot hold an {key_type} key: ask for "format": "pem"')

    def check_csr(self) -> None:
        """What the CSR asks for; 422 for what a workload certificate never gets (CA:TRUE...)."""
        if self.csr is not None:
            self.csr_content = read_csr(self.csr)

    def csr_common_name(self) -> str | None:
        """The CSR's (first) CN, for the token binding. What else the CSR asks for is checked by
        ``CertificateAuthority.issue`` (422), after the binding (403), as documented."""
        if self.csr is None:
            return None
        names = self.csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        return str(names[0].value) if names else None


def enroll(ca: CertificateAuthority, tokens: TokenStore, token: str, record: EnrollmentToken,
           body: dict[str, Any], caller_address: str,
           later: Defer | None = None,
           ) -> tuple[IssuedCertificate, Request, Profile]:
    """``record`` is the token already authenticated (``TokenStore.authenticate``); one use of it
    is redeemed in the transaction that records the certificate. ``later``: see
    ``CertificateAuthority.issue`` (group commit)."""
    req = Request(body, ENROLL_REQUEST)
    if req.csr is None and req.key_type is None:
        raise InvalidInput('give "csr" (a PEM CSR, your own key) or "key_type" (e.g. "ec-p256", key made here)')
    csr_cn = req.csr_common_name()
    if req.cn is not None and csr_cn is not None and req.cn != csr_cn:
        raise InvalidInput(f'"cn" {req.cn!r} differs from the CSR\'s CN {csr_cn!r}')
    cn = req.cn or csr_cn or (None if record.cn_is_pattern else record.cn)
    if cn is None:
        raise InvalidInput('this token allows several CNs: give "cn" (or a CN in the CSR)')
    tokens.check_binding(record, req.profile, cn)  # 403
    profile = ca.profile(record.profile)
    issued = ca.issue(profile, cn=cn, sans=req.sans.as_list(), csr=req.csr, key_type=req.key_type, ttl=req.ttl,
                      actor=f"api:enrollment-token:{record.id}@{caller_address}",
                      within=tokens.redeemer(token), later=later)
    return issued, req, profile


def renew(ca: CertificateAuthority, caller: Caller, body: dict[str, Any]) -> tuple[IssuedCertificate, Request, Profile]:
    """A new certificate for the same subject and profile; the current one is marked superseded."""
    assert caller.certificate is not None
    current = caller.certificate
    req = Request(body, RENEW_REQUEST)
    req.check_csr()
    old_sans = SubjectAltNames.parse(current.sans)
    if req.csr_content is not None:
        if req.csr_content.common_name not in (None, current.common_name):
            raise Forbidden(f"a renewal keeps the subject: the CSR asks for CN {req.csr_content.common_name!r}, "
                            f"the certificate has {current.common_name!r}")
        extra = set(req.csr_content.sans.as_list()) - set(old_sans.as_list())
        if extra:
            raise Forbidden(f"a renewal keeps the names: the CSR adds {sorted(extra)}; enroll with a token instead")
    key_type = req.key_type if req.csr is None else None
    if req.csr is None and key_type is None:
        key_type = KeyType.parse(current.key_type)
        req.refuse_pkcs12_of(key_type)
    profile = ca.profile(current.profile)
    issued = ca.issue(profile, cn=current.common_name, sans=old_sans.as_list(), csr=req.csr, key_type=key_type,
                      ttl=req.ttl, actor=caller.actor, supersedes=current.serial)
    return issued, req, profile


def revoke_request(body: dict[str, Any], caller: Caller) -> tuple[str, Any]:
    """The serial and reason to revoke; a certificate holder may revoke only its own certificate."""
    fields = REVOKE_REQUEST.read(body)
    serial: str | None = fields["serial"]
    reason = parse_reason(fields["reason"])
    if not caller.is_operator:
        assert caller.certificate is not None
        own = caller.certificate.serial
        if serial is not None and serial.lower().replace(":", "").removeprefix("0x").lstrip("0") != own:
            raise Forbidden("a certificate may revoke only itself: use an operator token for other certificates")
        serial = own
    if serial is None:
        raise InvalidInput('"serial" is required')
    return serial, reason


# --- answers ---------------------------------------------------------------------------------------
def roles_anywhere(profile: Profile) -> dict[str, Any] | None:
    binding = profile.roles_anywhere
    if not binding.is_bound:
        return None
    role_arn = binding.role_arns[0]
    line = credential_process_line(
        certificate="cert.pem", private_key="key.pem", intermediates="chain.pem",
        trust_anchor_arn=binding.trust_anchor_arn, profile_arn=binding.profile_arn, role_arn=role_arn,
        endpoint=binding.endpoint_url, ca_bundle=binding.ca_bundle)
    return {"trust_anchor_arn": binding.trust_anchor_arn, "profile_arn": binding.profile_arn,
            "role_arn": role_arn, "role_arns": list(binding.role_arns),
            "session_duration": binding.session_duration, "endpoint_url": binding.endpoint_url or None,
            "ca_bundle": binding.ca_bundle or None, "credential_process": line}


_CHAIN_PEM: dict[tuple[int, ...], tuple[tuple[x509.Certificate, ...], str]] = {}


def chain_pem(chain: tuple[x509.Certificate, ...]) -> str:
    """The PEM text of ``chain``: the same few issuing CA certificates (the same objects) in every
    answer, encoded once. Found by the objects' identities, not their hashes (hashing a certificate
    costs about as much as a dictionary of them); an entry holds its certificates, so their ids
    cannot be reused while it lives."""
    key = tuple(map(id, chain))
    hit = _CHAIN_PEM.get(key)
    if hit is not None and all(a is b for a, b in zip(hit[0], chain, strict=True)):
        return hit[1]
    if len(_CHAIN_PEM) > 8:  # issuers rotate rarely; never grow without bound
        _CHAIN_PEM.clear()
    text = Pem.of_certificates(chain).text()
    _CHAIN_PEM[key] = (chain, text)
    return text


def answer(issued: IssuedCertificate, req: Request, profile: Profile) -> dict[str, Any]:
    cert = issued.certificate
    result: dict[str, Any] = {
        "serial": issued.serial_hex, "profile": issued.profile, "subject": issued.subject,
        "not_before": cert.not_valid_before_utc.isoformat(), "not_after": cert.not_valid_after_utc.isoformat(),
        "format": req.format,
    }
    if req.format == "pem":
        result["certificate"] = issued.cert_pem.text()
        result["chain"] = chain_pem(tuple(issued.chain))
        if issued.key_pem is not None:
            result["private_key"] = issued.key_pem.text()
    else:
        assert req.password is not None
        bundle = pkcs12_bundle(issued.subject.encode(), issued.private_key, cert, issued.chain,
                               req.password.encode())
        result["pkcs12"] = base64.b64encode(bundle).decode()
        # PEM copies of the public parts, so a client can use them without opening the bundle.
        result["certificate"] = issued.cert_pem.text()
        result["chain"] = chain_pem(tuple(issued.chain))
    binding = roles_anywhere(profile)
    if binding is not None:
        result["roles_anywhere"] = binding
    return result
