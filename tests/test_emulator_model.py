"""The emulator against the installed botocore ``rolesanywhere`` model: every operation, every member.

The installed botocore is the contract. This test loads its service model and walks every
operation, driving the emulator in process with a real boto3 client (its requests are handed to
the Flask application by a ``before-send`` hook, so botocore serializes, signs and parses exactly
as it does against AWS, and nothing leaves the process):

- **routed**: the operation's method and ``requestUri`` reach the emulator's handler for it, and
  every entry of ``control.ROUTES`` is an operation of the model;
- **handled**: a request carrying every input member succeeds with the model's status code, twice
  with different values; each member is either echoed by the resource the operation returns (a
  member the emulator ignored could not echo both values) or has an explicit effect check below
  (tags, notification settings, attribute mappings, pagination). A member with neither fails, so a
  new member in a newer botocore cannot pass unnoticed;
- **constraints**: every ``required``, length (``min``/``max``), ``pattern``, ``enum`` and range
  in the input shapes is held both ways: the value just outside is refused with an error the
  operation models, the value at the bound (and every enum value) is accepted. Patterns are
  matched as whole strings (the emulator's reading of the service). Values just outside a bound
  are otherwise valid (a padded PEM, a long but well-formed role ARN), so the refusal is for the
  bound. Identifiers in the path that the model lets be ARNs must be accepted as ARNs;
- **produced**: every member of every output shape appears in the emulator's JSON for that
  operation, and the emulator sends no key the model lacks.

``KNOWN_GAPS`` below lists what the emulator does not do yet, each with its reason. An entry names
a check exactly (``"<Operation> <member.path>: <aspect>"`` or ``"<OutputShape>.<member>: produced"``);
without the aspect it covers every check of that member and the members inside it. An entry whose
checks all pass is stale and fails the test (take it out); an entry naming a member the installed
botocore does not have is inert, so the list can name what a newer botocore adds.

To hold the emulator against a newer model without installing it, point ``AWS_DATA_PATH`` at a
folder holding ``rolesanywhere/2018-05-10/service-2.json`` from that botocore.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
from botocore import xform_name
from botocore.awsrequest import AWSPreparedRequest, AWSResponse
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.model import OperationModel, Shape, StructureShape

from service.emulator import create_app
from service.emulator.control import ROUTES
from tests.emulator_fixture import InProcessEmulator, SimpleCa, make_ca, make_crl, make_leaf, pem_of

MODEL = boto3.client("rolesanywhere", region_name="us-east-1").meta.service_model
OPERATIONS = sorted(MODEL.operation_names)

# Checks the emulator cannot pass yet, each with its reason (none today: the entries for aliases,
# CRL distribution points, TIP, ARNs as identifiers and the 1.44 bounds were closed in issue 15).
KNOWN_GAPS: dict[str, str] = {}

ACCOUNT = "123456789012"
ROLE_PREFIX = f"arn:aws:iam::{ACCOUNT}:role/"
POLICY_PREFIX = "arn:aws:iam::aws:policy/"
INVALID_ENUM = "NOT_A_MODELED_VALUE"
# Strings tried, in order, when a value must break a member's pattern (and keep its length bounds).
PATTERN_BREAKERS = ("a!b", "bad;name", "1a", "a/", "a//b", "-a", "arn:aws:s3:::bucket", "é")
ID_MEMBERS = ("trustAnchorId", "profileId", "crlId", "subjectId")


# --------------------------------------------------------------------------------------------
# boto3 against the in-process application


class _Body:
    """What botocore reads a response body from."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.data


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    error: str | None = None  # the X-Amzn-ErrorType of a refusal


@dataclass
class Emulator:
    """One emulator application and two boto3 clients for it (with and without client-side validation)."""

    app: Any
    raw: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # op -> JSON bodies of its successes

    def __post_init__(self) -> None:
        self.flask = self.app.test_client()
        self.checked = boto3_client(validate=True)
        self.unchecked = boto3_client(validate=False)
        for client in (self.checked, self.unchecked):
            client.meta.events.register("before-send.rolesanywhere", self._forward)

    def _forward(self, request: AWSPreparedRequest, event_name: str, **_: Any) -> AWSResponse:
        url = urlsplit(request.url)
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        resp = self.flask.open(url.path, method=request.method, query_string=url.query, data=request.body or b"",
                               headers=headers)  # fmt: skip
        data = resp.get_data()
        if resp.status_code < 300:
            self.raw.setdefault(event_name.rsplit(".", 1)[-1], []).append(json.loads(data or b"{}"))
        return AWSResponse(request.url, resp.status_code, dict(resp.headers), _Body(data))

    def call(self, op: str, params: dict[str, Any], *, validate: bool = True) -> Reply:
        client = self.checked if validate else self.unchecked
        try:
            result = getattr(client, xform_name(op))(**params)
        except ClientError as exc:
            meta = exc.response["ResponseMetadata"]
            return Reply(meta["HTTPStatusCode"], exc.response, exc.response["Error"]["Code"])
        return Reply(result["ResponseMetadata"]["HTTPStatusCode"], result)

    def ok(self, op: str, params: dict[str, Any]) -> dict[str, Any]:
        reply = self.call(op, params)
        assert reply.error is None, (op, reply.status, reply.body)
        return reply.body


