"""rapki-signer as a drop-in for aws_signing_helper: command lines the helper accepts, inputs without
files, the credential-process cache, serve's container endpoint, and the published comparison table."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from pki.errors import RapkiError
from pki.signer import cache, cli, inputs, material, tools
from pki.signer.serve import default_hop_limit, make_server
from tests import test_signer as base
from tests.test_signer import REPO, FakeService, _opts, base_args, key_pem, pem, run_signer

# The fixtures of test_signer.py, used here under the same names.
files, fake, pki = base.files, base.fake, base.pki


def _cli(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.main(list(args))
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


# --- command lines the helper accepts ------------------------------------------------------------
@pytest.mark.e2e
def test_one_pem_file_with_certificate_and_key(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> None:
    both = tmp_path / "both.pem"
    both.write_bytes(files["cert"].read_bytes() + files["key"].read_bytes())
    args = base_args(files, fake.url)
    args[args.index("--private-key") : args.index("--private-key") + 2] = []
    args[args.index("--certificate") + 1] = str(both)
    result = run_signer("credential-process", *args)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout)["AccessKeyId"]


@pytest.mark.e2e
def test_certificate_key_and_chain_from_stdin(files: dict[str, Path], fake: FakeService) -> None:
    stream = files["cert"].read_bytes() + files["key"].read_bytes() + files["chain"].read_bytes()
    args = base_args(files, fake.url)
    args[args.index("--intermediates") : args.index("--intermediates") + 2] = []
    args[args.index("--certificate") + 1] = "-"
    args[args.index("--private-key") + 1] = "-"
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    result = subprocess.run([*cli_cmd(), "credential-process", *args], input=stream, capture_output=True,
                            env=full_env, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr.decode()
    (req,) = fake.requests
    assert req["headers"]["X-Amz-X509-Chain"]  # the certificates after the leaf are the chain


def test_empty_stdin_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing piped in: the error says standard input was empty (not 'PKCS#12 file could not be opened')."""
    from pki.signer import stdin

    monkeypatch.setattr(stdin, "_data", b"\n")
    with pytest.raises(material.MaterialError, match="standard input, which was empty"):
        material.load_material("-")


def cli_cmd() -> list[str]:
    from tests.commands import signer_cmd

    return signer_cmd()


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["serve", "--no-verify-ssl=true"], ["serve", "--no-verify-ssl"]),
        (["serve", "--with-proxy=false", "--port=1"], ["serve", "--port=1"]),
        (["credential-process", "--debug=T", "--cache=0"], ["credential-process", "--debug"]),
        (["credential-process", "--region=true"], ["credential-process", "--region=true"]),  # a string flag
    ],
)
def test_cobra_boolean_flag_syntax(argv: list[str], expected: list[str]) -> None:
    assert cli.normalise_bool_flags(cli.build_parser(), argv) == expected


def test_bad_boolean_value_is_a_usage_error() -> None:
    code, _out, err = _cli("credential-process", "--no-verify-ssl=maybe")
    assert code == 1 and 'invalid argument "maybe" for "--no-verify-ssl"' in err


def test_sign_string_with_a_pkcs12_bundle_alone(files: dict[str, Path], pki: dict[str, Any], tmp_path: Path) -> None:
    bundle = tmp_path / "id.p12"
    bundle.write_bytes(pkcs12.serialize_key_and_certificates(
        b"id", pki["ec_key"], pki["ec_leaf"], None, serialization.NoEncryption()))  # fmt: skip
    code, out, err = _cli("sign-string", "--certificate", str(bundle), "--format", "text")
    assert code == 0, err
    public = pki["ec_leaf"].public_key()
    public.verify(bytes.fromhex(out), tools.fixed_string_to_sign(public), ec.ECDSA(hashes.SHA256()))


def test_sign_string_with_nothing_says_what_is_missing() -> None:
    code, out, err = _cli("sign-string")
    assert code == 1 and out == "" and "--private-key is required" in err


