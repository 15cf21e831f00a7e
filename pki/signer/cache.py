"""``credential-process --cache``: share one CreateSession among the processes that need credentials.

Every SDK process that starts runs ``credential_process`` once, and a fleet of them (a build farm, a
batch of Lambdas-in-containers, ``xargs -P`` over the CLI) can exceed CreateSession's request rate
(the helper's issue #31). With ``--cache`` the answer is kept in a file and handed to every caller
until it is due for refresh; only one process at a time refreshes it.

Decisions:

- one file per certificate and request: the key hashes the certificate's bytes (a renewed
  certificate starts a new entry), the key reference, the three ARNs, the duration, the session
  name, region and endpoint. Files are ``<dir>/<sha256>.json``, mode 0600, in a 0700 directory
  (``--cache-dir``, default ``$XDG_CACHE_HOME/rapki-signer`` or ``~/.cache/rapki-signer``);
- an entry is refreshed once it has less than :data:`REFRESH_BEFORE` left (16 minutes, or half
  the session when that is shorter): botocore refreshes credentials with less than 15 minutes
  left, so what the cache hands out is never already due for refresh in the SDK;
- writers are serialised by an advisory lock on ``<file>.lock`` (``fcntl.flock``; ``msvcrt`` on
  Windows), re-reading the entry once they hold it: N processes at once make one CreateSession;
- expired credentials are never returned: a failed refresh hands out the cached credentials only
  while they have more than :data:`MIN_VALIDITY` left (with a warning on stderr), else fails;
- the hit path imports only the standard library (json, hashlib, os): no cryptography, no
  ``http.client``; ``tests/test_imports.py`` pins that.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

REFRESH_BEFORE = 16 * 60.0
MIN_VALIDITY = 60.0
LOCK_TIMEOUT = 60.0

Clock = Callable[[], datetime]


def default_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "rapki-signer"


def _certificate_bytes(certificate: str) -> bytes:
    if certificate.startswith("pkcs11:"):
        return certificate.encode()
    if certificate == "-":
        from pki.signer.stdin import read_stdin

        return read_stdin()
    try:
        with open(certificate, "rb") as fh:
            return fh.read()
    except OSError:
        return certificate.encode()  # reported when the material is loaded on a miss


def cache_key(certificate: str, request: dict[str, object]) -> str:
    """The entry's name: what was signed with and what was asked for."""
    digest = hashlib.sha256(_certificate_bytes(certificate))
    digest.update(json.dumps(request, sort_keys=True).encode())
    return digest.hexdigest()


def _parse_time(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


class Entry:
    """A cached ``credential_process`` answer: the exact output and its expiration."""

    def __init__(self, output: str, expiration: str, duration: int) -> None:
        self.output, self.expiration, self.duration = output, expiration, duration

    def seconds_left(self, now: datetime) -> float:
        return (_parse_time(self.expiration) - now).total_seconds()

    def fresh(self, now: datetime) -> bool:
        return self.seconds_left(now) > min(REFRESH_BEFORE, self.duration / 2)


def read_entry(path: Path) -> Entry | None:
    try:
        doc = json.loads(path.read_text())
        entry = Entry(str(doc["output"]), str(doc["expiration"]), int(doc["duration"]))
        _parse_time(entry.expiration)
        return entry
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent, half-written by an old version, or damaged: refresh it


def write_entry(path: Path, entry: Entry) -> None:
    """Atomic (temporary file + rename), 0600 from its creation; only a miss writes, so
    :mod:`pki.files` (and its ``tempfile``) is loaded here, not on the hit path."""
    from pki.files import atomic_write

    doc = {"output": entry.output, "expiration": entry.expiration, "duration": entry.duration}
    atomic_write(path, json.dumps(doc).encode(), private=True)


@contextlib.contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created 0600): fcntl on POSIX, msvcrt on Windows."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + timeout
    try:
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} is held by another process")
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _try_lock(fd: int) -> bool:
    if sys.platform == "win32":
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def cached_output(
    directory: Path,
    key: str,
    fetch: Callable[[], Entry],
    *,
    clock: Clock = lambda: datetime.now(UTC),
) -> str:
    """The ``credential_process`` output: from the cache while fresh, else fetched under the lock."""
    path = directory / f"{key}.json"
    entry = read_entry(path)
    if entry is not None and entry.fresh(clock()):
        return entry.output
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:  # e.g. --cache-dir naming a file: say which option, not only errno's text
        raise OSError(f"the cache directory {directory} cannot be used: {exc.strerror} "
                      "(--cache-dir names a directory)") from None
    with file_lock(path.with_name(path.name + ".lock")):
        entry = read_entry(path)  # another process may have refreshed it while this one waited
        if entry is not None and entry.fresh(clock()):
            return entry.output
        try:
            new = fetch()
        except Exception as exc:
            if entry is not None and entry.seconds_left(clock()) > MIN_VALIDITY:
                print(f"rapki-signer: warning: refresh failed, using cached credentials still valid: {exc}",
                      file=sys.stderr)
                return entry.output
            raise
        if new.seconds_left(clock()) > MIN_VALIDITY:
            write_entry(path, new)
        return new.output
