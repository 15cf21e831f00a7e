"""IAM Roles Anywhere as a protocol: one model used by the signer, ``rapki doctor``/``rapki aws`` and the
emulator, so they cannot disagree.

- :mod:`pki.rolesanywhere.partitions` partitions and regions (one table, checked against botocore's data)
- :mod:`pki.rolesanywhere.arns`       Roles Anywhere resource ARNs and IAM role ARNs: one parser
- :mod:`pki.rolesanywhere.endpoints`  the region and endpoint of a call (flags, ARNs, environment)
- :mod:`pki.rolesanywhere.sigv4x509`  SigV4-X509 signing and verification of CreateSession
- :mod:`pki.rolesanywhere.trustpath`  the trust decision: path to the anchor, CA rules, revocation
- :mod:`pki.rolesanywhere.tip`        trusted identity propagation: subject sources and the rule each needs

May import: ``pki.errors``, ``pki.x509``. Never boto3/botocore, SQLAlchemy, click or Flask (the signer
loads this package on every SDK refresh). Nothing is imported here on purpose.
"""
