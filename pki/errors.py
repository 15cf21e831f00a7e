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

    @property
    def fields(self) -> dict[str, str]:
        """Members of the API's JSON error body beside ``error`` and ``message`` (none by default)."""
        return {}


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


class AlreadyRenewed(Conflict):
    """A renewal presented a certificate that was renewed before: a certificate renews once."""

    code = "already_renewed"

    def __init__(self, serial: str, superseded_by: str) -> None:
        super().__init__(f"certificate {serial} was already renewed: {superseded_by} replaced it, and a "
                         "certificate renews only once; renew with the newest certificate, or enroll again "
                         "with a new token")
        self.serial = serial
        self.superseded_by = superseded_by

    @property
    def fields(self) -> dict[str, str]:
        return {"serial": self.serial, "superseded_by": self.superseded_by}


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


class DatabaseBusy(Unavailable):
    """Another process held the database's write lock (a table lock on PostgreSQL) for longer
    than a write may wait (``[database] busy_timeout``): nothing was written; try again."""

    code = "database_busy"
    retry_after = 1


class IssuerKeyMissing(Unavailable):
    """An issuing CA's key file is not on this host (a replica that was not given it after a
    rotation): the message names the file to copy. Exit 2: the set-up, not the request, is wrong."""

    code = "issuer_key_missing"
    exit_code = 2

    def __init__(self, message: str, path: str) -> None:
        super().__init__(message)
        self.path = path


class DatabaseUnreachable(Unavailable):
    """The database cannot be reached (or does not exist on its server). HTTP 503; a command
    refuses with exit 2 (nothing was done, the set-up must change or the server come back)."""

    code = "database_unreachable"
    exit_code = 2


class DatabaseMissing(InvalidInput):
    """The home's database does not exist (or holds no rapki CA): refused rather than created empty."""

    code = "database_missing"


class KeyUnavailable(Unavailable):
    """A CA key's HSM token or KMS cannot be reached, or refuses to sign. At the CLI this is a
    usage error (exit 2): the module, token, endpoint or credentials need fixing."""

    code = "key_unavailable"
    exit_code = 2
