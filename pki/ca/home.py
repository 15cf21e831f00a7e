"""The rapki home directory: its layout, its TOML config and the CA passphrase.

Layout (all paths relative to the home)::

    rapki.toml          config (this module)
    passphrase          0600, generated at init unless $RAPKI_PASSPHRASE, --passphrase-file or the
                        systemd credential rapki-passphrase is used (production keeps it elsewhere)
    rapki.db            SQLite database (unless $RAPKI_DATABASE_URL / [database].url points elsewhere)
    ca/root.pem         root certificate
    ca/root.key.pem     root key, encrypted PKCS#8 (absent with --offline-root, or when [ca.root_key]
                        names a key on a PKCS#11 token or in KMS)
    ca/issuing-N.pem    issuing CA certificates; ca/issuing-N.key.pem their encrypted keys (file keys)

Precedence: the environment variable where a setting has one (README's table), then ``rapki.toml``,
then the built-in default.
"""

from __future__ import annotations

import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import tomli_w

from pki.custody.refs import parse_key_ref
from pki.errors import InvalidInput, NotARapkiHome
from pki.files import atomic_write
from pki.x509.durations import format_duration, parse_duration
from pki.x509.keys import KeyType

CONFIG_NAME = "rapki.toml"
CONFIG_VERSION = 1
MIN_SERIAL_BYTES = 9  # >= 64 random bits after clearing the sign bit
MAX_SERIAL_BYTES = 20  # RFC 5280 and Roles Anywhere limit
# A write waits at most this long for another process's lock. The API answers on the thread that
# waits, so the bound stays well under gunicorn's worker timeout (60 s).
MAX_BUSY_TIMEOUT = timedelta(seconds=30)


ISSUER_FIELD = "{issuer}"  # in [crl].distribution_url: the issuing CA's name (issuing-1, issuing-2...)
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#\[\]@!$&'()*+,;=%{}-]+")


def check_distribution_url(url: str) -> None:
    """``[crl].distribution_url``: a plain ``http://`` URL naming ``{issuer}`` (one CRL per issuing CA).

    http only: relying parties fetch CRLs without TLS (RFC 5280 4.2.1.13 and the CA/B baseline
    requirements: a CRL is signed, and an https fetch would need a trust path to check the path
    it is checking). ``{issuer}`` is the issuing CA's name as rapki gives it, ``issuing-N``: stable
    for the CA's whole life and safe as a file name and an S3 key."""
    if not url.startswith("http://") or len(url) > 255 or not _URL_CHARS.fullmatch(url):
        raise InvalidInput(f"[crl].distribution_url must be an http:// URL of at most 255 printable ASCII "
                           f"characters, not {url!r}")
    if ISSUER_FIELD not in url:
        raise InvalidInput(f"[crl].distribution_url must name {ISSUER_FIELD} (each issuing CA has its own CRL), "
                           f"e.g. http://crl.example.com/crl/{ISSUER_FIELD}.crl")
    # What goes into certificates is the URL with {issuer} filled in: it needs a host, and a
    # fragment or another {...} would be sent to relying parties as it stands.
    filled = url.replace(ISSUER_FIELD, "issuing-1")
    if not urlsplit(filled).hostname or "#" in filled or "{" in filled or "}" in filled:
        raise InvalidInput(f"[crl].distribution_url must be http://HOST/PATH with {ISSUER_FIELD} as its only "
                           f"{{...}} field and no #fragment, not {url!r}")


