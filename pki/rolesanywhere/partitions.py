"""Partitions and regions: the one table the signer, ``rapki aws`` and the emulator share.

The table mirrors botocore's ``partitions.json`` (region pattern, DNS suffixes, FIPS and dual-stack
support) and host names follow the ``rolesanywhere`` endpoint rule set:
``rolesanywhere[-fips].<region>.<dns suffix | dual-stack dns suffix>``. A test walks every region the
installed botocore knows and checks partition and host names against it; botocore itself is never
imported here (the signer loads this module on every SDK refresh).

The partition matters for ARNs we *write* (trust policies, role ARNs: GovCloud ARNs start
``arn:aws-us-gov:``) and for the host a call goes to (:mod:`pki.rolesanywhere.endpoints`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from pki.errors import InvalidInput

SERVICE = "rolesanywhere"


@dataclass(frozen=True)
class Partition:
    name: str
    region_pattern: re.Pattern[str]
    dns_suffix: str
    dual_stack_dns_suffix: str
    supports_fips: bool = True
    supports_dual_stack: bool = True

    def host(self, region: str, *, fips: bool = False, dual_stack: bool = False) -> str:
        name = f"{SERVICE}-fips" if fips else SERVICE
        return f"{name}.{region}.{self.dual_stack_dns_suffix if dual_stack else self.dns_suffix}"


# Specific partitions first: a region no pattern matches is in "aws", as in botocore.
PARTITIONS: dict[str, Partition] = {
    p.name: p
    for p in (
        Partition("aws-us-gov", re.compile(r"^us-gov-\w+-\d+$"), "amazonaws.com", "api.aws"),
        Partition("aws-cn", re.compile(r"^cn-\w+-\d+$"), "amazonaws.com.cn", "api.amazonwebservices.com.cn"),
        Partition("aws-iso-b", re.compile(r"^us-isob-\w+-\d+$"), "sc2s.sgov.gov", "api.aws.scloud"),
        Partition("aws-iso-e", re.compile(r"^eu-isoe-\w+-\d+$"), "cloud.adc-e.uk", "api.cloud-aws.adc-e.uk"),
        Partition("aws-iso-f", re.compile(r"^us-isof-\w+-\d+$"), "csp.hci.ic.gov", "api.aws.hci.ic.gov"),
        Partition("aws-iso", re.compile(r"^us-iso-\w+-\d+$"), "c2s.ic.gov", "api.aws.ic.gov"),
        Partition("aws-eusc", re.compile(r"^eusc-de-\w+-\d+$"), "amazonaws.eu", "api.amazonwebservices.eu"),
        Partition("aws", re.compile(r"^(us|eu|ap|sa|ca|me|af|il|mx)-\w+-\d+$"), "amazonaws.com", "api.aws"),
    )
}
DEFAULT_PARTITION = "aws"
GOVCLOUD_REGIONS = ("us-gov-west-1", "us-gov-east-1")
# Regions with a rolesanywhere-fips endpoint (spec, section 3; botocore's endpoints.json "fips" variants).
FIPS_REGIONS = frozenset({"us-east-1", "us-east-2", "us-west-1", "us-west-2", *GOVCLOUD_REGIONS})
_REGION = re.compile(r"^[a-z]{2,4}(-[a-z]+)+-\d+$")


@lru_cache(maxsize=256)  # the emulator asks on every call, for a handful of regions
def partition_of(region: str) -> str:
    """``aws-us-gov`` for GovCloud, ``aws-cn`` for China, ``aws-iso-e`` for ``eu-isoe-*``, ..., else ``aws``.

    ``<partition>-global`` (botocore's pseudo-region of global services) belongs to that partition.
    """
    for partition in PARTITIONS.values():
        if partition.region_pattern.match(region):
            return partition.name
    if region.endswith("-global") and region[: -len("-global")] in PARTITIONS:
        return region[: -len("-global")]
    return DEFAULT_PARTITION


def split_fips(region: str) -> tuple[str, bool]:
    """``fips-us-east-1`` / ``us-east-1-fips`` -> (``us-east-1``, True); any other name unchanged.

    Old SDK configs name FIPS endpoints as pseudo-regions; ARNs and signing scopes always carry the
    plain region, so we keep the plain one and turn the marker into the FIPS flag.
    """
    fips = False
    for marker, repl in (("-fips-", "-"), ("fips-", ""), ("-fips", "")):
        if marker in region:
            region = region.replace(marker, repl)
            fips = True
    return region, fips


def normalize_region(region: str) -> tuple[str, bool]:
    """:func:`split_fips` of a region the user typed, refused unless it is shaped like an AWS region."""
    region, fips = split_fips(region.strip().lower())
    if not _REGION.match(region):
        raise InvalidInput(f"{region!r} is not an AWS region name (e.g. us-east-1, us-gov-west-1)")
    return region, fips


def host_of(region: str, *, fips: bool = False, dual_stack: bool = False) -> str:
    """The Roles Anywhere host name of ``region`` (the plain region, not a FIPS pseudo-region)."""
    return PARTITIONS[partition_of(region)].host(region, fips=fips, dual_stack=dual_stack)


_SUFFIXES = sorted({s for p in PARTITIONS.values() for s in (p.dns_suffix, p.dual_stack_dns_suffix)})
_HOST = re.compile(
    rf"^{SERVICE}(?:-fips)?\.(?P<region>[a-z0-9-]+)\.(?:{'|'.join(re.escape(s) for s in _SUFFIXES)})(?::\d+)?$"
)


def region_from_host(host: str) -> str | None:
    """The region of a Roles Anywhere endpoint host name (``rolesanywhere.eu-west-1.amazonaws.com``);
    None for loopback and other hosts."""
    match = _HOST.match(host.strip().lower())
    return match["region"] if match else None
