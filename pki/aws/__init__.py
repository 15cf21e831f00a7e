"""Talking to AWS IAM Roles Anywhere: regions and partitions, the client, registration, trust policies.

Everything here that needs boto3 imports it inside a function, so importing ``pki.aws`` (or the CLI
that registers its commands) stays cheap and the signer's path never loads boto3.

- ``pki.aws.regions``: region -> partition, FIPS pseudo-regions, endpoint overrides, ARNs.
- ``pki.aws.client``: ``RolesAnywhere``, a boto3 client with our retry policy and one-line errors.
- ``pki.aws.register``: trust anchor + profile + first CRL, converging on re-runs.
- ``pki.aws.trust_policy``: the IAM role trust policy for a trust anchor and a rapki profile.
"""

from pki.aws.client import AwsError, AwsOptions, RolesAnywhere
from pki.aws.regions import RolesAnywhereArn, partition_of

__all__ = ["AwsError", "AwsOptions", "RolesAnywhere", "RolesAnywhereArn", "partition_of"]
