"""rapki's library: a private CA for AWS IAM Roles Anywhere.

Kept import-light on purpose: ``rapki-signer credential-process`` starts on every SDK refresh, so
nothing here pulls in SQLAlchemy, Flask or boto3. Import the submodules you need, e.g.
``from pki.ca.authority import CertificateAuthority``.
"""

__version__ = "0.1.0"
