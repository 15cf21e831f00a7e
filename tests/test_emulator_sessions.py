"""CreateSession in the emulator: who gets credentials, who is refused, with the service's answers."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from pki.rolesanywhere import sigv4x509
from tests.emulator_fixture import (
    InProcessEmulator,
    SimpleCa,
    make_ca,
    make_crl,
    make_leaf,
    sign_session,
)

ROLE = "arn:aws:iam::123456789012:role/ci-deployer"
OTHER_ROLE = "arn:aws:iam::123456789012:role/admin"


@pytest.fixture(scope="module")
def pki() -> dict[str, SimpleCa]:
    root = make_ca("Test Root CA", path_len=1)
    issuing = make_ca("Test Issuing CA", parent=root, path_len=0)
    return {"root": root, "issuing": issuing}


@pytest.fixture
def setup(emulator_app: InProcessEmulator, pki: dict[str, SimpleCa]) -> dict[str, Any]:
    """Anchor = root; profile enabled with ROLE; a leaf from the issuing CA and its chain."""
    anchor = emulator_app.trust_anchor(pki["root"].cert)
    profile = emulator_app.profile(ROLE, durationSeconds=7200)
    leaf, key = make_leaf(pki["issuing"], "build-agent-01")
    return {
        "emu": emulator_app, "anchor": anchor, "profile": profile, "leaf": leaf, "key": key,
        "chain": [pki["issuing"].cert],
    }  # fmt: skip


def session(s: dict[str, Any], **overrides: Any) -> Any:
    args: dict[str, Any] = {
        "certificate": s["leaf"], "private_key": s["key"], "chain": s["chain"],
        "trust_anchor_arn": s["anchor"], "profile_arn": s["profile"], "role_arn": ROLE,
    }  # fmt: skip
    args.update(overrides)
    return s["emu"].create_session(**args)


def assert_refused(resp: Any, status: int, error_type: str, message: str) -> None:
    assert (resp.status, resp.error_type, resp.message) == (status, error_type, message), resp.detail


def test_leaf_of_the_ca_gets_credentials(setup: dict[str, Any]) -> None:
    resp = session(setup, duration_seconds=3600)
    assert resp.status == 201, (resp.body, resp.detail)
    (entry,) = resp.body["credentialSet"]
    creds = entry["credentials"]
    assert re.fullmatch(r"ASIA[A-Z2-7]{16}", creds["accessKeyId"])
    assert len(creds["secretAccessKey"]) == 40 and creds["sessionToken"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", creds["expiration"])
    expires = datetime.strptime(creds["expiration"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert timedelta(minutes=55) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert entry["sourceIdentity"] == "CN=build-agent-01"
    assert entry["roleArn"] == ROLE
    assert entry["assumedRoleUser"]["arn"].startswith("arn:aws:sts::123456789012:assumed-role/ci-deployer/")
    assert entry["assumedRoleUser"]["assumedRoleId"].endswith(":" + format(setup["leaf"].serial_number, "x"))
    assert resp.body["subjectArn"].startswith("arn:aws:rolesanywhere:us-east-1:123456789012:subject/")
    again = session(setup)
    assert again.body["credentialSet"][0]["credentials"]["accessKeyId"] != creds["accessKeyId"]


def test_duration_is_the_shorter_of_profile_and_request(setup: dict[str, Any]) -> None:
    resp = session(setup, duration_seconds=43200)
    expires = datetime.strptime(resp.body["credentialSet"][0]["credentials"]["expiration"], "%Y-%m-%dT%H:%M:%SZ")
    assert expires.replace(tzinfo=UTC) - datetime.now(UTC) <= timedelta(hours=2)
    assert expires.replace(tzinfo=UTC) - datetime.now(UTC) > timedelta(hours=1, minutes=55)


@pytest.mark.parametrize("bad", [899, 43201, "3600", True])
def test_duration_bounds(setup: dict[str, Any], bad: Any) -> None:
    assert session(setup, duration_seconds=bad).status == 400


def test_arns_in_the_body_with_free_json_formatting(setup: dict[str, Any]) -> None:
    body = json.dumps(
        {"trustAnchorArn": setup["anchor"], "profileArn": setup["profile"], "roleArn": ROLE, "durationSeconds": 900},
        indent=3,
    ).encode()
    signed = sigv4x509.sign_create_session(
        certificate=setup["leaf"], private_key=setup["key"], chain=setup["chain"], host="localhost",
        region="us-east-1", query={}, body=body, now=datetime.now(UTC),
    )  # fmt: skip
    resp = setup["emu"].send_session(signed)
    assert resp.status == 201, resp.detail
    assert session(setup, arns_in="body").status == 201


def test_missing_arn_is_a_validation_error(setup: dict[str, Any]) -> None:
    signed = sigv4x509.sign_create_session(
        certificate=setup["leaf"], private_key=setup["key"], chain=setup["chain"], host="localhost",
        region="us-east-1", query={"roleArn": ROLE}, body=b"{}", now=datetime.now(UTC),
    )  # fmt: skip
    assert setup["emu"].send_session(signed).status == 400


def test_foreign_ca_is_untrusted(setup: dict[str, Any]) -> None:
    foreign_root = make_ca("Test Root CA")  # same name, other key: the signature must decide
    foreign_issuing = make_ca("Test Issuing CA", parent=foreign_root)
    leaf, key = make_leaf(foreign_issuing, "intruder")
    resp = session(setup, certificate=leaf, private_key=key, chain=[foreign_issuing.cert])
    assert_refused(resp, 403, "AccessDeniedException", "Untrusted Signing Certificate")


def test_missing_chain_is_untrusted(setup: dict[str, Any]) -> None:
    resp = session(setup, chain=[])
    assert_refused(resp, 403, "AccessDeniedException", "Untrusted Signing Certificate")


def test_intermediate_as_trust_anchor_needs_no_chain(emulator_app: InProcessEmulator, pki: dict[str, SimpleCa]) -> None:
    anchor = emulator_app.trust_anchor(pki["issuing"].cert)
    profile = emulator_app.profile(ROLE)
    leaf, key = make_leaf(pki["issuing"], "edge-7", key_type="rsa-2048")
    resp = emulator_app.create_session(certificate=leaf, private_key=key, trust_anchor_arn=anchor,
                                       profile_arn=profile, role_arn=ROLE)  # fmt: skip
    assert resp.status == 201, resp.detail


def test_revoked_after_crl_imported_and_enabled(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    emu: InProcessEmulator = setup["emu"]
    crl = make_crl(pki["issuing"], [setup["leaf"].serial_number, 12345])
    imported = emu.import_crl(setup["anchor"], crl, enabled=False)
    assert imported["enabled"] is False
    assert session(setup).status == 201  # a disabled CRL does not count
    emu.ok("POST", f"/crl/{imported['crlId']}/enable")
    assert_refused(session(setup), 403, "AccessDeniedException", "Certificate revoked")
    other, other_key = make_leaf(pki["issuing"], "build-agent-02")
    assert session(setup, certificate=other, private_key=other_key).status == 201
    emu.ok("POST", f"/crl/{imported['crlId']}/disable")
    assert session(setup).status == 201


def test_revoked_intermediate(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    crl = make_crl(pki["root"], [pki["issuing"].cert.serial_number])
    setup["emu"].import_crl(setup["anchor"], crl)
    assert_refused(session(setup), 403, "AccessDeniedException", "Certificate revoked")


def test_forged_crl_is_ignored(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    forger = make_ca("Test Issuing CA")
    crl = make_crl(pki["issuing"], [setup["leaf"].serial_number], signer_key=forger.key)
    setup["emu"].import_crl(setup["anchor"], crl)
    resp = session(setup)
    assert resp.status == 201, resp.detail


def test_disabled_trust_anchor_refused(setup: dict[str, Any]) -> None:
    anchor_id = setup["anchor"].rsplit("/", 1)[1]
    setup["emu"].ok("POST", f"/trustanchor/{anchor_id}/disable")
    assert_refused(session(setup), 403, "AccessDeniedException", "Untrusted Signing Certificate")


def test_disabled_profile_refused(setup: dict[str, Any]) -> None:
    profile_id = setup["profile"].rsplit("/", 1)[1]
    setup["emu"].ok("POST", f"/profile/{profile_id}/disable")
    resp = session(setup)
    assert (resp.status, resp.error_type) == (403, "AccessDeniedException")


def test_role_not_in_profile_refused(setup: dict[str, Any]) -> None:
    resp = session(setup, role_arn=OTHER_ROLE)
    assert (resp.status, resp.error_type) == (403, "AccessDeniedException")
    assert OTHER_ROLE in (resp.message or "")


def test_six_certificate_chain_refused(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    padding = [make_ca(f"Padding CA {i}").cert for i in range(5)]
    resp = session(setup, chain=[pki["issuing"].cert, *padding])
    assert_refused(resp, 403, "AccessDeniedException", "Untrusted Signing Certificate")
    assert "at most 5" in (resp.detail or "")
    assert session(setup, chain=[pki["issuing"].cert, *padding[:4]]).status == 201


def test_path_length_constraint(emulator_app: InProcessEmulator) -> None:
    root = make_ca("PL Root", path_len=0)
    mid = make_ca("PL Mid", parent=root, path_len=1)
    low = make_ca("PL Low", parent=mid, path_len=0)
    anchor = emulator_app.trust_anchor(root.cert)
    profile = emulator_app.profile(ROLE)
    leaf, key = make_leaf(low, "deep")
    resp = emulator_app.create_session(certificate=leaf, private_key=key, chain=[low.cert, mid.cert],
                                       trust_anchor_arn=anchor, profile_arn=profile, role_arn=ROLE)  # fmt: skip
    assert resp.status == 403 and "pathLen" in (resp.detail or "")


def test_non_ca_in_chain_refused(emulator_app: InProcessEmulator) -> None:
    root = make_ca("NC Root")
    not_ca = make_ca("NC Mid", parent=root, ca=False)
    anchor = emulator_app.trust_anchor(root.cert)
    profile = emulator_app.profile(ROLE)
    leaf, key = make_leaf(not_ca, "x")
    resp = emulator_app.create_session(certificate=leaf, private_key=key, chain=[not_ca.cert],
                                       trust_anchor_arn=anchor, profile_arn=profile, role_arn=ROLE)  # fmt: skip
    assert resp.status == 403 and "not a CA" in (resp.detail or "")


def test_expired_leaf_and_bad_key_usage_refused(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    now = datetime.now(UTC)
    expired, key = make_leaf(
        pki["issuing"], "old", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1)
    )
    resp = session(setup, certificate=expired, private_key=key)
    assert_refused(resp, 403, "AccessDeniedException", "Untrusted Signing Certificate")
    assert "expired" in (resp.detail or "")
    no_ds, key = make_leaf(pki["issuing"], "nods", digital_signature=False)
    resp = session(setup, certificate=no_ds, private_key=key)
    assert resp.status == 403 and "digitalSignature" in (resp.detail or "")


def test_role_session_name_needs_profile_permission(setup: dict[str, Any]) -> None:
    resp = session(setup, extra_body={"roleSessionName": "my-session"})
    assert_refused(resp, 403, "AccessDeniedException", "Not authorized to set roleSessionName.")
    profile_id = setup["profile"].rsplit("/", 1)[1]
    setup["emu"].ok("PATCH", f"/profile/{profile_id}", {"acceptRoleSessionName": True})
    resp = session(setup, extra_body={"roleSessionName": "my-session"})
    assert resp.status == 201
    assert resp.body["credentialSet"][0]["assumedRoleUser"]["arn"].endswith("/my-session")
    assert session(setup, extra_body={"roleSessionName": "bad name!"}).status == 400


def test_long_cn_source_identity(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    cn = "a" * 63
    leaf, key = make_leaf(pki["issuing"], cn)
    resp = session(setup, certificate=leaf, private_key=key)
    assert resp.body["credentialSet"][0]["sourceIdentity"] == cn


# ---- signature problems through the HTTP layer ------------------------------------------------


def test_tampered_signature(setup: dict[str, Any]) -> None:
    signed = sign_session(certificate=setup["leaf"], private_key=setup["key"], chain=setup["chain"], host="localhost",
                          region="us-east-1", trust_anchor_arn=setup["anchor"], profile_arn=setup["profile"],
                          role_arn=ROLE)  # fmt: skip
    auth = signed.headers["Authorization"]
    bad = auth[:-2] + ("00" if not auth.endswith("00") else "11")
    resp = setup["emu"].send_session(signed, headers={**signed.headers, "Authorization": bad})
    assert_refused(resp, 403, "AccessDeniedException", "Invalid signature")


def test_altered_body_and_wrong_region(setup: dict[str, Any]) -> None:
    kwargs = dict(certificate=setup["leaf"], private_key=setup["key"], chain=setup["chain"], host="localhost",
                  trust_anchor_arn=setup["anchor"], profile_arn=setup["profile"], role_arn=ROLE)  # fmt: skip
    signed = sign_session(region="us-east-1", **kwargs)
    resp = setup["emu"].send_session(signed, body=b'{"durationSeconds":900}')
    assert_refused(resp, 403, "AccessDeniedException", "Invalid signature")
    resp = setup["emu"].send_session(sign_session(region="eu-west-1", **kwargs))
    assert_refused(resp, 403, "AccessDeniedException", "Invalid signature")


def test_stale_date_refused(setup: dict[str, Any]) -> None:
    resp = session(setup, now=datetime.now(UTC) - timedelta(minutes=10))
    assert resp.status == 403 and (resp.message or "").startswith("Signature expired")


def test_wrong_key_and_unsigned_header(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    _, other_key = make_leaf(pki["issuing"], "other")
    assert_refused(session(setup, private_key=other_key), 403, "AccessDeniedException", "Invalid signature")
    signed = sign_session(certificate=setup["leaf"], private_key=setup["key"], chain=setup["chain"], host="localhost",
                          region="us-east-1", trust_anchor_arn=setup["anchor"], profile_arn=setup["profile"],
                          role_arn=ROLE)  # fmt: skip
    headers = {k: v for k, v in signed.headers.items() if k != "X-Amz-X509-Chain"}
    headers["Authorization"] = headers["Authorization"].replace(";x-amz-x509-chain", "")
    # The chain header is gone and unsigned: now the path cannot be built (no chain), and the
    # signature is over a different header list, so the signature check fails first.
    resp = setup["emu"].send_session(replace(signed, headers=headers))
    assert_refused(resp, 403, "AccessDeniedException", "Invalid signature")


def test_shared_vector_replayed_against_emulator(tmp_path: Path) -> None:
    """The loopback vector, sent as-is at its own time, passes the emulator's signature check."""
    from cryptography import x509

    folder = next((p / "vectors/sigv4-x509/rsa2048-loopback-port"
                   for p in (Path(__file__).resolve().parents[2] / "shared", Path("/work/shared"))
                   if (p / "vectors/sigv4-x509/rsa2048-loopback-port").is_dir()), Path("/nonexistent"))
    if not folder.is_dir():
        pytest.skip("shared vectors not present")
    vector = json.loads((folder / "vector.json").read_text())
    at = sigv4x509.parse_amz_date(vector["amz_date"])
    emu = InProcessEmulator.create(tmp_path / "state.json", clock=lambda: at + timedelta(seconds=30))
    root = x509.load_pem_x509_certificate((folder.parent / "root-ca.pem").read_bytes())
    emu.region = vector["region"]
    anchor = emu.trust_anchor(root)
    signed_headers = {
        "Host": vector["host"], "X-Amz-Date": vector["amz_date"],
        "X-Amz-X509": vector["canonical_request"].split("x-amz-x509:")[1].split("\n")[0],
        "X-Amz-X509-Chain": vector["canonical_request"].split("x-amz-x509-chain:")[1].split("\n")[0],
        "Content-Type": "application/json", "Authorization": vector["authorization"],
    }  # fmt: skip
    path = "/sessions?" + vector["canonical_request"].split("\n")[2]
    resp = emu.send_session(
        sigv4x509.SignedRequest(path, signed_headers, vector["request_body"].encode(), "", ""),
    )
    # The vector names a trust anchor id we did not create: signature passes, trust does not.
    assert_refused(resp, 403, "AccessDeniedException", "Untrusted Signing Certificate")
    assert "does not exist" in (resp.detail or "")
    assert anchor


def test_session_rate_per_certificate(setup: dict[str, Any], pki: dict[str, SimpleCa]) -> None:
    """With ``sessionRate`` set, a burst from one certificate is throttled; another certificate is not."""
    emu: InProcessEmulator = setup["emu"]
    assert emu.client.put("/_emulator/faults", json={"sessionRate": 1}).status_code == 200
    statuses = [session(setup).status for _ in range(3)]
    assert statuses[0] == 201 and 429 in statuses
    other, other_key = make_leaf(pki["issuing"], "build-agent-03")
    assert session(setup, certificate=other, private_key=other_key).status == 201
    emu.client.delete("/_emulator/faults")
    assert session(setup).status == 201
