"""Publishing CRLs to IAM Roles Anywhere: the step that makes a revocation count.

Roles Anywhere never fetches a CRL; it only knows what was pushed to it with ImportCrl/UpdateCrl.
``CrlPublisher.publish(anchor_arn)`` makes the trust anchor hold the current CRL of every unexpired
issuing CA it trusts, and is safe to run from cron every few minutes:

1. Local first, before any AWS call: the current CRL of each unexpired issuer
   (``CertificateAuthority.current_crl``: a new CRLNumber only when the revoked set changed or
   nextUpdate is within ``[crl].republish_before``). An over-size CRL stops the run here, so nothing
   is sent.
2. GetTrustAnchor: which of our CAs the anchor trusts (its own certificate in the bundle, or the
   root), whether it still exists, whether it is enabled. An active issuing CA the anchor does not
   trust (a rotation without 'rapki aws register') fails the run, after the others are published.
3. For each of those issuers, find the CRL imported before: the ``crlId`` recorded in
   ``crl_publications``; else, by name or by CRL issuer, in ListCrls (a CRL deleted or imported by
   hand is found or re-imported). Compare bytes: equal and enabled -> no write at all. Otherwise
   UpdateCrl (or ImportCrl the first time), EnableCrl if needed, GetCrl to read it back and compare,
   then record the publication and audit-log it in one transaction.
4. One run at a time: ``pg_advisory_lock`` on PostgreSQL, ``flock`` on a file in the home with SQLite.
   A CRL with a lower CRLNumber than the one last published (or than the one Roles Anywhere holds) is
   never sent: that means two homes or a restored backup, and a person must look.

Throttling (1 request/s control-plane quota) and 5xx are retried by ``pki.aws.client``; a failure
raises ``PublishError`` (one line) and leaves ``crl_publications`` as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.custody.keys import signing_key
from pki.errors import InvalidInput, RapkiError
from pki.store import audit as audit_rows
from pki.store import crls as crl_rows
from pki.store import publications as publication_rows
from pki.store.times import utc
from pki.x509.crl import ROLES_ANYWHERE_CRL_LIMIT, BuiltCrl, check_size

if TYPE_CHECKING:
    from pki.aws.client import AwsOptions, RolesAnywhere
    from pki.ca.authority import CertificateAuthority, Issuer

SECTION = "roles_anywhere"  # rapki.toml section written by 'rapki aws register'
DEFAULT_NAME = "rapki"
LOCK_NAME = "rapki:crl-publish"
LOCK_FILE = "crl-publish.lock"
DEFAULT_LOCK_TIMEOUT = 120.0
MAX_CRLS_PER_ANCHOR = 2
CLOCK_SKEW_ALLOWED = timedelta(minutes=5)  # a CRL signed this much "in the future" is worth a warning
_NAME_RE = re.compile(r"[ a-zA-Z0-9\-_]{1,255}")


class PublishError(RapkiError):
    """Publishing failed or must not go on; nothing more was written (exit 1, one line)."""

    exit_code = 1


# --- results ------------------------------------------------------------------------------------
@dataclass
class IssuerPublication:
    """What happened to one issuing CA's CRL on the trust anchor."""

    issuer: str
    crl_name: str
    crl_number: int
    entries: int
    size: int
    action: str  # unchanged | imported | updated | enabled | recorded | would-import | would-update | ...
    crl_id: str | None = None
    crl_arn: str | None = None
    built: bool = False  # this run signed a new CRL
    writes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    audit_head: str | None = None  # SEQ:HASH of the audit chain, recorded with the publication

    @property
    def budget_used(self) -> float:
        return round(self.size / ROLES_ANYWHERE_CRL_LIMIT, 4)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "budget_used": self.budget_used}


@dataclass
class PublishReport:
    trust_anchor_arn: str
    region: str
    endpoint_url: str
    dry_run: bool
    publications: list[IssuerPublication] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # published what it could, but the run failed
    calls: dict[str, int] = field(default_factory=dict)
    writes: int = 0
    retries: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "trust_anchor_arn": self.trust_anchor_arn, "region": self.region, "endpoint_url": self.endpoint_url,
            "dry_run": self.dry_run, "ok": self.ok, "publications": [p.to_dict() for p in self.publications],
            "warnings": self.warnings, "errors": self.errors, "calls": self.calls, "writes": self.writes,
            "retries": self.retries, "seconds": round(self.seconds, 3),
        }  # fmt: skip


