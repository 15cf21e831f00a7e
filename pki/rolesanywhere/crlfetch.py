"""CRLs fetched from CRL Distribution Points, the way a trust anchor with ``crlDpRevocationEnabled``
checks revocation: used by the emulator's CreateSession and by ``rapki doctor``.

Fetching is bounded, since the URL comes from a certificate a client presents: http and https only
(redirects too, at most ``MAX_REDIRECTS``, never to another scheme), at most ``max_bytes`` of
body, ``timeout`` seconds for the whole download. A CRL is kept per URL until its nextUpdate (or
``max_age`` seconds when set, whichever is sooner), so a burst of CreateSession calls makes one
download. DER or PEM is accepted. Anything that does not give a current CRL raises
``CrlFetchError`` with the reason; what to make of that (refuse, or let the certificate through)
is the caller's decision (``trustpath.check_distribution_points``).
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509

from pki.rolesanywhere.trustpath import ParsedCrl

MAX_REDIRECTS = 3
DEFAULT_MAX_BYTES = 1 << 20  # 1 MiB: ~25,000 entries at rapki's sizes; AWS documents no limit
DEFAULT_TIMEOUT = 5.0


class CrlFetchError(Exception):
    """No current CRL from this distribution point: unreachable, too large, slow, not a CRL, stale."""


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        if not newurl.lower().startswith(("http://", "https://")):
            raise CrlFetchError(f"redirected to {newurl!r}: only http and https are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


def download(url: str, *, max_bytes: int = DEFAULT_MAX_BYTES, timeout: float = DEFAULT_TIMEOUT) -> bytes:
    """The body at ``url``, within the bounds, or ``CrlFetchError``."""
    if not url.lower().startswith(("http://", "https://")):
        raise CrlFetchError(f"{url!r} is not an http or https URL")
    deadline = time.monotonic() + timeout
    try:
        # The scheme is checked above and on every redirect (_HttpOnlyRedirects).
        request = urllib.request.Request(url, headers={"User-Agent": "rapki-crl-fetch"})  # noqa: S310
        with _OPENER.open(request, timeout=timeout) as answer:
            declared = answer.headers.get("Content-Length")
            if declared and declared.isdigit() and int(declared) > max_bytes:
                raise CrlFetchError(f"{url}: {int(declared):,} bytes, over the {max_bytes:,}-byte limit")
            chunks, size = [], 0
            while chunk := answer.read(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise CrlFetchError(f"{url}: over the {max_bytes:,}-byte limit")
                if time.monotonic() > deadline:
                    raise CrlFetchError(f"{url}: not downloaded within {timeout:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except urllib.error.HTTPError as exc:
        raise CrlFetchError(f"{url}: HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise CrlFetchError(f"{url}: unreachable ({reason})") from None


def parse_crl(url: str, data: bytes) -> x509.CertificateRevocationList:
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CrlFetchError(f"{url}: the answer is not a CRL") from None


@dataclass
class CrlFetcher:
    """Distribution-point CRLs, downloaded within bounds and kept per URL until their nextUpdate."""

    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT
    max_age: float | None = None  # seconds a CRL is kept at most (None: until its nextUpdate)
    _cache: dict[str, tuple[ParsedCrl, datetime]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    downloads: int = 0

    def get(self, url: str, now: datetime) -> ParsedCrl:
        with self._lock:
            cached = self._cache.get(url)
        if cached is not None and now < cached[1]:
            return cached[0]
        crl = parse_crl(url, download(url, max_bytes=self.max_bytes, timeout=self.timeout))
        self.downloads += 1
        next_update = crl.next_update_utc
        if next_update is None or next_update <= now:
            raise CrlFetchError(f"{url}: the CRL is stale (nextUpdate {next_update or 'absent'}, now "
                                f"{now:%Y-%m-%dT%H:%M:%SZ})")
        parsed = ParsedCrl.of(crl)
        keep_until = next_update if self.max_age is None else min(next_update, now + timedelta(seconds=self.max_age))
        with self._lock:
            self._cache[url] = (parsed, keep_until)
        return parsed

    def forget(self) -> None:
        with self._lock:
            self._cache.clear()
