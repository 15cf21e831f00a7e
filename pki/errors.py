"""Error types shared by the library, the CLI and the HTTP API.

Every error says what was wrong and, where it helps, what to do. Each class carries how the two
fronts report it: the CLI exit code (2 for bad usage or input, 1 for a failure) and the HTTP status
with a short machine-readable ``code``.
"""

from __future__ import annotations


class RapkiError(Exception):
    """Base class. ``str(error)`` is the one-line message shown to people."""

    code = "error"
    exit_code = 1
    http_status = 500


class InvalidInput(RapkiError):
    """Malformed input: not a CSR, bad PEM, an unknown key type, a bad duration..."""

    code = "invalid_input"
    exit_code = 2
    http_status = 400


class PolicyViolation(RapkiError):
    """Well-formed input the policy refuses: CN outside the profile, TTL over max, weak key."""

    code = "policy_violation"
    exit_code = 2
    http_status = 422


class NotFound(RapkiError):
    code = "not_found"
    exit_code = 2
    http_status = 404


class Conflict(RapkiError):
    """The request contradicts the current state (already revoked, token already used)."""

    code = "conflict"
    exit_code = 2
    http_status = 409


class Unauthenticated(RapkiError):
    code = "unauthenticated"
    exit_code = 2
    http_status = 401


class Forbidden(RapkiError):
    code = "forbidden"
    exit_code = 2
    http_status = 403


class NotARapkiHome(InvalidInput):
    code = "not_a_rapki_home"


class WrongPassphrase(InvalidInput):
    code = "wrong_passphrase"


class CrlTooLarge(RapkiError):
    """The CRL would exceed the Roles Anywhere ``crlData`` limit; nothing was dropped or sent."""

    code = "crl_too_large"
    exit_code = 1
    http_status = 500


class Unavailable(RapkiError):
    """A dependency (database, CA key) cannot be reached right now."""

    code = "unavailable"
    exit_code = 1
    http_status = 503


class KeyUnavailable(Unavailable):
    """A CA key's HSM token or KMS cannot be reached, or refuses to sign. At the CLI this is a
    usage error (exit 2): the module, token, endpoint or credentials need fixing."""

    code = "key_unavailable"
    exit_code = 2
