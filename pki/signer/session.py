"""One CreateSession exchange: sign, send, retry, and explain failures.

Kept to the standard library's ``http.client`` (``ssl`` only for https) because
``credential-process`` runs this on every SDK refresh and its start-up time is the user's latency.
Requests are built exactly as the official helper builds them: the three ARNs in the query string,
the body ``{"durationSeconds":N}`` (plus ``roleSessionName`` when asked) as compact JSON, signed by
:func:`pki.rolesanywhere.sigv4x509.sign_create_session`. Each retry is signed again, with a fresh ``X-Amz-Date``.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from pki import __version__
from pki.errors import InvalidInput, RapkiError
from pki.rolesanywhere.endpoints import Endpoint, env_flag, resolve_endpoint, session_region
from pki.rolesanywhere.partitions import split_fips
from pki.signer.material import Material, describe_certificate

DEFAULT_DURATION = 3600
DEFAULT_MAX_ATTEMPTS = 3
BACKOFF_BASE = 0.5  # seconds; full jitter, doubled per attempt
BACKOFF_CAP = 20.0
RETRYABLE_TYPES = {
    "ThrottlingException",
    "Throttling",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "InternalServerException",
    "InternalFailure",
}
USER_AGENT = f"rapki-signer/{__version__} (python {sys.version_info[0]}.{sys.version_info[1]}; {sys.platform})"


@dataclass
class SessionOptions:
    """Everything the credential-vending commands take, named after the helper's flags."""

    # Paths (``-``: standard input, ``pkcs11:`` URIs), or for the Python API bytes and loaded objects.
    certificate: Any = ""
    private_key: Any = None
    intermediates: Any = None
    pkcs8_password: str | None = None
    trust_anchor_arn: str = ""
    profile_arn: str = ""
    role_arn: str = ""
    session_duration: int = DEFAULT_DURATION
    region: str | None = None
    endpoint: str | None = None
    role_session_name: str | None = None
    no_verify_ssl: bool = False
    with_proxy: bool = False
    ca_bundle: str | None = None
    use_fips_endpoint: bool = False
    use_dualstack_endpoint: bool = False
    debug: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float = 10.0
    pkcs11_lib: str | None = None
    reuse_pin: bool = False

    def __post_init__(self) -> None:
        # The SDK-wide environment settings the helper honours through the Go SDK's config loader.
        self.ca_bundle = self.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
        self.use_fips_endpoint = self.use_fips_endpoint or env_flag("AWS_USE_FIPS_ENDPOINT")
        self.use_dualstack_endpoint = self.use_dualstack_endpoint or env_flag("AWS_USE_DUALSTACK_ENDPOINT")
        attempts = os.environ.get("AWS_MAX_ATTEMPTS", "").strip()
        if attempts.isdigit() and int(attempts) > 0 and self.max_attempts == DEFAULT_MAX_ATTEMPTS:
            self.max_attempts = int(attempts)

    def check(self) -> None:
        missing = [
            flag
            for flag, value in (
                ("--trust-anchor-arn", self.trust_anchor_arn),
                ("--profile-arn", self.profile_arn),
                ("--role-arn", self.role_arn),
                # A token key alone is enough: its certificate is found on the token.
                ("--certificate", self.certificate or str(self.private_key or "").startswith("pkcs11:")),
            )
            if not value
        ]
        if missing:
            raise InvalidInput(f"missing required flag(s): {', '.join(missing)}")

    def load_material(self) -> Material:
        from pki.signer.inputs import load_any

        return load_any(
            self.certificate,
            self.private_key,
            self.intermediates,
            self.pkcs8_password,
            pkcs11_lib=self.pkcs11_lib,
            reuse_pin=self.reuse_pin,
        )

    def file_paths(self) -> list[str]:
        """The files behind the material (not stdin, tokens or objects): serve watches them."""
        given = (self.certificate, self.private_key, self.intermediates)
        return [p for p in given if isinstance(p, str) and p and p != "-" and not p.startswith("pkcs11:")]


