"""``serve``: an IMDSv2-compatible credentials endpoint backed by Roles Anywhere.

SDKs find it with ``AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9911``. The protocol is the
helper's (and IMDSv2's): ``PUT /latest/api/token`` with ``x-aws-ec2-metadata-token-ttl-seconds``
(1-21600, default 21600; requests with ``X-Forwarded-For`` refused), then with the token in
``x-aws-ec2-metadata-token``: ``GET /latest/meta-data/iam/security-credentials/`` -> the role name and
``GET .../<role name>`` -> ``{"AccessKeyId","SecretAccessKey","Token","Code":"Success","Type":"AWS-HMAC",
"Expiration","LastUpdated"}``.

What differs from the helper, on purpose:

- ``--bind`` picks the listening address (loopback unless asked), so a sidecar can serve a pod;
  ``--hop-limit`` (IP TTL: 64 on loopback, 1 elsewhere, as the helper's PR #29) keeps answers from
  travelling further than intended;
- a container credentials endpoint (:mod:`pki.signer.container`) beside IMDS, for SDKs in
  containers with no IMDS, and ``/latest/meta-data/placement/region``;
- ``--fail-fast`` exits when the first CreateSession fails (by default the server starts anyway);
- credentials are cached and refreshed in the background well before expiry (the earlier of
  ``expiry - 15 min`` and half the lifetime), so SDK calls never wait on CreateSession and the
  10 requests/s quota is never approached;
- the certificate, key and intermediates are re-read at every refresh, and a change of those files
  on disk triggers a refresh at the next request: a renewed certificate is used without a restart;
- it never answers ``"Code":"Success"`` with empty or expired credentials. When a refresh fails the
  last good credentials keep being served while they have more than ``MIN_VALIDITY`` left; after
  that the answer is 503 with the reason, and SDKs fall through to their next provider or retry.
"""

from __future__ import annotations

import base64
import secrets
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from pki.errors import InvalidInput, RapkiError
from pki.rolesanywhere.arns import IamRoleArn
from pki.rolesanywhere.endpoints import session_region
from pki.rolesanywhere.partitions import split_fips
from pki.signer.container import CONTAINER_PATH, authorized, container_body, load_or_create_token
from pki.signer.material import Material, file_fingerprint
from pki.signer.session import Credentials, SessionOptions, create_session, go_json

DEFAULT_PORT = 9911
DEFAULT_HOP_LIMIT = 64
DEFAULT_BIND = "127.0.0.1"
TOKEN_PATH = "/latest/api/token"
CREDS_PATH = "/latest/meta-data/iam/security-credentials"
REGION_PATH = "/latest/meta-data/placement/region"
TOKEN_HEADER = "x-aws-ec2-metadata-token"
TTL_HEADER = "x-aws-ec2-metadata-token-ttl-seconds"
DEFAULT_TOKEN_TTL = 21600
MAX_TOKENS = 256
MIN_VALIDITY = 60.0  # seconds: credentials closer to expiry than this are never served
MAX_REFRESH_BEFORE = 15 * 60.0
RETRY_MIN, RETRY_MAX = 5.0, 60.0  # backoff between failed background refreshes


def log(text: str) -> None:
    print(f"{datetime.now(UTC):%Y/%m/%d %H:%M:%S} {text}", file=sys.stderr, flush=True)


def go_time(value: datetime) -> str:
    """A UTC time as Go's time.Time marshals it (RFC 3339, fraction trimmed of zeros)."""
    value = value.astimezone(UTC)
    text = value.strftime("%Y-%m-%dT%H:%M:%S")
    if value.microsecond:
        text += ("." + f"{value.microsecond:06d}").rstrip("0")
    return text + "Z"