@dataclass(frozen=True)
class Config:
    """Settings read from ``rapki.toml``; every field has a production default."""

    key_type: KeyType = KeyType.EC_P256
    serial_bytes: int = 16
    database_url: str = ""  # empty: sqlite file rapki.db in the home
    sqlite_synchronous: str = "normal"
    busy_timeout: timedelta = timedelta(seconds=2)  # how long a write waits for another's lock
    passphrase_file: str = ""  # relative to the home, or absolute
    crl_validity: timedelta = timedelta(days=7)
    crl_republish_before: timedelta = timedelta(days=2)
    root_key: str = ""  # a key reference (pki.custody.refs); empty: ca/root.key.pem, or offline
    # ``http://.../{issuer}.crl``: the CRL Distribution Point put in every certificate (off when empty)
    crl_distribution_url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)  # sections owned by other components

    def __post_init__(self) -> None:
        if not MIN_SERIAL_BYTES <= self.serial_bytes <= MAX_SERIAL_BYTES:
            raise InvalidInput(
                f"serial_bytes must be between {MIN_SERIAL_BYTES} and {MAX_SERIAL_BYTES}, "
                f"not {self.serial_bytes}"
            )
        if self.sqlite_synchronous not in ("off", "normal", "full", "extra"):
            raise InvalidInput("sqlite_synchronous must be one of off, normal, full, extra")
        if self.busy_timeout > MAX_BUSY_TIMEOUT:
            raise InvalidInput(f"busy_timeout must be at most {format_duration(MAX_BUSY_TIMEOUT)}, "
                               f"not {format_duration(self.busy_timeout)}")
        if self.crl_distribution_url:
            check_distribution_url(self.crl_distribution_url)

    def distribution_url(self, issuer_name: str) -> str | None:
        """The CRL Distribution Point of ``issuer_name``'s certificates, or None when not configured."""
        return self.crl_distribution_url.replace(ISSUER_FIELD, issuer_name) if self.crl_distribution_url else None

    def to_toml(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "rapki": {"config_version": CONFIG_VERSION},
            "ca": {"key_type": self.key_type.value, "serial_bytes": self.serial_bytes,
                   **({"root_key": parse_key_ref(self.root_key).as_dict()} if self.root_key else {})},
            "database": {"url": self.database_url, "sqlite_synchronous": self.sqlite_synchronous,
                         "busy_timeout": format_duration(self.busy_timeout)},
            "passphrase": {"file": self.passphrase_file},
            "crl": {
                "validity": format_duration(self.crl_validity),
                "republish_before": format_duration(self.crl_republish_before),
                **({"distribution_url": self.crl_distribution_url} if self.crl_distribution_url else {}),
            },
        }
        for section, values in self.extra.items():
            doc[section] = values
        return doc

    @classmethod
    def from_toml(cls, doc: dict[str, Any]) -> Config:
        known = {"rapki", "ca", "database", "passphrase", "crl"}
        for section in known:
            if not isinstance(doc.get(section, {}), dict):
                raise InvalidInput(f"[{section}] must be a table in {CONFIG_NAME}")
        ca, db = doc.get("ca", {}), doc.get("database", {})
        crl = doc.get("crl", {})
        serial_bytes = ca.get("serial_bytes", 16)
        if not isinstance(serial_bytes, int) or isinstance(serial_bytes, bool):
            raise InvalidInput(f"serial_bytes must be a whole number from {MIN_SERIAL_BYTES} to "
                               f"{MAX_SERIAL_BYTES}, not {serial_bytes!r}")
        return cls(
            key_type=KeyType.parse(ca.get("key_type", KeyType.EC_P256.value)),
            serial_bytes=serial_bytes,
            database_url=str(db.get("url", "")),
            sqlite_synchronous=str(db.get("sqlite_synchronous", "normal")).lower(),
            busy_timeout=parse_duration(db.get("busy_timeout", "2s")),
            passphrase_file=str(doc.get("passphrase", {}).get("file", "")),
            crl_validity=parse_duration(crl.get("validity", "7d")),
            crl_republish_before=parse_duration(crl.get("republish_before", "2d")),
            root_key=str(parse_key_ref(ca["root_key"])) if ca.get("root_key") else "",
            crl_distribution_url=str(crl.get("distribution_url", "")),
            extra={k: v for k, v in doc.items() if k not in known},
        )


