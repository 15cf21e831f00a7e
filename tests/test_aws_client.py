"""``pki.aws.client`` and ``pki.rolesanywhere`` (partitions, ARNs, endpoints) without a server: botocore's
Stubber for the cases the emulator cannot produce (an ImportCrl that happened although its answer was a 500; Retry-After),
and the region/partition/endpoint rules. The emulator covers everything else (tests/test_publish.py)."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.stub import Stubber

from pki.aws.client import AwsError, AwsOptions, RolesAnywhere
from pki.aws.publish import CrlPublisher
from pki.ca.authority import CertificateAuthority
from pki.errors import InvalidInput
from pki.rolesanywhere.arns import RolesAnywhereArn, check_role_arn
from pki.rolesanywhere.endpoints import endpoint_override
from pki.rolesanywhere.partitions import normalize_region, partition_of
from tests.emulator_fixture import pem_of

ANCHOR = "arn:aws:rolesanywhere:us-east-1:111122223333:trust-anchor/11111111-2222-4333-8444-555555555555"
CRL_ID = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee"


@pytest.fixture
def stubbed(monkeypatch: pytest.MonkeyPatch) -> tuple[RolesAnywhere, Stubber, list[float]]:
    for name in ("AWS_ENDPOINT_URL_ROLESANYWHERE", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    slept: list[float] = []
    real = RolesAnywhere.connect(AwsOptions(region="us-east-1", max_attempts=4, base_delay=0.5))
    client = RolesAnywhere(real.client, region="us-east-1", fips=False, options=real.options, sleep=slept.append)
    return client, Stubber(client.client), slept


def test_retries_with_backoff_and_retry_after(stubbed: tuple[RolesAnywhere, Stubber, list[float]]) -> None:
    client, stub, slept = stubbed
    stub.add_client_error("list_crls", "ThrottlingException", "Rate exceeded", 429)
    stub.add_client_error("list_crls", "InternalServerException", "boom", 500,
                          response_meta={"HTTPHeaders": {"retry-after": "3"}})
    stub.add_response("list_crls", {"crls": []})
    with stub:
        assert client.call("ListCrls")["crls"] == []
    assert client.log.retries == 2 and client.log.calls["ListCrls"] == 3
    assert 0.25 <= slept[0] <= 0.5  # jittered first back-off
    assert 3.0 in slept  # then the server's Retry-After
    assert client.paced  # throttled once: later calls are spaced a second apart
    assert all(0.0 <= s <= 1.0 for s in slept if s not in (slept[0], 3.0))


def test_gives_up_after_max_attempts_and_never_retries_4xx(stubbed: tuple[RolesAnywhere, Stubber, list[float]]) -> None:
    client, stub, slept = stubbed
    for _ in range(4):
        stub.add_client_error("get_crl", "InternalServerException", "boom", 500)
    stub.add_client_error("get_crl", "ValidationException", "bad", 400)
    with stub:
        with pytest.raises(AwsError, match="GetCrl: InternalServerException: boom"):
            client.call("GetCrl", crlId=CRL_ID)
        with pytest.raises(AwsError, match="ValidationException"):
            client.call("GetCrl", crlId=CRL_ID)
    assert client.log.calls["GetCrl"] == 5 and len(slept) == 3


def test_retries_stop_at_the_retry_budget_and_each_is_announced(
        stubbed: tuple[RolesAnywhere, Stubber, list[float]]) -> None:
    real, _, _ = stubbed
    told: list[str] = []
    slept: list[float] = []
    options = AwsOptions(region="us-east-1", max_attempts=10, base_delay=1.0, retry_budget=3.0, on_retry=told.append)
    client = RolesAnywhere(real.client, region="us-east-1", fips=False, options=options, sleep=slept.append)
    stub = Stubber(client.client)
    for _ in range(10):
        stub.add_client_error("list_crls", "InternalServerException", "boom", 500)
    with stub, pytest.raises(AwsError, match="retry budget"):
        client.call("ListCrls")
    # Jittered waits of 0.5-1 s then 1-2 s fit 3 s; a third (2-4 s) never does: 3 attempts of 10.
    assert client.log.calls["ListCrls"] == 3 and sum(slept) <= 3.0
    assert len(told) == len(slept) == client.log.retries == 2
    assert told[0].startswith("rolesanywhere.us-east-1.amazonaws.com: ListCrls: HTTP 500 (InternalServerException), "
                              "retrying in ")
    assert told[0].endswith("(attempt 2 of 10)") and told[1].endswith("(attempt 3 of 10)")

def test_a_lost_import_is_adopted_not_duplicated(ca: CertificateAuthority,
                                                 stubbed: tuple[RolesAnywhere, Stubber, list[float]]) -> None:
    """ImportCrl answered 500 but happened: before retrying, ListCrls finds it, so no second import."""
    client, stub, _ = stubbed
    crl = ca.current_crl()
    assert crl is not None
    anchor: dict[str, Any] = {"trustAnchorArn": ANCHOR, "name": "a", "enabled": True, "source": {
        "sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(ca.root_certificate)}}}
    detail = {"crlId": CRL_ID, "crlArn": f"arn:aws:rolesanywhere:us-east-1:111122223333:crl/{CRL_ID}",
              "name": "rapki-issuing-1", "enabled": True, "crlData": crl.pem, "trustAnchorArn": ANCHOR}
    stub.add_response("get_trust_anchor", {"trustAnchor": anchor})
    stub.add_response("list_crls", {"crls": []})
    stub.add_client_error("import_crl", "InternalServerException", "timeout after commit", 500)
    stub.add_response("list_crls", {"crls": [detail]})  # the import did happen
    stub.add_response("get_crl", {"crl": detail})
    with stub:
        report = CrlPublisher(ca, client).publish(ANCHOR)
        stub.assert_no_pending_responses()
    assert client.log.calls["ImportCrl"] == 1
    assert report.publications[0].crl_id == CRL_ID and report.publications[0].action == "imported"


def test_region_partition_and_endpoint_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    assert partition_of("us-gov-west-1") == "aws-us-gov" and partition_of("cn-north-1") == "aws-cn"
    assert partition_of("eu-west-1") == "aws"
    assert normalize_region("fips-us-gov-west-1") == ("us-gov-west-1", True)
    assert normalize_region("us-east-1-fips") == ("us-east-1", True)
    with pytest.raises(InvalidInput):
        normalize_region("not a region")
    arn = RolesAnywhereArn.parse(ANCHOR.replace("aws:", "aws-us-gov:", 1).replace("us-east-1", "us-gov-west-1"))
    assert (arn.partition, arn.region, arn.type) == ("aws-us-gov", "us-gov-west-1", "trust-anchor")
    with pytest.raises(InvalidInput, match="partition"):
        RolesAnywhereArn.parse(ANCHOR.replace("us-east-1", "us-gov-west-1"))
    with pytest.raises(InvalidInput, match="not a trust-anchor"):
        RolesAnywhereArn.parse(ANCHOR.replace("trust-anchor", "profile"), expected_type="trust-anchor")
    assert check_role_arn("arn:aws-us-gov:iam::111122223333:role/x", "aws-us-gov")
    with pytest.raises(InvalidInput, match="partition"):
        check_role_arn("arn:aws:iam::111122223333:role/x", "aws-us-gov")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROLESANYWHERE", "https://specific:2")
    assert endpoint_override(None) == "https://specific:2"
    assert endpoint_override("https://flag:3") == "https://flag:3"
    monkeypatch.delenv("AWS_ENDPOINT_URL_ROLESANYWHERE")
    assert endpoint_override(None) == "https://generic:1"
    monkeypatch.setenv("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS", "true")
    assert endpoint_override(None) is None


@pytest.mark.parametrize("url", ["notaurl", "http://[::1"])
def test_an_endpoint_url_botocore_cannot_use_is_bad_input(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore raises a bare ValueError ('Invalid endpoint: notaurl'): one line, exit 2, for both clients."""
    from pki.aws.s3publish import s3_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "a")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "b")
    with pytest.raises(InvalidInput, match=r"rolesanywhere: .*an endpoint URL is http"):
        RolesAnywhere.connect(AwsOptions(region="us-east-1", endpoint_url=url))
    with pytest.raises(InvalidInput, match=r"s3: .*an endpoint URL is http"):
        s3_client(AwsOptions(region="us-east-1"), url, None)


def test_region_comes_from_the_arn_and_conflicts_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL_ROLESANYWHERE", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    gov = ANCHOR.replace("aws:", "aws-us-gov:", 1).replace("us-east-1", "us-gov-east-1")
    client = RolesAnywhere.connect(AwsOptions(), arn=gov)
    assert (client.region, client.partition) == ("us-gov-east-1", "aws-us-gov")
    assert client.endpoint_url == "https://rolesanywhere.us-gov-east-1.amazonaws.com"
    with pytest.raises(InvalidInput, match="differs"):
        RolesAnywhere.connect(AwsOptions(region="us-gov-west-1"), arn=gov)


def test_missing_credentials_is_one_clear_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROLESANYWHERE", "https://127.0.0.1:9")
    client = RolesAnywhere.connect(AwsOptions(region="us-east-1", max_attempts=1))
    with pytest.raises(AwsError, match="no AWS credentials"):
        client.call("ListCrls")