@dataclass(frozen=True)
class PublicationRecord:
    issuer_id: int
    trust_anchor_arn: str
    crl_id: str
    crl_arn: str | None
    crl_name: str
    crl_number: int
    sha256: str
    size: int
    published_at: datetime


# --- locking ------------------------------------------------------------------------------------
@contextlib.contextmanager
def publish_lock(ca: CertificateAuthority, timeout: float = DEFAULT_LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the one publish lock of this CA for the block (bounded wait, then PublishError).

    PostgreSQL: a session advisory lock, so publishers on different hosts exclude each other, and a
    crashed publisher's lock goes with its connection. SQLite (one host by nature): ``flock`` on a
    file in the home, released by the kernel if the process dies.
    """
    if ca.db.engine.dialect.name == "postgresql":
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(publication_rows.advisory_lock(ca.db.engine, LOCK_NAME, timeout))
            except TimeoutError as exc:
                raise PublishError(f"another 'rapki crl publish' held the publish lock for over {timeout:.0f} s; "
                                   "nothing was published") from exc
            yield
        return
    import fcntl

    path = ca.home.path / LOCK_FILE
    with open(path, "a+b") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PublishError(f"another 'rapki crl publish' held {path} for over {timeout:.0f} s; "
                                       "nothing was published") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- helpers --------------------------------------------------------------------------------------
def settings(ca: CertificateAuthority) -> dict[str, Any]:
    """The ``[roles_anywhere]`` section of rapki.toml (trust anchor, profile, region, auto_publish)."""
    return dict(ca.config.extra.get(SECTION, {}))


def registered_name(ca: CertificateAuthority) -> str:
    """The prefix of the CRL names: the ``--name`` given to 'rapki aws register' (stored as ``name``), so
    every later publish keeps the scheme of the first CRL; ``rapki`` before any registration."""
    stored = settings(ca)
    return str(stored.get("crl_name") or stored.get("name") or DEFAULT_NAME)


def crl_name_for(name: str, issuer: Issuer) -> str:
    """The CRL's name on the anchor: ``<name>-<issuer>``, unique per issuing CA."""
    value = f"{name}-{issuer.name}"
    if not _NAME_RE.fullmatch(value):
        raise InvalidInput(f"CRL name {value!r}: Roles Anywhere allows 1-255 of letters, digits, ' ', '-', '_'")
    return value


def der_of(data: bytes | str | None) -> bytes | None:
    """The DER of a CRL as Roles Anywhere returns it (PEM as imported; tolerate DER)."""
    if data is None:
        return None
    raw = data.encode() if isinstance(data, str) else bytes(data)
    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(raw).public_bytes(serialization.Encoding.DER)
        return x509.load_der_x509_crl(raw).public_bytes(serialization.Encoding.DER)
    except ValueError:
        return None


def crl_number_of(crl: x509.CertificateRevocationList) -> int | None:
    try:
        return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)
    except x509.ExtensionNotFound:
        return None


def _signed_by(crl: x509.CertificateRevocationList, issuer: Issuer) -> bool:
    if crl.issuer != issuer.certificate.subject:
        return False
    try:
        # A CA's key is RSA or EC (pki.x509.keys); the X25519/X448 members of the union never occur.
        return bool(crl.is_signature_valid(issuer.certificate.public_key()))  # type: ignore[arg-type]
    except Exception:
        return False


def last_publication(ca: CertificateAuthority, anchor_arn: str, issuer_id: int) -> PublicationRecord | None:
    with ca.db.engine.connect() as conn:
        row = publication_rows.last(conn, anchor_arn, issuer_id)
    if row is None:
        return None
    return PublicationRecord(row.issuer_id, row.trust_anchor_arn, row.crl_id, row.crl_arn, row.crl_name,
                             int(row.crl_number), row.sha256, int(row.size), utc(row.published_at))


def anchor_certificates(anchor: dict[str, Any]) -> list[x509.Certificate]:
    source = anchor.get("source") or {}
    data = (source.get("sourceData") or {}).get("x509CertificateData") or ""
    if source.get("sourceType") != "CERTIFICATE_BUNDLE" or not data:
        return []
    try:
        return list(x509.load_pem_x509_certificates(data.encode()))
    except ValueError:
        return []


