"""Hardware-bound keys: ``pkcs11:`` URIs (RFC 7512) for ``--certificate`` and ``--private-key``.

What is found where, as ``aws_signing_helper`` does:

- ``--private-key pkcs11:...`` with a certificate file: the key on the token that matches the
  certificate (checked by signing a test string and verifying it with the certificate);
- ``--certificate pkcs11:...`` alone: the certificate on the token, and its key found with the
  same URI (same ``id``/``object`` label), as the certificate best practice draft the helper follows;
- ``--private-key pkcs11:...`` alone: the key, and the certificate on the token whose public key
  matches it (an object with the key's ``id`` first);
- the chain: ``--intermediates`` if given, else the CA certificates on the token that issued the leaf.

PIN, first found wins: ``pin-value`` in the URI, ``pin-source`` in the URI (a file path or
``file:`` URI, read as is, trailing newline dropped), ``$RAPKI_SIGNER_PKCS11_PIN``, then a prompt
when standard input is a terminal. A key marked ``CKA_ALWAYS_AUTHENTICATE`` needs a
context-specific login between C_SignInit and C_Sign, which python-pkcs11 performs as one call: such
keys are refused with that reason, and ``--reuse-pin`` (the helper's answer to them) is accepted
without effect. The module is ``--pkcs11-lib``, else the URI's ``module-path``, else
``p11-kit-proxy.so`` (p11-kit then loads the system's registered modules), as the helper's default.

A TPM 2.0 works through tpm2-pkcs11 as such a module (``--pkcs11-lib libtpm2_pkcs11.so.1``), tested
with swtpm behind tpm2-abrmd (tests/test_signer_tpm.py).
"""

from __future__ import annotations

import getpass
import hashlib
import os
import re
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, quote_from_bytes, unquote_to_bytes

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from pki.signer.material import (
    MAX_CHAIN,
    Material,
    MaterialError,
    _read,
    check_material,
    parse_bundle,
    parse_certificate,
)
from pki.x509.external import ecdsa_der_signature

try:
    import pkcs11
    from pkcs11 import Attribute, Mechanism, ObjectClass, TokenFlag
    from pkcs11 import KeyType as P11KeyType
    from pkcs11 import exceptions as p11
except ImportError:  # an optional dependency: say which extra brings it
    raise MaterialError("pkcs11: URIs need python-pkcs11: pip install 'rapki[hsm]'") from None

PIN_ENV = "RAPKI_SIGNER_PKCS11_PIN"
DEFAULT_MODULE = {"darwin": "p11-kit-proxy.dylib", "win32": "p11-kit-proxy.dll"}.get(sys.platform, "p11-kit-proxy.so")
_RSA_MECHANISMS = {
    "sha256": Mechanism.SHA256_RSA_PKCS, "sha384": Mechanism.SHA384_RSA_PKCS, "sha512": Mechanism.SHA512_RSA_PKCS}
_TEST_DATA = b"rapki-signer: does this key belong to this certificate?"


class Pkcs11Error(MaterialError):
    """A token, object or PIN problem; the message names the URI part to fix."""


@dataclass(frozen=True)
class Pkcs11Uri:
    """An RFC 7512 URI: path attributes (``token``, ``object``, ``id``...) and query attributes."""

    text: str
    path: dict[str, bytes] = field(default_factory=dict)
    query: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Pkcs11Uri:
        if not text.startswith("pkcs11:"):
            raise Pkcs11Error(f"{text!r} is not a pkcs11: URI")
        body = text[len("pkcs11:"):]
        path_part, _, query_part = body.partition("?")
        return cls(text, _attributes(path_part, ";", text), _attributes(query_part, "&", text))

    def get(self, name: str) -> str | None:
        value = self.path.get(name)
        return value.decode("utf-8", "replace") if value is not None else None

    @property
    def redacted(self) -> str:
        """The URI without its PIN, for messages."""
        return self.text.split("?", 1)[0]


# RFC 7512's path attributes; vendors' own start with "x-". The query's (pin-value, pin-source,
# module-path...) are looked up by name and others ignored, as the RFC allows.
_PATH_ATTRIBUTES = frozenset({"id", "library-description", "library-manufacturer", "library-version",
                              "manufacturer", "model", "object", "serial", "slot-description", "slot-id",
                              "slot-manufacturer", "token", "type"})
_QUERY_ATTRIBUTES = frozenset({"pin-value", "pin-source", "module-name", "module-path"})
_BAD_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")


