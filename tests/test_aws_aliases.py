"""``rapki aws register --alias/--tip/--tip-subject/--crl-dp-revocation`` and alias ARNs wherever rapki
takes an anchor or profile ARN, against the emulator with unmodified boto3 and the real programs.

The proof: the ``credential_process`` line register prints names the alias ARNs, and rapki-signer
gets credentials with it; a profile with trusted identity propagation from ``x509SAN/URI`` makes
rapki refuse to issue without a URI SAN, and the emulator deny a certificate without one.
"""

# ruff: noqa: F811  (the "aws" fixture is imported from tests.test_publish and used as a parameter)
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path

import pytest

from pki.aws.client import AwsOptions, RolesAnywhere
from pki.aws.doctor import anchor_from_aws
from pki.aws.publish import publish
from pki.aws.register import register
from pki.ca.authority import CertificateAuthority
from pki.errors import InvalidInput, PolicyViolation
from tests.commands import signer_cmd
from tests.emulator_fixture import pem_of
from tests.test_publish import Aws, aws  # noqa: F401 (fixture)


def role(account: Aws) -> str:
    return f"arn:aws:iam::{account.account}:role/app"


def connect() -> RolesAnywhere:
    return RolesAnywhere.connect(AwsOptions())


def run_line(aws: Aws, line: str, cert_dir: Path) -> subprocess.CompletedProcess[str]:
    """The printed credential_process line, run as ~/.aws/config would, with ``cert_dir``'s files."""
    signer = shlex.split(line.removeprefix("credential_process = "))
    signer[0:2] = [*signer_cmd(), "credential-process"]
    signer = [a.replace("/etc/rapki", str(cert_dir)) for a in signer]
    return subprocess.run(signer, capture_output=True, text=True, timeout=60, env=aws.env, check=False)


def test_register_alias_tip_and_crl_dp_round_trip(aws: Aws, tmp_path: Path) -> None:
    home = tmp_path / "home"
    aws.rapki("init", home=home)
    aws.rapki("profile", "add", "app", "--cn-pattern", "app-[0-9]+", "--san-uri-pattern", "spiffe://example/.+",
              home=home)  # fmt: skip
    aws.rapki("profile", "add", "plain", "--cn-pattern", "app-[0-9]+", home=home)
    args = ["aws", "register", "--role-arn", role(aws), "--profile", "app", "--alias", "team/app", "--tip", "workload",
            "--tip-subject", "x509SAN/URI", "--crl-dp-revocation"]  # fmt: skip
    first = aws.rapki(*args, home=home)
    out = first.stdout
    line = next(x for x in out.splitlines() if x.startswith("credential_process = "))
    ra = json.loads(aws.rapki(*args, "--json", home=home).stdout)
    # No [crl].distribution_url: the certificates carry no point for the anchor to check.
    assert "warning: the trust anchor checks CRL distribution points" in first.stderr
    assert len(ra["warnings"]) == 1 and "[crl].distribution_url is not set" in ra["warnings"][0]
    assert ra["writes"] == 0 and ra["actions"] == []  # idempotent with every new option
    alias_anchor = f"arn:aws:rolesanywhere:us-east-1:{aws.account}:alias/trust-anchor/team/app"
    alias_profile = f"arn:aws:rolesanywhere:us-east-1:{aws.account}:alias/profile/team/app"
    assert (ra["trust_anchor_alias_arn"], ra["profile_alias_arn"]) == (alias_anchor, alias_profile)
    assert f"--trust-anchor-arn {alias_anchor}" in line and f"--profile-arn {alias_profile}" in line
    # boto3 reads back what register asked for.
    anchor = aws.client.get_trust_anchor(trustAnchorId=alias_anchor)["trustAnchor"]
    profile = aws.client.get_profile(profileId=alias_profile)["profile"]
    assert anchor["trustAnchorArn"] == ra["trust_anchor_arn"] and anchor["crlDpRevocationEnabled"] is True
    assert profile["tipConfiguration"] == {"status": "ENABLED", "subjectType": "workload",
                                           "subjectSource": "x509SAN/URI"}  # fmt: skip
    assert CertificateAuthority.open(home).profile("app").require_san_uri

    # rapki refuses a certificate the TIP profile would deny; one with a URI SAN gets credentials.
    refused = aws.rapki("issue", "--profile", "app", "--cn", "app-1", "--out", str(tmp_path / "x"), home=home,
                        check=False)  # fmt: skip
    assert refused.returncode == 2 and "requires a URI SAN" in refused.stderr and refused.stderr.count("\n") == 1
    good = tmp_path / "good"
    aws.rapki("issue", "--profile", "app", "--cn", "app-1", "--san", "uri:spiffe://example/app", "--out", str(good),
              home=home)  # fmt: skip
    ok = run_line(aws, line, good)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["AccessKeyId"]
    # The emulator denies what rapki would not issue under "app": a certificate without a URI SAN.
    bare = tmp_path / "bare"
    aws.rapki("issue", "--profile", "plain", "--cn", "app-2", "--out", str(bare), home=home)
    denied = run_line(aws, line, bare)
    assert denied.returncode == 1 and "AccessDeniedException" in denied.stderr

    # Turned off again: the alias removed (the line goes back to the ARNs), TIP off, CRL DPs not checked.
    off = json.loads(aws.rapki("aws", "register", "--role-arn", role(aws), "--alias", "", "--tip", "off",
                               "--no-crl-dp-revocation", "--json", home=home).stdout)  # fmt: skip
    assert off["trust_anchor_alias_arn"] == "" and f"--trust-anchor-arn {off['trust_anchor_arn']}" in off[
        "credential_process"]
    assert off["tip_configuration"]["status"] == "DISABLED" and off["crl_dp_revocation"] is False
    assert off["warnings"] == []
    assert aws.client.get_trust_anchor(trustAnchorId=ra["trust_anchor_arn"])["trustAnchor"][
        "crlDpRevocationEnabled"] is False


