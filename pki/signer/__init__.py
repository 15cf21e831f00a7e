"""``rapki-signer``: trade a workload certificate for AWS credentials through IAM Roles Anywhere.

A drop-in for AWS's ``aws_signing_helper``: same commands, flags and outputs. The package is split so
that ``credential-process`` (started by the SDK on every refresh) imports only what it needs:

- :mod:`pki.signer.material`  certificate, key, intermediates and PKCS#12 loading
- :mod:`pki.signer.session`   one CreateSession call with retries and actionable errors
- :mod:`pki.signer.inputs`    material from paths, ``pkcs11:`` URIs, bytes or objects
- :mod:`pki.signer.pkcs11`    keys and certificates on PKCS#11 tokens (python-pkcs11, the ``hsm`` extra)
- :mod:`pki.signer.cache`     ``credential-process --cache`` (standard library only on a hit)
- :mod:`pki.signer.serve`     the IMDSv2-compatible credentials endpoint
- :mod:`pki.signer.container` serve's container credentials endpoint
- :mod:`pki.signer.completion` shell completion scripts
- :mod:`pki.signer.update`    the shared credentials file writer
- :mod:`pki.signer.boto`      a ``boto3.Session`` factory (the only module importing boto3)
- :mod:`pki.signer.cli`       the command line

Region, partition and endpoint resolution, ARNs and signing come from :mod:`pki.rolesanywhere`.
May import: ``pki.errors``, ``pki.x509`` (keys, pkcs8_mldsa, pem; external in pkcs11),
``pki.rolesanywhere``; boto3 only in :mod:`pki.signer.boto`. Nothing is imported here on purpose:
``import pki.signer`` must stay free.
"""
