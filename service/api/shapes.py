"""The request bodies of the enrollment API, declared once.

Each JSON body an endpoint reads is a ``Shape`` here: its fields, each with its JSON type, whether
it is required, its allowed values or bounds, its default and its description. Both sides of the
API are derived from these declarations, so they cannot drift apart:

* ``Shape.schema()`` is the body's JSON Schema: ``service.api.openapi`` publishes it as the
  component ``Shape.name`` and the paths refer to it;
* ``Shape.read(body)`` is the only check of a body's shape the endpoints make (``routes``,
  ``enrollment``, and so the fast path in ``direct``): unknown fields, types, allowed values and
  bounds refused with 400 ``invalid_input`` and a message naming the field; defaults filled in.

A field's value ``null`` counts as the field left out (the schema says so with its types). What a
single field cannot say (exactly one of ``csr`` or ``key_type``, a password with PKCS#12, a CSR
that parses) is checked by the code that uses the values and written in the shape's description.
To add or change a field of a request, change it here; ``tests/test_api_shapes.py`` holds the
document, the validation and the Flask routes together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pki.ca.tokens import MAX_USES
from pki.errors import InvalidInput
from pki.x509.keys import KeyType

FORMATS = ("pem", "pkcs12")
MIN_PKCS12_PASSWORD = 8

JSON_TYPES: dict[type, str] = {str: "string", int: "integer", list: "array"}


def _is_a(value: Any, kind: type) -> bool:
    """``isinstance``, except that JSON true and false are not integers."""
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


@dataclass(frozen=True)
class Field:
    """One member of a JSON object body. ``kind`` is the Python type of its value (str, int or list;
    a bool is never an int here); ``items`` the type of a list's elements."""

    name: str
    kind: type
    description: str = ""
    required: bool = False
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    maximum: int | None = None
    items: type | None = None
    default: str | int | None = None
    examples: tuple[str, ...] = ()

    def check(self, value: Any) -> None:
        """400 (``InvalidInput``) unless ``value`` (not None) fits this field."""
        if not _is_a(value, self.kind):
            raise InvalidInput(f'"{self.name}" must be a {self.kind.__name__}')
        if self.items is not None and not all(_is_a(v, self.items) for v in value):
            hint = f" ({self.description})" if self.description else ""
            raise InvalidInput(f'"{self.name}" must be a list of {JSON_TYPES[self.items]}s{hint}')
        if self.choices and value not in self.choices:
            raise InvalidInput(f'"{self.name}" must be one of {", ".join(self.choices)}')
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            raise InvalidInput(f'"{self.name}" must be {self._bounds()}')

    def _bounds(self) -> str:
        if self.minimum is not None and self.maximum is not None:
            return f"between {self.minimum} and {self.maximum}"
        return f"at least {self.minimum}" if self.minimum is not None else f"at most {self.maximum}"

    def schema(self) -> dict[str, Any]:
        """This field's JSON Schema (OpenAPI 3.1); null allowed where it counts as left out."""
        nullable = not self.required
        out: dict[str, Any] = {"type": [JSON_TYPES[self.kind], "null"] if nullable else JSON_TYPES[self.kind]}
        if self.items is not None:
            out["items"] = {"type": JSON_TYPES[self.items]}
        if self.choices:
            out["enum"] = [*self.choices, None] if nullable else list(self.choices)
        if self.minimum is not None:
            out["minimum"] = self.minimum
        if self.maximum is not None:
            out["maximum"] = self.maximum
        if self.default is not None:
            out["default"] = self.default
        if self.examples:
            out["examples"] = list(self.examples)
        if self.description:
            out["description"] = self.description
        return out


@dataclass(frozen=True)
class Shape:
    """A JSON object body: its component name in the OpenAPI document, what it is for, its fields.
    Fields not declared are refused."""

    name: str
    description: str
    fields: tuple[Field, ...]
    _names: frozenset[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_names", frozenset(f.name for f in self.fields))

    def read(self, body: dict[str, Any]) -> dict[str, Any]:
        """Every declared field's value (its default, or None, when left out or null), after
        checking ``body`` against this shape; 400 (``InvalidInput``) naming what does not fit."""
        unknown = body.keys() - self._names
        if unknown:
            raise InvalidInput(f"unknown field(s) {', '.join(sorted(unknown))}: "
                               f"allowed are {', '.join(sorted(self._names))}")
        values: dict[str, Any] = {}
        for f in self.fields:
            value = body.get(f.name)
            if value is None:
                if f.required:
                    raise InvalidInput(f'"{f.name}" is required')
                value = f.default
            else:
                f.check(value)
            values[f.name] = value
        return values

    def schema(self) -> dict[str, Any]:
        """This body's JSON Schema (OpenAPI 3.1), as the document publishes it."""
        out: dict[str, Any] = {"type": "object", "additionalProperties": False}
        required = [f.name for f in self.fields if f.required]
        if required:
            out["required"] = required
        out["description"] = self.description
        out["properties"] = {f.name: f.schema() for f in self.fields}
        return out


_KEY_TYPES = tuple(k.value for k in KeyType)
_NULL = " A field given as null counts as left out."

_CSR = Field("csr", str, "PEM text of a CSR (your key, never sent)")
_KEY_TYPE = Field("key_type", str, "the type of the key the server makes", choices=_KEY_TYPES)
_FORMAT = Field("format", str, "pem: PEM text; pkcs12: a PKCS#12 bundle (with password) as well", choices=FORMATS,
                default="pem")
_PASSWORD = Field("password", str, f"the PKCS#12 password: required with pkcs12, at least {MIN_PKCS12_PASSWORD} "
                                   "characters")

ENROLL_REQUEST = Shape(
    "EnrollRequest",
    "Exactly one of csr (your key, never sent) or key_type (key made by the server)." + _NULL,
    (
        _CSR,
        _KEY_TYPE,
        Field("cn", str, "needed when the token allows a CN pattern and the CSR has no CN"),
        Field("sans", list, "dns:NAME or uri:URI", items=str),
        Field("profile", str, "optional check: must be the token's profile"),
        Field("ttl", str, "certificate lifetime within the profile's maximum (default: the profile's)",
              examples=("24h",)),
        _FORMAT,
        _PASSWORD,
    ),
)

RENEW_REQUEST = Shape(
    "RenewRequest",
    "Optional new CSR (same CN, no new names); else a new key of the same type is made." + _NULL,
    (_CSR, _KEY_TYPE, Field("ttl", str, "certificate lifetime within the profile's maximum"), _FORMAT, _PASSWORD),
)

REVOKE_REQUEST = Shape(
    "RevokeRequest",
    "The certificate to revoke, and why." + _NULL,
    (
        Field("serial", str, "hex; required for an operator, optional for self-revocation"),
        Field("reason", str, "an RFC 5280 reason (default unspecified)", examples=("keyCompromise", "superseded")),
    ),
)

TOKEN_CREATE_REQUEST = Shape(
    "TokenCreateRequest",
    "Exactly one of cn or cn_pattern." + _NULL,
    (
        Field("profile", str, "the profile the token enrolls into", required=True),
        Field("cn", str, "the exact CN the token allows"),
        Field("cn_pattern", str, "a regular expression the CN must match in full"),
        Field("ttl", str, "how long the token can be redeemed (30s to 30d)", default="15m"),
        Field("uses", int, "how many certificates it can be redeemed for", minimum=1, maximum=MAX_USES, default=1),
    ),
)

REQUEST_SHAPES = (ENROLL_REQUEST, RENEW_REQUEST, REVOKE_REQUEST, TOKEN_CREATE_REQUEST)