class CredentialCache:
    """Last good credentials, refreshed ahead of expiry; thread-safe.

    ``get()`` never returns credentials with less than ``min_validity`` seconds left: it raises
    :class:`CredentialsUnavailable` with the last refresh error instead. ``clock`` (monotonic seconds) times
    the back-off between failed refreshes.
    """

    def __init__(
        self,
        opts: SessionOptions,
        *,
        refresh_before: float | None = None,
        min_validity: float = MIN_VALIDITY,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opts = opts
        self.refresh_before = refresh_before
        self.min_validity = min_validity
        self.clock = clock
        self.credentials: Credentials | None = None
        self.material: Material | None = None
        self.last_updated: datetime | None = None
        self.last_error: str = "no credentials fetched yet"
        self.failures = 0
        self.next_retry = 0.0  # ``clock`` time before which a failed refresh is not retried
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._paths = opts.file_paths()

    # -- policy ---------------------------------------------------------------------------------
    def _refresh_margin(self, creds: Credentials) -> float:
        if self.refresh_before is not None:
            return self.refresh_before
        lifetime = float(self.opts.session_duration or 3600)
        return min(MAX_REFRESH_BEFORE, lifetime / 2)

    def _stale(self, now: datetime) -> bool:
        creds = self.credentials
        return creds is None or creds.seconds_left(now) <= self._refresh_margin(creds)

    def _files_changed(self) -> bool:
        return self.material is not None and file_fingerprint(self._paths) != self.material.sources

    def seconds_until_refresh(self) -> float:
        now = datetime.now(UTC)
        if self.credentials is None or self.failures:
            return max(0.0, self.next_retry - self.clock())
        return max(0.0, self.credentials.seconds_left(now) - self._refresh_margin(self.credentials))

    # -- refreshing -----------------------------------------------------------------------------
    def refresh(self, *, force: bool = False, wait: float | None = None) -> bool:
        """One CreateSession, re-reading the files; True when new credentials were stored.

        ``wait`` bounds how long to wait for a refresh already running in another thread (None:
        as long as it takes; 0: not at all). Requests that hold valid credentials never queue
        behind a slow refresh: SDKs give IMDS about a second.
        """
        if not self._lock.acquire(timeout=-1 if wait is None else wait):
            return False
        try:
            return self._refresh_locked(force)
        finally:
            self._lock.release()

    def _refresh_locked(self, force: bool) -> bool:
        if not force:
            if self.clock() < self.next_retry:
                return False
            # Another request may have refreshed while this one waited for the lock.
            if not (self._stale(datetime.now(UTC)) or self._files_changed()):
                return False
        try:
            material = self.opts.load_material()
            creds = create_session(self.opts, material=material)
            if creds.seconds_left() <= self.min_validity:
                raise RapkiError(f"CreateSession returned credentials expiring at {creds.expiration}")
        except Exception as exc:  # any failure keeps the last good credentials
            self.failures += 1
            self.last_error = str(exc)
            hint = getattr(exc, "hint", "")
            delay = min(RETRY_MAX, RETRY_MIN * 2 ** (self.failures - 1))
            self.next_retry = self.clock() + delay
            log(
                f"refresh failed ({self.failures}x), next try in {delay:.0f}s: {exc}"
                + (f"\n  hint: {hint}" if hint else "")
            )
            return False
        replaced = self.material is not None and material.certificate != self.material.certificate
        self.credentials, self.material = creds, material
        self.last_updated = datetime.now(UTC)
        self.failures, self.next_retry, self.last_error = 0, 0.0, ""
        log(
            f"credentials refreshed, expire {creds.expiration}"
            + (f" (now using certificate serial {material.certificate.serial_number:x})" if replaced else "")
        )
        return True

    def _servable(self) -> Credentials | None:
        creds = self.credentials
        return creds if creds is not None and creds.seconds_left() > self.min_validity else None

    def get(self) -> tuple[Credentials, datetime]:
        """Credentials fit to hand out, refreshing first when needed.

        Nothing valid to hand out: refresh and wait for it. Certificate files replaced: refresh now
        (waiting a little for a refresh in flight), so the renewed certificate is used from the next
        request on. Merely due for refresh: the background thread is woken and the cached
        credentials answer at once.
        """
        if self._servable() is None:
            self.refresh()
        elif self._files_changed():
            self.refresh(wait=2.0)
        elif self._stale(datetime.now(UTC)):
            if self._thread is not None and self._thread.is_alive():
                self._wake.set()
            else:
                self.refresh(wait=0)
        # One read of each attribute: a concurrent refresh replaces them, never half of them.
        creds, updated = self.credentials, self.last_updated
        if creds is not None and creds.seconds_left() > self.min_validity:
            return creds, updated or datetime.now(UTC)
        raise CredentialsUnavailable(f"no valid credentials: {self.last_error or 'credentials expired'}")

    # -- background loop ------------------------------------------------------------------------
    def start(self) -> threading.Thread:
        self._thread = threading.Thread(target=self._loop, name="rapki-signer-refresh", daemon=True)
        self._thread.start()
        return self._thread

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(timeout=min(max(self.seconds_until_refresh(), 0.5), 300.0))
            self._wake.clear()
            if self._stop.is_set():
                return
            if self._stale(datetime.now(UTC)) or self._files_changed():
                self.refresh()


class CredentialsUnavailable(RapkiError):
    """No credentials with enough validity left to serve (the metadata endpoint answers 503)."""

    code = "unavailable"
    http_status = 503


class MetadataTokens:
    """The metadata endpoint's session tokens (IMDSv2 ``PUT /latest/api/token``) and their expiry;
    at most MAX_TOKENS, the earliest-expiring evicted first."""

    def __init__(self) -> None:
        self._tokens: dict[str, float] = {}
        self._lock = threading.Lock()

    def issue(self, ttl: int) -> str:
        token = base64.b64encode(secrets.token_bytes(96)).decode()[:100]
        now = time.monotonic()
        with self._lock:
            for key in [k for k, exp in self._tokens.items() if exp <= now]:
                del self._tokens[key]
            if len(self._tokens) >= MAX_TOKENS:
                del self._tokens[min(self._tokens, key=self._tokens.__getitem__)]
            self._tokens[token] = now + ttl
        return token

    def ttl_left(self, token: str) -> int | None:
        """Seconds left for a valid token, None for an unknown or expired one."""
        with self._lock:
            expiry = self._tokens.get(token)
        if expiry is None:
            return None
        left = expiry - time.monotonic()
        return int(left) if left > 0 else None


class ImdsServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        cache: CredentialCache,
        role: str,
        hop_limit: int,
        *,
        region: str = "",
        container_token: str = "",
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.cache = cache
        self.role = role
        self.hop_limit = hop_limit
        self.region = region
        self.container_token = container_token
        self.container_token_file: str = ""
        self.owned_token_dir: Path | None = None  # a generated token's private directory, removed at close
        self.tokens = MetadataTokens()
        super().__init__(address, ImdsHandler)

    def server_close(self) -> None:
        super().server_close()
        if self.owned_token_dir is not None:
            shutil.rmtree(self.owned_token_dir, ignore_errors=True)
            self.owned_token_dir = None

    def get_request(self) -> tuple[socket.socket, Any]:
        conn, addr = super().get_request()
        try:  # the IP TTL on answers, as the helper's --hop-limit (see default_hop_limit)
            if conn.family == socket.AF_INET6:
                conn.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, self.hop_limit)
            else:
                conn.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, self.hop_limit)
        except OSError:
            pass
        return conn, addr


