"""Where CreateSession goes: region, partition and the Roles Anywhere endpoint.

Mirrors the SDK endpoint rules the official helper runs:

- the region defaults to the trust anchor ARN's (and the profile ARN must name the same region);
- ``rolesanywhere.<region>.<dns suffix>``; FIPS ``rolesanywhere-fips.``; dual-stack uses the
  partition's dual-stack suffix (``api.aws``); FIPS and dual-stack combine;
- ``--endpoint`` (or ``AWS_ENDPOINT_URL_ROLESANYWHERE`` / ``AWS_ENDPOINT_URL``) overrides all that,
  http or https; a non-default port stays in the Host header, which is what gets signed.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from pki.errors import InvalidInput

# partition -> (dns suffix, dual-stack dns suffix, supports FIPS, supports dual-stack)
PARTITIONS: dict[str, tuple[str, str, bool, bool]] = {
    "aws": ("amazonaws.com", "api.aws", True, True),
    "aws-us-gov": ("amazonaws.com", "api.aws", True, True),
    "aws-cn": ("amazonaws.com.cn", "api.amazonwebservices.com.cn", True, True),
    "aws-iso": ("c2s.ic.gov", "c2s.ic.gov", True, False),
    "aws-iso-b": ("sc2s.sgov.gov", "sc2s.sgov.gov", True, False),
    "aws-iso-e": ("cloud.adc-e.uk", "cloud.adc-e.uk", True, False),
    "aws-iso-f": ("csp.hci.ic.gov", "csp.hci.ic.gov", True, False),
    "aws-eusc": ("amazonaws.eu", "amazonaws.eu", True, False),
}

_REGION_PARTITION = (
    (re.compile(r"^us-gov-\w+-\d+$"), "aws-us-gov"),
    (re.compile(r"^cn-\w+-\d+$"), "aws-cn"),
    (re.compile(r"^us-isob-\w+-\d+$"), "aws-iso-b"),
    (re.compile(r"^us-iso-\w+-\d+$"), "aws-iso"),
    (re.compile(r"^eu-isoe-\w+-\d+$"), "aws-iso-e"),
    (re.compile(r"^us-isof-\w+-\d+$"), "aws-iso-f"),
    (re.compile(r"^eusc-\w+-\d+$"), "aws-eusc"),
)

_TRUE = {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Arn:
    partition: str
    service: str
    region: str
    account: str
    resource: str

    @classmethod
    def parse(cls, text: str, what: str) -> Arn:
        parts = (text or "").split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or not parts[1] or not parts[5]:
            raise InvalidInput(f"--{what}: {text!r} is not an ARN (arn:<partition>:<service>:...)")
        return cls(parts[1], parts[2], parts[3], parts[4], parts[5])


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


def partition_of(region: str) -> str:
    for pattern, name in _REGION_PARTITION:
        if pattern.match(region):
            return name
    return "aws"


def env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUE


def resolve_region(trust_anchor_arn: str, profile_arn: str, region: str | None) -> str:
    """The signing region: ``--region`` if given, else the trust anchor's (checked against the profile's)."""
    anchor = Arn.parse(trust_anchor_arn, "trust-anchor-arn")
    profile = Arn.parse(profile_arn, "profile-arn")
    if anchor.region != profile.region:
        raise InvalidInput(f"trust anchor and profile regions don't match ({anchor.region} vs {profile.region})")
    return region or anchor.region


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


def normalize_region(region: str) -> tuple[str, bool]:
    """Strip a FIPS pseudo-region (``fips-us-east-1``, ``us-east-1-fips``): the SDKs read it as FIPS.

    The signing scope always uses the plain region, FIPS host or not.
    """
    fips = False
    for marker, repl in (("-fips-", "-"), ("fips-", ""), ("-fips", "")):
        if marker in region:
            region = region.replace(marker, repl)
            fips = True
    return region, fips


def resolve_endpoint(
    region: str,
    endpoint: str | None = None,
    *,
    use_fips: bool = False,
    use_dualstack: bool = False,
) -> Endpoint:
    """The endpoint for ``region``, honouring an override, FIPS and dual-stack."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL_ROLESANYWHERE") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        if use_fips:
            raise InvalidInput("FIPS and a custom --endpoint are not supported together: pick one")
        if use_dualstack:
            raise InvalidInput("dual-stack and a custom --endpoint are not supported together: pick one")
        return parse_endpoint_url(endpoint)
    if not region:
        raise InvalidInput("no region: pass --region or a trust anchor ARN that names one")
    region, fips_name = normalize_region(region)
    use_fips = use_fips or fips_name
    suffix, dual_suffix, has_fips, has_dual = PARTITIONS[partition_of(region)]
    if use_fips and not has_fips:
        raise InvalidInput(f"FIPS endpoints are not available in {region}'s partition")
    if use_dualstack and not has_dual:
        raise InvalidInput(f"dual-stack endpoints are not available in {region}'s partition")
    name = "rolesanywhere-fips" if use_fips else "rolesanywhere"
    host = f"{name}.{region}.{dual_suffix if use_dualstack else suffix}"
    return Endpoint("https", host, host, 443)


def role_name(role_arn: str) -> str:
    """The role's name without its path: what IMDS lists under security-credentials/."""
    return Arn.parse(role_arn, "role-arn").resource.split("/")[-1]
