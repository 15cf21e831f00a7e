"""The ``pkcs11`` backend: a CA key pair on an HSM token, used through python-pkcs11.

Sessions: one logged-in session per token and process, opened on first use and kept. PKCS#11 login
is per token for the whole application (a second login fails, a logout ends every session), so
every key on a token shares that session. python-pkcs11 initialises modules without locking
callbacks, which tells the module that no two threads call it at once: every call into a module
holds that module's lock. A session the token dropped (removed, reset) is reopened once; a process
forked after opening one initialises the module again before using it.

The private key is generated on the token as sensitive and never extractable; an adopted key that
could be exported is refused. ECDSA signs a digest computed here (``CKM_ECDSA``: the token sees 32
or 48 bytes, whatever the size of a CRL); RSA signs with ``CKM_SHA256_RSA_PKCS`` (PKCS#1 v1.5).
ML-DSA is refused with one message (``PKCS11_MLDSA_REFUSAL``): SoftHSM2, the token rapki is tested
with, has no ML-DSA mechanism, so a code path for it could not be tested.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from pkcs11 import Attribute, Mechanism, MechanismFlag, ObjectClass
from pkcs11 import KeyType as P11KeyType
from pkcs11 import exceptions as p11
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from pki.custody.refs import Pkcs11Ref
from pki.errors import Conflict, InvalidInput, KeyUnavailable, NotFound, WrongPassphrase
from pki.x509.external import ecdsa_der_signature
from pki.x509.keys import KeyType, PublicKey

if TYPE_CHECKING:
    from pkcs11._pkcs11 import lib as Pkcs11Library

T = TypeVar("T")

_CURVES = {KeyType.EC_P256: "secp256r1", KeyType.EC_P384: "secp384r1"}
PKCS11_MLDSA_REFUSAL = (
    "ML-DSA CA keys are not supported on PKCS#11: SoftHSM2 (2.6) has no ML-DSA mechanism (PKCS#11 3.2's "
    "CKM_ML_DSA is not in it) and rapki does not drive one; keep an ML-DSA CA key in a file or in AWS KMS"
)
# Token errors after which the session is gone but a new one may work.
_STALE = (p11.SessionHandleInvalid, p11.SessionClosed, p11.DeviceRemoved, p11.TokenNotPresent,
          p11.UserNotLoggedIn, p11.DeviceError)


class _Module:
    """One PKCS#11 module in this process: its library, its lock, a session per token."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self.pid = os.getpid()
        self.lib: Pkcs11Library | None = None
        self.sessions: dict[str, pkcs11.Session] = {}
        self.keys: dict[tuple[str, str | None, bytes | None], pkcs11.SignMixin] = {}

    def library(self) -> Pkcs11Library:
        if self.pid != os.getpid():  # forked: the parent's module state means nothing here
            self.sessions.clear()
            self.keys.clear()
            if self.lib is not None:
                self.lib.reinitialize()
            self.pid = os.getpid()
        if self.lib is None:
            if not Path(self.path).is_file():
                raise InvalidInput(f"PKCS#11 module {self.path} does not exist")
            try:
                self.lib = pkcs11.lib(self.path)
            except p11.PKCS11Error as exc:
                raise InvalidInput(f"cannot load the PKCS#11 module {self.path}: {exc}") from exc
        return self.lib

    def session(self, ref: Pkcs11Ref) -> pkcs11.Session:
        session = self.sessions.get(ref.token)
        if session is None:
            token = _token(self.library(), ref)
            try:
                session = token.open(rw=True, user_pin=_read_pin(ref))
            except p11.PinIncorrect:
                raise WrongPassphrase(f"wrong PIN for token {ref.token!r} ({_pin_source(ref)})") from None
            except (p11.PinLocked, p11.PinExpired) as exc:
                raise KeyUnavailable(f"the PIN of token {ref.token!r} is {type(exc).__name__[3:].lower()}: "
                                  "the token's security officer must reset it") from None
            self.sessions[ref.token] = session
        return session

    def drop(self, token: str) -> None:
        session = self.sessions.pop(token, None)
        self.keys = {k: v for k, v in self.keys.items() if k[0] != token}
        if session is not None:
            with contextlib.suppress(p11.PKCS11Error):  # the token already forgot it: nothing to close
                session.close()


_modules: dict[str, _Module] = {}
_modules_lock = threading.Lock()


