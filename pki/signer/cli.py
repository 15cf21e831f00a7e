"""The ``rapki-signer`` command line: the commands and flags of ``aws_signing_helper``.

argparse rather than click: ``credential-process`` is started by the SDK on every credential
refresh, and its start-up time is added to the caller's latency, so this module imports only
argparse at load time and each command imports what it needs.

Outputs match the helper byte for byte: ``credential-process`` and ``read-certificate-data`` print
compact JSON without a newline, ``version`` prints the version and a newline. Failures print
``rapki-signer: error: ...`` (and a ``hint:`` line when there is one) on stderr, nothing on stdout,
and exit 1, as the helper exits 1 for every failure.

Typical uses (the same lines as with the helper)::

    # ~/.aws/config
    [profile ra]
    credential_process = rapki-signer credential-process --certificate /etc/rapki/cert.pem \
        --private-key /etc/rapki/key.pem --intermediates /etc/rapki/chain.pem \
        --trust-anchor-arn arn:aws:rolesanywhere:... --profile-arn ... --role-arn ...

    # an IMDSv2 endpoint for a pod or host (AWS_EC2_METADATA_SERVICE_ENDPOINT=http://127.0.0.1:9911)
    rapki-signer serve ... [--port 9911] [--bind 127.0.0.1] [--hop-limit 64]

    # keep [ra] of ~/.aws/credentials fresh (or --once from a timer)
    rapki-signer update ... --profile ra

Extensions over the helper: ``--ca-bundle``/``AWS_CA_BUNDLE``, ``--use-fips-endpoint``/
``AWS_USE_FIPS_ENDPOINT``, ``--use-dualstack-endpoint``/``AWS_USE_DUALSTACK_ENDPOINT``, ``serve --bind``,
``AWS_MAX_ATTEMPTS`` for retries, and hints after the service's error message.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, NoReturn

PROG = "rapki-signer"

# The helper's flags for hardware and OS certificate stores: accepted so a copied command line fails
# with a clear sentence rather than "unrecognized arguments".
_UNSUPPORTED = (
    "--cert-selector",
    "--system-store-name",
    "--pkcs11-lib",
    "--tpm-key-password",
)
_UNSUPPORTED_FLAGS = ("--use-latest-expiring-certificate", "--reuse-pin", "--no-tpm-key-password")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # The helper exits 1 for usage errors too; scripts that test "$? -eq 1" keep working.
        self.print_usage(sys.stderr)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(1)


def _add_credential_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("credentials")
    g.add_argument("--certificate", default="", help="path to the PEM certificate, or a PKCS#12 bundle")
    g.add_argument("--private-key", default="", help="path to the private key (PKCS#1, SEC1, PKCS#8)")
    g.add_argument("--intermediates", default="", help="path to a PEM bundle of intermediate CAs")
    g.add_argument("--pkcs8-password", default="", help="password of an encrypted PKCS#8 key (or PKCS#12)")
    g.add_argument("--trust-anchor-arn", default="", help="trust anchor to use for authentication")
    g.add_argument("--profile-arn", default="", help="profile to pull policies from")
    g.add_argument("--role-arn", default="", help="target role to assume")
    g.add_argument(
        "--session-duration", type=int, default=3600, help="duration, in seconds, of the session (900-43200)"
    )
    g.add_argument("--role-session-name", default="", help="an identifier of the role session")
    n = p.add_argument_group("network")
    n.add_argument("--region", default="", help="signing region (default: the trust anchor ARN's)")
    n.add_argument("--endpoint", default="", help="endpoint for CreateSession: https://host[:port] or http://...")
    n.add_argument("--no-verify-ssl", action="store_true", help="do not verify the endpoint's TLS certificate")
    n.add_argument("--with-proxy", action="store_true", help="use HTTPS_PROXY/HTTP_PROXY/NO_PROXY")
    n.add_argument("--ca-bundle", default="", help="CA bundle to verify the endpoint with (env AWS_CA_BUNDLE)")
    n.add_argument("--use-fips-endpoint", action="store_true", help="use the FIPS endpoint (env AWS_USE_FIPS_ENDPOINT)")
    n.add_argument(
        "--use-dualstack-endpoint",
        action="store_true",
        help="use the dual-stack endpoint (env AWS_USE_DUALSTACK_ENDPOINT)",
    )
    _add_unsupported(p)


def _add_unsupported(p: argparse.ArgumentParser, flags: tuple[str, ...] = _UNSUPPORTED) -> None:
    for flag in flags:
        p.add_argument(flag, default=None, help=argparse.SUPPRESS)
    for flag in _UNSUPPORTED_FLAGS:
        p.add_argument(flag, action="store_true", help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog=PROG,
        allow_abbrev=False,
        description="Trade a certificate for AWS credentials through IAM Roles Anywhere "
        "(a drop-in for aws_signing_helper).",
    )
    sub = parser.add_subparsers(dest="command", metavar="command", parser_class=_Parser)

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text, allow_abbrev=False)
        p.add_argument("--debug", action="store_true", help="print the signed request and responses on stderr")
        return p

    p = command("credential-process", "print credentials for the SDKs' credential_process setting")
    _add_credential_flags(p)

    p = command("serve", "serve credentials on an IMDSv2-compatible endpoint")
    _add_credential_flags(p)
    p.add_argument("--port", type=int, default=9911, help="port to listen on (default 9911; 0 picks one)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument("--hop-limit", type=int, default=64, help="IP TTL of the answers (default 64)")

    p = command("update", "keep a profile of the shared credentials file up to date")
    _add_credential_flags(p)
    p.add_argument("--profile", default="default", help="profile to update (default: default)")
    p.add_argument("--once", action="store_true", help="update the profile once and exit")

    p = command("sign-string", "sign the helper's fixed test string with the private key")
    p.add_argument("--certificate", default="", help="accepted for compatibility; not needed for key files")
    p.add_argument("--private-key", default="", help="path to the private key")
    p.add_argument("--pkcs8-password", default="", help="password of an encrypted PKCS#8 key")
    p.add_argument("--format", choices=("json", "text", "bin"), default="json", help="output format")
    p.add_argument("--digest", choices=("SHA256", "SHA384", "SHA512"), default="SHA256", help="digest")
    _add_unsupported(p)

    p = command("read-certificate-data", "print a certificate's key type, DER, serial and algorithms")
    p.add_argument("--certificate", default="", help="path to the certificate file")
    _add_unsupported(p, ("--cert-selector", "--system-store-name", "--pkcs11-lib"))

    sub.add_parser("version", help="print the version")
    return parser


def _prompt_password_if_needed(args: argparse.Namespace) -> None:
    """Ask for an encrypted key's password on a terminal, as the helper does; never when run by an SDK."""
    if getattr(args, "pkcs8_password", "") or not getattr(args, "private_key", "") or not sys.stdin.isatty():
        return
    try:
        with open(args.private_key, "rb") as fh:
            encrypted = b"ENCRYPTED PRIVATE KEY" in fh.read(4096)
    except OSError:
        return  # reported properly when the key is loaded
    if encrypted:
        import getpass

        args.pkcs8_password = getpass.getpass("Please enter your PKCS#8 private key password: ")


