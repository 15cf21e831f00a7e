"""``CertificateAuthority``: the whole CA behind one object.

    ca = CertificateAuthority.init("rapki-data")           # root + issuing CA, config, database
    ca.add_profile(Profile(name="web", cn_pattern=r"web-\\d+"))
    issued = ca.issue("web", cn="web-1")                    # key made here, or csr=...
    issued.write_to("out/")                                 # cert.pem, key.pem (0600), chain.pem
    ca.revoke(issued.serial_hex, reason="keyCompromise")
    crl = ca.build_crl()

Every certificate is checked against the Roles Anywhere rules (``pki.x509.preflight``) and committed to
the database before it is returned; a certificate that fails either never leaves this module.

The class is thin: it opens a home and inherits each concern from a module of its own, each
built on the one it needs (Flask's ``Scaffold`` -> ``App`` -> ``Flask`` the same way):

    _audit.AuditTrail          the audit log (every concern writes to it)
    _issuers.IssuingCAs        root, issuing CAs, their keys, ``sign_intermediate``
    _profiles.ProfileCatalog   certificate profiles
    _inventory.Inventory       certificates recorded: ``find``, ``list_certificates``
    _revocation.RevocationAndCrls   ``revoke``, CRLs built and kept current
    _issuance.Issuance         ``issue``, ``issue_server_certificate`` (the hot path)

Their SQL is in ``pki.store``; the values they return in ``pki.ca.values``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

from cryptography import x509

from pki.ca._audit import DEFAULT_ACTOR, AuditTrail, local_actor
from pki.ca._inventory import Inventory
from pki.ca._issuance import Issuance
from pki.ca._issuers import IssuingCAs
from pki.ca._profiles import ProfileCatalog
from pki.ca._revocation import RevocationAndCrls
from pki.ca.home import CONFIG_NAME, Config, Home, read_passphrase_file, systemd_credential
from pki.ca.values import CertificateRecord, InitOptions, IssuedCertificate, Issuer, Revocation
from pki.custody.keys import make_key, signing_key
from pki.custody.refs import FileRef, KeyRef, key_ref_for
from pki.errors import Conflict, DatabaseMissing, InvalidInput
from pki.store import Database
from pki.store import issuers as issuer_rows
from pki.store.db import sqlite_file, without_password
from pki.x509.hierarchy import build_root, ca_name, installation_tag
from pki.x509.pem import Pem
from pki.x509.profiles import Profile

_STAGING_PREFIX = ".init-"  # init's staging directory inside the home

__all__ = [
    "DEFAULT_ACTOR", "CertificateAuthority", "CertificateRecord", "InitOptions", "IssuedCertificate", "Issuer",
    "Revocation", "local_actor",
]


class CertificateAuthority(Issuance, RevocationAndCrls, Inventory, ProfileCatalog, IssuingCAs, AuditTrail):
    """A rapki home opened for work. Build with ``init`` (new) or ``open`` (existing)."""

    def __init__(self, home: Home, config: Config, db: Database) -> None:
        self.home = home
        self.config = config
        self.db = db
        self._passphrase: bytes | None = None
        self._issuers: dict[int, Issuer] | None = None
        self._issuers_read_at = 0.0
        self._root: x509.Certificate | None = None
        self._profile_cache: dict[str, tuple[float, Profile]] = {}

    @classmethod
    def open(cls, home_path: str | Path) -> CertificateAuthority:
        """Open an existing home. Its database must exist and hold the CA: a missing SQLite file,
        an unreachable server or an empty database is refused (never started afresh, which would
        look like a CA that lost every certificate)."""
        home = Home(Path(home_path))
        config = home.load_config()
        url = home.database_url(config)
        sqlite_path = sqlite_file(url)
        if sqlite_path is not None and not sqlite_path.is_file():
            raise DatabaseMissing(f"the database {sqlite_path} does not exist: restore it from a backup, or point "
                                  "RAPKI_DATABASE_URL or [database].url in rapki.toml at the CA's database")
        db = Database(url, sqlite_synchronous=config.sqlite_synchronous,
                      busy_timeout=config.busy_timeout.total_seconds())
        db.migrate(existing=True)
        return cls(home, config, db)

    @classmethod
    def init(cls, home_path: str | Path, options: InitOptions | None = None, *,
             passphrase: bytes | None = None, actor: str | None = None) -> CertificateAuthority:
        """Create a home: config, passphrase (unless given or found elsewhere), root and issuing
        CA, database.

        All or nothing for the directory: the home is built in a hidden staging directory inside
        it and moved into place when complete (``rapki.toml`` last, as that is what makes a
        home). A failure removes the staging directory, and the home directory too when this call
        created it; a staging directory left by a crash is removed by the next ``init``."""
        options = options or InitOptions()
        target = Path(home_path)
        if Home(target).exists():
            raise Conflict(f"{target} is already a rapki home: refusing to overwrite its CA")
        created = not target.exists()
        if not created and not target.is_dir():
            raise InvalidInput(f"{target} is a file, not a directory: choose an empty or new directory")
        if not created:
            for stale in target.glob(f"{_STAGING_PREFIX}*"):
                shutil.rmtree(stale, ignore_errors=True)
            if any(target.iterdir()):
                raise InvalidInput(f"{target} exists and is not empty: choose an empty or new directory")
        try:
            target.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file on the way, no permission: the --home given cannot be used
            raise InvalidInput(f"{target}: the home directory cannot be made ({exc.strerror})") from None
        target.chmod(0o700)
        staging = Path(tempfile.mkdtemp(prefix=_STAGING_PREFIX, dir=target))
        offline_key = options.offline_root_key_out
        offline_key_existed = offline_key is not None and offline_key.exists()
        try:
            staged = cls._build(Home(staging), options, passphrase, actor)
            staged.db.dispose()
            for entry in sorted(staging.iterdir(), key=lambda p: p.name == CONFIG_NAME):
                entry.rename(target / entry.name)
            staging.rmdir()
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            if created:
                shutil.rmtree(target, ignore_errors=True)
            if offline_key is not None and not offline_key_existed:
                offline_key.unlink(missing_ok=True)
            raise
        home = Home(target)
        ca = cls(home, staged.config, Database(home.database_url(staged.config),
                                               sqlite_synchronous=staged.config.sqlite_synchronous))
        ca._passphrase, ca._root = staged._passphrase, staged._root
        return ca

    @classmethod
    def _build(cls, home: Home, options: InitOptions, passphrase: bytes | None,
               actor: str | None) -> CertificateAuthority:
        """``init``'s work, in the (staging) directory ``home``."""
        passphrase_file = ""
        if passphrase is None:
            if options.passphrase_file is not None:
                passphrase = read_passphrase_file(options.passphrase_file)
                passphrase_file = str(options.passphrase_file.resolve())
            else:
                credential = systemd_credential()
                if credential is not None:
                    passphrase = credential
                else:
                    passphrase, passphrase_file = home.create_passphrase_file(), "passphrase"
        database_url = options.database_url or os.environ.get("RAPKI_DATABASE_URL", "")
        config = Config(
            key_type=options.key_type, serial_bytes=options.serial_bytes,
            database_url=without_password(database_url) if database_url else "", passphrase_file=passphrase_file,
        )
        db = Database(home.database_url(config), sqlite_synchronous=config.sqlite_synchronous,
                      busy_timeout=config.busy_timeout.total_seconds())
        try:
            db.migrate()
            with db.engine.connect() as conn:
                if issuer_rows.count(conn):
                    raise Conflict("the database already holds a CA: point RAPKI_DATABASE_URL at an empty one")
        except BaseException:
            db.dispose()
            raise
        ca = cls(home, config, db)
        ca._passphrase = passphrase
        if options.offline_root_key_out is not None:
            root_ref: KeyRef = FileRef(str(options.offline_root_key_out.resolve()))
        else:
            root_ref = key_ref_for(options.root_key_placement, "root")
        root_key = make_key(root_ref, options.key_type, base_dir=home.path, passphrase=passphrase,
                            description="rapki root CA key")
        tag = installation_tag(root_key.public_key())
        root = build_root(
            signing_key(root_key), ca_name(options.root_cn or f"rapki Root CA {tag}", options.organization,
                                           options.country),
            lifetime=options.root_lifetime, path_length=options.root_path_length,
        )
        Pem.of_certificates([root]).write_to_path(home.root_cert_path)
        if not isinstance(root_key.ref, FileRef):
            config = replace(config, root_key=str(root_key.ref))
            ca.config = config
        ca._root = root
        ca._create_issuer(root_key, options.key_type, options.issuing_cn or f"rapki Issuing CA 1 {tag}",
                          options.organization,
                          options.country, options.issuing_lifetime, options.issuing_path_length,
                          options.issuing_key_placement)
        home.save_config(config)  # last: a home without config is not a home, so a failed init can be retried
        ca.audit(actor or local_actor(), "ca.init", root.subject.rfc4514_string(),
                 {"key_type": options.key_type.value, "offline_root": options.offline_root_key_out is not None,
                  "root_key": root_key.ref.backend, "issuing_key": ca.issuer().backend})
        return ca
