"""Issuance profiles: which names, key types and lifetimes a class of workload may get.

Deny by default: a CN must fully match ``cn_pattern``; a SAN must fully match one of the profile's
SAN patterns (a profile without SAN patterns allows no SANs); a key type must be listed.
A profile also carries its Roles Anywhere binding, used by registration and the enrollment API;
its ARNs are checked by the one ARN parser (``pki.rolesanywhere.arns``), so every front refuses
the same malformed ones.

``require_san_uri``: every certificate must carry a URI SAN. It is for profiles whose certificates
go to a Roles Anywhere profile with trusted identity propagation from ``x509SAN/URI``, where
CreateSession denies a certificate without one: refusing at issuance says so while it can be fixed.
``rapki aws register --tip-subject x509SAN/URI --profile NAME`` sets it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from pki.errors import InvalidInput, PolicyViolation
from pki.rolesanywhere.arns import IamRoleArn, RolesAnywhereArn
from pki.x509.durations import format_duration, parse_duration
from pki.x509.keys import KeyType
from pki.x509.patterns import compile_pattern, fullmatch
from pki.x509.preflight import source_identity_problem

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_TTL_LIMIT = timedelta(days=397)
MIN_TTL = timedelta(minutes=5)  # a certificate must outlive the clock skew Roles Anywhere tolerates


@dataclass(frozen=True)
class RolesAnywhereBinding:
    """Where certificates of this profile are used: filled by registration or by hand."""

    profile_arn: str = ""
    role_arns: tuple[str, ...] = ()
    trust_anchor_arn: str = ""
    session_duration: int = 3600
    # Where the signer reaches Roles Anywhere when it is not AWS's own endpoint (a private
    # endpoint, the emulator), as registered: printed into the credential_process line.
    endpoint_url: str = ""
    ca_bundle: str = ""

    def __post_init__(self) -> None:
        """Each ARN given is one of its kind; the roles are in the trust anchor's partition."""
        anchor = None
        if self.trust_anchor_arn:
            anchor = RolesAnywhereArn.parse(self.trust_anchor_arn, "trust anchor ARN", expected_type="trust-anchor")
        if self.profile_arn:
            RolesAnywhereArn.parse(self.profile_arn, "profile ARN", expected_type="profile")
        for role in self.role_arns:
            IamRoleArn.parse(role, "role ARN", partition=anchor.partition if anchor else None)

    @property
    def is_bound(self) -> bool:
        return bool(self.profile_arn and self.role_arns and self.trust_anchor_arn)


