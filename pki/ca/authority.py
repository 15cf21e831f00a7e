"""``CertificateAuthority``: the whole CA behind one object.

    ca = CertificateAuthority.init("rapki-data")           # root + issuing CA, config, database
    ca.add_profile(Profile(name="web", cn_pattern=r"web-\\d+"))
    issued = ca.issue("web", cn="web-1")                    # key made here, or csr=...
    issued.write_to("out/")                                 # cert.pem, key.pem (0600), chain.pem
    ca.revoke(issued.serial_hex, reason="keyCompromise")
    crl = ca.build_crl()

Every certificate is checked against the Roles Anywhere rules (``pki.x509.preflight``) and committed to
the database before it is returned; a certificate that fails either never leaves this module.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID
from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection, Row
from sqlalchemy.exc import IntegrityError

from pki.ca.home import Config, Home
from pki.errors import Conflict, InvalidInput, NotFound, PolicyViolation, RapkiError
from pki.store import Database
from pki.store.schema import audit_log, certificates, crl_state, issuers, profiles
from pki.store.statements import PreparedInsert, PreparedStatement, Transaction
from pki.x509.crl import BuiltCrl, RevokedEntry, build_crl, check_size, parse_reason
from pki.x509.hierarchy import build_intermediate, build_root, ca_name
from pki.x509.issuance import (
    BACKDATE,
    LeafSigner,
    LeafSpec,
    SubjectAltNames,
    VerifiedCsr,
    build_leaf,
    leaf_extensions,
    leaf_subject_text,
    load_csr,
    read_csr,
)
from pki.x509.keys import (
    KeyType,
    PrivateKey,
    PublicKey,
    load_private_key,
    private_key_pem,
    public_key_matches,
)
from pki.x509.pem import Pem, load_certificate
from pki.x509.preflight import leaf_content_problems
from pki.x509.profiles import Profile
from pki.x509.serials import parse_serial, random_serial, serial_hex

DEFAULT_ACTOR = "cli"

# Statements on the issuance path are built once: values go in as parameters, so SQLAlchemy reuses
# the compiled form instead of coercing literals and computing a cache key on every call.
_INSERT_AUDIT = insert(audit_log)
_SELECT_PROFILE = select(profiles.c.spec).where(profiles.c.name == bindparam("name"))
_INSERT_CERTIFICATE_ROW = PreparedInsert(certificates)  # the issuance path's rows (pki.store.statements)
_INSERT_AUDIT_ROW = PreparedInsert(audit_log)
_MARK_SUPERSEDED = PreparedStatement(
    update(certificates).where(certificates.c.serial == bindparam("old_serial"))
    .values(superseded_by=bindparam("new_serial")),
    {"old_serial": certificates.c.serial, "new_serial": certificates.c.superseded_by})


def _server_san(name: str) -> str:
    """``ip:`` for an address, ``dns:`` for a host name."""
    import ipaddress

    try:
        return f"ip:{ipaddress.ip_address(name)}"
    except ValueError:
        return f"dns:{name}"


@functools.cache
def local_actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in some containers
        return DEFAULT_ACTOR


_SHORTEST_LIFETIME = timedelta(minutes=5)


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


def _utc(value: datetime) -> datetime:
    """SQLite returns naive datetimes; everything in rapki is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@dataclass
class Issuer:
    """An issuing CA: its certificate, its key reference and (once loaded) its key."""

    id: int
    name: str
    certificate: x509.Certificate
    key_type: KeyType
    key_ref: str
    active: bool
    key: PrivateKey | None = None
    aki: x509.AuthorityKeyIdentifier = field(init=False)
    not_after: datetime = field(init=False)
    signer: LeafSigner | None = field(default=None, init=False, repr=False)  # once the key is loaded

    def __post_init__(self) -> None:
        ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
        self.not_after = self.certificate.not_valid_after_utc