class ImdsHandler(BaseHTTPRequestHandler):
    server: ImdsServer
    server_version = "rapki-signer"
    sys_version = ""
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.cache.opts.debug:
            log("serve: " + format % args)

    def _send(self, status: int, body: str | bytes = b"", headers: dict[str, str] | None = None) -> None:
        data = body.encode() if isinstance(body, str) else body
        headers = {"Content-Type": "text/plain; charset=utf-8", **(headers or {})}
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _route(self) -> str | None:
        path = self.path.split("?", 1)[0]
        if path in (TOKEN_PATH, TOKEN_PATH + "/"):
            return "token"
        if path == CONTAINER_PATH:
            return "container"
        if path == REGION_PATH:
            return "region"
        if path in (CREDS_PATH, CREDS_PATH + "/"):
            return "roles"
        role = self.server.role
        if path in (f"{CREDS_PATH}/{role}", f"{CREDS_PATH}/{role}/"):
            return "credentials"
        return None

    def _dispatch(self) -> None:
        route = self._route()
        if route is None:
            self._send(404, "404 page not found\n")
            return
        if route == "token":
            if self.command != "PUT":
                self._send(405)
                return
            self._put_token()
            return
        if self.command != "GET":
            self._send(405)
            return
        if route == "container":
            self._container_credentials()
            return
        ttl = self._check_token()
        if ttl is None:
            return
        if route == "roles":
            self._send(200, self.server.role, {TTL_HEADER: str(ttl)})
        elif route == "region":
            self._send(200, self.server.region, {TTL_HEADER: str(ttl)})
        else:
            self._credentials(ttl)

    def _json(self, status: int, body: dict[str, str]) -> None:
        self._send(status, go_json(body) + "\n", {"Content-Type": "application/json"})

    def _container_credentials(self) -> None:
        if not self.server.container_token or not authorized(
            self.server.container_token, self.headers.get("Authorization")
        ):
            self._json(401, {"code": "Unauthorized", "message": "missing or wrong Authorization token"})
            return
        try:
            creds, _ = self.server.cache.get()
        except CredentialsUnavailable as exc:
            self._json(503, {"code": "Unavailable", "message": str(exc)})
            return
        body = container_body(
            creds.access_key_id, creds.secret_access_key, creds.session_token, go_time(creds.expires_at),
            creds.assumed_role_arn or self.server.cache.opts.role_arn,
        )  # fmt: skip
        self._json(200, body)

    do_GET = do_PUT = do_POST = do_DELETE = do_PATCH = do_HEAD = _dispatch

    def _put_token(self) -> None:
        if self.headers.get("X-Forwarded-For"):
            self._send(400, "unable to process requests with X-Forwarded-For header")
            return
        raw = self.headers.get(TTL_HEADER) or str(DEFAULT_TOKEN_TTL)
        try:
            ttl = int(raw.strip())
        except ValueError:
            ttl = 0
        if not 1 <= ttl <= DEFAULT_TOKEN_TTL:
            self._send(400, "invalid token TTL")
            return
        self._send(200, self.server.tokens.issue(ttl), {TTL_HEADER: raw})

    def _check_token(self) -> int | None:
        token = self.headers.get(TOKEN_HEADER)
        if not token:
            self._send(401, "no token provided")
            return None
        ttl = self.server.tokens.ttl_left(token)
        if ttl is None:
            self._send(401, "invalid token provided")
            return None
        return ttl

    def _credentials(self, ttl: int) -> None:
        try:
            creds, updated = self.server.cache.get()
        except CredentialsUnavailable as exc:
            self._send(503, f"{exc}\n", {TTL_HEADER: str(ttl)})
            return
        body = {
            "AccessKeyId": creds.access_key_id,
            "SecretAccessKey": creds.secret_access_key,
            "Token": creds.session_token,
            "Code": "Success",
            "Type": "AWS-HMAC",
            "Expiration": go_time(creds.expires_at),
            "LastUpdated": go_time(updated),
        }
        # Go's json.Encoder: compact, HTML-escaped, newline-terminated, as the helper answers.
        self._send(200, go_json(body) + "\n", {TTL_HEADER: str(ttl)})


