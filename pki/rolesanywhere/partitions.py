"""Regions, partitions, FIPS and endpoint overrides: the parts of AWS addressing rapki decides itself.

botocore resolves the actual host name (its endpoint rule set knows ``rolesanywhere-fips.us-gov-west-1``
and friends); this module only decides *which* region, whether FIPS is wanted, and whether an explicit
endpoint (``--endpoint-url``, ``AWS_ENDPOINT_URL_ROLESANYWHERE``, ``AWS_ENDPOINT_URL``) replaces all of
that, so the emulator and AWS are driven the same way. The partition matters for ARNs we *write*
(the IAM trust policy, role ARNs): GovCloud ARNs start ``arn:aws-us-gov:``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from pki.errors import InvalidInput

GOVCLOUD_REGIONS = ("us-gov-west-1", "us-gov-east-1")
# Regions with a rolesanywhere-fips endpoint (spec, section 3).
FIPS_REGIONS = frozenset({"us-east-1", "us-east-2", "us-west-1", "us-west-2", *GOVCLOUD_REGIONS})

_PARTITIONS = (
    (re.compile(r"^us-gov-[a-z]+-\d+$"), "aws-us-gov"),
    (re.compile(r"^cn-[a-z]+-\d+$"), "aws-cn"),
    (re.compile(r"^us-isob-[a-z]+-\d+$"), "aws-iso-b"),
    (re.compile(r"^us-iso-[a-z]+-\d+$"), "aws-iso"),
)
_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
_TRUE = {"1", "true", "yes", "on"}
SERVICE_ENV = "AWS_ENDPOINT_URL_ROLESANYWHERE"


def partition_of(region: str) -> str:
    """``aws-us-gov`` for GovCloud, ``aws-cn`` for China, ..., ``aws`` for everything else."""
    for pattern, partition in _PARTITIONS:
        if pattern.match(region):
            return partition
    return "aws"


def normalize_region(region: str) -> tuple[str, bool]:
    """``fips-us-gov-west-1`` / ``us-gov-west-1-fips`` -> (``us-gov-west-1``, True).

    Old SDK configs name FIPS endpoints as pseudo-regions; ARNs and signing scopes always carry the
    plain region, so we keep the plain one and turn the marker into the FIPS flag.
    """
    region = region.strip().lower()
    fips = False
    for marker, repl in (("fips-", ""), ("-fips", "")):
        if marker in region:
            region = region.replace(marker, repl, 1)
            fips = True
    if not _REGION.match(region):
        raise InvalidInput(f"{region!r} is not an AWS region name (e.g. us-east-1, us-gov-west-1)")
    return region, fips


def fips_requested(explicit: bool | None) -> bool:
    """``--fips`` if given, else ``AWS_USE_FIPS_ENDPOINT`` (the SDK variable)."""
    if explicit is not None:
        return explicit
    return os.environ.get("AWS_USE_FIPS_ENDPOINT", "").strip().lower() in _TRUE


def endpoint_override(explicit: str | None) -> str | None:
    """The endpoint that replaces AWS's: ``--endpoint-url``, else the service-specific variable, else
    ``AWS_ENDPOINT_URL`` (unless ``AWS_IGNORE_CONFIGURED_ENDPOINT_URLS`` is set, as in the SDKs)."""
    if explicit:
        return explicit
    if os.environ.get("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "").strip().lower() in _TRUE:
        return None
    return os.environ.get(SERVICE_ENV) or os.environ.get("AWS_ENDPOINT_URL") or None


def env_region() -> str | None:
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None


@dataclass(frozen=True)
class RolesAnywhereArn:
    """``arn:<partition>:rolesanywhere:<region>:<account>:<type>/<uuid>``."""

    partition: str
    region: str
    account: str
    type: str
    id: str

    @classmethod
    def parse(cls, text: str, what: str = "ARN", *, expected_type: str | None = None) -> RolesAnywhereArn:
        parts = (text or "").strip().split(":", 5)
        if len(parts) != 6 or parts[0] != "arn" or parts[2] != "rolesanywhere" or "/" not in parts[5]:
            raise InvalidInput(f"{what} {text!r} is not a Roles Anywhere ARN "
                               "(arn:<partition>:rolesanywhere:<region>:<account>:<type>/<id>)")
        kind, _, ident = parts[5].partition("/")
        arn = cls(parts[1], parts[3], parts[4], kind, ident)
        if expected_type and kind != expected_type:
            raise InvalidInput(f"{what} {text!r} names a {kind}, not a {expected_type}")
        if partition_of(arn.region) != arn.partition:
            raise InvalidInput(f"{what} {text!r}: region {arn.region} belongs to partition "
                               f"{partition_of(arn.region)}, not {arn.partition}")
        return arn

    def __str__(self) -> str:
        return f"arn:{self.partition}:rolesanywhere:{self.region}:{self.account}:{self.type}/{self.id}"


def check_role_arn(text: str, partition: str | None = None) -> str:
    """An IAM role ARN, in ``partition`` when given (a commercial role cannot be used from GovCloud)."""
    match = re.fullmatch(r"arn:(aws[a-z-]*):iam::(\d{12}):role/.+", text or "")
    if match is None:
        raise InvalidInput(f"{text!r} is not an IAM role ARN (arn:<partition>:iam::<account>:role/<name>)")
    if partition is not None and match.group(1) != partition:
        raise InvalidInput(f"role {text} is in partition {match.group(1)}, but the region is in {partition}")
    return text


def resolve_region(explicit: str | None, *, arn: str | None = None, configured: str | None = None) -> tuple[str, bool]:
    """The region (plain) and whether a FIPS pseudo-region asked for FIPS.

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
