"""A Roles Anywhere client: boto3 underneath, our retry policy on top, one-line errors out.

Why not botocore's own retries: the publisher must (a) count the calls it makes (a run with nothing
new makes no write), (b) back off politely against the 1 request/second control-plane quota, and
(c) look before it retries a non-idempotent ImportCrl (a timed-out import may have happened). So
botocore makes exactly one attempt per call and ``RolesAnywhere.call`` decides about the next one.

Retries are bounded twice: at most ``max_attempts`` attempts per call (``$RAPKI_AWS_MAX_ATTEMPTS``,
default 6), and at most ``retry_budget`` seconds of waiting between attempts over the client's whole
life, i.e. one command (``$RAPKI_AWS_RETRY_BUDGET``, default 30): a retry whose wait would pass the
budget is not made. Each attempt is itself bounded by the connect and read timeouts. Every retry is
announced through ``AwsOptions.on_retry`` (the CLI prints it on stderr), so a slow failure is never silent.

Configuration is what every AWS tool honours: ``--endpoint-url`` or ``AWS_ENDPOINT_URL_ROLESANYWHERE``
/ ``AWS_ENDPOINT_URL``; ``--ca-bundle`` or ``AWS_CA_BUNDLE``; ``--aws-profile`` or ``AWS_PROFILE``
and the rest of the usual credential chain; ``--fips`` or ``AWS_USE_FIPS_ENDPOINT``.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from pki.errors import InvalidInput, RapkiError
from pki.rolesanywhere.endpoints import endpoint_override, fips_requested, resolve_region
from pki.rolesanywhere.partitions import FIPS_REGIONS, partition_of

# Operations that change state: what "a run with nothing new makes no write call" counts.
WRITE_OPERATIONS = frozenset({
    "CreateProfile", "CreateTrustAnchor", "DeleteCrl", "DeleteProfile", "DeleteTrustAnchor", "DisableCrl",
    "DisableProfile", "DisableTrustAnchor", "EnableCrl", "EnableProfile", "EnableTrustAnchor", "ImportCrl",
    "PutAttributeMapping", "PutNotificationSettings", "TagResource", "UpdateCrl", "UpdateProfile", "UpdateTrustAnchor",
})  # fmt: skip
RETRYABLE_CODES = frozenset({
    "ThrottlingException", "Throttling", "ThrottledException", "TooManyRequestsException",
    "RequestLimitExceeded", "RequestThrottled", "SlowDown", "InternalServerException",
    "InternalFailure", "ServiceUnavailable", "ServiceUnavailableException",
})  # fmt: skip
NOT_FOUND = "ResourceNotFoundException"
PACED_INTERVAL = 1.0  # seconds between calls once throttled (the default control-plane quota)
DEFAULT_MAX_ATTEMPTS = 6
DEFAULT_RETRY_BASE = 0.5  # seconds before the first retry, doubling (with jitter) up to max_delay
DEFAULT_RETRY_BUDGET = 30.0  # seconds of waiting between attempts, in all, for one client


class AwsError(RapkiError):
    """A Roles Anywhere call failed for good (after retries). ``code`` is AWS's error code."""

    exit_code = 1

    def __init__(self, message: str, *, operation: str = "", aws_code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.operation = operation
        self.aws_code = aws_code
        self.status = status

    @property
    def not_found(self) -> bool:
        return self.aws_code == NOT_FOUND or self.status == 404


@dataclass
class AwsOptions:
    """Where and how to reach Roles Anywhere. Empty fields fall back to the environment."""

    region: str | None = None
    endpoint_url: str | None = None
    ca_bundle: str | None = None
    aws_profile: str | None = None
    fips: bool | None = None
    max_attempts: int = 0  # 0: $RAPKI_AWS_MAX_ATTEMPTS, else DEFAULT_MAX_ATTEMPTS
    base_delay: float = -1.0  # <0: $RAPKI_AWS_RETRY_BASE, else DEFAULT_RETRY_BASE (doubling, with jitter)
    max_delay: float = 8.0
    retry_budget: float = -1.0  # <0: $RAPKI_AWS_RETRY_BUDGET, else DEFAULT_RETRY_BUDGET
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    on_retry: Callable[[str], None] | None = None  # told one line per retry ("...: retrying in 1.2 s ...")


@dataclass
class CallLog:
    """What one client did: calls and writes per operation, retries, and the clock skew seen."""

    calls: Counter[str] = field(default_factory=Counter)
    writes: Counter[str] = field(default_factory=Counter)
    retries: int = 0
    waited: float = 0.0  # seconds slept before retries (what the retry budget bounds)
    server_date: str | None = None

    @property
    def writes_total(self) -> int:
        return sum(self.writes.values())


def _env_number(name: str, default: float) -> float:
    try:
        return float(os.environ[name])
    except (KeyError, ValueError):
        return default


def aws_session(options: AwsOptions) -> Any:
    """A boto3 session of ``--aws-profile`` (else boto3's default chain); an unknown profile is bad input."""
    import boto3

    try:
        return boto3.session.Session(profile_name=options.aws_profile or None)
    except Exception as exc:  # botocore.exceptions.ProfileNotFound and friends
        raise InvalidInput(f"AWS profile: {exc}") from exc


def boto_client(session: Any, service: str, **options: Any) -> Any:
    """``session.client(service, ...)``, with botocore's ValueError for an endpoint URL it cannot use
    (``Invalid endpoint: notaurl``, from an option or an $AWS_ENDPOINT_URL* variable) as bad input."""
    try:
        return session.client(service, **options)
    except ValueError as exc:
        raise InvalidInput(f"{service}: {exc}: an endpoint URL is http(s)://host[:port] (--endpoint-url, "
                           "--s3-endpoint-url or $AWS_ENDPOINT_URL*)") from None


class RolesAnywhere:
    """One region's Roles Anywhere control plane. Build with ``RolesAnywhere.connect``."""

    def __init__(self, client: Any, *, region: str, fips: bool, options: AwsOptions,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client = client
        self.region = region
        self.fips = fips
        self.partition = partition_of(region)
        self.options = options
        self.log = CallLog()
        self._sleep = sleep
        self.max_attempts = max(1, options.max_attempts
                                or int(_env_number("RAPKI_AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)))
        # Once throttled, space calls PACED_INTERVAL apart for the rest of this client's life: the
        # control-plane quota is 1 request/s by default, and retrying into it only burns attempts.
        self.paced = False
        self._last_call = 0.0
        self.base_delay = (options.base_delay if options.base_delay >= 0
                           else _env_number("RAPKI_AWS_RETRY_BASE", DEFAULT_RETRY_BASE))
        self.retry_budget = (options.retry_budget if options.retry_budget >= 0
                             else _env_number("RAPKI_AWS_RETRY_BUDGET", DEFAULT_RETRY_BUDGET))

    @classmethod
    def connect(cls, options: AwsOptions | None = None, *, arn: str | None = None,
                configured_region: str | None = None) -> RolesAnywhere:
        """A client for ``options`` (region from ``--region``, the ARN, the environment or the config)."""
        from botocore.config import Config

        options = options or AwsOptions()
        region, fips_region = resolve_region(options.region, arn=arn, configured=configured_region)
        fips = fips_requested(options.fips) or fips_region
        endpoint = endpoint_override(options.endpoint_url)
        if fips and endpoint:
            raise InvalidInput("--fips and an explicit endpoint URL exclude each other: pick one")
        if fips and region not in FIPS_REGIONS:
            raise InvalidInput(f"Roles Anywhere has no FIPS endpoint in {region} "
                               f"(it has one in {', '.join(sorted(FIPS_REGIONS))})")
        verify: str | bool | None = options.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
        if isinstance(verify, str) and not os.path.isfile(verify):
            raise InvalidInput(f"CA bundle {verify} does not exist")
        session = aws_session(options)
        config = Config(
            region_name=region, use_fips_endpoint=fips, retries={"total_max_attempts": 1},
            connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
            user_agent_extra="rapki",
        )
        client = boto_client(session, "rolesanywhere", region_name=region, endpoint_url=endpoint, verify=verify,
                             config=config)
        return cls(client, region=region, fips=fips, options=options)

    @property
    def endpoint_url(self) -> str:
        return str(self.client.meta.endpoint_url)

    # --- calls --------------------------------------------------------------------------------
    def call(self, operation: str, *, before_retry: Callable[[], Any] | None = None, **params: Any) -> Any:
        """Call ``operation`` (``"ImportCrl"``) with retries on throttling, 5xx and connection errors.

        ``before_retry`` runs before each further attempt; a non-None result is returned instead of
        retrying (used to find an ImportCrl that succeeded although its answer was lost). Gives up
        after ``max_attempts``, or when the wait would pass what is left of the retry budget.
        """
        method = getattr(self.client, _snake(operation))
        delay = self.base_delay
        for attempt in range(1, self.max_attempts + 1):
            if self.paced:
                self._sleep(max(0.0, self._last_call + PACED_INTERVAL - time.monotonic()))
            self._last_call = time.monotonic()
            self.log.calls[operation] += 1
            if operation in WRITE_OPERATIONS:
                self.log.writes[operation] += 1
            try:
                response = method(**params)
            except Exception as exc:
                error = self._translate(operation, exc)
                if not _retryable(error) or attempt >= self.max_attempts:
                    raise error from exc
                wait = _retry_after(exc) or min(self.options.max_delay, delay) * random.uniform(0.5, 1.0)
                if self.log.waited + wait > self.retry_budget:
                    raise AwsError(f"{error} (no further retry: {self.log.waited:.1f} s of the {self.retry_budget:g} s "
                                   "retry budget spent)", operation=operation, aws_code=error.aws_code,
                                   status=error.status) from exc
                self.log.retries += 1
                self.paced = self.paced or _throttled(error)
                self._announce(operation, error, exc, wait, attempt + 1)
                self._sleep(wait)
                self.log.waited += wait
                delay *= 2
                if before_retry is not None and not _throttled(error):  # a throttled call did not happen
                    found = before_retry()
                    if found is not None:
                        return found
                continue
            headers = response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            self.log.server_date = headers.get("date", self.log.server_date)
            return response
        raise AssertionError("unreachable")  # the loop returns or raises

    def _announce(self, operation: str, error: AwsError, exc: Exception, wait: float, next_attempt: int) -> None:
        if self.options.on_retry is None:
            return
        host = urlsplit(self.endpoint_url).netloc or self.endpoint_url
        self.options.on_retry(f"{host}: {operation}: {_retry_reason(error, exc)}, retrying in {wait:.1f} s "
                              f"(attempt {next_attempt} of {self.max_attempts})")

    def paginate(self, operation: str, key: str) -> Iterator[dict[str, Any]]:
        """Every item of a List* operation, page by page (each page is one retried call)."""
        token: str | None = None
        for _page in range(10_000):  # bounded: 10,000 pages of up to 50 is far beyond any account
            params: dict[str, Any] = {"nextToken": token} if token else {}
            page = self.call(operation, **params)
            yield from page.get(key, [])
            token = page.get("nextToken")
            if not token:
                return

    def _translate(self, operation: str, exc: Exception) -> AwsError:
        from botocore import exceptions as bx

        where = f"{operation} at {self.endpoint_url}"
        if isinstance(exc, bx.ClientError):
            err = exc.response.get("Error", {})
            status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            code = str(err.get("Code") or status)
            return AwsError(f"{operation}: {code}: {err.get('Message') or 'no message'}", operation=operation,
                            aws_code=code, status=status)
        if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
            return AwsError("no AWS credentials: set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                            "AWS_SECRET_ACCESS_KEY, or run where an instance/container role is available",
                            operation=operation, aws_code="NoCredentials")
        if isinstance(exc, bx.SSLError):
            return AwsError(f"{where}: TLS verification failed ({exc}); pass --ca-bundle or set AWS_CA_BUNDLE",
                            operation=operation, aws_code="SSLError")
        if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError | bx.ReadTimeoutError
                      | bx.ConnectTimeoutError):
            return AwsError(f"{where}: cannot connect ({exc})", operation=operation, aws_code="ConnectionError",
                            status=599)
        if isinstance(exc, bx.ParamValidationError):
            return AwsError(f"{operation}: invalid parameters: {exc}", operation=operation,
                            aws_code="ParamValidation", status=400)
        if isinstance(exc, bx.BotoCoreError):
            return AwsError(f"{where}: {exc}", operation=operation, aws_code=type(exc).__name__)
        raise exc


def _retryable(error: AwsError) -> bool:
    return error.aws_code in RETRYABLE_CODES or error.status == 429 or error.status >= 500


def _retry_reason(error: AwsError, exc: BaseException) -> str:
    """A few words for the retry line: "connection refused", "read timeout", "throttled (...)", "HTTP 503 (...)"."""
    from botocore import exceptions as bx

    if _throttled(error):
        return f"throttled ({error.aws_code})"
    if isinstance(exc, bx.ClientError):
        return f"HTTP {error.status} ({error.aws_code})"
    if isinstance(exc, bx.ConnectTimeoutError):
        return "connect timeout"
    if isinstance(exc, bx.ReadTimeoutError):
        return "read timeout"
    if isinstance(exc, bx.ConnectionClosedError):
        return "connection closed"
    if (os_error := _os_error_under(exc)) is not None:
        return os_error
    return "cannot connect" if error.aws_code == "ConnectionError" else error.aws_code


def _os_error_under(exc: BaseException | None) -> str | None:
    """The socket error under botocore's and urllib3's wrappers ("connection refused"), if any."""
    for _depth in range(8):  # bounded: a few wrappers deep at most
        if exc is None:
            return None
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror[:1].lower() + exc.strerror[1:]
        kwargs = getattr(exc, "kwargs", None)  # botocore keeps the urllib3 error in kwargs["error"]
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        exc = nested if isinstance(nested, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def _throttled(error: AwsError) -> bool:
    return error.status == 429 or "Throttl" in error.aws_code or error.aws_code in (
        "TooManyRequestsException", "RequestLimitExceeded", "SlowDown")


def _retry_after(exc: Exception) -> float | None:
    """Seconds from a Retry-After header (bounded to 20 s), when the service sends one."""
    response = getattr(exc, "response", None) or {}
    value = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("retry-after")
    try:
        return min(20.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def _snake(operation: str) -> str:
    out = []
    for i, ch in enumerate(operation):
        if ch.isupper() and i:
            out.append("_")
        out.append(ch.lower())
    return "".join(out)
