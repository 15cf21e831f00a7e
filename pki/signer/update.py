"""``update``: keep a profile of the shared credentials file filled with fresh credentials.

The rewrite rules are the helper's, so files it manages look the same under rapki-signer:

1. the file is ``$AWS_SHARED_CREDENTIALS_FILE`` or ``~/.aws/credentials`` (created 0600 if absent);
2. the profile's section is the first line that is exactly ``[<profile>]`` (``# [p]`` and
   ``[p other]`` do not count); inside it, up to the next line starting with ``[``, lines starting with
   ``aws_access_key_id``/``aws_secret_access_key``/``aws_session_token`` are replaced in place, every
   other line is kept, and keys that were missing are added at the end of the section;
3. a profile with no section gets one appended at the end of the file;
4. later sections with the same name and every other line are left alone.

Where the helper loses data, rapki-signer keeps it: the helper drops the section's last line when the
section ends the file (harmless only when that line was a credential key) and duplicates a header
that ends the file; here such lines are kept. The write is atomic (temporary file + rename, mode 0600
whatever the old mode) and serialised by an advisory lock on ``<file>.lock``, so two writers (two
``update`` loops, or ``update`` and an editor's save through rapki) never interleave.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

from pki.files import atomic_write
from pki.signer.cache import file_lock
from pki.signer.session import Credentials, SessionOptions, create_session

UPDATE_REFRESH_BEFORE = 5 * 60  # seconds before expiry, as the helper
KEYS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")


def credentials_path() -> Path:
    env = os.environ.get("AWS_SHARED_CREDENTIALS_FILE")
    return Path(env).expanduser() if env else Path.home() / ".aws" / "credentials"


def rewrite(lines: list[str], profile: str, creds: Credentials) -> str:
    """The new file text for ``lines`` (without line ends) with ``profile``'s credentials replaced."""
    values = {
        "aws_access_key_id": f"aws_access_key_id = {creds.access_key_id}\n",
        "aws_secret_access_key": f"aws_secret_access_key = {creds.secret_access_key}\n",
        "aws_session_token": f"aws_session_token = {creds.session_token}\n",
    }
    header = f"[{profile}]"
    out: list[str] = []
    i, n = 0, len(lines)
    found = False
    while i < n:
        line = lines[i]
        if found or line != header:
            out.append(line + "\n")
            i += 1
            continue
        found = True
        out.append(header + "\n")
        i += 1
        seen: set[str] = set()
        while i < n and not lines[i].startswith("["):
            current = lines[i]
            key = next((k for k in KEYS if current.startswith(k)), None)
            at_end = i == n - 1
            if key is None:
                out.append(current + "\n")
            elif not at_end:
                out.append(values[key])
                seen.add(key)
            # A credential key ending the file is left unmarked so it is written below, in the
            # helper's order (access key, secret, token): this reproduces its output byte for byte.
            i += 1
        out.extend(values[k] for k in KEYS if k not in seen)
    if not found:
        out.append(header + "\n" + "".join(values[k] for k in KEYS) + "\n")
    return "".join(out)


@contextlib.contextmanager
def locked(path: Path, timeout: float = 30.0) -> Iterator[None]:
    """An exclusive advisory lock on ``<path>.lock`` (the file itself is replaced, so not locked);
    fcntl on POSIX, msvcrt on Windows, both imported only when locking."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        with file_lock(lock_path, timeout):
            yield
    except TimeoutError:
        raise TimeoutError(f"{lock_path} is held by another writer") from None


def read_lines(path: Path) -> list[str]:
    """The file's lines without line ends (``\\r\\n`` tolerated), like a Go bufio.Scanner."""
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def write_credentials(profile: str, creds: Credentials, path: Path | None = None) -> Path:
    """Rewrite ``profile`` in the credentials file under the lock; returns the real file written."""
    path = Path(os.path.realpath(path or credentials_path()))
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with locked(path):
        text = rewrite(read_lines(path), profile, creds)
        atomic_write(path, text.encode("utf-8", errors="surrogateescape"), private=True)
    return path


def log(text: str) -> None:
    print(f"{datetime.now(UTC):%Y/%m/%d %H:%M:%S} {text}", file=sys.stderr, flush=True)


def run_update(
    opts: SessionOptions,
    profile: str = "default",
    *,
    once: bool = False,
    path: Path | None = None,
    sleep: Callable[[float], None] = time.sleep,
    retry_delay: float = 30.0,
) -> None:
    """Write credentials, then again 5 minutes before each expiry (forever unless ``once``).

    The certificate and key are re-read for every refresh, so a renewed certificate is used. In the
    loop a failed refresh is retried (the credentials already written stay valid until they expire)
    instead of ending the process as the helper does; ``--once`` fails fast with exit 1.
    """
    while True:
        try:
            creds = create_session(opts)
        except Exception as exc:
            if once:
                raise
            log(f"refresh failed, retrying in {retry_delay:.0f}s: {exc}")
            sleep(retry_delay)
            continue
        written = write_credentials(profile, creds, path)
        if once:
            return
        wait = max(1.0, creds.seconds_left() - UPDATE_REFRESH_BEFORE)
        log(f"credentials for profile [{profile}] written to {written}; next refresh in {wait:.0f}s")
        sleep(wait)
