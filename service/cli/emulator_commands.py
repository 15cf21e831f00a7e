"""``rapki emulator``: a local IAM Roles Anywhere over HTTPS for tests and demos."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from pki.errors import InvalidInput
from service.cli.base import default_home, ensure_port_free


@click.command("emulator")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(0, 65535), help="TCP port.")
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM server certificate (default: a self-signed one kept beside the state file).",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    default=None,
    help="PEM key of --tls-cert.",
)
@click.option(
    "--state",
    "state_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON state file, kept across restarts (default: $RAPKI_HOME/emulator/state.json).",
)
@click.option(
    "--region",
    default="us-east-1",
    show_default=True,
    help="Region for control-plane requests whose signature names none.",
)
@click.option(
    "--account", default="123456789012", show_default=True, help="Account for access keys that are not 12 digits."
)
@click.option(
    "--threads", default=8, show_default=True, type=click.IntRange(1, 256), help="Threads of the single worker process."
)
@click.option(
    "--fail-rate",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0, 1.0),
    help="Probability of answering 500 InternalServerException (fault injection).",
)
@click.option(
    "--throttle",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0.0),
    help="Control-plane requests/second before ThrottlingException (0: no limit; AWS: 1).",
)
@click.option(
    "--latency", default=0.0, show_default=True, type=click.FloatRange(0.0), help="Seconds added to every call."
)
@click.option(
    "--session-rate", default=0.0, show_default=True, type=click.FloatRange(0.0),
    help="CreateSession requests/second per certificate and client (0: no limit; AWS: 10).",
)  # fmt: skip
@click.option(
    "--crl-dp-unreachable", type=click.Choice(["deny", "allow"]), default="deny", show_default=True,
    help="Anchors with crlDpRevocationEnabled: refuse (deny) or accept (allow) a certificate whose distribution "
         "point gives no usable CRL (unreachable, slow, too large, stale, not its issuer's); AWS does not say.",
)
@click.option("--crl-dp-timeout", default=5.0, show_default=True, type=click.FloatRange(0.1, 60.0),
              help="Seconds a CRL download from a distribution point may take.")
@click.option("--crl-dp-max-bytes", default=1 << 20, show_default=True, type=click.IntRange(1024),
              help="Largest CRL fetched from a distribution point.")
@click.option("--crl-dp-max-age", default=None, type=click.FloatRange(0.0),
              help="Seconds a fetched CRL is kept at most [default: until its nextUpdate].")
@click.option("--print-ca", is_flag=True, help="Print the TLS certificate to trust (PEM, for AWS_CA_BUNDLE) and exit.")
def emulator(
    host: str, port: int, tls_cert: Path | None, tls_key: Path | None, state_path: Path | None,
    region: str, account: str, threads: int, fail_rate: float, throttle: float, latency: float,
    session_rate: float, crl_dp_unreachable: str, crl_dp_timeout: float, crl_dp_max_bytes: int,
    crl_dp_max_age: float | None, print_ca: bool,
) -> None:  # fmt: skip
    """Serve the Roles Anywhere control plane and CreateSession on HTTPS.

    Control-plane calls accept any SigV4 credentials (the HMAC is not checked); CreateSession
    signatures are checked exactly. Test hooks: GET /_emulator/stats, POST /_emulator/stats/reset,
    GET|PUT|DELETE /_emulator/faults.
    """
    from service.emulator.server import ensure_self_signed

    if (tls_cert is None) != (tls_key is None):
        raise InvalidInput("--tls-cert and --tls-key go together")
    if not account.isdigit() or len(account) != 12:
        raise InvalidInput(f"--account {account!r} must be 12 digits")
    if not print_ca:
        ensure_port_free(host, port)
    state = (state_path or default_home() / "emulator" / "state.json").resolve()
    try:
        state.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # e.g. a --state below a file
        raise InvalidInput(f"--state {state}: its directory cannot be made ({exc.strerror})") from None
    if tls_cert is None or tls_key is None:
        cert_path, key_path = ensure_self_signed(state, host)
    else:
        from service.api.tls import check_pair

        cert_path, key_path = tls_cert.resolve(), tls_key.resolve()
        check_pair(cert_path, key_path)  # else the server starts and every handshake fails
    if print_ca:
        click.echo(cert_path.read_text(), nl=False)
        return
    _serve(host=host, port=port, cert_path=cert_path, key_path=key_path, state=state, region=region,
           account=account, threads=threads, fail_rate=fail_rate, throttle=throttle, latency=latency,
           session_rate=session_rate,
           crl_dp={"unusable": crl_dp_unreachable, "timeout": crl_dp_timeout, "max_bytes": crl_dp_max_bytes,
                   "max_age": crl_dp_max_age})  # fmt: skip


def _serve(
    *, host: str, port: int, cert_path: Path, key_path: Path, state: Path, region: str, account: str,
    threads: int, fail_rate: float, throttle: float, latency: float, session_rate: float, crl_dp: dict[str, Any],
) -> None:  # fmt: skip
    from pki.rolesanywhere.crlfetch import CrlFetcher
    from service.emulator import create_app
    from service.emulator.faults import FaultSettings
    from service.emulator.server import EmulatorServer, gunicorn_options
    from service.emulator.sessions import DistributionPoints
    from service.emulator.state import EmulatorState

    state.parent.mkdir(parents=True, exist_ok=True)
    try:
        EmulatorState(state)  # fail here, with one line, rather than inside the worker
    except (ValueError, OSError) as exc:
        raise InvalidInput(f"cannot read the emulator state {state}: {exc}") from exc

    def factory() -> object:
        faults = FaultSettings(fail_rate=fail_rate, throttle=throttle, latency=latency, session_rate=session_rate)
        fetcher = CrlFetcher(max_bytes=crl_dp["max_bytes"], timeout=crl_dp["timeout"], max_age=crl_dp["max_age"])
        return create_app(state, account=account, region=region, faults=faults,
                          crl_dp=DistributionPoints(fetcher, crl_dp["unusable"]))

    shown = f"[{host}]" if ":" in host else host
    click.echo(f"rapki emulator: https://{shown}:{port}")
    click.echo(f"  state:     {state}")
    click.echo(f"  CA bundle: {cert_path}   (export AWS_CA_BUNDLE={cert_path})")
    sys.stdout.flush()
    options = gunicorn_options(host=host, port=port, certfile=cert_path, keyfile=key_path, threads=threads)
    EmulatorServer(factory, options).run()
