"""The one Roles Anywhere model (``pki.rolesanywhere``) held to botocore's data and to its two fronts.

- partitions and endpoints: every region the installed botocore knows, its partition and host names
  (normal, FIPS, dual-stack) as botocore's partition data and ``rolesanywhere`` endpoint rule set
  give them;
- ARNs: the parser on good and bad input, and what we write matching botocore's model patterns;
- the trust path: a table of certificates run through the model, ``rapki doctor`` and the
  emulator's CreateSession, which must give the same verdict.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from pki.aws.doctor import FAIL, AnchorView, diagnose
from pki.errors import InvalidInput
from pki.rolesanywhere import trustpath
from pki.rolesanywhere.arns import RESOURCE_TYPES, IamRoleArn, RolesAnywhereArn, check_role_arn, is_alias_name
from pki.rolesanywhere.endpoints import resolve_endpoint, session_region
from pki.rolesanywhere.partitions import (
    FIPS_REGIONS,
    PARTITIONS,
    normalize_region,
    partition_of,
    region_from_host,
    split_fips,
)
from tests.emulator_fixture import InProcessEmulator, SimpleCa, make_ca, make_crl, make_leaf

ROLE = "arn:aws:iam::123456789012:role/model-test"
UUID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"

# --------------------------------------------------------------------------------------------
# Partitions and endpoints against botocore's data


@pytest.fixture(scope="module")
def botocore_data() -> dict[str, Any]:
    from botocore.endpoint_provider import EndpointProvider, RuleSetStandardLibrary
    from botocore.loaders import create_loader

    loader = create_loader()
    partitions = loader.load_data("partitions")
    endpoints = loader.load_data("endpoints")
    ruleset = loader.load_service_model("rolesanywhere", "endpoint-rule-set-1")
    return {
        "partitions": partitions,
        "endpoints": endpoints,
        "provider": EndpointProvider(ruleset, partitions),
        "library": RuleSetStandardLibrary(partitions),
    }


def botocore_regions(data: dict[str, Any]) -> dict[str, str]:
    """Every region botocore names (partitions.json and endpoints.json) -> its partition."""
    regions = {r: p["id"] for p in data["partitions"]["partitions"] for r in p["regions"]}
    for p in data["endpoints"]["partitions"]:
        regions.update(dict.fromkeys(p["regions"], p["partition"]))
    return regions


def test_partition_table_is_botocores(botocore_data: dict[str, Any]) -> None:
    ours = {
        name: (p.dns_suffix, p.dual_stack_dns_suffix, p.supports_fips, p.supports_dual_stack)
        for name, p in PARTITIONS.items()
    }
    theirs = {
        p["id"]: (p["outputs"]["dnsSuffix"], p["outputs"]["dualStackDnsSuffix"], p["outputs"]["supportsFIPS"],
                  p["outputs"]["supportsDualStack"])
        for p in botocore_data["partitions"]["partitions"]
    }
    assert ours == theirs


def test_every_botocore_region_has_our_partition_and_host_names(botocore_data: dict[str, Any]) -> None:
    regions = botocore_regions(botocore_data)
    assert {"eusc-de-east-1", "eu-isoe-west-1", "us-gov-west-1", "cn-north-1"} <= set(regions)
    provider = botocore_data["provider"]
    checked = 0
    for region, partition in sorted(regions.items()):
        assert partition_of(region) == partition, region
        if not region.endswith("-global"):
            assert normalize_region(region) == (region, False)
        outputs = next(p["outputs"] for p in botocore_data["partitions"]["partitions"] if p["id"] == partition)
        for fips in (False, True):
            for dual in (False, True):
                if (fips and not outputs["supportsFIPS"]) or (dual and not outputs["supportsDualStack"]):
                    with pytest.raises(InvalidInput):
                        resolve_endpoint(region, use_fips=fips, use_dualstack=dual)
                    continue
                url = provider.resolve_endpoint(Region=region, UseFIPS=fips, UseDualStack=dual).url
                ours = resolve_endpoint(region, use_fips=fips, use_dualstack=dual)
                assert ours.host_header == urlsplit(url).hostname, (region, fips, dual)
                assert region_from_host(ours.host_header) == region
                checked += 1
    assert checked >= 4 * len(regions)


@pytest.mark.parametrize("region", ["us-gov-north-9", "eusc-de-west-2", "eu-isoe-north-3", "us-isob-x-1",
                                    "us-isof-north-4", "us-iso-south-2", "cn-south-5", "ap-newzone-7",
                                    "zz-weird-1", "aws-iso-b-global"])
def test_regions_botocore_does_not_list_yet_follow_its_patterns(region: str, botocore_data: dict[str, Any]) -> None:
    assert partition_of(region) == botocore_data["library"].aws_partition(region)["name"]


def test_fips_regions_and_pseudo_regions_are_botocores(botocore_data: dict[str, Any]) -> None:
    fips_variants: set[str] = set()
    pseudo: dict[str, dict[str, Any]] = {}
    for partition in botocore_data["endpoints"]["partitions"]:
        service = partition["services"].get("rolesanywhere", {"endpoints": {}})
        for name, endpoint in service["endpoints"].items():
            if any("fips" in v.get("tags", []) for v in endpoint.get("variants", [])):
                fips_variants.add(name)
            if "credentialScope" in endpoint:
                pseudo[name] = endpoint
    assert fips_variants == FIPS_REGIONS
    assert pseudo, "botocore lists no FIPS pseudo-region any more: drop this part"
    for name, endpoint in pseudo.items():
        assert split_fips(name) == (endpoint["credentialScope"]["region"], True)
        assert normalize_region(name) == (endpoint["credentialScope"]["region"], True)
        assert resolve_endpoint(name).host_header == endpoint["hostname"]


def test_endpoint_override_and_host_regions(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_ROLESANYWHERE", "http://127.0.0.1:4000")
    assert resolve_endpoint("eu-isoe-west-1").url == "http://127.0.0.1:4000"
    with pytest.raises(InvalidInput, match="dual-stack"):
        resolve_endpoint("us-east-1", use_dualstack=True)
    assert region_from_host("localhost:8443") is None
    assert region_from_host("rolesanywhere.eusc-de-east-1.amazonaws.eu") == "eusc-de-east-1"
    with pytest.raises(InvalidInput, match="not an AWS region"):
        normalize_region("us_east_1")


# --------------------------------------------------------------------------------------------
# ARNs


@pytest.mark.parametrize("kind", sorted(RESOURCE_TYPES))
def test_arn_round_trip(kind: str) -> None:
    text = f"arn:aws-us-gov:rolesanywhere:us-gov-west-1:123456789012:{kind}/{UUID}"
    arn = RolesAnywhereArn.parse(text, expected_type=kind)
    assert (arn.partition, arn.region, arn.account, arn.type, arn.id) == (
        "aws-us-gov", "us-gov-west-1", "123456789012", kind, UUID)
    assert str(arn) == text
    assert RolesAnywhereArn.make("us-gov-west-1", "123456789012", kind, UUID) == arn
    assert arn.collection == RESOURCE_TYPES[kind].collection


def test_arns_we_write_match_botocores_model_patterns() -> None:
    import boto3

    model = boto3.client("rolesanywhere", region_name="us-east-1").meta.service_model
    for shape, kind in (("TrustAnchor", "trust-anchor"), ("Profile", "profile"), ("Crl", "crl")):
        for region in ("us-east-1", "cn-north-1", "eusc-de-east-1", "eu-isoe-west-1"):
            written = str(RolesAnywhereArn.make(region, "123456789012", kind, UUID))
            alias = str(RolesAnywhereArn.make_alias(region, "123456789012", kind, "team/app-1"))
            for text, shapes in ((written, ("ResourceArn", "Identifier")), (alias, ("AliasArn", "Identifier"))):
                for suffix in shapes:
                    assert re.fullmatch(model.shape_for(shape + suffix).metadata["pattern"], text), (text, suffix)
            assert RolesAnywhereArn.parse(alias, expected_type=kind).alias
    assert re.fullmatch(model.shape_for("Uuid").metadata["pattern"], UUID)
    role = str(IamRoleArn.parse("arn:aws-eusc:iam::123456789012:role/a/b/name"))
    assert re.fullmatch(model.shape_for("RoleArn").metadata["pattern"], role)


def test_alias_arns_parse_and_are_kept_out_of_policies() -> None:
    text = "arn:aws:rolesanywhere:us-east-1:123456789012:alias/trust-anchor/prod/anchor_1"
    arn = RolesAnywhereArn.parse(text, expected_type="trust-anchor")
    assert (arn.type, arn.id, arn.alias, str(arn)) == ("trust-anchor", "prod/anchor_1", True, text)
    with pytest.raises(InvalidInput, match="is an alias ARN"):
        arn.require_resource_arn("--trust-anchor-arn")
    assert is_alias_name("a" * 256) and not is_alias_name("a" * 257)
    for bad in ("", "1a", "a//b", "a/", "a b", "é"):
        assert not is_alias_name(bad), bad


@pytest.mark.parametrize(
    ("text", "expected_type", "message"),
    [
        ("arn:aws:rolesanywhere:us-east-1:123456789012:alias/trust-anchor/a//b", None, "is not an alias"),
        ("arn:aws:rolesanywhere:us-east-1:123456789012:alias/subject/a", None, "is not an alias of a subject"),
        ("arn:aws:rolesanywhere:us-east-1:123456789012:alias/profile/p", "trust-anchor", "names a profile"),
        ("", None, "is not an ARN"),
        ("trust-anchor/" + UUID, None, "is not an ARN"),
        (f"arn:aws:iam::123456789012:role/{UUID}", None, "not a Roles Anywhere one"),
        (f"arn:aws:rolesanywhere:us-east-1:123456789012:widget/{UUID}", None, "not a Roles Anywhere resource type"),
        ("arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor", None, "not a Roles Anywhere resource type"),
        (f"arn:aws:rolesanywhere:us-east-1:123456789012:profile/{UUID}", "trust-anchor",
         "names a profile, not a trust-anchor"),
        ("arn:aws:rolesanywhere:us-east-1:123456789012:trust-anchor/my-anchor", None, "is not a trust-anchor id"),
        (f"arn:aws:rolesanywhere:us-east-1:1234:trust-anchor/{UUID}", None, "not 12 digits"),
        (f"arn:aws:rolesanywhere::123456789012:trust-anchor/{UUID}", None, "is not a partition and region"),
        (f"arn:aws:rolesanywhere:us-gov-west-1:123456789012:trust-anchor/{UUID}", None,
         "belongs to partition aws-us-gov, not aws"),
        (f"arn:aws:rolesanywhere:eu-isoe-west-1:123456789012:crl/{UUID}", None, "belongs to partition aws-iso-e"),
    ],
)
def test_bad_arns_are_named(text: str, expected_type: str | None, message: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(message)) as caught:
        RolesAnywhereArn.parse(text, "--trust-anchor-arn", expected_type=expected_type)
    assert str(caught.value).startswith("--trust-anchor-arn ")


def test_role_arns() -> None:
    role = IamRoleArn.parse("arn:aws:iam::123456789012:role/path/to/app-role")
    assert (role.partition, role.account, role.path, role.name) == ("aws", "123456789012", "path/to/", "app-role")
    assert str(role) == "arn:aws:iam::123456789012:role/path/to/app-role"
    for bad in ("", "arn:aws:iam::123456789012:user/x", "arn:aws:iam::12345:role/x", "arn:aws:iam::123456789012:role/"):
        with pytest.raises(InvalidInput, match="is not an IAM role ARN"):
            IamRoleArn.parse(bad, "--role-arn")
    with pytest.raises(InvalidInput, match="partition aws, but the region is in aws-cn"):
        check_role_arn("arn:aws:iam::123456789012:role/x", "aws-cn")
    gov = f"arn:aws-us-gov:rolesanywhere:us-gov-west-1:123456789012:trust-anchor/{UUID}"
    gov_profile = f"arn:aws-us-gov:rolesanywhere:us-gov-west-1:123456789012:profile/{UUID}"
    assert session_region(gov, gov_profile, None) == "us-gov-west-1"
    with pytest.raises(InvalidInput, match="names a trust-anchor, not a profile"):
        session_region(gov, gov, None)


# --------------------------------------------------------------------------------------------
# The trust path: model, doctor and emulator on the same certificates


@dataclass
class Case:
    leaf: x509.Certificate
    key: Any
    chain: list[x509.Certificate]
    crls: list[bytes]


@pytest.fixture(scope="module")
def hierarchy() -> dict[str, SimpleCa]:
    root = make_ca("Model Root CA")
    return {"root": root, "issuing": make_ca("Model Issuing CA", parent=root)}


def build_case(name: str, root: SimpleCa, issuing: SimpleCa) -> Case:
    now = datetime.now(UTC)
    if name == "good":
        leaf, key = make_leaf(issuing, "web-1")
        return Case(leaf, key, [issuing.cert], [make_crl(issuing, [12345])])
    if name == "expired":
        leaf, key = make_leaf(issuing, "web-1", not_before=now - timedelta(days=2), not_after=now - timedelta(days=1))
        return Case(leaf, key, [issuing.cert], [])
    if name == "foreign CA with the same name":
        foreign_root = make_ca("Model Root CA")
        foreign_issuing = make_ca("Model Issuing CA", parent=foreign_root)
        leaf, key = make_leaf(foreign_issuing, "intruder")
        return Case(leaf, key, [foreign_issuing.cert], [])
    if name == "revoked":
        leaf, key = make_leaf(issuing, "web-1")
        return Case(leaf, key, [issuing.cert], [make_crl(issuing, [leaf.serial_number])])
    if name == "revoked intermediate":
        leaf, key = make_leaf(issuing, "web-1")
        return Case(leaf, key, [issuing.cert], [make_crl(root, [issuing.cert.serial_number])])
    if name == "chain too long":
        leaf, key = make_leaf(issuing, "web-1")
        return Case(leaf, key, [issuing.cert, *(make_ca(f"Padding CA {i}").cert for i in range(5))], [])
    if name == "CA:TRUE leaf":
        ca_leaf = make_ca("web-ca", parent=issuing)
        return Case(ca_leaf.cert, ca_leaf.key, [issuing.cert], [])
    raise AssertionError(name)


# case -> (service answer, model problem, doctor's first failing check)
CASES = {
    "good": ("ok", None, None),
    "expired": ("Untrusted Signing Certificate", trustpath.LEAF, "validity and clock"),
    "foreign CA with the same name": ("Untrusted Signing Certificate", trustpath.FOREIGN_CA,
                                      "chain builds to the trust anchor"),
    "revoked": ("Certificate revoked", trustpath.REVOKED, "not revoked in the published CRL"),
    "revoked intermediate": ("Certificate revoked", trustpath.REVOKED, "not revoked in the published CRL"),
    "chain too long": ("Untrusted Signing Certificate", trustpath.CHAIN_TOO_LONG, "intermediates"),
    "CA:TRUE leaf": ("Untrusted Signing Certificate", trustpath.LEAF, "key usage (end-entity, digitalSignature)"),
}


def pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def doctor_answer(case: Case, root: SimpleCa) -> tuple[str, str | None]:
    crls = [("crl", True, x509.load_pem_x509_crl(data)) for data in case.crls]
    report = diagnose(pem(case.leaf), intermediates=pem(*case.chain), anchor=AnchorView("test", [root.cert], True, crls))
    failed = [c.name for c in report.checks if c.status == FAIL]
    if not failed:
        return "ok", None
    answer = "Certificate revoked" if failed[0] == "not revoked in the published CRL" else "Untrusted Signing Certificate"
    return answer, failed[0]


def emulator_answer(case: Case, root: SimpleCa, emulator: InProcessEmulator) -> str:
    anchor = emulator.trust_anchor(root.cert)
    for data in case.crls:
        emulator.import_crl(anchor, data)
    profile = emulator.profile(ROLE)
    resp = emulator.create_session(certificate=case.leaf, private_key=case.key, chain=case.chain,
                                   trust_anchor_arn=anchor, profile_arn=profile, role_arn=ROLE)
    assert resp.status in (201, 403), (resp.status, resp.body, resp.detail)
    return "ok" if resp.status == 201 else str(resp.message)


def assert_every_front_agrees(case: Case, root: SimpleCa, expected: tuple[str, str | None, str | None],
                              emulator: InProcessEmulator) -> None:
    """trustpath, the doctor and the emulator each give ``expected`` (answer, problem, doctor check)."""
    answer, problem, doctor_check = expected
    parsed = [trustpath.ParsedCrl.of(x509.load_pem_x509_crl(data)) for data in case.crls]
    verdict = trustpath.check(case.leaf, case.chain, [root.cert], parsed, datetime.now(UTC))
    assert verdict.problem == problem, verdict.detail
    assert doctor_answer(case, root) == (answer, doctor_check)
    assert emulator_answer(case, root, emulator) == answer


@pytest.mark.parametrize("name", list(CASES))
def test_doctor_and_emulator_give_the_models_verdict(name: str, hierarchy: dict[str, SimpleCa],
                                                     emulator_app: InProcessEmulator) -> None:
    root, issuing = hierarchy["root"], hierarchy["issuing"]
    assert_every_front_agrees(build_case(name, root, issuing), root, CASES[name], emulator_app)


def test_ca_rules_refuse_in_both_fronts(emulator_app: InProcessEmulator) -> None:
    root = make_ca("Rules Root CA")
    mid = make_ca("Rules Mid CA", parent=root, path_len=0)
    low = make_ca("Rules Low CA", parent=mid)
    leaf, key = make_leaf(low, "deep")
    verdict = trustpath.check(leaf, [low.cert, mid.cert], [root.cert], [], datetime.now(UTC))
    assert (verdict.problem, "pathLen 0" in verdict.detail) == (trustpath.CA_RULE, True)
    case = Case(leaf, key, [low.cert, mid.cert], [])
    assert doctor_answer(case, root) == ("Untrusted Signing Certificate", "chain builds to the trust anchor")
    assert emulator_answer(case, root, emulator_app) == "Untrusted Signing Certificate"


# --------------------------------------------------------------------------------------------
# ML-DSA (FIPS 204) at every level, alone and mixed with EC: pure ML-DSA certificate and CRL
# signatures (no separate hash) and AWS4-X509-MLDSA request signatures

# hierarchy -> (root key type, issuing CA key type)
MLDSA_HIERARCHIES = {
    "EC CAs": ("ec-p256", "ec-p384"),
    "EC root, ML-DSA issuing CA": ("ec-p256", "ml-dsa-65"),
    "all ML-DSA": ("ml-dsa-87", "ml-dsa-65"),
}


@pytest.fixture(scope="module")
def mldsa_hierarchies() -> dict[str, tuple[SimpleCa, SimpleCa]]:
    out = {}
    for kind, (root_type, issuing_type) in MLDSA_HIERARCHIES.items():
        root = make_ca(f"PQ Root CA ({kind})", key_type=root_type)
        out[kind] = (root, make_ca(f"PQ Issuing CA ({kind})", parent=root, key_type=issuing_type))
    return out


def build_mldsa_case(name: str, leaf_type: str, root: SimpleCa, issuing: SimpleCa) -> Case:
    leaf, key = make_leaf(issuing, "pq-1", key_type=leaf_type)
    if name == "good":
        return Case(leaf, key, [issuing.cert], [make_crl(issuing, [12345])])
    if name == "revoked":
        return Case(leaf, key, [issuing.cert], [make_crl(issuing, [leaf.serial_number])])
    if name == "revoked intermediate":  # the root's CRL (pure ML-DSA in the all-ML-DSA hierarchy)
        return Case(leaf, key, [issuing.cert], [make_crl(root, [issuing.cert.serial_number])])
    if name == "revoked by a CRL another key signed":  # same issuer name, foreign ML-DSA key: ignored
        forged = make_crl(issuing, [leaf.serial_number], signer_key=make_ca("x", key_type="ml-dsa-65").key)
        return Case(leaf, key, [issuing.cert], [forged])
    if name == "foreign CA with the same name":
        foreign = make_ca(subject=issuing.cert.subject, parent=make_ca(subject=root.cert.subject,
                                                                       key_type="ml-dsa-65"), key_type="ml-dsa-65")
        leaf, key = make_leaf(foreign, "intruder", key_type=leaf_type)
        return Case(leaf, key, [foreign.cert], [])
    raise AssertionError(name)


# case -> (service answer, model problem, doctor's first failing check)
MLDSA_CASES = {
    "good": ("ok", None, None),
    "revoked": ("Certificate revoked", trustpath.REVOKED, "not revoked in the published CRL"),
    "revoked intermediate": ("Certificate revoked", trustpath.REVOKED, "not revoked in the published CRL"),
    "revoked by a CRL another key signed": ("ok", None, None),
    "foreign CA with the same name": ("Untrusted Signing Certificate", trustpath.FOREIGN_CA,
                                      "chain builds to the trust anchor"),
}


# Every hierarchy with ML-DSA and EC leaves, and the EC one with ML-DSA leaves (EC only: above).
MLDSA_COMBINATIONS = [(kind, leaf) for kind in MLDSA_HIERARCHIES for leaf in ("ml-dsa-65", "ml-dsa-44", "ec-p256")
                      if (kind, leaf) != ("EC CAs", "ec-p256")]


@pytest.mark.parametrize(("kind", "leaf_type"), MLDSA_COMBINATIONS)
@pytest.mark.parametrize("name", list(MLDSA_CASES))
def test_mldsa_chains_get_the_same_verdict(name: str, kind: str, leaf_type: str,
                                           mldsa_hierarchies: dict[str, tuple[SimpleCa, SimpleCa]],
                                           emulator_app: InProcessEmulator) -> None:
    root, issuing = mldsa_hierarchies[kind]
    assert_every_front_agrees(build_mldsa_case(name, leaf_type, root, issuing), root, MLDSA_CASES[name],
                              emulator_app)


def test_mldsa_signature_checks_are_real() -> None:
    """An ML-DSA issuer's key verifies what it signed and nothing else (no hash to confuse)."""
    one, other = make_ca("PQ One", key_type="ml-dsa-44"), make_ca("PQ One", key_type="ml-dsa-44")
    leaf, _ = make_leaf(one, "pq-2", key_type="ml-dsa-65")
    assert trustpath.issued_by(leaf, one.cert) and not trustpath.issued_by(leaf, other.cert)
    crl = trustpath.ParsedCrl.of(x509.load_pem_x509_crl(make_crl(one, [leaf.serial_number])))
    assert crl.signature_valid_for(one.cert) and not crl.signature_valid_for(other.cert)