# --- the publisher ------------------------------------------------------------------------------------
class CrlPublisher:
    """Publishes the CRLs of ``ca`` to trust anchors through ``aws`` (a ``RolesAnywhere`` client)."""

    def __init__(self, ca: CertificateAuthority, aws: RolesAnywhere, *, name: str | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT, actor: str | None = None) -> None:
        self.ca = ca
        self.aws = aws
        self.name = name or registered_name(ca)
        self.lock_timeout = lock_timeout
        self.actor = actor
        self._listed: list[dict[str, Any]] | None = None

    def publish(self, trust_anchor_arn: str, *, dry_run: bool = False) -> PublishReport:
        from pki.rolesanywhere.arns import RolesAnywhereArn

        parsed = RolesAnywhereArn.parse(trust_anchor_arn, "trust anchor ARN", expected_type="trust-anchor")
        # ImportCrl and the CRLs' trustAnchorArn know only the ARN holding the id: an alias ARN is resolved.
        anchor_arn = str(self._trust_anchor(str(parsed))["trustAnchorArn"]) if parsed.alias else str(parsed)
        started = time.monotonic()
        report = PublishReport(anchor_arn, self.aws.region, self.aws.endpoint_url, dry_run)
        self._listed = None
        lock = contextlib.nullcontext() if dry_run else publish_lock(self.ca, self.lock_timeout)
        try:
            with lock:
                self._publish(anchor_arn, report, dry_run)
        finally:
            report.calls = dict(self.aws.log.calls)
            report.writes = self.aws.log.writes_total
            report.retries = self.aws.log.retries
            report.seconds = time.monotonic() - started
        return report

    def _publish(self, anchor_arn: str, report: PublishReport, dry_run: bool) -> None:
        now = datetime.now(UTC)
        unexpired = [i for i in self.ca.issuers() if i.not_after > now]
        if not unexpired:
            raise PublishError("every issuing CA has expired: nothing to publish ('rapki ca sign-intermediate')")
        # 1. Local CRLs first: an over-size CRL stops the run before anything is sent.
        local = {i.id: self._local_crl(i, dry_run) for i in unexpired}
        # 2. What the anchor trusts.
        anchor = self._trust_anchor(anchor_arn)
        if not anchor.get("enabled", False):
            report.warnings.append(f"trust anchor {anchor.get('name')!r} is disabled: Roles Anywhere refuses every "
                                   "certificate until it is enabled ('rapki aws register' enables it)")
        trusted = self._trusted_issuers(anchor, unexpired)
        trusted.sort(key=lambda i: (i.certificate.not_valid_before_utc, i.id), reverse=True)  # newest first
        covered, uncovered = trusted[:MAX_CRLS_PER_ANCHOR], trusted[MAX_CRLS_PER_ANCHOR:]
        # 3. Each trusted issuer's CRL.
        for issuer in covered:
            built, built_now = local[issuer.id]
            report.publications.append(self._publish_one(anchor_arn, issuer, built, built_now, covered, dry_run))
        active = next((i for i in unexpired if i.active), None)
        if active is not None and active.id not in {i.id for i in trusted}:
            # Typically a rotation without re-registering an '--anchor issuing' anchor: the older CAs'
            # CRLs went out above, but every certificate the active CA issues is refused.
            report.errors.append(
                f"the active issuing CA {active.name} is not in trust anchor {anchor.get('name')!r}: Roles Anywhere "
                "refuses its certificates (Untrusted Signing Certificate) and cannot hold its CRL; run 'rapki aws "
                "register' again with the same options to add it"
            )
        if uncovered:
            names = ", ".join(i.name for i in uncovered)
            report.errors.append(
                f"Roles Anywhere holds at most {MAX_CRLS_PER_ANCHOR} CRLs per trust anchor, so the revocations of "
                f"{names} are NOT enforced: stop issuing from it and let its certificates expire, or anchor on "
                "the issuing CAs ('rapki aws register --anchor issuing') so an old one can be dropped"
            )

    # --- local ------------------------------------------------------------------------------------
    def _local_crl(self, issuer: Issuer, dry_run: bool) -> tuple[BuiltCrl, bool]:
        """(the CRL to publish, whether it is newly built). A dry run builds in memory only."""
        before = self.ca.crl_state(issuer.name)["crl_number"]
        if not dry_run:
            built = self.ca.current_crl(issuer.name, actor=self.actor)
            assert built is not None
            return built, built.number != before
        current = self.ca.current_crl(issuer.name, build=False)
        if current is not None:
            return current, False
        now = datetime.now(UTC).replace(microsecond=0)
        key = signing_key(self.ca.issuer_key(issuer))
        with self.ca.db.engine.connect() as conn:
            number = crl_rows.last_number(conn, issuer.id) + 1
            built = self.ca.sign_crl(conn, issuer, key, number, now)
        return built, True

    # --- remote -----------------------------------------------------------------------------------
    def _trust_anchor(self, anchor_arn: str) -> dict[str, Any]:
        from pki.aws.client import AwsError
        from pki.rolesanywhere.arns import RolesAnywhereArn

        anchor_id = RolesAnywhereArn.parse(anchor_arn, "trust anchor ARN").identifier
        try:
            return dict(self.aws.call("GetTrustAnchor", trustAnchorId=anchor_id)["trustAnchor"])
        except AwsError as exc:
            if exc.not_found:
                raise PublishError(
                    f"trust anchor {anchor_arn} does not exist (deleted out of band?): re-create it with "
                    "'rapki aws register' (it imports the CRL too), or pass the right --trust-anchor-arn"
                ) from exc
            raise

    def _trusted_issuers(self, anchor: dict[str, Any], unexpired: list[Issuer]) -> list[Issuer]:
        """The unexpired issuers whose certificates Roles Anywhere accepts through this anchor."""
        certs = anchor_certificates(anchor)
        ders = {c.public_bytes(serialization.Encoding.DER) for c in certs}
        root_der = self.ca.root_certificate.public_bytes(serialization.Encoding.DER)
        trusted = [i for i in unexpired
                   if root_der in ders or i.certificate.public_bytes(serialization.Encoding.DER) in ders]
        if not trusted:
            held = "; ".join(c.subject.rfc4514_string() for c in certs) or anchor.get("source", {}).get("sourceType")
            raise PublishError(
                f"trust anchor {anchor.get('name')!r} trusts neither this CA's root nor an unexpired issuing CA "
                f"(it holds: {held}): it was changed out of band or the ARN is wrong; 'rapki aws register' "
                "puts our certificates back"
            )
        return trusted

    def _list_anchor_crls(self, anchor_arn: str, *, refresh: bool = False) -> list[dict[str, Any]]:
        if self._listed is None or refresh:
            self._listed = [c for c in self.aws.paginate("ListCrls", "crls") if c.get("trustAnchorArn") == anchor_arn]
        return self._listed

    def _find_remote(self, anchor_arn: str, issuer: Issuer, crl_name: str, last: PublicationRecord | None,
                     notes: list[str]) -> dict[str, Any] | None:
        from pki.aws.client import AwsError

        if last is not None:
            try:
                crl = dict(self.aws.call("GetCrl", crlId=last.crl_id)["crl"])
                if crl.get("trustAnchorArn") == anchor_arn:
                    return crl
                notes.append(f"CRL {last.crl_id} now belongs to another trust anchor; looking for ours")
            except AwsError as exc:
                if not exc.not_found:
                    raise
                notes.append(f"the CRL published before ({last.crl_id}) was deleted out of band")
        listed = self._list_anchor_crls(anchor_arn)
        for crl in listed:
            if crl.get("name") == crl_name:
                return crl
        for crl in listed:  # imported by hand under another name: adopt it rather than use the 2nd slot
            der = der_of(crl.get("crlData"))
            if der is not None and _signed_by(x509.load_der_x509_crl(der), issuer):
                notes.append(f"adopting CRL {crl.get('name')!r} ({crl.get('crlId')}), signed by {issuer.name}")
                return crl
        return None

    def _find_by_name(self, anchor_arn: str, crl_name: str) -> dict[str, Any] | None:
        """After a failed ImportCrl: did it happen anyway (lost answer)? Then use it, don't import twice."""
        for crl in self._list_anchor_crls(anchor_arn, refresh=True):
            if crl.get("name") == crl_name:
                return {"crl": crl}
        return None

    def _make_room(self, anchor_arn: str, covered: list[Issuer], writes: list[str], notes: list[str]) -> None:
        """Before an import into a full anchor: delete a CRL we published for an issuer no longer covered."""
        listed = self._list_anchor_crls(anchor_arn)
        if len(listed) < MAX_CRLS_PER_ANCHOR:
            return
        keep = {i.id for i in covered}
        with self.ca.db.engine.connect() as conn:
            ours = publication_rows.issuer_by_crl_id(conn, anchor_arn)
        for crl in listed:
            if crl.get("crlId") in ours and ours[crl["crlId"]] not in keep:
                self.aws.call("DeleteCrl", crlId=crl["crlId"])
                writes.append("DeleteCrl")
                notes.append(f"deleted CRL {crl.get('name')!r} of an expired or untrusted issuing CA to make room")
                self._listed = None
                return
        held = ", ".join(f"{c.get('name')!r} ({c.get('crlId')})" for c in listed)
        raise PublishError(
            f"trust anchor {anchor_arn} already holds {len(listed)} CRLs ({held}) and Roles Anywhere allows "
            f"{MAX_CRLS_PER_ANCHOR}: delete the one rapki does not manage "
            "('aws rolesanywhere delete-crl --crl-id ID') and run again"
        )

    def _check_order(self, issuer: Issuer, built: BuiltCrl, last: PublicationRecord | None,
                     remote_der: bytes | None) -> None:
        """Never replace a CRL with an older one of the same CA."""
        sha = hashlib.sha256(built.der).hexdigest()
        if last is not None and (built.number < last.crl_number or (built.number == last.crl_number
                                                                     and sha != last.sha256)):
            raise PublishError(
                f"{issuer.name}: CRL #{last.crl_number} was published before, and the local CRL is #{built.number}: "
                "refusing to go back (is another rapki home publishing, or was the database restored from a "
                "backup?); publish from the home with the newest database"
            )
        if remote_der is None:
            return
        remote = x509.load_der_x509_crl(remote_der)
        number = crl_number_of(remote)
        if number is not None and _signed_by(remote, issuer) and number >= built.number:
            raise PublishError(
                f"{issuer.name}: Roles Anywhere holds CRL #{number} of this CA, the local one is #{built.number}: "
                "refusing to replace it with an older list (another rapki home, or a restored database?)"
            )

    def _publish_one(self, anchor_arn: str, issuer: Issuer, built: BuiltCrl, built_now: bool,
                     covered: list[Issuer], dry_run: bool) -> IssuerPublication:
        crl_name = crl_name_for(self.name, issuer)
        pem, der = built.pem, built.der
        size = check_size(built)
        result = IssuerPublication(issuer.name, crl_name, built.number, built.entries, size, "unchanged",
                                   built=built_now)
        last = last_publication(self.ca, anchor_arn, issuer.id)
        remote = self._find_remote(anchor_arn, issuer, crl_name, last, result.notes)
        remote_der = der_of(remote.get("crlData")) if remote else None
        same = remote_der == der
        if not same:
            self._check_order(issuer, built, last, remote_der)
        if remote is not None:
            result.crl_id, result.crl_arn = remote.get("crlId"), remote.get("crlArn")
        needs_enable = remote is not None and not remote.get("enabled", False)
        if dry_run:
            result.action = ("would-import" if remote is None else "would-update" if not same
                             else "would-enable" if needs_enable else "unchanged")
            return result
        writes = result.writes
        if remote is None:
            self._make_room(anchor_arn, covered, writes, result.notes)
            response = self.aws.call(
                "ImportCrl", name=crl_name, crlData=pem, trustAnchorArn=anchor_arn, enabled=True,
                tags=[{"key": "rapki-issuer", "value": issuer.name}],
                before_retry=lambda: self._find_by_name(anchor_arn, crl_name),
            )
            writes.append("ImportCrl")
            self._listed = None  # the anchor holds one more CRL now
            remote = dict(response["crl"])
            result.crl_id, result.crl_arn = remote.get("crlId"), remote.get("crlArn")
            needs_enable = not remote.get("enabled", False)
            if der_of(remote.get("crlData")) not in (None, der):  # adopted a lost import of an older CRL
                self.aws.call("UpdateCrl", crlId=result.crl_id, crlData=pem)
                writes.append("UpdateCrl")
            result.action = "imported"
        elif not same:
            self.aws.call("UpdateCrl", crlId=result.crl_id, crlData=pem)
            writes.append("UpdateCrl")
            result.action = "updated"
        if needs_enable:
            self.aws.call("EnableCrl", crlId=result.crl_id)
            writes.append("EnableCrl")
            result.action = "enabled" if result.action == "unchanged" else result.action
        sha = hashlib.sha256(der).hexdigest()
        recorded = last is not None and last.crl_id == result.crl_id and last.sha256 == sha
        if not writes and recorded:
            return result  # nothing new: no write, no record
        if writes:
            self._read_back(result, der)
        elif not recorded:
            result.action = "recorded"  # Roles Anywhere already held exactly this CRL (e.g. a run died late)
        self._record(anchor_arn, issuer, result, sha)
        return result

    def _read_back(self, result: IssuerPublication, der: bytes) -> None:
        """GetCrl after the writes: Roles Anywhere must hold these exact bytes, enabled."""
        crl = self.aws.call("GetCrl", crlId=result.crl_id)["crl"]
        if der_of(crl.get("crlData")) != der:
            raise PublishError(f"{result.issuer}: read-back mismatch: Roles Anywhere's CRL {result.crl_id} differs "
                               "from the one just sent (changed concurrently?); nothing recorded, run again")
        if not crl.get("enabled", False):
            raise PublishError(f"{result.issuer}: CRL {result.crl_id} is still disabled after EnableCrl; "
                               "nothing recorded, run again")

    def _record(self, anchor_arn: str, issuer: Issuer, result: IssuerPublication, sha: str) -> None:
        assert result.crl_id is not None  # set from the import, the update or the CRL found on the anchor
        result.audit_head = record_publication(
            self.ca, self.actor, issuer, {
                "trust_anchor_arn": anchor_arn, "crl_id": result.crl_id, "crl_number": result.crl_number,
                "size": result.size, "entries": result.entries, "action": result.action, "writes": result.writes,
            }, destination=anchor_arn, crl_id=result.crl_id, crl_arn=result.crl_arn, crl_name=result.crl_name,
            crl_number=result.crl_number, sha256=sha, size=result.size)


