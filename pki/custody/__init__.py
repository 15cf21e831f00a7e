"""Key custody: where CA private keys live and how they sign.

Owns: the ``CaKey`` interface (key type, public key, ``sign(tbs)``, a description for ``rapki ca
list`` and a ``KeyRef`` that names it in config or in the database), and its backends: ``file``
(encrypted PKCS#8 files, as rapki has always kept them), ``pkcs11`` (a key on an HSM token, through
python-pkcs11) and ``kms`` (an AWS KMS asymmetric key, through boto3). With ``pkcs11`` and ``kms``
the private key never exists outside the device or service; certificates and CRLs are assembled
around its signatures by ``pki.x509.external``.
May import: ``pki.errors``, ``pki.files``, ``pki.x509``. python-pkcs11 and boto3 are imported only
inside ``pki.custody.hsm`` and ``pki.custody.kms``, and only when such a key is opened.
Nothing is imported here on purpose: import ``pki.custody.keys``.
"""
