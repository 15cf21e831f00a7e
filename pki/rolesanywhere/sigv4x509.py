"""SigV4-X509: how a CreateSession request is signed with a certificate's key, and checked.

Roles Anywhere reuses SigV4 canonicalisation (canonical request, string to sign, credential scope)
but replaces the HMAC key derivation with a plain signature by the certificate's private key over
the string to sign. Both halves live here so the signer and the emulator cannot drift apart:

* ``sign_create_session`` builds the headers a client sends (``rapki-signer`` uses it);
* ``verify_create_session`` checks a received request byte for byte (the emulator uses it).

Kept to the standard library and ``cryptography``: this module sits on the signer's start-up path,
which runs on every SDK credential refresh.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import cast
from urllib.parse import quote, unquote

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from pki.errors import RapkiError
from pki.x509.keys import PrivateKey, key_family, sign_message, signature_verifies

ALGORITHM_RSA = "AWS4-X509-RSA-SHA256"
ALGORITHM_ECDSA = "AWS4-X509-ECDSA-SHA256"
ALGORITHM_MLDSA = "AWS4-X509-MLDSA"
_ALGORITHM_BY_FAMILY = {"rsa": ALGORITHM_RSA, "ec": ALGORITHM_ECDSA, "mldsa": ALGORITHM_MLDSA}
ALGORITHMS = (ALGORITHM_RSA, ALGORITHM_ECDSA, ALGORITHM_MLDSA)
SERVICE = "rolesanywhere"
TERMINATOR = "aws4_request"
SESSIONS_PATH = "/sessions"
AMZ_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
MAX_CLOCK_SKEW = timedelta(minutes=5)
MAX_CHAIN_CERTIFICATES = 5
CONTENT_TYPE = "application/json"

# ML-DSA key classes, private and public (any parameter set: the algorithm name does not say which).

# Headers never signed: Authorization carries the signature itself, and User-Agent is rewritten by
# proxies and SDK middleware, so the official helper leaves it out.
_UNSIGNED_HEADERS = frozenset({"authorization", "user-agent"})
# What a CreateSession signature must cover for the request to mean anything: the endpoint, the
# time, and the certificate whose key signed it.
REQUIRED_SIGNED_HEADERS = ("host", "x-amz-date", "x-amz-x509")
_SPACES = re.compile(r" +")
_AUTH_RE = re.compile(
    r"^(?P<alg>AWS4-X509-(?:[A-Z0-9]+-SHA256|MLDSA)) +"
    r"Credential=(?P<cred>[^,\s]+), *SignedHeaders=(?P<signed>[^,\s]+), *"
    r"Signature=(?P<sig>[0-9a-fA-F]+)$"
)


class SignatureError(RapkiError):
    """A CreateSession request whose signature, date or certificate header cannot be accepted.

    ``message``, ``error_type`` and ``http_status`` are what the service answers, so the emulator
    can return them unchanged and clients see the same failure they would see from AWS.
    """

    code = "signature_error"
    exit_code = 1
    http_status = 403
    error_type = "AccessDeniedException"
    default_message = "Invalid signature"

    def __init__(self, message: str | None = None, *, detail: str | None = None) -> None:
        self.message = message or self.default_message
        # ``detail`` says why in our own words (for logs and tests); the service never reveals it.
        self.detail = detail
        super().__init__(self.message)


class InvalidSignatureError(SignatureError):
    """The signature does not verify over what was received, or the scope/headers are wrong."""


class SignatureExpiredError(SignatureError):
    """``X-Amz-Date`` is more than five minutes away from the server's clock."""


class MissingAuthenticationError(SignatureError):
    """No ``Authorization`` header (or not a SigV4-X509 one) at all."""

    default_message = "Missing Authentication Token"


class CertificateHeaderError(SignatureError):
    """``X-Amz-X509`` or ``X-Amz-X509-Chain`` is missing or not base64 DER certificates."""

    default_message = "Untrusted Signing Certificate"


@dataclass(frozen=True)
class SignedRequest:
    """Everything a client needs to send a signed CreateSession, plus the intermediate strings."""

    path_and_query: (
        str  # "/sessions?profileArn=...&roleArn=...&trustAnchorArn=..." (canonical encoding)
    )
    headers: dict[
        str, str
    ]  # Host, X-Amz-Date, X-Amz-X509, [X-Amz-X509-Chain], Content-Type, Authorization
    body: bytes
    canonical_request: str
    string_to_sign: str


@dataclass(frozen=True)
class ParsedAuthorization:
    algorithm: str
    serial: int
    date: str  # YYYYMMDD from the credential scope
    region: str
    service: str
    terminator: str
    signed_headers: tuple[str, ...]
    signature: bytes

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/{self.terminator}"


