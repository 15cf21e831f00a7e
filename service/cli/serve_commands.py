"""``rapki serve``, ``rapki token ...``, ``rapki operator token ...``."""

from __future__ import annotations

import os
from pathlib import Path

import click

from pki.errors import InvalidInput
from pki.x509.durations import format_duration, parse_duration
from service.cli.base import echo_json, ensure_port_free, home_option, json_option, resolve_home
from service.cli.ca_commands import open_ca, progress


# --- serve -----------------------------------------------------------------------------------------
@click.command()
@home_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="gunicorn worker processes, each serving its connections on an event loop "
                   "[default: one per CPU rapki may use, at most 8].")
@click.option("--tls-cert", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Server certificate (PEM, with intermediates); default: one issued by the CA into HOME/tls.")
@click.option("--tls-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None)
@click.option("--tls-name", multiple=True,
              help="Extra fully qualified DNS name or IP address for the CA-issued server certificate.")
@click.option("--no-client-certs", is_flag=True,
              help="Do not request client certificates (renewal then needs RAPKI-SIG-V1 signatures).")
@click.option("--pidfile", type=click.Path(dir_okay=False, path_type=Path), default=None)
@click.option("--quiet", is_flag=True, help="No access log.")
@click.option("--cpu-affinity", type=click.Choice(["auto", "on", "off"]), default="off", show_default=True,
              help="Pin each worker to a CPU of its own (auto: when there is exactly one worker per CPU). "
                   "Off by default: with the current single-threaded workers it measured within noise.")
@click.option("--crl-http-port", type=click.IntRange(1, 65535), default=None,
              help="Also serve GET /crl/<issuer>.crl (and nothing else) over plain HTTP on this port, for "
                   "relying parties following the certificates' CRL Distribution Point.")
def serve(home: Path | None, host: str, port: int, workers: int | None, tls_cert: Path | None,
          tls_key: Path | None, tls_name: tuple[str, ...], no_client_certs: bool, pidfile: Path | None,
          quiet: bool, cpu_affinity: str, crl_http_port: int | None) -> None:
    """Run the enrollment API over HTTPS under gunicorn (creates the home with defaults on first run)."""
    from pki.ca.authority import CertificateAuthority
    from pki.ca.home import Home

    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("give --tls-cert and --tls-key together")
    if crl_http_port == port:  # the CRL listener would fail to bind once the HTTPS one holds it
        raise InvalidInput(f"--crl-http-port {crl_http_port} is --port too: give the plain-HTTP CRL listener "
                           "a port of its own")
    ensure_port_free(host, port)
    if crl_http_port is not None:
        ensure_port_free(host, crl_http_port)
    target = resolve_home(home)
    if not Home(target).exists():
        progress(f"{target} is not a rapki home yet: creating one with defaults (EC P-256 root and issuing CA)")
        env = os.environ.get("RAPKI_PASSPHRASE")
        CertificateAuthority.init(target, passphrase=env.encode() if env else None)
    _prepare_metrics_dir(target)  # before anything imports prometheus_client
    from service.api import server, tls

    ca = CertificateAuthority.open(target)
    names = list(dict.fromkeys([*tls.default_names(host), *tls_name]))
    material = tls.server_material(ca, names)
    certfile, keyfile = (tls_cert, tls_key) if tls_cert and tls_key else (material.certfile, material.keyfile)
    tls.check_pair(certfile, keyfile)
    if not ca.profiles():
        progress("note: no profiles yet, so nothing can be enrolled: 'rapki profile add NAME --cn-pattern REGEX'")
    workers = workers or server.default_workers()
    pinned = server.cpu_affinity_plan(cpu_affinity, workers)
    placement = f", pinned to CPUs {','.join(map(str, pinned))}" if pinned else ""
    progress(f"serving https://{host}:{port} ({workers} worker{'s' if workers != 1 else ''}{placement}), "
             f"certificate {tls.describe(certfile)}; CA root: {ca.home.root_cert_path}")
    if crl_http_port is not None:
        progress(f"serving CRLs on http://{host}:{crl_http_port}/crl/<issuer>.crl")
    ca.db.dispose()  # workers open their own connections after the fork
    server.run(target.resolve(), host=host, port=port, workers=workers, certfile=certfile,
               keyfile=keyfile, client_ca=None if no_client_certs else material.client_ca,
               access_log=not quiet, pidfile=pidfile, cpus=pinned, crl_http_port=crl_http_port)


def _prepare_metrics_dir(home: Path) -> Path:
    """A fresh prometheus_client multiprocess directory. prometheus_client picks its value storage
    when first imported, so this runs before ``service.api`` (which imports it) is loaded."""
    import shutil

    directory = home / "run" / "metrics"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True, mode=0o700)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory.resolve())
    return directory