@dataclass(frozen=True)
class Home:
    """A rapki home directory on disk."""

    path: Path

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_NAME

    @property
    def ca_dir(self) -> Path:
        return self.path / "ca"

    @property
    def root_cert_path(self) -> Path:
        return self.ca_dir / "root.pem"

    @property
    def root_key_path(self) -> Path:
        return self.ca_dir / "root.key.pem"

    def exists(self) -> bool:
        return self.config_path.is_file()

    def require(self) -> Home:
        if not self.path.is_dir():
            raise NotARapkiHome(f"{self.path} does not exist: run 'rapki init --home {self.path}' first")
        if not self.exists():
            raise NotARapkiHome(f"{self.path} is not a rapki home (no {CONFIG_NAME}): run 'rapki init'")
        return self

    def load_config(self) -> Config:
        self.require()
        try:
            doc = tomllib.loads(self.config_path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise NotARapkiHome(f"{self.config_path} cannot be read: {exc}") from exc
        if "rapki" not in doc:
            raise NotARapkiHome(f"{self.config_path} is not a rapki config (no [rapki] section)")
        try:
            return Config.from_toml(doc)
        except InvalidInput as exc:
            raise InvalidInput(f"{self.config_path}: {exc}") from exc

    def save_config(self, config: Config) -> None:
        atomic_write(self.config_path, tomli_w.dumps(config.to_toml()).encode())

    def update_section(self, section: str, values: dict[str, Any]) -> Config:
        """Merge ``values`` into a component-owned ``[section]`` of the config and save it."""
        config = self.load_config()
        extra = dict(config.extra)
        extra[section] = {**extra.get(section, {}), **values}
        config = replace(config, extra=extra)
        self.save_config(config)
        return config

    def database_url(self, config: Config) -> str:
        """$RAPKI_DATABASE_URL, else ``[database].url``, else ``rapki.db`` in the home; the
        password, kept out of both, from $RAPKI_DATABASE_PASSWORD (or libpq's own $PGPASSWORD and
        ``~/.pgpass``, which psycopg reads when the URL has none)."""
        from pki.store.db import with_password

        url = os.environ.get("RAPKI_DATABASE_URL") or config.database_url
        return with_password(url or f"sqlite:///{self.sqlite_path.resolve()}",
                             os.environ.get("RAPKI_DATABASE_PASSWORD"))

    @property
    def sqlite_path(self) -> Path:
        return self.path / "rapki.db"

    def resolve(self, relative: str) -> Path:
        path = Path(relative).expanduser()
        return path if path.is_absolute() else self.path / path

    def passphrase(self, config: Config) -> bytes:
        """The CA key passphrase, from the first of: $RAPKI_PASSPHRASE; the systemd credential
        ``$CREDENTIALS_DIRECTORY/rapki-passphrase`` (``LoadCredential=``); ``[passphrase].file``."""
        env = os.environ.get("RAPKI_PASSPHRASE")
        if env:
            return env.encode()
        credential = systemd_credential()
        if credential is not None:
            return credential
        if not config.passphrase_file:
            raise InvalidInput(
                "no CA passphrase: set $RAPKI_PASSPHRASE, give the systemd credential "
                f"{SYSTEMD_CREDENTIAL} (LoadCredential=) or set [passphrase].file in rapki.toml"
            )
        return read_passphrase_file(self.resolve(config.passphrase_file))

    def passphrase_source(self, config: Config) -> tuple[str, Path | None]:
        """Where ``passphrase`` reads it from: ``environment``, ``systemd-credential``,
        ``file-in-home``, ``file`` (elsewhere) or ``none``; with the file's path."""
        if os.environ.get("RAPKI_PASSPHRASE"):
            return "environment", None
        if _credential_path() is not None:
            return "systemd-credential", _credential_path()
        if not config.passphrase_file:
            return "none", None
        path = self.resolve(config.passphrase_file).resolve()
        return ("file-in-home" if path.is_relative_to(self.path.resolve()) else "file"), path

    def create_passphrase_file(self) -> bytes:
        value = secrets.token_urlsafe(32).encode()
        atomic_write(self.path / "passphrase", value + b"\n", private=True)
        return value


SYSTEMD_CREDENTIAL = "rapki-passphrase"  # the credential's name under $CREDENTIALS_DIRECTORY


def _credential_path() -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    path = Path(directory) / SYSTEMD_CREDENTIAL
    return path if path.is_file() else None


def systemd_credential() -> bytes | None:
    """The passphrase systemd passes as credential ``rapki-passphrase`` (``LoadCredential=`` or
    ``LoadCredentialEncrypted=``), or None when the unit has none."""
    path = _credential_path()
    return read_passphrase_file(path) if path is not None else None


def read_passphrase_file(path: Path) -> bytes:
    try:
        value = path.read_bytes().strip()
    except OSError as exc:
        raise InvalidInput(f"cannot read the passphrase file {path}: {exc.strerror}") from exc
    if not value:
        raise InvalidInput(f"the passphrase file {path} is empty")
    return value
