"""Independent judges of what rapki makes: pkilint, ``openssl verify`` and, for ML-DSA signatures
(the installed OpenSSL 3.0 has no ML-DSA; pkilint 0.13 lints ML-DSA certificates but does not check
their signatures), dilithium-py, a second FIPS 204 implementation in pure Python.

Our own opinion of a certificate counts for nothing; these tools decide.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography import x509


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


@functools.cache
def openssl_knows_mldsa() -> bool:
    """Whether the installed ``openssl`` (3.5 and later) reads ML-DSA keys."""
    result = subprocess.run(["openssl", "list", "-signature-algorithms"], capture_output=True, text=True, check=False)
    return "ML-DSA" in result.stdout.upper()


def dilithium_verifies(public_key: object, message: bytes, signature: bytes) -> bool:
    """dilithium-py's verdict on a pure ML-DSA signature (empty context) over ``message``."""
    from dilithium_py import ml_dsa

    raw = public_key.public_bytes_raw()  # type: ignore[attr-defined]
    scheme = {1312: ml_dsa.ML_DSA_44, 1952: ml_dsa.ML_DSA_65, 2592: ml_dsa.ML_DSA_87}[len(raw)]
    return bool(scheme.verify(raw, message, signature, ctx=b""))


def dilithium_verifies_issued(issuer_public_key: object,
                              signed: x509.Certificate | x509.CertificateRevocationList) -> bool:
    """dilithium-py's verdict on an ML-DSA-signed certificate or CRL: the signature over its TBS."""
    tbs = signed.tbs_certificate_bytes if isinstance(signed, x509.Certificate) else signed.tbs_certlist_bytes
    return dilithium_verifies(issuer_public_key, tbs, signed.signature)
