"""Trusted identity propagation: a profile's ``tipConfiguration`` as the model (botocore 1.44.7+)
describes it, for ``rapki aws register`` and the emulator alike.

``subjectSource`` names the certificate field the propagated identity comes from; while TIP is
``ENABLED`` the profile's attribute mappings must keep a rule for that field (the model: they "must
include a rule").
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

# A subject source -> the attribute mapping (certificate field, specifier) it needs.
SUBJECT_SOURCES = {"x509Subject/CN": ("x509Subject", "CN"), "x509SAN/URI": ("x509SAN", "URI")}
DEFAULT_SUBJECT_SOURCE = "x509Subject/CN"  # the model's default when a configuration names none


def missing_mapping_rule(tip: Mapping[str, Any] | None,
                         mappings: Iterable[Mapping[str, Any]]) -> tuple[str, str] | None:
    """The attribute mapping rule (certificate field, specifier) an enabled ``tip`` needs and
    ``mappings`` (a profile's ``attributeMappings``) lack; None when TIP is off or the rule is there."""
    if not tip or tip.get("status") != "ENABLED":
        return None
    field_name, specifier = SUBJECT_SOURCES[tip.get("subjectSource") or DEFAULT_SUBJECT_SOURCE]
    rules = [r.get("specifier") for m in mappings if m.get("certificateField") == field_name
             for r in m.get("mappingRules") or []]  # fmt: skip
    return None if specifier in rules else (field_name, specifier)
