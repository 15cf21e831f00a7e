"""Issuance in ``CertificateAuthority``: workload certificates under a profile, and the server
certificate of rapki's own API. The hot path of the CA: one write transaction per certificate,
its statements prepared once (``pki.store.statements``)."""

from __future__ import annotations

import hashlib
import ipaddress
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy.exc import IntegrityError

from pki.ca._audit import local_actor
from pki.ca._issuers import IssuingCAs
from pki.ca._profiles import ProfileCatalog
from pki.ca.values import IssuedCertificate, Issuer
from pki.errors import AlreadyRenewed, InvalidInput, NotFound, PolicyViolation, RapkiError
from pki.store import audit as audit_rows
from pki.store import certificates as certificate_rows
from pki.store.statements import Defer, Transaction
from pki.x509.durations import format_duration
from pki.x509.issuance import (
    BACKDATE,
    LeafSpec,
    SubjectAltNames,
    VerifiedCsr,
    build_leaf,
    leaf_extensions,
    leaf_subject_text,
    load_csr,
    read_csr,
)
from pki.x509.keys import KeyType, PrivateKey, PublicKey
from pki.x509.preflight import leaf_content_problems
from pki.x509.profiles import MIN_TTL, Profile
from pki.x509.serials import random_serial, serial_hex

_LAST_SECOND: tuple[int, datetime] = (0, datetime.fromtimestamp(0, UTC))


def _whole_second_now() -> datetime:
    """The current time in whole seconds (X.509 holds no fractions). Certificates issued in one
    second share one datetime (immutable): made once, never the fractional time first."""
    global _LAST_SECOND
    second = int(time.time())
    last = _LAST_SECOND  # one tuple, replaced whole: threads never see a second with another's time
    if last[0] != second:
        last = _LAST_SECOND = (second, datetime.fromtimestamp(second, UTC))
    return last[1]


def _server_san(name: str) -> str:
    """``ip:`` for an address, ``dns:`` for a host name."""
    try:
        return f"ip:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"dns:{name}"


