"""Errors as the Roles Anywhere service shapes them: HTTP status, ``X-Amzn-ErrorType``, ``{"message"}``.

botocore reads the error code from the ``X-Amzn-ErrorType`` header of a rest-json response, so a
boto3 client sees exactly the exception class it would get from AWS
(``client.exceptions.ValidationException`` and so on).
"""

from __future__ import annotations


class ServiceError(Exception):
    """One service error. ``detail`` is ours (sent as ``X-Rapki-Emulator-Detail``), never AWS's."""

    def __init__(self, status: int, error_type: str, message: str, *, detail: str | None = None):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.detail = detail


def validation(message: str, *, detail: str | None = None) -> ServiceError:
    return ServiceError(400, "ValidationException", message, detail=detail)


def not_found(message: str, *, detail: str | None = None) -> ServiceError:
    return ServiceError(404, "ResourceNotFoundException", message, detail=detail)


def access_denied(message: str, *, detail: str | None = None) -> ServiceError:
    return ServiceError(403, "AccessDeniedException", message, detail=detail)


def too_many_tags(message: str) -> ServiceError:
    return ServiceError(400, "TooManyTagsException", message)


def throttling(message: str = "Rate exceeded") -> ServiceError:
    return ServiceError(429, "ThrottlingException", message)


def internal(message: str = "Internal server error (injected fault)") -> ServiceError:
    return ServiceError(500, "InternalServerException", message)


def missing_authentication() -> ServiceError:
    return ServiceError(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