@dataclass(frozen=True)
class Credentials:
    """Temporary credentials as CreateSession returned them (``expiration`` verbatim)."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: str
    # Extra facts from the response, useful for logs and the Python API; not printed by the CLI.
    role_arn: str = field(default="", compare=False)
    source_identity: str = field(default="", compare=False)
    assumed_role_arn: str = field(default="", compare=False)

    @property
    def expires_at(self) -> datetime:
        return parse_time(self.expiration)

    def seconds_left(self, now: datetime | None = None) -> float:
        return (self.expires_at - (now or datetime.now(UTC))).total_seconds()

    def process_output(self) -> str:
        """The credential_process JSON, byte for byte what the helper prints (no newline)."""
        return go_json(
            {
                "Version": 1,
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "SessionToken": self.session_token,
                "Expiration": self.expiration,
            }
        )


class CreateSessionError(RapkiError):
    """CreateSession failed. ``str()`` is the service's error type and message; ``hint`` says what to do."""

    code = "create_session_failed"
    exit_code = 1

    def __init__(
        self,
        message: str,
        *,
        error_type: str = "",
        status: int | None = None,
        hint: str = "",
        retryable: bool = False,
        retry_after: float | None = None,
    ) -> None:
        self.error_type = error_type
        self.status = status
        self.message = message
        self.hint = hint
        self.retryable = retryable
        self.retry_after = retry_after
        self.service_detail = ""
        self.server_date: datetime | None = None
        prefix = error_type or "Error"
        if status is not None:
            prefix += f" (HTTP {status})"
        super().__init__(f"CreateSession failed: {prefix}: {message}")