def session_options(args: argparse.Namespace) -> Any:
    from pki.signer.session import SessionOptions

    return SessionOptions(
        certificate=args.certificate,
        private_key=args.private_key or None,
        intermediates=args.intermediates or None,
        pkcs8_password=args.pkcs8_password or None,
        trust_anchor_arn=args.trust_anchor_arn,
        profile_arn=args.profile_arn,
        role_arn=args.role_arn,
        session_duration=args.session_duration,
        region=args.region or None,
        endpoint=args.endpoint or None,
        role_session_name=args.role_session_name or None,
        no_verify_ssl=args.no_verify_ssl,
        with_proxy=args.with_proxy,
        ca_bundle=args.ca_bundle or None,
        use_fips_endpoint=args.use_fips_endpoint,
        use_dualstack_endpoint=args.use_dualstack_endpoint,
        debug=args.debug,
    )


def _refuse_unsupported(args: argparse.Namespace) -> None:
    from pki.errors import InvalidInput

    for flag in (*_UNSUPPORTED, *_UNSUPPORTED_FLAGS):
        dest = flag[2:].replace("-", "_")
        if getattr(args, dest, None):
            raise InvalidInput(
                f"{flag} (OS certificate stores, PKCS#11 and TPM keys) is not supported by rapki-signer: "
                "use --certificate and --private-key files, or a PKCS#12 bundle"
            )


def cmd_credential_process(args: argparse.Namespace) -> None:
    from pki.signer.session import create_session

    creds = create_session(session_options(args))
    sys.stdout.write(creds.process_output())
    sys.stdout.flush()


def cmd_serve(args: argparse.Namespace) -> None:
    from pki.signer.serve import serve

    serve(session_options(args), port=args.port, bind=args.bind, hop_limit=args.hop_limit)


def cmd_update(args: argparse.Namespace) -> None:
    from pki.signer.update import run_update

    run_update(session_options(args), args.profile, once=args.once)


def cmd_sign_string(args: argparse.Namespace) -> None:
    from pki.signer.material import _read, parse_private_key
    from pki.signer.tools import sign_fixed_string

    if not args.private_key:
        from pki.errors import InvalidInput

        raise InvalidInput("--private-key is required")
    key = parse_private_key(_read(args.private_key, "private key"), args.pkcs8_password or None, args.private_key)
    signature = sign_fixed_string(key, args.digest)
    if args.format == "bin":
        sys.stdout.buffer.write(signature)
        sys.stdout.buffer.flush()
    elif args.format == "text":
        sys.stdout.write(signature.hex())
    else:
        sys.stdout.write(f'"{signature.hex()}"')


def cmd_read_certificate_data(args: argparse.Namespace) -> None:
    from pki.signer.tools import certificate_data

    if not args.certificate:
        from pki.errors import InvalidInput

        raise InvalidInput("--certificate is required (certificate stores are not supported)")
    sys.stdout.write(certificate_data(args.certificate))


def cmd_version(args: argparse.Namespace) -> None:
    from pki import __version__

    sys.stdout.write(__version__ + "\n")


COMMANDS = {
    "credential-process": cmd_credential_process,
    "serve": cmd_serve,
    "update": cmd_update,
    "sign-string": cmd_sign_string,
    "read-certificate-data": cmd_read_certificate_data,
    "version": cmd_version,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help()
        return 0
    try:
        _refuse_unsupported(args)
        _prompt_password_if_needed(args)
        COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return report(exc, getattr(args, "debug", False))
    return 0


def report(exc: BaseException, debug: bool = False) -> int:
    """One error line (plus the hint) on stderr; a traceback only with --debug for unexpected errors."""
    from pki.errors import RapkiError

    if isinstance(exc, RapkiError):
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        hint = getattr(exc, "hint", "")
        if hint:
            print(f"{PROG}: hint: {hint}", file=sys.stderr)
    elif isinstance(exc, OSError):
        print(f"{PROG}: error: {exc}", file=sys.stderr)
    else:
        if debug:
            import traceback

            traceback.print_exc()
        print(f"{PROG}: error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
    sys.stderr.flush()
    return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
