"""The certificate profiles of ``CertificateAuthority``: what each kind of workload may get."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from pki.ca._audit import AuditTrail
from pki.errors import Conflict, InvalidInput, NotFound, RapkiError
from pki.store import profiles as profile_rows
from pki.x509.profiles import Profile

_CHANGEABLE = ("cn_pattern", "san_dns_patterns", "san_uri_patterns", "key_types", "default_ttl", "max_ttl",
               "roles_anywhere", "require_san_uri")


class ProfileCatalog(AuditTrail):
    """Profiles by name, cached briefly (read on every issuance)."""

    _profile_cache: dict[str, tuple[float, Profile]]

    PROFILE_CACHE_SECONDS = 2.0

    def add_profile(self, profile: Profile, *, replace: bool = False, actor: str | None = None) -> Profile:
        self._profile_cache.clear()
        now = datetime.now(UTC)
        spec = profile.to_dict()
        with self.db.engine.begin() as conn:
            exists = profile_rows.exists(conn, profile.name)
            if exists and not replace:
                raise Conflict(f"profile {profile.name!r} exists: use 'rapki profile update' or remove it first")
            if exists:
                profile_rows.replace(conn, profile.name, spec, now)
            else:
                profile_rows.add(conn, profile.name, spec, now)
            self.audit_in(conn, actor, "profile.update" if exists else "profile.add", profile.name, spec)
        return profile

    def update_profile(self, name: str, changes: dict[str, Any], *, actor: str | None = None) -> Profile:
        """Change only what ``changes`` names, keep the rest: its keys are those of
        ``Profile.to_dict()`` (``roles_anywhere`` a dict of the binding's fields to change). Read,
        checked and written in one transaction; a profile stored with a value that is no longer
        accepted can be mended this way."""
        unknown = set(changes) - set(_CHANGEABLE)
        if unknown:
            raise InvalidInput(f"profiles have no {', '.join(sorted(unknown))}: change {', '.join(_CHANGEABLE)}")
        self._profile_cache.clear()
        with self.db.engine.begin() as conn:
            spec = profile_rows.spec_of(conn, name)
            if spec is None:
                raise NotFound(f"unknown profile {name!r}: see 'rapki profile list'")
            merged = {**spec, **changes, "name": name,
                      "roles_anywhere": {**(spec.get("roles_anywhere") or {}), **changes.get("roles_anywhere", {})}}
            updated = Profile.from_dict(merged)
            profile_rows.replace(conn, name, updated.to_dict(), datetime.now(UTC))
            self.audit_in(conn, actor, "profile.update", name, updated.to_dict())
        return updated

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
        spec = profile_rows.spec_of(conn, name)
        if spec is None:
            raise NotFound(f"unknown profile {name!r}: see 'rapki profile list'")
        return _stored_profile(spec)

    def profiles(self) -> list[Profile]:
        with self.db.engine.connect() as conn:
            specs = profile_rows.all_specs(conn)
        return [_stored_profile(spec) for spec in specs]

    def remove_profile(self, name: str, *, actor: str | None = None) -> None:
        self._profile_cache.clear()
        with self.db.engine.begin() as conn:
            if not profile_rows.exists(conn, name):  # not parsed: a profile stored invalid can be removed
                raise NotFound(f"unknown profile {name!r}: see 'rapki profile list'")
            profile_rows.remove(conn, name)
            self.audit_in(conn, actor, "profile.remove", name, None)


def _stored_profile(spec: dict[str, Any]) -> Profile:
    """The profile a stored spec holds. One stored before a check it now fails (say, a malformed
    role ARN) is the operator's to mend, not the caller's: a failure (500, exit 1) that says how."""
    try:
        return Profile.from_dict(spec)
    except InvalidInput as exc:
        name = spec.get("name")
        raise RapkiError(f"profile {name!r} as stored is not valid ({exc}): correct it with "
                         f"'rapki profile update {name} ...'") from exc