def parse_time(text: str) -> datetime:
    """ISO 8601 as the service writes it (``2026-07-27T04:36:55Z``, fractions allowed)."""
    value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def go_json(value: Any) -> str:
    """Compact JSON escaped like Go's encoding/json (``<``, ``>``, ``&``, U+2028/9 as \\u escapes)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    for raw, escaped in (
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("&", "\\u0026"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        text = text.replace(raw, escaped)
    return text


def request_body(duration: int, role_session_name: str | None) -> bytes:
    """The helper's body: members in the SDK serializer's order, compact."""
    body: dict[str, Any] = {"durationSeconds": int(duration)}
    if role_session_name:
        body["roleSessionName"] = role_session_name
    return go_json(body).encode()


def debug_log(enabled: bool, text: str) -> None:
    if enabled:
        print(f"rapki-signer: debug: {text}", file=sys.stderr, flush=True)


def _connection(endpoint: Endpoint, opts: SessionOptions) -> tuple[http.client.HTTPConnection, str]:
    """An unopened connection and the request target (absolute URL when going through an http proxy)."""
    proxy = _proxy_for(endpoint)
    context = None
    if endpoint.scheme == "https":
        context = tls_context(opts.ca_bundle, opts.no_verify_ssl)
    if proxy is None:
        if context is not None:
            return http.client.HTTPSConnection(
                endpoint.hostname, endpoint.port, timeout=opts.timeout, context=context
            ), ""
        return http.client.HTTPConnection(endpoint.hostname, endpoint.port, timeout=opts.timeout), ""
    from urllib.parse import urlsplit

    p = urlsplit(proxy if "://" in proxy else "http://" + proxy)
    proxy_port = p.port or (443 if p.scheme == "https" else 80)
    if context is not None:
        conn = http.client.HTTPSConnection(p.hostname or "", proxy_port, timeout=opts.timeout, context=context)
        headers = {}
        if p.username:
            import base64

            token = base64.b64encode(f"{p.username}:{p.password or ''}".encode()).decode()
            headers["Proxy-Authorization"] = f"Basic {token}"
        conn.set_tunnel(endpoint.hostname, endpoint.port, headers=headers)
        return conn, ""
    return http.client.HTTPConnection(p.hostname or "", proxy_port, timeout=opts.timeout), endpoint.url


def _proxy_for(endpoint: Endpoint) -> str | None:
    """HTTPS_PROXY/HTTP_PROXY/NO_PROXY, always honoured.

    The helper's transport is the Go SDK's default one, which already reads these variables;
    ``--with-proxy`` sets the same function again, so it changes nothing and is accepted for that.
    """
    # proxy_bypass_environment is public in urllib.request but missing from typeshed.
    from urllib.request import getproxies_environment, proxy_bypass_environment  # type: ignore[attr-defined]

    proxies = getproxies_environment()
    proxy = proxies.get(endpoint.scheme)
    if not proxy or proxy_bypass_environment(endpoint.hostname, proxies):
        return None
    return proxy


def tls_context(ca_bundle: str | None, no_verify: bool) -> Any:
    """TLS 1.2+; a --ca-bundle replaces the system store (as AWS_CA_BUNDLE does for the SDKs)."""
    import ssl

    if no_verify:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        try:
            context = ssl.create_default_context(cafile=ca_bundle) if ca_bundle else ssl.create_default_context()
        except (OSError, ssl.SSLError) as exc:
            raise InvalidInput(f"--ca-bundle {ca_bundle!r} cannot be used: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _sanitize_error_type(value: str) -> str:
    # restjson: "aws.protocoltests#FooError:http://..." -> "FooError"
    return value.split(":", 1)[0].rsplit("#", 1)[-1].strip()


def _service_error(status: int, headers: http.client.HTTPMessage, payload: bytes) -> CreateSessionError:
    error_type = _sanitize_error_type(headers.get("X-Amzn-ErrorType", "") or "")
    message = ""
    try:
        doc = json.loads(payload or b"{}")
    except ValueError:
        doc = None
    if isinstance(doc, dict):
        error_type = error_type or _sanitize_error_type(str(doc.get("__type") or doc.get("code") or ""))
        message = str(doc.get("message") or doc.get("Message") or "")
    if not message:
        message = payload.decode("utf-8", "replace").strip()[:300] or http.client.responses.get(status, "")
    retry_after = None
    if (ra := headers.get("Retry-After", "")).strip().isdigit():
        retry_after = float(ra)
    retryable = status == 429 or status >= 500 or error_type in RETRYABLE_TYPES
    error = CreateSessionError(
        message,
        error_type=error_type or "UnknownError",
        status=status,
        retryable=retryable,
        retry_after=retry_after,
    )
    # rapki's emulator says why it refused (AWS never does); worth showing next to our own hint.
    error.service_detail = headers.get("X-Rapki-Emulator-Detail", "") or ""
    error.server_date = _http_date(headers.get("Date", ""))
    return error


def _http_date(value: str) -> datetime | None:
    """The response's Date header: the service's clock, to measure skew against ours."""
    if not value:
        return None
    from email.utils import parsedate_to_datetime

    try:
        parsed = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _parse_success(payload: bytes) -> Credentials:
    try:
        doc = json.loads(payload)
        entry = doc["credentialSet"][0]
        creds = entry["credentials"]
        result = Credentials(
            access_key_id=creds["accessKeyId"],
            secret_access_key=creds["secretAccessKey"],
            session_token=creds["sessionToken"],
            expiration=creds["expiration"],
            role_arn=str(entry.get("roleArn") or ""),
            source_identity=str(entry.get("sourceIdentity") or ""),
            assumed_role_arn=str((entry.get("assumedRoleUser") or {}).get("arn") or ""),
        )
    except (ValueError, KeyError, IndexError, TypeError):
        raise CreateSessionError(
            "unable to obtain temporary security credentials from CreateSession "
            f"(unexpected response: {payload[:200]!r})"
        ) from None
    if not (result.access_key_id and result.secret_access_key and result.session_token and result.expiration):
        raise CreateSessionError("CreateSession returned empty credentials")
    try:
        parse_time(result.expiration)
    except ValueError:
        raise CreateSessionError(f"CreateSession returned an unreadable expiration {result.expiration!r}") from None
    return result


def distribution_points(cert: x509.Certificate) -> list[str]:
    """The URLs of the certificate's CRL Distribution Points extension (none when it has none)."""
    try:
        points = cert.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return []
    return [name.value for point in points for name in point.full_name or ()
            if isinstance(name, x509.UniformResourceIdentifier)]


