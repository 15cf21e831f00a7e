"""The certificate profiles of ``CertificateAuthority``: what each kind of workload may get."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from sqlalchemy.engine import Connection

from pki.ca._audit import AuditTrail
from pki.errors import Conflict, NotFound
from pki.store import profiles as profile_rows
from pki.x509.profiles import Profile


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
        return Profile.from_dict(spec)

    def profiles(self) -> list[Profile]:
        with self.db.engine.connect() as conn:
            specs = profile_rows.all_specs(conn)
        return [Profile.from_dict(spec) for spec in specs]

    def remove_profile(self, name: str, *, actor: str | None = None) -> None:
        self._profile_cache.clear()
        with self.db.engine.begin() as conn:
            self._profile(conn, name)
            profile_rows.remove(conn, name)
            self.audit_in(conn, actor, "profile.remove", name, None)
