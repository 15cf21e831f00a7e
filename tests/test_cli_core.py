"""The operator CLI over the CA core: the whole flow, and bad input (exit 2, one stderr line, no change)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from service.cli import main
from tests.conftest import PASSPHRASE
from tests.test_issuance import csr_for
from tests.validators import lint_cert, lint_crl, openssl_verify


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    home = tmp_path / "home"
    monkeypatch.setenv("RAPKI_HOME", str(home))
    run("init")
    run("profile", "add", "web", "--cn-pattern", "web-[0-9]+", "--san-dns-pattern", r".*\.example\.com",
        "--max-ttl", "7d")
    return home


def run(*args: str, code: int = 0) -> Result:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == code, f"rapki {' '.join(args)} -> {result.exit_code}: {result.output}{result.stderr}"
    return result


def rows(home: Path) -> list[dict]:  # type: ignore[type-arg]
    return json.loads(run("list", "--json").stdout)


def test_full_flow(home: Path, tmp_path: Path) -> None:
    out = tmp_path / "leaf"
    issued = json.loads(run("issue", "--profile", "web", "--cn", "web-1", "--san", "dns:a.example.com",
                            "--key-type", "rsa-2048", "--out", str(out), "--json").stdout)
    assert lint_cert(out / "cert.pem") == ""
    assert (out / "key.pem").stat().st_mode & 0o777 == 0o600
    chain = run("ca", "chain").stdout
    assert chain == (out / "chain.pem").read_text()
    root = tmp_path / "root.pem"
    root.write_text(run("ca", "root").stdout)
    assert openssl_verify(out / "cert.pem", root=root, untrusted=out / "chain.pem").returncode == 0
    assert json.loads(run("show", issued["serial"], "--json").stdout)["status"] == "active"
    assert "revoked" in run("revoke", issued["serial"], "--reason", "keyCompromise").stdout
    assert "already revoked" in run("revoke", issued["serial"]).stdout
    crl = tmp_path / "crl.pem"
    report = json.loads(run("crl", "build", "--out", str(crl), "--json").stdout)
    assert report["entries"] == 1 and report["crl_number"] == 1 and report["pem_bytes"] == crl.stat().st_size
    assert lint_crl(crl) == ""
    assert [r["status"] for r in rows(home)] == ["revoked"]


def test_csr_mode_writes_no_key(home: Path, tmp_path: Path) -> None:
    csr = tmp_path / "req.pem"
    csr.write_bytes(csr_for(ec.generate_private_key(ec.SECP384R1()), cn="web-9"))
    run("issue", "--profile", "web", "--csr", str(csr), "--out", str(tmp_path / "o"))
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["cert.pem", "chain.pem"]


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["issue", "--profile", "web", "--cn", "db-1", "--out", "o"], "not allowed by profile"),
        (["issue", "--profile", "nope", "--cn", "web-1", "--out", "o"], "unknown profile"),
        (["issue", "--profile", "web", "--cn", "web-1", "--ttl", "30d", "--out", "o"], "above the max TTL"),
        (["issue", "--profile", "web", "--cn", "web-1", "--ttl", "soon", "--out", "o"], "invalid duration"),
        (["issue", "--profile", "web", "--cn", "web-1", "--san", "dns:x.example.org", "--out", "o"], "x.example.org"),
        (["issue", "--profile", "web", "--cn", "web 1,", "--out", "o"], "STS rejects"),
        (["revoke", "abcdef"], "no certificate with serial"),
        (["revoke", "xyz"], "invalid serial"),
        (["show", "123"], "no certificate"),
        (["profile", "add", "web", "--cn-pattern", "x"], "exists"),
        (["profile", "add", "bad", "--cn-pattern", "("], "invalid CN regular expression"),
        (["profile", "show", "nope"], "unknown profile"),
        (["crl", "build", "--issuer", "issuing-9"], "no issuing CA named"),
    ],
)
def test_bad_input_exits_2_with_one_line_and_changes_nothing(home: Path, args: list[str], fragment: str) -> None:
    before = rows(home)
    result = run(*args, code=2)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert rows(home) == before


@pytest.mark.parametrize(("edit", "fragment"), [
    (lambda text: text.replace("serial_bytes = 16", 'serial_bytes = "lots"'), "serial_bytes must be a whole number"),
    (lambda text: text.replace("serial_bytes = 16", "serial_bytes = 99"), "serial_bytes must be between"),
    (lambda text: text + "\n[ca2]\nname = \"\xff\"\n", "cannot be read"),
    (lambda text: "crl = 3\n" + text.replace("[crl]", "[crl2]"), "[crl] must be a table"),
])
def test_a_broken_config_is_one_line_and_exit_2(home: Path, edit: Callable[[str], str], fragment: str) -> None:
    config = home / "rapki.toml"
    text = edit(config.read_text())
    config.write_bytes(text.encode("latin-1") if "\xff" in text else text.encode())
    result = run("list", code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "rapki.toml" in lines[0], result.stderr


def test_bad_csrs_from_the_cli(home: Path, tmp_path: Path) -> None:
    cases = {
        "garbage.pem": b"-----BEGIN CERTIFICATE REQUEST-----\nnope\n-----END CERTIFICATE REQUEST-----\n",
        "weak.pem": csr_for(rsa.generate_private_key(65537, 1024), cn="web-1"),
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        result = run("issue", "--profile", "web", "--csr", str(tmp_path / name), "--out", str(tmp_path / "o"), code=2)
        assert len(result.stderr.strip().splitlines()) == 1
    assert rows(home) == []


def test_not_a_home_and_wrong_passphrase(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run("list", "--home", str(tmp_path), code=2)
    assert "not a rapki home" in result.stderr
    monkeypatch.setenv("RAPKI_PASSPHRASE", "wrong")
    result = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "o"), code=2)
    assert "wrong passphrase" in result.stderr
    monkeypatch.setenv("RAPKI_PASSPHRASE", PASSPHRASE)
    assert rows(home) == []


@pytest.mark.e2e
def test_console_script_prints_no_traceback(home: Path) -> None:
    """The installed entry point, in a real process: one line, exit 2."""
    proc = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", "revoke", "ffff"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["rapki: error: no certificate with serial ffff: see 'rapki list'"]


def test_usage_errors_exit_2(home: Path) -> None:
    result = CliRunner().invoke(main, ["issue", "--cn", "x"])
    assert result.exit_code == 2 and "Missing option" in result.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("args, says", [
    (["issue", "--cn", "x"], "Missing option '--profile'"),
    (["list", "--status", "bogus"], "Invalid value for '--status'"),
    (["audit", "--limit", "0"], "Invalid value for '--limit'"),
    (["no-such-command"], "No such command 'no-such-command'"),
    (["list", "--no-such-flag"], "No such option '--no-such-flag'"),
])
def test_click_usage_errors_are_one_line(home: Path, args: list[str], says: str) -> None:
    """Click's own usage errors follow the house rule too: exit 2, one stderr line, a pointer to --help."""
    proc = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rapki: error: ") and says in lines[0], proc.stderr
    assert "--help" in lines[0]


