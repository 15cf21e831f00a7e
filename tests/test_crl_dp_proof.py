"""Revocation through CRL Distribution Points, end to end: a certificate carrying a distribution point
in S3 is revoked, ``rapki crl publish --s3`` uploads the CRL (moto in server mode, real boto3), and
the emulator, with the trust anchor in distribution-point mode, fetches it from the S3 URL and
refuses the certificate; a fresh one still gets credentials. Nothing goes through ImportCrl."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import boto3
import pytest

from tests.commands import rapki_cmd
from tests.emulator_fixture import InProcessEmulator
from tests.test_custody_kms import dummy_aws, moto_url
from tests.test_emulator_crl_dp import ROLE, dp_ca, enable_dp, session

__all__ = ["dummy_aws", "moto_url"]  # fixtures shared with the KMS tests

pytestmark = pytest.mark.e2e


def test_revoked_through_an_s3_distribution_point_is_refused(tmp_path: Path, passphrase_env: str,
                                                           moto_url: str) -> None:
    s3 = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    s3.create_bucket(Bucket="proof-crls")
    s3.put_bucket_policy(Bucket="proof-crls", Policy=json.dumps({  # what a deployment grants relying parties
        "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                                                "Resource": "arn:aws:s3:::proof-crls/pki/crl/*"}]}))
    ca = dp_ca(tmp_path / "home", f"{moto_url}/proof-crls/pki")  # -> <moto>/proof-crls/pki/crl/issuing-1.crl
    revoked, fresh = ca.issue("web", cn="web-1"), ca.issue("web", cn="web-2")
    ca.revoke(revoked.serial_hex, reason="keyCompromise")
    published = subprocess.run([*rapki_cmd(), "crl", "publish", "--home", str(ca.home.path),
                                "--s3", "s3://proof-crls/pki/crl", "--s3-endpoint-url", moto_url],
                               capture_output=True, text=True, env=dict(os.environ), check=False, timeout=120)
    assert published.returncode == 0, published.stderr
    assert "uploaded s3://proof-crls/pki/crl/issuing-1.crl" in published.stdout

    emu = InProcessEmulator.create(tmp_path / "emulator" / "state.json")
    anchor = emu.trust_anchor(ca.root_certificate)
    enable_dp(emu, anchor)
    s: dict[str, Any] = {"emu": emu, "anchor": anchor, "profile": emu.profile(ROLE)}
    refused = session(s, revoked)
    assert (refused.status, refused.message) == (403, "Certificate revoked"), refused.detail
    assert f"{moto_url}/proof-crls/pki/crl/issuing-1.crl" in (refused.detail or "")
    assert session(s, fresh).status == 201
    assert emu.ok("GET", "/crls")["crls"] == []  # nothing imported: the distribution point decided
