"""The certificate authority: the ``CertificateAuthority`` facade, its concerns, its home
directory and config, enrollment and operator tokens.

- ``pki.ca.authority``: ``CertificateAuthority``, thin: it opens a home and inherits each concern
  from a private module (``_audit``, ``_issuers``, ``_profiles``, ``_inventory``, ``_revocation``,
  ``_issuance``; the list and their order in ``pki.ca.authority``).
- ``pki.ca.values``: the values it hands out (``Issuer``, ``IssuedCertificate``,
  ``CertificateRecord``, ``Revocation``, ``InitOptions``); no database.
- ``pki.ca.home``: the home directory, ``rapki.toml`` and the passphrase; no database.
- ``pki.ca.tokens``: enrollment and operator tokens (``TokenStore``).

Owns: what the CA decides (who may get which certificate, revocation, CRL contents, audit). Its
SQL is in ``pki.store``; nothing here builds a statement.
May import: ``pki.x509``, ``pki.store``, ``pki.errors``, ``pki.files``. Never ``pki.aws``,
``pki.workload``, ``pki.signer`` or ``service``: those are built on top of the CA, not under it.
Nothing is imported (or re-exported) here on purpose: it would load SQLAlchemy for every module
that only needs ``pki.ca.home`` or ``pki.ca.values`` (the CLI's start-up). Import the submodules,
e.g. ``from pki.ca.authority import CertificateAuthority``.
"""
