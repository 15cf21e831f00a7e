"""``rapki aws register``, ``rapki aws trust-policy``, ``rapki doctor``, and the AWS connection options
they share with ``rapki crl publish`` (``service.cli.crl_commands``).

Every command that talks to AWS takes ``--region``, ``--endpoint-url``, ``--ca-bundle``, ``--aws-profile``
and ``--fips`` and otherwise honours what the SDKs honour (``AWS_ENDPOINT_URL_ROLESANYWHERE``,
``AWS_ENDPOINT_URL``, ``AWS_CA_BUNDLE``, ``AWS_PROFILE``, ``AWS_USE_FIPS_ENDPOINT``, the credential
chain), so the local emulator and AWS (GovCloud included) are driven the same way.
The logic lives in ``pki.aws`` and ``pki.aws.doctor``; this module parses and prints.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from pki.errors import InvalidInput
from service.cli.base import echo_json, home_option, json_option
from service.cli.ca_commands import open_ca

if TYPE_CHECKING:  # keeps boto3 off the import path of the CLI
    from pki.aws.client import AwsOptions


def aws_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The connection options every AWS-facing command shares."""
    options = [
        click.option("--region", default=None,
                     help="AWS region (default: the ARN's, else $AWS_REGION, else the registered one). "
                          "GovCloud: us-gov-west-1, us-gov-east-1."),
        click.option("--endpoint-url", default=None,
                     help="Roles Anywhere endpoint, e.g. the emulator's (default: $AWS_ENDPOINT_URL_ROLESANYWHERE, "
                          "$AWS_ENDPOINT_URL, else AWS's)."),
        click.option("--ca-bundle", type=click.Path(dir_okay=False, exists=True), default=None,
                     help="CA bundle for TLS to the endpoint (default: $AWS_CA_BUNDLE)."),
        click.option("--aws-profile", default=None,
                     help="Profile of ~/.aws/config for credentials (default: $AWS_PROFILE)."),
        click.option("--fips/--no-fips", default=None,
                     help="Use the FIPS endpoint (default: $AWS_USE_FIPS_ENDPOINT)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def make_options(region: str | None, endpoint_url: str | None, ca_bundle: str | None, aws_profile: str | None,
                 fips: bool | None, *, quiet: bool = False) -> AwsOptions:
    """The options of ``aws_options``; unless ``quiet`` (``--quiet``, ``--json``), each retry is told on stderr."""
    from pki.aws.client import AwsOptions

    return AwsOptions(region=region, endpoint_url=endpoint_url, ca_bundle=ca_bundle, aws_profile=aws_profile,
                      fips=fips, on_retry=None if quiet else say_retry)


def say_retry(line: str) -> None:
    """One stderr line per retry, so a slow failure (an unreachable endpoint) is never silent."""
    click.echo(line, err=True)


# --- rapki aws ... ------------------------------------------------------------------------------------
@click.group("aws")
def aws_group() -> None:
    """Roles Anywhere set-up: registration and role trust policies."""


def _split_roles(values: tuple[str, ...]) -> list[str]:
    roles = [r.strip() for value in values for r in value.split(",") if r.strip()]
    if not roles:
        raise InvalidInput("give at least one --role-arn")
    return roles


@aws_group.command("register")
@home_option
@aws_options
@click.option("--name", default="rapki", show_default=True,
              help="Name of the trust anchor and the profile (CRLs are NAME-issuing-N).")
@click.option("--role-arn", "role_arns", multiple=True, required=True,
              help="IAM role the profile may assume (repeatable, or comma-separated).")
@click.option("--duration", type=click.IntRange(900, 43200), default=3600, show_default=True,
              help="Session duration the profile allows, in seconds.")
@click.option("--accept-role-session-name", is_flag=True, help="Let clients choose the role session name.")
@click.option("--anchor", "anchor_mode", type=click.Choice(["issuing", "root", "both"]), default="issuing",
              show_default=True, help="Which CA certificates the trust anchor holds.")
@click.option("--expiry-notification-days", type=click.IntRange(1, 360), default=None,
              help="Notify (CloudWatch/EventBridge/Health) this many days before a certificate expires.")
@click.option("--profile", "rapki_profile", default=None,
              help="rapki issuance profile whose roles_anywhere binding gets the ARNs.")
@click.option("--files", default="/etc/rapki", show_default=True,
              help="Directory with cert.pem, key.pem, chain.pem for the printed credential_process line.")
@click.option("--auto-publish/--no-auto-publish", default=None,
              help="Make every 'rapki revoke' publish the CRL ([roles_anywhere].auto_publish).")
@click.option("--alias", default=None,
              help="Alias of the trust anchor and the profile (one name: aliases are per type); the "
                   "credential_process line then uses the alias ARNs. '' removes it. Default: keep.")
@click.option("--tip", type=click.Choice(["workload", "user", "off"]), default=None,
              help="Trusted identity propagation on the profile: what the certificates identify, or off. "
                   "Default: keep.")
@click.option("--tip-subject", type=click.Choice(["x509Subject/CN", "x509SAN/URI"]), default=None,
              help="Certificate field that becomes aws:OriginIdentity/Subject (turns TIP on; default "
                   "x509Subject/CN). x509SAN/URI makes the --profile require a URI SAN.")
@click.option("--crl-dp-revocation/--no-crl-dp-revocation", default=None,
              help="Have Roles Anywhere check CRL distribution points (crlDpRevocationEnabled). Default: keep.")
@json_option
def aws_register(home: Path | None, region: str | None, endpoint_url: str | None, ca_bundle: str | None,
                 aws_profile: str | None, fips: bool | None, name: str, role_arns: tuple[str, ...], duration: int,
                 accept_role_session_name: bool, anchor_mode: str, expiry_notification_days: int | None,
                 rapki_profile: str | None, files: str, auto_publish: bool | None, alias: str | None,
                 tip: str | None, tip_subject: str | None, crl_dp_revocation: bool | None, as_json: bool) -> None:
    """Create or update the trust anchor, profile and first CRL; store the ARNs; print credential_process."""
    import os

    from pki.aws.client import RolesAnywhere
    from pki.aws.publish import settings
    from pki.aws.register import register, tip_summary
    from pki.rolesanywhere.endpoints import endpoint_override

    authority = open_ca(home)
    aws = RolesAnywhere.connect(make_options(region, endpoint_url, ca_bundle, aws_profile, fips, quiet=as_json),
                                configured_region=settings(authority).get("region"))
    result = register(
        authority, aws, name=name, role_arns=_split_roles(role_arns), duration=duration,
        accept_role_session_name=accept_role_session_name, anchor=anchor_mode,
        expiry_notification_days=expiry_notification_days, profile=rapki_profile,
        endpoint_url=endpoint_override(endpoint_url), ca_bundle=ca_bundle or os.environ.get("AWS_CA_BUNDLE"),
        files=files, auto_publish=auto_publish, alias=alias, tip=tip, tip_subject=tip_subject,
        crl_dp_revocation=crl_dp_revocation,
    )
    if as_json:
        echo_json(result.to_dict())
        return
    for action in result.actions or ["already registered: nothing changed"]:
        click.echo(f"- {action}")
    click.echo(f"region:           {result.region} ({result.partition})")
    click.echo(f"trust anchor:     {result.trust_anchor_arn}")
    if result.trust_anchor_alias_arn:
        click.echo(f"  alias:          {result.trust_anchor_alias_arn}")
    click.echo(f"  certificates:   {'; '.join(result.anchor_subjects)}")
    click.echo(f"  CRL DPs:        {'checked' if result.crl_dp_revocation else 'not checked'}")
    click.echo(f"profile:          {result.profile_arn}")
    if result.profile_alias_arn:
        click.echo(f"  alias:          {result.profile_alias_arn}")
    click.echo(f"  TIP:            {tip_summary(result.tip_configuration)}")
    click.echo(f"roles:            {', '.join(result.role_arns)}")
    click.echo("\nAdd to ~/.aws/config (then: aws sts get-caller-identity --profile rapki):\n")
    click.echo("[profile rapki]")
    click.echo(result.credential_process)
    click.echo("\nRole trust policy: rapki aws trust-policy" + (f" --profile {rapki_profile}" if rapki_profile else ""))
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)


