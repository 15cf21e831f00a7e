"""``rapki aws register``, ``rapki aws trust-policy`` and the whole loop, against the emulator with real boto3.

The end-to-end test is the issue's proof: init -> register -> issue -> rapki-signer gets credentials ->
revoke --publish -> the same certificate gets ``Certificate revoked``, a new one still works.
"""

# ruff: noqa: F811  (the "aws" fixture is imported from tests.test_publish and used as a parameter)
from __future__ import annotations

import json
import shlex
import socket
import subprocess
from pathlib import Path
from typing import Any

import pytest

from pki.aws.client import AwsOptions, RolesAnywhere
from pki.aws.register import register
from pki.aws.trust_policy import regex_to_wildcards, trust_policy
from pki.ca.authority import CertificateAuthority
from pki.errors import InvalidInput
from pki.x509.profiles import Profile
from tests.commands import signer_cmd
from tests.test_publish import Aws, aws  # noqa: F401 (fixture)


def role(account: Aws, name: str = "app", partition: str = "aws") -> str:
    return f"arn:{partition}:iam::{account.account}:role/{name}"


def connect() -> RolesAnywhere:
    return RolesAnywhere.connect(AwsOptions())


# --- the proof ------------------------------------------------------------------------------------
def test_register_issue_sign_revoke_publish_refused(aws: Aws, tmp_path: Path) -> None:
    home = tmp_path / "home"
    aws.rapki("init", home=home)
    aws.rapki("profile", "add", "web", "--cn-pattern", "web-[0-9]+", home=home)
    first = tmp_path / "web-1"
    out = aws.rapki("aws", "register", "--role-arn", role(aws), "--profile", "web", "--files", str(first),
                    "--expiry-notification-days", "30", home=home).stdout
    line = next(x for x in out.splitlines() if x.startswith("credential_process = "))
    ra = json.loads(aws.rapki("aws", "register", "--role-arn", role(aws), "--profile", "web", "--json",
                              home=home).stdout)
    assert ra["writes"] == 0 and ra["actions"] == []  # re-running converges: nothing to do
    anchor, profile = ra["trust_anchor_arn"], ra["profile_arn"]
    assert f"--trust-anchor-arn {anchor}" in line and f"--profile-arn {profile}" in line
    assert f"--endpoint {aws.emulator.endpoint_url}" in line  # the environment's endpoint is carried over
    [crl] = aws.crls(anchor)
    assert crl["enabled"] and crl["name"] == "rapki-issuing-1"
    binding = CertificateAuthority.open(home).profile("web").roles_anywhere
    assert (binding.trust_anchor_arn, binding.profile_arn, binding.role_arns) == (anchor, profile, (role(aws),))

    issued = json.loads(aws.rapki("issue", "--profile", "web", "--cn", "web-1", "--out", str(first), "--json",
                                  home=home).stdout)
    signer = shlex.split(line.removeprefix("credential_process = "))  # exactly what ~/.aws/config would run
    signer[0:2] = [*signer_cmd(), "credential-process"]
    ok = subprocess.run(signer, capture_output=True, text=True, timeout=60, env=aws.env, check=False)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["AccessKeyId"]

    aws.emulator.reset_stats()
    aws.rapki("revoke", issued["serial"], "--publish", home=home)
    assert aws.emulator.stats()["writes"] == {"UpdateCrl": 1}
    refused = subprocess.run(signer, capture_output=True, text=True, timeout=60, env=aws.env, check=False)
    assert refused.returncode == 1 and refused.stdout == ""
    assert "Certificate revoked" in refused.stderr

    second = tmp_path / "web-2"
    aws.rapki("issue", "--profile", "web", "--cn", "web-2", "--out", str(second), home=home)
    again = [a.replace(str(first), str(second)) for a in signer]
    fresh = subprocess.run(again, capture_output=True, text=True, timeout=60, env=aws.env, check=False)
    assert fresh.returncode == 0, fresh.stderr


