"""X.509 building blocks: keys, PEM, serials, durations, the CA hierarchy, leaf issuance, CRLs,
the Roles Anywhere preflight of a leaf and enrollment profiles.

Owns: pure functions and value types over ``cryptography`` and ``asn1crypto``; no database, no
network, no files other than what a caller hands in.
May import: ``pki.errors``, ``pki.files``, each other, and the ARN parser
(``pki.rolesanywhere.arns``, ``pki.rolesanywhere.partitions``: standard library only), with which
profiles check their Roles Anywhere binding. Nothing here imports SQLAlchemy, boto3,
click or Flask: the signer loads ``pki.x509.keys`` and ``pki.x509.pem`` on every SDK refresh.
Nothing is imported here on purpose: ``import pki.x509`` stays free.
"""
