"""The ARNs Roles Anywhere takes and gives: its own resources and the IAM roles it assumes.

One parser for the signer's flags, ``rapki aws`` and the emulator's requests. ``parse`` either
returns the parts or raises :class:`pki.errors.InvalidInput` naming what is wrong (not an ARN, another
service, a resource type that does not fit, a malformed account or id, a partition the region is not
in), so each front only decides how to show the refusal.

Resource types are a table (:data:`RESOURCE_TYPES`): each type names its id pattern and the
collection the emulator keeps it in. botocore's model (``rolesanywhere`` 2018-05-10) constrains the
ARN members only loosely (``arn:aws(-[^:]+)?:rolesanywhere(:.*){2}(:trust-anchor.*)``); the ids it
issues are UUIDs.

An alias ARN (``aliasArn``, botocore 1.44.3+) names a trust anchor, profile or CRL by its alias:
``arn:<partition>:rolesanywhere:<region>:<account>:alias/<type>/<alias-name>`` (the form the model's
``TrustAnchorAliasArn``/``ProfileAliasArn``/``CrlAliasArn`` documentation gives). It parses to the
same type with ``alias=True`` and the alias name in ``id``; the service resolves it to the resource,
so a client passes it on as written. IAM policies must not name it (the model says a statement
naming an alias ARN does not apply to the resource): :meth:`RolesAnywhereArn.require_resource_arn`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pki.errors import InvalidInput
from pki.rolesanywhere.partitions import partition_of

SERVICE = "rolesanywhere"
_UUID = re.compile(r"^[a-f0-9]{8}-([a-z0-9]{4}-){3}[a-z0-9]{12}$")  # botocore's Uuid shape
_ACCOUNT = re.compile(r"^\d{12}$")
_PARTITION = re.compile(r"^aws(-[a-z]+)*$")
_REGION = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")
# botocore's AliasName shape (1-256 characters once set; "" only means "no alias" in requests).
ALIAS_NAME = re.compile(r"(?!.*//)[A-Za-z]([A-Za-z0-9_/-]*[A-Za-z0-9_-])?")
ALIAS_MAX = 256
ALIAS_TYPES = ("trust-anchor", "profile", "crl")


@dataclass(frozen=True)
class ResourceType:
    name: str  # as it appears in the ARN: "trust-anchor"
    collection: str  # the emulator's state key and the API's plural: "trustAnchors"
    id_pattern: re.Pattern[str] = _UUID


RESOURCE_TYPES: dict[str, ResourceType] = {
    t.name: t
    for t in (
        ResourceType("trust-anchor", "trustAnchors"),
        ResourceType("profile", "profiles"),
        ResourceType("crl", "crls"),
        ResourceType("subject", "subjects"),
    )
}
_SHAPE = "arn:<partition>:rolesanywhere:<region>:<account>:<type>/<id> or ...:alias/<type>/<alias-name>"


@dataclass(frozen=True)
class RolesAnywhereArn:
    """``arn:<partition>:rolesanywhere:<region>:<account>:<type>/<uuid>`` (or ``alias/<type>/<name>``)."""

    partition: str
    region: str
    account: str
    type: str
    id: str  # the resource id, or the alias name when ``alias``
    alias: bool = False

    @classmethod
    def parse(cls, text: str, what: str = "ARN", *, expected_type: str | None = None) -> RolesAnywhereArn:
        """The parts of ``text``; ``what`` names it in the error (``--trust-anchor-arn``)."""
        text = (text or "").strip()
        parts = text.split(":", 5)
        if len(parts) != 6 or parts[0] != "arn":
            raise InvalidInput(f"{what} {text!r} is not an ARN ({_SHAPE})")
        _, partition, service, region, account, resource = parts
        if service != SERVICE:
            raise InvalidInput(f"{what} {text!r} is a {service or 'service-less'} ARN, not a Roles Anywhere one")
        alias = resource.startswith("alias/")
        kind, slash, ident = resource.removeprefix("alias/").partition("/")
        rtype = RESOURCE_TYPES.get(kind)
        if rtype is None or not slash:
            raise InvalidInput(f"{what} {text!r}: {kind!r} is not a Roles Anywhere resource type "
                               f"({', '.join(RESOURCE_TYPES)})")
        if expected_type and kind != expected_type:
            raise InvalidInput(f"{what} {text!r} names a {kind}, not a {expected_type}")
        if not _PARTITION.match(partition) or not _REGION.match(region):
            raise InvalidInput(f"{what} {text!r}: {partition!r}/{region!r} is not a partition and region")
        if not _ACCOUNT.match(account):
            raise InvalidInput(f"{what} {text!r}: the account {account!r} is not 12 digits")
        if alias:
            if kind not in ALIAS_TYPES or not is_alias_name(ident):
                raise InvalidInput(f"{what} {text!r}: {ident!r} is not an alias of a {kind} (1-{ALIAS_MAX} "
                                   "characters: a letter, then letters, digits, _, - and single /)")
        elif not rtype.id_pattern.match(ident):
            raise InvalidInput(f"{what} {text!r}: {ident!r} is not a {kind} id (a lower-case UUID)")
        if partition_of(region) != partition:
            raise InvalidInput(f"{what} {text!r}: region {region} belongs to partition "
                               f"{partition_of(region)}, not {partition}")
        return cls(partition, region, account, kind, ident, alias)

    @classmethod
    def make(cls, region: str, account: str, type_: str, id_: str) -> RolesAnywhereArn:
        """The ARN of a resource we create: the partition follows from the region."""
        return cls(partition_of(region), region, account, type_, id_)

    @classmethod
    def make_alias(cls, region: str, account: str, type_: str, alias_name: str) -> RolesAnywhereArn:
        """The alias ARN of a resource holding ``alias_name``."""
        return cls(partition_of(region), region, account, type_, alias_name, alias=True)

    @property
    def collection(self) -> str:
        return RESOURCE_TYPES[self.type].collection

    @property
    def identifier(self) -> str:
        """What a ``*Identifier`` request member takes for it: the id, or the whole alias ARN."""
        return str(self) if self.alias else self.id

    def require_resource_arn(self, what: str) -> RolesAnywhereArn:
        """``self`` unless it is an alias ARN: where only the ARN holding the id is right (IAM policies)."""
        if self.alias:
            raise InvalidInput(f"{what} {self} is an alias ARN; IAM policies need the {self.type} ARN "
                               f"that holds its id (arn:...:{self.type}/<id>)")
        return self

    def __str__(self) -> str:
        resource = f"alias/{self.type}/{self.id}" if self.alias else f"{self.type}/{self.id}"
        return f"arn:{self.partition}:{SERVICE}:{self.region}:{self.account}:{resource}"


def is_alias_name(text: str) -> bool:
    """``text`` fits botocore's AliasName pattern and 1-256 characters (the reserved ``aws/`` aside)."""
    return 1 <= len(text) <= ALIAS_MAX and ALIAS_NAME.fullmatch(text) is not None