def test_register_refuses_bad_aliases_before_any_call(ca: CertificateAuthority, aws: Aws) -> None:
    for alias in ("aws/mine", "AWS/x", "1abc", "a//b", "a" * 257):
        with pytest.raises(InvalidInput, match="--alias"):
            register(ca, connect(), name="n", role_arns=[role(aws)], alias=alias)
    with pytest.raises(InvalidInput, match="--tip-subject"):
        register(ca, connect(), name="n", role_arns=[role(aws)], tip="off", tip_subject="x509SAN/URI")
    assert aws.emulator.stats()["calls"] == {}
    # Taken by another trust anchor of the account: the service's ValidationException, on one line
    # (exit 1, as every refusal by AWS).
    aws.client.create_trust_anchor(name="other", aliasName="taken", source={
        "sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(ca.root_certificate)}})
    bad = aws.rapki("aws", "register", "--role-arn", role(aws), "--alias", "taken", home=ca.home.path, check=False)
    assert bad.returncode == 1 and "ValidationException" in bad.stderr and "already used" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_register_puts_the_mapping_rule_tip_needs(ca: CertificateAuthority, aws: Aws) -> None:
    first = register(ca, connect(), name="m", role_arns=[role(aws)])
    profile_id = first.profile_arn.rsplit("/", 1)[1]
    aws.client.delete_attribute_mapping(profileId=profile_id, certificateField="x509SAN", specifiers=["URI"])
    aws.emulator.reset_stats()
    result = register(ca, connect(), name="m", role_arns=[role(aws)], tip_subject="x509SAN/URI", profile="web")
    assert aws.emulator.stats()["writes"] == {"PutAttributeMapping": 1, "UpdateProfile": 1}
    assert result.tip_configuration == {"status": "ENABLED", "subjectSource": "x509SAN/URI"}
    assert ca.profile("web").require_san_uri
    with pytest.raises(PolicyViolation, match=r"requires a URI SAN .*--san uri:.*\"sans\": \[\"uri:...\"\] \(the API\)"):
        ca.issue("web", cn="web-1")
    assert ca.issue("web", cn="web-1", sans=["uri:https://example.com/a"]).serial_hex
    # --tip user alone keeps the subject; back on x509Subject/CN the rapki profile no longer needs a URI.
    aws.emulator.reset_stats()
    kept = register(ca, connect(), name="m", role_arns=[role(aws)], tip="user", profile="web")
    assert kept.tip_configuration == {"status": "ENABLED", "subjectSource": "x509SAN/URI", "subjectType": "user"}
    assert aws.emulator.stats()["writes"] == {"UpdateProfile": 1} and ca.profile("web").require_san_uri
    register(ca, connect(), name="m", role_arns=[role(aws)], tip_subject="x509Subject/CN", profile="web")
    assert not ca.profile("web").require_san_uri
    assert ca.issue("web", cn="web-2").serial_hex


def test_alias_arns_for_crl_publish_and_doctor(ca: CertificateAuthority, aws: Aws) -> None:
    result = register(ca, connect(), name="p", role_arns=[role(aws)], alias="pub")
    assert result.trust_anchor_alias_arn.endswith(":alias/trust-anchor/pub")
    report = publish(ca, result.trust_anchor_alias_arn)
    assert report.ok and report.trust_anchor_arn == result.trust_anchor_arn  # CRLs name the ARN with the id
    view = anchor_from_aws(connect(), result.trust_anchor_alias_arn)
    assert view.enabled and [name for name, _, _ in view.crls] == ["p-issuing-1"]
    cli = json.loads(aws.rapki("crl", "publish", "--trust-anchor-arn", result.trust_anchor_alias_arn, "--json",
                               home=ca.home.path).stdout)  # fmt: skip
    assert cli["writes"] == 0
    policy = aws.rapki("aws", "trust-policy", "--trust-anchor-arn", result.trust_anchor_alias_arn,
                       home=ca.home.path, check=False)  # fmt: skip
    assert policy.returncode == 2 and "alias ARN" in policy.stderr
