"""rapki-signer end to end: ``rapki init`` -> ``rapki issue`` -> ``rapki-signer`` -> the emulator.

Everything here talks to a real ``rapki emulator`` over HTTPS on loopback (the ``emulator``
fixture): certificates come from the rapki CLI, trust anchors, profiles and CRLs are created through
the emulator's API with boto3, and the signer runs as the installed console script.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from pki.signer import serve as serve_module
from pki.signer.serve import CredentialCache, make_server
from pki.signer.session import SessionOptions
from tests.commands import rapki_cmd, signer_cmd, signer_serving
from tests.emulator_fixture import RunningEmulator, make_ca, make_leaf, pem_of

ROLE = "arn:aws:iam::123456789012:role/signer-e2e"
PASSPHRASE = "signer-e2e-not-secret"




@dataclass
class Setup:
    home: Path
    env: dict[str, str]
    emulator: RunningEmulator
    root_anchor: str  # trust anchor holding the root: leaves send the issuing CA as intermediate
    issuing_anchor: str  # trust anchor holding the issuing CA itself: no intermediates needed
    profile: str
    client: Any
    crl_id: str = ""

    def rapki(self, *args: str) -> str:
        result = subprocess.run([*rapki_cmd(), *args], env=self.env, capture_output=True, text=True, check=False)
        assert result.returncode == 0, result.stderr
        return result.stdout

    def issue(self, out: Path, key_type: str = "ec-p256", cn: str = "app-1") -> dict[str, Any]:
        return json.loads(
            self.rapki("issue", "--profile", "app", "--cn", cn, "--key-type", key_type, "--out", str(out), "--json")
        )

    def args(self, out: Path, *, chain: bool = True, anchor: str | None = None) -> list[str]:
        args = ["--certificate", str(out / "cert.pem"), "--private-key", str(out / "key.pem")]
        if chain:
            args += ["--intermediates", str(out / "chain.pem")]
        return [
            *args,
            "--trust-anchor-arn",
            anchor or (self.root_anchor if chain else self.issuing_anchor),
            "--profile-arn",
            self.profile,
            "--role-arn",
            ROLE,
            "--endpoint",
            self.emulator.endpoint_url,
            "--ca-bundle",
            self.emulator.ca_bundle,
        ]

    def options(self, out: Path) -> SessionOptions:
        return SessionOptions(
            certificate=str(out / "cert.pem"),
            private_key=str(out / "key.pem"),
            intermediates=str(out / "chain.pem"),
            trust_anchor_arn=self.root_anchor,
            profile_arn=self.profile,
            role_arn=ROLE,
            endpoint=self.emulator.endpoint_url,
            ca_bundle=self.emulator.ca_bundle,
            max_attempts=1,
        )

    def revoke(self, serial: str) -> None:
        """Revoke in the CA, build the CRL with the CLI and import it into the root anchor."""
        self.rapki("revoke", serial)
        crl_path = self.home.parent / "crl.pem"
        self.rapki("crl", "build", "--out", str(crl_path))
        # The emulator is shared by the test session: touch only this module's CRL.
        if self.crl_id:
            self.client.update_crl(crlId=self.crl_id, crlData=crl_path.read_bytes())
        else:
            self.crl_id = self.client.import_crl(
                name="rapki", crlData=crl_path.read_bytes(), trustAnchorArn=self.root_anchor, enabled=True
            )["crl"]["crlId"]


@pytest.fixture(scope="module")
def ra(emulator: RunningEmulator, tmp_path_factory: pytest.TempPathFactory) -> Setup:
    base = tmp_path_factory.mktemp("signer-e2e")
    home = base / "home"
    env = {**os.environ, "RAPKI_HOME": str(home), "RAPKI_PASSPHRASE": PASSPHRASE}
    env.pop("RAPKI_DATABASE_URL", None)
    setup = Setup(home, env, emulator, "", "", "", emulator.boto3_client())
    setup.rapki("init")
    setup.rapki("profile", "add", "app", "--cn-pattern", "app-[0-9]+")
    root = setup.rapki("ca", "root")
    issuing = setup.rapki("ca", "chain")
    issuing_only = x509.load_pem_x509_certificates(issuing.encode())[0]

    def anchor(name: str, data: str) -> str:
        source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": data}}
        return setup.client.create_trust_anchor(name=name, source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]

    setup.root_anchor = anchor("rapki-root", root)
    setup.issuing_anchor = anchor("rapki-issuing", pem_of(issuing_only))
    setup.profile = setup.client.create_profile(name="signer-e2e", roleArns=[ROLE], enabled=True)["profile"][
        "profileArn"
    ]
    return setup


def run_signer(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[bytes]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    return subprocess.run(
        [*signer_cmd(), *args], capture_output=True, env={**clean, **(env or {})}, timeout=120, check=False
    )


def assert_credentials(result: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    assert result.returncode == 0, result.stderr.decode()
    doc = json.loads(result.stdout)
    assert doc["Version"] == 1
    assert doc["AccessKeyId"] and doc["SecretAccessKey"] and doc["SessionToken"] and doc["Expiration"]
    assert result.stderr == b""
    return doc


# ------------------------------------------------------------------------------------------------
# credential-process


@pytest.mark.parametrize("key_type", ["ec-p256", "rsa-2048", "ml-dsa-65"])
@pytest.mark.parametrize("chain", [True, False], ids=["with-intermediates", "anchor-is-issuing-ca"])
def test_credential_process_with_rapki_issued_certificates(
    ra: Setup, tmp_path: Path, key_type: str, chain: bool
) -> None:
    ra.issue(tmp_path, key_type)
    assert_credentials(run_signer("credential-process", *ra.args(tmp_path, chain=chain)))


def test_credential_process_pkcs12(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path, "ec-p256")
    key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    cert = x509.load_pem_x509_certificate((tmp_path / "cert.pem").read_bytes())
    chain = x509.load_pem_x509_certificates((tmp_path / "chain.pem").read_bytes())
    bundle = tmp_path / "bundle.p12"
    bundle.write_bytes(
        pkcs12.serialize_key_and_certificates(b"app", key, cert, chain, serialization.NoEncryption())  # type: ignore[arg-type]
    )
    args = ra.args(tmp_path)
    for flag in ("--private-key", "--intermediates"):
        i = args.index(flag)
        del args[i : i + 2]
    args[args.index("--certificate") + 1] = str(bundle)
    assert_credentials(run_signer("credential-process", *args))


def test_credential_process_encrypted_pkcs8(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path, "rsa-2048")
    key = serialization.load_pem_private_key((tmp_path / "key.pem").read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"correct horse"),
    )
    (tmp_path / "key.pem").write_bytes(encrypted)
    assert b"ENCRYPTED PRIVATE KEY" in encrypted
    assert_credentials(run_signer("credential-process", *ra.args(tmp_path), "--pkcs8-password", "correct horse"))
    missing = run_signer("credential-process", *ra.args(tmp_path))
    assert missing.returncode == 1 and missing.stdout == b"" and b"--pkcs8-password" in missing.stderr


def test_revoked_certificate_gets_the_service_error(ra: Setup, tmp_path: Path) -> None:
    issued = ra.issue(tmp_path, "ec-p256")
    assert_credentials(run_signer("credential-process", *ra.args(tmp_path)))
    ra.revoke(issued["serial"])
    result = run_signer("credential-process", *ra.args(tmp_path))
    assert result.returncode == 1
    assert result.stdout == b""
    err = result.stderr.decode()
    assert "AccessDeniedException (HTTP 403): Certificate revoked" in err
    assert f"serial {issued['serial'].lower().lstrip('0')}" in err


def test_untrusted_certificate_names_chain_and_anchor(ra: Setup, tmp_path: Path) -> None:
    stranger_ca = make_ca("Stranger CA")
    cert, key = make_leaf(stranger_ca, "app-9")
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    (tmp_path / "chain.pem").write_text(pem_of(stranger_ca.cert))
    result = run_signer("credential-process", *ra.args(tmp_path))
    assert result.returncode == 1 and result.stdout == b""
    err = result.stderr.decode()
    assert "AccessDeniedException (HTTP 403): Untrusted Signing Certificate" in err
    assert "Stranger CA" in err and ra.root_anchor in err


def test_retries_throttling_and_5xx_against_emulator(ra: Setup, emulator: RunningEmulator, tmp_path: Path) -> None:
    ra.issue(tmp_path)
    emulator.clear_faults()
    emulator.reset_stats()
    emulator.set_faults(throttleNext=1, failNext=1, operations=["CreateSession"])
    try:
        assert_credentials(run_signer("credential-process", *ra.args(tmp_path)))
    finally:
        emulator.clear_faults()
    stats = emulator.stats()
    assert stats["calls"]["CreateSession"] == 3  # throttled, 500, then signed again and accepted
    assert stats["injected"] == {"ThrottlingException": 1, "InternalServerException": 1}


def test_invalid_signature_hint_under_clock_skew(ra: Setup, tmp_path: Path) -> None:
    if shutil.which("faketime") is None:
        pytest.skip("faketime is not installed")
    ra.issue(tmp_path)
    result = subprocess.run(
        ["faketime", "-f", "+20m", *signer_cmd(), "credential-process", *ra.args(tmp_path)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1 and result.stdout == b""
    err = result.stderr.decode()
    assert "AccessDeniedException (HTTP 403)" in err
    assert "clock is 20 minutes ahead of the service's" in err


# ------------------------------------------------------------------------------------------------
# update


def test_update_once_against_emulator(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path / "id")
    creds_file = tmp_path / "credentials"
    creds_file.write_text(
        "# managed in part by rapki-signer\n[default]\nregion = us-east-1\n[ra]\nregion = eu-west-1\n"
    )
    env = {"AWS_SHARED_CREDENTIALS_FILE": str(creds_file)}
    result = run_signer("update", *ra.args(tmp_path / "id"), "--profile", "ra", "--once", env=env)
    assert result.returncode == 0, result.stderr.decode()
    text = creds_file.read_text()
    assert text.startswith(
        "# managed in part by rapki-signer\n[default]\nregion = us-east-1\n[ra]\nregion = eu-west-1\n"
    )
    assert "aws_access_key_id = " in text and "aws_session_token = " in text
    assert creds_file.stat().st_mode & 0o777 == 0o600
    import configparser

    parsed = configparser.ConfigParser()
    parsed.read_string(text)
    assert parsed["ra"]["aws_access_key_id"].startswith("ASIA")


# ------------------------------------------------------------------------------------------------
# serve


@pytest.fixture
def imds(ra: Setup, tmp_path: Path) -> Iterator[tuple[Any, Path, dict[str, Any]]]:
    issued = ra.issue(tmp_path / "id")
    server = make_server(ra.options(tmp_path / "id"), port=0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield server, tmp_path / "id", issued
    server.shutdown()
    server.server_close()


def _fetcher(server: Any) -> Any:
    from botocore.utils import InstanceMetadataFetcher

    return InstanceMetadataFetcher(timeout=10, num_attempts=1, base_url=f"http://127.0.0.1:{server.server_address[1]}/")


def test_serve_answers_botocore_and_uses_renewed_certificate(
    ra: Setup, imds: tuple[Any, Path, dict[str, Any]], tmp_path: Path
) -> None:
    server, identity, issued = imds
    fetcher = _fetcher(server)
    first = fetcher.retrieve_iam_role_credentials()
    assert first["access_key"].startswith("ASIA") and first["role_name"] == "signer-e2e"
    assert fetcher.retrieve_iam_role_credentials()["access_key"] == first["access_key"]  # cached
    # Renewal on disk: a new certificate and key from the CA, copied over the served files.
    renewed = ra.issue(tmp_path / "renewed", cn="app-2")
    shutil.copyfile(tmp_path / "renewed" / "key.pem", identity / "key.pem")
    shutil.copyfile(tmp_path / "renewed" / "cert.pem", identity / "cert.pem")
    # The old certificate is revoked: only the renewed one can still get credentials.
    ra.revoke(issued["serial"])
    second = fetcher.retrieve_iam_role_credentials()
    assert second["access_key"] != first["access_key"]
    assert server.cache.material.certificate.serial_number == int(renewed["serial"], 16)


def test_serve_outage_never_answers_success_with_bad_credentials(
    ra: Setup, emulator: RunningEmulator, tmp_path: Path
) -> None:
    now = [0.0]  # the cache's clock, moved by hand past its retry back-off
    ra.issue(tmp_path / "id")
    emulator.clear_faults()
    emulator.set_faults(failRate=1.0, operations=["CreateSession"])
    try:
        cache = CredentialCache(ra.options(tmp_path / "id"), clock=lambda: now[0])
        server = make_server(ra.options(tmp_path / "id"), port=0, cache=cache)  # first fetch fails: still serves
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        thread.start()
        fetcher = _fetcher(server)
        assert fetcher.retrieve_iam_role_credentials() == {}  # 503, never "Success" without credentials
        emulator.clear_faults()
        assert fetcher.retrieve_iam_role_credentials() == {}  # within the back-off: not retried yet
        now[0] += serve_module.RETRY_MAX  # past the back-off
        good = fetcher.retrieve_iam_role_credentials()
        assert good["access_key"].startswith("ASIA")
        # The service goes down again and the credentials are due for refresh: the last good ones
        # are kept while they are valid...
        emulator.set_faults(failRate=1.0, operations=["CreateSession"])
        cache.refresh_before = 10**6
        assert fetcher.retrieve_iam_role_credentials()["access_key"] == good["access_key"]
        # ...and once they are too close to expiry, the answer is 503, not "Success".
        cache.min_validity = 10**6
        assert fetcher.retrieve_iam_role_credentials() == {}
        server.shutdown()
        server.server_close()
    finally:
        emulator.clear_faults()


def test_serve_command_with_botocore(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path / "id")
    with signer_serving([*ra.args(tmp_path / "id"), "--port", "0", "--hop-limit", "2"]) as (proc, url):
        import botocore.session

        session = botocore.session.get_session()
        session.set_config_variable("ec2_metadata_service_endpoint", url)
        session.set_config_variable("credentials_file", str(tmp_path / "none"))
        session.set_config_variable("config_file", str(tmp_path / "none"))
        from botocore.credentials import InstanceMetadataProvider
        from botocore.utils import InstanceMetadataFetcher

        provider = InstanceMetadataProvider(InstanceMetadataFetcher(timeout=10, num_attempts=1, base_url=url))
        creds = provider.load()
        assert creds is not None and creds.get_frozen_credentials().access_key.startswith("ASIA")
        assert proc.poll() is None
    assert proc.stdout is not None and proc.stdout.read() == b""


# ------------------------------------------------------------------------------------------------
# Python API


def test_boto3_session_factory(ra: Setup, emulator: RunningEmulator, tmp_path: Path) -> None:
    from pki.signer.boto import roles_anywhere_session

    ra.issue(tmp_path / "id")
    opts = ra.options(tmp_path / "id")
    opts.session_duration = 900
    session = roles_anywhere_session(opts)
    creds = session.get_credentials()
    frozen = creds.get_frozen_credentials()
    assert frozen.access_key.startswith("ASIA") and frozen.token
    assert session.region_name == "us-east-1"
    # A client built from the session signs with those credentials (the emulator accepts any SigV4).
    client = session.client("rolesanywhere", endpoint_url=emulator.endpoint_url, verify=emulator.ca_bundle)
    assert "profiles" in client.list_profiles()
    # Refresh goes back to CreateSession (forced by pretending the credentials expire now).
    creds._expiry_time = creds._time_fetcher()
    assert creds.get_frozen_credentials().access_key != frozen.access_key


def test_credential_process_does_not_import_boto3_or_click(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path / "id")
    code = (
        "import sys, io, contextlib\n"
        "from pki.signer.cli import main\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out):\n"
        "    rc = main(sys.argv[1:])\n"
        "heavy = sorted(m for m in ('boto3', 'botocore', 'click', 'flask', 'sqlalchemy') if m in sys.modules)\n"
        "print(rc, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, "credential-process", *ra.args(tmp_path / "id")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.stdout.strip() == "0 []", result.stderr


def test_tls_verification_and_no_verify_ssl(ra: Setup, tmp_path: Path) -> None:
    ra.issue(tmp_path / "id")
    args = ra.args(tmp_path / "id")
    i = args.index("--ca-bundle")
    without_bundle = args[:i] + args[i + 2 :]
    refused = run_signer("credential-process", *without_bundle)
    assert refused.returncode == 1 and refused.stdout == b""
    assert b"TLS verification" in refused.stderr and b"--ca-bundle" in refused.stderr
    assert_credentials(run_signer("credential-process", *without_bundle, "--no-verify-ssl"))
    # AWS_CA_BUNDLE works like --ca-bundle.
    assert_credentials(run_signer("credential-process", *without_bundle, env={"AWS_CA_BUNDLE": ra.emulator.ca_bundle}))


# ------------------------------------------------------------------------------------------------
# credential-process --cache


def test_parallel_cached_processes_make_one_create_session(
    ra: Setup, emulator: RunningEmulator, tmp_path: Path
) -> None:
    """Eight SDK processes starting at once share one CreateSession (the helper's issue #31)."""
    ra.issue(tmp_path / "id")
    args = [*ra.args(tmp_path / "id"), "--cache-dir", str(tmp_path / "cache")]
    clean = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    emulator.reset_stats()
    procs = [subprocess.Popen([*signer_cmd(), "credential-process", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=clean) for _ in range(8)]  # fmt: skip
    outputs = set()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
        outputs.add(out)
    assert len(outputs) == 1
    assert emulator.stats()["calls"].get("CreateSession") == 1
    assert_credentials(run_signer("credential-process", *args))
    assert emulator.stats()["calls"].get("CreateSession") == 1


CACHE_HIT_PROBE = (
    "import sys, io, contextlib\n"
    "from pki.signer.cli import main\n"
    "out = io.StringIO()\n"
    "with contextlib.redirect_stdout(out):\n"
    "    rc = main(sys.argv[1:])\n"
    "loaded = sorted(m for m in ('cryptography', 'http.client', 'ssl', 'pki.signer.session', 'pki.signer.material',\n"
    "                            'pki.rolesanywhere', 'boto3') if m in sys.modules)\n"
    "print(rc, loaded)\n"
)


def test_cache_hit_loads_only_the_standard_library(ra: Setup, tmp_path: Path) -> None:
    """What a cache hit loads: no cryptography, no TLS, none of the signing code."""
    ra.issue(tmp_path / "id")
    args = ["credential-process", *ra.args(tmp_path / "id"), "--cache-dir", str(tmp_path / "cache")]
    assert_credentials(run_signer(*args))
    result = subprocess.run([sys.executable, "-c", CACHE_HIT_PROBE, *args], capture_output=True, text=True,
                            timeout=120, check=False)  # fmt: skip
    assert result.stdout.strip() == "0 []", result.stderr
