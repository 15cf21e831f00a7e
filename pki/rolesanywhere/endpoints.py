"""Where a Roles Anywhere call goes: its region (from flags, ARNs, the environment) and its endpoint.

Mirrors the SDK's configuration and endpoint rules, for the signer and ``rapki aws`` alike:

- an explicit endpoint (``--endpoint``/``--endpoint-url``, ``AWS_ENDPOINT_URL_ROLESANYWHERE``,
  ``AWS_ENDPOINT_URL``) replaces everything, http or https; a non-default port stays in the Host
  header, which is what gets signed; FIPS or dual-stack with it is a configuration error;
- else ``rolesanywhere[-fips].<region>.<suffix>`` from the partition table
  (:mod:`pki.rolesanywhere.partitions`); a FIPS pseudo-region (``fips-us-east-1``) asks for FIPS;
- the region of a call on a resource is the region in its ARN.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit

from pki.errors import InvalidInput
from pki.rolesanywhere.arns import RolesAnywhereArn
from pki.rolesanywhere.partitions import PARTITIONS, normalize_region, partition_of, split_fips

SERVICE_ENV = "AWS_ENDPOINT_URL_ROLESANYWHERE"
_TRUE = {"1", "true", "yes", "on"}


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def fips_requested(explicit: bool | None) -> bool:
    """``--fips`` if given, else ``AWS_USE_FIPS_ENDPOINT`` (the SDK variable)."""
    if explicit is not None:
        return explicit
    return env_flag("AWS_USE_FIPS_ENDPOINT")


def endpoint_override(explicit: str | None) -> str | None:
    """The endpoint that replaces AWS's: ``--endpoint-url``, else the service-specific variable, else
    ``AWS_ENDPOINT_URL`` (unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is set, as in the SDKs)."""
    if explicit:
        return explicit
    if env_flag("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS"):
        return None
    return os.environ.get(SERVICE_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None


def env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


def resolve_region(explicit: str | None, *, arn: str | None = None, configured: str | None = None) -> tuple[str, bool]:
    """The region (plain) and whether a FIPS pseudo-region asked for FIPS, for ``rapki aws``.

    Order: ``--region``; the region inside the ARN we act on (a trust anchor lives in exactly one
    region, so anything else would be a mistake); ``AWS_REGION``/``AWS_DEFAULT_REGION``; the region
    stored by ``rapki aws register``.
    """
    region = explicit
    if arn:
        arn_region = RolesAnywhereArn.parse(arn).region
        if region and normalize_region(region)[0] != arn_region:
            raise InvalidInput(f"--region {region} differs from the region of {arn} ({arn_region})")
        region = region or arn_region
    region = region or env_region() or configured
    if not region:
        raise InvalidInput("no region: pass --region (or set AWS_REGION)")
    return normalize_region(region)


def session_region(trust_anchor_arn: str, profile_arn: str, region: str | None) -> str:
    """The region CreateSession is signed for: ``--region`` if given, else the trust anchor's
    (which must be the profile's: both live in one region)."""
    anchor = RolesAnywhereArn.parse(trust_anchor_arn, "--trust-anchor-arn", expected_type="trust-anchor")
    profile = RolesAnywhereArn.parse(profile_arn, "--profile-arn", expected_type="profile")
    if anchor.region != profile.region:
        raise InvalidInput(f"trust anchor and profile regions don't match ({anchor.region} vs {profile.region})")
    return region or anchor.region


@dataclass(frozen=True)
class Endpoint:
    """A resolved endpoint: ``https``/``http``, the Host header value, and where to connect."""

    scheme: str
    host_header: str  # signed as sent: includes ":port" when the port is not the scheme's default
    hostname: str
    port: int
    base_path: str = ""

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.base_path}"


def parse_endpoint_url(url: str) -> Endpoint:
    """An explicit endpoint. A bare host is taken as https, like the SDK's BaseEndpoint."""
    if "://" not in url:
        url = "https://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInput(f"--endpoint {url!r}: use https://host[:port] or http://host[:port]")
    default = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default
    except ValueError:
        raise InvalidInput(f"--endpoint {url!r}: bad port") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default else f"{shown}:{port}"
    return Endpoint(parts.scheme, host_header, host, port, parts.path.rstrip("/"))


def resolve_endpoint(
    region: str,
    endpoint: str | None = None,
    *,
    use_fips: bool = False,
    use_dualstack: bool = False,
) -> Endpoint:
    """The endpoint for ``region`` as the SDK rule set builds it, honouring an override, FIPS and dual-stack."""
    endpoint = endpoint or os.environ.get(SERVICE_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        if use_fips:
            raise InvalidInput("FIPS and a custom --endpoint are not supported together: pick one")
        if use_dualstack:
            raise InvalidInput("dual-stack and a custom --endpoint are not supported together: pick one")
        return parse_endpoint_url(endpoint)
    if not region:
        raise InvalidInput("no region: pass --region or a trust anchor ARN that names one")
    region, fips_name = split_fips(region)
    use_fips = use_fips or fips_name
    partition = PARTITIONS[partition_of(region)]
    if use_fips and not partition.supports_fips:
        raise InvalidInput(f"FIPS endpoints are not available in {region}'s partition")
    if use_dualstack and not partition.supports_dual_stack:
        raise InvalidInput(f"dual-stack endpoints are not available in {region}'s partition")
    host = partition.host(region, fips=use_fips, dual_stack=use_dualstack)
    return Endpoint("https", host, host, 443)
