"""A local IAM Roles Anywhere: the control plane of the botocore model plus ``POST /sessions``.

What it is for: running rapki's CA, CRL publisher and signer end to end without an AWS account,
with the same paths, JSON shapes, validations and error messages as the service, and with the
SigV4-X509 signature and certificate path checked the way the service checks them.

Serving decision: ``rapki emulator`` runs under gunicorn (never the Flask development server)
with **one worker process and a pool of threads** (``gthread``; 8 threads by default). The state
lives in that one process, guarded by one re-entrant lock, and every write is saved atomically to
the JSON state file before the response is sent, so a restart sees every acknowledged write. One
process keeps state consistent without cross-process locking or reloading; CreateSession, the
hot path, holds the lock only to copy a few fields and does its cryptography outside it, with
parsed trust anchors, CRLs and verified issuer links cached. Several processes would need shared
state on disk re-read on every call, costing more than the extra cores would bring for a test
double. Fault settings and counters are per process too, which one process keeps exact.

The contract is the installed botocore's ``rolesanywhere`` model: routes, input members and their
constraints (required, lengths, patterns, enums, ranges), status codes and output members follow
it. ``tests/test_emulator_model.py`` walks every operation and member of that model against this
package and fails on any difference not in its short, explained ``KNOWN_GAPS`` list, so a member a
newer botocore adds is named there rather than silently ignored.

ARNs, partitions, SigV4-X509 and the trust decision come from :mod:`pki.rolesanywhere`, the same
model the signer and ``rapki doctor`` use; this package adds the HTTP surface, state and faults.

In-process use for fast tests: ``create_app(state_path=..., clock=...)`` and Flask's test client.
Driving a real one from outside (tests, benchmarks): ``service.emulator.harness`` starts a
``rapki emulator`` and talks to it, ``service.emulator.testpki`` builds a throwaway PKI and
``service.emulator.kms`` runs a local KMS (moto, signing DIGEST messages as AWS does) for CA keys
kept in KMS; the emulator itself imports none of them.
"""

from service.emulator.app import DEFAULT_ACCOUNT, DEFAULT_REGION, create_app

__all__ = ["DEFAULT_ACCOUNT", "DEFAULT_REGION", "create_app"]