def _attributes(part: str, separator: str, text: str) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    shown = text.split("?", 1)[0]
    for item in filter(None, part.split(separator)):
        name, eq, value = item.partition("=")
        name = name.strip().lower()
        if separator == ";" and name in _QUERY_ATTRIBUTES:  # never echo the URI: the PIN may be in it
            raise Pkcs11Error(f"PKCS#11 URI: {name} is a query attribute: put it after '?' "
                              f"(pkcs11:token=...;object=...?{name}=...), not after ';'")
        if not eq:
            raise Pkcs11Error(f"PKCS#11 URI {shown!r}: attribute {name!r} has no value")
        if separator == ";" and name not in _PATH_ATTRIBUTES and not name.startswith("x-"):
            raise Pkcs11Error(f"PKCS#11 URI {shown!r}: unknown attribute {name!r} (RFC 7512: "
                              f"{', '.join(sorted(_PATH_ATTRIBUTES))})")
        if _BAD_PERCENT.search(value):
            raise Pkcs11Error(f"PKCS#11 URI: attribute {name!r} has a '%' not followed by two hex digits "
                              "(percent-encode '%' as %25)")
        out[name] = unquote_to_bytes(value)
    return out


# --- module, token and PIN ----------------------------------------------------------------------
_libs: dict[str, Any] = {}


def _library(lib: str | None, uri: Pkcs11Uri) -> Any:
    path = lib or (uri.query.get("module-path") or b"").decode() or DEFAULT_MODULE
    if path not in _libs:
        try:
            _libs[path] = pkcs11.lib(path)
        except (p11.PKCS11Error, OSError, RuntimeError) as exc:
            raise Pkcs11Error(
                f"cannot load the PKCS#11 module {path!r} (--pkcs11-lib): {exc or type(exc).__name__}"
            ) from None
    return _libs[path]


def _matches(uri: Pkcs11Uri, slot: Any, token: Any) -> bool:
    facts = {
        "token": token.label,
        "manufacturer": token.manufacturer_id,
        "serial": _text(token.serial),
        "model": token.model,
        "slot-description": slot.slot_description,
        "slot-manufacturer": slot.manufacturer_id,
        "slot-id": str(slot.slot_id),
    }
    return all(uri.get(name) is None or uri.get(name) == value.strip() for name, value in facts.items())


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _slots(lib: Any, uri: Pkcs11Uri) -> list[tuple[Any, Any]]:
    found = []
    for slot in lib.get_slots(token_present=True):
        token = slot.get_token()
        if not token.flags & TokenFlag.TOKEN_INITIALIZED:
            continue  # an empty slot (SoftHSM keeps one free): nothing to find there
        if _matches(uri, slot, token):
            found.append((slot, token))
    if not found:
        names = ", ".join(repr(slot.get_token().label) for slot in lib.get_slots(token_present=True)) or "none"
        raise Pkcs11Error(f"no token matches {uri.redacted} (tokens: {names})")
    return found


def user_pin(uri: Pkcs11Uri, what: str = "user PIN") -> str:
    if "pin-value" in uri.query:
        return uri.query["pin-value"].decode()
    if "pin-source" in uri.query:
        source = uri.query["pin-source"].decode()
        path = Path(source[len("file:"):] if source.startswith("file:") else source)
        try:
            return path.read_text().rstrip("\r\n")
        except OSError as exc:
            raise Pkcs11Error(f"pin-source {source!r} cannot be read: {exc.strerror}") from None
    if os.environ.get(PIN_ENV):
        return os.environ[PIN_ENV]
    if sys.stdin.isatty():
        return getpass.getpass(f"Please enter your {what}: ")
    raise Pkcs11Error(
        f"{uri.redacted} needs a {what}: put pin-value= or pin-source= in the URI, or set ${PIN_ENV}"
    )


# One logged-in session per token and process: PKCS#11 login is per application, so a second
# C_Login fails; ``serve`` reloads its material at every refresh and reuses this session.
_sessions: dict[tuple[int, int], Any] = {}
_STALE = ("SessionHandleInvalid", "SessionClosed", "DeviceRemoved", "TokenNotPresent", "UserNotLoggedIn")


