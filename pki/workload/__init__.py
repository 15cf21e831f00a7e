"""The workload's side of enrollment: the HTTPS client that enrolls and renews against
``rapki serve``, and the RAPKI-SIG-V1 request signature it proves possession with.

May import: ``pki.errors``, ``pki.files``, ``pki.x509``. Never the CA, the store or ``service``:
it runs on the workload's host, which has neither. Nothing is imported here on purpose.
"""
