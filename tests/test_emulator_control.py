"""The emulator's control plane in process: validations, quotas, error shapes, state, faults."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from tests.emulator_fixture import InProcessEmulator, make_ca, make_crl, make_leaf, pem_of

ROLE = "arn:aws:iam::123456789012:role/r"


def anchor_body(pem: str, **extra: object) -> dict[str, object]:
    return {"name": "a", "source": {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem}},
            **extra}  # fmt: skip


@pytest.fixture(scope="module")
def root_pem() -> str:
    return pem_of(make_ca("Control Root").cert)


def test_error_shape(emulator_app: InProcessEmulator) -> None:
    resp = emulator_app.call("GET", "/profile/00000000-0000-0000-0000-000000000000")
    assert resp.status == 404
    assert resp.error_type == "ResourceNotFoundException"
    assert set(resp.body) == {"message"}
    resp = emulator_app.call("POST", "/profiles", {"name": "bad/name", "roleArns": [ROLE]})
    assert (resp.status, resp.error_type) == (400, "ValidationException")


def test_unsigned_control_call_refused(emulator_app: InProcessEmulator) -> None:
    resp = emulator_app.client.get("/profiles")
    assert resp.status_code == 403
    assert resp.headers["X-Amzn-ErrorType"] == "MissingAuthenticationTokenException"


@pytest.mark.parametrize("name", ["", "x" * 256, "semi;colon", "dot.name"])
def test_name_pattern(emulator_app: InProcessEmulator, name: str) -> None:
    assert emulator_app.call("POST", "/profiles", {"name": name, "roleArns": [ROLE]}).status == 400


def test_name_accepts_the_documented_characters(emulator_app: InProcessEmulator) -> None:
    assert emulator_app.call("POST", "/profiles", {"name": "My profile-1_x", "roleArns": [ROLE]}).status == 201


@pytest.mark.parametrize(("duration", "status"), [(899, 400), (900, 201), (43200, 201), (43201, 400), ("900", 400)])
def test_profile_duration_bounds(emulator_app: InProcessEmulator, duration: object, status: int) -> None:
    body = {"name": "p", "roleArns": [ROLE], "durationSeconds": duration}
    assert emulator_app.call("POST", "/profiles", body).status == status


def test_profile_role_arns_validated(emulator_app: InProcessEmulator) -> None:
    assert emulator_app.call("POST", "/profiles", {"name": "p", "roleArns": ["not-an-arn"]}).status == 400
    assert emulator_app.call("POST", "/profiles", {"name": "p", "roleArns": [ROLE] * 251}).status == 400
    assert emulator_app.call("POST", "/profiles", {"name": "p"}).status == 400


def test_trust_anchor_certificate_rules(emulator_app: InProcessEmulator) -> None:
    roots = [make_ca(f"R{i}").cert for i in range(3)]
    assert emulator_app.call("POST", "/trustanchors", anchor_body(pem_of(*roots[:2]))).status == 201
    resp = emulator_app.call("POST", "/trustanchors", anchor_body(pem_of(*roots)))
    assert resp.status == 400 and "at most 2" in (resp.message or "")
    assert emulator_app.call("POST", "/trustanchors", anchor_body("not pem")).status == 400
    leaf, _ = make_leaf(make_ca("R"), "leaf")
    assert emulator_app.call("POST", "/trustanchors", anchor_body(pem_of(leaf))).status == 400
    bad_type = {"name": "a", "source": {"sourceType": "NOPE", "sourceData": {}}}
    assert emulator_app.call("POST", "/trustanchors", bad_type).status == 400


def test_trust_anchor_lifecycle(emulator_app: InProcessEmulator, root_pem: str) -> None:
    created = emulator_app.ok("POST", "/trustanchors", anchor_body(root_pem))["trustAnchor"]
    assert created["enabled"] is False
    assert created["trustAnchorArn"] == (
        f"arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/{created['trustAnchorId']}"
    )
    assert {s["event"] for s in created["notificationSettings"]} == {
        "CA_CERTIFICATE_EXPIRY", "END_ENTITY_CERTIFICATE_EXPIRY"
    }  # fmt: skip
    tid = created["trustAnchorId"]
    assert emulator_app.ok("POST", f"/trustanchor/{tid}/enable")["trustAnchor"]["enabled"] is True
    updated = emulator_app.ok("PATCH", f"/trustanchor/{tid}", {"name": "renamed"})["trustAnchor"]
    assert updated["name"] == "renamed" and updated["enabled"] is True
    assert emulator_app.ok("POST", f"/trustanchor/{tid}/disable")["trustAnchor"]["enabled"] is False
    settings = {"trustAnchorId": tid, "notificationSettings": [
        {"enabled": False, "event": "CA_CERTIFICATE_EXPIRY", "threshold": 10, "channel": "ALL"}]}  # fmt: skip
    put = emulator_app.ok("PATCH", "/put-notifications-settings", settings)["trustAnchor"]["notificationSettings"]
    ca_setting = next(s for s in put if s["event"] == "CA_CERTIFICATE_EXPIRY")
    assert (ca_setting["enabled"], ca_setting["threshold"]) == (False, 10)
    assert ca_setting["configuredBy"] != "rolesanywhere.amazonaws.com"
    reset = emulator_app.ok(
        "PATCH",
        "/reset-notifications-settings",
        {"trustAnchorId": tid, "notificationSettingKeys": [{"event": "CA_CERTIFICATE_EXPIRY"}]},
    )
    ca_setting = next(s for s in reset["trustAnchor"]["notificationSettings"] if s["event"] == "CA_CERTIFICATE_EXPIRY")
    assert (ca_setting["enabled"], ca_setting["threshold"]) == (True, 45)
    bad = {"trustAnchorId": tid, "notificationSettings": [{"enabled": True, "event": "X"}]}
    assert emulator_app.call("PATCH", "/put-notifications-settings", bad).status == 400
    assert emulator_app.ok("DELETE", f"/trustanchor/{tid}")["trustAnchor"]["trustAnchorId"] == tid
    assert emulator_app.call("GET", f"/trustanchor/{tid}").status == 404


def test_crl_rules(emulator_app: InProcessEmulator) -> None:
    root = make_ca("CRL Root")
    anchor = emulator_app.trust_anchor(root.cert)
    crl_pem = make_crl(root, [1, 2, 3])
    imported = emulator_app.ok("POST", "/crls", {"name": "c1", "trustAnchorArn": anchor,
                                                 "crlData": base64.b64encode(crl_pem).decode()})["crl"]  # fmt: skip
    assert imported["enabled"] is False  # imported CRLs start disabled
    assert base64.b64decode(imported["crlData"]) == crl_pem
    from cryptography import x509

    der = x509.load_pem_x509_crl(crl_pem).public_bytes(serialization.Encoding.DER)
    resp = emulator_app.call("POST", "/crls", {"name": "der", "trustAnchorArn": anchor,
                                               "crlData": base64.b64encode(der).decode()})  # fmt: skip
    assert resp.status == 400 and "PEM" in (resp.message or "")
    big = crl_pem + b"\n" * (300_001 - len(crl_pem))
    resp = emulator_app.call("POST", "/crls", {"name": "big", "trustAnchorArn": anchor,
                                               "crlData": base64.b64encode(big).decode()})  # fmt: skip
    assert resp.status == 400 and "300000" in (resp.message or "")
    exactly = crl_pem + b"\n" * (300_000 - len(crl_pem))
    emulator_app.ok("POST", "/crls", {"name": "c2", "trustAnchorArn": anchor,
                                      "crlData": base64.b64encode(exactly).decode()})  # fmt: skip
    resp = emulator_app.call("POST", "/crls", {"name": "c3", "trustAnchorArn": anchor,
                                               "crlData": base64.b64encode(crl_pem).decode()})  # fmt: skip
    assert resp.status == 400 and "at most 2" in (resp.message or "")
    cid = imported["crlId"]
    assert emulator_app.ok("POST", f"/crl/{cid}/enable")["crl"]["enabled"] is True
    newer = make_crl(root, [4])
    updated = emulator_app.ok("PATCH", f"/crl/{cid}", {"crlData": base64.b64encode(newer).decode()})["crl"]
    assert base64.b64decode(updated["crlData"]) == newer and updated["enabled"] is True
    assert emulator_app.call("PATCH", f"/crl/{cid}", {"crlData": base64.b64encode(b"junk").decode()}).status == 400
    assert emulator_app.ok("POST", f"/crl/{cid}/disable")["crl"]["enabled"] is False
    assert len(emulator_app.ok("GET", "/crls")["crls"]) == 2
    emulator_app.ok("DELETE", f"/crl/{cid}")
    assert emulator_app.call("GET", f"/crl/{cid}").status == 404
    missing_anchor = anchor.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    resp = emulator_app.call("POST", "/crls", {"name": "x", "trustAnchorArn": missing_anchor,
                                               "crlData": base64.b64encode(crl_pem).decode()})  # fmt: skip
    assert resp.status == 404


def test_tags(emulator_app: InProcessEmulator) -> None:
    body = {"name": "p", "roleArns": [ROLE], "tags": [{"key": "team", "value": "infra"}]}
    arn = emulator_app.ok("POST", "/profiles", body)["profile"]["profileArn"]
    listed = emulator_app.ok("GET", "/ListTagsForResource", query={"resourceArn": arn})
    assert listed["tags"] == [{"key": "team", "value": "infra"}]
    assert emulator_app.call("POST", "/TagResource", {"resourceArn": arn, "tags": [{"key": "env", "value": "dev"}]}
                             ).status == 201  # fmt: skip
    emulator_app.ok("POST", "/UntagResource", {"resourceArn": arn, "tagKeys": ["team"]})
    listed = emulator_app.ok("GET", "/ListTagsForResource", query={"resourceArn": arn})
    assert listed["tags"] == [{"key": "env", "value": "dev"}]
    many = [{"key": f"k{i}", "value": "v"} for i in range(200)]
    resp = emulator_app.call("POST", "/TagResource", {"resourceArn": arn, "tags": many})
    assert (resp.status, resp.error_type) == (400, "TooManyTagsException")
    bad = emulator_app.call("POST", "/TagResource", {"resourceArn": arn, "tags": [{"key": "bad#", "value": "v"}]})
    assert bad.status == 400
    gone = arn.rsplit("/", 1)[0] + "/00000000-0000-0000-0000-000000000000"
    assert emulator_app.call("GET", "/ListTagsForResource", query={"resourceArn": gone}).status == 404


def test_attribute_mappings(emulator_app: InProcessEmulator) -> None:
    pid = emulator_app.ok("POST", "/profiles", {"name": "p", "roleArns": [ROLE]})["profile"]["profileId"]
    put = emulator_app.ok(
        "PUT",
        f"/profiles/{pid}/mappings",
        {"certificateField": "x509Subject", "mappingRules": [{"specifier": "serialNumber"}]},
    )
    subject = next(m for m in put["profile"]["attributeMappings"] if m["certificateField"] == "x509Subject")
    assert {"specifier": "serialNumber"} in subject["mappingRules"]
    deleted = emulator_app.ok(
        "DELETE",
        f"/profiles/{pid}/mappings",
        query={"certificateField": "x509Subject", "specifiers": ["serialNumber", "CN"]},
    )
    subject = next(m for m in deleted["profile"]["attributeMappings"] if m["certificateField"] == "x509Subject")
    assert {"specifier": "CN"} not in subject["mappingRules"]
    whole = emulator_app.ok("DELETE", f"/profiles/{pid}/mappings", query={"certificateField": "x509SAN"})
    assert all(m["certificateField"] != "x509SAN" for m in whole["profile"]["attributeMappings"])
    assert emulator_app.call("PUT", f"/profiles/{pid}/mappings", {"certificateField": "nope", "mappingRules": []}
                             ).status == 400  # fmt: skip


def test_pagination(emulator_app: InProcessEmulator) -> None:
    for i in range(5):
        emulator_app.ok("POST", "/profiles", {"name": f"p{i}", "roleArns": [ROLE]})
    names: list[str] = []
    token = None
    for _ in range(10):  # bounded
        query = {"pageSize": "2", **({"nextToken": token} if token else {})}
        page = emulator_app.ok("GET", "/profiles", query=query)
        names += [p["name"] for p in page["profiles"]]
        token = page.get("nextToken")
        if not token:
            break
    assert names == [f"p{i}" for i in range(5)]
    assert emulator_app.call("GET", "/profiles", query={"nextToken": "%%%"}).status == 400


def test_regions_accounts_partitions(emulator_app: InProcessEmulator) -> None:
    emulator_app.ok("POST", "/profiles", {"name": "east", "roleArns": [ROLE]})
    gov = emulator_app.ok("POST", "/profiles", {"name": "gov", "roleArns": [ROLE]}, region="us-gov-west-1")
    assert gov["profile"]["profileArn"].startswith("arn:aws-us-gov:rolesanywhere:us-gov-west-1:123456789012:profile/")
    cn = emulator_app.ok("POST", "/profiles", {"name": "cn", "roleArns": [ROLE]}, region="cn-north-1")
    assert cn["profile"]["profileArn"].startswith("arn:aws-cn:rolesanywhere:cn-north-1:")
    assert [p["name"] for p in emulator_app.ok("GET", "/profiles")["profiles"]] == ["east"]
    other = emulator_app.ok("POST", "/profiles", {"name": "acct", "roleArns": [ROLE]}, access_key="210987654321")
    assert ":210987654321:profile/" in other["profile"]["profileArn"]
    assert [p["name"] for p in emulator_app.ok("GET", "/profiles")["profiles"]] == ["east"]


def test_state_survives_a_restart(tmp_path: Path, root_pem: str) -> None:
    state = tmp_path / "state.json"
    first = InProcessEmulator.create(state)
    tid = first.ok("POST", "/trustanchors", anchor_body(root_pem, enabled=True))["trustAnchor"]["trustAnchorId"]
    assert json.loads(state.read_text())["version"] == 1
    assert (state.stat().st_mode & 0o777) == 0o600
    second = InProcessEmulator.create(state)
    assert second.ok("GET", f"/trustanchor/{tid}")["trustAnchor"]["enabled"] is True


def test_faults_and_stats(emulator_app: InProcessEmulator) -> None:
    c = emulator_app.client
    assert c.put("/_emulator/faults", json={"throttleNext": 1, "operations": ["CreateProfile"]}).status_code == 200
    emulator_app.call("GET", "/profiles")  # not a targeted operation
    throttled = emulator_app.call("POST", "/profiles", {"name": "p", "roleArns": [ROLE]})
    assert (throttled.status, throttled.error_type) == (429, "ThrottlingException")
    assert emulator_app.call("POST", "/profiles", {"name": "p", "roleArns": [ROLE]}).status == 201
    c.put("/_emulator/faults", json={"failNext": 2, "operations": []})  # updates are partial
    assert emulator_app.call("GET", "/profiles").status == 500
    assert emulator_app.call("GET", "/crls").status == 500
    assert emulator_app.call("GET", "/crls").status == 200
    c.put("/_emulator/faults", json={"failRate": 1.0})
    assert emulator_app.call("GET", "/crls").status == 500
    assert c.delete("/_emulator/faults").get_json()["failRate"] == 0.0
    assert emulator_app.call("GET", "/crls").status == 200
    stats = c.get("/_emulator/stats").get_json()
    assert stats["writes"] == {"CreateProfile": 1} and stats["writesTotal"] == 1
    assert stats["calls"]["CreateProfile"] == 2
    assert stats["calls"]["ListCrls"] == 4
    assert stats["injected"] == {"ThrottlingException": 1, "InternalServerException": 3}
    c.post("/_emulator/stats/reset")
    assert c.get("/_emulator/stats").get_json()["writesTotal"] == 0
    assert c.put("/_emulator/faults", json={"failRate": 2}).status_code == 400
    assert c.put("/_emulator/faults", json={"bogus": 1}).status_code == 400


def test_rate_throttle(emulator_app: InProcessEmulator) -> None:
    emulator_app.client.put("/_emulator/faults", json={"throttle": 1})
    statuses = [emulator_app.call("GET", "/profiles").status for _ in range(5)]
    assert statuses[0] == 200 and 429 in statuses