def _open(lib: Any, uri: Pkcs11Uri) -> Any:
    """A session logged in as user on the one token the URI names."""
    found = _slots(lib, uri)
    if len(found) > 1:
        labels = ", ".join(repr(t.label) for _, t in found)
        raise Pkcs11Error(f"{uri.redacted} matches several tokens ({labels}): add token= or serial=")
    slot, token = found[0]
    cached = _sessions.get((id(lib), slot.slot_id))
    if cached is not None:
        return cached
    try:
        session = token.open(user_pin=user_pin(uri))
    except p11.UserAlreadyLoggedIn:
        session = token.open()  # this process logged in already (login is per application)
    except p11.PinIncorrect:
        raise Pkcs11Error(f"wrong user PIN for token {token.label!r}") from None
    except (p11.PinLocked, p11.PinExpired) as exc:
        raise Pkcs11Error(f"the user PIN of token {token.label!r} is {type(exc).__name__[3:].lower()}") from None
    except p11.PKCS11Error as exc:
        raise Pkcs11Error(f"cannot log in to token {token.label!r}: {type(exc).__name__}") from None
    _sessions[(id(lib), slot.slot_id)] = session
    return session


def _template(uri: Pkcs11Uri, object_class: ObjectClass) -> dict[Attribute, Any]:
    attrs: dict[Attribute, Any] = {Attribute.CLASS: object_class}
    if "object" in uri.path:
        attrs[Attribute.LABEL] = uri.path["object"].decode("utf-8", "replace")
    if "id" in uri.path:
        attrs[Attribute.ID] = uri.path["id"]
    return attrs


# --- certificates --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenCertificate:
    certificate: x509.Certificate
    key_id: bytes | None
    label: str | None


def _certificates(session: Any, attrs: dict[Attribute, Any]) -> list[TokenCertificate]:
    out = []
    for obj in session.get_objects({**attrs, Attribute.CLASS: ObjectClass.CERTIFICATE}):
        try:
            cert = x509.load_der_x509_certificate(obj[Attribute.VALUE])
        except ValueError:
            continue  # not an X.509 certificate (a CVC, a damaged object): nothing to sign with
        out.append(TokenCertificate(cert, _attribute(obj, Attribute.ID), _attribute(obj, Attribute.LABEL)))
    return out


def _attribute(obj: Any, attribute: Attribute) -> Any:
    try:
        return obj[attribute]
    except (p11.PKCS11Error, KeyError):
        return None


def _chain_on_token(session: Any, leaf: x509.Certificate) -> tuple[x509.Certificate, ...]:
    """CA certificates on the token that issued the leaf, issuer after issuer (never the root)."""
    pool = [c.certificate for c in _certificates(session, {})]
    chain: list[x509.Certificate] = []
    current = leaf
    while len(chain) < MAX_CHAIN and current.issuer != current.subject:
        issuer = next((c for c in pool if c.subject == current.issuer and c not in chain and c != leaf), None)
        if issuer is None or issuer.issuer == issuer.subject:
            break
        chain.append(issuer)
        current = issuer
    return tuple(chain)


