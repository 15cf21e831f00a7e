"""How a CA key is named in ``rapki.toml`` (a table) and in the database (one string).

Three forms, one per backend; ``parse_key_ref`` reads either spelling and ``str(ref)`` /
``ref.as_dict()`` write them back:

- ``file``: a path, relative to the home (``ca/issuing-1.key.pem``, what ``key_ref`` has always held);
  ``file:`` in front only when the path itself starts like another form.
- ``pkcs11``: an RFC 7512 URI, ``pkcs11:token=rapki;object=issuing-2;id=%01?module-path=/usr/lib/
  softhsm/libsofthsm2.so&pin-source=env:RAPKI_HSM_PIN`` (``pin-source=file:/etc/rapki/hsm-pin`` for a
  file). The PIN itself is never part of a reference: ``pin-value`` is refused.
- ``kms``: ``kms:<key ARN, id or alias>?region=us-gov-west-1&fips=true&endpoint-url=...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import quote, unquote, unquote_to_bytes

from pki.errors import InvalidInput

_PIN_IN_CLEAR = ("a PIN is never kept in the configuration or the database: name an environment variable "
                 "(pin_env / pin-source=env:NAME) or a file readable only by rapki (pin_file / pin-source=file:PATH)")


@dataclass(frozen=True)
class FileRef:
    """An encrypted PKCS#8 file; ``path`` relative to the home unless absolute."""

    path: str
    backend: ClassVar[str] = "file"

    def __post_init__(self) -> None:
        if not self.path:
            raise InvalidInput("a file key needs the path of its encrypted PKCS#8 file")

    def __str__(self) -> str:
        return f"file:{self.path}" if _scheme(self.path) else self.path

    def as_dict(self) -> dict[str, str | bool]:
        return {"backend": self.backend, "path": self.path}


@dataclass(frozen=True)
class Pkcs11Ref:
    """A key pair on a PKCS#11 token, found by label, id or both; the PIN from ``pin_env`` or ``pin_file``."""

    module: str
    token: str
    label: str | None = None
    key_id: bytes | None = None
    pin_env: str | None = None
    pin_file: str | None = None
    backend: ClassVar[str] = "pkcs11"

    def __post_init__(self) -> None:
        if not self.module:
            raise InvalidInput("a pkcs11 key needs the path of its PKCS#11 module (module / module-path)")
        if not self.token:
            raise InvalidInput("a pkcs11 key needs the label of its token (token)")
        if not self.label and not self.key_id:
            raise InvalidInput("a pkcs11 key needs a key label (label / object) or id (id), or both")
        if (self.pin_env is None) == (self.pin_file is None):
            raise InvalidInput(f"a pkcs11 key needs exactly one PIN source: {_PIN_IN_CLEAR}")
        if self.pin_env is not None and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.pin_env):
            raise InvalidInput(f"pin_env {self.pin_env!r} is not an environment variable name")

    def __str__(self) -> str:
        path = [f"token={_pct(self.token)}"]
        if self.label:
            path.append(f"object={_pct(self.label)}")
        if self.key_id:
            path.append("id=" + "".join(f"%{b:02X}" for b in self.key_id))
        source = f"env:{self.pin_env}" if self.pin_env is not None else f"file:{self.pin_file}"
        query = f"module-path={_pct(self.module)}&pin-source={_pct(source)}"
        return f"pkcs11:{';'.join(path)}?{query}"

    def as_dict(self) -> dict[str, str | bool]:
        out: dict[str, str | bool] = {"backend": self.backend, "module": self.module, "token": self.token}
        if self.label:
            out["label"] = self.label
        if self.key_id:
            out["id"] = self.key_id.hex()
        if self.pin_env is not None:
            out["pin_env"] = self.pin_env
        if self.pin_file is not None:
            out["pin_file"] = self.pin_file
        return out

    @property
    def key_name(self) -> str:
        """The key as people see it: its label, else its id in hex."""
        if self.label:
            return self.label if not self.key_id else f"{self.label} (id {self.key_id.hex()})"
        assert self.key_id is not None
        return f"id {self.key_id.hex()}"


_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):\d{12}:(key|alias)/.+")