def record_publication(ca: CertificateAuthority, actor: str | None, issuer: Issuer, details: dict[str, Any], *,
                       destination: str, crl_id: str, crl_arn: str | None, crl_name: str, crl_number: int,
                       sha256: str, size: int) -> str:
    """Record that ``destination`` (a trust anchor ARN, or ``s3://bucket/prefix``) now holds a CRL of
    ``issuer``, with a ``crl.publish`` audit entry carrying ``details``, in one transaction; the
    audit chain's head it recorded (SEQ:HASH).

    The audit entry first, so the publication records the chain's head with it included: a copy of
    the head outside the log (rapki audit verify compares the two)."""
    with ca.db.engine.begin() as conn:
        ca.audit_in(conn, actor, "crl.publish", issuer.name, details)
        head = audit_rows.head(conn)
        assert head is not None  # the entry just written
        publication_rows.add(
            conn, issuer_id=issuer.id, anchor_arn=destination, crl_id=crl_id, crl_arn=crl_arn, crl_name=crl_name,
            crl_number=crl_number, sha256=sha256, size=size, published_at=datetime.now(UTC), audit_seq=head.seq,
            audit_hash=head.hash,
        )
    return str(head)


# --- entry points shared by the CLI -------------------------------------------------------------
def configured_anchor(ca: CertificateAuthority, explicit: str | None) -> str:
    anchor = explicit or settings(ca).get("trust_anchor_arn")
    if not anchor:
        raise InvalidInput("no trust anchor: pass --trust-anchor-arn, or run 'rapki aws register' to store one")
    return str(anchor)


