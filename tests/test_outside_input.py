"""Every parser of outside input either returns a value or refuses with the project's own error
(``pki.errors.RapkiError``, which the fronts turn into a 4xx or exit 2): nothing else escapes.

Property-based: hypothesis generates the input, so an exception no test author thought of still
fails the test. Bounded: a fixed example budget per parser, no deadline flakiness on a busy machine.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pki.ca.home import Config
from pki.ca.tokens import parse_token
from pki.errors import RapkiError
from pki.rolesanywhere.arns import IamRoleArn, RolesAnywhereArn
from pki.workload.client import verify_request_signature
from pki.x509.crl import parse_reason
from pki.x509.issuance import load_csr
from pki.x509.pem import load_certificates
from pki.x509.serials import parse_serial
from service.api.shapes import REQUEST_SHAPES

BUDGET = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def refused_or_returned(parse: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return parse(*args, **kwargs)
    except RapkiError:
        return None


@BUDGET
@given(st.text(max_size=120) | st.from_regex(r"\Arpk_[eo]_[0-9a-f]{16}\.[A-Za-z0-9_-]{0,50}\Z"), st.sampled_from("eo"))
def test_tokens(text: str, kind: str) -> None:
    token_id = refused_or_returned(parse_token, text, kind)
    assert token_id is None or (len(token_id) == 16 and token_id in text)


@BUDGET
@given(st.text(max_size=80) | st.from_regex(r"\A(0x)?[0-9a-f:]{1,60}\Z"))
@example("9" * 5000)  # past Python's int() digit limit
@example("0x" + "f" * 5000)
def test_serials(text: str) -> None:
    candidates = refused_or_returned(parse_serial, text)
    assert candidates is None or (candidates and all(c > 0 for c in candidates))


@BUDGET
@given(st.text(max_size=200) | st.from_regex(
    r"\Aarn:aws[a-z-]{0,8}:rolesanywhere:[a-z0-9-]{0,20}:[0-9]{0,13}:(trust-anchor|profile|crl|subject|x)/[0-9a-f-]{0,40}\Z"))
def test_roles_anywhere_arns(text: str) -> None:
    arn = refused_or_returned(RolesAnywhereArn.parse, text)
    assert arn is None or RolesAnywhereArn.parse(str(arn)) == arn


@BUDGET
@given(st.text(max_size=200) | st.from_regex(r"\Aarn:aws[a-z-]{0,8}:iam::[0-9]{0,13}:role/[\w+=,.@/-]{0,70}\Z"))
def test_role_arns(text: str) -> None:
    arn = refused_or_returned(IamRoleArn.parse, text)
    assert arn is None or isinstance(arn, IamRoleArn)


@BUDGET
@given(st.binary(max_size=400) | st.builds(
    lambda body, label: b"-----BEGIN " + label + b"-----\n" + body + b"\n-----END " + label + b"-----\n",
    st.binary(max_size=300), st.sampled_from([b"CERTIFICATE", b"CERTIFICATE REQUEST", b"PRIVATE KEY"])))
def test_pem_and_der(data: bytes) -> None:
    refused_or_returned(load_certificates, data)
    refused_or_returned(load_csr, data)


@BUDGET
@given(st.text(max_size=40) | st.none())
def test_revocation_reasons(text: str | None) -> None:
    refused_or_returned(parse_reason, text)


@BUDGET
@given(st.dictionaries(st.sampled_from(["rapki", "ca", "database", "passphrase", "crl", "api"]),
                       st.dictionaries(st.sampled_from(["key_type", "serial_bytes", "url", "sqlite_synchronous", "file",
                                                        "validity", "republish_before", "config_version"]),
                                       json_values, max_size=4) | json_values, max_size=6))
def test_config_documents(doc: dict[str, Any]) -> None:
    config = refused_or_returned(Config.from_toml, doc)
    assert config is None or config.crl_validity > timedelta(0)


@BUDGET
@given(st.sampled_from(REQUEST_SHAPES), st.dictionaries(
    st.sampled_from(["csr", "key_type", "ttl", "format", "password", "sans", "serial", "reason", "profile", "cn",
                     "cn_pattern", "uses", "other"]), json_values, max_size=6))
def test_request_bodies(shape: Any, body: dict[str, Any]) -> None:
    values = refused_or_returned(shape.read, json.loads(json.dumps(body)))
    assert values is None or set(values) == {f.name for f in shape.fields}


@BUDGET
@given(st.dictionaries(st.sampled_from(["X-Rapki-Certificate", "X-Rapki-Timestamp", "X-Rapki-Signature"]),
                       st.text(max_size=80), max_size=3), st.binary(max_size=40))
def test_request_signature_headers(headers: dict[str, str], body: bytes) -> None:
    refused_or_returned(verify_request_signature, headers, "POST", "/v1/renew", body)