# --- enrollment tokens -----------------------------------------------------------------------------
@click.group()
def token() -> None:
    """Enrollment tokens: one-time (or N-time) credentials a workload trades for a certificate."""


@token.command("create")
@home_option
@click.option("--profile", "profile_name", required=True)
@click.option("--cn", default=None, help="The exact CN the token may be redeemed for.")
@click.option("--cn-pattern", default=None, help="Or: a regex the CN must fully match.")
@click.option("--ttl", default="15m", show_default=True, help="How long the token can be redeemed.")
@click.option("--uses", type=click.IntRange(1, 100_000), default=1, show_default=True)
@json_option
def token_create(home: Path | None, profile_name: str, cn: str | None, cn_pattern: str | None, ttl: str,
                 uses: int, as_json: bool) -> None:
    """Create an enrollment token; it is printed once and only its hash is stored."""
    from pki.ca.tokens import EnrollmentToken, TokenStore

    created = TokenStore(open_ca(home)).create(profile_name, cn=cn, cn_pattern=cn_pattern,
                                               ttl=parse_duration(ttl), uses=uses)
    if as_json:
        echo_json({**created.record.to_dict(), "token": created.token})
        return
    click.echo(created.token)
    record = created.record
    assert isinstance(record, EnrollmentToken)
    progress(f"token {record.id}: profile {record.profile}, {'CN pattern' if cn_pattern else 'CN'} "
             f"{record.cn!r}, {uses} use(s), expires {record.expires_at:%Y-%m-%d %H:%M:%S}Z (shown once)")


@token.command("list")
@home_option
@click.option("--all", "include_all", is_flag=True, help="Also used, expired and revoked tokens.")
@json_option
def token_list(home: Path | None, include_all: bool, as_json: bool) -> None:
    """List enrollment tokens (never their secrets)."""
    from pki.ca.tokens import TokenStore

    tokens = TokenStore(open_ca(home)).list_tokens(include_inactive=include_all)
    if as_json:
        echo_json([t.to_dict() for t in tokens])
        return
    if not tokens:
        click.echo("no tokens" if include_all else "no active tokens (--all shows the others)")
    for t in tokens:
        cn = f"~{t.cn}" if t.cn_is_pattern else t.cn
        click.echo(f"{t.id}  {t.status():<8} {t.profile:<16} {cn:<24} {t.uses_left}/{t.max_uses} uses  "
                   f"expires {t.expires_at:%Y-%m-%d %H:%M}Z")


@token.command("revoke")
@home_option
@click.argument("token_id")
@json_option
def token_revoke(home: Path | None, token_id: str, as_json: bool) -> None:
    """Revoke enrollment token TOKEN_ID (as 'rapki token list' shows it)."""
    from pki.ca.tokens import TokenStore

    record = TokenStore(open_ca(home)).revoke(token_id)
    if as_json:
        echo_json(record.to_dict())
    else:
        click.echo(f"revoked token {record.id}")


# --- operator tokens -------------------------------------------------------------------------------
@click.group()
def operator() -> None:
    """Operator access to the API."""


@operator.group("token")
def operator_token() -> None:
    """Operator API tokens (revoke, look up certificates, create enrollment tokens over HTTP)."""


@operator_token.command("create")
@home_option
@click.option("--name", required=True, help="Who or what uses it (recorded in the audit log).")
@click.option("--ttl", default=None, help="Expiry, e.g. 90d (default: none).")
@json_option
def operator_token_create(home: Path | None, name: str, ttl: str | None, as_json: bool) -> None:
    """Create an operator API token; printed once, only its hash is stored."""
    from pki.ca.tokens import TokenStore

    created = TokenStore(open_ca(home)).create_operator(name, ttl=parse_duration(ttl) if ttl else None)
    if as_json:
        echo_json({**created.record.to_dict(), "token": created.token})
        return
    click.echo(created.token)
    progress(f"operator token {created.record.id} for {name!r}"
             + (f", expires in {format_duration(parse_duration(ttl))}" if ttl else "") + " (shown once)")


@operator_token.command("list")
@home_option
@click.option("--all", "include_all", is_flag=True)
@json_option
def operator_token_list(home: Path | None, include_all: bool, as_json: bool) -> None:
    """List operator tokens (never their secrets)."""
    from pki.ca.tokens import TokenStore

    tokens = TokenStore(open_ca(home)).list_operators(include_inactive=include_all)
    if as_json:
        echo_json([t.to_dict() for t in tokens])
        return
    for t in tokens:
        click.echo(f"{t.id}  {t.status():<8} {t.name}")


@operator_token.command("revoke")
@home_option
@click.argument("token_id")
def operator_token_revoke(home: Path | None, token_id: str) -> None:
    """Revoke operator token TOKEN_ID."""
    from pki.ca.tokens import TokenStore

    TokenStore(open_ca(home)).revoke_operator(token_id)
    click.echo(f"revoked operator token {token_id}")