@pytest.mark.e2e
def test_bare_groups_show_their_help() -> None:
    for args in ([], ["profile"]):
        proc = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args],
                              capture_output=True, text=True, check=False)
        shown = proc.stdout + proc.stderr
        assert shown.startswith("Usage: ") and "Commands:" in shown and "error" not in shown, shown
        assert proc.returncode in (0, 2)  # click's choice for a bare group, not a failure of ours


@pytest.mark.e2e
def test_help_and_version_exit_0() -> None:
    for args in (["--help"], ["audit", "--help"], ["--version"]):
        proc = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args],
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0 and proc.stdout and not proc.stderr, args


def test_audit_log_reads_and_filters(home: Path) -> None:
    issued = json.loads(run("issue", "--profile", "web", "--cn", "web-1", "--out", str(home.parent / "o"),
                            "--json").stdout)
    run("revoke", issued["serial"], "--reason", "keyCompromise")
    entries = json.loads(run("audit", "--json").stdout)
    assert [e["action"] for e in entries[:2]] == ["certificate.revoke", "certificate.issue"]  # newest first
    assert entries[1]["target"] == issued["serial"] and entries[1]["details"]["cn"] == "web-1"
    assert {e["action"] for e in entries} >= {"ca.init", "profile.add"}
    only = json.loads(run("audit", "--action", "certificate.", "--json").stdout)
    assert {e["action"] for e in only} == {"certificate.issue", "certificate.revoke"}
    assert json.loads(run("audit", "--target", issued["serial"], "--limit", "1", "--json").stdout)[0]["action"] \
        == "certificate.revoke"
    assert json.loads(run("audit", "--actor", "nobody-like-this", "--json").stdout) == []
    assert len(json.loads(run("audit", "--since", "1h", "--json").stdout)) == len(entries)
    text = run("audit", "--limit", "1").stdout
    assert "certificate.revoke" in text and issued["serial"] in text and "reason=keyCompromise" in text
    bad = run("audit", "--since", "soon", code=2)
    assert "invalid duration" in bad.stderr


