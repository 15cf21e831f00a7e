"""CreateSession: authenticate the request, judge the certificate path, hand out credentials.

The order of checks follows what a client can observe from the service: the SigV4-X509
signature first (nothing else is trusted before it), then the parameters, then the trust decision
(trust anchor, path, revocation), then the profile and role. Each refusal carries the service's
status, type and message; our own reason goes in ``detail`` (``X-Rapki-Emulator-Detail``), which
is what makes the emulator useful for debugging an ``Untrusted Signing Certificate``.

The trust decision itself is :func:`pki.rolesanywhere.trustpath.check`, the rule ``rapki doctor``
explains. This is the hot path of load tests, so parsed anchor bundles and parsed CRLs (with their
revoked serials as a set) are cached here, keyed by the immutable data they come from, and verified
issuer links in the model; the state lock is held only to copy the few fields needed.
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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.errors import InvalidInput
from pki.rolesanywhere import sigv4x509, trustpath
from pki.rolesanywhere.arns import IamRoleArn, RolesAnywhereArn
from pki.rolesanywhere.crlfetch import CrlFetcher
from pki.rolesanywhere.partitions import region_from_host
from pki.rolesanywhere.tip import DEFAULT_SUBJECT_SOURCE
from pki.x509.preflight import common_name, source_identity
from service.emulator.errors import ServiceError, access_denied, validation
from service.emulator.state import EmulatorState, iso_now, resource_id

UNTRUSTED = "Untrusted Signing Certificate"
REVOKED = "Certificate revoked"
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
MAX_INSTANCE_PROPERTIES = 50
# STS RoleSessionName rules.
_ROLE_SESSION_NAME = re.compile(r"^[\w+=,.@-]{2,64}$")


# --------------------------------------------------------------------------------------------
# Caches of parsed, immutable inputs (verified issuer links are cached in pki.rolesanywhere.trustpath)


@lru_cache(maxsize=512)
def anchor_certificates(pem: str) -> tuple[x509.Certificate, ...]:
    """The certificates of a CERTIFICATE_BUNDLE trust anchor (validated at create/update)."""
    try:
        return tuple(x509.load_pem_x509_certificates(pem.encode("ascii")))
    except ValueError:
        return ()


@lru_cache(maxsize=256)
def parsed_crl(crl_b64: str) -> trustpath.ParsedCrl | None:
    try:
        return trustpath.ParsedCrl.of(x509.load_pem_x509_crl(base64.b64decode(crl_b64)))
    except ValueError:
        return None


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


@dataclass
class DistributionPoints:
    """Revocation by CRL Distribution Point, for trust anchors with ``crlDpRevocationEnabled``.

    AWS documents that such an anchor checks the CRLs at the certificates' distribution points;
    it does not say what happens when one cannot be had. The emulator's choice is the strict one,
    ``unusable="deny"``: a distribution point that is unreachable, slow, answers more than the
    fetcher's ``max_bytes``, something that is not a CRL, a stale CRL (past its nextUpdate) or one
    its issuer did not sign refuses the certificate; ``"allow"`` lets it through instead
    (``rapki emulator --crl-dp-unreachable allow``). In that mode CRLs imported with ImportCrl are
    not consulted: the distribution point decides."""

    fetcher: CrlFetcher = field(default_factory=CrlFetcher)
    unusable: str = "deny"  # deny | allow


@dataclass(frozen=True)
class SessionInput:
    method: str
    path: str
    raw_query: str
    query: Mapping[str, str]
    headers: list[tuple[str, str]]
    body: bytes


def create_session(state: EmulatorState, request: SessionInput, now: datetime,
                   dp: DistributionPoints) -> dict[str, Any]:
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
    try:
        anchor_arn = RolesAnywhereArn.parse(anchor_arn_text, "trustAnchorArn", expected_type="trust-anchor")
    except InvalidInput as exc:
        raise validation("trustAnchorArn is not a valid trust anchor ARN", detail=str(exc)) from None
    try:
        profile_arn = RolesAnywhereArn.parse(profile_arn_text, "profileArn", expected_type="profile")
    except InvalidInput as exc:
        raise validation("profileArn is not a valid profile ARN", detail=str(exc)) from None
    try:
        role = IamRoleArn.parse(role_arn, "roleArn")
    except InvalidInput as exc:
        raise validation("roleArn is not a valid role ARN", detail=str(exc)) from None

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
        # Either ARN may be an alias ARN: resolved to the resource holding the alias now.
        anchor = store["trustAnchors"].get(resource_id(store, anchor_arn) or "") if store else None
        profile = store["profiles"].get(resource_id(store, profile_arn) or "") if store else None
        anchor_enabled = bool(anchor and anchor.get("enabled"))
        anchor_source = dict(anchor["source"]) if anchor else {}
        by_distribution_point = bool(anchor and anchor.get("crlDpRevocationEnabled"))
        crl_data = [] if by_distribution_point else [
            c["crlData"] for c in store["crls"].values()
            if c.get("enabled") and anchor and c.get("trustAnchorArn") == anchor["trustAnchorArn"]
        ] if store else []  # fmt: skip
        profile_copy = dict(profile) if profile else None

    leaf, chain = verified.certificate, verified.chain
    if anchor is None:
        raise access_denied(UNTRUSTED, detail=f"trust anchor {anchor_arn_text} does not exist")
    if not anchor_enabled:
        raise access_denied(UNTRUSTED, detail=f"trust anchor {anchor_arn_text} is disabled")
    pem = (anchor_source.get("sourceData") or {}).get("x509CertificateData") or ""
    anchors = anchor_certificates(pem)
    if not anchors:
        raise access_denied(UNTRUSTED, detail="the trust anchor has no certificate the emulator can use")
    crls = [parsed for parsed in map(parsed_crl, crl_data) if parsed is not None]
    verdict = trustpath.check(leaf, chain, anchors, crls, now)
    if verdict.ok and by_distribution_point:
        verdict = trustpath.check_distribution_points(
            verdict.path, lambda url: dp.fetcher.get(url, now), allow_unusable=dp.unusable == "allow") or verdict
    if not verdict.ok:
        raise access_denied(REVOKED if verdict.problem == trustpath.REVOKED else UNTRUSTED, detail=verdict.detail)

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
    if (missing := tip_subject_problem(profile_copy.get("tipConfiguration"), leaf)) is not None:
        raise access_denied("The certificate has no value for the profile's trusted identity propagation subject",
                            detail=missing)  # fmt: skip

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
                    "arn": f"arn:{anchor_arn.partition}:sts::{role.account}:assumed-role/{role.name}/{name}",
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


def tip_subject_problem(tip: Mapping[str, Any] | None, leaf: x509.Certificate) -> str | None:
    """Why ``leaf`` cannot give an enabled TIP profile its subject, or None.

    The model: "If the certificate has no value for the field, CreateSession denies the request"
    (so AccessDeniedException): ``x509Subject/CN`` needs a CN, ``x509SAN/URI`` a URI SAN.
    """
    if not tip or tip.get("status") != "ENABLED":
        return None
    source = tip.get("subjectSource", DEFAULT_SUBJECT_SOURCE)
    if source == "x509SAN/URI":
        try:
            san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            san = None
        if san is None or not san.get_values_for_type(x509.UniformResourceIdentifier):
            return "TIP subjectSource x509SAN/URI: the certificate has no URI SAN"
        return None
    if not common_name(leaf.subject):
        return "TIP subjectSource x509Subject/CN: the certificate subject has no CN"
    return None


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
                "subjectArn": str(RolesAnywhereArn.make(region, account, "subject", subject_id)),
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
