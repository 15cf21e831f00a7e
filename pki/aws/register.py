"""``rapki aws register``: the console steps of a Roles Anywhere set-up as one converging command.

1. Trust anchor (``CERTIFICATE_BUNDLE`` of our CA certificates: the issuing CAs, the root, or both):
   found by the ARN stored in rapki.toml, else by name; created when absent; its bundle updated when
   it differs (e.g. after a rotation); enabled; expiry notifications set when asked.
2. Profile with its roles, duration and ``acceptRoleSessionName``: found, created or updated the same way; enabled.
3. The first CRL imported and enabled (``pki.aws.publish``), so a revocation is enforceable from day one.
4. The ARNs stored in ``[roles_anywhere]`` of rapki.toml (``rapki crl publish`` and ``revoke --publish``
   use them), and in a rapki issuance profile's ``roles_anywhere`` binding when one is named.

Options that leave the resources as they are when not given (an earlier run's choice stays):

- ``alias``: the same alias on the trust anchor and the profile (aliases are unique per resource
  type, so one name serves both); ``""`` removes both. The ARNs stored stay the ones holding the ids
  (ImportCrl and IAM policies take no alias ARN); the printed ``credential_process`` line uses the
  alias ARNs whenever the resources have aliases, so re-pointing an alias needs no client change.
- ``tip`` (``workload``, ``user`` or ``off``) and ``tip_subject`` (``x509Subject/CN``, the model's
  default, or ``x509SAN/URI``): the profile's ``tipConfiguration``, merged with what it has (an
  option not given keeps its value; ``off`` keeps subject and type for a later ``on``). The
  attribute mapping rule the subject needs is put first when the profile lacks it. The rapki profile
  named by ``profile`` follows: ``require_san_uri`` while TIP is on with ``x509SAN/URI`` (rapki then
  refuses to issue what CreateSession would deny), off when a TIP option leaves it otherwise.
- ``crl_dp_revocation``: the trust anchor's ``crlDpRevocationEnabled``.

Re-running with the same arguments makes no write call; it never creates a second anchor or profile.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.aws.client import AwsError, RolesAnywhere
from pki.aws.publish import SECTION, CrlPublisher, PublishReport, settings
from pki.errors import InvalidInput
from pki.rolesanywhere.arns import check_role_arn, is_alias_name
from pki.rolesanywhere.credential_process import credential_process_line as signer_line
from pki.rolesanywhere.tip import DEFAULT_SUBJECT_SOURCE, SUBJECT_SOURCES, missing_mapping_rule

if TYPE_CHECKING:
    from pki.ca.authority import CertificateAuthority

ANCHOR_MODES = ("issuing", "root", "both")
MAX_ANCHOR_CERTIFICATES = 2
TAGS = [{"key": "managed-by", "value": "rapki"}]
EVENTS = ("CA_CERTIFICATE_EXPIRY", "END_ENTITY_CERTIFICATE_EXPIRY")
TIP_CHOICES = ("workload", "user", "off")


@dataclass
class Registration:
    region: str
    partition: str
    name: str
    trust_anchor_arn: str
    profile_arn: str
    role_arns: list[str]
    duration: int
    anchor_mode: str
    anchor_subjects: list[str]
    actions: list[str] = field(default_factory=list)  # what changed, in order ("created trust anchor", ...)
    crl: PublishReport | None = None
    credential_process: str = ""
    writes: int = 0
    trust_anchor_alias_arn: str = ""
    profile_alias_arn: str = ""
    tip_configuration: dict[str, Any] | None = None
    crl_dp_revocation: bool = False
    warnings: list[str] = field(default_factory=list)  # what works but is likely not what was meant

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "crl"}
        out["crl"] = self.crl.to_dict() if self.crl else None
        return out


def bundle_certificates(ca: CertificateAuthority, mode: str) -> list[x509.Certificate]:
    """The anchor's certificates. ``issuing``: the unexpired issuing CAs, newest first (at most 2, so
    a rotation keeps the old CA trusted while its certificates live); ``root``: the root (new issuing
    CAs are trusted without re-registering); ``both``: the root and the active issuing CA."""
    from datetime import UTC, datetime

    if mode not in ANCHOR_MODES:
        raise InvalidInput(f"--anchor must be one of {', '.join(ANCHOR_MODES)}")
    now = datetime.now(UTC)
    if mode == "root":
        return [ca.root_certificate]
    if mode == "both":
        return [ca.root_certificate, ca.issuer().certificate]
    issuers = sorted((i for i in ca.issuers() if i.not_after > now),
                     key=lambda i: (i.certificate.not_valid_before_utc, i.id), reverse=True)
    if not issuers:
        raise InvalidInput("no unexpired issuing CA: run 'rapki ca sign-intermediate'")
    return [i.certificate for i in issuers[:MAX_ANCHOR_CERTIFICATES]]


def _ders(pem: str) -> set[bytes]:
    try:
        return {c.public_bytes(serialization.Encoding.DER) for c in x509.load_pem_x509_certificates(pem.encode())}
    except ValueError:
        return set()


def _bundle_of(detail: dict[str, Any]) -> str:
    source = detail.get("source") or {}
    return str((source.get("sourceData") or {}).get("x509CertificateData") or "")


def notification_settings(days: int) -> list[dict[str, Any]]:
    return [{"enabled": True, "event": event, "threshold": days, "channel": "ALL"} for event in EVENTS]


def _notifications_match(detail: dict[str, Any], days: int) -> bool:
    current = {(n.get("event"), n.get("channel", "ALL")): n for n in detail.get("notificationSettings") or []}
    for event in EVENTS:
        item = current.get((event, "ALL"))
        if item is None or not item.get("enabled") or item.get("threshold") != days:
            return False
    return True


def check_alias(alias: str | None) -> str | None:
    """``alias`` when AWS would take it ("" removes an alias), refused before any call otherwise."""
    if alias is None or alias == "":
        return alias
    if not is_alias_name(alias):
        raise InvalidInput(f"--alias {alias!r}: 1-256 characters, a letter first, then letters, digits, _, - "
                           "and single / between other characters")
    if alias.lower().startswith("aws/"):
        raise InvalidInput(f"--alias {alias!r}: aliases beginning with aws/ are reserved by AWS")
    return alias


def tip_request(tip: str | None, subject: str | None) -> dict[str, Any] | None:
    """What ``--tip``/``--tip-subject`` ask to change in ``tipConfiguration``; None when neither is given."""
    if tip is None and subject is None:
        return None
    if tip is not None and tip not in TIP_CHOICES:
        raise InvalidInput(f"--tip must be one of {', '.join(TIP_CHOICES)}")
    if subject is not None and subject not in SUBJECT_SOURCES:
        raise InvalidInput(f"--tip-subject must be one of {', '.join(SUBJECT_SOURCES)}")
    if tip == "off":
        if subject is not None:
            raise InvalidInput("--tip-subject needs trusted identity propagation on: not with --tip off")
        return {"status": "DISABLED"}
    request: dict[str, Any] = {"status": "ENABLED"}
    if subject is not None:
        request["subjectSource"] = subject
    if tip is not None:
        request["subjectType"] = tip
    return request


def merged_tip(current: dict[str, Any] | None, request: dict[str, Any]) -> dict[str, Any]:
    """The whole ``tipConfiguration`` to send (an update replaces it): what the profile has, with
    what was asked; an option not given keeps its value, so ``--tip workload`` alone on a re-run
    does not send the subject back to its default."""
    merged = {**{k: v for k, v in (current or {}).items() if k != "status"}, **request}
    merged.setdefault("subjectSource", DEFAULT_SUBJECT_SOURCE)
    return merged


def requires_san_uri(tip: dict[str, Any] | None) -> bool:
    """Whether CreateSession denies a certificate without a URI SAN under ``tip``."""
    return tip is not None and tip.get("status") == "ENABLED" and tip.get("subjectSource") == "x509SAN/URI"


def _tip_as_compared(config: dict[str, Any] | None) -> dict[str, Any]:
    """A configuration with the model's defaults filled in (none is TIP off)."""
    config = config or {"status": "DISABLED"}
    return {"subjectSource": DEFAULT_SUBJECT_SOURCE, **{k: v for k, v in config.items() if v is not None}}


