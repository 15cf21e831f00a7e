"""``rapki check``: what a home needs on this host to sign, and how it keeps its secrets.

Run on every replica after a rotation: a replica with file keys signs only with the key files it
holds, so an issuing CA made elsewhere is reported with the file to copy. Keys held by an HSM or
a KMS (a ``key_ref`` that is a ``pkcs11:``/``kms:`` reference) need nothing on the host.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

from pki.ca.authority import CertificateAuthority
from pki.ca.values import Issuer
from pki.errors import RapkiError
from pki.store.db import without_password

_REFERENCE = re.compile(r"^[a-z][a-z0-9+.-]*:")  # pkcs11:..., kms:...: not a file


@dataclass(frozen=True)
class Finding:
    level: str  # ok | warning | error
    what: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"level": self.level, "what": self.what, "message": self.message}


def check_home(ca: CertificateAuthority) -> list[Finding]:
    """Database, issuing CA keys, root key and passphrase of ``ca``'s home, one finding each."""
    findings = [Finding("ok", "database", f"reachable: {without_password(ca.db.url)}")]
    findings += [_issuer_key(ca, issuer) for issuer in ca.issuers()
                 if issuer.active or issuer.not_after > datetime.now(UTC)]
    findings.append(_root_key(ca))
    findings.append(_passphrase(ca))
    return findings


def _issuer_key(ca: CertificateAuthority, issuer: Issuer) -> Finding:
    what = f"{issuer.name} key" + (" (active)" if issuer.active else "")
    if _REFERENCE.match(issuer.key_ref):
        return Finding("ok", what, f"held by its key backend ({issuer.key_ref.split(':', 1)[0]})")
    try:
        ca.issuer_key(issuer)
    except RapkiError as exc:
        return Finding("error", what, str(exc))
    return Finding("ok", what, f"{ca.home.resolve(issuer.key_ref)} loads and matches its certificate")


def _root_key(ca: CertificateAuthority) -> Finding:
    if ca.home.root_key_path.is_file():
        return Finding("warning", "root key", f"{ca.home.root_key_path} is online: keep it offline "
                                              "('rapki init --offline-root'), bring it back only to rotate")
    return Finding("ok", "root key", "offline (not in the home)")


def _passphrase(ca: CertificateAuthority) -> Finding:
    source, path = ca.home.passphrase_source(ca.config)
    if source == "file-in-home":
        return Finding("warning", "passphrase", f"{path} sits in the home beside the encrypted keys: a copy or "
                                                "backup of the home then holds everything needed to sign; keep it "
                                                "elsewhere ($RAPKI_PASSPHRASE, an absolute [passphrase].file, or "
                                                "the systemd credential rapki-passphrase)")
    if source == "none":
        return Finding("error", "passphrase", "no passphrase: set $RAPKI_PASSPHRASE, [passphrase].file or the "
                                              "systemd credential rapki-passphrase")
    where = {"environment": "$RAPKI_PASSPHRASE", "systemd-credential": f"systemd credential {path}",
             "file": f"file {path}"}[source]
    return Finding("ok", "passphrase", f"read from the {where}, not the home")


__all__ = ["Finding", "check_home"]
