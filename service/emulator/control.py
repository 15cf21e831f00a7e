"""The control plane: trust anchors, profiles, CRLs, subjects, tags, attribute mappings, notifications.

Paths, methods, status codes and JSON shapes follow botocore's ``rolesanywhere`` 2018-05-10
model, so an unmodified boto3 client pointed at the emulator works. The service-side validations
that botocore does not do client-side (maximum lengths, name patterns, enum values, the PEM and
300,000-byte rule for ``crlData``, 2 CRLs and 2 certificates per trust anchor, 900-43200 for
``durationSeconds``) are enforced here with ``ValidationException``.

Aliases (botocore 1.44.3+): ``aliasName`` on trust anchors, profiles and CRLs, unique per type in
an account and Region (a taken, malformed or reserved ``aws/`` name is a ``ValidationException``, as
the model documents); ``aliasArn`` is ``arn:<partition>:rolesanywhere:<region>:<account>:alias/<type>/<name>``
and every ``*Identifier`` in a path takes the id, the ARN or the alias ARN of a resource in the
caller's account and Region. ``previousAliasName`` is only in the answer of an update that changed
or removed an alias; it is never stored. ``ImportCrl``'s ``trustAnchorArn`` and the tag operations'
``resourceArn`` take the ARN holding the id only (an alias ARN is not found), as the model says of
the first and does not say otherwise of the second.

Trusted identity propagation: ``tipConfiguration`` is stored with ``subjectSource`` filled with its
default (``x509Subject/CN``); while ``status`` is ``ENABLED`` the profile's attribute mappings must
keep a rule for that field (``CN`` under ``x509Subject``, ``URI`` under ``x509SAN``): an enabling
create/update without it, or a DeleteAttributeMapping that would remove it, is a
``ValidationException`` (the model says the mappings "must include a rule"; the emulator is strict).

Approximations (the service does not document them): a trust anchor or profile created without
``enabled`` starts disabled, like an imported CRL; default notification settings are both events
enabled at 45 days; default attribute mappings are the usual subject/issuer RDNs and SAN types.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from cryptography import x509

from pki.errors import InvalidInput
from pki.rolesanywhere.arns import ALIAS_MAX, ALIAS_NAME, RESOURCE_TYPES, RolesAnywhereArn
from pki.rolesanywhere.partitions import partition_of
from pki.rolesanywhere.tip import DEFAULT_SUBJECT_SOURCE, SUBJECT_SOURCES, missing_mapping_rule
from service.emulator.errors import ServiceError, not_found, too_many_tags, validation
from service.emulator.state import EmulatorState, iso_now, resource_id

MAX_CRL_BYTES = 300_000
MAX_CRLS_PER_ANCHOR = 2
MAX_CERTS_PER_ANCHOR = 2
MAX_TAGS = 200
MAX_ROLE_ARNS = 250
MAX_MANAGED_POLICIES = 50
MAX_CERT_DATA = 204_800  # botocore 1.44's x509CertificateData bound (16,000 before)
MIN_DURATION, MAX_DURATION, DEFAULT_DURATION = 900, 43200, 3600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000

_NAME = re.compile(r"[ a-zA-Z0-9\-_]*")
_TAG = re.compile(r"[ a-zA-Z0-9_.:/=+@\-]*")
_ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam(:.*){2}(:role.*)")
_UUID = re.compile(r"^[a-f0-9]{8}-([a-z0-9]{4}-){3}[a-z0-9]{12}$")
SOURCE_TYPES = ("AWS_ACM_PCA", "CERTIFICATE_BUNDLE", "SELF_SIGNED_REPOSITORY")
EVENTS = ("CA_CERTIFICATE_EXPIRY", "END_ENTITY_CERTIFICATE_EXPIRY")
CERTIFICATE_FIELDS = ("x509Subject", "x509Issuer", "x509SAN")
DEFAULT_MAPPINGS = {
    "x509Subject": ["CN", "OU", "O", "L", "ST", "C"],
    "x509Issuer": ["CN", "OU", "O", "L", "ST", "C"],
    "x509SAN": ["DNS", "URI", "Name"],
}
SERVICE_PRINCIPAL = "rolesanywhere.amazonaws.com"
# The ARN resource type of each state collection (the ARN parser's table, read the other way).
ARN_TYPES = {t.collection: t.name for t in RESOURCE_TYPES.values()}
TIP_STATUSES = ("ENABLED", "DISABLED")
TIP_SUBJECT_TYPES = ("workload", "user")


@dataclass
class Ctx:
    """One control-plane call: who (account), where (region), what (body and query)."""

    account: str
    region: str
    body: dict[str, Any]
    args: Any  # werkzeug MultiDict: .get / .getlist
    now: datetime

    @property
    def partition(self) -> str:
        return partition_of(self.region)

    @property
    def caller(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:root"


Result = tuple[int, dict[str, Any]]


# --------------------------------------------------------------------------------------------
# Validation helpers


def _check_name(value: Any, field: str = "name") -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 255 or not _NAME.fullmatch(value):
        raise validation(f"{field} must be 1-255 characters from [ a-zA-Z0-9-_]")
    return value


def _check_bool(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise validation(f"{field} must be a boolean")
    return value


def _check_duration(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_DURATION <= value <= MAX_DURATION:
        raise validation(f"durationSeconds must be an integer between {MIN_DURATION} and {MAX_DURATION}")
    return value


def _check_tags(value: Any) -> dict[str, str]:
    if not isinstance(value, list):
        raise validation("tags must be a list")
    if len(value) > MAX_TAGS:  # the model's list bound: ValidationException (TooManyTags is per resource)
        raise validation(f"At most {MAX_TAGS} tags are allowed in one request")
    tags: dict[str, str] = {}
    for tag in value:
        if not isinstance(tag, dict) or "key" not in tag or "value" not in tag:
            raise validation("each tag needs a key and a value")
        key, val = tag["key"], tag["value"]
        if not _is_tag_key(key):
            raise validation("tag keys must be 1-128 characters from [ a-zA-Z0-9_.:/=+@-]")
        if not isinstance(val, str) or len(val) > 256 or not _TAG.fullmatch(val):
            raise validation("tag values must be 0-256 characters from [ a-zA-Z0-9_.:/=+@-]")
        tags[key] = val
    return tags


def _is_tag_key(value: Any) -> bool:
    return isinstance(value, str) and 1 <= len(value) <= 128 and _TAG.fullmatch(value) is not None


def _check_role_arns(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_ROLE_ARNS:
        raise validation(f"roleArns must be a list of at most {MAX_ROLE_ARNS} role ARNs")
    for arn in value:
        if not isinstance(arn, str) or not 1 <= len(arn) <= 1011 or not _ROLE_ARN.match(arn):
            raise validation(f"{arn!r} is not a role ARN")
    return list(value)


def _parse_arn(text: str) -> RolesAnywhereArn | None:
    try:
        return RolesAnywhereArn.parse(text)
    except InvalidInput:
        return None


def _check_managed_policies(value: Any) -> list[str]:
    if not isinstance(value, list) or len(value) > MAX_MANAGED_POLICIES:
        raise validation(f"managedPolicyArns must be a list of at most {MAX_MANAGED_POLICIES} ARNs")
    if not all(isinstance(a, str) and 1 <= len(a) <= 200 for a in value):
        raise validation("managedPolicyArns entries must be 1-200 characters")
    return list(value)


def _check_session_policy(value: Any) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 100_000:
        raise validation("sessionPolicy must be 1-100000 characters")
    return value


def _check_source(value: Any) -> dict[str, Any]:
    """A trust anchor source; a CERTIFICATE_BUNDLE must hold 1-2 PEM CA certificates."""
    if not isinstance(value, dict):
        raise validation("source is required")
    source_type = value.get("sourceType")
    if source_type not in SOURCE_TYPES:
        raise validation(f"sourceType must be one of {', '.join(SOURCE_TYPES)}")
    data = value.get("sourceData")
    if source_type == "SELF_SIGNED_REPOSITORY":
        return {"sourceType": source_type, **({"sourceData": data} if isinstance(data, dict) else {})}
    if not isinstance(data, dict):
        raise validation("sourceData is required")
    if source_type == "AWS_ACM_PCA":
        arn = data.get("acmPcaArn")
        if not isinstance(arn, str) or not arn.startswith("arn:"):
            raise validation("sourceData.acmPcaArn must be an ACM PCA ARN")
        return {"sourceType": source_type, "sourceData": {"acmPcaArn": arn}}
    pem = data.get("x509CertificateData")
    if not isinstance(pem, str) or not 1 <= len(pem) <= MAX_CERT_DATA:
        raise validation(f"x509CertificateData must be 1-{MAX_CERT_DATA} characters of PEM")
    try:
        certs = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise validation("x509CertificateData is not a PEM certificate") from None
    if len(certs) > MAX_CERTS_PER_ANCHOR:
        raise validation(f"A trust anchor can hold at most {MAX_CERTS_PER_ANCHOR} certificates")
    for cert in certs:
        try:
            ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            ca = False
        if not ca or cert.version is not x509.Version.v3:
            raise validation("Trust anchor certificates must be X.509 v3 CA certificates")
    return {"sourceType": source_type, "sourceData": {"x509CertificateData": pem}}


def _check_crl_data(value: Any) -> str:
    """``crlData`` arrives base64-encoded (a JSON blob); it must decode to a PEM CRL <= 300,000 bytes."""
    if not isinstance(value, str) or not value:
        raise validation("crlData is required")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise validation("crlData is not base64") from None
    if len(raw) > MAX_CRL_BYTES:
        raise validation(f"crlData must be at most {MAX_CRL_BYTES} bytes; got {len(raw)}")
    if b"-----BEGIN X509 CRL-----" not in raw:
        raise validation("crlData must be a PEM-encoded CRL")
    try:
        x509.load_pem_x509_crl(raw)
    except ValueError:
        raise validation("crlData is not a valid CRL") from None
    return value


def _check_notifications(value: Any) -> list[dict[str, Any]]:
    if not isinstance(value, list) or len(value) > 50:
        raise validation("notificationSettings must be a list of at most 50 settings")
    out = []
    for item in value:
        if not isinstance(item, dict) or item.get("event") not in EVENTS:
            raise validation(f"each notification setting needs an event among {', '.join(EVENTS)}")
        _check_bool(item.get("enabled"), "enabled")
        threshold = item.get("threshold")
        if threshold is not None and (
            isinstance(threshold, bool) or not isinstance(threshold, int) or not 1 <= threshold <= 360
        ):
            raise validation("threshold must be between 1 and 360 days")
        if item.get("channel", "ALL") != "ALL":
            raise validation("channel must be ALL")
        out.append(item)
    return out


def _default_notifications() -> list[dict[str, Any]]:
    return [
        {"enabled": True, "event": e, "threshold": 45, "channel": "ALL", "configuredBy": SERVICE_PRINCIPAL}
        for e in EVENTS
    ]


def _apply_notifications(current: list[dict[str, Any]], updates: list[dict[str, Any]], by: str) -> None:
    for item in updates:
        channel = item.get("channel", "ALL")
        target = next(s for s in current if s["event"] == item["event"] and s["channel"] == channel)
        target["enabled"] = item["enabled"]
        if "threshold" in item:
            target["threshold"] = item["threshold"]
        target["configuredBy"] = by


def _check_alias(value: Any) -> str:
    """An alias name to set, or "" to have none; a reserved or malformed one is refused."""
    if not isinstance(value, str) or len(value) > ALIAS_MAX:
        raise validation(f"aliasName must be a string of at most {ALIAS_MAX} characters")
    if value and not ALIAS_NAME.fullmatch(value):
        raise validation("aliasName must start with a letter and hold only letters, digits, _, - and "
                         "single / between other characters")  # fmt: skip
    if value.lower().startswith("aws/"):
        raise validation("Alias names beginning with aws/ are reserved")
    return value


def _check_tip(value: Any) -> dict[str, Any]:
    """A ``tipConfiguration``: ``status`` required, ``subjectSource`` defaulted (an update replaces it whole)."""
    if not isinstance(value, dict) or value.get("status") not in TIP_STATUSES:
        raise validation(f"tipConfiguration.status must be one of {', '.join(TIP_STATUSES)}")
    tip = {"status": value["status"], "subjectSource": value.get("subjectSource", DEFAULT_SUBJECT_SOURCE)}
    if tip["subjectSource"] not in SUBJECT_SOURCES:
        raise validation(f"tipConfiguration.subjectSource must be one of {', '.join(SUBJECT_SOURCES)}")
    if "subjectType" in value:
        if value["subjectType"] not in TIP_SUBJECT_TYPES:
            raise validation(f"tipConfiguration.subjectType must be one of {', '.join(TIP_SUBJECT_TYPES)}")
        tip["subjectType"] = value["subjectType"]
    return tip


def _tip_rule_problem(tip: dict[str, Any] | None, mappings: list[dict[str, Any]]) -> str | None:
    """Why an enabled TIP configuration lacks its attribute mapping rule, or None."""
    missing = missing_mapping_rule(tip, mappings)
    if tip is None or missing is None:
        return None
    field_name, specifier = missing
    return (f"tipConfiguration.subjectSource {tip['subjectSource']} needs an attribute mapping rule "
            f"{specifier} under {field_name}")  # fmt: skip


def _paginate(ctx: Ctx, items: list[dict[str, Any]], key: str) -> Result:
    size_text = ctx.args.get("pageSize")
    try:
        size = int(size_text) if size_text is not None else DEFAULT_PAGE_SIZE
    except ValueError:
        raise validation("pageSize must be an integer") from None
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise validation(f"pageSize must be between 1 and {MAX_PAGE_SIZE}")
    token = ctx.args.get("nextToken")
    start = 0
    if token is not None:  # an empty token is refused, not taken for the first page
        try:
            start = int(base64.urlsafe_b64decode(token.encode()).decode().removeprefix("offset:"))
        except (ValueError, binascii.Error):
            raise validation("Invalid nextToken") from None
    page = items[start : start + size]
    result: dict[str, Any] = {key: page}
    if start + size < len(items):
        result["nextToken"] = base64.urlsafe_b64encode(f"offset:{start + size}".encode()).decode()
    return 200, result


# --------------------------------------------------------------------------------------------
# Operations


class ControlPlane:
    """One method per botocore operation; each returns ``(status, body)`` or raises ServiceError."""

    def __init__(self, state: EmulatorState) -> None:
        self.state = state

    # -- helpers --------------------------------------------------------------------------------

    def _store(self, ctx: Ctx) -> dict[str, Any]:
        return self.state.region(ctx.account, ctx.region)

    def _get(self, ctx: Ctx, kind: str, identifier: str, label: str) -> dict[str, Any]:
        """The resource an ``*Identifier`` names: its id, its ARN or its alias ARN, in this account and Region."""
        store = self._store(ctx)
        if _UUID.match(identifier):
            item = store[kind].get(identifier)
        else:
            arn = _parse_arn(identifier)
            mine = arn is not None and arn.type == ARN_TYPES[kind] and arn.account == ctx.account
            found = resource_id(store, arn) if arn is not None and mine and arn.region == ctx.region else None
            item = store[kind].get(found) if found else None
        if item is None:
            raise not_found(f"{label} not found")
        return item

    def _set_alias(self, ctx: Ctx, kind: str, detail: dict[str, Any], alias: str | None) -> str | None:
        """Give ``detail`` the alias ``alias`` ("" removes it, None keeps it); the alias it had if that changed."""
        previous = detail.get("aliasName")
        if alias is None or alias == (previous or ""):
            return None
        if alias and any(item.get("aliasName") == alias for item in self._store(ctx)[kind].values()):
            raise validation(f"Alias {alias} is already used by another {ARN_TYPES[kind]} in this account and Region")
        detail.pop("aliasName", None)
        detail.pop("aliasArn", None)
        if alias:
            detail["aliasName"] = alias
            detail["aliasArn"] = str(RolesAnywhereArn.make_alias(ctx.region, ctx.account, ARN_TYPES[kind], alias))
        return previous

    @staticmethod
    def _answer(detail: dict[str, Any], previous_alias: str | None) -> dict[str, Any]:
        """What an update returns: the resource, with ``previousAliasName`` when it changed or lost its alias."""
        answer = copy.deepcopy(detail)
        if previous_alias:
            answer["previousAliasName"] = previous_alias
        return answer

    def _set_tags(self, store: dict[str, Any], arn: str, tags: dict[str, str]) -> None:
        merged = {**store["tags"].get(arn, {}), **tags}
        if len(merged) > MAX_TAGS:
            raise too_many_tags(f"At most {MAX_TAGS} tags are allowed per resource")
        store["tags"][arn] = merged

    def _resource_for_arn(self, arn_text: Any) -> tuple[dict[str, Any], str]:
        if not isinstance(arn_text, str) or not 1 <= len(arn_text) <= 1011:
            raise validation("resourceArn is required")
        arn = _parse_arn(arn_text)
        if arn is None or arn.type == "subject":
            raise validation(f"{arn_text} is not a Roles Anywhere resource ARN")
        store = self.state.data["accounts"].get(arn.account, {}).get(arn.region)
        if store is None or arn.id not in store[arn.collection]:
            raise not_found("Resource not found")
        return store, str(arn)

    # -- trust anchors --------------------------------------------------------------------------

    def create_trust_anchor(self, ctx: Ctx) -> Result:
        b = ctx.body
        name = _check_name(b.get("name"))
        source = _check_source(b.get("source"))
        enabled = _check_bool(b.get("enabled", False), "enabled")
        crl_dp = _check_bool(b.get("crlDpRevocationEnabled", False), "crlDpRevocationEnabled")
        alias = _check_alias(b.get("aliasName", ""))
        tags = _check_tags(b.get("tags", []))
        notifications = _default_notifications()
        _apply_notifications(notifications, _check_notifications(b.get("notificationSettings", [])), ctx.caller)
        id_ = str(uuid.uuid4())
        now = iso_now(ctx.now)
        detail: dict[str, Any] = {
            "trustAnchorId": id_,
            "trustAnchorArn": str(RolesAnywhereArn.make(ctx.region, ctx.account, "trust-anchor", id_)),
            "name": name, "source": source, "enabled": enabled, "crlDpRevocationEnabled": crl_dp,
            "createdAt": now, "updatedAt": now, "notificationSettings": notifications,
        }  # fmt: skip
        with self.state.writing():
            store = self._store(ctx)
            self._set_alias(ctx, "trustAnchors", detail, alias)
            store["trustAnchors"][id_] = detail
            if tags:
                self._set_tags(store, detail["trustAnchorArn"], tags)
            return 201, {"trustAnchor": copy.deepcopy(detail)}

    def get_trust_anchor(self, ctx: Ctx, trustAnchorId: str) -> Result:
        with self.state.lock:
            return 200, {"trustAnchor": copy.deepcopy(self._get(ctx, "trustAnchors", trustAnchorId, "Trust anchor"))}

    def list_trust_anchors(self, ctx: Ctx) -> Result:
        with self.state.lock:
            items = copy.deepcopy(list(self._store(ctx)["trustAnchors"].values()))
        return _paginate(ctx, items, "trustAnchors")

    def update_trust_anchor(self, ctx: Ctx, trustAnchorId: str) -> Result:
        b = ctx.body
        name = _check_name(b["name"]) if "name" in b else None
        source = _check_source(b["source"]) if "source" in b else None
        crl_dp = b.get("crlDpRevocationEnabled")
        if crl_dp is not None:
            _check_bool(crl_dp, "crlDpRevocationEnabled")
        alias = _check_alias(b["aliasName"]) if "aliasName" in b else None
        with self.state.writing():
            detail = self._get(ctx, "trustAnchors", trustAnchorId, "Trust anchor")
            previous = self._set_alias(ctx, "trustAnchors", detail, alias)
            if name is not None:
                detail["name"] = name
            if source is not None:
                detail["source"] = source
            if crl_dp is not None:
                detail["crlDpRevocationEnabled"] = crl_dp
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"trustAnchor": self._answer(detail, previous)}

    def _set_enabled(self, ctx: Ctx, kind: str, id_: str, label: str, key: str, enabled: bool) -> Result:
        with self.state.writing():
            detail = self._get(ctx, kind, id_, label)
            detail["enabled"] = enabled
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {key: copy.deepcopy(detail)}

    def enable_trust_anchor(self, ctx: Ctx, trustAnchorId: str) -> Result:
        return self._set_enabled(ctx, "trustAnchors", trustAnchorId, "Trust anchor", "trustAnchor", True)

    def disable_trust_anchor(self, ctx: Ctx, trustAnchorId: str) -> Result:
        return self._set_enabled(ctx, "trustAnchors", trustAnchorId, "Trust anchor", "trustAnchor", False)

    def delete_trust_anchor(self, ctx: Ctx, trustAnchorId: str) -> Result:
        with self.state.writing():
            store = self._store(ctx)
            detail = self._get(ctx, "trustAnchors", trustAnchorId, "Trust anchor")
            del store["trustAnchors"][detail["trustAnchorId"]]
            store["tags"].pop(detail["trustAnchorArn"], None)
            return 200, {"trustAnchor": detail}

    def put_notification_settings(self, ctx: Ctx) -> Result:
        b = ctx.body
        anchor_id = b.get("trustAnchorId")
        if not isinstance(anchor_id, str) or not _UUID.match(anchor_id):  # a Uuid here: no ARN
            raise validation("trustAnchorId must be a trust anchor id")
        updates = _check_notifications(b.get("notificationSettings"))
        with self.state.writing():
            detail = self._get(ctx, "trustAnchors", anchor_id, "Trust anchor")
            _apply_notifications(detail["notificationSettings"], updates, ctx.caller)
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"trustAnchor": copy.deepcopy(detail)}

    def reset_notification_settings(self, ctx: Ctx) -> Result:
        b = ctx.body
        anchor_id = b.get("trustAnchorId")
        keys = b.get("notificationSettingKeys")
        if not isinstance(anchor_id, str) or not _UUID.match(anchor_id):  # a Uuid here: no ARN
            raise validation("trustAnchorId must be a trust anchor id")
        if not isinstance(keys, list) or len(keys) > 50:
            raise validation("notificationSettingKeys must be a list of at most 50 keys")
        for key in keys:
            if not isinstance(key, dict) or key.get("event") not in EVENTS or key.get("channel", "ALL") != "ALL":
                raise validation(f"each key needs an event among {', '.join(EVENTS)} and channel ALL")
        with self.state.writing():
            detail = self._get(ctx, "trustAnchors", anchor_id, "Trust anchor")
            defaults = {(d["event"], d["channel"]): d for d in _default_notifications()}
            detail["notificationSettings"] = [
                dict(defaults[(s["event"], s["channel"])])
                if any(k["event"] == s["event"] and k.get("channel", "ALL") == s["channel"] for k in keys)
                else s
                for s in detail["notificationSettings"]
            ]
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"trustAnchor": copy.deepcopy(detail)}

    # -- profiles -------------------------------------------------------------------------------

    def create_profile(self, ctx: Ctx) -> Result:
        b = ctx.body
        name = _check_name(b.get("name"))
        if "roleArns" not in b:
            raise validation("roleArns is required")
        detail: dict[str, Any] = {
            "profileId": str(uuid.uuid4()), "name": name,
            "roleArns": _check_role_arns(b["roleArns"]),
            "managedPolicyArns": _check_managed_policies(b.get("managedPolicyArns", [])),
            "durationSeconds": _check_duration(b.get("durationSeconds", DEFAULT_DURATION)),
            "enabled": _check_bool(b.get("enabled", False), "enabled"),
            "requireInstanceProperties": _check_bool(b.get("requireInstanceProperties", False),
                                                     "requireInstanceProperties"),
            "acceptRoleSessionName": _check_bool(b.get("acceptRoleSessionName", False), "acceptRoleSessionName"),
            "createdBy": ctx.caller,
            "attributeMappings": [
                {"certificateField": f, "mappingRules": [{"specifier": s} for s in specs]}
                for f, specs in DEFAULT_MAPPINGS.items()
            ],
        }  # fmt: skip
        if "sessionPolicy" in b:
            detail["sessionPolicy"] = _check_session_policy(b["sessionPolicy"])
        if "tipConfiguration" in b:
            detail["tipConfiguration"] = _check_tip(b["tipConfiguration"])
            if problem := _tip_rule_problem(detail["tipConfiguration"], detail["attributeMappings"]):
                raise validation(problem)
        alias = _check_alias(b.get("aliasName", ""))
        tags = _check_tags(b.get("tags", []))
        detail["profileArn"] = str(RolesAnywhereArn.make(ctx.region, ctx.account, "profile", detail["profileId"]))
        detail["createdAt"] = detail["updatedAt"] = iso_now(ctx.now)
        with self.state.writing():
            store = self._store(ctx)
            self._set_alias(ctx, "profiles", detail, alias)
            store["profiles"][detail["profileId"]] = detail
            if tags:
                self._set_tags(store, detail["profileArn"], tags)
            return 201, {"profile": copy.deepcopy(detail)}

    def get_profile(self, ctx: Ctx, profileId: str) -> Result:
        with self.state.lock:
            return 200, {"profile": copy.deepcopy(self._get(ctx, "profiles", profileId, "Profile"))}

    def list_profiles(self, ctx: Ctx) -> Result:
        with self.state.lock:
            items = copy.deepcopy(list(self._store(ctx)["profiles"].values()))
        return _paginate(ctx, items, "profiles")

    def update_profile(self, ctx: Ctx, profileId: str) -> Result:
        b = ctx.body
        checks: dict[str, Callable[[Any], Any]] = {
            "name": _check_name, "roleArns": _check_role_arns, "managedPolicyArns": _check_managed_policies,
            "durationSeconds": _check_duration, "sessionPolicy": _check_session_policy,
            "acceptRoleSessionName": lambda v: _check_bool(v, "acceptRoleSessionName"),
            "tipConfiguration": _check_tip,
        }  # fmt: skip
        changes = {key: check(b[key]) for key, check in checks.items() if key in b}
        alias = _check_alias(b["aliasName"]) if "aliasName" in b else None
        with self.state.writing():
            detail = self._get(ctx, "profiles", profileId, "Profile")
            if problem := _tip_rule_problem(changes.get("tipConfiguration"), detail.get("attributeMappings", [])):
                raise validation(problem)
            previous = self._set_alias(ctx, "profiles", detail, alias)
            detail.update(changes)
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"profile": self._answer(detail, previous)}

    def enable_profile(self, ctx: Ctx, profileId: str) -> Result:
        return self._set_enabled(ctx, "profiles", profileId, "Profile", "profile", True)

    def disable_profile(self, ctx: Ctx, profileId: str) -> Result:
        return self._set_enabled(ctx, "profiles", profileId, "Profile", "profile", False)

    def delete_profile(self, ctx: Ctx, profileId: str) -> Result:
        with self.state.writing():
            store = self._store(ctx)
            detail = self._get(ctx, "profiles", profileId, "Profile")
            del store["profiles"][detail["profileId"]]
            store["tags"].pop(detail["profileArn"], None)
            return 200, {"profile": detail}

    def put_attribute_mapping(self, ctx: Ctx, profileId: str) -> Result:
        b = ctx.body
        field_name = b.get("certificateField")
        if field_name not in CERTIFICATE_FIELDS:
            raise validation(f"certificateField must be one of {', '.join(CERTIFICATE_FIELDS)}")
        rules = b.get("mappingRules")
        if not isinstance(rules, list) or not all(
            isinstance(r, dict) and isinstance(r.get("specifier"), str) and len(r["specifier"]) <= 60 for r in rules
        ):
            raise validation("mappingRules must be a list of {specifier} of at most 60 characters")
        with self.state.writing():
            detail = self._get(ctx, "profiles", profileId, "Profile")
            mappings = detail.setdefault("attributeMappings", [])
            mapping = next((m for m in mappings if m["certificateField"] == field_name), None)
            if mapping is None:
                mapping = {"certificateField": field_name, "mappingRules": []}
                mappings.append(mapping)
            known = {r["specifier"] for r in mapping["mappingRules"]}
            for rule in rules:
                if rule["specifier"] not in known:
                    mapping["mappingRules"].append({"specifier": rule["specifier"]})
                    known.add(rule["specifier"])
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"profile": copy.deepcopy(detail)}

    def delete_attribute_mapping(self, ctx: Ctx, profileId: str) -> Result:
        field_name = ctx.args.get("certificateField")
        if field_name not in CERTIFICATE_FIELDS:
            raise validation(f"certificateField must be one of {', '.join(CERTIFICATE_FIELDS)}")
        specifiers = set(ctx.args.getlist("specifiers"))
        with self.state.writing():
            detail = self._get(ctx, "profiles", profileId, "Profile")
            kept = []
            for mapping in detail.get("attributeMappings", []):
                if mapping["certificateField"] == field_name:
                    if not specifiers:
                        continue
                    rules = [r for r in mapping["mappingRules"] if r["specifier"] not in specifiers]
                    mapping = {**mapping, "mappingRules": rules}  # a copy: a refusal below changes nothing
                kept.append(mapping)
            if problem := _tip_rule_problem(detail.get("tipConfiguration"), kept):
                raise validation(f"The profile uses trusted identity propagation: {problem}")
            detail["attributeMappings"] = kept
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"profile": copy.deepcopy(detail)}

    # -- CRLs -----------------------------------------------------------------------------------

    def import_crl(self, ctx: Ctx) -> Result:
        b = ctx.body
        name = _check_name(b.get("name"))
        data = _check_crl_data(b.get("crlData"))
        anchor_arn = b.get("trustAnchorArn")
        parsed = _parse_arn(anchor_arn) if isinstance(anchor_arn, str) else None
        if parsed is None or parsed.type != "trust-anchor":
            raise validation("trustAnchorArn must be a trust anchor ARN")
        enabled = _check_bool(b.get("enabled", False), "enabled")  # imported CRLs start disabled
        alias = _check_alias(b.get("aliasName", ""))
        tags = _check_tags(b.get("tags", []))
        with self.state.writing():
            store = self._store(ctx)
            # An alias ARN is not taken here (the model: "the request fails with ResourceNotFoundException").
            if (parsed.alias or parsed.account != ctx.account or parsed.region != ctx.region
                    or parsed.id not in store["trustAnchors"]):  # fmt: skip
                raise not_found("Trust anchor not found")
            count = sum(1 for c in store["crls"].values() if c["trustAnchorArn"] == anchor_arn)
            if count >= MAX_CRLS_PER_ANCHOR:
                raise validation(f"A trust anchor can have at most {MAX_CRLS_PER_ANCHOR} CRLs")
            id_ = str(uuid.uuid4())
            now = iso_now(ctx.now)
            detail: dict[str, Any] = {
                "crlId": id_, "crlArn": str(RolesAnywhereArn.make(ctx.region, ctx.account, "crl", id_)), "name": name,
                "enabled": enabled, "crlData": data, "trustAnchorArn": anchor_arn,
                "createdAt": now, "updatedAt": now,
            }  # fmt: skip
            self._set_alias(ctx, "crls", detail, alias)
            store["crls"][id_] = detail
            if tags:
                self._set_tags(store, detail["crlArn"], tags)
            return 201, {"crl": dict(detail)}

    def get_crl(self, ctx: Ctx, crlId: str) -> Result:
        with self.state.lock:
            return 200, {"crl": dict(self._get(ctx, "crls", crlId, "Crl"))}

    def list_crls(self, ctx: Ctx) -> Result:
        with self.state.lock:
            items = [dict(c) for c in self._store(ctx)["crls"].values()]
        return _paginate(ctx, items, "crls")

    def update_crl(self, ctx: Ctx, crlId: str) -> Result:
        b = ctx.body
        name = _check_name(b["name"]) if "name" in b else None
        data = _check_crl_data(b["crlData"]) if "crlData" in b else None
        alias = _check_alias(b["aliasName"]) if "aliasName" in b else None
        with self.state.writing():
            detail = self._get(ctx, "crls", crlId, "Crl")
            previous = self._set_alias(ctx, "crls", detail, alias)
            if name is not None:
                detail["name"] = name
            if data is not None:
                detail["crlData"] = data
            detail["updatedAt"] = iso_now(ctx.now)
            return 200, {"crl": self._answer(detail, previous)}

    def enable_crl(self, ctx: Ctx, crlId: str) -> Result:
        return self._set_enabled(ctx, "crls", crlId, "Crl", "crl", True)

    def disable_crl(self, ctx: Ctx, crlId: str) -> Result:
        return self._set_enabled(ctx, "crls", crlId, "Crl", "crl", False)

    def delete_crl(self, ctx: Ctx, crlId: str) -> Result:
        with self.state.writing():
            store = self._store(ctx)
            detail = self._get(ctx, "crls", crlId, "Crl")
            del store["crls"][detail["crlId"]]
            store["tags"].pop(detail["crlArn"], None)
            return 200, {"crl": detail}

    # -- subjects -------------------------------------------------------------------------------

    def get_subject(self, ctx: Ctx, subjectId: str) -> Result:
        with self.state.lock:
            return 200, {"subject": copy.deepcopy(self._get(ctx, "subjects", subjectId, "Subject"))}

    def list_subjects(self, ctx: Ctx) -> Result:
        summary_keys = ("subjectArn", "subjectId", "enabled", "x509Subject", "lastSeenAt", "createdAt", "updatedAt")
        with self.state.lock:
            items = [{k: s[k] for k in summary_keys if k in s} for s in self._store(ctx)["subjects"].values()]
        return _paginate(ctx, items, "subjects")

    # -- tags -----------------------------------------------------------------------------------

    def list_tags_for_resource(self, ctx: Ctx) -> Result:
        with self.state.lock:
            store, arn = self._resource_for_arn(ctx.args.get("resourceArn"))
            tags = store["tags"].get(arn, {})
            return 200, {"tags": [{"key": k, "value": v} for k, v in tags.items()]}

    def tag_resource(self, ctx: Ctx) -> Result:
        tags = _check_tags(ctx.body.get("tags"))
        with self.state.writing():
            store, arn = self._resource_for_arn(ctx.body.get("resourceArn"))
            self._set_tags(store, arn, tags)
            return 201, {}

    def untag_resource(self, ctx: Ctx) -> Result:
        keys = ctx.body.get("tagKeys")
        if not isinstance(keys, list) or len(keys) > MAX_TAGS or not all(map(_is_tag_key, keys)):
            raise validation("tagKeys must be a list of tag keys of 1-128 characters from [ a-zA-Z0-9_.:/=+@-]")
        with self.state.writing():
            store, arn = self._resource_for_arn(ctx.body.get("resourceArn"))
            current = store["tags"].get(arn, {})
            for key in keys:
                current.pop(key, None)
            return 200, {}


# (method, rule, operation name, ControlPlane method name) for every operation of the model. An identifier
# that may be an ARN or an alias ARN holds "/" (an alias may hold several), hence the path converter.
ROUTES: list[tuple[str, str, str, str]] = [
    ("POST", "/trustanchors", "CreateTrustAnchor", "create_trust_anchor"),
    ("GET", "/trustanchors", "ListTrustAnchors", "list_trust_anchors"),
    ("GET", "/trustanchor/<path:trustAnchorId>", "GetTrustAnchor", "get_trust_anchor"),
    ("PATCH", "/trustanchor/<path:trustAnchorId>", "UpdateTrustAnchor", "update_trust_anchor"),
    ("DELETE", "/trustanchor/<path:trustAnchorId>", "DeleteTrustAnchor", "delete_trust_anchor"),
    ("POST", "/trustanchor/<path:trustAnchorId>/enable", "EnableTrustAnchor", "enable_trust_anchor"),
    ("POST", "/trustanchor/<path:trustAnchorId>/disable", "DisableTrustAnchor", "disable_trust_anchor"),
    ("PATCH", "/put-notifications-settings", "PutNotificationSettings", "put_notification_settings"),
    ("PATCH", "/reset-notifications-settings", "ResetNotificationSettings", "reset_notification_settings"),
    ("POST", "/profiles", "CreateProfile", "create_profile"),
    ("GET", "/profiles", "ListProfiles", "list_profiles"),
    ("GET", "/profile/<path:profileId>", "GetProfile", "get_profile"),
    ("PATCH", "/profile/<path:profileId>", "UpdateProfile", "update_profile"),
    ("DELETE", "/profile/<path:profileId>", "DeleteProfile", "delete_profile"),
    ("POST", "/profile/<path:profileId>/enable", "EnableProfile", "enable_profile"),
    ("POST", "/profile/<path:profileId>/disable", "DisableProfile", "disable_profile"),
    ("PUT", "/profiles/<path:profileId>/mappings", "PutAttributeMapping", "put_attribute_mapping"),
    ("DELETE", "/profiles/<path:profileId>/mappings", "DeleteAttributeMapping", "delete_attribute_mapping"),
    ("POST", "/crls", "ImportCrl", "import_crl"),
    ("GET", "/crls", "ListCrls", "list_crls"),
    ("GET", "/crl/<path:crlId>", "GetCrl", "get_crl"),
    ("PATCH", "/crl/<path:crlId>", "UpdateCrl", "update_crl"),
    ("DELETE", "/crl/<path:crlId>", "DeleteCrl", "delete_crl"),
    ("POST", "/crl/<path:crlId>/enable", "EnableCrl", "enable_crl"),
    ("POST", "/crl/<path:crlId>/disable", "DisableCrl", "disable_crl"),
    ("GET", "/subjects", "ListSubjects", "list_subjects"),
    ("GET", "/subject/<subjectId>", "GetSubject", "get_subject"),
    ("GET", "/ListTagsForResource", "ListTagsForResource", "list_tags_for_resource"),
    ("POST", "/TagResource", "TagResource", "tag_resource"),
    ("POST", "/UntagResource", "UntagResource", "untag_resource"),
]

__all__ = ["ROUTES", "ControlPlane", "Ctx", "ServiceError"]