# --- registration -----------------------------------------------------------------------------------
def test_register_converges_after_changes_and_rotation(ca: CertificateAuthority, aws: Aws) -> None:
    result = register(ca, connect(), name="team-a", role_arns=[role(aws)])
    assert [a.split(" ")[0] for a in result.actions] == ["created", "created", "imported"]
    assert ca.config.extra["roles_anywhere"]["trust_anchor_arn"] == result.trust_anchor_arn
    anchors = aws.client.list_trust_anchors()["trustAnchors"]
    assert len(anchors) == 1 and anchors[0]["enabled"]
    # Roles and duration changed: one UpdateProfile, nothing else.
    aws.emulator.reset_stats()
    changed = register(ca, connect(), name="team-a", role_arns=[role(aws), role(aws, "other")], duration=7200)
    assert aws.emulator.stats()["writes"] == {"UpdateProfile": 1} and changed.writes == 1
    detail = aws.client.get_profile(profileId=changed.profile_arn.rsplit("/", 1)[1])["profile"]
    assert detail["durationSeconds"] == 7200 and len(detail["roleArns"]) == 2
    # Disabled out of band, and the config lost: found by name, re-enabled, never duplicated.
    aws.client.disable_trust_anchor(trustAnchorId=result.trust_anchor_arn.rsplit("/", 1)[1])
    ca.home.update_section("roles_anywhere", {"trust_anchor_arn": "", "profile_arn": ""})
    ca = CertificateAuthority.open(ca.home.path)
    aws.emulator.reset_stats()
    again = register(ca, connect(), name="team-a", role_arns=[role(aws), role(aws, "other")], duration=7200)
    assert again.trust_anchor_arn == result.trust_anchor_arn
    assert aws.emulator.stats()["writes"] == {"EnableTrustAnchor": 1}
    assert len(aws.client.list_profiles()["profiles"]) == 1
    # Rotation: the bundle gets both issuing CAs; the new CA's CRL is imported next to the old one.
    ca.sign_intermediate()
    aws.emulator.reset_stats()
    rotated = register(ca, connect(), name="team-a", role_arns=[role(aws), role(aws, "other")], duration=7200)
    assert len(rotated.anchor_subjects) == 2
    assert aws.emulator.stats()["writes"] == {"UpdateTrustAnchor": 1, "ImportCrl": 1}
    assert len(aws.crls(result.trust_anchor_arn)) == 2


def test_register_expiry_notifications_and_anchor_modes(ca: CertificateAuthority, aws: Aws) -> None:
    result = register(ca, connect(), name="n", role_arns=[role(aws)], anchor="both", expiry_notification_days=30)
    assert len(result.anchor_subjects) == 2 and "rapki Root CA" in result.anchor_subjects[0]
    detail = aws.client.get_trust_anchor(trustAnchorId=result.trust_anchor_arn.rsplit("/", 1)[1])["trustAnchor"]
    assert {(n["event"], n["threshold"]) for n in detail["notificationSettings"] if n["channel"] == "ALL"} >= {
        ("CA_CERTIFICATE_EXPIRY", 30), ("END_ENTITY_CERTIFICATE_EXPIRY", 30)}
    aws.emulator.reset_stats()
    register(ca, connect(), name="n", role_arns=[role(aws)], anchor="both", expiry_notification_days=30)
    assert aws.emulator.stats()["writesTotal"] == 0
    register(ca, connect(), name="n", role_arns=[role(aws)], anchor="root", expiry_notification_days=45)
    assert aws.emulator.stats()["writes"] == {"UpdateTrustAnchor": 1, "PutNotificationSettings": 1}


def test_register_in_govcloud(ca: CertificateAuthority, aws: Aws) -> None:
    gov_role = role(aws, partition="aws-us-gov")
    result = aws.rapki("aws", "register", "--region", "us-gov-east-1", "--role-arn", gov_role, "--auto-publish",
                       "--json", home=ca.home.path)
    data = json.loads(result.stdout)
    assert data["partition"] == "aws-us-gov"
    assert data["trust_anchor_arn"].startswith("arn:aws-us-gov:rolesanywhere:us-gov-east-1:")
    assert data["crl"]["publications"][0]["action"] == "imported"
    # A commercial role cannot be used from GovCloud: refused before any call.
    aws.emulator.reset_stats()
    bad = aws.rapki("aws", "register", "--region", "us-gov-west-1", "--role-arn", role(aws), home=ca.home.path,
                    check=False)
    assert bad.returncode == 2 and "partition" in bad.stderr and bad.stderr.count("\n") == 1
    assert aws.emulator.stats()["calls"] == {}
    # Later publishes find the region in the stored ARN.
    again = json.loads(aws.rapki("crl", "publish", "--json", home=ca.home.path).stdout)
    assert again["region"] == "us-gov-east-1" and again["writes"] == 0
    # --auto-publish: a plain revoke pushes the CRL to the GovCloud anchor.
    issued = ca.issue("web", cn="web-1")
    aws.emulator.reset_stats()
    aws.rapki("revoke", issued.serial_hex, home=ca.home.path)
    assert aws.emulator.stats()["writes"] == {"UpdateCrl": 1}


