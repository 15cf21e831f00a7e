"""CreateSession: authenticate the request, judge the certificate path, hand out credentials.

The order of checks follows what a client can observe from the service: the SigV4-X509
signature first (nothing else is trusted before it), then the parameters, then the trust decision
(trust anchor, path, revocation), then the profile and role. Each refusal carries the service's
status, type and message; our own reason goes in ``detail`` (``X-Rapki-Emulator-Detail``), which
is what makes the emulator useful for debugging an ``Untrusted Signing Certificate``.

This is the hot path of load tests, so parsed anchor bundles, parsed CRLs (with their revoked
serials as a set) and verified issuer links are cached, keyed by the immutable data they come
from; the state lock is held only to copy the few fields needed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from itertools import pairwise
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from pki.rolesanywhere import sigv4x509
from pki.x509.preflight import common_name, leaf_problems, source_identity
from service.emulator.errors import ServiceError, access_denied, validation
from service.emulator.state import Arn, EmulatorState, iso_now

UNTRUSTED = "Untrusted Signing Certificate"
REVOKED = "Certificate revoked"
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
MAX_INSTANCE_PROPERTIES = 50
# STS RoleSessionName rules.
_ROLE_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")
_ROLE_ARN = re.compile(r"^arn:aws(-[^:]+)?:iam::(?P<account>\d{12}):role/(?P<path>(?:.*/)?)(?P<name>[^/]+)$")
_HOST_REGION = re.compile(
    r"^rolesanywhere(?:-fips)?\.(?P<region>[a-z0-9-]+)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)(?::\d+)?$"
)


def region_from_host(host: str) -> str | None:
    """The region of a real Roles Anywhere endpoint name; None for loopback and other hosts."""
    match = _HOST_REGION.match(host.strip().lower())
    return match["region"] if match else None


# --------------------------------------------------------------------------------------------
# Caches of parsed, immutable inputs


@lru_cache(maxsize=512)
def anchor_certificates(pem: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a CERTIFICATE_BUNDLE trust anchor (validated at create/update)."""
    try:
        return tuple(x509.load_pem_x509_certificates(pem.encode("ascii")))
    except ValueError:
        return ()


@dataclass
class ParsedCrl:
    crl: x509.CertificateRevocationList
    revoked: frozenset[int]
    # Issuer certificate -> does the CRL's signature verify with its key. Filled lazily.
    signed_by: dict[x509.Certificate, bool] = field(default_factory=dict)

    def signature_valid_for(self, issuer: x509.Certificate) -> bool:
        known = self.signed_by.get(issuer)
        if known is None:
            known = self.crl.issuer == issuer.subject and _crl_signature_ok(self.crl, issuer)
            self.signed_by[issuer] = known
        return known


def _crl_signature_ok(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    try:
        return crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


@lru_cache(maxsize=256)
def parsed_crl(crl_b64: str) -> ParsedCrl | None:
    try:
        crl = x509.load_pem_x509_crl(base64.b64decode(crl_b64))
    except ValueError:
        return None
    return ParsedCrl(crl, frozenset(r.serial_number for r in crl))


@lru_cache(maxsize=8192)
def issued_by(child: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s subject names ``child``'s issuer and its key verifies the signature."""
    if child.issuer != issuer.subject:
        return False
    try:
        child.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):  # bad signature, unsupported algorithm or key
        return False
    return True


# --------------------------------------------------------------------------------------------
# Path validation


def _ca_problem(cert: x509.Certificate, below: int, now: datetime) -> str | None:
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
    chain: tuple[x509.Certificate, ...],
    anchors: tuple[x509.Certificate, ...],
    now: datetime,
) -> list[x509.Certificate]:
    """leaf -> chain certificates -> one anchor certificate, every link and CA rule checked."""
    path = [leaf]
    remaining = list(chain)
    current = leaf
    for _ in range(len(chain) + 1):  # bounded: each round consumes one chain certificate
        anchor = next((a for a in anchors if issued_by(current, a)), None)
        if anchor is not None:
            path.append(anchor)
            break
        nxt = next((c for c in remaining if issued_by(current, c)), None)
        if nxt is None:
            raise access_denied(
                UNTRUSTED,
                detail=f"no path from {current.subject.rfc4514_string()} to a trust anchor certificate "
                f"(issuer {current.issuer.rfc4514_string()} not found or signature mismatch)",
            )
        remaining.remove(nxt)
        path.append(nxt)
        current = nxt
    else:
        raise access_denied(UNTRUSTED, detail="the chain does not end at a trust anchor certificate")
    for index, ca in enumerate(path[1:], start=1):
        if (problem := _ca_problem(ca, index - 1, now)) is not None:
            raise access_denied(UNTRUSTED, detail=problem)
    return path