@dataclass(frozen=True)
class KmsRef:
    """An AWS KMS asymmetric key: ARN, key id or alias; ``key_id`` is empty only for a key still to create."""

    key_id: str
    region: str | None = None
    use_fips_endpoint: bool = False
    endpoint_url: str | None = None
    backend: ClassVar[str] = "kms"

    def __post_init__(self) -> None:
        arn = _ARN.fullmatch(self.key_id)
        if self.key_id.startswith("arn:") and arn is None:
            raise InvalidInput(f"{self.key_id!r} is not a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)")
        if arn is not None:
            if self.region and self.region != arn["region"]:
                raise InvalidInput(f"the key ARN is in {arn['region']} but region {self.region} was given")
            object.__setattr__(self, "region", arn["region"])
        if self.endpoint_url is not None and not re.match(r"https?://", self.endpoint_url):
            raise InvalidInput(f"endpoint_url {self.endpoint_url!r} is not an http(s) URL")

    def __str__(self) -> str:
        query = []
        if self.region and not self.key_id.startswith("arn:"):
            query.append(f"region={self.region}")
        if self.use_fips_endpoint:
            query.append("fips=true")
        if self.endpoint_url:
            query.append(f"endpoint-url={_pct(self.endpoint_url)}")
        return f"kms:{self.key_id}" + (f"?{'&'.join(query)}" if query else "")

    def as_dict(self) -> dict[str, str | bool]:
        out: dict[str, str | bool] = {"backend": self.backend, "key_id": self.key_id}
        if self.region:
            out["region"] = self.region
        if self.use_fips_endpoint:
            out["use_fips_endpoint"] = True
        if self.endpoint_url:
            out["endpoint_url"] = self.endpoint_url
        return out


KeyRef = FileRef | Pkcs11Ref | KmsRef
BACKENDS = ("file", "pkcs11", "kms")


def key_ref_for(placement: KeyRef | None, name: str) -> KeyRef:
    """The reference of a new CA key called ``name`` (``root``, ``issuing-3``), made where
    ``placement`` says: a file ``ca/<name>.key.pem`` in the home (``None`` or any ``FileRef``); on
    ``placement``'s token, labelled ``<prefix>-<name>`` (its label, or the prefix of a label made
    this way: ``rapki-issuing-2`` gives ``rapki``); in KMS, as ``placement`` names a key to adopt,
    or else a new key in its region and endpoint."""
    if isinstance(placement, Pkcs11Ref):
        prefix = _LABEL_SUFFIX.sub("", placement.label or "") or "rapki"
        return Pkcs11Ref(module=placement.module, token=placement.token, label=f"{prefix}-{name}",
                         pin_env=placement.pin_env, pin_file=placement.pin_file)
    if isinstance(placement, KmsRef):
        return placement
    return FileRef(f"ca/{name}.key.pem")


def placement_of(ref: KeyRef) -> KeyRef | None:
    """Where a CA key like ``ref`` is made (``key_ref_for``): the same backend, token or region,
    never the same key (a KMS key id is dropped: a new key is created)."""
    if isinstance(ref, KmsRef):
        return KmsRef(key_id="", region=ref.region, use_fips_endpoint=ref.use_fips_endpoint,
                      endpoint_url=ref.endpoint_url)
    return ref if isinstance(ref, Pkcs11Ref) else None


_LABEL_SUFFIX = re.compile(r"-(root|issuing-\d+)$")


def _scheme(text: str) -> str | None:
    for scheme in ("file:", "pkcs11:", "kms:"):
        if text.startswith(scheme):
            return scheme
    return None


def _pct(value: str) -> str:
    return quote(value, safe="/-_.~:")


def parse_key_ref(value: str | Mapping[str, object] | KeyRef) -> KeyRef:
    """A key reference from its string (database, CLI) or table (``rapki.toml``) form."""
    if isinstance(value, FileRef | Pkcs11Ref | KmsRef):
        return value
    if isinstance(value, Mapping):
        return _from_mapping(value)
    text = str(value).strip()
    scheme = _scheme(text)
    if scheme == "pkcs11:":
        return _pkcs11_from_uri(text)
    if scheme == "kms:":
        return _kms_from_uri(text)
    if not text:
        raise InvalidInput("an empty key reference: give a key file path, a pkcs11: URI or a kms: key")
    return FileRef(text.removeprefix("file:"))