@aws_group.command("trust-policy")
@home_option
@click.option("--trust-anchor-arn", default=None,
              help="Trust anchor (default: the profile's binding, else the registered one).")
@click.option("--profile", "rapki_profile", default=None,
              help="rapki issuance profile: its CN/SAN patterns become PrincipalTag conditions.")
def aws_trust_policy(home: Path | None, trust_anchor_arn: str | None, rapki_profile: str | None) -> None:
    """Print the IAM role trust policy (JSON) for Roles Anywhere and this CA's certificates."""
    import json

    from pki.aws.trust_policy import trust_policy

    profile = None
    anchor = trust_anchor_arn
    if rapki_profile or not anchor:
        from pki.aws.publish import settings

        authority = open_ca(home)
        if rapki_profile:
            profile = authority.profile(rapki_profile)
            anchor = anchor or profile.roles_anywhere.trust_anchor_arn or None
        anchor = anchor or settings(authority).get("trust_anchor_arn")
    if not anchor:
        raise InvalidInput("no trust anchor: pass --trust-anchor-arn, or run 'rapki aws register' first")
    policy, notes = trust_policy(anchor, profile)
    click.echo(json.dumps(policy, indent=2))
    for note in notes:
        click.echo(f"note: {note}", err=True)


# --- rapki doctor ------------------------------------------------------------------------------------
@click.command("doctor")
@home_option
@click.option("--certificate", "cert_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              required=True, help="The workload certificate (cert.pem).")
@click.option("--private-key", "key_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="Its private key (key.pem).")
@click.option("--intermediates", "chain_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              default=None, help="The chain sent as X-Amz-X509-Chain (chain.pem).")
@click.option("--trust-anchor-arn", default=None,
              help="Check against this anchor in AWS (default: the registered one; else the local CA, offline).")
@aws_options
@click.option("--offline", is_flag=True, help="Do not call AWS: check against the local CA and its CRLs.")
@json_option
def doctor(home: Path | None, cert_path: Path, key_path: Path | None, chain_path: Path | None,
           trust_anchor_arn: str | None, region: str | None, endpoint_url: str | None, ca_bundle: str | None,
           aws_profile: str | None, fips: bool | None, offline: bool, as_json: bool) -> None:
    """Replay Roles Anywhere's checks on a certificate and say what to fix (e.g. 'Untrusted Signing Certificate')."""
    from pki.aws.doctor import (
        anchor_from_aws,
        anchor_from_local_ca,
        diagnose,
        load_certificates,
        local_revocation_check,
    )
    from pki.errors import RapkiError

    authority = None
    try:
        authority = open_ca(home)
    except RapkiError:
        if home is not None:
            raise
    anchor_arn = trust_anchor_arn
    if authority is not None and not anchor_arn and not offline:
        from pki.aws.publish import settings

        anchor_arn = settings(authority).get("trust_anchor_arn") or None
    anchor = None
    if anchor_arn and not offline:
        from pki.aws.client import RolesAnywhere

        aws = RolesAnywhere.connect(make_options(region, endpoint_url, ca_bundle, aws_profile, fips, quiet=as_json),
                                    arn=anchor_arn)
        anchor = anchor_from_aws(aws, anchor_arn)
    elif authority is not None:
        anchor = anchor_from_local_ca(authority)
    from datetime import UTC, datetime

    from pki.rolesanywhere.crlfetch import CrlFetcher

    fetcher, now = CrlFetcher(), datetime.now(UTC)
    report = diagnose(cert_path.read_bytes(), key_path.read_bytes() if key_path else None,
                      chain_path.read_bytes() if chain_path else None, anchor=anchor,
                      fetch_crl=lambda url: fetcher.get(url, now))
    if authority is not None:
        try:
            leaf = load_certificates(cert_path.read_bytes())[0]
        except (ValueError, IndexError):
            leaf = None
        extra = local_revocation_check(authority, leaf) if leaf is not None else None
        if extra is not None:
            report.checks.append(extra)
    if as_json:
        echo_json(report.to_dict())
    else:
        click.echo(f"trust anchor: {report.anchor or '(none: pass --trust-anchor-arn)'}")
        for check in report.checks:
            click.echo(f"{check.status.upper():<5} {check.name}" + (f": {check.detail}" if check.detail else ""))
            if check.fix and check.status in ("fail", "warn"):
                click.echo(f"      fix: {check.fix}")
        click.echo(report.verdict)
    if not report.ok:
        sys.exit(1)
