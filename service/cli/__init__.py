"""Entry point of the ``rapki`` operator CLI: the ``main`` group and the table of its commands.

Lazy-loading rule: a command's module is imported when that command is chosen, never before.
``COMMANDS`` names each command by import path (``"module:attribute"``) with the first paragraph of
its help, so ``rapki --help`` lists them importing only click, ``service.cli.base`` and ``pki.errors``;
only command modules import command modules. A command module imports at its top what its commands
share, and inside a command what only that command needs (boto3, Flask, gunicorn, the emulator).
``rapki enroll`` and ``rapki renew`` live apart (``workload_commands``): they load
``pki.workload.client`` and nothing of the CA, its store, AWS or the API.
A new command gets a row here; ``tests/test_imports.py`` checks the rows against the commands and
pins what ``rapki --help``, ``rapki enroll`` and ``rapki renew`` load.
"""

from __future__ import annotations

import click

from service.cli.base import LazyCommand, RapkiGroup

COMMANDS: dict[str, LazyCommand] = {
    "init": LazyCommand("service.cli.ca_commands:init",
                        "Create a rapki home: config, root CA, issuing CA and database."),
    "ca": LazyCommand("service.cli.ca_commands:ca", "The CA hierarchy: chain, root, issuing CAs and rotation."),
    "profile": LazyCommand("service.cli.ca_commands:profile",
                           "Issuance profiles: which names, key types and lifetimes are allowed (deny by default)."),
    "issue": LazyCommand("service.cli.cert_commands:issue", "Issue a workload certificate."),
    "revoke": LazyCommand("service.cli.cert_commands:revoke",
                          "Revoke certificate SERIAL (hex as 'rapki list' shows, or decimal)."),
    "list": LazyCommand("service.cli.cert_commands:list_certificates", "List issued certificates."),
    "show": LazyCommand("service.cli.cert_commands:show", "Show certificate SERIAL."),
    "prune": LazyCommand("service.cli.cert_commands:prune",
                         "Delete long-expired certificates from the inventory (audited; CRL entries and the audit "
                         "log kept)."),
    "audit": LazyCommand("service.cli.audit_commands:audit", "Read the audit log (who did what, when; never secrets)."),
    "crl": LazyCommand("service.cli.crl_commands:crl", "Certificate revocation lists."),
    "aws": LazyCommand("service.cli.aws_commands:aws_group",
                       "Roles Anywhere set-up: registration and role trust policies."),
    "doctor": LazyCommand("service.cli.aws_commands:doctor",
                          "Replay Roles Anywhere's checks on a certificate and say what to fix "
                          "(e.g. 'Untrusted Signing Certificate')."),
    "check": LazyCommand("service.cli.check_commands:check",
                         "Check this home on this host: database, every issuing CA's key, root key, passphrase."),
    "serve": LazyCommand("service.cli.serve_commands:serve",
                         "Run the enrollment API over HTTPS under gunicorn (creates the home with defaults on "
                         "first run)."),
    "token": LazyCommand("service.cli.serve_commands:token",
                         "Enrollment tokens: one-time (or N-time) credentials a workload trades for a certificate."),
    "operator": LazyCommand("service.cli.serve_commands:operator", "Operator access to the API."),
    "enroll": LazyCommand("service.cli.workload_commands:enroll",
                          "Redeem an enrollment token: writes cert.pem, key.pem (0600) and chain.pem to --out."),
    "renew": LazyCommand("service.cli.workload_commands:renew",
                         "Renew the certificate in --cert-dir when due (two thirds of its lifetime), replacing the "
                         "files atomically."),
    "emulator": LazyCommand("service.cli.emulator_commands:emulator",
                            "Serve the Roles Anywhere control plane and CreateSession on HTTPS."),
}


@click.group(cls=RapkiGroup, lazy_commands=COMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="rapki", prog_name="rapki")
def main() -> None:
    """rapki: a private CA for AWS IAM Roles Anywhere."""


__all__ = ["COMMANDS", "main"]
