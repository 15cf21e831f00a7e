"""The IAM role trust policy that lets Roles Anywhere assume a role for our certificates.

    {"Principal": {"Service": "rolesanywhere.amazonaws.com"},
     "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
     "Condition": {"ArnEquals": {"aws:SourceArn": <trust anchor ARN>},
                   "StringLike": {"aws:PrincipalTag/x509Subject/CN": <from the profile's CN pattern>}, ...}}

``aws:SourceArn`` pins the trust anchor (without it, any anchor in the account could use the role).
The PrincipalTag conditions repeat the rapki profile's subject constraints on the AWS side: Roles
Anywhere turns the certificate's subject and SANs into session tags. IAM has no regular expressions,
only ``*``/``?`` wildcards, so each pattern becomes the tightest wildcard that still matches
everything the pattern matches (``web-[0-9]+`` -> ``web-*``); a pattern that cannot be expressed is
left out with a note, never approximated by something narrower (that would lock workloads out).
The service principal is the same in GovCloud; the partition only shows in the ARNs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pki.rolesanywhere.arns import RolesAnywhereArn

if TYPE_CHECKING:
    from pki.x509.profiles import Profile

SERVICE_PRINCIPAL = "rolesanywhere.amazonaws.com"
ACTIONS = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
_CLASS_ESCAPES = set("dDwWsS")
_IAM_SPECIAL = {"*": "${*}", "?": "${?}", "$": "${$}"}


def regex_to_wildcards(pattern: str) -> list[str] | None:
    """IAM ``StringLike`` values matching at least what ``pattern`` (a fullmatch regex) matches.

    Returns None when the pattern cannot be expressed (or would become a bare ``*``, which says nothing).
    """
    branches = _split_top(pattern)
    if branches is None:
        return None
    out: list[str] = []
    for branch in branches:
        glob = _branch(branch)
        if glob is None or glob.strip("*") == "":
            return None
        if glob not in out:
            out.append(glob)
    return out


def _split_top(pattern: str) -> list[str] | None:
    """Split on top-level ``|``; None for unbalanced brackets."""
    parts, depth, start, i, in_class = [], 0, 0, 0, False
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            in_class = ch != "]"
        elif ch == "[":
            in_class = True
            if pattern[i + 1: i + 2] == "]" or pattern[i + 1: i + 3] == "^]":  # literal ] first in class
                i += 2 if pattern[i + 1] == "]" else 3
                continue
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth < 0:
                return None
        elif ch == "|" and depth == 0:
            parts.append(pattern[start:i])
            start = i + 1
        i += 1
    if depth or in_class:
        return None
    parts.append(pattern[start:])
    return parts


def _branch(pattern: str) -> str | None:
    atoms: list[str] = []  # each: a literal piece, "?" (any one char) or "*"
    i = 0
    if pattern.startswith("^"):
        i = 1
    end = len(pattern) - 1 if pattern.endswith("$") and not pattern.endswith("\\$") else len(pattern)
    while i < end:
        ch = pattern[i]
        if ch == "\\":
            if i + 1 >= end:
                return None
            nxt = pattern[i + 1]
            if nxt in _CLASS_ESCAPES:
                atom = "?"
            elif nxt.isalnum():  # \b, \A, \1 ...: not plain characters
                return None
            else:
                atom = _IAM_SPECIAL.get(nxt, nxt)
            i += 2
        elif ch == "[":
            close = _class_end(pattern, i)
            if close is None:
                return None
            atom, i = "?", close + 1
        elif ch == "(":
            close = _group_end(pattern, i)
            if close is None:
                return None
            inner = pattern[i + 1: close].removeprefix("?:")
            sub = regex_to_wildcards(inner) if not inner.startswith("?") else None
            atom = sub[0] if sub is not None and len(sub) == 1 else "*"
            i = close + 1
        elif ch == ".":
            atom, i = "?", i + 1
        elif ch in "*+?{":
            return None  # a quantifier with nothing before it
        else:
            atom, i = _IAM_SPECIAL.get(ch, ch), i + 1
        # A quantifier turns the atom into "*" (a superset: any run of any characters).
        if i < end and pattern[i] in "*+?{":
            if pattern[i] == "{":
                close = pattern.find("}", i)
                if close < 0:
                    return None
                i = close + 1
            else:
                i += 1
            if i < end and pattern[i] in "?+":  # lazy/possessive modifiers
                i += 1
            atom = "*"
        atoms.append(atom)
    glob = "".join(atoms)
    while "**" in glob:
        glob = glob.replace("**", "*")
    return glob


def _class_end(pattern: str, start: int) -> int | None:
    i = start + 1
    if pattern[i: i + 1] == "^":
        i += 1
    if pattern[i: i + 1] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i
        i += 1
    return None


def _group_end(pattern: str, start: int) -> int | None:
    depth, i = 0, start
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "[":
            close = _class_end(pattern, i)
            if close is None:
                return None
            i = close + 1
            continue
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def trust_policy(trust_anchor_arn: str, profile: Profile | None = None) -> tuple[dict[str, Any], list[str]]:
    """(the policy document, notes about constraints that could not be expressed)."""
    anchor = RolesAnywhereArn.parse(trust_anchor_arn, "--trust-anchor-arn", expected_type="trust-anchor")
    anchor.require_resource_arn("--trust-anchor-arn")  # aws:SourceArn is never the alias ARN
    notes: list[str] = []
    condition: dict[str, dict[str, Any]] = {"ArnEquals": {"aws:SourceArn": str(anchor)}}
    if profile is not None:
        cn = regex_to_wildcards(profile.cn_pattern)
        if cn is None:
            notes.append(f"CN pattern {profile.cn_pattern!r} has no IAM wildcard equivalent: no CN condition")
        else:
            condition.setdefault("StringLike", {})["aws:PrincipalTag/x509Subject/CN"] = _one_or_list(cn)
        # SANs are optional in a certificate, so their tags may be absent: ...IfExists.
        for tag, patterns in (("x509SAN/DNS", profile.san_dns_patterns), ("x509SAN/URI", profile.san_uri_patterns)):
            values: list[str] = []
            for pattern in patterns:
                globs = regex_to_wildcards(pattern)
                if globs is None:
                    notes.append(f"SAN pattern {pattern!r} has no IAM wildcard equivalent: no {tag} condition")
                    values = []
                    break
                values.extend(g for g in globs if g not in values)
            if values:
                condition.setdefault("StringLikeIfExists", {})[f"aws:PrincipalTag/{tag}"] = _one_or_list(values)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{
            "Sid": "RolesAnywhere",
            "Effect": "Allow",
            "Principal": {"Service": SERVICE_PRINCIPAL},
            "Action": ACTIONS,
            "Condition": condition,
        }],
    }  # fmt: skip
    return policy, notes


def _one_or_list(values: list[str]) -> str | list[str]:
    return values[0] if len(values) == 1 else values
