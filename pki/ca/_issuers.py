"""The CA material of ``CertificateAuthority``: the root certificate, the issuing CAs (the
hierarchy), their keys, and rotation to a new issuing CA (``sign_intermediate``)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from pki.ca._audit import AuditTrail, local_actor
from pki.ca.home import Config, Home
from pki.ca.values import Issuer
from pki.custody.keys import CaKey, make_key, open_key, signing_key
from pki.custody.refs import FileRef, KeyRef, key_ref_for, parse_key_ref, placement_of
from pki.errors import Conflict, InvalidInput, IssuerKeyMissing, NotFound
from pki.store import crls as crl_rows
from pki.store import issuers as issuer_rows
from pki.x509.hierarchy import build_intermediate, ca_name, installation_tag
from pki.x509.issuance import LeafSigner
from pki.x509.keys import KeyType
from pki.x509.pem import Pem, load_certificate

# How long a process trusts the issuers it read before reading them again: the bound on how long
# a rotation made elsewhere (another worker, a replica, the CLI) takes to reach it.
ISSUERS_REFRESH = 2.0


class IssuingCAs(AuditTrail):
    """The root and the issuing CAs, re-read from the database every ``ISSUERS_REFRESH`` seconds
    and whenever one is asked for that is not known yet."""

    home: Home
    config: Config
    _passphrase: bytes | None
    _issuers: dict[int, Issuer] | None
    _issuers_read_at: float
    _root: x509.Certificate | None

    @property
    def passphrase(self) -> bytes:
        if self._passphrase is None:
            self._passphrase = self.home.passphrase(self.config)
        return self._passphrase

    @property
    def root_certificate(self) -> x509.Certificate:
        if self._root is None:
            try:
                self._root = load_certificate(self.home.root_cert_path.read_bytes(), what="root certificate")
            except OSError as exc:
                raise InvalidInput(f"cannot read the root certificate: {exc}") from exc
        return self._root

    def issuers(self) -> list[Issuer]:
        return list(self._issuers_by_id().values())

    def _issuers_by_id(self) -> dict[int, Issuer]:
        """The issuers as the database has them, re-read at most every ``ISSUERS_REFRESH``
        seconds: a rotation or retirement by another process (another worker, a replica, the CLI)
        reaches this one within that time, without a restart."""
        if self._issuers is None or time.monotonic() - self._issuers_read_at >= ISSUERS_REFRESH:
            self._read_issuers()
        assert self._issuers is not None
        return self._issuers

    def _read_issuers(self) -> None:
        """Read the issuers table; an issuer whose row did not change keeps its object (and so its
        loaded key and signer)."""
        with self.db.engine.connect() as conn:
            rows = issuer_rows.all_rows(conn)
        known = self._issuers or {}
        fresh: dict[int, Issuer] = {}
        for r in rows:
            kept = known.get(r.id)
            if kept is not None and kept.key_ref == r.key_ref and kept.key_type.value == r.key_type:
                kept.active = r.active
                fresh[r.id] = kept
            else:
                fresh[r.id] = Issuer(r.id, r.name, x509.load_der_x509_certificate(r.der), KeyType(r.key_type),
                                     r.key_ref, r.active)
        self._issuers, self._issuers_read_at = fresh, time.monotonic()

    def issuer(self, name: str | None = None) -> Issuer:
        """The active issuing CA, or the one named (one made since the last read is read now)."""
        found = self._find_issuer(name)
        if found is None:
            self._read_issuers()
            found = self._find_issuer(name)
        if found is not None:
            return found
        if name is None:
            raise NotFound("no active issuing CA: run 'rapki ca sign-intermediate'")
        known = ", ".join(i.name for i in self.issuers())
        raise NotFound(f"no issuing CA named {name!r} (known: {known})")

    def _find_issuer(self, name: str | None) -> Issuer | None:
        for candidate in self._issuers_by_id().values():
            if (name is None and candidate.active) or candidate.name == name:
                return candidate
        return None

    def _issuer_by_id(self, issuer_id: int) -> Issuer:
        """The issuer with this id; one made since the last read (a certificate of a CA another
        process just created) is read now."""
        found = self._issuers_by_id().get(issuer_id)
        if found is None:
            self._read_issuers()
            found = self._issuers_by_id().get(issuer_id)
        if found is None:
            raise NotFound(f"no issuing CA with id {issuer_id} in the database")
        return found

    def issuer_key(self, issuer: Issuer) -> CaKey:
        """``issuer``'s key, opened once (a file decrypted, a token logged in to, a KMS key
        described) and checked to be the key of its certificate."""
        if issuer.key is None:
            ref = parse_key_ref(issuer.key_ref)
            path = self.home.resolve(ref.path) if isinstance(ref, FileRef) else None
            if path is not None and not path.exists():  # a replica not given the key after a rotation
                raise IssuerKeyMissing(
                    f"the key of {issuer.name} is not on this host: copy {issuer.key_ref} from the home where "
                    f"'rapki ca sign-intermediate' made it to {path} (mode 0600)", str(path))
            issuer.key = self._open_ca_key(issuer.key_ref, issuer.certificate.public_key(), f"key of {issuer.name}")
        return issuer.key

    def _open_ca_key(self, ref: str | KeyRef, public_key: CertificatePublicKeyTypes, what: str) -> CaKey:
        key = open_key(ref, base_dir=self.home.path, passphrase=lambda: self.passphrase)
        if not _same_public_key(key.public_key(), public_key):
            raise InvalidInput(f"{key.describe()} is not the {what} (its public key differs from the certificate's)")
        return key

    def leaf_signer(self, issuer: Issuer) -> LeafSigner:
        """What signing ``issuer``'s leaves takes (its key loaded once), kept with the issuer."""
        if issuer.signer is None:
            issuer.signer = LeafSigner(issuer.certificate.subject, issuer.aki, signing_key(self.issuer_key(issuer)),
                                       issuer.key_type, self.config.distribution_url(issuer.name))
        return issuer.signer

    def chain(self) -> tuple[x509.Certificate, ...]:
        """What a leaf of the active issuer sends as ``X-Amz-X509-Chain``: the intermediates."""
        return (self.issuer().certificate,)

    def _create_issuer(self, root_key: CaKey, key_type: KeyType, cn: str, organization: str | None,
                       country: str | None, lifetime: timedelta, path_length: int,
                       placement: KeyRef | None = None, *, active: bool = True) -> Issuer:
        """A new issuing CA signed by ``root_key`` (the active one unless ``active`` is False), its
        key made where ``placement`` says (``pki.custody.refs.key_ref_for``: a file in the home by
        default)."""
        with self.db.engine.connect() as conn:
            number = issuer_rows.count(conn) + 1
        name = f"issuing-{number}"
        key = make_key(key_ref_for(placement, name), key_type, base_dir=self.home.path,
                       passphrase=lambda: self.passphrase, description=f"rapki {name} CA key")
        self._refuse_reused_key(key, root_key)
        cert = build_intermediate(
            key.public_key(), ca_name(cn, organization, country), issuer_cert=self.root_certificate,
            issuer_key=signing_key(root_key), lifetime=lifetime, path_length=path_length,
        )
        Pem.of_certificates([cert]).write_to_path(self.home.ca_dir / f"{name}.pem")
        with self.db.engine.begin() as conn:
            issuer_id = issuer_rows.add(
                conn, active=active, name=name, subject=cert.subject.rfc4514_string(),
                ski=cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex(),
                key_type=key.key_type.value, key_ref=str(key.ref), der=cert.public_bytes(Encoding.DER),
                not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                created_at=datetime.now(UTC),
            )
            crl_rows.start(conn, issuer_id)
        self._read_issuers()
        issuer = self._issuer_by_id(issuer_id)
        issuer.key = key
        return issuer

    def _refuse_reused_key(self, key: CaKey, root_key: CaKey) -> None:
        """An adopted key must be new to this CA: two CAs sharing a key would share revocation."""
        taken: list[tuple[str, CertificatePublicKeyTypes]] = [("the root", root_key.public_key())]
        taken += [(i.name, i.certificate.public_key()) for i in self.issuers()]
        for name, public_key in taken:
            if _same_public_key(key.public_key(), public_key):
                raise Conflict(f"{key.describe()} is already the key of {name}: a new CA needs a new key")

    def root_key(self, root_key_path: Path | None = None) -> CaKey:
        """The root's key: the file ``root_key_path`` (a root kept offline), else the key the
        configuration names (``[ca.root_key]``: a token or KMS key), else ``ca/root.key.pem``."""
        if root_key_path is not None:
            ref: KeyRef = FileRef(str(root_key_path.resolve()))
        elif self.config.root_key:
            ref = parse_key_ref(self.config.root_key)
        else:
            ref = FileRef(str(self.home.root_key_path.relative_to(self.home.path)))
        if isinstance(ref, FileRef) and not self.home.resolve(ref.path).is_file():
            raise InvalidInput(
                f"the root key is not at {self.home.resolve(ref.path)}: pass --root-key with the offline root key file"
            )
        return self._open_ca_key(ref, self.root_certificate.public_key(), "key of this home's root certificate")

    def sign_intermediate(self, *, root_key_path: Path | None = None, key_type: KeyType | None = None,
                          cn: str | None = None, lifetime: timedelta = timedelta(days=1095),
                          actor: str | None = None, activate: bool = True,
                          placement: KeyRef | None = None) -> Issuer:
        """Rotate: a new issuing CA signed by the root becomes active (with ``activate=False``, it
        is only made: ``activate_issuer`` switches once its key is on every replica). Older issuers
        keep signing CRLs for the certificates they issued until those expire. Its key is made
        where ``placement`` says, by default where the active issuing CA's key is (a new file, a
        new key pair on the same token, a new key in the same KMS region)."""
        root_key = self.root_key(root_key_path)
        current = self.issuers()
        if placement is None:
            active = next((i for i in current if i.active), None)
            placement = placement_of(parse_key_ref(active.key_ref)) if active is not None else None
        org_attrs = self.root_certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        country = self.root_certificate.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)
        issuer = self._create_issuer(
            root_key, key_type or self.config.key_type,
            cn or f"rapki Issuing CA {len(current) + 1} {installation_tag(self.root_certificate.public_key())}",
            str(org_attrs[0].value) if org_attrs else None, str(country[0].value) if country else None,
            lifetime, 0, placement, active=activate,
        )
        self.audit(actor or local_actor(), "ca.sign_intermediate", issuer.name,
                   {"subject": issuer.certificate.subject.rfc4514_string(), "active": activate,
                    "key": issuer.backend})
        return issuer

    def activate_issuer(self, name: str, *, actor: str | None = None) -> Issuer:
        """Make the issuing CA ``name`` the one that issues (the end of a staged rotation, or a
        step back to an older CA). Its key must load here first. Every server and replica follows
        within ``ISSUERS_REFRESH`` seconds."""
        issuer = self.issuer(name)
        if issuer.not_after <= datetime.now(UTC):
            raise InvalidInput(f"{name} expired on {issuer.not_after:%Y-%m-%d}: it cannot issue")
        self.issuer_key(issuer)
        with self.db.engine.begin() as conn:
            issuer_rows.activate(conn, issuer.id)
            self.audit_in(conn, actor or local_actor(), "ca.activate", issuer.name, {})
        self._read_issuers()
        return self.issuer(name)


def _same_public_key(one: CertificatePublicKeyTypes, other: CertificatePublicKeyTypes) -> bool:
    spki = PublicFormat.SubjectPublicKeyInfo
    return one.public_bytes(Encoding.DER, spki) == other.public_bytes(Encoding.DER, spki)
