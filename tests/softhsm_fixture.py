"""A private SoftHSM2 token for the tests: its own configuration and token directory in a temporary
folder (``SOFTHSM2_CONF``), so nothing touches the machine's tokens.

One token per test session: a PKCS#11 module reads its configuration once, when the process first
initialises it. Tests tell their keys apart by label. Without softhsm2 the tests skip, saying how to
install it; under ``CI`` they fail instead, since CI installs it (``scripts/test``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

MODULE_PATHS = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
                "/usr/local/lib/softhsm/libsofthsm2.so", "/usr/lib64/pkcs11/libsofthsm2.so")
PIN_ENV = "RAPKI_TEST_HSM_PIN"


@dataclass(frozen=True)
class SoftHsmToken:
    module: str
    label: str
    pin: str
    pin_env: str
    conf: Path


def softhsm_module() -> str | None:
    return next((path for path in MODULE_PATHS if Path(path).is_file()), None)


def unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"{reason}; CI must have it (scripts/test installs softhsm2)")
    pytest.skip(f"{reason}: install it with 'apt-get install -y softhsm2' (under CI=true this fails)")


def open_rw_session(token: Any, pin: str) -> Any:
    """A read-write session on ``token`` signed in as the user. PKCS#11 login is per process and
    token, so when an earlier test in this process (a custody key, a signer key) left a session
    signed in, the new one shares that login instead of signing in again."""
    import pkcs11

    try:
        return token.open(rw=True, user_pin=pin)
    except pkcs11.exceptions.UserAlreadyLoggedIn:
        return token.open(rw=True)


def private_token(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsmToken]:
    """The body of a session-scoped fixture: the token, live while the session lasts."""
    module, util = softhsm_module(), shutil.which("softhsm2-util")
    if module is None or util is None:
        unavailable("softhsm2 (libsofthsm2.so and softhsm2-util) is not installed")
    assert module is not None and util is not None
    folder = tmp_path_factory.mktemp("softhsm")
    (folder / "tokens").mkdir()
    conf = folder / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {folder / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    token = SoftHsmToken(module=module, label="rapki-test", pin="4711-test", pin_env=PIN_ENV, conf=conf)
    subprocess.run([util, "--init-token", "--free", "--label", token.label, "--pin", token.pin,
                    "--so-pin", "so-4711-test"], env={**os.environ, "SOFTHSM2_CONF": str(conf)},
                   check=True, capture_output=True, timeout=60)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(conf))
        patch.setenv(PIN_ENV, token.pin)
        yield token
        from pki.custody.hsm import close_all

        close_all()