class IssuedCertificate(NamedTuple):
    """A new certificate, its chain (the intermediates: ``X-Amz-X509-Chain``) and, when made here,
    its private key. (A NamedTuple: one is made per certificate, at a fifth of a frozen
    dataclass's cost.)"""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    profile: str
    subject: str  # as RFC 4514 text (known from issuance, not parsed back)
    der: bytes  # the certificate as recorded (known from issuance, not encoded again)
    private_key: PrivateKey | None = None

    @property
    def serial_hex(self) -> str:
        return serial_hex(self.certificate.serial_number)

    @property
    def cert_pem(self) -> Pem:
        return Pem.of_certificate_der(self.der)

    @property
    def chain_pem(self) -> Pem:
        return Pem.of_certificates(self.chain)

    @property
    def key_pem(self) -> Pem | None:
        return Pem(private_key_pem(self.private_key)) if self.private_key is not None else None

    def write_to(self, directory: Path) -> dict[str, Path]:
        directory = Path(directory)
        written = {
            "certificate": self.cert_pem.write_to_path(directory / "cert.pem"),
            "chain": self.chain_pem.write_to_path(directory / "chain.pem"),
        }
        if (key := self.key_pem) is not None:
            written["private_key"] = key.write_to_path(directory / "key.pem", secret=True)
        return written


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    issuer: str
    subject: str
    common_name: str
    sans: list[str]
    profile: str
    key_type: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None
    revocation_reason: str | None
    superseded_by: str | None
    fingerprint: str
    der: bytes

    def status(self, now: datetime | None = None) -> str:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.not_after <= now:
            return "expired"
        if self.superseded_by:
            return "superseded"
        return "active"

    @property
    def certificate(self) -> x509.Certificate:
        return x509.load_der_x509_certificate(self.der)

    def to_dict(self) -> dict[str, Any]:
        return {
            "serial": self.serial,
            "issuer": self.issuer,
            "subject": self.subject,
            "common_name": self.common_name,
            "sans": self.sans,
            "profile": self.profile,
            "key_type": self.key_type,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "status": self.status(),
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
            "revocation_reason": self.revocation_reason,
            "superseded_by": self.superseded_by,
            "fingerprint_sha256": self.fingerprint,
        }


@dataclass(frozen=True)
class Revocation:
    record: CertificateRecord
    already_revoked: bool


@dataclass(frozen=True)
class InitOptions:
    key_type: KeyType = KeyType.EC_P256
    organization: str | None = "rapki"
    country: str | None = None
    root_cn: str = "rapki Root CA"
    issuing_cn: str = "rapki Issuing CA 1"
    root_lifetime: timedelta = timedelta(days=3650)
    issuing_lifetime: timedelta = timedelta(days=1095)
    root_path_length: int = 1
    issuing_path_length: int = 0
    offline_root_key_out: Path | None = None
    passphrase_file: Path | None = None
    serial_bytes: int = 16
    database_url: str = ""


