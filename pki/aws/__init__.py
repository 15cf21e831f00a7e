"""rapki against the real (or emulated) IAM Roles Anywhere service, through boto3.

- ``pki.aws.client``: ``RolesAnywhere``, a boto3 client with our retry policy and one-line errors.
- ``pki.aws.register``: trust anchor + profile + first CRL, converging on re-runs.
- ``pki.aws.publish``: ``CrlPublisher``, cron-safe CRL publication to trust anchors.
- ``pki.aws.doctor``: why a certificate would or would not get credentials.
- ``pki.aws.trust_policy``: the IAM role trust policy for a trust anchor and a rapki profile.

May import: ``pki.ca``, ``pki.x509``, ``pki.store``, ``pki.rolesanywhere``, ``pki.errors``. Everything
that needs boto3 imports it inside a function, so importing ``pki.aws`` (or the CLI that registers
its commands) stays cheap and the signer's path never loads boto3.
"""

from pki.aws.client import AwsError, AwsOptions, RolesAnywhere
from pki.rolesanywhere.arns import RolesAnywhereArn
from pki.rolesanywhere.partitions import partition_of

__all__ = ["AwsError", "AwsOptions", "RolesAnywhere", "RolesAnywhereArn", "partition_of"]
