"""Independent judges of what rapki makes: pkilint and ``openssl verify``.

Our own opinion of a certificate counts for nothing; these tools decide.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def pkilint(tool: str, *args: str | Path) -> str:
    """Run a pkilint command at WARNING level and return its findings (empty when clean)."""
    exe = shutil.which(tool)
    if exe is None:
        pytest.fail(f"{tool} is not installed (pkilint is a dev dependency)")
    result = subprocess.run([exe, "lint", "-s", "WARNING", *map(str, args)], capture_output=True, text=True,
                            check=False)
    return (result.stdout + result.stderr).strip()


def lint_cert(path: Path) -> str:
    return pkilint("lint_pkix_cert", path)


def lint_crl(path: Path) -> str:
    return pkilint("lint_crl", "-t", "CRL", "-p", "PKIX", path)


def lint_chain(issuer: Path, subject: Path) -> str:
    return pkilint("lint_pkix_signer_signee_cert_chain", issuer, subject)


def openssl_verify(cert: Path, *, root: Path, untrusted: Path | None = None, crl: Path | None = None,
                   ) -> subprocess.CompletedProcess[str]:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed")
    cmd = ["openssl", "verify", "-x509_strict", "-CAfile", str(root)]
    if untrusted is not None:
        cmd += ["-untrusted", str(untrusted)]
    if crl is not None:
        cmd += ["-crl_check", "-CRLfile", str(crl)]
    cmd.append(str(cert))
    return subprocess.run(cmd, capture_output=True, text=True, check=False)