_ROLE = re.compile(
    r"^arn:(?P<partition>aws(?:-[a-z]+)*):iam::(?P<account>\d{12}):role/(?P<path>(?:.*/)?)(?P<name>[^/]+)$"
)


@dataclass(frozen=True)
class IamRoleArn:
    """``arn:<partition>:iam::<account>:role/<path/><name>``: what a profile lists and CreateSession assumes."""

    partition: str
    account: str
    path: str  # "" or "a/b/"
    name: str

    @classmethod
    def parse(cls, text: str, what: str = "role", *, partition: str | None = None) -> IamRoleArn:
        """The parts of ``text``, in ``partition`` when given (a commercial role cannot be used from GovCloud)."""
        match = _ROLE.match((text or "").strip())
        if match is None:
            raise InvalidInput(f"{what} {text!r} is not an IAM role ARN (arn:<partition>:iam::<account>:role/<name>)")
        if partition is not None and match["partition"] != partition:
            raise InvalidInput(f"{what} {text} is in partition {match['partition']}, but the region is in {partition}")
        return cls(match["partition"], match["account"], match["path"], match["name"])

    def __str__(self) -> str:
        return f"arn:{self.partition}:iam::{self.account}:role/{self.path}{self.name}"


def check_role_arn(text: str, partition: str | None = None) -> str:
    """``text`` when it is an IAM role ARN (in ``partition`` when given); InvalidInput otherwise."""
    IamRoleArn.parse(text, partition=partition)
    return text