# --- trust policy ----------------------------------------------------------------------------------
def test_trust_policy_for_govcloud_with_profile_conditions() -> None:
    anchor = "arn:aws-us-gov:rolesanywhere:us-gov-west-1:123456789012:trust-anchor/" \
             "0f4c0a9e-1111-4222-8333-944455556666"
    profile = Profile(name="svc", cn_pattern=r"web-[0-9]+", san_dns_patterns=(r"[a-z0-9-]+\.example\.com",),
                      san_uri_patterns=(r"spiffe://example\.com/.+",))
    policy, notes = trust_policy(anchor, profile)
    [statement] = policy["Statement"]
    assert statement["Principal"] == {"Service": "rolesanywhere.amazonaws.com"}
    assert statement["Action"] == ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
    assert statement["Condition"] == {
        "ArnEquals": {"aws:SourceArn": anchor},
        "StringLike": {"aws:PrincipalTag/x509Subject/CN": "web-*"},
        "StringLikeIfExists": {"aws:PrincipalTag/x509SAN/DNS": "*.example.com",
                               "aws:PrincipalTag/x509SAN/URI": "spiffe://example.com/*"},
    }
    assert notes == []
    with pytest.raises(InvalidInput, match="partition"):
        trust_policy(anchor.replace("aws-us-gov", "aws"))


def test_trust_policy_cli_uses_the_binding(ca: CertificateAuthority, aws: Aws) -> None:
    register(ca, connect(), name="tp", role_arns=[role(aws)], profile="web")
    out = aws.rapki("aws", "trust-policy", "--profile", "web", home=ca.home.path).stdout
    policy: dict[str, Any] = json.loads(out)
    condition = policy["Statement"][0]["Condition"]
    assert condition["ArnEquals"]["aws:SourceArn"] == ca.profile("web").roles_anywhere.trust_anchor_arn
    weird = Profile(name="weird", cn_pattern=r"(?i)web\b.*")
    ca.add_profile(weird)
    result = aws.rapki("aws", "trust-policy", "--profile", "weird", home=ca.home.path)
    assert "no CN condition" in result.stderr
    assert "StringLike" not in json.loads(result.stdout)["Statement"][0]["Condition"]


@pytest.mark.parametrize(("pattern", "expected"), [
    ("web-[0-9]+", ["web-*"]), (r"[a-z]+\.example\.com", ["*.example.com"]), ("api|web", ["api", "web"]),
    (r"db-\d{2}", ["db-*"]), ("job.", ["job?"]), (r"a\*b", ["a${*}b"]), (".*", None), (r"x\by", None),
])  # fmt: skip
def test_regex_to_wildcards(pattern: str, expected: list[str] | None) -> None:
    assert regex_to_wildcards(pattern) == expected


def test_third_issuing_ca_replaces_the_oldest_crl(ca: CertificateAuthority, aws: Aws) -> None:
    """Anchored on the issuing CAs: after two rotations the bundle holds the 2 newest, and the CRL of the
    dropped CA is deleted to make room (Roles Anywhere allows 2 CRLs per anchor)."""
    first = register(ca, connect(), name="rot", role_arns=[role(aws)], anchor="issuing")
    ca.sign_intermediate()
    register(ca, connect(), name="rot", role_arns=[role(aws)], anchor="issuing")
    assert sorted(c["name"] for c in aws.crls(first.trust_anchor_arn)) == ["rot-issuing-1", "rot-issuing-2"]
    ca.sign_intermediate()
    aws.emulator.reset_stats()
    third = register(ca, connect(), name="rot", role_arns=[role(aws)], anchor="issuing")
    assert [s.split(",")[0].rsplit(" ", 1)[0] for s in third.anchor_subjects] == ["CN=rapki Issuing CA 3",
                                                                               "CN=rapki Issuing CA 2"]
    assert sorted(c["name"] for c in aws.crls(first.trust_anchor_arn)) == ["rot-issuing-2", "rot-issuing-3"]
    assert aws.emulator.stats()["writes"] == {"UpdateTrustAnchor": 1, "DeleteCrl": 1, "ImportCrl": 1}