class Registrar:
    def __init__(self, ca: CertificateAuthority, aws: RolesAnywhere, *, actor: str | None = None) -> None:
        self.ca = ca
        self.aws = aws
        self.actor = actor
        self.actions: list[str] = []
        self.details: dict[str, dict[str, Any]] = {}  # "trust-anchor"/"profile" -> the detail as AWS last returned it

    def _find(self, kind: str, stored_arn: str | None, name: str) -> dict[str, Any] | None:
        """The stored resource if it still exists, else the one with ``name`` (oldest first)."""
        get_op, list_op, key, list_key, id_key = {
            "trust-anchor": ("GetTrustAnchor", "ListTrustAnchors", "trustAnchor", "trustAnchors", "trustAnchorId"),
            "profile": ("GetProfile", "ListProfiles", "profile", "profiles", "profileId"),
        }[kind]
        if stored_arn and stored_arn.split(":")[3] == self.aws.region:
            try:
                by_id: dict[str, Any] = {id_key: stored_arn.rsplit("/", 1)[1]}
                return dict(self.aws.call(get_op, **by_id)[key])
            except AwsError as exc:
                if not exc.not_found:
                    raise
                self.actions.append(f"the stored {kind} {stored_arn} is gone: looking it up by name")
        matches = [dict(item) for item in self.aws.paginate(list_op, list_key) if item.get("name") == name]
        matches.sort(key=lambda item: str(item.get("createdAt", "")))
        return matches[0] if matches else None

    @staticmethod
    def _alias_change(detail: dict[str, Any], alias: str | None) -> dict[str, Any]:
        """The ``aliasName`` member of an update that gives ``detail`` the alias asked for ({} when it has it)."""
        return {} if alias is None or alias == detail.get("aliasName", "") else {"aliasName": alias}

    def _say_alias(self, kind: str, change: dict[str, Any]) -> None:
        if "aliasName" in change:
            alias = change["aliasName"]
            self.actions.append(f"set the {kind}'s alias to {alias!r}" if alias else f"removed the {kind}'s alias")

    def trust_anchor(self, name: str, certs: list[x509.Certificate], days: int | None, *, alias: str | None = None,
                     crl_dp_revocation: bool | None = None) -> str:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
        source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem}}
        stored = settings(self.ca).get("trust_anchor_arn") if settings(self.ca).get("name") == name else None
        detail = self._find("trust-anchor", stored, name)
        if detail is None:
            params: dict[str, Any] = {"name": name, "source": source, "enabled": True, "tags": TAGS}
            if days is not None:
                params["notificationSettings"] = notification_settings(days)
            if alias:
                params["aliasName"] = alias
            if crl_dp_revocation is not None:
                params["crlDpRevocationEnabled"] = crl_dp_revocation
            detail = dict(self.aws.call("CreateTrustAnchor", **params)["trustAnchor"])
            self.actions.append(f"created trust anchor {name!r}")
        else:
            anchor_id = detail["trustAnchorId"]
            changes = self._alias_change(detail, alias)
            if (detail.get("source") or {}).get("sourceType") != "CERTIFICATE_BUNDLE" or \
                    _ders(_bundle_of(detail)) != _ders(pem):
                changes["source"] = source
            if crl_dp_revocation is not None and crl_dp_revocation != detail.get("crlDpRevocationEnabled", False):
                changes["crlDpRevocationEnabled"] = crl_dp_revocation
            if changes:
                detail = dict(self.aws.call("UpdateTrustAnchor", trustAnchorId=anchor_id, **changes)["trustAnchor"])
                if "source" in changes:
                    self.actions.append("updated the trust anchor's certificates")
                self._say_alias("trust anchor", changes)
                if "crlDpRevocationEnabled" in changes:
                    state = "on" if crl_dp_revocation else "off"
                    self.actions.append(f"turned revocation through CRL distribution points {state}")
            if days is not None and not _notifications_match(detail, days):
                self.aws.call("PutNotificationSettings", trustAnchorId=anchor_id,
                              notificationSettings=notification_settings(days))
                self.actions.append(f"set expiry notifications to {days} days")
        if not detail.get("enabled", False):
            self.aws.call("EnableTrustAnchor", trustAnchorId=detail["trustAnchorId"])
            self.actions.append("enabled the trust anchor")
        self.details["trust-anchor"] = detail
        return str(detail["trustAnchorArn"])

    def profile(self, name: str, role_arns: list[str], duration: int, accept_session_name: bool, *,
                alias: str | None = None, tip: dict[str, Any] | None = None) -> str:
        stored = settings(self.ca).get("profile_arn") if settings(self.ca).get("name") == name else None
        detail = self._find("profile", stored, name)
        wanted: dict[str, Any] = {"roleArns": role_arns, "durationSeconds": duration,
                                  "acceptRoleSessionName": accept_session_name}
        if tip is not None:
            tip = merged_tip(detail.get("tipConfiguration") if detail else None, tip)
        if detail is None:
            extra: dict[str, Any] = {"aliasName": alias} if alias else {}
            if tip is not None:
                extra["tipConfiguration"] = tip  # the default attribute mappings hold both TIP subjects' rules
            detail = dict(self.aws.call("CreateProfile", name=name, enabled=True, tags=TAGS, **wanted,
                                        **extra)["profile"])  # fmt: skip
            self.actions.append(f"created profile {name!r}")
        else:
            current = (sorted(detail.get("roleArns") or []), int(detail.get("durationSeconds") or 3600),
                       bool(detail.get("acceptRoleSessionName") or False))
            settings_changed = current != (sorted(role_arns), duration, accept_session_name)
            changes = self._alias_change(detail, alias)
            if tip is not None and _tip_as_compared(tip) != _tip_as_compared(detail.get("tipConfiguration")):
                self._mapping_rule_for(detail, tip)
                changes["tipConfiguration"] = tip
            if settings_changed or changes:
                detail = dict(self.aws.call("UpdateProfile", profileId=detail["profileId"], **wanted,
                                            **changes)["profile"])  # fmt: skip
                if settings_changed:
                    self.actions.append("updated the profile's roles/duration/session-name setting")
                self._say_alias("profile", changes)
                if "tipConfiguration" in changes:
                    self.actions.append(f"set trusted identity propagation to {tip_summary(tip)}")
        if not detail.get("enabled", False):
            self.aws.call("EnableProfile", profileId=detail["profileId"])
            self.actions.append("enabled the profile")
        self.details["profile"] = detail
        return str(detail["profileArn"])

    def _mapping_rule_for(self, detail: dict[str, Any], tip: dict[str, Any]) -> None:
        """Put the attribute mapping rule an enabled TIP subject needs, when the profile lacks it."""
        missing = missing_mapping_rule(tip, detail.get("attributeMappings") or [])
        if missing is not None:
            field_name, specifier = missing
            self.aws.call("PutAttributeMapping", profileId=detail["profileId"], certificateField=field_name,
                          mappingRules=[{"specifier": specifier}])  # fmt: skip
            self.actions.append(f"added the attribute mapping rule {field_name}/{specifier} that TIP needs")


