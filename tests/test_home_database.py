"""A home and its database: the URL used at init is kept (without its password), a missing or
unreachable database is refused instead of started empty, a failed first run leaves nothing
behind, and where the passphrase comes from (``rapki check`` warns when it sits in the home)."""

from __future__ import annotations

import subprocess
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.errors import DatabaseMissing
from tests.conftest import PASSPHRASE, make_ca
from tests.test_api import free_port, rapki

pytestmark = pytest.mark.e2e


def config_of(home: Path) -> dict:  # type: ignore[type-arg]
    return tomllib.loads((home / "rapki.toml").read_text())


def one_line_refusal(result: subprocess.CompletedProcess[str], *words: str) -> None:
    assert result.returncode == 2, result
    stderr = result.stderr.strip()
    assert len(stderr.splitlines()) == 1, stderr
    for word in words:
        assert word in stderr, stderr


def test_init_keeps_the_postgres_url_without_its_password(tmp_path: Path, pg_database_url: str,
                                                           passphrase_env: str) -> None:
    with_password = make_url(pg_database_url).set(password="s3cret-pw").render_as_string(hide_password=False)
    home = tmp_path / "h"
    rapki("init", "--home", str(home), env={"RAPKI_DATABASE_URL": with_password})
    stored = config_of(home)["database"]["url"]
    assert make_url(stored).database == make_url(pg_database_url).database
    assert "s3cret-pw" not in (home / "rapki.toml").read_text()
    # later commands, without the variable, use that database, not a new SQLite file
    listed = rapki("ca", "list", "--home", str(home))
    assert "issuing-1" in listed.stdout
    rapki("profile", "add", "web", "--cn-pattern", "web-[0-9]+", "--home", str(home))
    rapki("issue", "--home", str(home), "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "out"))
    assert not (home / "rapki.db").exists()


def test_a_home_whose_sqlite_database_was_deleted_is_refused(tmp_path: Path, passphrase_env: str) -> None:
    home = tmp_path / "h"
    make_ca(home).db.dispose()
    for path in home.glob("rapki.db*"):
        path.unlink()
    for command in (["list"], ["ca", "list"], ["profile", "add", "x", "--cn-pattern", "x"]):
        one_line_refusal(rapki(*command, "--home", str(home), check=False), "rapki.db", "does not exist")
    assert not (home / "rapki.db").exists()
    with pytest.raises(DatabaseMissing):
        CertificateAuthority.open(home)


def test_an_unreachable_or_empty_postgres_database_is_refused(tmp_path: Path, pg_database_url: str,
                                                               passphrase_env: str) -> None:
    home = tmp_path / "h"
    make_ca(home).db.dispose()
    gone = pg_database_url.rsplit("/", 1)[0] + "/no_such_db_here"
    Home(home).save_config(replace(Home(home).load_config(), database_url=gone))
    one_line_refusal(rapki("list", "--home", str(home), check=False), "no_such_db_here")
    # reachable but holding no CA: refused too, and left untouched
    Home(home).save_config(replace(Home(home).load_config(), database_url=pg_database_url))
    one_line_refusal(rapki("list", "--home", str(home), check=False), "holds no rapki CA")


def test_a_failed_first_serve_leaves_nothing_and_init_then_works(tmp_path: Path, pg_database_url: str,
                                                                  passphrase_env: str) -> None:
    fresh = tmp_path / "fresh"
    gone = pg_database_url.rsplit("/", 1)[0] + "/no_such_db"
    env = {"RAPKI_DATABASE_URL": gone, "RAPKI_PASSPHRASE": ""}  # the quickstart: passphrase file generated
    failed = rapki("serve", "--home", str(fresh), "--port", str(free_port()), env=env, check=False)
    assert failed.returncode != 0
    assert "no_such_db" in failed.stderr
    assert not fresh.exists()
    # an existing empty directory (a mount point, a StateDirectory) is left as it was: empty
    fresh.mkdir()
    assert rapki("init", "--home", str(fresh), env=env, check=False).returncode != 0
    assert list(fresh.iterdir()) == []
    rapki("init", "--home", str(fresh), env={"RAPKI_PASSPHRASE": ""})
    assert (fresh / "rapki.toml").is_file() and (fresh / "passphrase").is_file()
    assert [p.name for p in fresh.iterdir() if p.name.startswith(".")] == []
    assert "issuing-1" in rapki("ca", "list", "--home", str(fresh), env={"RAPKI_PASSPHRASE": ""}).stdout


def test_init_clears_a_staging_directory_left_by_a_crash(tmp_path: Path, passphrase_env: str) -> None:
    home = tmp_path / "h"
    (home / ".init-leftover" / "ca").mkdir(parents=True)
    make_ca(home)
    assert not (home / ".init-leftover").exists()
    assert Home(home).exists()


def test_passphrase_from_systemd_credentials_and_check_warns_when_it_sits_in_the_home(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAPKI_PASSPHRASE", raising=False)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    # quickstart: the passphrase file is generated in the home; check warns
    quick = tmp_path / "quick"
    rapki("init", "--home", str(quick), env={"RAPKI_PASSPHRASE": ""})
    checked = rapki("check", "--home", str(quick), env={"RAPKI_PASSPHRASE": ""})
    assert "warning  passphrase" in checked.stdout and str(quick / "passphrase") in checked.stdout
    # production: the passphrase comes as a systemd credential; nothing of it in the home
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "rapki-passphrase").write_text(PASSPHRASE + "\n")
    env = {"RAPKI_PASSPHRASE": "", "CREDENTIALS_DIRECTORY": str(credentials)}
    prod = tmp_path / "prod"
    rapki("init", "--home", str(prod), "--offline-root", str(tmp_path / "offline" / "root.key.pem"), env=env)
    assert not (prod / "passphrase").exists()
    assert config_of(prod)["passphrase"]["file"] == ""
    checked = rapki("check", "--home", str(prod), env=env)
    assert "warning" not in checked.stdout, checked.stdout
    assert "systemd credential" in checked.stdout
    rapki("profile", "add", "web", "--cn-pattern", "web-[0-9]+", "--home", str(prod), env=env)
    rapki("issue", "--home", str(prod), "--profile", "web", "--cn", "web-1", "--out", str(tmp_path / "o"), env=env)
    # without the credential the keys cannot be used
    refused = rapki("issue", "--home", str(prod), "--profile", "web", "--cn", "web-2", "--out",
                    str(tmp_path / "o2"), env={"RAPKI_PASSPHRASE": ""}, check=False)
    assert refused.returncode == 2 and "rapki-passphrase" in refused.stderr


def test_the_shipped_units_load_the_passphrase_as_a_credential() -> None:
    units = Path(__file__).parent.parent / "scripts" / "systemd"
    for name in ("rapki-serve.service", "rapki-crl-publish.service"):
        text = (units / name).read_text()
        assert "LoadCredential=rapki-passphrase:" in text, name
        assert "RAPKI_PASSPHRASE" not in text, name