@dataclass(frozen=True)
class VerifiedRequest:
    """A CreateSession request whose signature checked out; what the caller still has to judge."""

    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    region: str
    amz_date: datetime
    authorization: ParsedAuthorization
    canonical_request: str = field(repr=False)
    string_to_sign: str = field(repr=False)


# --------------------------------------------------------------------------------------------
# The pieces both sides use


def uri_encode(value: str) -> str:
    """RFC 3986 percent-encoding as SigV4 wants it: only ``A-Za-z0-9-_.~`` stay bare."""
    return quote(value, safe="")


def canonical_query(query: Mapping[str, str] | Iterable[tuple[str, str]]) -> str:
    """Parameters encoded then sorted by name (and value, for repeated names), joined by ``&``."""
    items = query.items() if isinstance(query, Mapping) else query
    encoded = sorted((uri_encode(str(k)), uri_encode(str(v))) for k, v in items)
    return "&".join(f"{k}={v}" for k, v in encoded)


def canonical_query_from_raw(raw_query: str | bytes) -> str:
    """The canonical form of a query string as received (each part decoded once, then re-encoded).

    ``+`` is kept as a literal plus (not a space): SigV4 clients percent-encode spaces as ``%20``,
    so a bare ``+`` can only be a plus the client also signed as ``%2B``.
    """
    text = raw_query.decode("latin-1") if isinstance(raw_query, bytes) else raw_query
    pairs = []
    for part in text.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        pairs.append((unquote(name), unquote(value)))
    return canonical_query(pairs)


def _normalise_value(value: str) -> str:
    return _SPACES.sub(" ", value.strip())


def canonical_headers(
    headers: Mapping[str, str] | Iterable[tuple[str, str]], only: Iterable[str] | None = None
) -> tuple[str, str]:
    """``(canonical header block, signed header list)`` for the given headers.

    Without ``only``, every header except Authorization/User-Agent is included (the signing side).
    With ``only`` (the verifying side), exactly those lower-cased names are used; a name missing
    from ``headers`` raises KeyError so the caller can refuse the request.
    """
    items = headers.items() if isinstance(headers, Mapping) else headers
    merged: dict[str, list[str]] = {}
    for name, value in items:
        merged.setdefault(name.strip().lower(), []).append(_normalise_value(str(value)))
    if only is None:
        names = sorted(n for n in merged if n not in _UNSIGNED_HEADERS)
    else:
        names = sorted({n.lower() for n in only})
        for name in names:
            if name not in merged:
                raise KeyError(name)
    block = "".join(f"{name}:{','.join(merged[name])}\n" for name in names)
    return block, ";".join(names)


def algorithm_for_key(key: object) -> str:
    """The SigV4-X509 algorithm name: it depends on the key type only (P-384 stays ECDSA-SHA256,
    every ML-DSA parameter set is ``AWS4-X509-MLDSA``)."""
    algorithm = _ALGORITHM_BY_FAMILY.get(key_family(key))
    if algorithm is not None:
        return algorithm
    raise ValueError(f"{type(key).__name__.lstrip('_')} keys cannot sign Roles Anywhere requests")


def format_amz_date(now: datetime) -> str:
    if now.tzinfo is None:  # a naive time is taken as UTC, which is what every caller means
        now = now.replace(tzinfo=UTC)
    return now.astimezone(UTC).strftime(AMZ_DATE_FORMAT)


def parse_amz_date(text: str) -> datetime:
    return datetime.strptime(text, AMZ_DATE_FORMAT).replace(tzinfo=UTC)


def credential_scope(amz_date: str, region: str) -> str:
    return f"{amz_date[:8]}/{region}/{SERVICE}/{TERMINATOR}"


