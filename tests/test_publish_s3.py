"""``rapki crl publish --s3``: each issuing CA's DER CRL in S3 (moto in server mode on 127.0.0.1,
unmodified boto3 with endpoint_url), idempotent and never going backwards."""

from __future__ import annotations

import json
from typing import Any

import boto3
import pytest
from click.testing import CliRunner
from cryptography import x509

from pki.aws.s3publish import S3Destination, S3PublishError, publish_s3
from pki.ca.authority import CertificateAuthority
from pki.errors import InvalidInput
from service.cli import main
from tests.test_custody_kms import dummy_aws, moto_url
from tests.test_publish import Aws, aws

__all__ = ["aws", "dummy_aws", "moto_url"]  # fixtures shared with the KMS and publishing tests

BUCKET = "rapki-crls"


@pytest.fixture
def s3(moto_url: str) -> Any:
    client = boto3.client("s3", endpoint_url=moto_url, region_name="us-east-1")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)


def _publish(ca: CertificateAuthority, moto_url: str, **kw: Any) -> Any:
    return publish_s3(ca, f"s3://{BUCKET}/pki/crl", endpoint_url=moto_url, **kw)


def test_uploads_each_issuer_crl_as_der_and_records_it(ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    issued = ca.issue("web", cn="web-1")
    ca.revoke(issued.serial_hex)
    report = _publish(ca, moto_url)
    assert [(p.issuer, p.action, p.key) for p in report.publications] == [
        ("issuing-1", "uploaded", "pki/crl/issuing-1.crl")]
    obj = s3.get_object(Bucket=BUCKET, Key="pki/crl/issuing-1.crl")
    assert obj["ContentType"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(obj["Body"].read())
    assert crl.get_revoked_certificate_by_serial_number(issued.certificate.serial_number) is not None
    assert obj["Metadata"]["crl-number"] == str(report.publications[0].crl_number)
    [entry] = ca.audit_entries(action="crl.publish")
    assert entry["details"]["destination"] == f"s3://{BUCKET}/pki/crl"


def test_rerun_with_nothing_new_writes_nothing_and_a_revocation_uploads_once(
        ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    first = _publish(ca, moto_url)
    again = _publish(ca, moto_url)
    assert again.writes == 0 and again.publications[0].action == "unchanged"
    assert again.publications[0].crl_number == first.publications[0].crl_number
    ca.revoke(ca.issue("web", cn="web-2").serial_hex)
    after = _publish(ca, moto_url)
    assert after.writes == 1 and after.publications[0].crl_number == first.publications[0].crl_number + 1


def test_an_object_deleted_by_hand_is_uploaded_again(ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    _publish(ca, moto_url)
    s3.delete_object(Bucket=BUCKET, Key="pki/crl/issuing-1.crl")
    assert _publish(ca, moto_url).writes == 1
    assert s3.head_object(Bucket=BUCKET, Key="pki/crl/issuing-1.crl")["ContentLength"] > 0


def test_a_newer_crl_there_is_never_replaced(ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    _publish(ca, moto_url)
    s3.put_object(Bucket=BUCKET, Key="pki/crl/issuing-1.crl", Body=b"other", Metadata={"crl-number": "99",
                                                                                      "sha256": "x"})
    with pytest.raises(S3PublishError, match="newer than this home"):
        _publish(ca, moto_url)
    assert s3.get_object(Bucket=BUCKET, Key="pki/crl/issuing-1.crl")["Body"].read() == b"other"


def test_dry_run_uploads_nothing(ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    ca.build_crl()
    report = _publish(ca, moto_url, dry_run=True)
    assert report.writes == 0 and report.publications[0].action == "would-upload"
    assert "Contents" not in s3.list_objects_v2(Bucket=BUCKET)


def test_cli_publishes_to_s3_alone(ca: CertificateAuthority, s3: Any, moto_url: str) -> None:
    args = ["crl", "publish", "--home", str(ca.home.path), "--s3", f"s3://{BUCKET}/", "--s3-endpoint-url", moto_url]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "uploaded s3://rapki-crls/issuing-1.crl" in result.output  # no trust anchor needed without it
    quiet = CliRunner().invoke(main, [*args, "--quiet"])
    assert quiet.exit_code == 0 and quiet.output == ""


@pytest.mark.parametrize("url", ["https://bucket/x", "s3://B/x", "s3://"])
def test_bad_destinations_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        S3Destination.parse(url)


def test_flags_decide_which_publications_run(ca: CertificateAuthority, s3: Any, moto_url: str, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    base = ["crl", "publish", "--home", str(ca.home.path), "--trust-anchor-arn", anchor,
            "--s3", f"s3://{BUCKET}/both", "--s3-endpoint-url", moto_url]
    alone = CliRunner().invoke(main, base)
    assert alone.exit_code == 0, alone.output
    assert aws.writes() == 0 and aws.crls(anchor) == []  # --s3 alone: no Roles Anywhere call
    both = CliRunner().invoke(main, [*base, "--roles-anywhere", "--json"])
    assert both.exit_code == 0, both.output
    report = json.loads(both.output)
    assert report["s3"]["writes"] == 0 and report["publications"][0]["action"] == "imported"
    assert len(aws.crls(anchor)) == 1
    assert s3.head_object(Bucket=BUCKET, Key="both/issuing-1.crl")["ContentType"] == "application/pkix-crl"