class CertificateAuthority:
    """A rapki home opened for work. Build with ``init`` (new) or ``open`` (existing)."""

    def __init__(self, home: Home, config: Config, db: Database) -> None:
        self.home = home
        self.config = config
        self.db = db
        self._passphrase: bytes | None = None
        self._issuers: dict[int, Issuer] | None = None
        self._root: x509.Certificate | None = None
        self._profile_cache: dict[str, tuple[float, Profile]] = {}

    # --- opening ------------------------------------------------------------------------------
    @classmethod
    def open(cls, home_path: str | Path) -> CertificateAuthority:
        home = Home(Path(home_path))
        config = home.load_config()
        db = Database(home.database_url(config), sqlite_synchronous=config.sqlite_synchronous)
        db.migrate()
        return cls(home, config, db)

    @classmethod
    def init(cls, home_path: str | Path, options: InitOptions | None = None, *,
             passphrase: bytes | None = None, actor: str | None = None) -> CertificateAuthority:
        """Create a home: config, passphrase (unless given), root and issuing CA, database."""
        options = options or InitOptions()
        home = Home(Path(home_path))
        if home.exists():
            raise Conflict(f"{home.path} is already a rapki home: refusing to overwrite its CA")
        if home.path.exists() and any(home.path.iterdir()):
            raise InvalidInput(f"{home.path} exists and is not empty: choose an empty or new directory")
        home.path.mkdir(parents=True, exist_ok=True)
        home.path.chmod(0o700)
        passphrase_file = ""
        if passphrase is None:
            if options.passphrase_file is not None:
                from pki.ca.home import read_passphrase_file

                passphrase = read_passphrase_file(options.passphrase_file)
                passphrase_file = str(options.passphrase_file.resolve())
            else:
                passphrase = home.create_passphrase_file()
                passphrase_file = "passphrase"
        config = Config(
            key_type=options.key_type, serial_bytes=options.serial_bytes,
            database_url=options.database_url, passphrase_file=passphrase_file,
        )
        db = Database(home.database_url(config), sqlite_synchronous=config.sqlite_synchronous)
        db.migrate()
        with db.engine.connect() as conn:
            if conn.execute(select(func.count()).select_from(issuers)).scalar():
                raise Conflict("the database already holds a CA: point RAPKI_DATABASE_URL at an empty one")
        ca = cls(home, config, db)
        ca._passphrase = passphrase
        root_key = options.key_type.generate()
        root = build_root(
            root_key, ca_name(options.root_cn, options.organization, options.country),
            lifetime=options.root_lifetime, path_length=options.root_path_length,
        )
        Pem.of_certificates([root]).write_to_path(home.root_cert_path)
        root_key_path = options.offline_root_key_out or home.root_key_path
        Pem(private_key_pem(root_key, passphrase)).write_to_path(root_key_path, secret=True)
        ca._root = root
        ca._create_issuer(root_key, options.key_type, options.issuing_cn, options.organization,
                          options.country, options.issuing_lifetime, options.issuing_path_length)
        home.save_config(config)  # last: a home without config is not a home, so a failed init can be retried
        ca.audit(actor or local_actor(), "ca.init", root.subject.rfc4514_string(),
                 {"key_type": options.key_type.value, "offline_root": options.offline_root_key_out is not None})
        return ca

    # --- CA material --------------------------------------------------------------------------
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
        if self._issuers is None:
            with self.db.engine.connect() as conn:
                rows = conn.execute(select(issuers).order_by(issuers.c.id)).all()
            self._issuers = {
                r.id: Issuer(r.id, r.name, x509.load_der_x509_certificate(r.der), KeyType(r.key_type),
                             r.key_ref, r.active)
                for r in rows
            }
        return self._issuers

    def issuer(self, name: str | None = None) -> Issuer:
        """The active issuing CA, or the one named."""
        for candidate in self._issuers_by_id().values():
            if (name is None and candidate.active) or candidate.name == name:
                return candidate
        if name is None:
            raise NotFound("no active issuing CA: run 'rapki ca sign-intermediate'")
        known = ", ".join(i.name for i in self.issuers())
        raise NotFound(f"no issuing CA named {name!r} (known: {known})")

    def _issuer_by_id(self, issuer_id: int) -> Issuer:
        return self._issuers_by_id()[issuer_id]

    def issuer_key(self, issuer: Issuer) -> PrivateKey:
        if issuer.key is None:
            path = self.home.resolve(issuer.key_ref)
            try:
                data = path.read_bytes()
            except OSError as exc:
                raise InvalidInput(f"cannot read the key of {issuer.name} at {path}: {exc.strerror}") from exc
            key = load_private_key(data, self.passphrase, what=f"key of {issuer.name}")
            if not public_key_matches(key, issuer.certificate.public_key()):  # type: ignore[arg-type]
                raise InvalidInput(f"{path} does not hold the key of {issuer.name}'s certificate")
            issuer.key = key
        return issuer.key

    def leaf_signer(self, issuer: Issuer) -> LeafSigner:
        """What signing ``issuer``'s leaves takes (its key loaded once), kept with the issuer."""
        if issuer.signer is None:
            issuer.signer = LeafSigner(issuer.certificate.subject, issuer.aki, self.issuer_key(issuer), issuer.key_type)
        return issuer.signer

    def chain(self) -> tuple[x509.Certificate, ...]:
        """What a leaf of the active issuer sends as ``X-Amz-X509-Chain``: the intermediates."""
        return (self.issuer().certificate,)

    def _create_issuer(self, root_key: PrivateKey, key_type: KeyType, cn: str, organization: str | None,
                       country: str | None, lifetime: timedelta, path_length: int) -> Issuer:
        with self.db.engine.connect() as conn:
            number = (conn.execute(select(func.count()).select_from(issuers)).scalar() or 0) + 1
        name = f"issuing-{number}"
        key = key_type.generate()
        cert = build_intermediate(
            key, ca_name(cn, organization, country), issuer_cert=self.root_certificate,
            issuer_key=root_key, lifetime=lifetime, path_length=path_length,
        )
        key_ref = f"ca/{name}.key.pem"
        Pem(private_key_pem(key, self.passphrase)).write_to_path(self.home.resolve(key_ref), secret=True)
        Pem.of_certificates([cert]).write_to_path(self.home.ca_dir / f"{name}.pem")
        from cryptography.hazmat.primitives import serialization

        now = datetime.now(UTC)
        with self.db.engine.begin() as conn:
            conn.execute(update(issuers).values(active=False))
            issuer_id = conn.execute(
                insert(issuers).values(
                    name=name, subject=cert.subject.rfc4514_string(),
                    ski=cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest.hex(),
                    key_type=key_type.value, key_ref=key_ref,
                    der=cert.public_bytes(serialization.Encoding.DER),
                    not_before=cert.not_valid_before_utc, not_after=cert.not_valid_after_utc,
                    active=True, created_at=now,
                )
            ).inserted_primary_key[0]
            conn.execute(insert(crl_state).values(issuer_id=issuer_id, crl_number=0, entries=0))
        self._issuers = None
        issuer = self._issuer_by_id(issuer_id)
        issuer.key = key
        return issuer

    def sign_intermediate(self, *, root_key_path: Path | None = None, key_type: KeyType | None = None,
                          cn: str | None = None, lifetime: timedelta = timedelta(days=1095),
                          actor: str | None = None) -> Issuer:
        """Rotate: a new issuing CA signed by the root becomes active. Older issuers keep signing
        CRLs for the certificates they issued until those expire."""
        path = root_key_path or self.home.root_key_path
        if not path.is_file():
            raise InvalidInput(
                f"the root key is not at {path}: pass --root-key with the offline root key file"
            )
        root_key = load_private_key(path.read_bytes(), self.passphrase, what="root key")
        if not public_key_matches(root_key, self.root_certificate.public_key()):  # type: ignore[arg-type]
            raise InvalidInput(f"{path} is not the key of this home's root certificate")
        current = self.issuers()
        org_attrs = self.root_certificate.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
        country = self.root_certificate.subject.get_attributes_for_oid(x509.NameOID.COUNTRY_NAME)
        issuer = self._create_issuer(
            root_key, key_type or self.config.key_type, cn or f"rapki Issuing CA {len(current) + 1}",
            str(org_attrs[0].value) if org_attrs else None, str(country[0].value) if country else None,
            lifetime, 0,
        )
        self.audit(actor or local_actor(), "ca.sign_intermediate", issuer.name,
                   {"subject": issuer.certificate.subject.rfc4514_string()})
        return issuer

    # --- profiles -----------------------------------------------------------------------------
    def add_profile(self, profile: Profile, *, replace: bool = False, actor: str | None = None) -> Profile:
        self._profile_cache.clear()
        now = datetime.now(UTC)
        with self.db.engine.begin() as conn:
            exists = conn.execute(select(profiles.c.name).where(profiles.c.name == profile.name)).first()
            if exists and not replace:
                raise Conflict(f"profile {profile.name!r} exists: use 'rapki profile update' or remove it first")
            if exists:
                conn.execute(update(profiles).where(profiles.c.name == profile.name)
                             .values(spec=profile.to_dict(), updated_at=now))
            else:
                conn.execute(insert(profiles).values(name=profile.name, spec=profile.to_dict(),
                                                     created_at=now, updated_at=now))
            self._audit(conn, actor, "profile.update" if exists else "profile.add", profile.name,
                        profile.to_dict())
        return profile

    PROFILE_CACHE_SECONDS = 2.0

    def profile(self, name: str) -> Profile:
        """The profile named ``name``. A long-running process sees changes made elsewhere (another
        worker, the CLI) within ``PROFILE_CACHE_SECONDS``; changes made through this object at once."""
        cached = self._profile_cache.get(name)
        now = time.monotonic()
        if cached is not None and now - cached[0] < self.PROFILE_CACHE_SECONDS:
            return cached[1]
        with self.db.engine.connect() as conn:
            found = self._profile(conn, name)
        self._profile_cache[name] = (now, found)
        return found

    @staticmethod
    def _profile(conn: Connection, name: str) -> Profile:
        spec = conn.execute(_SELECT_PROFILE, {"name": name}).scalar()
        if spec is None:
            raise NotFound(f"unknown profile {name!r}: see 'rapki profile list'")
        return Profile.from_dict(spec)

    def profiles(self) -> list[Profile]:
        with self.db.engine.connect() as conn:
            rows = conn.execute(select(profiles.c.spec).order_by(profiles.c.name)).scalars().all()
        return [Profile.from_dict(spec) for spec in rows]

    def remove_profile(self, name: str, *, actor: str | None = None) -> None:
        self._profile_cache.clear()
        with self.db.engine.begin() as conn:
            self._profile(conn, name)
            conn.execute(profiles.delete().where(profiles.c.name == name))
            self._audit(conn, actor, "profile.remove", name, None)

    # --- issuance -----------------------------------------------------------------------------
    def issue(self, profile: str | Profile, *, cn: str | None = None, sans: Sequence[str] = (),
              csr: bytes | x509.CertificateSigningRequest | VerifiedCsr | None = None,
              key_type: KeyType | str | None = None, ttl: timedelta | None = None, actor: str | None = None,
              supersedes: str | None = None,
              within: Callable[[Transaction], None] | None = None) -> IssuedCertificate:
        """Issue a workload certificate under ``profile``.

        With ``csr`` the CSR's key and names are used (and must fit the profile); otherwise a key
        of ``key_type`` (default: the profile's first) is made here and returned with the result.
        ``within(tx)`` runs inside the transaction that records the certificate (e.g. redeeming
        an enrollment token): if it raises, nothing is recorded and the error propagates.
        """
        prof = profile if isinstance(profile, Profile) else self.profile(profile)
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
        if requested_sans.ip:
            raise PolicyViolation("IP SANs are not issued to workloads: use dns: or uri: names")
        lifetime = prof.ttl(ttl)
        if csr is None:
            private_key = kt.generate()
            public_key = private_key.public_key()
        issuer = self.issuer()
        signer = self.leaf_signer(issuer)
        now = _whole_second_now()  # what the certificate holds
        not_after = min(now + lifetime, issuer.not_after)
        if not_after <= now + _SHORTEST_LIFETIME:
            raise PolicyViolation(f"{issuer.name} expires at {issuer.not_after:%Y-%m-%d %H:%M}Z: rotate it "
                                  "with 'rapki ca sign-intermediate'")
        for _attempt in range(5):
            spec = LeafSpec(cn, requested_sans, public_key, random_serial(self.config.serial_bytes),
                            now - BACKDATE, not_after)
            extensions = leaf_extensions(spec, signer)
            problems = leaf_content_problems(spec.serial, signer.hash, public_key, cn, extensions)
            if problems:  # a bug or a profile that lets through what Roles Anywhere refuses
                raise PolicyViolation("the certificate would be refused by Roles Anywhere: " + "; ".join(problems))
            cert = build_leaf(spec, signer, extensions)
            try:
                der = self._record(cert, spec, now, issuer, prof.name, kt, actor, supersedes, within)
            except IntegrityError:
                continue  # serial collision: draw again
            return IssuedCertificate(cert, (issuer.certificate,), prof.name, leaf_subject_text(cn), der, private_key)
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
            try:
                der = self._record(cert, spec, now, issuer, self.SERVER_PROFILE, KeyType.EC_P256, actor, None)
            except IntegrityError:
                continue
            return IssuedCertificate(cert, (issuer.certificate,), self.SERVER_PROFILE, leaf_subject_text(names[0]),
                                     der, key)
        raise RapkiError("could not draw a unique serial in 5 attempts: raise [ca].serial_bytes")

    def _record(self, cert: x509.Certificate, spec: LeafSpec, now: datetime, issuer: Issuer, profile: str,
                key_type: KeyType, actor: str | None, supersedes: str | None,
                within: Callable[[Transaction], None] | None = None) -> bytes:
        """The certificate row and its audit row, committed together (with ``within``'s writes);
        returns the DER recorded.
        Column values come from ``spec``, which the certificate was built from, rather than from
        parsing the new certificate back; ``now`` (created_at, the audit time) is the moment its
        validity was computed from, in whole seconds like the validity itself."""
        der = cert.public_bytes(Encoding.DER)
        serial = serial_hex(spec.serial)
        cn = spec.common_name
        # Both rows are converted for the driver before the transaction: what runs under the
        # writer lock (which the other workers queue on) is only SQL.
        dialect = self.db.engine.dialect
        certificate_row = _INSERT_CERTIFICATE_ROW.bind(dialect, {
            "issuer_id": issuer.id, "serial": serial, "subject": leaf_subject_text(cn),
            "common_name": cn, "sans": spec.sans.as_list(), "profile": profile, "key_type": key_type.value,
            "not_before": spec.not_before, "not_after": spec.not_after,
            "fingerprint": hashlib.sha256(der).hexdigest(), "der": der, "created_at": now,
            "revoked_at": None, "revocation_reason": None, "superseded_by": None,
        })
        audit_row = _INSERT_AUDIT_ROW.bind(dialect, {
            "at": now, "actor": actor or local_actor(),
            "action": "certificate.renew" if supersedes else "certificate.issue", "target": serial,
            "details": {"cn": cn, "profile": profile, "issuer": issuer.name, "supersedes": supersedes},
        })
        with self.db.write() as tx:
            if within is not None:
                within(tx)
            tx.insert(certificate_row)
            if supersedes:
                tx.run(_MARK_SUPERSEDED, {"old_serial": supersedes, "new_serial": serial})
            tx.insert(audit_row)
        return der

    # --- inventory ----------------------------------------------------------------------------
    def _to_record(self, row: Row[Any]) -> CertificateRecord:
        return CertificateRecord(
            serial=row.serial, issuer=self._issuer_by_id(row.issuer_id).name, subject=row.subject,
            common_name=row.common_name, sans=list(row.sans), profile=row.profile, key_type=row.key_type,
            not_before=_utc(row.not_before), not_after=_utc(row.not_after),
            revoked_at=_utc(row.revoked_at) if row.revoked_at else None,
            revocation_reason=row.revocation_reason, superseded_by=row.superseded_by,
            fingerprint=row.fingerprint, der=row.der,
        )

    def find(self, serial: str | int) -> CertificateRecord:
        with self.db.engine.connect() as conn:
            return self._to_record(self._find_row(conn, serial))

    def _find_row(self, conn: Connection, serial: str | int) -> Row[Any]:
        candidates = [serial] if isinstance(serial, int) else parse_serial(serial)
        for candidate in candidates:
            rows = conn.execute(select(certificates).where(certificates.c.serial == serial_hex(candidate))).all()
            if len(rows) > 1:
                raise InvalidInput(f"serial {serial} exists under several issuing CAs: use the fingerprint")
            if rows:
                return rows[0]
        raise NotFound(f"no certificate with serial {serial}: see 'rapki list'")

    def list(self, *, status: str | None = None, profile: str | None = None,
             expiring_within: timedelta | None = None, limit: int | None = None) -> list[CertificateRecord]:
        now = datetime.now(UTC)
        query = select(certificates).order_by(certificates.c.id)
        if profile:
            query = query.where(certificates.c.profile == profile)
        if status == "revoked":
            query = query.where(certificates.c.revoked_at.is_not(None))
        elif status == "expired":
            query = query.where(and_(certificates.c.revoked_at.is_(None), certificates.c.not_after <= now))
        elif status == "active":
            query = query.where(and_(certificates.c.revoked_at.is_(None), certificates.c.not_after > now))
        elif status is not None:
            raise InvalidInput(f"unknown status {status!r}: use active, revoked or expired")
        if expiring_within is not None:
            query = query.where(and_(certificates.c.not_after > now,
                                     certificates.c.not_after <= now + expiring_within))
        if limit:
            query = query.limit(limit)
        with self.db.engine.connect() as conn:
            return [self._to_record(row) for row in conn.execute(query)]

    # --- revocation ---------------------------------------------------------------------------
    def revoke(self, serial: str | int, *, reason: str | x509.ReasonFlags | None = None,
               actor: str | None = None) -> Revocation:
        """Revoke by serial. Revoking twice changes nothing and says so (``already_revoked``)."""
        flag = reason if isinstance(reason, x509.ReasonFlags) else parse_reason(reason)
        now = datetime.now(UTC)
        with self.db.engine.begin() as conn:
            row = self._find_row(conn, serial)
            if row.revoked_at is not None:
                return Revocation(self._to_record(row), already_revoked=True)
            changed = conn.execute(
                update(certificates)
                .where(and_(certificates.c.id == row.id, certificates.c.revoked_at.is_(None)))
                .values(revoked_at=now, revocation_reason=flag.value)
            ).rowcount
            if not changed:  # a concurrent revoke won the race
                row = conn.execute(select(certificates).where(certificates.c.id == row.id)).one()
                return Revocation(self._to_record(row), already_revoked=True)
            self._audit(conn, actor, "certificate.revoke", row.serial, {"reason": flag.value})
            row = conn.execute(select(certificates).where(certificates.c.id == row.id)).one()
        return Revocation(self._to_record(row), already_revoked=False)

    # --- CRLs ---------------------------------------------------------------------------------
    def revoked_entries(self, conn: Connection, issuer: Issuer, now: datetime) -> list[RevokedEntry]:
        """Revoked and unexpired certificates of ``issuer`` (RFC 5280 lets expired entries go)."""
        rows = conn.execute(
            select(certificates.c.serial, certificates.c.revoked_at, certificates.c.revocation_reason)
            .where(and_(certificates.c.issuer_id == issuer.id, certificates.c.revoked_at.is_not(None),
                        certificates.c.not_after > now))
        )
        reasons = {r.value: r for r in x509.ReasonFlags}
        return [RevokedEntry(int(s, 16), _utc(at), reasons[reason]) for s, at, reason in rows]

    def build_crl(self, issuer: str | None = None, *, validity: timedelta | None = None,
                  actor: str | None = None) -> BuiltCrl:
        """Sign a new CRL with the next CRLNumber (strictly increasing, never reused: the number is
        taken and the CRL recorded in one transaction, which concurrent builders serialise on)."""
        target = self.issuer(issuer)
        key = self.issuer_key(target)
        validity = validity or self.config.crl_validity
        with self.db.engine.begin() as conn:
            number = conn.execute(
                update(crl_state).where(crl_state.c.issuer_id == target.id)
                .values(crl_number=crl_state.c.crl_number + 1).returning(crl_state.c.crl_number)
            ).scalar_one()
            now = datetime.now(UTC).replace(microsecond=0)
            entries = self.revoked_entries(conn, target, now)
            next_update = min(now + validity, target.not_after)
            built = build_crl(entries, issuer_cert=target.certificate, issuer_key=key, number=number,
                              this_update=now, next_update=next_update)
            check_size(built)  # raises before anything is recorded: the number is not consumed
            conn.execute(update(crl_state).where(crl_state.c.issuer_id == target.id).values(
                this_update=now, next_update=next_update, entries=built.entries, der=built.der))
            self._audit(conn, actor, "crl.build", target.name, {"crl_number": number, "entries": built.entries})
        return built

    def current_crl(self, issuer: str | None = None, *, republish_before: timedelta | None = None,
                    build: bool = True, actor: str | None = None) -> BuiltCrl | None:
        """The last CRL built for ``issuer`` while it is still current, else a new one.

        Current means: it lists exactly the revoked, unexpired certificates of the issuer today
        and its nextUpdate is more than ``republish_before`` (default ``[crl].republish_before``)
        away. A publisher run from cron calls this every few minutes; building each time would burn
        a CRLNumber per run and make every run a write to Roles Anywhere. With ``build=False`` a
        stale CRL gives None instead of a new one (dry runs change nothing).
        """
        target = self.issuer(issuer)
        margin = self.config.crl_republish_before if republish_before is None else republish_before
        now = datetime.now(UTC)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(crl_state).where(crl_state.c.issuer_id == target.id)).one()
            if row.der is not None and row.next_update is not None and _utc(row.next_update) - now > margin:
                stored = x509.load_der_x509_crl(row.der)
                listed = {entry.serial_number for entry in stored}
                wanted = {entry.serial for entry in self.revoked_entries(conn, target, now)}
                if listed == wanted:
                    return BuiltCrl(crl=stored, number=row.crl_number, entries=len(listed))
        return self.build_crl(target.name, actor=actor) if build else None

    def crl_state(self, issuer: str | None = None) -> dict[str, Any]:
        target = self.issuer(issuer)
        with self.db.engine.connect() as conn:
            row = conn.execute(select(crl_state).where(crl_state.c.issuer_id == target.id)).one()
        return {
            "issuer": target.name, "crl_number": row.crl_number,
            "this_update": _utc(row.this_update) if row.this_update else None,
            "next_update": _utc(row.next_update) if row.next_update else None,
            "entries": row.entries, "der": row.der,
        }

    # --- audit --------------------------------------------------------------------------------
    def audit(self, actor: str | None, action: str, target: str, details: dict[str, Any] | None = None) -> None:
        with self.db.engine.begin() as conn:
            self._audit(conn, actor, action, target, details)

    @staticmethod
    def _audit(conn: Connection, actor: str | None, action: str, target: str,
               details: dict[str, Any] | None) -> None:
        conn.execute(_INSERT_AUDIT, {"at": datetime.now(UTC), "actor": actor or local_actor(),
                                     "action": action, "target": target, "details": details})

    def audit_entries(self, limit: int = 100, *, action: str | None = None, actor: str | None = None,
                      target: str | None = None, since: datetime | None = None) -> list[dict[str, Any]]:
        """The newest audit entries first. ``action``: exact (``certificate.issue``) or a prefix
        ending in a dot (``certificate.``); ``actor``: a part of it (``enrollment-token:``);
        ``target``: exact (a serial, token id, issuer or profile name); ``since``: not older."""
        if not 1 <= limit <= 100_000:
            raise InvalidInput("the audit limit must be between 1 and 100000")
        query = select(audit_log).order_by(audit_log.c.id.desc()).limit(limit)
        if action:
            query = query.where(audit_log.c.action.startswith(action, autoescape=True) if action.endswith(".")
                                else audit_log.c.action == action)
        if actor:
            query = query.where(audit_log.c.actor.contains(actor, autoescape=True))
        if target:
            query = query.where(audit_log.c.target == target)
        if since is not None:
            query = query.where(audit_log.c.at >= since)
        with self.db.engine.connect() as conn:
            rows = conn.execute(query).all()
        return [{"at": _utc(r.at).isoformat(), "actor": r.actor, "action": r.action, "target": r.target,
                 "details": r.details} for r in rows]