def check_revocation(path: list[x509.Certificate], crls: list[str]) -> None:
    """Refuse when an enabled CRL, validly signed by the CA above, lists a certificate of the path."""
    for crl_b64 in crls:
        parsed = parsed_crl(crl_b64)
        if parsed is None:
            continue
        for child, parent in pairwise(path):
            if child.issuer != parsed.crl.issuer or not parsed.signature_valid_for(parent):
                continue
            if child.serial_number in parsed.revoked:
                raise access_denied(
                    REVOKED,
                    detail=f"serial {child.serial_number:x} of {child.subject.rfc4514_string()} is on a CRL",
                )


# --------------------------------------------------------------------------------------------
# The operation


def _param(name: str, query: Mapping[str, str], body: Mapping[str, Any]) -> str:
    in_query, in_body = query.get(name), body.get(name)
    if in_body is not None and not isinstance(in_body, str):
        raise validation(f"{name} must be a string")
    if in_query and in_body and in_query != in_body:
        raise validation(f"{name} differs between the query string and the body")
    value = in_query or in_body
    if not value:
        raise validation(f"{name} is required")
    return value


def _random_credentials(now: datetime, seconds: int) -> dict[str, str]:
    # Shaped like STS session credentials: ASIA + 16 base32 characters, a 40-character secret.
    return {
        "accessKeyId": "ASIA" + base64.b32encode(secrets.token_bytes(10)).decode("ascii"),
        "secretAccessKey": base64.b64encode(secrets.token_bytes(30)).decode("ascii"),
        "sessionToken": base64.b64encode(b"rapki-emulator:" + secrets.token_bytes(285)).decode("ascii"),
        "expiration": (now + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _role_id(role_arn: str) -> str:
    """A stable ``AROA...`` id per role, as IAM gives each role one."""
    digest = hashlib.sha256(role_arn.encode()).digest()
    return "AROA" + base64.b32encode(digest[:11]).decode("ascii")[:17]


@dataclass(frozen=True)
class SessionInput:
    method: str
    path: str
    raw_query: str
    query: Mapping[str, str]
    headers: list[tuple[str, str]]
    body: bytes


def create_session(state: EmulatorState, request: SessionInput, now: datetime) -> dict[str, Any]:
    """Run every CreateSession check; return the 201 body or raise ServiceError."""
    try:
        body = json.loads(request.body) if request.body.strip() else {}
    except (ValueError, UnicodeDecodeError):
        raise validation("The request body is not valid JSON") from None
    if not isinstance(body, dict):
        raise validation("The request body must be a JSON object")
    anchor_arn_text = _param("trustAnchorArn", request.query, body)
    profile_arn_text = _param("profileArn", request.query, body)
    role_arn = _param("roleArn", request.query, body)
    anchor_arn, profile_arn = Arn.parse(anchor_arn_text), Arn.parse(profile_arn_text)
    if anchor_arn is None or anchor_arn.type != "trust-anchor":
        raise validation("trustAnchorArn is not a valid trust anchor ARN")
    if profile_arn is None or profile_arn.type != "profile":
        raise validation("profileArn is not a valid profile ARN")
    role_match = _ROLE_ARN.match(role_arn)
    if role_match is None:
        raise validation("roleArn is not a valid role ARN")

    host = next((v for k, v in request.headers if k.lower() == "host"), "")
    region = region_from_host(host) or anchor_arn.region
    try:
        verified = sigv4x509.verify_create_session(
            method=request.method, path=request.path, raw_query=request.raw_query,
            headers=request.headers, body=request.body, now=now, expected_region=region,
        )  # fmt: skip
    except sigv4x509.SignatureError as exc:
        raise ServiceError(exc.http_status, exc.error_type, exc.message, detail=exc.detail) from None

    duration = body.get("durationSeconds", None)
    if duration is not None and (
        isinstance(duration, bool) or not isinstance(duration, int) or not MIN_DURATION <= duration <= MAX_DURATION
    ):
        raise validation(f"durationSeconds must be an integer between {MIN_DURATION} and {MAX_DURATION}")
    session_name = body.get("roleSessionName")
    if session_name is not None and (not isinstance(session_name, str) or not _ROLE_SESSION_NAME.match(session_name)):
        raise validation("roleSessionName must be 2-64 characters from [\\w+=,.@-]")
    properties = body.get("instanceProperties")
    if properties is not None and (
        not isinstance(properties, dict)
        or len(properties) > MAX_INSTANCE_PROPERTIES
        or not all(
            isinstance(k, str) and isinstance(v, str) and 1 <= len(k) <= 200 and 1 <= len(v) <= 200
            for k, v in properties.items()
        )
    ):
        raise validation("instanceProperties must map at most 50 keys to strings of 1-200 characters")
    for arn in (anchor_arn, profile_arn):
        if arn.region != region or arn.account != anchor_arn.account:
            raise validation(f"{arn} is not in region {region} of account {anchor_arn.account}")

    # Copy what the decision needs under the lock; all cryptography happens outside it.
    with state.lock:
        store = state.data["accounts"].get(anchor_arn.account, {}).get(region)
        anchor = store["trustAnchors"].get(anchor_arn.id) if store else None
        profile = store["profiles"].get(profile_arn.id) if store else None
        anchor_enabled = bool(anchor and anchor.get("enabled"))
        anchor_source = dict(anchor["source"]) if anchor else {}
        crl_data = [
            c["crlData"] for c in store["crls"].values()
            if c.get("enabled") and c.get("trustAnchorArn") == anchor_arn_text
        ] if store else []  # fmt: skip
        profile_copy = dict(profile) if profile else None

    leaf, chain = verified.certificate, verified.chain
    if len(chain) > sigv4x509.MAX_CHAIN_CERTIFICATES:
        raise access_denied(UNTRUSTED, detail=f"X-Amz-X509-Chain has {len(chain)} certificates: at most 5")
    if anchor is None:
        raise access_denied(UNTRUSTED, detail=f"trust anchor {anchor_arn_text} does not exist")
    if not anchor_enabled:
        raise access_denied(UNTRUSTED, detail=f"trust anchor {anchor_arn_text} is disabled")
    if problems := leaf_problems(leaf, now=now):
        raise access_denied(UNTRUSTED, detail="; ".join(problems))
    pem = (anchor_source.get("sourceData") or {}).get("x509CertificateData") or ""
    anchors = anchor_certificates(pem)
    if not anchors:
        raise access_denied(UNTRUSTED, detail="the trust anchor has no certificate the emulator can use")
    path = build_path(leaf, chain, anchors, now)
    check_revocation(path, crl_data)

    if profile_copy is None:
        raise access_denied("Profile not found", detail=f"profile {profile_arn_text} does not exist")
    if not profile_copy.get("enabled"):
        raise access_denied("Profile is disabled", detail=f"profile {profile_arn_text} is disabled")
    if role_arn not in profile_copy.get("roleArns", []):
        raise access_denied(
            f"Unable to assume role for arn: {role_arn}", detail="the role is not listed in the profile"
        )
    if session_name is not None and not profile_copy.get("acceptRoleSessionName"):
        raise access_denied("Not authorized to set roleSessionName.")
    if profile_copy.get("requireInstanceProperties") and not properties:
        raise access_denied("Instance properties are required by the profile")

    # The effective duration is the shorter of the profile's and the one asked for.
    profile_seconds = int(profile_copy.get("durationSeconds") or DEFAULT_DURATION)
    seconds = profile_seconds if duration is None else min(duration, profile_seconds)
    cn = common_name(leaf.subject) or ""
    name = session_name or format(leaf.serial_number, "x")
    subject_arn = record_subject(state, anchor_arn.account, region, leaf, properties, now)
    return {
        "credentialSet": [
            {
                "assumedRoleUser": {
                    "arn": f"arn:{anchor_arn.partition}:sts::{role_match['account']}:assumed-role/"
                    f"{role_match['name']}/{name}",
                    "assumedRoleId": f"{_role_id(role_arn)}:{name}",
                },
                "credentials": _random_credentials(now, seconds),
                "packedPolicySize": 0,
                "roleArn": role_arn,
                "sourceIdentity": source_identity(cn),
            }
        ],
        "subjectArn": subject_arn,
    }


def record_subject(
    state: EmulatorState,
    account: str,
    region: str,
    leaf: x509.Certificate,
    properties: Mapping[str, str] | None,
    now: datetime,
) -> str:
    """Remember the subject for GetSubject/ListSubjects.

    Saved to disk only when a subject or certificate is seen for the first time, so a load test
    repeating one certificate does not rewrite the state file on every call.
    """
    subject_dn = leaf.subject.rfc4514_string()
    serial = format(leaf.serial_number, "x")
    seen = iso_now(now)
    with state.lock:
        store = state.region(account, region)
        subjects = store["subjects"]
        index = store.setdefault("_subjectIndex", {})
        subject_id = index.get(subject_dn)
        changed = False
        if subject_id is None:
            subject_id = str(uuid.uuid4())
            index[subject_dn] = subject_id
            subjects[subject_id] = {
                "subjectArn": str(Arn.make(region, account, "subject", subject_id)),
                "subjectId": subject_id, "enabled": True, "x509Subject": subject_dn,
                "createdAt": seen, "updatedAt": seen, "lastSeenAt": seen,
                "credentials": [], "instanceProperties": [],
            }  # fmt: skip
            changed = True
        subject = subjects[subject_id]
        subject["lastSeenAt"] = seen
        cred = next((c for c in subject["credentials"] if c["serialNumber"] == serial), None)
        if cred is None:
            cred = {
                "serialNumber": serial, "issuer": leaf.issuer.rfc4514_string(), "enabled": True,
                "failed": False, "seenAt": seen,
                "x509CertificateData": leaf.public_bytes(serialization.Encoding.PEM).decode("ascii"),
            }  # fmt: skip
            subject["credentials"].append(cred)
            changed = True
        cred["seenAt"] = seen
        if properties:
            subject["instanceProperties"] = [{"seenAt": seen, "properties": dict(properties), "failed": False}]
        if changed:
            state.save()
        return subject["subjectArn"]