def tip_summary(tip: dict[str, Any] | None) -> str:
    """``off``, or ``on (workload, x509SAN/URI)``."""
    if not tip or tip.get("status") != "ENABLED":
        return "off"
    return f"on ({', '.join(v for v in (tip.get('subjectType'), tip.get('subjectSource')) if v)})"


def credential_process_line(*, anchor: str, profile: str, role: str, files: str = "/etc/rapki",
                            endpoint_url: str | None = None, ca_bundle: str | None = None) -> str:
    """The ``credential_process`` line for ``~/.aws/config`` (cert.pem, key.pem, chain.pem in ``files``)."""
    return "credential_process = " + signer_line(
        certificate=f"{files}/cert.pem", private_key=f"{files}/key.pem", intermediates=f"{files}/chain.pem",
        trust_anchor_arn=anchor, profile_arn=profile, role_arn=role, endpoint=endpoint_url or "",
        ca_bundle=ca_bundle or "")


def register(ca: CertificateAuthority, aws: RolesAnywhere, *, name: str, role_arns: list[str],
             duration: int = 3600, accept_role_session_name: bool = False, anchor: str = "issuing",
             expiry_notification_days: int | None = None, profile: str | None = None,
             endpoint_url: str | None = None, ca_bundle: str | None = None, files: str = "/etc/rapki",
             auto_publish: bool | None = None, actor: str | None = None, alias: str | None = None,
             tip: str | None = None, tip_subject: str | None = None,
             crl_dp_revocation: bool | None = None) -> Registration:
    """Create or converge the trust anchor, profile and first CRL; store the ARNs. See the module doc."""
    from pki.aws.publish import crl_name_for

    if not 900 <= duration <= 43200:
        raise InvalidInput("--duration must be 900-43200 seconds")
    if expiry_notification_days is not None and not 1 <= expiry_notification_days <= 360:
        raise InvalidInput("--expiry-notification-days must be 1-360")
    if not role_arns:
        raise InvalidInput("give at least one --role-arn")
    roles = [check_role_arn(r, aws.partition) for r in dict.fromkeys(role_arns)]
    crl_name_for(name, ca.issuer())  # the name must also make valid CRL names
    alias = check_alias(alias)
    tip_config = tip_request(tip, tip_subject)
    binding_profile = ca.profile(profile) if profile else None  # fail before any AWS call
    if binding_profile is not None and tip_subject == "x509SAN/URI":
        replace(binding_profile, require_san_uri=True)  # refused here, before any call, if it allows no URI SAN
    certs = bundle_certificates(ca, anchor)
    registrar = Registrar(ca, aws, actor=actor)
    anchor_arn = registrar.trust_anchor(name, certs, expiry_notification_days, alias=alias,
                                        crl_dp_revocation=crl_dp_revocation)  # fmt: skip
    profile_arn = registrar.profile(name, roles, duration, accept_role_session_name, alias=alias, tip=tip_config)
    if binding_profile is not None and tip_config is not None:  # the rapki profile follows what TIP now needs
        effective = registrar.details["profile"].get("tipConfiguration")
        binding_profile = replace(binding_profile, require_san_uri=requires_san_uri(effective))
    # Stored before the CRL goes out: if publishing fails, a re-run finds these resources by ARN.
    stored: dict[str, Any] = {
        "name": name, "region": aws.region, "trust_anchor_arn": anchor_arn, "profile_arn": profile_arn,
        "role_arns": roles, "duration": duration, "anchor": anchor,
    }
    if auto_publish is not None:  # every 'rapki revoke' publishes (see pki.aws.publish.auto_publish_enabled)
        stored["auto_publish"] = auto_publish
    ca.config = ca.home.update_section(SECTION, stored)
    crl = CrlPublisher(ca, aws, name=name, actor=actor).publish(anchor_arn)
    if not crl.ok:
        raise AwsError(crl.errors[0])
    for pub in crl.publications:
        if pub.writes:
            registrar.actions.append(f"{pub.action} CRL {pub.crl_name} #{pub.crl_number}")
    if binding_profile is not None:
        from pki.x509.profiles import RolesAnywhereBinding

        binding = RolesAnywhereBinding(profile_arn=profile_arn, role_arns=tuple(roles), trust_anchor_arn=anchor_arn,
                                       session_duration=duration, endpoint_url=endpoint_url or "",
                                       ca_bundle=ca_bundle or "")
        bound = replace(binding_profile, roles_anywhere=binding)
        if bound != ca.profile(bound.name):
            ca.add_profile(bound, replace=True, actor=actor)
            registrar.actions.append(f"bound rapki profile {bound.name!r}"
                                     + (" (certificates must carry a URI SAN)" if bound.require_san_uri else ""))
    anchor_detail, profile_detail = registrar.details["trust-anchor"], registrar.details["profile"]
    anchor_alias_arn, profile_alias_arn = anchor_detail.get("aliasArn", ""), profile_detail.get("aliasArn", "")
    result = Registration(
        region=aws.region, partition=aws.partition, name=name, trust_anchor_arn=anchor_arn, profile_arn=profile_arn,
        role_arns=roles, duration=duration, anchor_mode=anchor,
        anchor_subjects=[c.subject.rfc4514_string() for c in certs], actions=registrar.actions, crl=crl,
        credential_process=credential_process_line(anchor=anchor_alias_arn or anchor_arn,
                                                   profile=profile_alias_arn or profile_arn, role=roles[0],
                                                   files=files, endpoint_url=endpoint_url, ca_bundle=ca_bundle),
        writes=aws.log.writes_total, trust_anchor_alias_arn=anchor_alias_arn, profile_alias_arn=profile_alias_arn,
        tip_configuration=profile_detail.get("tipConfiguration"),
        crl_dp_revocation=bool(anchor_detail.get("crlDpRevocationEnabled", False)),
    )
    if result.crl_dp_revocation and not ca.config.crl_distribution_url:
        result.warnings.append(
            "the trust anchor checks CRL distribution points (crlDpRevocationEnabled) but [crl].distribution_url "
            "is not set: this CA's certificates carry none, so their revocation may go unchecked (imported CRLs "
            "do not decide in that mode); set it, or pass --no-crl-dp-revocation")
    if aws.log.writes_total:
        ca.audit(actor, "aws.register", anchor_arn, {
            "profile_arn": profile_arn, "roles": roles, "anchor": anchor, "actions": registrar.actions,
        })
    return result
