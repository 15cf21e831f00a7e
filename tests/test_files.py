"""``pki.files.atomic_write``: the one way rapki writes files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from pki.files import atomic_write


def test_private_files_are_0600_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        secret = atomic_write(tmp_path / "a" / "key.pem", b"secret", private=True)
        public = atomic_write(tmp_path / "a" / "cert.pem", b"public")
    finally:
        os.umask(old)
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert secret.read_bytes() == b"secret" and public.read_bytes() == b"public"
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["cert.pem", "key.pem"]  # no temporaries


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing_behind(tmp_path: Path) -> None:
    target = atomic_write(tmp_path / "state.json", b"old")
    with pytest.raises(TypeError):
        atomic_write(target, "not bytes", private=True)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_a_planted_link_never_receives_the_data(tmp_path: Path) -> None:
    """Another user who can write into the folder plants links at every name a writer could use
    next; the data must land only in the target, never through a link."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"untouched")
    folder = tmp_path / "out"
    folder.mkdir()
    # The names a predictable scheme would pick (process and thread ids) and a generic spread.
    guesses = [f".key.pem.{os.getpid()}.{threading.get_ident()}.tmp", ".key.pem.tmp", "key.pem.tmp"]
    for name in guesses:
        (folder / name).symlink_to(victim)
    atomic_write(folder / "key.pem", b"secret key", private=True)
    assert victim.read_bytes() == b"untouched"
    assert (folder / "key.pem").read_bytes() == b"secret key"
    assert not (folder / "key.pem").is_symlink()
    assert stat.S_IMODE((folder / "key.pem").stat().st_mode) == 0o600