def test_help_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli("help", "serve")
    assert code == 0 and "--hop-limit" in out and "--fail-fast" in out
    code, out, _ = _cli("help")
    assert code == 0 and "completion" in out
    code, _, err = _cli("help", "nonsense")
    assert code == 1 and "unknown help topic" in err


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_completion_completes_commands_and_flags(tmp_path: Path) -> None:
    code, script, _ = _cli("completion", "bash")
    assert code == 0
    (tmp_path / "c.sh").write_text(script)
    probe = f"""source {tmp_path / 'c.sh'}
COMP_WORDS=(rapki-signer cre); COMP_CWORD=1; _rapki_signer; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(rapki-signer serve --fail); COMP_CWORD=2; _rapki_signer; echo "${{COMPREPLY[*]}}"
COMP_WORDS=(rapki-signer completion z); COMP_CWORD=2; _rapki_signer; echo "${{COMPREPLY[*]}}"
"""
    out = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.splitlines() == ["credential-process", "--fail-fast", "zsh"]


@pytest.mark.parametrize("shell", ["zsh", "fish", "powershell"])
def test_other_completion_scripts_name_every_command(shell: str) -> None:
    code, script, _ = _cli("completion", shell)
    assert code == 0
    for command in ("credential-process", "serve", "update", "sign-string", "read-certificate-data"):
        assert command in script
    if shell == "zsh" and shutil.which("zsh"):
        subprocess.run(["zsh", "-n", "-c", script], check=True, timeout=30)


def test_signer_modules_import_no_posix_only_module_at_load() -> None:
    """update and the cache lock with fcntl on POSIX and msvcrt on Windows, imported when locking."""
    for path in (REPO / "pki" / "signer").glob("*.py"):
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        names = {a.name for n in top for a in n.names} | {n.module for n in top if isinstance(n, ast.ImportFrom)}
        assert not names & {"fcntl", "msvcrt", "termios", "pwd"}, path


def test_tss2_key_file_names_the_way_out(tmp_path: Path) -> None:
    key = tmp_path / "tpm.key"
    key.write_text("-----BEGIN TSS2 PRIVATE KEY-----\nMIIB\n-----END TSS2 PRIVATE KEY-----\n")
    with pytest.raises(material.MaterialError, match=r"TSS2.*tpm2-pkcs11"):
        material.parse_private_key(key.read_bytes(), None, str(key))


# --- the Python API without files ----------------------------------------------------------------
def test_bytes_and_objects(pki: dict[str, Any]) -> None:
    leaf_pem, key = pem(pki["ec_leaf"]), pki["ec_key"]
    chain = pem(pki["inter"])
    got = inputs.load_any(leaf_pem, key, chain)
    assert got.certificate == pki["ec_leaf"] and got.chain == (pki["inter"],)
    got = inputs.load_any(pki["ec_leaf"], key_pem(key, serialization.PrivateFormat.PKCS8), [pki["inter"]])
    assert got.private_key.public_key() == key.public_key()
    bundle = pkcs12.serialize_key_and_certificates(b"x", key, pki["ec_leaf"], None, serialization.NoEncryption())
    assert inputs.load_any(bundle).certificate == pki["ec_leaf"]
    assert inputs.load_any(leaf_pem + key_pem(key, serialization.PrivateFormat.PKCS8)).certificate == pki["ec_leaf"]
    with pytest.raises(material.MaterialError, match="does not belong"):
        inputs.load_any(pki["ec_leaf"], pki["rsa_key"])