def boto3_client(*, validate: bool) -> Any:
    return boto3.session.Session().client(
        "rolesanywhere", region_name="us-east-1", endpoint_url="http://localhost",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=Config(retries={"total_max_attempts": 1, "mode": "standard"}, parameter_validation=validate),
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# Values: generated from the model, with meaning where the emulator reads the value


@dataclass
class Resources:
    """The resources one request refers to (created fresh for it)."""

    trustAnchorId: str = ""
    trustAnchorArn: str = ""
    profileId: str = ""
    profileArn: str = ""
    crlId: str = ""
    crlArn: str = ""
    subjectId: str = ""
    alias_arns: dict[str, str] = field(default_factory=dict)  # id member -> the resource's alias ARN
    nextToken: str = ""
    first_page: list[Any] = field(default_factory=list)  # the items of page 1, for the page 2 request
    profile_tags: dict[str, str] = field(default_factory=dict)


def _fits(shape: Shape, text: str) -> bool:
    meta = shape.metadata
    if not meta.get("min", 0) <= len(text) <= meta.get("max", len(text)):
        return False
    pattern = meta.get("pattern")
    return pattern is None or re.fullmatch(pattern, text) is not None


def _text(shape: Shape, variant: int) -> str:
    for candidate in (f"Value-{variant}", f"value{variant}", f"v{variant}", str(uuid.UUID(int=variant + 1))):
        if _fits(shape, candidate):
            return candidate
    raise AssertionError(f"no value generated for {shape.name}: add it to the semantic values of this test")


def _text_of_length(shape: Shape, length: int) -> str | None:
    pattern = shape.metadata.get("pattern")
    for char in "aA0":
        if pattern is None or re.fullmatch(pattern, char * length):
            return char * length
    return None


class Values:
    """Request values for one operation: generic ones from the shapes, meaningful ones by member name."""

    def __init__(self, ca: SimpleCa, res: Resources) -> None:
        self.ca = ca
        self.res = res

    # -- values the emulator reads for their meaning --------------------------------------------

    def source(self, source_type: str, variant: int = 0) -> dict[str, Any]:
        if source_type == "CERTIFICATE_BUNDLE":
            return {"sourceType": source_type, "sourceData": {"x509CertificateData": pem_of(self.ca.cert)}}
        if source_type == "AWS_ACM_PCA":
            pca = f"arn:aws:acm-pca:us-east-1:{ACCOUNT}:certificate-authority/{uuid.UUID(int=variant + 7)}"
            return {"sourceType": source_type, "sourceData": {"acmPcaArn": pca}}
        return {"sourceType": source_type}

    def whole(self, name: str, variant: int) -> Any:
        """A member's whole value when it carries meaning, else None."""
        if name == "source":
            return self.source(("CERTIFICATE_BUNDLE", "AWS_ACM_PCA")[variant], variant)
        if name == "crlData":
            return make_crl(self.ca, [0x1000 + variant] if variant else [])
        if name == "sessionPolicy":
            return json.dumps({"Version": "2012-10-17", "Statement": [
                {"Sid": f"S{variant}", "Effect": "Allow", "Action": "s3:GetObject", "Resource": "*"}]})  # fmt: skip
        if name == "resourceArn":
            return self.res.profileArn
        if name == "pageSize":
            return 1
        if name == "aliasName":  # unique per resource type: every request gets its own
            return f"alias-{variant}/{uuid.uuid4().hex}"
        if name in ("trustAnchorArn", "nextToken", *ID_MEMBERS):
            return getattr(self.res, name)
        return None

    def item(self, name: str, variant: int, index: int) -> Any:
        """An item of a list member when it carries meaning, else None."""
        if name == "roleArns":
            return f"{ROLE_PREFIX}role-{variant}-{index}"
        if name == "managedPolicyArns":
            return f"{POLICY_PREFIX}Policy{variant}x{index}"
        if name == "tags":
            return {"key": f"key-{variant}-{index}", "value": f"value-{variant}"}
        if name == "tagKeys":
            return f"key-{variant}-{index}"
        if name == "specifiers":
            return f"spec-{variant}-{index}"
        return None

    def padded(self, name: str, value: Any, length: int) -> Any:
        """``value`` (meaningful) made exactly ``length`` long and still valid, or None if it cannot be."""
        if name in ("x509CertificateData", "sessionPolicy") and isinstance(value, str) and len(value) <= length:
            return value + (" " if name == "sessionPolicy" else "\n") * (length - len(value))
        if name == "aliasName" and len(value) <= length:
            return value + "a" * (length - len(value))
        if name == "crlData" and len(value) <= length:
            return value + b"\n" * (length - len(value))
        if name == "roleArns" and length > len(ROLE_PREFIX):
            return ROLE_PREFIX + "r" * (length - len(ROLE_PREFIX))
        if name == "managedPolicyArns" and length > len(POLICY_PREFIX):
            return POLICY_PREFIX + "P" * (length - len(POLICY_PREFIX))
        return None

    # -- generic values -------------------------------------------------------------------------

    def value(self, shape: Shape, name: str, variant: int) -> Any:
        whole = self.whole(name, variant)
        if whole is not None:
            return whole
        if shape.type_name == "structure":
            assert isinstance(shape, StructureShape)
            members = list(shape.members.items())
            if shape.metadata.get("union"):
                members = [members[variant % len(members)]]
            return {m: self.value(s, m, variant) for m, s in members}
        if shape.type_name == "list":
            return [self.list_item(shape, name, variant, 0)]
        if shape.type_name == "string":
            enum = shape.metadata.get("enum")
            return enum[variant % len(enum)] if enum else _text(shape, variant)
        if shape.type_name == "integer":
            meta = shape.metadata
            return meta.get("max", 2) if variant else meta.get("min", 1)
        if shape.type_name == "boolean":
            return variant == 0
        if shape.type_name == "blob":
            return f"blob-{variant}".encode()
        raise AssertionError(f"no value generated for {shape.name} ({shape.type_name})")

    def list_item(self, shape: Shape, name: str, variant: int, index: int) -> Any:
        item = self.item(name, variant, index)
        if item is not None:
            return item
        member = shape.member  # type: ignore[attr-defined]  # a ListShape's item shape
        value = self.value(member, name, variant)
        if isinstance(value, str) and not member.metadata.get("enum") and index:
            value = (value + str(index))[: member.metadata.get("max", len(value) + 9)]
        return value

    def request(self, op: OperationModel, variant: int, *, only_required: bool = False) -> dict[str, Any]:
        shape = op.input_shape
        if shape is None:
            return {}
        names = shape.required_members if only_required else list(shape.members)
        return {n: self.value(shape.members[n], n, variant) for n in names}


# --------------------------------------------------------------------------------------------
# Walking the model


@dataclass
class Member:
    """One input member reached from an operation's input: its path (``[]`` for a list's first item)."""

    path: tuple[str, ...]
    shape: Shape
    required: bool
    location: str

    @property
    def name(self) -> str:
        return next(p for p in reversed(self.path) if p != "[]")

    @property
    def dotted(self) -> str:
        return ".".join(self.path).replace(".[]", "[]")


def input_members(shape: Shape | None, prefix: tuple[str, ...] = ()) -> Iterator[Member]:
    if shape is None or shape.type_name != "structure":
        return
    assert isinstance(shape, StructureShape)
    for name, member in shape.members.items():
        path = (*prefix, name)
        location = member.serialization.get("location", "")
        yield Member(path, member, name in shape.required_members, location)
        if member.type_name == "list":
            item: Shape = member.member  # type: ignore[attr-defined]  # a ListShape's item shape
            if item.type_name == "structure":
                yield from input_members(item, (*path, "[]"))
            else:
                yield Member((*path, "[]"), item, False, location)
        else:
            yield from input_members(member, path)


def _parent(request: dict[str, Any], path: tuple[str, ...]) -> Any:
    """What holds ``path[-1]``: a dict, or the list whose first item ``[]`` is; None if absent."""
    node: Any = request
    for key in path[:-1]:
        if key == "[]":
            node = node[0] if isinstance(node, list) and node else None
        else:
            node = node.get(key) if isinstance(node, dict) else None
        if node is None:
            return None
    return node


def get_at(request: dict[str, Any], path: tuple[str, ...]) -> Any:
    parent = _parent(request, path)
    if path[-1] == "[]":
        return parent[0] if parent else None
    return parent.get(path[-1]) if isinstance(parent, dict) else None


def set_at(request: dict[str, Any], path: tuple[str, ...], value: Any) -> bool:
    parent = _parent(request, path)
    assert parent is not None, path
    parent[0 if path[-1] == "[]" else path[-1]] = value
    return True


def drop_at(request: dict[str, Any], path: tuple[str, ...]) -> bool:
    parent = _parent(request, path)
    assert isinstance(parent, dict), path
    parent.pop(path[-1], None)
    return True


def resource_shape(op: OperationModel) -> tuple[str, StructureShape] | None:
    """The single resource structure an operation returns (``profile``, ``trustAnchor``, ...)."""
    shape = op.output_shape
    if shape is None:
        return None
    assert isinstance(shape, StructureShape)
    found = [(n, s) for n, s in shape.members.items() if s.type_name == "structure"]
    return found[0] if len(found) == 1 else None  # type: ignore[return-value]


def echoes(sent: Any, got: Any) -> bool:
    if isinstance(sent, dict):
        return isinstance(got, dict) and all(k in got and echoes(v, got[k]) for k, v in sent.items())
    if isinstance(sent, list):
        return isinstance(got, list) and len(sent) == len(got) and all(map(echoes, sent, got))
    return bool(sent == got)


# --------------------------------------------------------------------------------------------
# The walk: set-ups, effect checks, constraint checks


EVENT_CUSTOM = {"enabled": False, "threshold": 7}
# Which member of a returned resource holds its ARN (what ListTagsForResource takes).
RESOURCE_ARN = {"profile": "profileArn", "trustAnchor": "trustAnchorArn", "crl": "crlArn"}
# Output members the model documents as returned only by an update that changed them ("It isn't
# returned ... by other operations"): produced by Update*, absent from every other answer.
UPDATE_ONLY_OUTPUTS = {"previousAliasName"}
# What fills a list beyond one page (subjects come from CreateSession at start).
LIST_FILLERS = {"ListProfiles": "CreateProfile", "ListTrustAnchors": "CreateTrustAnchor", "ListCrls": "ImportCrl"}


class Walk:
    """Runs the checks against one emulator; ``gaps`` (id -> what happened) and ``performed`` (ids)."""

    def __init__(self) -> None:
        self.emu = Emulator(create_app(None))
        self.ca = make_ca("Model Walk Root")
        self.gaps: dict[str, str] = {}
        self.performed: set[str] = set()
        self._make_subjects()

    def check(self, check_id: str, passed: bool, detail: str = "") -> None:
        self.performed.add(check_id)
        if not passed:
            self.gaps[check_id] = detail

    # -- resources ------------------------------------------------------------------------------

    def create(self, op: str, variant: int, res: Resources | None = None) -> dict[str, Any]:
        params = Values(self.ca, res or Resources()).request(MODEL.operation_model(op), variant)
        return self.emu.ok(op, params)

    def _make_subjects(self) -> None:
        """Three subjects through CreateSession, with instance properties, for GetSubject/ListSubjects."""
        role = f"{ROLE_PREFIX}subject-role"
        source = Values(self.ca, Resources()).source("CERTIFICATE_BUNDLE")
        anchor = self.emu.ok("CreateTrustAnchor", {"name": "subjects", "enabled": True, "source": source})
        profile = self.emu.ok("CreateProfile", {"name": "subjects", "enabled": True, "roleArns": [role]})
        session = InProcessEmulator(self.emu.app)
        for n in range(3):
            cert, key = make_leaf(self.ca, f"model-walk-{n}")
            reply = session.create_session(
                certificate=cert, private_key=key, trust_anchor_arn=anchor["trustAnchor"]["trustAnchorArn"],
                profile_arn=profile["profile"]["profileArn"], role_arn=role,
                extra_body={"instanceProperties": {"host": f"h{n}"}},
            )  # fmt: skip
            assert reply.status == 201, (reply.body, reply.detail)

    def resources(self, op: str, variant: int) -> Resources:
        """Fresh resources for one request of ``op``, made with the other variant's values."""
        model = MODEL.operation_model(op)
        names = set(model.input_shape.members) if model.input_shape else set()
        other = 1 - variant
        res = Resources()
        if names & {"trustAnchorId", "trustAnchorArn", "crlId"} or op == "ListCrls":
            anchor = self.create("CreateTrustAnchor", other)["trustAnchor"]
            res.trustAnchorId, res.trustAnchorArn = anchor["trustAnchorId"], anchor["trustAnchorArn"]
            res.alias_arns["trustAnchorId"] = anchor.get("aliasArn", "")
        if names & {"profileId", "resourceArn"}:
            profile = self.create("CreateProfile", other)["profile"]
            res.profileId, res.profileArn = profile["profileId"], profile["profileArn"]
            res.alias_arns["profileId"] = profile.get("aliasArn", "")
            res.profile_tags = self.tags_of(res.profileArn)
        if "crlId" in names:
            crl = self.create("ImportCrl", other, res)["crl"]
            res.crlId, res.crlArn = crl["crlId"], crl["crlArn"]
            res.alias_arns["crlId"] = crl.get("aliasArn", "")
        if "subjectId" in names:
            res.subjectId = self.emu.ok("ListSubjects", {})["subjects"][0]["subjectId"]
        if op == "ResetNotificationSettings":
            custom = [{"event": e, "channel": "ALL", **EVENT_CUSTOM} for e in _enum("NotificationEvent")]
            self.emu.ok("PutNotificationSettings", {"trustAnchorId": res.trustAnchorId, "notificationSettings": custom})
        if op == "DeleteAttributeMapping":
            rules = [{"specifier": f"spec-{variant}-0"}, {"specifier": "kept"}]
            for certificate_field in _enum("CertificateField"):
                self.emu.ok("PutAttributeMapping", {"profileId": res.profileId, "certificateField": certificate_field,
                                                    "mappingRules": rules})  # fmt: skip
        if op == "UntagResource":
            tags = [{"key": f"key-{variant}-0", "value": "gone"}, {"key": "kept", "value": "kept"}]
            self.emu.ok("TagResource", {"resourceArn": res.profileArn, "tags": tags})
        if op == "TagResource":  # room for the most tags one request may carry
            self.emu.ok("UntagResource", {"resourceArn": res.profileArn, "tagKeys": list(res.profile_tags)})
        for n in range(2 if op in LIST_FILLERS else 0):
            self.create(LIST_FILLERS[op], n, res)
        if "nextToken" in names:  # the request for page 2
            page = self.emu.ok(op, {"pageSize": 1})
            res.nextToken = page["nextToken"]
            res.first_page = [item for item in page.values() if isinstance(item, list)]
        return res

    def tags_of(self, arn: str) -> dict[str, str]:
        return {t["key"]: t["value"] for t in self.emu.ok("ListTagsForResource", {"resourceArn": arn})["tags"]}

    # -- effect checks (for members no output member of the same name echoes) -------------------

    def effect(self, op: str, name: str, res: Resources, sent: dict[str, Any], got: dict[str, Any]) -> bool | None:
        """Whether ``sent[name]`` had its effect; None when no effect check applies (echo is used)."""
        resource = resource_shape(MODEL.operation_model(op))
        detail = got.get(resource[0], {}) if resource else {}
        if name == "tags" or (op == "TagResource" and name == "resourceArn"):
            arn = sent.get("resourceArn") or detail.get(RESOURCE_ARN.get(resource[0] if resource else "", ""), "")
            tags = self.tags_of(arn)
            return all(tags.get(t["key"]) == t["value"] for t in sent["tags"])
        if op == "UntagResource" and name in ("resourceArn", "tagKeys"):
            tags = self.tags_of(res.profileArn)
            return "kept" in tags and not set(sent["tagKeys"]) & set(tags)
        if op == "ListTagsForResource" and name == "resourceArn":
            return bool(res.profile_tags) and {t["key"]: t["value"] for t in got["tags"]} == res.profile_tags
        if name == "notificationSettings":
            settings = {(s["event"], s.get("channel", "ALL")): s for s in detail.get("notificationSettings", [])}
            for item in sent["notificationSettings"]:
                out = settings.get((item["event"], item.get("channel", "ALL")), {})
                if out.get("enabled") != item["enabled"] or out.get("threshold") != item.get("threshold", out.get(
                        "threshold")):  # fmt: skip
                    return False
            return True
        if name == "notificationSettingKeys":
            reset = {k["event"] for k in sent["notificationSettingKeys"]}
            for s in detail.get("notificationSettings", []):
                customized = all(s.get(k) == v for k, v in EVENT_CUSTOM.items())
                if customized == (s["event"] in reset):
                    return False
            return True
        if op in ("PutAttributeMapping", "DeleteAttributeMapping") and name != "profileId":
            mapping = next((m for m in detail.get("attributeMappings", [])
                            if m.get("certificateField") == sent["certificateField"]), {})  # fmt: skip
            specifiers = {r.get("specifier") for r in mapping.get("mappingRules", [])}
            if op == "PutAttributeMapping":
                return {r["specifier"] for r in sent["mappingRules"]} <= specifiers
            return "kept" in specifiers and not set(sent.get("specifiers", [])) & specifiers
        if name in ("pageSize", "nextToken"):
            items = [item for item in got.values() if isinstance(item, list)]
            return len(items) == 1 and len(items[0]) == 1 and items != res.first_page
        return None

    # -- one operation --------------------------------------------------------------------------

    def operation(self, op: str) -> None:
        model = MODEL.operation_model(op)
        expected = model.http.get("responseCode", 200)
        resource = resource_shape(model)
        members = list(input_members(model.input_shape))
        for variant in (0, 1):
            res = self.resources(op, variant)
            sent = Values(self.ca, res).request(model, variant)
            reply = self.emu.call(op, sent)
            self.check(f"{op} (all members): accepted", reply.status == expected,
                       f"status {reply.status} {reply.error or ''}, expected {expected}: {reply.body}")  # fmt: skip
            if reply.error:
                continue
            for member in (m for m in members if len(m.path) == 1):
                check_id = f"{op} {member.name}: handled"
                handled = self.effect(op, member.name, res, sent, reply.body)
                if handled is None:
                    if resource is None or member.name not in resource[1].members:
                        self.check(check_id, False, "no output member echoes it and this test has no effect check")
                        continue
                    handled = echoes(sent[member.name], reply.body.get(resource[0], {}).get(member.name))
                self.check(check_id, handled, f"sent {sent[member.name]!r:.200}; answer {reply.body!r:.400}")
        minimal = Values(self.ca, self.resources(op, 0)).request(model, 0, only_required=True)
        reply = self.emu.call(op, minimal)
        self.check(f"{op} (required members only): accepted", reply.status == expected,
                   f"status {reply.status} {reply.error or ''}: {reply.body}")  # fmt: skip
        for member in members:
            self.constraints(op, member)

    # -- constraints ----------------------------------------------------------------------------

    def _send(self, op: str, change: Callable[[dict[str, Any], Values], bool]) -> Reply | None:
        """The variant-0 request of ``op`` as ``change`` edits it (None when it cannot be built)."""
        values = Values(self.ca, self.resources(op, 0))
        request = values.request(MODEL.operation_model(op), 0)
        if not change(request, values):
            return None
        return self.emu.call(op, request, validate=False)

    def refused(self, op: str, check_id: str, what: str, change: Callable[[dict[str, Any], Values], bool]) -> None:
        modeled = {e.name for e in MODEL.operation_model(op).error_shapes}
        reply = self._send(op, change)
        if reply is not None:
            ok = reply.error in modeled and 400 <= reply.status < 500
            self.check(check_id, ok, f"{what}: status {reply.status} {reply.error or ''}, modeled {sorted(modeled)}")

    def accepted(self, op: str, check_id: str, what: str, change: Callable[[dict[str, Any], Values], bool]) -> None:
        expected = MODEL.operation_model(op).http.get("responseCode", 200)
        reply = self._send(op, change)
        if reply is not None:
            self.check(check_id, reply.status == expected, f"{what}: status {reply.status} {reply.error or ''}")

    def constraints(self, op: str, m: Member) -> None:
        prefix = f"{op} {m.dotted}"
        meta, kind = m.shape.metadata, m.shape.type_name
        if m.required and m.location != "uri":
            self.refused(op, f"{prefix}: required", "left out", lambda r, v: drop_at(r, m.path))
        if kind == "list":
            self._list_bounds(op, prefix, m)
        if kind in ("string", "blob") and not meta.get("enum"):
            self._length_bounds(op, prefix, m)
        if kind == "string" and meta.get("pattern"):
            breaker = next((b for b in PATTERN_BREAKERS if not _fits(m.shape, b)
                            and meta.get("min", 0) <= len(b) <= meta.get("max", len(b))), None)  # fmt: skip
            if breaker is None and meta.get("min", 0) > 1:
                breaker = "!" * meta["min"]
            if breaker is not None:
                self.refused(op, f"{prefix}: pattern", repr(breaker), lambda r, v: set_at(r, m.path, breaker))
        if m.location == "uri" and m.name in ID_MEMBERS:
            self._id_as_arn(op, prefix, m)
        if meta.get("enum"):
            self.refused(op, f"{prefix}: enum", INVALID_ENUM, lambda r, v: set_at(r, m.path, INVALID_ENUM))
            for value in meta["enum"]:
                self.accepted(op, f"{prefix}: enum {value}", repr(value),
                              lambda r, v, x=value: self._set_enum(r, v, m, x))  # fmt: skip
        if kind == "integer":
            for bound, step in (("min", -1), ("max", 1)):
                if bound in meta:
                    edge = meta[bound]
                    self.refused(op, f"{prefix}: {bound} {edge}", str(edge + step),
                                 lambda r, v, x=edge + step: set_at(r, m.path, x))  # fmt: skip
                    self.accepted(op, f"{prefix}: {bound} {edge}", str(edge), lambda r, v, x=edge: set_at(r, m.path, x))

    @staticmethod
    def _set_enum(request: dict[str, Any], values: Values, m: Member, value: str) -> bool:
        if m.name == "sourceType":  # the source data must match its type
            return set_at(request, m.path[:-1], values.source(value))
        return set_at(request, m.path, value)

    @staticmethod
    def _sized(m: Member, values: Values, request: dict[str, Any], length: int) -> Any:
        """A valid value of ``length`` for ``m``, or None when there is none to build."""
        if m.location == "uri" or m.name in ("resourceArn", "trustAnchorArn", "nextToken", "acmPcaArn"):
            return None  # identifiers of resources and tokens are not free text
        current = get_at(request, m.path)
        if current is None:
            return None
        padded = values.padded(m.name, current, length)
        if padded is not None or values.whole(m.name, 0) is not None:
            return padded
        if m.shape.type_name == "blob":
            return b"b" * length
        return _text_of_length(m.shape, length)

    def _length_bounds(self, op: str, prefix: str, m: Member) -> None:
        meta = m.shape.metadata
        if meta.get("min", 0) > 0 and m.location != "uri":
            short: Any = b"" if m.shape.type_name == "blob" else "a" * (meta["min"] - 1)
            self.refused(
                op, f"{prefix}: min {meta['min']}", f"length {len(short)}", lambda r, v: set_at(r, m.path, short)
            )
        if "max" not in meta:
            return
        for length, check in ((meta["max"] + 1, self.refused), (meta["max"], self.accepted)):

            def change(r: dict[str, Any], v: Values, n: int = length) -> bool:
                value = self._sized(m, v, r, n)
                return value is not None and set_at(r, m.path, value)

            check(op, f"{prefix}: max {meta['max']}", f"length {length}", change)

    def _list_bounds(self, op: str, prefix: str, m: Member) -> None:
        if "max" not in m.shape.metadata:
            return
        most = m.shape.metadata["max"]
        for count, check in ((most + 1, self.refused), (most, self.accepted)):

            def change(r: dict[str, Any], v: Values, n: int = count) -> bool:
                return set_at(r, m.path, [v.list_item(m.shape, m.name, 0, i) for i in range(n)])

            check(op, f"{prefix}: max {most}", f"{count} items", change)

    def _id_as_arn(self, op: str, prefix: str, m: Member) -> None:
        """The resource's ARN, then its alias ARN, in place of the id, where the model's pattern takes them."""
        for what in ("ARN", "alias ARN"):
            res = self.resources(op, 0)
            arn = {"trustAnchorId": res.trustAnchorArn, "profileId": res.profileArn, "crlId": res.crlArn}.get(m.name)
            if what == "alias ARN":
                arn = res.alias_arns.get(m.name)
            if not arn or not _fits(m.shape, arn):
                continue  # this model takes only the id here
            model = MODEL.operation_model(op)
            request = Values(self.ca, res).request(model, 0)
            request[m.name] = arn
            reply = self.emu.call(op, request)
            self.check(f"{prefix}: {what} in place of the id", reply.status == model.http.get("responseCode", 200),
                       f"{arn}: status {reply.status} {reply.error or ''}")  # fmt: skip

    # -- outputs --------------------------------------------------------------------------------

    def outputs(self, ops: list[str]) -> None:
        """Every output member appears in some answer of each operation returning it; nothing else does."""
        missing: dict[str, set[str]] = {}
        for op in ops:
            shape = MODEL.operation_model(op).output_shape
            if shape is None:
                continue
            bodies = self.emu.raw.get(op, [])
            assert bodies, f"{op} never succeeded, so its output cannot be checked"
            seen: set[tuple[str, str]] = set()
            for body in bodies:
                self._walk_output(shape, body, seen)
            entered = {container for container, _ in seen}
            for container, name in _output_members(shape):
                if container not in entered:
                    continue  # inside a member never produced, which is the gap reported
                if name in UPDATE_ONLY_OUTPUTS and not op.startswith("Update"):
                    self.check(f"{op} {container}.{name}: only in update answers", (container, name) not in seen)
                    continue
                check_id = f"{container}.{name}: produced"
                self.performed.add(check_id)
                if (container, name) not in seen:
                    missing.setdefault(check_id, set()).add(op)
        for check_id, missed in missing.items():
            self.check(check_id, False, f"absent from every answer of {', '.join(sorted(missed))}")

    def _walk_output(self, shape: Shape, value: Any, seen: set[tuple[str, str]]) -> None:
        if shape.type_name == "structure" and isinstance(value, dict):
            assert isinstance(shape, StructureShape)
            seen.add((shape.name, ""))  # entered, even when empty
            for key, item in value.items():
                check_id = f"{shape.name}.{key}: in the model"
                self.check(check_id, key in shape.members, f"the emulator sends {key!r}, which the model lacks")
                if key in shape.members and item is not None:
                    seen.add((shape.name, key))
                    self._walk_output(shape.members[key], item, seen)
        elif shape.type_name == "list" and isinstance(value, list):
            for item in value:
                self._walk_output(shape.member, item, seen)  # type: ignore[attr-defined]  # ListShape
        elif shape.type_name == "map" and isinstance(value, dict):
            for item in value.values():
                self._walk_output(shape.value, item, seen)  # type: ignore[attr-defined]  # MapShape


def _enum(shape_name: str) -> list[str]:
    return list(MODEL.shape_for(shape_name).metadata["enum"])


def _output_members(shape: Shape, done: set[str] | None = None) -> Iterator[tuple[str, str]]:
    done = set() if done is None else done
    if shape.name in done:
        return
    done.add(shape.name)
    if shape.type_name == "structure":
        assert isinstance(shape, StructureShape)
        for name, member in shape.members.items():
            yield shape.name, name
            yield from _output_members(member, done)
    elif shape.type_name == "list":
        yield from _output_members(shape.member, done)  # type: ignore[attr-defined]  # ListShape
    elif shape.type_name == "map":
        yield from _output_members(shape.value, done)  # type: ignore[attr-defined]  # MapShape


# --------------------------------------------------------------------------------------------
# Tests


def _covers(key: str, check_id: str) -> bool:
    """A KNOWN_GAPS key covers its own check, and without an aspect every check of the member and inside it."""
    return check_id == key or check_id.startswith((f"{key}:", f"{key}.", f"{key}["))


def _problems(walk: Walk, in_scope: Callable[[str], bool]) -> list[str]:
    gaps = {k: v for k, v in walk.gaps.items() if in_scope(k)}
    unexpected = [f"{k}  ({v})" for k, v in sorted(gaps.items()) if not any(_covers(key, k) for key in KNOWN_GAPS)]
    stale = [
        f"{key}  (in KNOWN_GAPS, but the emulator does it now: remove the entry)"
        for key in KNOWN_GAPS
        if in_scope(key) and any(_covers(key, c) for c in walk.performed) and not any(_covers(key, g) for g in gaps)
    ]
    return unexpected + stale


def _operation_of(check_id: str) -> str:
    head = check_id.split(":", 1)[0]
    return head.split(" ", 1)[0] if " " in head else ""


@pytest.fixture(scope="module")
def walk() -> Walk:
    walk = Walk()
    for op in OPERATIONS:
        walk.operation(op)
    walk.outputs(OPERATIONS)
    return walk


def _flask_rule(op: OperationModel) -> str:
    """The emulator's rule for ``op``: a label whose shape takes ARNs (which hold "/") is a path."""
    path = op.http["requestUri"].split("?", 1)[0]
    members = op.input_shape.members if op.input_shape else {}

    def label(match: re.Match[str]) -> str:
        name, greedy = match[1], match[2]
        takes_arn = "arn:" in members[name].metadata.get("pattern", "") if name in members else False
        return f"<path:{name}>" if greedy or takes_arn else f"<{name}>"

    return re.sub(r"\{(\w+)(\+?)\}", label, path)


def test_every_operation_is_routed_and_every_route_is_an_operation() -> None:
    adapter = create_app(None).url_map.bind("localhost")
    routes = {(method, rule): name for method, rule, name, _ in ROUTES}
    problems = []
    for op in OPERATIONS:
        http = MODEL.operation_model(op).http
        rule = _flask_rule(MODEL.operation_model(op))
        if routes.get((http["method"], rule)) != op:
            problems.append(f"{op}: {http['method']} {rule} is not in control.ROUTES")
            continue
        path = re.sub(r"<[^>]+>", str(uuid.UUID(int=1)), rule)
        endpoint, _ = adapter.match(path, method=http["method"])
        if endpoint != op + http["method"]:
            problems.append(f"{op}: {http['method']} {path} reaches {endpoint}")
    problems += [f"{name}: in control.ROUTES, not in the model" for name in routes.values() if name not in OPERATIONS]
    assert not problems, problems


@pytest.mark.parametrize("op", OPERATIONS)
def test_operation_members_and_constraints(walk: Walk, op: str) -> None:
    problems = _problems(walk, lambda check_id: _operation_of(check_id) == op)
    assert not problems, f"{op} and the installed botocore model disagree:\n" + "\n".join(problems)


def test_every_output_member_is_produced(walk: Walk) -> None:
    problems = _problems(walk, lambda check_id: _operation_of(check_id) == "")
    assert not problems, "outputs and the installed botocore model disagree:\n" + "\n".join(problems)


def test_known_gaps_are_well_formed() -> None:
    for key, reason in KNOWN_GAPS.items():
        assert reason.strip(), key
        assert re.fullmatch(r"[A-Z]\w+ [\w.\[\]]+(: .+)?|[A-Z]\w+\.\w+: produced", key), key


def test_the_walk_catches_an_emulator_that_drifts(monkeypatch: pytest.MonkeyPatch) -> None:
    """An ignored member (and so its bounds), a dropped output member and a loosened limit all show."""
    from service.emulator import control

    original = control.ControlPlane.update_profile

    def forgetful(self: control.ControlPlane, ctx: control.Ctx, profileId: str) -> tuple[int, dict[str, Any]]:
        ctx.body.pop("durationSeconds", None)
        status, body = original(self, ctx, profileId)
        body["profile"].pop("createdBy", None)
        return status, body

    monkeypatch.setattr(control.ControlPlane, "update_profile", forgetful)
    monkeypatch.setattr(control, "MAX_CERT_DATA", 10 * control.MAX_CERT_DATA)
    walk = Walk()
    for op in ("UpdateProfile", "CreateTrustAnchor"):
        walk.operation(op)
    walk.outputs(["UpdateProfile"])
    assert "UpdateProfile durationSeconds: handled" in walk.gaps
    assert "UpdateProfile durationSeconds: min 900" in walk.gaps
    assert "ProfileDetail.createdBy: produced" in walk.gaps
    bundle = "CreateTrustAnchor source.sourceData.x509CertificateData: max "
    assert any(check_id.startswith(bundle) for check_id in walk.gaps), sorted(walk.gaps)