@dataclass(frozen=True)
class Profile:
    name: str
    cn_pattern: str
    san_dns_patterns: tuple[str, ...] = ()
    san_uri_patterns: tuple[str, ...] = ()
    key_types: tuple[KeyType, ...] = tuple(KeyType)
    default_ttl: timedelta = timedelta(hours=24)
    max_ttl: timedelta = timedelta(days=30)
    roles_anywhere: RolesAnywhereBinding = field(default_factory=RolesAnywhereBinding)
    require_san_uri: bool = False

    def __post_init__(self) -> None:
        if not NAME_RE.fullmatch(self.name):
            raise InvalidInput(
                f"invalid profile name {self.name!r}: lowercase letters, digits, '.', '_', '-' "
                "(1-64, starting with a letter or digit)"
            )
        compile_pattern(self.cn_pattern, "CN")
        for p in self.san_dns_patterns:
            compile_pattern(p, "DNS SAN")
        for p in self.san_uri_patterns:
            compile_pattern(p, "URI SAN")
        if not self.key_types:
            raise InvalidInput("a profile needs at least one key type")
        if self.require_san_uri and not self.san_uri_patterns:
            raise InvalidInput(f"profile {self.name!r} requires a URI SAN but allows none: add a --san-uri-pattern")
        if self.default_ttl > self.max_ttl:
            raise InvalidInput(
                f"default TTL {format_duration(self.default_ttl)} is above max TTL "
                f"{format_duration(self.max_ttl)}"
            )
        if self.default_ttl < MIN_TTL:
            raise InvalidInput(f"default TTL {format_duration(self.default_ttl)} is below the minimum of "
                               f"{format_duration(MIN_TTL)}: certificates must outlive clock skew")
        if self.max_ttl > MAX_TTL_LIMIT:
            raise InvalidInput("max TTL above 397 days: workload certificates should be short-lived")
        if not 900 <= self.roles_anywhere.session_duration <= 43200:
            raise InvalidInput("session duration must be 900-43200 seconds")

    # --- policy ---------------------------------------------------------------------------
    def check_cn(self, cn: str) -> None:
        if (problem := source_identity_problem(cn)) is not None:
            raise PolicyViolation(f"CN {cn!r} refused: {problem}")
        if not fullmatch(self.cn_pattern, cn):
            raise PolicyViolation(
                f"CN {cn!r} is not allowed by profile {self.name!r} (pattern {self.cn_pattern!r})"
            )

    def check_dns(self, name: str) -> None:
        if not any(fullmatch(p, name) for p in self.san_dns_patterns):
            raise PolicyViolation(f"DNS SAN {name!r} is not allowed by profile {self.name!r}")

    def check_uri(self, uri: str) -> None:
        if not any(fullmatch(p, uri) for p in self.san_uri_patterns):
            raise PolicyViolation(f"URI SAN {uri!r} is not allowed by profile {self.name!r}")

    def check_uri_present(self, uris: tuple[str, ...] | list[str]) -> None:
        if self.require_san_uri and not uris:
            raise PolicyViolation(f"profile {self.name!r} requires a URI SAN (its certificates feed a Roles Anywhere "
                                  "profile that takes the identity from x509SAN/URI): ask for one, e.g. --san uri:... "
                                  "(rapki issue/enroll), \"sans\": [\"uri:...\"] (the API) or in the CSR")

    def check_key_type(self, key_type: KeyType) -> None:
        if key_type not in self.key_types:
            allowed = ", ".join(k.value for k in self.key_types)
            raise PolicyViolation(
                f"key type {key_type.value} is not allowed by profile {self.name!r} (allowed: {allowed})"
            )

    def ttl(self, requested: timedelta | None) -> timedelta:
        """The lifetime a certificate gets: ``requested`` (``MIN_TTL`` up to the max TTL, both
        included), else the default TTL."""
        if requested is None:
            return self.default_ttl
        if requested > self.max_ttl:
            raise PolicyViolation(
                f"TTL {format_duration(requested)} is above the max TTL of profile {self.name!r} "
                f"({format_duration(self.max_ttl)})"
            )
        if requested < MIN_TTL:
            raise PolicyViolation(f"TTL {format_duration(requested)} is below the minimum of "
                                  f"{format_duration(MIN_TTL)}: certificates must outlive clock skew")
        return requested

    # --- (de)serialisation ------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cn_pattern": self.cn_pattern,
            "san_dns_patterns": list(self.san_dns_patterns),
            "san_uri_patterns": list(self.san_uri_patterns),
            "key_types": [k.value for k in self.key_types],
            "default_ttl": format_duration(self.default_ttl),
            "max_ttl": format_duration(self.max_ttl),
            "roles_anywhere": {**asdict(self.roles_anywhere), "role_arns": list(self.roles_anywhere.role_arns)},
            "require_san_uri": self.require_san_uri,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        ra = data.get("roles_anywhere") or {}
        return cls(
            name=data["name"],
            cn_pattern=data["cn_pattern"],
            san_dns_patterns=tuple(data.get("san_dns_patterns", ())),
            san_uri_patterns=tuple(data.get("san_uri_patterns", ())),
            key_types=tuple(KeyType.parse(k) for k in data.get("key_types", [k.value for k in KeyType])),
            default_ttl=parse_duration(data.get("default_ttl", "24h")),
            max_ttl=parse_duration(data.get("max_ttl", "30d")),
            roles_anywhere=RolesAnywhereBinding(
                profile_arn=ra.get("profile_arn", ""),
                role_arns=tuple(ra.get("role_arns", ())),
                trust_anchor_arn=ra.get("trust_anchor_arn", ""),
                session_duration=int(ra.get("session_duration", 3600)),
                endpoint_url=str(ra.get("endpoint_url", "")),
                ca_bundle=str(ra.get("ca_bundle", "")),
            ),
            require_san_uri=bool(data.get("require_san_uri", False)),
        )
