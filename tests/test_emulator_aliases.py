"""The emulator's aliases, trusted identity propagation and crlDpRevocationEnabled, through unmodified boto3.

The model walk (tests/test_emulator_model.py) holds every member to its shape; these tests hold
the rules the shapes cannot say: an alias is unique per resource type, ``aws/`` is reserved,
``previousAliasName`` tells what an update replaced, an alias ARN names the resource wherever an
``*Identifier`` or CreateSession takes one, and a TIP profile refuses a certificate lacking its field.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.emulator_fixture import InProcessEmulator, make_ca, make_leaf, pem_of
from tests.test_emulator_model import Emulator

ROLE = "arn:aws:iam::123456789012:role/aliases"
CA = make_ca("Alias Root")


@pytest.fixture
def emu(emulator_app: InProcessEmulator) -> Emulator:
    return Emulator(emulator_app.app)


def _anchor(emu: Emulator, **fields: object) -> dict[str, object]:
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(CA.cert)}}
    return emu.ok("CreateTrustAnchor", {"name": "a", "source": source, "enabled": True, **fields})["trustAnchor"]


def _profile(emu: Emulator, **fields: object) -> dict[str, object]:
    return emu.ok("CreateProfile", {"name": "p", "roleArns": [ROLE], "enabled": True, **fields})["profile"]


def test_alias_arn_names_the_resource_and_follows_renames(emu: Emulator) -> None:
    anchor = _anchor(emu, aliasName="team/prod")
    alias_arn = "arn:aws:rolesanywhere:us-east-1:123456789012:alias/trust-anchor/team/prod"
    assert (anchor["aliasName"], anchor["aliasArn"]) == ("team/prod", alias_arn)
    for identifier in (anchor["trustAnchorId"], anchor["trustAnchorArn"], alias_arn):
        assert emu.ok("GetTrustAnchor", {"trustAnchorId": identifier})["trustAnchor"]["trustAnchorId"] == anchor[
            "trustAnchorId"]
    renamed = emu.ok("UpdateTrustAnchor", {"trustAnchorId": alias_arn, "aliasName": "team/next"})["trustAnchor"]
    assert (renamed["aliasName"], renamed["previousAliasName"]) == ("team/next", "team/prod")
    assert "previousAliasName" not in emu.ok("GetTrustAnchor", {"trustAnchorId": anchor["trustAnchorId"]})[
        "trustAnchor"]
    assert emu.call("GetTrustAnchor", {"trustAnchorId": alias_arn}).error == "ResourceNotFoundException"
    # The old alias is free for another trust anchor; keeping an alias reports no previous one.
    assert _anchor(emu, aliasName="team/prod")["aliasName"] == "team/prod"
    kept = emu.ok("UpdateTrustAnchor", {"trustAnchorId": anchor["trustAnchorId"], "aliasName": "team/next"})
    assert "previousAliasName" not in kept["trustAnchor"]
    removed = emu.ok("UpdateTrustAnchor", {"trustAnchorId": anchor["trustAnchorId"], "aliasName": ""})["trustAnchor"]
    assert removed["previousAliasName"] == "team/next" and "aliasName" not in removed and "aliasArn" not in removed


def test_duplicate_and_reserved_aliases_are_refused(emu: Emulator) -> None:
    _profile(emu, aliasName="shared")
    assert _anchor(emu, aliasName="shared")["aliasName"] == "shared"  # another type: its own namespace
    assert emu.call("CreateProfile", {"name": "p2", "roleArns": [ROLE], "aliasName": "shared"}).error == (
        "ValidationException")
    other = _profile(emu)
    assert emu.call("UpdateProfile", {"profileId": other["profileId"], "aliasName": "shared"}).error == (
        "ValidationException")
    for reserved in ("aws/x", "AWS/x", "Aws/team"):
        reply = emu.call("CreateProfile", {"name": "p3", "roleArns": [ROLE], "aliasName": reserved})
        assert (reply.status, reply.error) == (400, "ValidationException"), reserved
    assert "aliasName" not in _profile(emu, aliasName="")


def test_crl_aliases_and_import_by_alias_arn_is_not_found(emu: Emulator) -> None:
    from tests.emulator_fixture import make_crl

    anchor = _anchor(emu, aliasName="crl-anchor")
    crl = emu.ok("ImportCrl", {"name": "c", "crlData": make_crl(CA), "trustAnchorArn": anchor["trustAnchorArn"],
                               "aliasName": "main"})["crl"]  # fmt: skip
    assert emu.ok("GetCrl", {"crlId": crl["aliasArn"]})["crl"]["crlId"] == crl["crlId"]
    by_alias = emu.call("ImportCrl", {"name": "c", "crlData": make_crl(CA), "trustAnchorArn": anchor["aliasArn"]})
    assert by_alias.error == "ResourceNotFoundException"  # the model: ImportCrl takes no alias ARN
    assert emu.ok("DeleteCrl", {"crlId": crl["aliasArn"]})["crl"]["crlId"] == crl["crlId"]


def test_crl_dp_revocation_flag_is_stored_as_returned(emu: Emulator, tmp_path: Path) -> None:
    anchor = _anchor(emu)
    assert anchor["crlDpRevocationEnabled"] is False
    updated = emu.ok("UpdateTrustAnchor", {"trustAnchorId": anchor["trustAnchorArn"], "crlDpRevocationEnabled": True})
    assert updated["trustAnchor"]["crlDpRevocationEnabled"] is True
    # The data plane reads the flag from the stored detail (what the API returns, saved as is).
    state = json.loads((tmp_path / "emulator" / "state.json").read_text())
    stored = state["accounts"]["123456789012"]["us-east-1"]["trustAnchors"][anchor["trustAnchorId"]]
    assert stored["crlDpRevocationEnabled"] is True
    listed = emu.ok("ListTrustAnchors", {})["trustAnchors"]
    assert [a["crlDpRevocationEnabled"] for a in listed] == [True]
    assert _anchor(emu, crlDpRevocationEnabled=True)["crlDpRevocationEnabled"] is True


def test_tip_needs_its_mapping_rule(emu: Emulator) -> None:
    tip = {"status": "ENABLED", "subjectType": "workload", "subjectSource": "x509SAN/URI"}
    profile = _profile(emu, tipConfiguration=tip)
    assert profile["tipConfiguration"] == tip
    pid = profile["profileId"]
    refused = emu.call("DeleteAttributeMapping", {"profileId": pid, "certificateField": "x509SAN", "specifiers": ["URI"]})
    assert refused.error == "ValidationException"
    # The refusal left the mapping whole; with TIP off the rule may go, and then TIP cannot come back on.
    mappings = emu.ok("GetProfile", {"profileId": pid})["profile"]["attributeMappings"]
    assert any(r["specifier"] == "URI" for m in mappings if m["certificateField"] == "x509SAN" for r in m["mappingRules"])
    off = emu.ok("UpdateProfile", {"profileId": pid, "tipConfiguration": {"status": "DISABLED"}})["profile"]
    assert off["tipConfiguration"] == {"status": "DISABLED", "subjectSource": "x509Subject/CN"}
    emu.ok("DeleteAttributeMapping", {"profileId": pid, "certificateField": "x509SAN", "specifiers": ["URI"]})
    again = emu.call("UpdateProfile", {"profileId": pid, "tipConfiguration": tip})
    assert again.error == "ValidationException"
    assert emu.ok("UpdateProfile", {"profileId": pid, "tipConfiguration": {"status": "ENABLED"}})  # CN is mapped


def _session(emulator_app: InProcessEmulator, anchor_arn: str, profile_arn: str, **leaf: object) -> int:
    cert, key = make_leaf(CA, **leaf)  # type: ignore[arg-type]
    reply = emulator_app.create_session(certificate=cert, private_key=key, trust_anchor_arn=anchor_arn,
                                        profile_arn=profile_arn, role_arn=ROLE)  # fmt: skip
    return reply.status


def test_create_session_takes_alias_arns_and_tip_refuses_a_certificate_without_uri(
    emu: Emulator, emulator_app: InProcessEmulator
) -> None:
    anchor = _anchor(emu, aliasName="sessions")
    tip = {"status": "ENABLED", "subjectSource": "x509SAN/URI"}
    profile = _profile(emu, aliasName="tip/uri", tipConfiguration=tip)
    assert _session(emulator_app, anchor["aliasArn"], profile["aliasArn"], uris=("spiffe://example/app",)) == 201
    cert, key = make_leaf(CA)
    denied = emulator_app.create_session(certificate=cert, private_key=key, trust_anchor_arn=anchor["aliasArn"],
                                         profile_arn=profile["aliasArn"], role_arn=ROLE)  # fmt: skip
    assert (denied.status, denied.headers["x-amzn-errortype"]) == (403, "AccessDeniedException")
    assert "URI SAN" in (denied.detail or "")
    plain = _profile(emu)  # TIP off: the same certificate is fine
    assert _session(emulator_app, anchor["trustAnchorArn"], plain["profileArn"]) == 201
    unknown = anchor["aliasArn"].replace("sessions", "nobody")
    assert _session(emulator_app, unknown, plain["profileArn"]) == 403


def test_a_state_saved_before_crl_dp_reads_as_off(tmp_path: Path) -> None:
    first = InProcessEmulator.create(tmp_path / "state.json")
    anchor = _anchor(Emulator(first.app))
    state = json.loads((tmp_path / "state.json").read_text())
    del state["accounts"]["123456789012"]["us-east-1"]["trustAnchors"][anchor["trustAnchorId"]]["crlDpRevocationEnabled"]
    (tmp_path / "state.json").write_text(json.dumps(state))
    again = Emulator(InProcessEmulator.create(tmp_path / "state.json").app)
    assert again.ok("GetTrustAnchor", {"trustAnchorId": anchor["trustAnchorId"]})["trustAnchor"][
        "crlDpRevocationEnabled"] is False
