"""The real ``rapki emulator`` (gunicorn, TLS): boto3 runs every control-plane call against it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization

from tests.emulator_fixture import (
    RunningEmulator,
    make_ca,
    make_crl,
    make_leaf,
    pem_of,
    start_emulator,
    stop_emulator,
)

ROLE = "arn:aws:iam::123456789012:role/app"


def code(exc: ClientError) -> str:
    return str(exc.response["Error"]["Code"])


def test_every_control_plane_call_with_boto3(emulator: RunningEmulator) -> None:
    ra = emulator.boto3_client()
    root = make_ca("boto3 Root")
    issuing = make_ca("boto3 Issuing", parent=root)

    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    ta = ra.create_trust_anchor(name="ta", source=source, enabled=False, tags=[{"key": "k", "value": "v"}],
                                notificationSettings=[{"enabled": True, "event": "CA_CERTIFICATE_EXPIRY",
                                                       "threshold": 30}])["trustAnchor"]  # fmt: skip
    ta_id, ta_arn = ta["trustAnchorId"], ta["trustAnchorArn"]
    assert ra.get_trust_anchor(trustAnchorId=ta_id)["trustAnchor"]["name"] == "ta"
    assert ta_id in [t["trustAnchorId"] for t in ra.list_trust_anchors()["trustAnchors"]]
    assert ra.update_trust_anchor(trustAnchorId=ta_id, name="ta2")["trustAnchor"]["name"] == "ta2"
    assert ra.enable_trust_anchor(trustAnchorId=ta_id)["trustAnchor"]["enabled"] is True
    ra.put_notification_settings(trustAnchorId=ta_id, notificationSettings=[
        {"enabled": False, "event": "END_ENTITY_CERTIFICATE_EXPIRY", "threshold": 7, "channel": "ALL"}])  # fmt: skip
    reset = ra.reset_notification_settings(trustAnchorId=ta_id, notificationSettingKeys=[
        {"event": "END_ENTITY_CERTIFICATE_EXPIRY", "channel": "ALL"}])["trustAnchor"]  # fmt: skip
    assert all(s["enabled"] for s in reset["notificationSettings"])

    profile = ra.create_profile(
        name="prof",
        roleArns=[ROLE],
        durationSeconds=3600,
        enabled=False,
        acceptRoleSessionName=True,
        tags=[{"key": "team", "value": "x"}],
    )["profile"]
    pid, parn = profile["profileId"], profile["profileArn"]
    assert ra.get_profile(profileId=pid)["profile"]["roleArns"] == [ROLE]
    assert pid in [p["profileId"] for p in ra.list_profiles()["profiles"]]
    assert ra.update_profile(profileId=pid, durationSeconds=900)["profile"]["durationSeconds"] == 900
    assert ra.enable_profile(profileId=pid)["profile"]["enabled"] is True
    ra.put_attribute_mapping(profileId=pid, certificateField="x509SAN", mappingRules=[{"specifier": "DNS"}])
    ra.delete_attribute_mapping(profileId=pid, certificateField="x509SAN", specifiers=["DNS"])

    crl = ra.import_crl(name="crl", crlData=make_crl(issuing, [7]), trustAnchorArn=ta_arn)["crl"]
    assert crl["enabled"] is False and crl["crlData"].startswith(b"-----BEGIN X509 CRL-----")
    cid = crl["crlId"]
    assert ra.get_crl(crlId=cid)["crl"]["name"] == "crl"
    assert cid in [c["crlId"] for c in ra.list_crls()["crls"]]
    assert ra.update_crl(crlId=cid, name="crl2", crlData=make_crl(issuing, [8]))["crl"]["name"] == "crl2"
    assert ra.enable_crl(crlId=cid)["crl"]["enabled"] is True
    assert ra.disable_crl(crlId=cid)["crl"]["enabled"] is False

    ra.tag_resource(resourceArn=parn, tags=[{"key": "env", "value": "test"}])
    ra.untag_resource(resourceArn=parn, tagKeys=["team"])
    assert ra.list_tags_for_resource(resourceArn=parn)["tags"] == [{"key": "env", "value": "test"}]
    assert ra.list_tags_for_resource(resourceArn=ta_arn)["tags"] == [{"key": "k", "value": "v"}]

    leaf, key = make_leaf(issuing, "boto3-workload")
    resp = emulator.create_session(certificate=leaf, private_key=key, chain=[issuing.cert],
                                   trust_anchor_arn=ta_arn, profile_arn=parn, role_arn=ROLE)  # fmt: skip
    assert resp.status == 201, (resp.body, resp.detail)
    subject_id = resp.body["subjectArn"].rsplit("/", 1)[1]
    assert subject_id in [s["subjectId"] for s in ra.list_subjects()["subjects"]]
    subject = ra.get_subject(subjectId=subject_id)["subject"]
    assert subject["x509Subject"].endswith("CN=boto3-workload") or "CN=boto3-workload" in subject["x509Subject"]

    assert ra.get_paginator("list_profiles").paginate(pageSize=1).build_full_result()["profiles"]

    ra.delete_crl(crlId=cid)
    ra.disable_profile(profileId=pid)
    ra.delete_profile(profileId=pid)
    ra.disable_trust_anchor(trustAnchorId=ta_id)
    ra.delete_trust_anchor(trustAnchorId=ta_id)
    with pytest.raises(ClientError) as info:
        ra.get_trust_anchor(trustAnchorId=ta_id)
    assert code(info.value) == "ResourceNotFoundException"
    assert isinstance(info.value, ra.exceptions.ResourceNotFoundException)


def test_service_validations_reach_boto3(emulator: RunningEmulator) -> None:
    ra = emulator.boto3_client()
    with pytest.raises(ra.exceptions.ValidationException):
        ra.create_profile(name="bad/name", roleArns=[ROLE])
    with pytest.raises(ra.exceptions.ValidationException):
        ra.create_profile(name="p", roleArns=[ROLE], durationSeconds=43201)
    root = make_ca("v Root")
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    ta_arn = ra.create_trust_anchor(name="v", source=source)["trustAnchor"]["trustAnchorArn"]
    with pytest.raises(ra.exceptions.ValidationException):
        ra.import_crl(name="der", crlData=b"\x30\x82junk", trustAnchorArn=ta_arn)


def test_revocation_end_to_end_over_https(emulator: RunningEmulator) -> None:
    ra = emulator.boto3_client()
    root = make_ca("e2e Root", key_type="rsa-2048")
    leaf, key = make_leaf(root, "e2e-workload", key_type="rsa-2048")
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(root.cert)}}
    ta_arn = ra.create_trust_anchor(name="e2e", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    parn = ra.create_profile(name="e2e", roleArns=[ROLE], enabled=True)["profile"]["profileArn"]
    args: dict[str, Any] = {"certificate": leaf, "private_key": key, "trust_anchor_arn": ta_arn,
                            "profile_arn": parn, "role_arn": ROLE}  # fmt: skip
    assert emulator.create_session(**args).status == 201
    foreign_leaf, foreign_key = make_leaf(make_ca("e2e Root"), "e2e-workload")
    foreign = emulator.create_session(**{**args, "certificate": foreign_leaf, "private_key": foreign_key})
    assert (foreign.status, foreign.message) == (403, "Untrusted Signing Certificate")
    crl_id = ra.import_crl(name="r", crlData=make_crl(root, [leaf.serial_number]), trustAnchorArn=ta_arn)["crl"][
        "crlId"
    ]
    assert emulator.create_session(**args).status == 201  # imported, not yet enabled
    ra.enable_crl(crlId=crl_id)
    revoked = emulator.create_session(**args)
    assert (revoked.status, revoked.error_type, revoked.message) == (
        403,
        "AccessDeniedException",
        "Certificate revoked",
    )


def test_faults_reach_boto3_and_writes_are_counted(emulator: RunningEmulator) -> None:
    ra = emulator.boto3_client()
    emulator.clear_faults()
    emulator.reset_stats()
    emulator.set_faults(throttleNext=1, operations=["CreateProfile"])
    with pytest.raises(ClientError) as info:
        ra.create_profile(name="t", roleArns=[ROLE])
    assert code(info.value) == "ThrottlingException"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    ra.create_profile(name="t", roleArns=[ROLE])
    retrying = emulator.boto3_client(retries={"total_max_attempts": 3, "mode": "standard"})
    emulator.set_faults(failNext=1, operations=[])
    retrying.list_profiles()  # one 500, then the SDK's retry succeeds
    stats = emulator.stats()
    assert stats["writes"] == {"CreateProfile": 1}  # the throttled attempt changed nothing
    assert stats["calls"]["CreateProfile"] == 2
    assert stats["calls"]["ListProfiles"] == 2
    assert stats["injected"] == {"ThrottlingException": 1, "InternalServerException": 1}
    emulator.clear_faults()
    emulator.reset_stats()


@pytest.mark.e2e
def test_state_persists_across_restart(tmp_path: Path) -> None:
    first = start_emulator(tmp_path)
    try:
        pid = first.boto3_client().create_profile(name="keep", roleArns=[ROLE])["profile"]["profileId"]
    finally:
        stop_emulator(first)
    second = start_emulator(tmp_path)
    try:
        assert second.ca_bundle == first.ca_bundle
        assert second.boto3_client().get_profile(profileId=pid)["profile"]["name"] == "keep"
    finally:
        stop_emulator(second)


def test_print_ca(tmp_path: Path) -> None:
    from service.cli import main

    state = tmp_path / "emu" / "state.json"
    result = CliRunner().invoke(main, ["emulator", "--state", str(state), "--print-ca"])
    assert result.exit_code == 0, result.output
    assert result.output.startswith("-----BEGIN CERTIFICATE-----")
    assert (tmp_path / "emu" / "emulator-tls.pem").read_text() == result.output
    again = CliRunner().invoke(main, ["emulator", "--state", str(state), "--print-ca"])
    assert again.output == result.output  # reused, so AWS_CA_BUNDLE stays valid
    assert ((tmp_path / "emu" / "emulator-tls.key").stat().st_mode & 0o777) == 0o600


def test_a_state_path_or_tls_pair_that_cannot_work_is_refused(tmp_path: Path) -> None:
    """Exit 2 with one line before serving: a --state below a file (was a traceback) and a
    --tls-cert/--tls-key pair that do not match (was a server whose every handshake failed)."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from pki.x509.keys import private_key_pem
    from service.cli import main

    blocker = tmp_path / "file"
    blocker.write_text("")
    result = CliRunner().invoke(main, ["emulator", "--state", str(blocker / "state.json"), "--print-ca"])
    assert result.exit_code == 2 and "its directory cannot be made" in result.output, result.output
    key, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "tls.pem", tmp_path / "other.key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(private_key_pem(other))
    result = CliRunner().invoke(main, ["emulator", "--state", str(tmp_path / "s.json"), "--tls-cert", str(cert_file),
                                       "--tls-key", str(key_file), "--print-ca"])
    assert result.exit_code == 2 and "cannot be used together" in result.output, result.output


def test_served_by_gunicorn_with_concurrent_writes(emulator: RunningEmulator) -> None:
    """Threads of the one worker write concurrently; every acknowledged write is in the state file."""
    import json
    from concurrent.futures import ThreadPoolExecutor

    health = emulator.request("GET", "/_emulator/health")
    assert "gunicorn" in health.headers.get("server", "")
    ra = emulator.boto3_client()

    def create(i: int) -> str:
        return str(ra.create_profile(name=f"concurrent-{i}", roleArns=[ROLE])["profile"]["profileId"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        ids = set(pool.map(create, range(40)))
    assert len(ids) == 40
    listed = {p["profileId"] for p in ra.get_paginator("list_profiles").paginate().build_full_result()["profiles"]}
    assert ids <= listed
    saved = json.loads(emulator.state_path.read_text())["accounts"]["123456789012"]["us-east-1"]["profiles"]
    assert ids <= set(saved)
