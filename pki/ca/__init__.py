"""The certificate authority: the ``CertificateAuthority`` facade, its home directory and config,
enrollment and operator tokens.

Owns: what the CA decides (who may get which certificate, revocation, CRL contents, audit).
May import: ``pki.x509``, ``pki.store``, ``pki.errors``, ``pki.files``. Never ``pki.aws``,
``pki.workload``, ``pki.signer`` or ``service``: those are built on top of the CA, not under it.
Nothing is imported here on purpose (it would load SQLAlchemy); import the submodules.
"""