def publish(ca: CertificateAuthority, trust_anchor_arn: str | None = None, *, options: AwsOptions | None = None,
            name: str | None = None, dry_run: bool = False, lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
            actor: str | None = None) -> PublishReport:
    """Publish to ``trust_anchor_arn`` (default: the one stored by registration)."""
    from pki.aws.client import AwsOptions, RolesAnywhere

    anchor = configured_anchor(ca, trust_anchor_arn)
    aws = RolesAnywhere.connect(options or AwsOptions(), arn=anchor, configured_region=settings(ca).get("region"))
    publisher = CrlPublisher(ca, aws, name=name, lock_timeout=lock_timeout, actor=actor)
    return publisher.publish(anchor, dry_run=dry_run)


def auto_publish_enabled(ca: CertificateAuthority) -> bool:
    """``[roles_anywhere].auto_publish``: every revoke publishes (like ``rapki revoke --publish``)."""
    return bool(settings(ca).get("auto_publish", False))


def crl_status(ca: CertificateAuthority, trust_anchor_arn: str | None = None) -> dict[str, Any]:
    """Local CRL vs published CRL per unexpired issuer, with warnings. No AWS call."""
    now = datetime.now(UTC)
    anchor = trust_anchor_arn or settings(ca).get("trust_anchor_arn") or None
    margin: timedelta = ca.config.crl_republish_before
    issuers_out: list[dict[str, Any]] = []
    warnings: list[str] = []
    for issuer in ca.issuers():
        if issuer.not_after <= now:
            continue
        state = ca.crl_state(issuer.name)
        size = len(x509.load_der_x509_crl(state["der"]).public_bytes(serialization.Encoding.PEM)) if state["der"] else 0
        listed: set[int] = set()
        if state["der"]:
            listed = {e.serial_number for e in x509.load_der_x509_crl(state["der"])}
        with ca.db.engine.connect() as conn:
            wanted = {e.serial for e in ca.revoked_entries(conn, issuer, now)}
        pending = len(wanted - listed)
        item: dict[str, Any] = {
            "issuer": issuer.name, "active": issuer.active, "local_crl_number": state["crl_number"] or None,
            "this_update": state["this_update"].isoformat() if state["this_update"] else None,
            "next_update": state["next_update"].isoformat() if state["next_update"] else None,
            "age_seconds": int((now - state["this_update"]).total_seconds()) if state["this_update"] else None,
            "entries": state["entries"], "pem_bytes": size, "limit_bytes": ROLES_ANYWHERE_CRL_LIMIT,
            "budget_used": round(size / ROLES_ANYWHERE_CRL_LIMIT, 4), "revocations_not_in_crl": pending,
            "published_crl_number": None, "published_at": None, "published_age_seconds": None, "crl_id": None,
        }  # fmt: skip
        if state["this_update"] is not None and state["this_update"] - now > CLOCK_SKEW_ALLOWED:
            warnings.append(f"{issuer.name}: the CRL's thisUpdate {state['this_update']:%Y-%m-%dT%H:%M:%SZ} is "
                            f"{_human(state['this_update'] - now)} in the future: this host's clock is behind the "
                            "one that signed it (check NTP)")
        if state["der"] is None:
            warnings.append(f"{issuer.name}: no CRL built yet ('rapki crl publish' builds and publishes one)")
        elif state["next_update"] is not None and state["next_update"] - now <= margin:
            left = state["next_update"] - now
            warnings.append(f"{issuer.name}: nextUpdate {state['next_update']:%Y-%m-%dT%H:%M:%SZ} is "
                            f"{'past' if left.total_seconds() < 0 else 'in ' + _human(left)}: publish now")
        if pending:
            warnings.append(f"{issuer.name}: {pending} revocation(s) are not in the local CRL yet: run "
                            "'rapki crl publish'")
        if size > 0.8 * ROLES_ANYWHERE_CRL_LIMIT:
            warnings.append(f"{issuer.name}: the CRL uses {size / ROLES_ANYWHERE_CRL_LIMIT:.0%} of the "
                            "300,000-byte budget")
        if anchor:
            last = last_publication(ca, str(anchor), issuer.id)
            if last is None:
                warnings.append(f"{issuer.name}: no CRL published to {anchor} yet")
            else:
                item.update(published_crl_number=last.crl_number, published_at=last.published_at.isoformat(),
                            published_age_seconds=int((now - last.published_at).total_seconds()), crl_id=last.crl_id)
                if state["crl_number"] and last.crl_number < state["crl_number"]:
                    warnings.append(f"{issuer.name}: the published CRL #{last.crl_number} lags the local "
                                    f"#{state['crl_number']}: run 'rapki crl publish'")
        issuers_out.append(item)
    return {"trust_anchor_arn": anchor, "issuers": issuers_out, "warnings": warnings,
            "republish_before_seconds": int(margin.total_seconds())}


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    if seconds >= 86400:
        return f"{seconds / 86400:.1f}d"
    if seconds >= 3600:
        return f"{seconds / 3600:.1f}h"
    return f"{max(seconds, 0) // 60}m"