def _module(path: str) -> _Module:
    with _modules_lock:
        module = _modules.get(path)
        if module is None:
            module = _modules[path] = _Module(path)
        return module


def close_all() -> None:
    """Close every session this process holds (tokens log out); modules stay loaded."""
    with _modules_lock:
        modules = list(_modules.values())
    for module in modules:
        with module.lock:
            for token in list(module.sessions):
                module.drop(token)


def _token(lib: Pkcs11Library, ref: Pkcs11Ref) -> pkcs11.Token:
    try:
        return lib.get_token(token_label=ref.token)
    except p11.NoSuchToken:
        labels = ", ".join(repr(t.label) for t in lib.get_tokens()) or "none"
        raise NotFound(f"no token labelled {ref.token!r} in {ref.module} (tokens: {labels})") from None
    except p11.MultipleTokensReturned:
        raise InvalidInput(f"several tokens are labelled {ref.token!r} in {ref.module}: relabel one") from None


def _pin_source(ref: Pkcs11Ref) -> str:
    return f"${ref.pin_env}" if ref.pin_env is not None else f"file {ref.pin_file}"


def _read_pin(ref: Pkcs11Ref) -> str:
    if ref.pin_env is not None:
        pin = os.environ.get(ref.pin_env, "")
        if not pin:
            raise InvalidInput(f"${ref.pin_env} is not set: it holds the PIN of token {ref.token!r}")
        return pin
    assert ref.pin_file is not None
    path = Path(ref.pin_file)
    try:
        if path.stat().st_mode & 0o077:
            raise InvalidInput(f"the PIN file {path} can be read by other users: chmod 600 it (or 400)")
        pin = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"cannot read the PIN of token {ref.token!r} from {path}: {exc}") from exc
    if not pin:
        raise InvalidInput(f"the PIN file {ref.pin_file} is empty")
    return pin


def _call(ref: Pkcs11Ref, action: Callable[[pkcs11.Session], T]) -> T:
    """``action`` on the token's session, under the module lock; a dropped session is reopened once."""
    module = _module(ref.module)
    with module.lock:
        for attempt in (1, 2):
            try:
                return action(module.session(ref))
            except _STALE as exc:
                module.drop(ref.token)
                if attempt == 2:
                    raise KeyUnavailable(f"token {ref.token!r} in {ref.module}: {type(exc).__name__}") from exc
            except p11.PKCS11Error as exc:
                detail = f"{type(exc).__name__} {exc}".strip()
                raise KeyUnavailable(f"token {ref.token!r} in {ref.module}: {detail}") from exc
    raise AssertionError("unreachable")  # pragma: no cover


def _find(session: pkcs11.Session, ref: Pkcs11Ref, object_class: ObjectClass) -> pkcs11.Key | None:
    try:
        return session.get_key(object_class=object_class, label=ref.label, id=ref.key_id)
    except p11.NoSuchKey:
        return None
    except p11.MultipleObjectsReturned:
        raise InvalidInput(f"several keys on token {ref.token!r} match {ref.key_name}: name the key by "
                           "label and id") from None


def _public_key(key: pkcs11.PublicKey) -> PublicKey:
    if key.key_type == P11KeyType.EC:
        public = serialization.load_der_public_key(encode_ec_public_key(key))
    elif key.key_type == P11KeyType.RSA:
        numbers = rsa.RSAPublicNumbers(int.from_bytes(key[Attribute.PUBLIC_EXPONENT], "big"),
                                       int.from_bytes(key[Attribute.MODULUS], "big"))
        public = numbers.public_key()
    else:
        raise InvalidInput(f"a {key.key_type.name} key cannot be a CA key on a PKCS#11 token: use EC P-256/P-384 "
                           f"or RSA ({PKCS11_MLDSA_REFUSAL})")
    KeyType.of(public)  # refuses curves and sizes Roles Anywhere refuses
    return public  # type: ignore[return-value]


