"""``rapki serve --crl-http-port``: a plain-HTTP listener that answers the CRL path, and only it."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
import requests
from cryptography import x509

from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import RAPKI, free_port, stop

pytestmark = pytest.mark.e2e


def _wait_for(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("rapki serve did not come up: " + log.read_text()[-3000:])
        time.sleep(0.2)


def test_plain_http_listener_serves_crls_only(tmp_path: Path, passphrase_env: str) -> None:
    ca = make_ca(tmp_path / "home")
    revoked = ca.issue("web", cn="web-1")
    ca.revoke(revoked.serial_hex, reason="keyCompromise")
    port, crl_port = free_port(), free_port()
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen([*RAPKI, "serve", "--home", str(ca.home.path), "--port", str(port), "--workers", "1",
                                 "--quiet", "--crl-http-port", str(crl_port)], stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "RAPKI_PASSPHRASE": PASSPHRASE})
    base = f"http://127.0.0.1:{crl_port}"
    try:
        _wait_for(base + "/crl/issuing-1.crl", proc, log)
        answer = requests.get(base + "/crl/issuing-1.crl", timeout=5)
        assert answer.status_code == 200 and answer.headers["Content-Type"] == "application/pkix-crl"
        crl = x509.load_der_x509_crl(answer.content)
        assert crl.get_revoked_certificate_by_serial_number(revoked.certificate.serial_number) is not None
        again = requests.get(base + "/crl/issuing-1.crl", headers={"If-None-Match": answer.headers["ETag"]}, timeout=5)
        assert again.status_code == 304
        for path in ("/healthz", "/v1/ca/root", "/crl/issuing-7.crl"):  # nothing of the API over plain HTTP
            refused = requests.get(base + path, timeout=5)
            assert refused.status_code == 404 and refused.json()["error"] == "not_found", path
        # the TLS API serves the same path
        tls = requests.get(f"https://127.0.0.1:{port}/crl/issuing-1.crl", verify=str(ca.home.root_cert_path),
                           timeout=5)
        assert tls.status_code == 200 and tls.content == answer.content
    finally:
        stop(proc)
    with pytest.raises(requests.ConnectionError):  # the listener went with the server
        requests.get(base + "/crl/issuing-1.crl", timeout=2)


def test_the_crl_port_must_not_be_the_https_port(tmp_path: Path, passphrase_env: str) -> None:
    """Both on one port: refused up front (exit 2, one line), not a CRL listener dying with a traceback."""
    make_ca(tmp_path / "home")
    port = free_port()
    result = subprocess.run([*RAPKI, "serve", "--home", str(tmp_path / "home"), "--port", str(port),
                             "--crl-http-port", str(port)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "a port of its own" in result.stderr