def payload_hash(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def build_canonical_request(
    *, method: str, path: str, query: str, header_block: str, signed_headers: str, body: bytes
) -> str:
    return "\n".join([method, path, query, header_block, signed_headers, payload_hash(body)])


def build_string_to_sign(algorithm: str, amz_date: str, scope: str, canonical_request: str) -> str:
    digest = hashlib.sha256(canonical_request.encode("utf-8")).hexdigest()
    return f"{algorithm}\n{amz_date}\n{scope}\n{digest}"


def sign_bytes(private_key: object, data: bytes) -> bytes:
    """The raw signature: RSA PKCS#1 v1.5 + SHA-256, DER ECDSA with SHA-256 (any curve), or pure
    ML-DSA over ``data`` itself with an empty context (FIPS 204, no pre-hash), as the helper signs.

    The helper signs ML-DSA deterministically; ``cryptography`` only signs hedged (fresh randomness
    mixed in, which FIPS 204 recommends against fault and side-channel attacks). The verifier cannot
    tell the two apart, so only the signature bytes differ from the helper's, as with ECDSA.
    """
    if not key_family(private_key):
        raise ValueError(f"{type(private_key).__name__.lstrip('_')} keys cannot sign Roles Anywhere requests")
    return sign_message(cast(PrivateKey, private_key), data, hashes.SHA256())


def verify_bytes(public_key: object, signature: bytes, data: bytes) -> bool:
    """True when ``signature`` is a valid SigV4-X509 signature of ``data`` by ``public_key``."""
    try:
        return signature_verifies(public_key, signature, data, hashes.SHA256())
    except ValueError:
        return False


def certificate_header(cert: x509.Certificate) -> str:
    """Standard base64 of the DER, no line breaks: the ``X-Amz-X509`` value."""
    return base64.b64encode(cert.public_bytes(serialization.Encoding.DER)).decode("ascii")


def chain_header(chain: Sequence[x509.Certificate]) -> str:
    return ",".join(certificate_header(c) for c in chain)


def parse_certificate_header(value: str) -> x509.Certificate:
    try:
        der = base64.b64decode(value.strip(), validate=True)
        return x509.load_der_x509_certificate(der)
    except (binascii.Error, ValueError) as exc:
        raise CertificateHeaderError(detail=f"not a base64 DER certificate: {exc}") from exc


def parse_chain_header(value: str) -> tuple[x509.Certificate, ...]:
    parts = [p for p in value.split(",") if p.strip()]
    return tuple(parse_certificate_header(p) for p in parts)


def parse_authorization(value: str) -> ParsedAuthorization:
    """Split an ``AWS4-X509-...`` Authorization header; InvalidSignatureError when malformed."""
    text = value.strip()
    if not text.startswith("AWS4-X509-"):
        raise MissingAuthenticationError(detail="the Authorization header is not SigV4-X509")
    match = _AUTH_RE.match(text)
    if match is None:
        raise InvalidSignatureError(detail="malformed Authorization header")
    algorithm = match["alg"]
    if algorithm not in ALGORITHMS:
        raise InvalidSignatureError(detail=f"unknown algorithm {algorithm}")
    parts = match["cred"].split("/")
    if len(parts) != 5 or not parts[0].isdigit():
        raise InvalidSignatureError(
            detail="Credential must be <serial>/<date>/<region>/<service>/aws4_request"
        )
    sig_hex = match["sig"]
    if len(sig_hex) % 2:
        raise InvalidSignatureError(detail="the signature is not whole hex bytes")
    return ParsedAuthorization(
        algorithm=algorithm,
        serial=int(parts[0]),
        date=parts[1],
        region=parts[2],
        service=parts[3],
        terminator=parts[4],
        signed_headers=tuple(match["signed"].split(";")),
        signature=bytes.fromhex(sig_hex),
    )


# --------------------------------------------------------------------------------------------
# Signing (client side)


def sign_create_session(
    *,
    certificate: x509.Certificate,
    private_key: object,
    chain: Sequence[x509.Certificate] = (),
    host: str,
    region: str,
    query: Mapping[str, str],
    body: bytes,
    now: datetime,
) -> SignedRequest:
    """Sign ``POST /sessions`` exactly as the official helper does.

    ``host`` is the Host header value, with ``:port`` when the port is not the default. ``region``
    is the plain region (also on FIPS hosts). ``private_key`` is any ``cryptography`` RSA, EC or ML-DSA
    private key (including hardware-backed implementations of those interfaces); the algorithm
    name comes from the certificate's public key, which the key must match.
    """
    algorithm = algorithm_for_key(certificate.public_key())
    amz_date = format_amz_date(now)
    headers: dict[str, str] = {
        "Host": host,
        "X-Amz-Date": amz_date,
        "X-Amz-X509": certificate_header(certificate),
    }
    if chain:
        headers["X-Amz-X509-Chain"] = chain_header(chain)
    headers["Content-Type"] = CONTENT_TYPE
    query_string = canonical_query(query)
    block, signed = canonical_headers(headers)
    canonical_request = build_canonical_request(
        method="POST",
        path=SESSIONS_PATH,
        query=query_string,
        header_block=block,
        signed_headers=signed,
        body=body,
    )
    scope = credential_scope(amz_date, region)
    to_sign = build_string_to_sign(algorithm, amz_date, scope, canonical_request)
    signature = sign_bytes(private_key, to_sign.encode("utf-8")).hex()
    headers["Authorization"] = (
        f"{algorithm} Credential={certificate.serial_number}/{scope}, "
        f"SignedHeaders={signed}, Signature={signature}"
    )
    return SignedRequest(
        path_and_query=f"{SESSIONS_PATH}?{query_string}" if query_string else SESSIONS_PATH,
        headers=headers,
        body=body,
        canonical_request=canonical_request,
        string_to_sign=to_sign,
    )


# --------------------------------------------------------------------------------------------
# Verifying (service side)


def verify_create_session(
    *,
    method: str,
    path: str,
    raw_query: str | bytes,
    headers: Mapping[str, str] | Iterable[tuple[str, str]],
    body: bytes,
    now: datetime,
    expected_region: str | None = None,
    max_skew: timedelta = MAX_CLOCK_SKEW,
) -> VerifiedRequest:
    """Check a received CreateSession request; raise a SignatureError the service would return.

    Everything is recomputed from what was received: the raw query (decoded and re-encoded), the
    header values as sent, and the body bytes as sent (any JSON formatting is fine since the hash
    covers the bytes). ``expected_region`` is the endpoint's region; when given, the credential
    scope must name it. The certificate path itself is not judged here (that needs trust anchors).
    """
    items = list(headers.items() if isinstance(headers, Mapping) else headers)
    lower: dict[str, str] = {}
    for name, value in items:
        lower.setdefault(name.lower(), value)
    if "authorization" not in lower:
        raise MissingAuthenticationError(detail="no Authorization header")
    auth = parse_authorization(lower["authorization"])

    if "x-amz-x509" not in lower:
        raise CertificateHeaderError(detail="no X-Amz-X509 header")
    certificate = parse_certificate_header(lower["x-amz-x509"])
    chain = parse_chain_header(lower["x-amz-x509-chain"]) if "x-amz-x509-chain" in lower else ()

    date_text = lower.get("x-amz-date", "")
    try:
        amz_date = parse_amz_date(date_text)
    except ValueError:
        raise InvalidSignatureError(
            detail=f"X-Amz-Date {date_text!r} is not YYYYMMDDTHHMMSSZ"
        ) from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if abs(now - amz_date) > max_skew:
        earlier_or_later = "earlier" if amz_date < now else "later"
        bound = now - max_skew if amz_date < now else now + max_skew
        sign = "-" if amz_date < now else "+"
        raise SignatureExpiredError(
            f"Signature expired: {date_text} is now {earlier_or_later} than "
            f"{format_amz_date(bound)} ({format_amz_date(now)} {sign} 5 min.)",
            detail="X-Amz-Date is outside the allowed clock skew",
        )

    try:
        expected_alg = algorithm_for_key(certificate.public_key())
    except ValueError:
        raise CertificateHeaderError(detail="the certificate key is neither RSA, EC nor ML-DSA") from None
    if auth.algorithm != expected_alg:
        raise InvalidSignatureError(
            detail=f"{auth.algorithm} does not match the certificate key ({expected_alg})"
        )
    if auth.serial != certificate.serial_number:
        raise InvalidSignatureError(
            detail="Credential does not name the certificate's serial number"
        )
    if auth.date != date_text[:8] or auth.service != SERVICE or auth.terminator != TERMINATOR:
        raise InvalidSignatureError(detail=f"bad credential scope {auth.scope}")
    if expected_region is not None and auth.region != expected_region:
        raise InvalidSignatureError(
            detail=f"scope region {auth.region} is not the endpoint's ({expected_region})"
        )
    signed_set = set(auth.signed_headers)
    if list(auth.signed_headers) != sorted(signed_set) or "" in signed_set:
        raise InvalidSignatureError(detail="SignedHeaders must be lower-case, sorted and unique")
    required = set(REQUIRED_SIGNED_HEADERS) | (
        {"x-amz-x509-chain"} if "x-amz-x509-chain" in lower else set()
    )
    if missing := sorted(required - signed_set):
        raise InvalidSignatureError(detail=f"headers not signed: {', '.join(missing)}")
    try:
        block, signed = canonical_headers(items, only=auth.signed_headers)
    except KeyError as exc:
        raise InvalidSignatureError(
            detail=f"signed header {exc.args[0]} is not in the request"
        ) from None

    canonical_request = build_canonical_request(
        method=method.upper(),
        path=path,
        query=canonical_query_from_raw(raw_query),
        header_block=block,
        signed_headers=signed,
        body=body,
    )
    to_sign = build_string_to_sign(auth.algorithm, date_text, auth.scope, canonical_request)
    if not verify_bytes(certificate.public_key(), auth.signature, to_sign.encode("utf-8")):
        raise InvalidSignatureError(
            detail="the signature does not verify with the certificate's key"
        )
    return VerifiedRequest(
        certificate=certificate,
        chain=chain,
        region=auth.region,
        amz_date=amz_date,
        authorization=auth,
        canonical_request=canonical_request,
        string_to_sign=to_sign,
    )
