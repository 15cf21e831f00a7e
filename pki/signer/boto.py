"""Roles Anywhere credentials for boto3 without a subprocess.

    from pki.signer.boto import roles_anywhere_session

    session = roles_anywhere_session(
        certificate="/etc/rapki/cert.pem", private_key="/etc/rapki/key.pem",
        intermediates="/etc/rapki/chain.pem",
        trust_anchor_arn=..., profile_arn=..., role_arn=...,
    )
    session.client("s3").list_buckets()

The session's credentials are botocore ``RefreshableCredentials``: botocore calls back here before
they expire, and each refresh re-reads the certificate and key files, so a renewed certificate is
used by a long-running program. This is the only module of the signer that imports boto3/botocore,
and only when it is imported itself.
"""

from __future__ import annotations

from typing import Any

from botocore.credentials import CredentialProvider, RefreshableCredentials

from pki.signer.session import Credentials, SessionOptions, create_session

METHOD = "rolesanywhere-x509"


def _metadata(creds: Credentials) -> dict[str, str]:
    return {
        "access_key": creds.access_key_id,
        "secret_key": creds.secret_access_key,
        "token": creds.session_token,
        "expiry_time": creds.expires_at.isoformat(),
    }


def refresh_timeouts(duration: int) -> tuple[int, int]:
    """(advisory, mandatory) refresh windows in seconds.

    botocore's defaults (15 and 10 minutes) would treat a 15-minute session as due for refresh from
    its first second, calling CreateSession on every API call; scale them to the session length.
    """
    duration = max(int(duration or 3600), 60)
    return min(15 * 60, duration // 3), min(10 * 60, duration // 6)


def credential_provider(opts: SessionOptions | None = None, **kwargs: Any) -> Any:
    """A botocore ``RefreshableCredentials`` fed by CreateSession (first call made now)."""
    opts = opts or SessionOptions(**kwargs)

    def refresh() -> dict[str, str]:
        return _metadata(create_session(opts))

    advisory, mandatory = refresh_timeouts(opts.session_duration)
    return RefreshableCredentials.create_from_metadata(
        metadata=refresh(),
        refresh_using=refresh,
        method=METHOD,
        advisory_timeout=advisory,
        mandatory_timeout=mandatory,
    )


class RolesAnywhereProvider(CredentialProvider):
    """A botocore credential provider: put it in a resolver chain to use Roles Anywhere."""

    METHOD = METHOD
    CANONICAL_NAME = "RolesAnywhere"

    def __init__(self, opts: SessionOptions) -> None:
        super().__init__()
        self.opts = opts

    def load(self) -> RefreshableCredentials:
        return credential_provider(self.opts)


def botocore_session(opts: SessionOptions | None = None, *, region_name: str | None = None, **kwargs: Any) -> Any:
    """A botocore session whose credentials come from Roles Anywhere."""
    import botocore.session

    opts = opts or SessionOptions(**kwargs)
    session = botocore.session.get_session()
    # First in the chain: explicit configuration wins over environment variables and profiles.
    session.get_component("credential_provider").insert_before("env", RolesAnywhereProvider(opts))
    region = region_name or opts.region or _anchor_region(opts.trust_anchor_arn)
    if region:
        session.set_config_variable("region", region)
    return session


def roles_anywhere_session(opts: SessionOptions | None = None, *, region_name: str | None = None, **kwargs: Any) -> Any:
    """A ``boto3.Session`` with auto-refreshing Roles Anywhere credentials.

    Keyword arguments are :class:`~pki.signer.session.SessionOptions` fields (the CLI flags with
    underscores: ``certificate``, ``private_key``, ``trust_anchor_arn``, ``endpoint``, ``ca_bundle``...).
    ``region_name`` is the region of the clients (default: the trust anchor's).
    """
    import boto3

    return boto3.Session(botocore_session=botocore_session(opts, region_name=region_name, **kwargs))


def _anchor_region(arn: str) -> str | None:
    parts = arn.split(":")
    return parts[3] if len(parts) > 3 and parts[3] else None