def _query(text: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, text.split("&")):
        name, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInput(f"{what}: {item!r} is not name=value")
        out[name.lower()] = unquote(raw)
    return out


def _pkcs11_from_uri(text: str) -> Pkcs11Ref:
    path, _, query_text = text.removeprefix("pkcs11:").partition("?")
    attrs: dict[str, str] = {}
    key_id: bytes | None = None
    for item in filter(None, path.split(";")):
        name, sep, raw = item.partition("=")
        if not sep:
            raise InvalidInput(f"pkcs11 URI: {item!r} is not name=value")
        if name.lower() == "id":
            key_id = unquote_to_bytes(raw)
        elif name.lower() == "pin-value":
            raise InvalidInput(_PIN_IN_CLEAR)
        else:
            attrs[name.lower()] = unquote(raw)
    query = _query(query_text, "pkcs11 URI")
    if "pin-value" in query:
        raise InvalidInput(_PIN_IN_CLEAR)
    unknown = (set(attrs) - {"token", "object", "type"}) | (set(query) - {"module-path", "pin-source"})
    if unknown:
        raise InvalidInput(f"pkcs11 URI: unsupported attributes {', '.join(sorted(unknown))}")
    if attrs.get("type", "private") != "private":
        raise InvalidInput("pkcs11 URI: a CA key reference names the private key (type=private or no type)")
    pin_env = pin_file = None
    source = query.get("pin-source", "")
    if source.startswith("env:"):
        pin_env = source.removeprefix("env:")
    elif source:
        pin_file = source.removeprefix("file://").removeprefix("file:")
    return Pkcs11Ref(module=query.get("module-path", ""), token=attrs.get("token", ""),
                     label=attrs.get("object") or None, key_id=key_id, pin_env=pin_env, pin_file=pin_file)


def _kms_from_uri(text: str) -> KmsRef:
    key_id, _, query_text = text.removeprefix("kms:").partition("?")
    query = _query(query_text, "kms key reference")
    unknown = set(query) - {"region", "fips", "endpoint-url"}
    if unknown:
        raise InvalidInput(f"kms key reference: unsupported parameters {', '.join(sorted(unknown))}")
    return KmsRef(key_id=key_id, region=query.get("region") or None,
                  use_fips_endpoint=_flag(query.get("fips", "false"), "fips"),
                  endpoint_url=query.get("endpoint-url") or None)


def _flag(value: object, name: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise InvalidInput(f"{name} must be true or false, not {value!r}")


_FIELDS = {
    "file": {"path"},
    "pkcs11": {"module", "token", "label", "id", "pin_env", "pin_file"},
    "kms": {"key_id", "region", "use_fips_endpoint", "endpoint_url"},
}


def _from_mapping(table: Mapping[str, object]) -> KeyRef:
    backend = str(table.get("backend", "file"))
    if backend not in _FIELDS:
        raise InvalidInput(f"unknown key backend {backend!r}: use one of {', '.join(BACKENDS)}")
    if {"pin", "pin_value", "pin-value"} & set(table):
        raise InvalidInput(_PIN_IN_CLEAR)
    unknown = set(table) - _FIELDS[backend] - {"backend"}
    if unknown:
        raise InvalidInput(f"{backend} key: unknown settings {', '.join(sorted(unknown))}")

    def text(name: str) -> str | None:
        value = table.get(name)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            raise InvalidInput(f"{backend} key: {name} must be a string, not {type(value).__name__}")
        return value

    if backend == "file":
        return FileRef(text("path") or "")
    if backend == "pkcs11":
        raw_id = text("id")
        try:
            key_id = bytes.fromhex(raw_id) if raw_id else None
        except ValueError:
            raise InvalidInput(f"pkcs11 key: id {raw_id!r} is not hexadecimal") from None
        return Pkcs11Ref(module=text("module") or "", token=text("token") or "", label=text("label"),
                         key_id=key_id, pin_env=text("pin_env"), pin_file=text("pin_file"))
    return KmsRef(key_id=text("key_id") or "", region=text("region"),
                  use_fips_endpoint=_flag(table.get("use_fips_endpoint", False), "use_fips_endpoint"),
                  endpoint_url=text("endpoint_url"))