@pytest.mark.e2e
@pytest.mark.parametrize("command", [["serve", "--home", "{home}"], ["emulator", "--state", "{home}/state.json"]])
def test_a_port_in_use_is_one_line_and_creates_nothing(tmp_path: Path, command: list[str]) -> None:
    import socket

    target = tmp_path / "new-home"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = [a.replace("{home}", str(target)) for a in command]
        proc = subprocess.run([sys.executable, "-c", "from service.cli import main; main()", *args, "--port", str(port)],
                              capture_output=True, text=True, check=False, timeout=60,
                              env={**os.environ, "RAPKI_PASSPHRASE": PASSPHRASE})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"rapki: error: cannot listen on 127.0.0.1:{port}: Address already in use; stop what uses it or choose "
        "another --port"]
    assert not target.exists()


def test_issue_into_a_directory_that_cannot_be_made_records_nothing(home: Path, tmp_path: Path) -> None:
    """The files are written before the record commits: an --out that cannot be used is one line,
    exit 2, and no certificate row (it used to record an active certificate and lose its key)."""
    (tmp_path / "a-file").write_text("not a directory")
    result = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "a-file" / "out"), code=2)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write" in lines[0] and "nothing was issued or recorded" in lines[0], lines
    assert "Traceback" not in result.output + result.stderr and result.stdout == ""
    assert rows(home) == []
    assert [e["action"] for e in json.loads(run("audit", "--action", "certificate.", "--json").stdout)] == []