# --- the credential-process cache ------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def _entry(clock: Clock, seconds: int, n: int) -> cache.Entry:
    expiration = (clock.now + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return cache.Entry(f'{{"n":{n}}}', expiration, 3600)


def test_a_cache_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    """``--cache-dir`` naming a file: the error names the directory and the option, not only errno."""
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    with pytest.raises(OSError, match=r"cache directory .*file cannot be used.*--cache-dir names a directory"):
        cache.cached_output(not_a_dir, "k", lambda: _entry(Clock(), 3600, 1))


def test_cache_serves_until_due_then_refreshes(tmp_path: Path) -> None:
    clock, calls = Clock(), []

    def fetch() -> cache.Entry:
        calls.append(clock.now)
        return _entry(clock, 3600, len(calls))

    directory = tmp_path / "c"
    assert cache.cached_output(directory, "k", fetch, clock=clock) == '{"n":1}'
    clock.now += timedelta(minutes=43)  # 17 minutes left: still served
    assert cache.cached_output(directory, "k", fetch, clock=clock) == '{"n":1}'
    clock.now += timedelta(minutes=2)  # 15 left: botocore would refresh, so the cache does
    assert cache.cached_output(directory, "k", fetch, clock=clock) == '{"n":2}'
    assert len(calls) == 2
    assert stat.S_IMODE((directory / "k.json").stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


def test_cache_never_returns_expired_credentials(tmp_path: Path) -> None:
    clock = Clock()
    cache.cached_output(tmp_path, "k", lambda: _entry(clock, 3600, 1), clock=clock)

    def failing() -> cache.Entry:
        raise RapkiError("throttled")

    clock.now += timedelta(minutes=50)  # 10 minutes left: refresh fails, still valid ones are used
    assert cache.cached_output(tmp_path, "k", failing, clock=clock) == '{"n":1}'
    clock.now += timedelta(minutes=9, seconds=30)  # 30 s left: never handed out
    with pytest.raises(RapkiError, match="throttled"):
        cache.cached_output(tmp_path, "k", failing, clock=clock)


def test_cache_short_sessions_refresh_at_half_life(tmp_path: Path) -> None:
    clock, calls = Clock(), []

    def fetch() -> cache.Entry:
        calls.append(1)
        e = _entry(clock, 900, len(calls))
        return cache.Entry(e.output, e.expiration, 900)

    cache.cached_output(tmp_path, "k", fetch, clock=clock)
    clock.now += timedelta(minutes=7)
    cache.cached_output(tmp_path, "k", fetch, clock=clock)
    clock.now += timedelta(minutes=1)
    cache.cached_output(tmp_path, "k", fetch, clock=clock)
    assert len(calls) == 2


def test_cache_key_follows_certificate_and_request(files: dict[str, Path], tmp_path: Path) -> None:
    request = {"role_arn": "r1"}
    first = cache.cache_key(str(files["cert"]), request)
    assert cache.cache_key(str(files["cert"]), {"role_arn": "r2"}) != first
    copy = tmp_path / "renewed.pem"
    copy.write_bytes(files["rsa_cert"].read_bytes())
    assert cache.cache_key(str(copy), request) != first


def test_damaged_cache_file_is_refreshed(tmp_path: Path) -> None:
    clock = Clock()
    (tmp_path / "k.json").write_text("{not json")
    assert cache.cached_output(tmp_path, "k", lambda: _entry(clock, 3600, 7), clock=clock) == '{"n":7}'


@pytest.mark.e2e
def test_cached_credential_process_calls_once(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> None:
    args = [*base_args(files, fake.url), "--cache-dir", str(tmp_path / "cache")]
    outputs = {run_signer("credential-process", *args).stdout for _ in range(3)}
    assert len(outputs) == 1 and len(fake.requests) == 1
    assert b"AccessKeyId" in outputs.pop()


# --- serve: container endpoint, region, hop limit, fail fast --------------------------------------
def test_hop_limit_defaults() -> None:
    assert default_hop_limit("127.0.0.1") == 64 and default_hop_limit("::1") == 64
    assert default_hop_limit("0.0.0.0") == 1 and default_hop_limit("10.1.2.3") == 1  # noqa: S104


@pytest.fixture
def served(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> Any:
    import threading

    server = make_server(_opts(files, fake.url), port=0, container_token_file=str(tmp_path / "token"))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_container_endpoint_with_botocore(served: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from botocore.credentials import ContainerProvider

    token_file = tmp_path / "token"
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    url = f"http://127.0.0.1:{served.server_address[1]}/v1/credentials"
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": str(token_file)}
    creds = ContainerProvider(environ=env).load()
    assert creds is not None and creds.get_frozen_credentials().access_key == "ASIATESTKEY"
    env = {"AWS_CONTAINER_CREDENTIALS_FULL_URI": url, "AWS_CONTAINER_AUTHORIZATION_TOKEN": token_file.read_text()}
    assert ContainerProvider(environ=env).load() is not None


def test_container_endpoint_refuses_missing_or_wrong_token(served: Any) -> None:
    url = f"http://127.0.0.1:{served.server_address[1]}/v1/credentials"
    for headers in ({}, {"Authorization": "wrong-token-wrong-token"}):
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10)
        assert err.value.code == 401 and json.loads(err.value.read())["code"] == "Unauthorized"


def test_region_is_answered(served: Any) -> None:
    base = f"http://127.0.0.1:{served.server_address[1]}"
    token_req = urllib.request.Request(base + "/latest/api/token", method="PUT",
                                       headers={"x-aws-ec2-metadata-token-ttl-seconds": "60"})  # fmt: skip
    token = urllib.request.urlopen(token_req, timeout=10).read().decode()
    req = urllib.request.Request(base + "/latest/meta-data/placement/region",
                                 headers={"x-aws-ec2-metadata-token": token})  # fmt: skip
    assert urllib.request.urlopen(req, timeout=10).read() == b"us-east-1"


def test_fail_fast_start(files: dict[str, Path], fake: FakeService, tmp_path: Path) -> None:
    fake.default = (403, "AccessDeniedException", b'{"message":"no"}')
    with pytest.raises(RapkiError, match="--fail-fast"):
        make_server(_opts(files, fake.url), port=0, fail_fast=True,
                    container_token_file=str(tmp_path / "t1"))  # fmt: skip
    server = make_server(_opts(files, fake.url), port=0)
    token_file = Path(server.container_token_file)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600 and stat.S_IMODE(token_file.parent.stat().st_mode) == 0o700
    server.server_close()  # the helper's behaviour without the flag: it starts and keeps trying
    assert not token_file.parent.exists()  # a generated token goes with the server


def test_a_container_token_file_that_cannot_be_made_is_named(tmp_path: Path) -> None:
    from pki.signer.container import load_or_create_token

    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RapkiError, match=r"--container-token-file .*file/token: cannot be created"):
        load_or_create_token(str(blocker / "token"))


# --- the published comparison ----------------------------------------------------------------------
def _table() -> list[tuple[str, str, str]]:
    """(command, flag, status) rows of docs/signer.md's comparison table."""
    text = (REPO / "docs" / "signer.md").read_text()
    rows = re.findall(r"^\| `([a-z-]+)` \| (`--[a-z0-9-]+`|—) \| ([^|]+) \|", text, re.MULTILINE)
    return [(c, f.strip("`"), s.strip()) for c, f, s in rows]


def test_comparison_table_matches_help() -> None:
    rows = _table()
    assert len(rows) > 40
    subs = {p.prog.split()[-1]: p for p in cli._subparsers(cli.build_parser())}
    for command, flag, status in rows:
        assert command in subs, command
        if flag == "—":
            continue
        options = {o for a in subs[command]._actions for o in a.option_strings}
        assert flag in options, f"{command} {flag} is in the table but not accepted"
        if status.startswith("supported") or status.startswith("yes"):
            help_text = subs[command].format_help()
            assert flag in help_text, f"{command} {flag} is said supported but hidden from --help"
    helper_commands = {"credential-process", "serve", "update", "sign-string", "read-certificate-data", "version",
                       "help", "completion"}  # fmt: skip
    assert helper_commands <= {c for c, _, _ in rows}


def test_session_options_take_bytes_and_objects(pki: dict[str, Any], fake: FakeService) -> None:
    """The Python API (SessionOptions, hence roles_anywhere_session) signs with objects, no files."""
    from pki.signer.session import SessionOptions, create_session

    opts = SessionOptions(
        certificate=pem(pki["ec_leaf"]), private_key=pki["ec_key"], intermediates=[pki["inter"]],
        trust_anchor_arn=base.ANCHOR, profile_arn=base.PROFILE, role_arn=base.ROLE, endpoint=fake.url, max_attempts=1,
    )  # fmt: skip
    assert create_session(opts).access_key_id == "ASIATESTKEY"
    (req,) = fake.requests
    assert req["headers"]["X-Amz-X509-Chain"]