def hint_for(
    error: CreateSessionError, material: Material, opts: SessionOptions, endpoint: Endpoint, now: datetime
) -> str:
    """What a person should check, given the service's error and what was sent."""
    msg = error.message.lower()
    cert = material.certificate
    if "invalid signature" in msg or "signature expired" in msg or "skew" in msg:
        if error.server_date is not None:
            skew = (now - error.server_date).total_seconds()
            if abs(skew) > 60:
                direction = "ahead of" if skew > 0 else "behind"
                return (
                    f"this host's clock is {abs(skew) / 60:.0f} minutes {direction} the service's "
                    f"(ours {now:%Y-%m-%dT%H:%M:%SZ}, theirs {error.server_date:%Y-%m-%dT%H:%M:%SZ} UTC); "
                    "requests more than 5 minutes off are refused: sync the clock (chrony/ntp)"
                )
        return (
            "the service could not verify the signature. The private key matches the certificate "
            "(checked locally), so the usual cause is clock skew: this host's clock reads "
            f"{now:%Y-%m-%dT%H:%M:%SZ} UTC and requests more than 5 minutes off are refused; "
            "sync it (chrony/ntp). Otherwise check that --private-key is the key this certificate was "
            "issued for and that no proxy rewrites the request."
        )
    if "untrusted" in msg:
        sent = "; ".join(describe_certificate(c) for c in material.chain) or "none (no --intermediates)"
        lines = [
            f"sent leaf {describe_certificate(cert)}",
            f"chain sent in X-Amz-X509-Chain: {sent}",
            f"trust anchor named: {opts.trust_anchor_arn}",
        ]
        subjects = {c.subject for c in material.chain}
        if cert.issuer not in subjects and cert.issuer != cert.subject:
            lines.append(
                f"the leaf's issuer ({cert.issuer.rfc4514_string()}) must be the anchor's certificate, or "
                "be sent with --intermediates so the service can build a path to the anchor"
            )
        else:
            lines.append("the anchor must hold the root or intermediate CA that issued this chain")
        for url in distribution_points(cert)[:1]:
            lines.append(f"the leaf names a CRL distribution point ({url}): an anchor with crlDpRevocationEnabled "
                         "also refuses it when no current CRL of its issuer is there ('rapki doctor' fetches it)")
        if not (cert.not_valid_before_utc <= now <= cert.not_valid_after_utc):
            lines.append(
                f"the leaf is not valid now (valid {cert.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} to "
                f"{cert.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ})"
            )
        return "\n  ".join(lines)
    if "revoked" in msg:
        where = "a CRL imported into the trust anchor"
        for url in distribution_points(cert)[:1]:  # an anchor with crlDpRevocationEnabled reads this one
            where += f" or on the CRL at its distribution point {url}"
        return f"certificate serial {cert.serial_number:x} is on {where}: issue a new certificate"
    if "rolesessionname" in msg:
        return "the profile must set acceptRoleSessionName to allow --role-session-name; or drop the flag"
    if error.error_type == "ResourceNotFoundException":
        return (
            f"check --profile-arn, --trust-anchor-arn and --role-arn and the region: the request went to {endpoint.url}"
        )
    if "duration" in msg:
        return "--session-duration must be 900-43200 seconds and at most the profile's and role's maximum"
    if error.error_type == "AccessDeniedException":
        return (
            "check that the profile and trust anchor are enabled, the role is in the profile, and the role's "
            "trust policy allows rolesanywhere.amazonaws.com for this trust anchor"
        )
    if error.retryable:
        return f"the service kept failing after {opts.max_attempts} attempts; try again later"
    return ""