LOOPBACK = ("127.0.0.1", "::1", "localhost")


def default_hop_limit(bind: str) -> int:
    """64 on loopback; 1 elsewhere, so answers die at the first router (the helper's PR #29)."""
    return DEFAULT_HOP_LIMIT if bind in LOOPBACK or bind.startswith("127.") else 1


def make_server(
    opts: SessionOptions,
    *,
    port: int = DEFAULT_PORT,
    bind: str = DEFAULT_BIND,
    hop_limit: int | None = None,
    cache: CredentialCache | None = None,
    fail_fast: bool = False,
    container_token_file: str | None = None,
) -> ImdsServer:
    """Check the options, fetch the first credentials and bind.

    A failed first fetch is logged and the server starts anyway (the helper's behaviour, and what a
    host that boots before the network needs); ``fail_fast`` makes it an error instead.
    """
    opts.check()
    role = IamRoleArn.parse(opts.role_arn, "--role-arn").name
    hop_limit = default_hop_limit(bind) if hop_limit is None else hop_limit
    if not 1 <= hop_limit <= 255:
        raise InvalidInput("--hop-limit must be 1-255")
    cache = cache or CredentialCache(opts)
    opts.load_material()  # unreadable files or a key mismatch stop here, before listening
    if not cache.refresh(force=True) and fail_fast:
        raise RapkiError(f"--fail-fast: the first CreateSession failed: {cache.last_error}")
    region = split_fips(session_region(opts.trust_anchor_arn, opts.profile_arn, opts.region))[0]
    token, token_file = load_or_create_token(container_token_file)
    try:
        server = ImdsServer((bind, port), cache, role, hop_limit, region=region, container_token=token)
    except OSError as exc:
        raise RapkiError(f"cannot listen on {bind}:{port}: {exc.strerror or exc}") from None
    server.container_token_file = str(token_file)
    server.owned_token_dir = None if container_token_file else token_file.parent
    return server


def serve(
    opts: SessionOptions,
    *,
    port: int = DEFAULT_PORT,
    bind: str = DEFAULT_BIND,
    hop_limit: int | None = None,
    fail_fast: bool = False,
    container_token_file: str | None = None,
) -> None:
    """Run until SIGINT/SIGTERM."""
    server = make_server(
        opts, port=port, bind=bind, hop_limit=hop_limit, fail_fast=fail_fast, container_token_file=container_token_file
    )
    host, actual_port = server.server_address[:2]
    host = host.decode() if isinstance(host, bytes) else str(host)
    shown = f"[{host}]" if ":" in host else host
    server.cache.start()
    if bind not in LOOPBACK:
        log(f"warning: listening on {bind}: anyone who can reach it gets these credentials "
            f"(IP TTL {server.hop_limit})")
    log(f"Local server started on port: {actual_port}")
    log("Make it available to the sdk by running:")
    log(f"export AWS_EC2_METADATA_SERVICE_ENDPOINT=http://{shown}:{actual_port}/")
    log("or, for the SDKs' container credentials provider:")
    log(f"export AWS_CONTAINER_CREDENTIALS_FULL_URI=http://{shown}:{actual_port}{CONTAINER_PATH}")
    log(f"export AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE={server.container_token_file}")

    def stop(signum: int, frame: Any) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.cache.stop()
        server.server_close()