class Issuance(ProfileCatalog, IssuingCAs):
    """Certificates made, checked against the Roles Anywhere rules and recorded."""

    def issue(self, profile: str | Profile, *, cn: str | None = None, sans: Sequence[str] = (),
              csr: bytes | x509.CertificateSigningRequest | VerifiedCsr | None = None,
              key_type: KeyType | str | None = None, ttl: timedelta | None = None, actor: str | None = None,
              supersedes: str | None = None,
              within: Callable[[Transaction], None] | None = None,
              before_commit: Callable[[IssuedCertificate], None] | None = None,
              later: Defer | None = None) -> IssuedCertificate:
        """Issue a workload certificate under ``profile``.

        With ``csr`` the CSR's key and names are used (and must fit the profile); otherwise a key
        of ``key_type`` (default: the profile's first) is made here and returned with the result.
        ``within(tx)`` runs inside the transaction that records the certificate (e.g. redeeming
        an enrollment token): if it raises, nothing is recorded and the error propagates.
        ``before_commit(issued)`` runs in that transaction too, last, with the certificate (and key)
        made (e.g. writing them to files): if it raises, nothing is recorded either.
        ``supersedes``: the serial of the certificate this one renews. A certificate renews once:
        one already renewed is refused (``AlreadyRenewed``, audited as ``certificate.renew_refused``),
        and of two concurrent renewals of one certificate only one is recorded.
        ``later`` (a renewal, with ``supersedes``, is recorded here all the same): the recording is
        not run here but handed to ``later`` as a function of the transaction (``CommitGroup.add``,
        group commit): the certificate is made and returned, but recorded only when its group
        commits, and must not be given out before; its refusals (the token used up meanwhile, a
        serial drawn twice, which this method would otherwise draw again) come out of the group.
        """
        prof = profile if isinstance(profile, Profile) else self.profile(profile)
        if supersedes is not None:
            self._check_not_renewed(supersedes, actor)  # before any key is made; the transaction decides
        requested_sans = SubjectAltNames.parse(sans)
        private_key: PrivateKey | None = None
        public_key: PublicKey
        if csr is not None:
            if key_type is not None:
                raise InvalidInput("give a CSR or a key type, not both")
            content = read_csr(csr if isinstance(csr, VerifiedCsr) else load_csr(csr))
            if cn is not None and content.common_name is not None and cn != content.common_name:
                raise PolicyViolation(f"the CSR's CN {content.common_name!r} differs from the requested CN {cn!r}")
            cn = cn or content.common_name
            requested_sans = requested_sans.merged(content.sans)
            kt, public_key = content.key_type, content.public_key
            prof.check_key_type(kt)
        else:
            kt = KeyType.parse(key_type) if isinstance(key_type, str) else (key_type or prof.key_types[0])
            prof.check_key_type(kt)
            private_key = None  # generated after every policy check passed
        if not cn:
            raise InvalidInput("a CN is required (the subject CN becomes the STS source identity)")
        prof.check_cn(cn)
        for name in requested_sans.dns:
            prof.check_dns(name)
        for uri in requested_sans.uri:
            prof.check_uri(uri)
        prof.check_uri_present(requested_sans.uri)
        if requested_sans.ip:
            raise PolicyViolation("IP SANs are not issued to workloads: use dns: or uri: names")
        lifetime = prof.ttl(ttl)
        if csr is None:
            private_key = kt.generate()
            public_key = private_key.public_key()
        issuer = self.issuer()
        signer = self.leaf_signer(issuer)
        now = _whole_second_now()  # what the certificate holds
        not_after = min(now + lifetime, issuer.not_after)  # never beyond the issuing CA
        if not_after - now < MIN_TTL:  # only the issuing CA can cut it this short: the TTL is at least MIN_TTL
            raise PolicyViolation(
                f"the active issuing CA {issuer.name} expires at {issuer.not_after:%Y-%m-%d %H:%M:%S}Z, so a "
                f"certificate would live less than the minimum of {format_duration(MIN_TTL)}: rotate it "
                "with 'rapki ca sign-intermediate'")
        for _attempt in range(5):
            spec = LeafSpec(cn, requested_sans, public_key, random_serial(self.config.serial_bytes),
                            now - BACKDATE, not_after)
            extensions = leaf_extensions(spec, signer)
            problems = leaf_content_problems(spec.serial, signer.hash, public_key, cn, extensions,
                                             signature_algorithm=signer.algorithm)
            if problems:  # a bug or a profile that lets through what Roles Anywhere refuses
                raise PolicyViolation("the certificate would be refused by Roles Anywhere: " + "; ".join(problems))
            cert = build_leaf(spec, signer, extensions)
            issued = IssuedCertificate(cert, (issuer.certificate,), prof.name, leaf_subject_text(cn),
                                       cert.public_bytes(Encoding.DER), private_key)
            try:
                self._record(issued, spec, now, issuer, kt, actor, supersedes, within, before_commit, later)
            except IntegrityError:
                continue  # serial collision: draw again
            return issued
        raise RapkiError("could not draw a unique serial in 5 attempts: raise [ca].serial_bytes")

    SERVER_PROFILE = "_server"  # not a valid profile name, so it never collides with one

    def issue_server_certificate(self, names: Sequence[str], *, lifetime: timedelta = timedelta(days=90),
                                 actor: str | None = None) -> IssuedCertificate:
        """A TLS server certificate for rapki's own HTTPS API: serverAuth, CN = the first name, DNS
        and IP SANs for every name, an EC P-256 key made here. Workload profiles do not apply, but
        it is recorded in the inventory (profile ``_server``) like every certificate, so it can be
        listed and revoked."""
        if not names or not 1 <= len(names[0]) <= 64:
            raise InvalidInput("a server certificate needs names, the first (its CN) of at most 64 characters")
        sans = SubjectAltNames.parse([_server_san(name) for name in dict.fromkeys(names)])
        issuer = self.issuer()
        key = KeyType.EC_P256.generate()
        signer = self.leaf_signer(issuer)
        now = _whole_second_now()
        for _attempt in range(5):
            spec = LeafSpec(names[0], sans, key.public_key(), random_serial(self.config.serial_bytes),
                            now - BACKDATE, min(now + lifetime, issuer.not_after), ExtendedKeyUsageOID.SERVER_AUTH)
            cert = build_leaf(spec, signer, leaf_extensions(spec, signer))
            issued = IssuedCertificate(cert, (issuer.certificate,), self.SERVER_PROFILE, leaf_subject_text(names[0]),
                                       cert.public_bytes(Encoding.DER), key)
            try:
                self._record(issued, spec, now, issuer, KeyType.EC_P256, actor, None)
            except IntegrityError:
                continue
            return issued
        raise RapkiError("could not draw a unique serial in 5 attempts: raise [ca].serial_bytes")

    def _record(self, issued: IssuedCertificate, spec: LeafSpec, now: datetime, issuer: Issuer,
                key_type: KeyType, actor: str | None, supersedes: str | None,
                within: Callable[[Transaction], None] | None = None,
                before_commit: Callable[[IssuedCertificate], None] | None = None,
                later: Defer | None = None) -> None:
        """The certificate row and its audit row, committed together (with ``within``'s writes and
        the mark on the certificate it ``supersedes``), ``before_commit`` run last.
        Column values come from ``spec``, which the certificate was built from, rather than from
        parsing the new certificate back; ``now`` (created_at, the audit time) is the moment its
        validity was computed from, in whole seconds like the validity itself."""
        der = issued.der
        profile = issued.profile
        serial = serial_hex(spec.serial)
        cn = spec.common_name
        # Both rows are converted for the driver before the transaction: what runs under the
        # writer lock (which the other workers queue on) is only SQL.
        dialect = self.db.engine.dialect
        certificate_row = certificate_rows.INSERT_ROW.bind(dialect, {
            "issuer_id": issuer.id, "serial": serial, "subject": leaf_subject_text(cn),
            "common_name": cn, "sans": spec.sans.as_list(), "profile": profile, "key_type": key_type.value,
            "not_before": spec.not_before, "not_after": spec.not_after,
            "fingerprint": hashlib.sha256(der).hexdigest(), "der": der, "created_at": now,
            "revoked_at": None, "revocation_reason": None, "superseded_by": None,
        })
        audit_entry = audit_rows.prepare(
            dialect, at=now, actor=actor or local_actor(),
            action="certificate.renew" if supersedes else "certificate.issue", target=serial,
            details={"cn": cn, "profile": profile, "issuer": issuer.name, "supersedes": supersedes},
        )

        def write(tx: Transaction) -> None:
            if within is not None:
                within(tx)
            if supersedes and not tx.run(certificate_rows.MARK_SUPERSEDED,
                                         {"old_serial": supersedes, "new_serial": serial}):
                raise _RenewedMeanwhile  # another renewal of it committed first: roll back
            tx.insert(certificate_row)
            if before_commit is not None:
                before_commit(issued)
            # Last: appending takes the audit chain's head lock, held until the commit.
            for statement in audit_entry.statements:
                tx.insert(statement)

        if later is not None and supersedes is None:
            later(write)
            return
        try:
            with self.db.write() as tx:
                write(tx)
        except _RenewedMeanwhile:
            assert supersedes is not None
            self._check_not_renewed(supersedes, actor)
            raise NotFound(f"no certificate with serial {supersedes} to renew") from None

    def _check_not_renewed(self, serial: str, actor: str | None) -> None:
        """``AlreadyRenewed`` when the certificate ``serial`` has a successor; the refusal is
        audited (``certificate.renew_refused``, with the caller) since the one presenting it may
        hold a copy of its key: see docs/api.md, "Renewing twice"."""
        with self.db.engine.connect() as conn:
            successors = [row.superseded_by for row in certificate_rows.with_serial(conn, serial) if row.superseded_by]
        if not successors:
            return
        self.audit(actor, "certificate.renew_refused", serial, {"superseded_by": successors[0]})
        raise AlreadyRenewed(serial, successors[0])


class _RenewedMeanwhile(Exception):
    """Raised inside the renewal's transaction to roll it back: the certificate has a successor."""
