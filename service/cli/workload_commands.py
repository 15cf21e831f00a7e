"""``rapki enroll`` and ``rapki renew``: the workload side, talking to ``rapki serve`` over HTTPS.

They run on workload hosts (``renew`` from cron), so this module and ``pki.workload.client``, which
they use, import nothing of the CA, its store, AWS or the API.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import cast

import click

from pki.x509.keys import KeyType
from service.cli.base import echo_json, json_option

url_option = click.option("--url", required=True, envvar="RAPKI_URL", help="https://host:port of 'rapki serve'.")
ca_bundle_option = click.option("--ca-bundle", type=click.Path(dir_okay=False, exists=True, path_type=Path),
                                default=None, help="Root certificate(s) to verify the server (e.g. root.pem).")


@click.command()
@url_option
@click.option("--token", "token_value", required=True, envvar="RAPKI_TOKEN",
              help="The enrollment token (or $RAPKI_TOKEN, which keeps it out of the process list).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Directory for cert.pem, key.pem (0600) and chain.pem.")
@click.option("--key-type", type=click.Choice([k.value for k in KeyType]), default=None, help="Default: ec-p256.")
@click.option("--csr-mode", is_flag=True, help="Make the key here and send only a CSR (the key never leaves).")
@click.option("--cn", default=None, help="CN to ask for (needed when the token allows a CN pattern).")
@click.option("--san", multiple=True, help="dns:NAME or uri:URI (repeatable).")
@click.option("--ttl", default=None)
@click.option("--format", "output_format", type=click.Choice(["pem", "pkcs12"]), default="pem", show_default=True,
              help="pkcs12: the key goes into bundle.p12 (with the certificate and chain), encrypted here with the "
                   "password in $RAPKI_PKCS12_PASSWORD (at least 8 characters), instead of key.pem.")
@ca_bundle_option
@json_option
def enroll(url: str, token_value: str, out: Path, key_type: str | None, csr_mode: bool, cn: str | None,
           san: tuple[str, ...], ttl: str | None, output_format: str, ca_bundle: Path | None, as_json: bool) -> None:
    """Redeem an enrollment token: writes cert.pem, key.pem (0600) and chain.pem to --out."""
    from pki.workload.client import EnrollmentClient
    from pki.workload.client import enroll as do_enroll

    password = None
    if output_format == "pkcs12":
        password = os.environ.get("RAPKI_PKCS12_PASSWORD", "")
        if len(password) < 8:
            raise click.UsageError("--format pkcs12 needs the bundle's password in $RAPKI_PKCS12_PASSWORD "
                                   "(at least 8 characters)")
    result = do_enroll(EnrollmentClient(url, ca_bundle), token_value, out, key_type=key_type, csr_mode=csr_mode,
                       cn=cn, sans=list(san), ttl=ttl, pkcs12_password=password.encode() if password else None)
    _print_result(result, as_json, "enrolled")


@click.command()
@url_option
@click.option("--cert-dir", type=click.Path(file_okay=False, exists=True, path_type=Path), required=True,
              help="Directory with cert.pem and key.pem (as 'rapki enroll' wrote it).")
@click.option("--force", is_flag=True, help="Renew now, even before two thirds of the lifetime has passed.")
@click.option("--signed", is_flag=True,
              help="Authenticate with a RAPKI-SIG-V1 request signature instead of mutual TLS (TLS ends at a proxy).")
@click.option("--ttl", default=None)
@ca_bundle_option
@json_option
def renew(url: str, cert_dir: Path, force: bool, signed: bool, ttl: str | None, ca_bundle: Path | None,
          as_json: bool) -> None:
    """Renew the certificate in --cert-dir when due (two thirds of its lifetime), replacing the files atomically."""
    from pki.workload.client import renew as do_renew

    result = do_renew(url, cert_dir, ca_bundle=ca_bundle, force=force, signed=signed, ttl=ttl)
    if not result["renewed"]:
        if as_json:
            echo_json(result)
        else:
            click.echo(f"not due: {result['serial']} renews after {result['renew_after']} "
                       f"(expires {result['not_after']}); --force renews now")
        return
    _print_result(result, as_json, f"renewed {result['replaced']} ->")


def _print_result(result: dict[str, object], as_json: bool, verb: str) -> None:
    if as_json:
        echo_json(result)
        return
    click.echo(f"{verb} {result['serial']} (profile {result['profile']}) until {result['not_after']}")
    files = cast(dict[str, str], result["files"])
    for kind, path in files.items():
        click.echo(f"  {kind}: {path}")
    if result.get("credential_process"):
        click.echo(f"  credential_process = {result['credential_process']}")
