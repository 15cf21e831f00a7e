"""``rapki aws register``: the console steps of a Roles Anywhere set-up as one converging command.

1. Trust anchor (``CERTIFICATE_BUNDLE`` of our CA certificates: the issuing CAs, the root, or both):
   found by the ARN stored in rapki.toml, else by name; created when absent; its bundle updated when
   it differs (e.g. after a rotation); enabled; expiry notifications set when asked.
2. Profile with its roles, duration and ``acceptRoleSessionName``: found, created or updated the same way; enabled.
3. The first CRL imported and enabled (``pki.aws.publish``), so a revocation is enforceable from day one.
4. The ARNs stored in ``[roles_anywhere]`` of rapki.toml (``rapki crl publish`` and ``revoke --publish``
   use them), and in a rapki issuance profile's ``roles_anywhere`` binding when one is named.

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
from pki.rolesanywhere.arns import check_role_arn
from pki.rolesanywhere.credential_process import credential_process_line as signer_line

if TYPE_CHECKING:
    from pki.ca.authority import CertificateAuthority

ANCHOR_MODES = ("issuing", "root", "both")
MAX_ANCHOR_CERTIFICATES = 2
TAGS = [{"key": "managed-by", "value": "rapki"}]
EVENTS = ("CA_CERTIFICATE_EXPIRY", "END_ENTITY_CERTIFICATE_EXPIRY")


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


class Registrar:
    def __init__(self, ca: CertificateAuthority, aws: RolesAnywhere, *, actor: str | None = None) -> None:
        self.ca = ca
        self.aws = aws
        self.actor = actor
        self.actions: list[str] = []

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

    def trust_anchor(self, name: str, certs: list[x509.Certificate], days: int | None) -> str:
        pem = "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)
        source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem}}
        stored = settings(self.ca).get("trust_anchor_arn") if settings(self.ca).get("name") == name else None
        detail = self._find("trust-anchor", stored, name)
        if detail is None:
            params: dict[str, Any] = {"name": name, "source": source, "enabled": True, "tags": TAGS}
            if days is not None:
                params["notificationSettings"] = notification_settings(days)
            detail = dict(self.aws.call("CreateTrustAnchor", **params)["trustAnchor"])
            self.actions.append(f"created trust anchor {name!r}")
        else:
            anchor_id = detail["trustAnchorId"]
            if (detail.get("source") or {}).get("sourceType") != "CERTIFICATE_BUNDLE" or \
                    _ders(_bundle_of(detail)) != _ders(pem):
                detail = dict(self.aws.call("UpdateTrustAnchor", trustAnchorId=anchor_id, source=source)["trustAnchor"])
                self.actions.append("updated the trust anchor's certificates")
            if days is not None and not _notifications_match(detail, days):
                self.aws.call("PutNotificationSettings", trustAnchorId=anchor_id,
                              notificationSettings=notification_settings(days))
                self.actions.append(f"set expiry notifications to {days} days")
        if not detail.get("enabled", False):
            self.aws.call("EnableTrustAnchor", trustAnchorId=detail["trustAnchorId"])
            self.actions.append("enabled the trust anchor")
        return str(detail["trustAnchorArn"])

    def profile(self, name: str, role_arns: list[str], duration: int, accept_session_name: bool) -> str:
        stored = settings(self.ca).get("profile_arn") if settings(self.ca).get("name") == name else None
        detail = self._find("profile", stored, name)
        wanted: dict[str, Any] = {"roleArns": role_arns, "durationSeconds": duration,
                                  "acceptRoleSessionName": accept_session_name}
        if detail is None:
            detail = dict(self.aws.call("CreateProfile", name=name, enabled=True, tags=TAGS, **wanted)["profile"])
            self.actions.append(f"created profile {name!r}")
        else:
            current = (sorted(detail.get("roleArns") or []), int(detail.get("durationSeconds") or 3600),
                       bool(detail.get("acceptRoleSessionName") or False))
            if current != (sorted(role_arns), duration, accept_session_name):
                detail = dict(self.aws.call("UpdateProfile", profileId=detail["profileId"], **wanted)["profile"])
                self.actions.append("updated the profile's roles/duration/session-name setting")
        if not detail.get("enabled", False):
            self.aws.call("EnableProfile", profileId=detail["profileId"])
            self.actions.append("enabled the profile")
        return str(detail["profileArn"])


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
             auto_publish: bool | None = None, actor: str | None = None) -> Registration:
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
    binding_profile = ca.profile(profile) if profile else None  # fail before any AWS call
    certs = bundle_certificates(ca, anchor)
    registrar = Registrar(ca, aws, actor=actor)
    anchor_arn = registrar.trust_anchor(name, certs, expiry_notification_days)
    profile_arn = registrar.profile(name, roles, duration, accept_role_session_name)
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
        if binding_profile.roles_anywhere != binding:
            ca.add_profile(replace(binding_profile, roles_anywhere=binding), replace=True, actor=actor)
            registrar.actions.append(f"bound rapki profile {binding_profile.name!r}")
    result = Registration(
        region=aws.region, partition=aws.partition, name=name, trust_anchor_arn=anchor_arn, profile_arn=profile_arn,
        role_arns=roles, duration=duration, anchor_mode=anchor,
        anchor_subjects=[c.subject.rfc4514_string() for c in certs], actions=registrar.actions, crl=crl,
        credential_process=credential_process_line(anchor=anchor_arn, profile=profile_arn, role=roles[0],
                                                   files=files, endpoint_url=endpoint_url, ca_bundle=ca_bundle),
        writes=aws.log.writes_total,
    )
    if aws.log.writes_total:
        ca.audit(actor, "aws.register", anchor_arn, {
            "profile_arn": profile_arn, "roles": roles, "anchor": anchor, "actions": registrar.actions,
        })
    return result