# --- publishing after registration -----------------------------------------------------------------
def test_publish_keeps_the_name_given_to_register(ca: CertificateAuthority, aws: Aws) -> None:
    """The anchor must not end up with CRLs under two naming schemes (team-a-issuing-1, rapki-issuing-2)."""
    first = register(ca, connect(), name="team-a", role_arns=[role(aws)], anchor="root")
    ca.sign_intermediate()  # a root anchor trusts the new CA at once: publishing alone imports its CRL
    aws.rapki("crl", "publish", home=ca.home.path)
    assert sorted(c["name"] for c in aws.crls(first.trust_anchor_arn)) == ["team-a-issuing-1", "team-a-issuing-2"]
    # An explicit --name still wins (for a CRL published by hand under another scheme).
    other = aws.anchor(ca.root_certificate, name="other")
    aws.rapki("crl", "publish", "--trust-anchor-arn", other, "--name", "ops", home=ca.home.path)
    assert sorted(c["name"] for c in aws.crls(other)) == ["ops-issuing-1", "ops-issuing-2"]


def test_publish_after_a_rotation_without_register_says_the_active_ca_is_not_anchored(
        ca: CertificateAuthority, aws: Aws) -> None:
    first = register(ca, connect(), name="rot", role_arns=[role(aws)], anchor="issuing")
    ca.sign_intermediate()
    result = aws.rapki("crl", "publish", home=ca.home.path, check=False)
    assert result.returncode == 1, result
    assert result.stderr.count("\n") == 1
    assert "issuing-2 is not in trust anchor 'rot'" in result.stderr and "rapki aws register" in result.stderr
    assert "rot-issuing-1" in result.stdout  # the CA still anchored keeps getting its CRL
    assert [c["name"] for c in aws.crls(first.trust_anchor_arn)] == ["rot-issuing-1"]
    issued = ca.issue("web", cn="web-1")  # by the active CA, which the anchor does not hold
    revoked = aws.rapki("revoke", issued.serial_hex, "--publish", home=ca.home.path, check=False)
    assert revoked.returncode == 1 and revoked.stderr.count("\n") == 1
    assert "publication is incomplete: the active issuing CA issuing-2 is not in trust anchor" in revoked.stderr
    register(ca, connect(), name="rot", role_arns=[role(aws)], anchor="issuing")  # the fix the line names
    assert json.loads(aws.rapki("crl", "publish", "--json", home=ca.home.path).stdout)["ok"] is True


# --- an unreachable endpoint -----------------------------------------------------------------------
def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_an_unreachable_endpoint_says_that_it_is_retrying(ca: CertificateAuthority, aws: Aws) -> None:
    port = closed_port()
    anchor = f"arn:aws:rolesanywhere:us-east-1:{aws.account}:trust-anchor/11111111-2222-4333-8444-555555555555"
    few = {"RAPKI_AWS_MAX_ATTEMPTS": "3", "RAPKI_AWS_RETRY_BASE": "0.01"}
    args = ["crl", "publish", "--trust-anchor-arn", anchor, "--endpoint-url", f"https://127.0.0.1:{port}"]
    result = aws.rapki(*args, home=ca.home.path, check=False, extra_env=few)
    assert result.returncode == 1
    *retries, error = result.stderr.splitlines()
    assert [line.split(" (attempt ")[1] for line in retries] == ["2 of 3)", "3 of 3)"]
    for line in retries:
        assert line.startswith(f"127.0.0.1:{port}: GetTrustAnchor: connection refused, retrying in "), line
    assert error.startswith("rapki: error: GetTrustAnchor at ") and "cannot connect" in error
    for quiet in ("--quiet", "--json"):  # scripts and cron get the one error line only
        silent = aws.rapki(*args, quiet, home=ca.home.path, check=False, extra_env=few)
        assert silent.returncode == 1 and silent.stderr.count("\n") == 1, silent.stderr
    # The retry budget bounds the wait whatever the attempt count: none is left for a second retry here.
    budget = aws.rapki(*args, home=ca.home.path, check=False,
                       extra_env={"RAPKI_AWS_MAX_ATTEMPTS": "50", "RAPKI_AWS_RETRY_BASE": "0.2",
                                  "RAPKI_AWS_RETRY_BUDGET": "0.25"})
    assert budget.returncode == 1
    assert budget.stderr.count("retrying in") == 1 and "retry budget" in budget.stderr.splitlines()[-1]
    registered = aws.rapki("aws", "register", "--role-arn", role(aws), "--endpoint-url", f"https://127.0.0.1:{port}",
                           home=ca.home.path, check=False, extra_env=few)
    assert registered.returncode == 1 and registered.stderr.count("retrying in") == 2