class Pkcs11Key:
    """A CA key pair on a PKCS#11 token; the private key stays on it."""

    def __init__(self, ref: Pkcs11Ref, public_key: PublicKey) -> None:
        self._ref = ref
        self._public_key = public_key
        self._key_type = KeyType.of(public_key)
        self._hash = self._key_type.signature_hash()

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def ref(self) -> Pkcs11Ref:
        return self._ref

    @classmethod
    def adopt(cls, ref: Pkcs11Ref) -> Pkcs11Key:
        """The key pair ``ref`` names, checked to be a non-extractable signing key."""

        def read(session: pkcs11.Session) -> PublicKey:
            private = _find(session, ref, ObjectClass.PRIVATE_KEY)
            if private is None:
                raise NotFound(f"no private key {ref.key_name} on token {ref.token!r}")
            if private[Attribute.EXTRACTABLE] or not private[Attribute.SENSITIVE]:
                raise InvalidInput(f"the key {ref.key_name} on token {ref.token!r} can be exported: a CA key "
                                   "must be sensitive and not extractable (generate one on the token)")
            if not private[Attribute.SIGN]:
                raise InvalidInput(f"the key {ref.key_name} on token {ref.token!r} is not allowed to sign")
            public = _find(session, ref, ObjectClass.PUBLIC_KEY)
            if public is None:
                raise NotFound(f"no public key {ref.key_name} on token {ref.token!r} next to the private key")
            return _public_key(public)  # type: ignore[arg-type]

        return cls(ref, _call(ref, read))

    @classmethod
    def generate(cls, ref: Pkcs11Ref, key_type: KeyType) -> Pkcs11Key:
        """A new key pair of ``key_type`` on the token, under ``ref``'s label and id (which must be free)."""
        if key_type.is_mldsa:
            raise InvalidInput(f"{key_type} on token {ref.token!r}: {PKCS11_MLDSA_REFUSAL}")
        key_id = ref.key_id or secrets.token_bytes(16)
        private_template = {Attribute.SENSITIVE: True, Attribute.EXTRACTABLE: False, Attribute.PRIVATE: True,
                            Attribute.SIGN: True, Attribute.TOKEN: True}
        public_template = {Attribute.VERIFY: True, Attribute.TOKEN: True}

        def make(session: pkcs11.Session) -> PublicKey:
            if _find(session, ref, ObjectClass.PRIVATE_KEY) is not None:
                raise Conflict(f"token {ref.token!r} already holds a key {ref.key_name}: adopt it, or choose "
                               "another label")
            common = {"store": True, "label": ref.label, "id": key_id,
                      "capabilities": MechanismFlag.SIGN | MechanismFlag.VERIFY,
                      "public_template": public_template, "private_template": private_template}
            if key_type.is_ec:
                params = session.create_domain_parameters(
                    P11KeyType.EC, {Attribute.EC_PARAMS: encode_named_curve_parameters(_CURVES[key_type])},
                    local=True)
                public, _ = params.generate_keypair(**common)  # type: ignore[arg-type]
            else:
                public, _ = session.generate_keypair(P11KeyType.RSA, int(key_type.value[4:]), **common)
            return _public_key(public)

        return cls(ref if ref.key_id else _with_id(ref, key_id), _call(ref, make))

    def _private(self, session: pkcs11.Session) -> pkcs11.SignMixin:
        module = _module(self._ref.module)
        cache_key = (self._ref.token, self._ref.label, self._ref.key_id)
        key = module.keys.get(cache_key)
        if key is None:
            found = _find(session, self._ref, ObjectClass.PRIVATE_KEY)
            if found is None:
                raise NotFound(f"the key {self._ref.key_name} is no longer on token {self._ref.token!r}")
            if not isinstance(found, pkcs11.SignMixin):
                raise InvalidInput(f"the key {self._ref.key_name} on token {self._ref.token!r} cannot sign")
            key = module.keys[cache_key] = found
        return key

    def public_key(self) -> PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        if self._hash is None:  # pragma: no cover - _public_key never makes an ML-DSA Pkcs11Key
            raise InvalidInput(PKCS11_MLDSA_REFUSAL)
        if self._key_type.is_ec:
            digest = hashlib.new(self._hash.name, data).digest()
            raw = _call(self._ref, lambda s: self._private(s).sign(digest, mechanism=Mechanism.ECDSA))
            return ecdsa_der_signature(raw)
        mechanism = Mechanism.SHA384_RSA_PKCS if self._hash.name == "sha384" else Mechanism.SHA256_RSA_PKCS
        return _call(self._ref, lambda s: self._private(s).sign(data, mechanism=mechanism))

    def describe(self) -> str:
        return f"pkcs11 token {self._ref.token!r} key {self._ref.key_name} ({self._key_type})"


def _with_id(ref: Pkcs11Ref, key_id: bytes) -> Pkcs11Ref:
    return Pkcs11Ref(module=ref.module, token=ref.token, label=ref.label, key_id=key_id, pin_env=ref.pin_env,
                     pin_file=ref.pin_file)