def test_issue_onto_a_full_disk_keeps_no_certificate_without_its_key(home: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A full file system (os.write raising ENOSPC for the key's temporary file, after cert.pem and
    chain.pem were written): one line, exit 1, no row, no file left behind."""
    full = tmp_path / "full"
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(f"{full}/.key.pem."):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    result = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(full), code=1)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "No space left on device" in lines[0] and "nothing was issued" in lines[0], lines
    assert "Traceback" not in result.output + result.stderr
    assert rows(home) == []
    assert sorted(p.name for p in full.iterdir()) == []
    monkeypatch.setattr(os, "write", real_write)
    issued = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(full))  # room again: it works
    [row] = rows(home)
    assert f"issued {row['serial']} " in issued.stdout
    assert sorted(p.name for p in full.iterdir()) == ["cert.pem", "chain.pem", "key.pem"]


def test_issue_with_the_minimum_ttl(home: Path, tmp_path: Path) -> None:
    issued = json.loads(run("issue", "--profile", "web", "--cn", "web-1", "--ttl", "5m", "--out", str(tmp_path / "o"),
                            "--json").stdout)
    [row] = rows(home)
    assert row["serial"] == issued["serial"] and row["status"] == "active"
    assert run("issue", "--profile", "web", "--cn", "web-1", "--ttl", "4m", "--out", str(tmp_path / "o"),
               code=2).stderr.strip() == "rapki: error: TTL 4m is below the minimum of 5m: certificates must " \
                                         "outlive clock skew"


ANCHOR_ARN = "arn:aws:rolesanywhere:eu-west-1:111122223333:trust-anchor/0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0"
PROFILE_ARN = "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/1a2b3c4d-5e6f-7081-92a3-b4c5d6e7f809"
ROLE_ARN = "arn:aws:iam::111122223333:role/web"


def profile_spec(name: str = "web") -> dict:  # type: ignore[type-arg]
    return json.loads(run("profile", "show", name, "--json").stdout)


def test_profile_update_changes_only_the_options_given(home: Path) -> None:
    """'profile update NAME --cn-pattern ... --max-ttl 3d' dropped the SAN patterns and the Roles
    Anywhere binding (it replaced the profile with defaults for every option not given)."""
    run("profile", "update", "web", "--san-uri-pattern", "https://example.com/.+", "--key-types", "ec-p256,rsa-2048",
        "--default-ttl", "12h", "--trust-anchor-arn", ANCHOR_ARN, "--profile-arn", PROFILE_ARN, "--role-arn", ROLE_ARN,
        "--session-duration", "900")
    before = profile_spec()
    updated = json.loads(run("profile", "update", "web", "--cn-pattern", "web-[a-z]+", "--max-ttl", "3d",
                             "--json").stdout)
    assert updated == profile_spec() == {**before, "cn_pattern": "web-[a-z]+", "max_ttl": "3d"}
    assert updated["san_dns_patterns"] == [r".*\.example\.com"] and updated["roles_anywhere"]["role_arns"] == [ROLE_ARN]
    # A list given replaces the list; '' empties it; the binding's other fields stay.
    other_role = "arn:aws:iam::111122223333:role/path/other"
    emptied = json.loads(run("profile", "update", "web", "--san-dns-pattern", "", "--role-arn", other_role,
                             "--json").stdout)
    assert emptied["san_dns_patterns"] == [] and emptied["san_uri_patterns"] == ["https://example.com/.+"]
    assert emptied["roles_anywhere"] == {**before["roles_anywhere"], "role_arns": [other_role]}
    assert "the others keep their values" in run("profile", "update", "--help").stdout
    entries = json.loads(run("audit", "--action", "profile.update", "--limit", "1", "--json").stdout)
    assert entries[0]["details"] == emptied


def test_a_profile_requiring_a_uri_san_refuses_certificates_without_one(home: Path, tmp_path: Path) -> None:
    """For a Roles Anywhere profile whose trusted identity propagation reads x509SAN/URI."""
    refused = run("profile", "update", "web", "--require-san-uri", code=2)
    assert "requires a URI SAN but allows none" in refused.stderr and refused.stderr.count("\n") == 1
    run("profile", "update", "web", "--san-uri-pattern", "spiffe://example/.+", "--require-san-uri")
    assert profile_spec()["require_san_uri"] is True
    without = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "a"), code=2)
    assert "requires a URI SAN" in without.stderr and without.stderr.count("\n") == 1
    run("issue", "--profile", "web", "--cn", "web-1", "--san", "uri:spiffe://example/a", "--out", str(tmp_path / "b"))
    run("profile", "update", "web", "--no-require-san-uri")
    run("issue", "--profile", "web", "--cn", "web-2", "--out", str(tmp_path / "c"))
    added = json.loads(run("profile", "add", "tip", "--cn-pattern", "t", "--san-uri-pattern", "u:.+",
                           "--require-san-uri", "--json").stdout)  # fmt: skip
    assert added["require_san_uri"] is True


@pytest.mark.parametrize(("args", "fragment"), [
    (["--role-arn", "notanarn"], "role ARN 'notanarn' is not an IAM role ARN"),
    (["--role-arn", "arn:aws:iam::111122223333:user/web"], "is not an IAM role ARN"),
    (["--trust-anchor-arn", "notanarn"], "trust anchor ARN 'notanarn' is not an ARN"),
    (["--trust-anchor-arn", PROFILE_ARN], "names a profile, not a trust-anchor"),
    (["--profile-arn", ANCHOR_ARN], "names a trust-anchor, not a profile"),
    (["--profile-arn", "arn:aws:rolesanywhere:eu-west-1:111122223333:profile/not-a-uuid"], "is not a profile id"),
    (["--trust-anchor-arn", ANCHOR_ARN, "--role-arn", "arn:aws-us-gov:iam::111122223333:role/web"],
     "is in partition aws-us-gov"),
])
def test_profiles_refuse_malformed_arns_in_add_and_update(home: Path, args: list[str], fragment: str) -> None:
    before = profile_spec()
    for command in (["profile", "add", "other", "--cn-pattern", "o"], ["profile", "update", "web"]):
        result = run(*command, *args, code=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and fragment in lines[0], lines
    assert profile_spec() == before
    assert "other" not in run("profile", "list").stdout


def test_a_profile_stored_with_a_bad_arn_says_so_and_can_be_mended(home: Path, tmp_path: Path) -> None:
    """Stored before the ARN checks: issuance fails naming the profile and the fix (exit 1, the
    operator's to mend), and 'profile update' mends it."""
    from sqlalchemy import create_engine, update

    from pki.store.schema import profiles

    spec = {**profile_spec(), "roles_anywhere": {"profile_arn": "", "role_arns": ["notanarn"], "trust_anchor_arn": "",
                                                  "session_duration": 3600}}
    engine = create_engine(f"sqlite:///{home / 'rapki.db'}")
    with engine.begin() as conn:
        conn.execute(update(profiles).where(profiles.c.name == "web").values(spec=spec))
    engine.dispose()
    failed = run("issue", "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "o"), code=1)
    assert failed.stderr.strip() == ("rapki: error: profile 'web' as stored is not valid (role ARN 'notanarn' is not "
                                     "an IAM role ARN (arn:<partition>:iam::<account>:role/<name>)): correct it with "
                                     "'rapki profile update web ...'")
    run("profile", "update", "web", "--role-arn", ROLE_ARN)
    run("issue", "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "o"))
    assert len(rows(home)) == 1
