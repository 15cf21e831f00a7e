"""What every request handler needs: the CA, the token store, shared state and settings.

Settings come from the ``[api]`` section of ``rapki.toml``; each can be overridden by an
environment variable (``RAPKI_API_<NAME>``), as everywhere in rapki (environment, then file,
then default)::

    [api]
    rate_limit_per_address = "300/m"   # requests per client address (all API endpoints that write)
    rate_limit_per_identity = "30/m"   # per enrollment token, operator token or certificate
    operator_profiles = []             # certificates of these profiles may act as operators
    accept_signed_requests = true      # RAPKI-SIG-V1 request signatures (TLS ends at a proxy)

The bounds on slow clients (``tls_handshake_timeout``, ``header_timeout``, ``body_timeout``,
``max_connections_per_address``) are read by ``rapki serve`` itself: ``service.api.connections``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pki.ca.authority import CertificateAuthority
from pki.ca.tokens import TokenStore
from service.api.state import Limit, SharedState


def _setting(section: dict[str, Any], name: str, default: Any) -> Any:
    env = os.environ.get(f"RAPKI_API_{name.upper()}")
    return env if env is not None else section.get(name, default)


def _bool(value: Any) -> bool:
    return value if isinstance(value, bool) else str(value).strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Settings:
    per_address: Limit | None
    per_identity: Limit | None
    operator_profiles: tuple[str, ...]
    accept_signed: bool

    @classmethod
    def from_config(cls, section: dict[str, Any]) -> Settings:
        operators = _setting(section, "operator_profiles", [])
        if isinstance(operators, str):
            operators = [p.strip() for p in operators.split(",") if p.strip()]
        return cls(
            per_address=Limit.parse(_setting(section, "rate_limit_per_address", "300/m")),
            per_identity=Limit.parse(_setting(section, "rate_limit_per_identity", "30/m")),
            operator_profiles=tuple(operators),
            accept_signed=_bool(_setting(section, "accept_signed_requests", True)),
        )


@dataclass
class ApiContext:
    ca: CertificateAuthority
    tokens: TokenStore
    state: SharedState
    settings: Settings
