"""Fault injection and call counters, for tests of retry and back-off logic.

Everything is off by default. Faults come from the command line (``--fail-rate``, ``--throttle``,
``--latency``) and can be changed at run time through ``PUT /_emulator/faults``, so a test can
inject, observe and clear without restarting the server. For tests that must not depend on
chance or timing, ``failNext``/``throttleNext`` fail exactly the next N matching calls.

Counters (``GET /_emulator/stats``) count every call per operation (``calls``, attempts included)
and, separately, the successful calls that changed state (``writes``), e.g. to assert that a CRL
publisher pushed exactly one ImportCrl even though its first attempt was throttled.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from service.emulator.errors import ServiceError, internal, throttling

# Control-plane operations that change state: what ``writes`` counts.
WRITE_OPERATIONS = frozenset({
    "CreateProfile", "CreateTrustAnchor", "DeleteAttributeMapping", "DeleteCrl", "DeleteProfile",
    "DeleteTrustAnchor", "DisableCrl", "DisableProfile", "DisableTrustAnchor", "EnableCrl",
    "EnableProfile", "EnableTrustAnchor", "ImportCrl", "PutAttributeMapping",
    "PutNotificationSettings", "ResetNotificationSettings", "TagResource", "UntagResource",
    "UpdateCrl", "UpdateProfile", "UpdateTrustAnchor",
})  # fmt: skip
DATA_PLANE_OPERATIONS = frozenset({"CreateSession"})


@dataclass
class FaultSettings:
    """What to inject. ``operations`` limits injection to those names (empty: every operation)."""

    fail_rate: float = 0.0  # probability of a 500 InternalServerException
    throttle: float = 0.0  # control-plane requests/second allowed (0: unlimited); the service's default is 1
    latency: float = 0.0  # seconds added to every matching call
    fail_next: int = 0
    throttle_next: int = 0
    operations: list[str] = field(default_factory=list)
    # CreateSession requests/second per certificate and client address (0: unlimited; AWS: 10).
    session_rate: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "failRate": self.fail_rate, "throttle": self.throttle, "latency": self.latency,
            "failNext": self.fail_next, "throttleNext": self.throttle_next,
            "operations": list(self.operations), "sessionRate": self.session_rate,
        }  # fmt: skip

    def update(self, body: dict[str, Any]) -> None:
        """Apply a partial update from JSON; unknown keys or bad values raise ValueError."""
        fields = {
            "failRate": ("fail_rate", float), "throttle": ("throttle", float),
            "latency": ("latency", float), "failNext": ("fail_next", int),
            "throttleNext": ("throttle_next", int), "operations": ("operations", list),
            "sessionRate": ("session_rate", float),
        }  # fmt: skip
        unknown = set(body) - set(fields)
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        staged: dict[str, Any] = {}
        for key, value in body.items():
            attr, kind = fields[key]
            if kind is list:
                if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                    raise ValueError("operations must be a list of operation names")
                staged[attr] = list(value)
                continue
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{key} must be a number")
            if value < 0 or (key == "failRate" and value > 1):
                raise ValueError(f"{key} is out of range")
            staged[attr] = kind(value)
        for attr, value in staged.items():
            setattr(self, attr, value)


class FaultInjector:
    """Applies FaultSettings before each call and keeps the counters. Thread-safe."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self.settings = settings or FaultSettings()
        self._lock = threading.Lock()
        self._rng = random.Random()
        self.calls: Counter[str] = Counter()
        self.writes: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.injected: Counter[str] = Counter()
        self._tokens = max(self.settings.throttle, 1.0)
        self._last_refill = time.monotonic()
        self._session_buckets: dict[tuple[str, str], tuple[float, float]] = {}

    def _matches(self, operation: str) -> bool:
        ops = self.settings.operations
        return not ops or operation in ops

    def before(self, operation: str) -> None:
        """Count the call, then sleep/throttle/fail it as configured (raises ServiceError)."""
        with self._lock:
            self.calls[operation] += 1
            if not self._matches(operation):
                return
            s = self.settings
            delay = s.latency
            fault: ServiceError | None = None
            if s.throttle_next > 0:
                s.throttle_next -= 1
                fault = throttling()
            elif s.fail_next > 0:
                s.fail_next -= 1
                fault = internal()
            elif s.throttle > 0 and operation not in DATA_PLANE_OPERATIONS and not self._take_token():
                fault = throttling()
            elif s.fail_rate > 0 and self._rng.random() < s.fail_rate:
                fault = internal()
            if fault is not None:
                self.injected[fault.error_type] += 1
        if delay > 0:
            time.sleep(delay)
        if fault is not None:
            raise fault

    def _take_token(self) -> bool:
        """Token bucket of ``throttle`` requests/second, burst of one second's worth."""
        rate = self.settings.throttle
        now = time.monotonic()
        self._tokens = min(max(rate, 1.0), self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def check_session_rate(self, certificate_header: str, client: str) -> None:
        """The service's CreateSession quota, per certificate and source address, when enabled."""
        rate = self.settings.session_rate
        if rate <= 0:
            return
        key = (certificate_header, client)
        now = time.monotonic()
        with self._lock:
            if len(self._session_buckets) > 10_000:  # bounded memory under load tests
                self._session_buckets.clear()
            tokens, last = self._session_buckets.get(key, (max(rate, 1.0), now))
            tokens = min(max(rate, 1.0), tokens + (now - last) * rate)
            if tokens < 1.0:
                self._session_buckets[key] = (tokens, now)
                self.injected["ThrottlingException"] += 1
                raise throttling()
            self._session_buckets[key] = (tokens - 1.0, now)

    def record_success(self, operation: str) -> None:
        """Count a write that changed state (2xx); refused or faulted attempts only count in ``calls``."""
        if operation in WRITE_OPERATIONS:
            with self._lock:
                self.writes[operation] += 1

    def record_error(self, error_type: str) -> None:
        with self._lock:
            self.errors[error_type] += 1

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "calls": dict(self.calls), "writes": dict(self.writes),
                "writesTotal": sum(self.writes.values()), "errors": dict(self.errors),
                "injected": dict(self.injected),
            }  # fmt: skip

    def reset_stats(self) -> None:
        with self._lock:
            self.calls.clear()
            self.writes.clear()
            self.errors.clear()
            self.injected.clear()

    def set_faults(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            self.settings.update(body)
            self._tokens = max(self.settings.throttle, 1.0)
            self._session_buckets.clear()
            return self.settings.to_json()

    def clear_faults(self) -> dict[str, Any]:
        with self._lock:
            self.settings = FaultSettings()
            self._session_buckets.clear()
            return self.settings.to_json()

    def faults(self) -> dict[str, Any]:
        with self._lock:
            return self.settings.to_json()
