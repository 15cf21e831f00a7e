"""The emulator's state: resources per account and region, kept in memory and saved as JSON.

Layout of the state file (camelCase details are exactly what the API returns)::

    {"version": 1,
     "accounts": {"<account>": {"<region>": {
         "trustAnchors": {"<id>": TrustAnchorDetail}, "profiles": {"<id>": ProfileDetail},
         "crls": {"<id>": CrlDetail (crlData as base64)}, "subjects": {"<id>": SubjectDetail},
         "tags": {"<arn>": {"<key>": "<value>"}}}}}}

Every write runs under one lock and ends with an atomic save (temporary file, fsync, rename), so
a crash never leaves a half-written file and a restart sees every acknowledged write. Reads take
the same lock only for the short time needed to copy what they return.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pki.files import atomic_write
from pki.rolesanywhere.arns import RolesAnywhereArn

STATE_VERSION = 1
RESOURCE_KINDS = ("trustAnchors", "profiles", "crls", "subjects")


def iso_now(now: datetime | None = None) -> str:
    """The service's timestamp form: ISO 8601, UTC, milliseconds, ``Z``."""
    value = (now or datetime.now(UTC)).astimezone(UTC)
    return value.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def resource_id(store: dict[str, Any], arn: RolesAnywhereArn) -> str | None:
    """The id of the resource ``arn`` names in ``store`` (its ARN or its alias ARN), or None.

    An alias is looked up among the live resources of its type: a renamed, removed or deleted
    alias stops naming anything at once (the service says "can take a short time").
    """
    items = store.get(arn.collection, {})
    if not arn.alias:
        return arn.id if arn.id in items else None
    return next((id_ for id_, item in items.items() if item.get("aliasName") == arn.id), None)


def _empty_region() -> dict[str, Any]:
    return {"trustAnchors": {}, "profiles": {}, "crls": {}, "subjects": {}, "tags": {}}


class EmulatorState:
    """All resources, one lock, one JSON file (or none: ``path=None`` keeps state in memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.data: dict[str, Any] = self._load()

    def _load(self) -> dict[str, Any]:
        if self.path is None or not self.path.exists():
            return {"version": STATE_VERSION, "accounts": {}}
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if data.get("version") != STATE_VERSION:
            raise ValueError(f"{self.path}: unsupported emulator state version {data.get('version')!r}")
        for regions in data.get("accounts", {}).values():
            for store in regions.values():
                for key, value in _empty_region().items():
                    store.setdefault(key, value)
                for anchor in store["trustAnchors"].values():  # saved before the member existed
                    anchor.setdefault("crlDpRevocationEnabled", False)
        return data

    def region(self, account: str, region: str) -> dict[str, Any]:
        """The store of one account/region, created empty on first use (not saved until a write)."""
        regions = self.data["accounts"].setdefault(account, {})
        store = regions.get(region)
        if store is None:
            store = regions[region] = _empty_region()
        return store

    def save(self) -> None:
        """Write the whole state atomically; a no-op for an in-memory emulator."""
        if self.path is None:
            return
        payload = json.dumps(self.data, separators=(",", ":"), sort_keys=True).encode("utf-8")
        atomic_write(self.path, payload, private=True)

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Hold the lock for a read-modify-write and save when the block succeeds."""
        with self.lock:
            yield
            self.save()

    def iter_stores(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for account, regions in self.data["accounts"].items():
            for region, store in regions.items():
                yield account, region, store
