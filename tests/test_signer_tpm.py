"""rapki-signer with a key in a TPM 2.0, through tpm2-pkcs11 as the PKCS#11 module, against the emulator.

The TPM is swtpm (a software TPM) on loopback, behind tpm2-abrmd on a private D-Bus session bus
(tpm2-pkcs11 needs a resource manager); tpm2_ptool makes the token and an EC P-256 key inside the
TPM. Everything runs in a temporary folder and is stopped afterwards. Without those packages the
tests skip (scripts/test installs them when it can).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.commands import signer_cmd
from tests.emulator_fixture import RunningEmulator, make_ca, pem_of

pkcs11 = pytest.importorskip("pkcs11")
from pkcs11 import Attribute, ObjectClass  # noqa: E402
from pkcs11.util.ec import encode_ec_public_key  # noqa: E402

from tests.test_signer_pkcs11 import _leaf  # noqa: E402

pytestmark = pytest.mark.e2e
ROLE = "arn:aws:iam::123456789012:role/signer-tpm"
MODULES = ("/usr/lib/x86_64-linux-gnu/libtpm2_pkcs11.so.1", "/usr/lib/aarch64-linux-gnu/libtpm2_pkcs11.so.1",
           "/usr/lib/libtpm2_pkcs11.so.1")  # fmt: skip
PIN = "tpm-user-1234"


def _free_port_pair() -> int:
    """A free port whose successor is free too: the swtpm TCTI expects the control port there."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            try:
                second.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise AssertionError("no two consecutive free ports on loopback")


@dataclass
class Tpm:
    module: str
    env: dict[str, str]
    folder: Path


@pytest.fixture(scope="module")
def tpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tpm]:
    module = next((m for m in MODULES if Path(m).is_file()), None)
    tools = ("swtpm", "tpm2-abrmd", "dbus-daemon", "tpm2_ptool")
    if module is None or not all(shutil.which(t) for t in tools):
        pytest.skip("swtpm, tpm2-abrmd, dbus and tpm2-pkcs11 (libtpm2-pkcs11-1, libtpm2-pkcs11-tools, "
                    "libtss2-tcti-tabrmd0) are not installed")  # fmt: skip
    folder = tmp_path_factory.mktemp("tpm")
    (folder / "state").mkdir()
    (folder / "store").mkdir()
    port = _free_port_pair()
    procs = [subprocess.Popen(
        ["swtpm", "socket", "--tpmstate", f"dir={folder / 'state'}", "--tpm2", "--flags", "not-need-init,startup-clear",
         "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
         "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]  # fmt: skip
    bus = subprocess.run(["dbus-daemon", "--session", "--print-address=1", "--print-pid=1", "--fork"],
                         capture_output=True, text=True, check=True, timeout=30).stdout.split()  # fmt: skip
    address, bus_pid = bus[0], int(bus[1])
    env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": address, "TPM2_PKCS11_STORE": str(folder / "store"),
           "TPM2_PKCS11_TCTI": "tabrmd:bus_type=session", "TPM2TOOLS_TCTI": "tabrmd:bus_type=session"}  # fmt: skip
    try:
        _wait_for_port(port)
        procs.append(subprocess.Popen(
            ["tpm2-abrmd", "--session", "--allow-root", f"--tcti=swtpm:host=127.0.0.1,port={port}"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))  # fmt: skip
        _ptool(env, "init")
        _ptool(env, "addtoken", "--pid=1", "--sopin=tpm-so-1234", f"--userpin={PIN}", "--label=rapki-tpm")
        _ptool(env, "addkey", "--algorithm=ecc256", "--label=rapki-tpm", f"--userpin={PIN}", "--key-label=workload")
        yield Tpm(module, env, folder)
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=15)
        os.kill(bus_pid, 15)


def _wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"swtpm did not listen on port {port}")


def _ptool(env: dict[str, str], *args: str) -> None:
    for _ in range(100):  # until tpm2-abrmd has claimed its bus name (each try takes a while itself)
        result = subprocess.run(["tpm2_ptool", *args], env=env, capture_output=True, text=True, timeout=120)
        if result.returncode == 0:
            return
        if "Could not load tcti" not in result.stderr:
            break
    pytest.fail(f"tpm2_ptool {args[0]} failed: {result.stderr[-500:]}")


def test_credential_process_with_a_tpm_key(tpm: Tpm, emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> None:
    root = make_ca("TPM Root")
    for name in ("DBUS_SESSION_BUS_ADDRESS", "TPM2_PKCS11_STORE", "TPM2_PKCS11_TCTI"):
        monkeypatch.setenv(name, tpm.env[name])  # read by tpm2-pkcs11 when the module is loaded
    lib = pkcs11.lib(tpm.module)
    with lib.get_token(token_label="rapki-tpm").open(user_pin=PIN) as session:
        pub = next(session.get_objects({Attribute.CLASS: ObjectClass.PUBLIC_KEY, Attribute.LABEL: "workload"}))
        public = serialization.load_der_public_key(encode_ec_public_key(pub))
    cert = tpm.folder / "leaf.pem"
    cert.write_bytes(_leaf(root, public, "tpm-workload").public_bytes(serialization.Encoding.PEM))
    client = emulator.boto3_client()
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    anchor = client.create_trust_anchor(name="tpm", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    profile = client.create_profile(name="tpm", roleArns=[ROLE], enabled=True)["profile"]["profileArn"]
    env = {k: v for k, v in tpm.env.items() if not k.startswith("AWS_")}
    result = subprocess.run(
        [*signer_cmd(), "credential-process", "--certificate", str(cert),
         "--private-key", f"pkcs11:token=rapki-tpm;object=workload?pin-value={PIN}", "--pkcs11-lib", tpm.module,
         "--trust-anchor-arn", anchor, "--profile-arn", profile, "--role-arn", ROLE,
         "--endpoint", emulator.endpoint_url, "--ca-bundle", emulator.ca_bundle],
        capture_output=True, env=env, stdin=subprocess.DEVNULL, timeout=120, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["AccessKeyId"]
