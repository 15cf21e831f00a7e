"""IAM Roles Anywhere as a protocol: partitions, regions and endpoints, ARNs, SigV4-X509 signing
and verification, and the trust-path and revocation rules the service applies.

One model used by the signer, ``rapki doctor`` and the emulator, so they cannot disagree.
May import: ``pki.errors``, ``pki.x509``. Never boto3, SQLAlchemy, click or Flask (the signer
loads this package on every SDK refresh). Nothing is imported here on purpose.
"""
