"""The ``credential_process`` command line an AWS SDK runs to get credentials from ``rapki-signer``.

One builder for every place rapki prints it (``rapki aws register``, the enrollment API's answer,
``rapki enroll``), so they cannot disagree on flags.
"""

from __future__ import annotations

import shlex


def credential_process_args(*, certificate: str, private_key: str, intermediates: str, trust_anchor_arn: str,
                            profile_arn: str, role_arn: str, endpoint: str = "", ca_bundle: str = "") -> list[str]:
    """``rapki-signer credential-process ...`` as an argument list; ``endpoint`` and ``ca_bundle``
    only when Roles Anywhere is reached somewhere else than AWS's own endpoint (a private
    endpoint, the emulator)."""
    args = ["rapki-signer", "credential-process", "--certificate", certificate, "--private-key", private_key,
            "--intermediates", intermediates, "--trust-anchor-arn", trust_anchor_arn,
            "--profile-arn", profile_arn, "--role-arn", role_arn]
    if endpoint:
        args += ["--endpoint", endpoint]
    if ca_bundle:
        args += ["--ca-bundle", ca_bundle]
    return args


def credential_process_line(**fields: str) -> str:
    """The same, quoted for a shell or ``~/.aws/config``."""
    return shlex.join(credential_process_args(**fields))