# --- the key -------------------------------------------------------------------------------------
class _TokenKeyMixin:
    """Signs on the token; the private key never leaves it. Thread-safe (serve signs from threads)."""

    def _setup(self, session: Any, key: Any, public: Any, where: str) -> None:
        self._session, self._key, self._public, self._where = session, key, public, where
        self._lock = threading.Lock()
        # Such a key wants its PIN between C_SignInit and C_Sign, which python-pkcs11 makes one call.
        self.always_auth = bool(_attribute(key, Attribute.ALWAYS_AUTHENTICATE))

    def _token_sign(self, data: bytes, mechanism: Mechanism) -> bytes:
        with self._lock:
            try:
                return bytes(self._key.sign(data, mechanism=mechanism))
            except p11.PKCS11Error as exc:
                raise Pkcs11Error(f"signing with {self._where} failed: {type(exc).__name__} {exc}".strip()) from None

    def public_key(self) -> Any:
        return self._public

    @property
    def key_size(self) -> int:
        return int(self._public.key_size)

    def _unsupported(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise Pkcs11Error(f"the private key on {self._where} cannot leave the token")

    private_numbers = private_bytes = exchange = decrypt = __copy__ = __deepcopy__ = _unsupported


def _digest(data: bytes, algorithm: Any) -> bytes:
    if isinstance(algorithm, Prehashed):
        return data
    return hashlib.new(algorithm.name, data).digest()


class TokenEcKey(_TokenKeyMixin, ec.EllipticCurvePrivateKey):
    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public.curve

    def sign(self, data: Any, signature_algorithm: Any) -> bytes:
        digest = _digest(bytes(data), signature_algorithm.algorithm)
        return ecdsa_der_signature(self._token_sign(digest, Mechanism.ECDSA))


class TokenRsaKey(_TokenKeyMixin, rsa.RSAPrivateKey):
    def sign(self, data: Any, padding: Any, algorithm: Any) -> bytes:
        if not isinstance(padding, PKCS1v15) or isinstance(algorithm, Prehashed):
            raise Pkcs11Error("only PKCS#1 v1.5 signatures over the data are made with token RSA keys")
        return self._token_sign(bytes(data), _RSA_MECHANISMS[algorithm.name])


def _verifies(key: Any, public: Any) -> bool:
    try:
        if isinstance(public, ec.EllipticCurvePublicKey):
            public.verify(key.sign(_TEST_DATA, ec.ECDSA(hashes.SHA256())), _TEST_DATA, ec.ECDSA(hashes.SHA256()))
        else:
            public.verify(key.sign(_TEST_DATA, PKCS1v15(), hashes.SHA256()), _TEST_DATA, PKCS1v15(),
                          hashes.SHA256())  # fmt: skip
        return True
    except InvalidSignature:
        return False


def _wrap(session: Any, obj: Any, public: Any, where: str) -> Any:
    key: Any
    if obj.key_type == P11KeyType.EC and isinstance(public, ec.EllipticCurvePublicKey):
        key = TokenEcKey()
    elif obj.key_type == P11KeyType.RSA and isinstance(public, rsa.RSAPublicKey):
        key = TokenRsaKey()
    else:
        return None
    key._setup(session, obj, public, where)
    return key


def _key_for(session: Any, uri: Pkcs11Uri, cert: x509.Certificate) -> Any:
    """The private key matching ``uri`` whose signatures ``cert`` verifies."""
    public = cert.public_key()
    candidates = list(session.get_objects(_template(uri, ObjectClass.PRIVATE_KEY)))
    always_auth = False
    for obj in candidates:
        key = _wrap(session, obj, public, uri.redacted)
        if key is not None and key.always_auth:
            always_auth = True
        elif key is not None and _verifies(key, public):
            return key
    if always_auth:
        raise Pkcs11Error(
            f"{uri.redacted} asks for a PIN before each signature (CKA_ALWAYS_AUTHENTICATE): such keys are not "
            "supported; use a key without it (--reuse-pin cannot help here)"
        )
    what = f"{len(candidates)} private key(s) match {uri.redacted}" if candidates else "no private key matches"
    raise Pkcs11Error(f"{what}, none of them for certificate {cert.subject.rfc4514_string()!r}")


def _certificate_for_key(session: Any, uri: Pkcs11Uri) -> x509.Certificate:
    """The token certificate of the key ``uri`` names: same ``id`` first, then any that verifies."""
    keys = list(session.get_objects(_template(uri, ObjectClass.PRIVATE_KEY)))
    if not keys:
        raise Pkcs11Error(f"no private key matches {uri.redacted}")
    certs = _certificates(session, {})
    ids = {_attribute(k, Attribute.ID) for k in keys}
    for tc in sorted(certs, key=lambda c: c.key_id not in ids):
        public = tc.certificate.public_key()
        for obj in keys:
            key = _wrap(session, obj, public, uri.redacted)
            if key is not None and not key.always_auth and _verifies(key, public):
                return tc.certificate
    raise Pkcs11Error(f"no certificate on the token belongs to the key {uri.redacted}: pass --certificate")


def load_token_material(
    certificate: str, private_key: str | None, intermediates: str | None, lib: str | None, reuse_pin: bool
) -> Material:
    """Certificate, token key and chain for the CLI's ``--certificate``/``--private-key`` pair; a
    session the token dropped (removed, reset) is reopened once. ``reuse_pin`` is accepted without
    effect (see the module's docstring)."""
    for attempt in (1, 2):
        try:
            return _load_token_material(certificate, private_key, intermediates, lib)
        except p11.PKCS11Error as exc:
            if type(exc).__name__ not in _STALE or attempt == 2:
                raise Pkcs11Error(f"PKCS#11 token: {type(exc).__name__} {exc}".strip()) from None
            _sessions.clear()
    raise AssertionError("unreachable")  # pragma: no cover


def _load_token_material(
    certificate: str, private_key: str | None, intermediates: str | None, lib: str | None
) -> Material:
    cert_uri = Pkcs11Uri.parse(certificate) if certificate.startswith("pkcs11:") else None
    key_uri = Pkcs11Uri.parse(private_key) if private_key and private_key.startswith("pkcs11:") else None
    if private_key and key_uri is None:
        raise Pkcs11Error("a certificate on a PKCS#11 token goes with a pkcs11: --private-key (or none)")
    uri = key_uri or cert_uri
    assert uri is not None
    session = _open(_library(lib, uri), uri)
    if cert_uri is not None:
        found = _certificates(session, _template(cert_uri, ObjectClass.CERTIFICATE))
        if not found:
            raise Pkcs11Error(f"no certificate matches {cert_uri.redacted}")
        cert = found[0].certificate
        if key_uri is None:  # the key is looked for where the certificate is: its id, else its label
            attrs = {"id": found[0].key_id} if found[0].key_id else {"object": (found[0].label or "").encode()}
            key_uri = Pkcs11Uri(cert_uri.text, {k: v for k, v in attrs.items() if v}, cert_uri.query)
    elif certificate:
        cert = parse_certificate(_read(certificate, "certificate"), certificate)
    else:
        cert = _certificate_for_key(session, uri)
    assert key_uri is not None
    key = _key_for(session, key_uri, cert)
    if intermediates:
        chain = tuple(parse_bundle(_read(intermediates, "intermediates bundle"), intermediates))
    else:
        chain = _chain_on_token(session, cert)
    material = Material(certificate=cert, private_key=key, chain=chain)
    check_material(material, certificate or uri.redacted, key_uri.redacted)
    return material


def token_key(certificate: str, private_key: str, lib: str | None, reuse_pin: bool) -> Any:
    """The token key ``sign-string`` signs with (its certificate found as for credential-process)."""
    return load_token_material(certificate, private_key or None, None, lib, reuse_pin).private_key


# --- read-certificate-data ------------------------------------------------------------------------
def _uri_part(name: str, value: str | bytes) -> str:
    encoded = quote_from_bytes(value, safe="") if isinstance(value, bytes) else quote(value.strip(), safe="")
    return f"{name}={encoded}"


def identity_uri(slot: Any, token: Any, tc: TokenCertificate) -> str:
    """A URI naming one certificate object, with the helper's attributes (sorted by name)."""
    parts = [
        _uri_part("manufacturer", token.manufacturer_id),
        _uri_part("model", token.model),
        _uri_part("serial", _text(token.serial)),
        _uri_part("slot-description", slot.slot_description),
        _uri_part("slot-manufacturer", slot.manufacturer_id),
        _uri_part("type", "cert"),
    ]
    if tc.key_id:
        parts.append(_uri_part("id", bytes(tc.key_id)))
    if tc.label:
        parts.append(_uri_part("object", tc.label))
    return "pkcs11:" + ";".join(sorted(parts))


def matching_identities(uri_text: str, lib: str | None) -> str:
    """The helper's listing: ``Matching identities`` then numbered certificates, or ``No matching identities``."""
    uri = Pkcs11Uri.parse(uri_text)
    lines: list[str] = []
    for slot, token in _slots(_library(lib, uri), uri):
        try:
            session = token.open()  # certificates are public objects: no login
        except p11.PKCS11Error as exc:
            raise Pkcs11Error(f"cannot open token {token.label!r}: {type(exc).__name__}") from None
        try:
            for tc in _certificates(session, _template(uri, ObjectClass.CERTIFICATE)):
                lines.append(_describe(len(lines) + 1, tc, identity_uri(slot, token, tc)))
        finally:
            session.close()
    if not lines:
        return "No matching identities\n"
    return "Matching identities\n" + "".join(lines)


def _describe(index: int, tc: TokenCertificate, uri: str) -> str:
    cert = tc.certificate
    fingerprint = hashlib.sha1(cert.public_bytes(serialization.Encoding.DER)).hexdigest()  # noqa: S324 - as the helper
    return (
        f"{index}) Hex Fingerprint: {fingerprint}\n"
        f"Subject: {cert.subject.rfc4514_string()}\n"
        f"Issuer: {cert.issuer.rfc4514_string()}\n"
        f"Serial Number: {cert.serial_number:X}\n"
        f"URI: {uri}\n\n"
    )