def _transport_error(exc: BaseException, endpoint: Endpoint, opts: SessionOptions) -> CreateSessionError:
    import ssl

    if isinstance(exc, ssl.SSLCertVerificationError):
        reason = str(exc.verify_message or exc)
        where = f"--ca-bundle {opts.ca_bundle}" if opts.ca_bundle else "the system trust store"
        if "not yet valid" in reason or "expired" in reason:
            hint = (
                f"check this host's clock (it reads {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ} UTC) and the "
                "endpoint certificate's validity"
            )
        elif "hostname" in reason or "IP address mismatch" in reason:
            hint = f"the endpoint's certificate does not name {endpoint.hostname}: check --endpoint"
        else:
            hint = f"the endpoint's certificate does not chain to {where}: pass its CA with --ca-bundle"
            hint += " (or AWS_CA_BUNDLE)"
        return CreateSessionError(
            f"TLS verification of {endpoint.host_header} failed: {reason}", error_type="TLSError", hint=hint
        )
    reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return CreateSessionError(
        f"could not reach {endpoint.url}: {reason}",
        error_type="ConnectionError",
        retryable=True,
        hint="check --endpoint/--region, the network path, and HTTPS_PROXY/NO_PROXY if a proxy is needed",
    )


def create_session(
    opts: SessionOptions,
    *,
    material: Material | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], None] = time.sleep,
) -> Credentials:
    """Exchange the certificate for credentials, retrying throttling, 5xx and connection errors."""
    from pki.rolesanywhere.sigv4x509 import sign_create_session

    opts.check()
    region, fips_region = split_fips(session_region(opts.trust_anchor_arn, opts.profile_arn, opts.region))
    endpoint = resolve_endpoint(
        region,
        opts.endpoint,
        use_fips=opts.use_fips_endpoint or fips_region,
        use_dualstack=opts.use_dualstack_endpoint,
    )
    if endpoint.base_path:
        raise InvalidInput(f"--endpoint {opts.endpoint!r}: a path is not supported, give scheme://host[:port]")
    if material is None:
        material = opts.load_material()
    body = request_body(opts.session_duration, opts.role_session_name)
    query = {
        "profileArn": opts.profile_arn,
        "roleArn": opts.role_arn,
        "trustAnchorArn": opts.trust_anchor_arn,
    }
    attempts = max(1, opts.max_attempts)
    last: CreateSessionError | None = None
    now = clock()
    for attempt in range(attempts):
        if attempt:
            cap = min(BACKOFF_CAP, BACKOFF_BASE * 2**attempt)
            delay = random.uniform(0, cap)
            if last is not None and last.retry_after is not None:
                delay = min(BACKOFF_CAP, max(delay, last.retry_after))
            debug_log(opts.debug, f"retrying in {delay:.2f}s (attempt {attempt + 1} of {attempts})")
            sleep(delay)
        now = clock()
        signed = sign_create_session(
            certificate=material.certificate,
            private_key=material.private_key,
            chain=material.chain,
            host=endpoint.host_header,
            region=region,
            query=query,
            body=body,
            now=now,
        )
        debug_log(opts.debug, f"POST {endpoint.url}{signed.path_and_query}")
        debug_log(opts.debug, "canonical request:\n" + signed.canonical_request)
        debug_log(opts.debug, "string to sign:\n" + signed.string_to_sign)
        conn, target_prefix = _connection(endpoint, opts)
        headers = dict(signed.headers)
        headers["User-Agent"] = USER_AGENT
        try:
            conn.request("POST", target_prefix + signed.path_and_query, body=signed.body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            status = response.status
            if status in (200, 201):
                debug_log(opts.debug, f"response {status}: {len(payload)} bytes (credentials not logged)")
                return _parse_success(payload)
            debug_log(opts.debug, f"response {status}: {payload[:2000]!r}")
            last = _service_error(status, response.headers, payload)
        except CreateSessionError:
            raise
        except (OSError, http.client.HTTPException) as exc:
            last = _transport_error(exc, endpoint, opts)
        finally:
            conn.close()
        if not last.retryable:
            break
    assert last is not None
    if not last.hint:
        last.hint = hint_for(last, material, opts, endpoint, now)
    if last.service_detail:
        last.hint = (last.hint + "\n  " if last.hint else "") + f"service detail: {last.service_detail}"
    raise last
