"""``serve``'s container credentials endpoint, for SDKs in containers with no IMDS.

The SDKs' container provider (ECS, EKS Pod Identity) reads ``AWS_CONTAINER_CREDENTIALS_FULL_URI``
and sends ``AWS_CONTAINER_AUTHORIZATION_TOKEN`` (or the contents of
``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``) as the ``Authorization`` header; the answer is
``{"AccessKeyId","SecretAccessKey","Token","Expiration","RoleArn"}``.

Decisions: the token is always required (compared in constant time); it comes from
``--container-token-file`` when that file exists, else a new random token is written to that path
(or, without the flag, to a new private temporary directory) with mode 0600 and the path is printed
for ``AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE``. The SDKs accept a plain-http full URI only on
loopback (and the EKS/ECS link-local addresses), so this endpoint serves the host's own processes
and containers sharing its network namespace.
"""

from __future__ import annotations

import hmac
import os
import secrets
import tempfile
from pathlib import Path

from pki.errors import InvalidInput

CONTAINER_PATH = "/v1/credentials"
TOKEN_FILE_NAME = "container-token"


def load_or_create_token(path: str | None) -> tuple[str, Path]:
    """The token and the file holding it (created 0600 when absent)."""
    if path:
        file = Path(path).expanduser()
        if file.exists():
            try:
                token = file.read_text().strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise InvalidInput(f"--container-token-file {path}: cannot be read: {exc}") from None
            if len(token) < 16:
                raise InvalidInput(f"--container-token-file {path}: the token must be at least 16 characters")
            return token, file
    else:
        file = Path(tempfile.mkdtemp(prefix="rapki-signer-")) / TOKEN_FILE_NAME  # mkdtemp: mode 0700
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as exc:  # its directory missing, a file on the way, no permission
        raise InvalidInput(f"--container-token-file {path}: cannot be created: {exc.strerror}") from None
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    return token, file


def authorized(expected: str, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(expected.encode(), presented.strip().encode())


def container_body(access_key_id: str, secret: str, token: str, expiration: str, role_arn: str) -> dict[str, str]:
    return {
        "AccessKeyId": access_key_id,
        "SecretAccessKey": secret,
        "Token": token,
        "Expiration": expiration,
        "RoleArn": role_arn,
    }
