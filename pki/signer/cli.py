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

# The helper's flags for OS certificate stores and TPM keys: accepted so a copied command line fails
# with a clear sentence rather than "unrecognized arguments".
_UNSUPPORTED = (
    "--cert-selector",
    "--system-store-name",
    "--tpm-key-password",
)
_UNSUPPORTED_FLAGS = ("--use-latest-expiring-certificate", "--no-tpm-key-password")
# Go's strconv.ParseBool, which cobra uses for "--flag=value" on boolean flags.
_GO_TRUE = ("1", "t", "T", "TRUE", "true", "True")
_GO_FALSE = ("0", "f", "F", "FALSE", "false", "False")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # The helper exits 1 for usage errors too; scripts that test "$? -eq 1" keep working.
        self.print_usage(sys.stderr)
        print(f"{PROG}: error: {message}", file=sys.stderr)
        sys.exit(1)


def _add_credential_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("credentials")
    g.add_argument(
        "--certificate", default="", help="PEM certificate (with its key, or not), PKCS#12 bundle, pkcs11: URI, or -"
    )
    g.add_argument("--private-key", default="", help="private key (PKCS#1, SEC1, PKCS#8), pkcs11: URI, or -")
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
    n.add_argument(
        "--with-proxy", action="store_true", help="accepted; HTTPS_PROXY/HTTP_PROXY/NO_PROXY are always honoured"
    )
    n.add_argument("--ca-bundle", default="", help="CA bundle to verify the endpoint with (env AWS_CA_BUNDLE)")
    n.add_argument("--use-fips-endpoint", action="store_true", help="use the FIPS endpoint (env AWS_USE_FIPS_ENDPOINT)")
    n.add_argument(
        "--use-dualstack-endpoint",
        action="store_true",
        help="use the dual-stack endpoint (env AWS_USE_DUALSTACK_ENDPOINT)",
    )
    _add_pkcs11_flags(p)
    _add_unsupported(p)


def _add_pkcs11_flags(p: argparse.ArgumentParser) -> None:
    h = p.add_argument_group("PKCS#11 tokens")
    h.add_argument("--pkcs11-lib", default="", help="PKCS#11 module (default: p11-kit-proxy.so)")
    h.add_argument(
        "--reuse-pin", action="store_true", help="accepted, no effect (keys needing a PIN per signature are refused)"
    )


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
    c = p.add_argument_group("cache (rapki-signer only)")
    c.add_argument("--cache", action="store_true", help="share credentials among processes (a 0600 file per identity)")
    c.add_argument("--cache-dir", default="", help="cache directory (implies --cache; default ~/.cache/rapki-signer)")

    p = command("serve", "serve credentials on an IMDSv2-compatible endpoint")
    _add_credential_flags(p)
    p.add_argument("--port", type=int, default=9911, help="port to listen on (default 9911; 0 picks one)")
    p.add_argument("--bind", default="127.0.0.1", help="address to listen on (default 127.0.0.1, loopback only)")
    p.add_argument(
        "--hop-limit", type=int, default=None, help="IP TTL of the answers (default 64 on loopback, 1 otherwise)"
    )
    p.add_argument("--fail-fast", action="store_true", help="exit 1 when the first CreateSession fails")
    p.add_argument(
        "--container-token-file",
        default="",
        help="token file for the container endpoint (default: generated, see AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE)",
    )

    p = command("update", "keep a profile of the shared credentials file up to date")
    _add_credential_flags(p)
    p.add_argument("--profile", default="default", help="profile to update (default: default)")
    p.add_argument("--once", action="store_true", help="update the profile once and exit")

    p = command("sign-string", "sign the helper's fixed test string with the private key")
    p.add_argument("--certificate", default="", help="PKCS#12 bundle, PEM with its key, or pkcs11: URI")
    p.add_argument("--private-key", default="", help="private key file or pkcs11: URI")
    p.add_argument("--pkcs8-password", default="", help="password of an encrypted PKCS#8 key")
    p.add_argument("--format", choices=("json", "text", "bin"), default="json", help="output format")
    p.add_argument("--digest", choices=("SHA256", "SHA384", "SHA512"), default="SHA256", help="digest")
    _add_pkcs11_flags(p)
    _add_unsupported(p)

    p = command("read-certificate-data", "print a certificate's key type, DER, serial and algorithms")
    p.add_argument("--certificate", default="", help="certificate file, or pkcs11: URI listing token certificates")
    p.add_argument("--pkcs11-lib", default="", help="PKCS#11 module (default: p11-kit-proxy.so)")
    _add_unsupported(p, ("--cert-selector", "--system-store-name"))

    sub.add_parser("version", help="print the version")
    p = sub.add_parser("help", help="help about any command")
    p.add_argument("topic", nargs="*", help="command")
    p = sub.add_parser("completion", help="print a shell completion script")
    p.add_argument("shell", choices=("bash", "zsh", "fish", "powershell"))
    return parser


def normalise_bool_flags(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """Rewrite cobra's ``--flag=true``/``--flag=false`` for boolean flags into argparse's form."""
    bool_flags = {
        option
        for sub in _subparsers(parser)
        for action in sub._actions
        if isinstance(action, argparse._StoreTrueAction)
        for option in action.option_strings
    }
    out = []
    for arg in argv:
        name, sep, value = arg.partition("=")
        if not sep or name not in bool_flags:
            out.append(arg)
        elif value in _GO_TRUE:
            out.append(name)
        elif value not in _GO_FALSE:
            parser.error(f'invalid argument "{value}" for "{name}" flag: a boolean is true or false')
    return out


def _subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices.values())
    return []


def _prompt_password_if_needed(args: argparse.Namespace) -> None:
    """Ask for an encrypted key's password on a terminal, as the helper does; never when run by an SDK."""
    key = getattr(args, "private_key", "")
    if getattr(args, "pkcs8_password", "") or not key or key == "-" or key.startswith("pkcs11:"):
        return
    if not sys.stdin.isatty():
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
        pkcs11_lib=getattr(args, "pkcs11_lib", "") or None,
        reuse_pin=getattr(args, "reuse_pin", False),
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
                f"{flag} (OS certificate stores and TPM keys) is not supported by rapki-signer: use "
                "--certificate and --private-key files, a PKCS#12 bundle, or pkcs11: URIs (a TPM through tpm2-pkcs11)"
            )


def cmd_credential_process(args: argparse.Namespace) -> None:
    if args.cache or args.cache_dir:
        output = _cached_credentials(args)
    else:
        from pki.signer.session import create_session

        output = create_session(session_options(args)).process_output()
    sys.stdout.write(output)
    sys.stdout.flush()


def _cached_credentials(args: argparse.Namespace) -> str:
    """The hit path imports the standard library only; a miss loads the signer."""
    from pathlib import Path

    from pki.signer.cache import Entry, cache_key, cached_output, default_dir

    request = {
        name: getattr(args, name)
        for name in ("private_key", "intermediates", "trust_anchor_arn", "profile_arn", "role_arn",
                     "session_duration", "role_session_name", "region", "endpoint", "pkcs11_lib")
    }  # fmt: skip

    def fetch() -> Entry:
        from pki.signer.session import create_session

        creds = create_session(session_options(args))
        return Entry(creds.process_output(), creds.expiration, args.session_duration)

    directory = Path(args.cache_dir).expanduser() if args.cache_dir else default_dir()
    return cached_output(directory, cache_key(args.certificate, request), fetch)


def cmd_serve(args: argparse.Namespace) -> None:
    from pki.signer.serve import serve

    serve(
        session_options(args),
        port=args.port,
        bind=args.bind,
        hop_limit=args.hop_limit,
        fail_fast=args.fail_fast,
        container_token_file=args.container_token_file or None,
    )


def cmd_update(args: argparse.Namespace) -> None:
    from pki.signer.update import run_update

    run_update(session_options(args), args.profile, once=args.once)


def cmd_sign_string(args: argparse.Namespace) -> None:
    from pki.signer.tools import sign_fixed_string, signing_key

    key = signing_key(
        args.certificate, args.private_key, args.pkcs8_password or None, args.pkcs11_lib or None, args.reuse_pin
    )
    signature = sign_fixed_string(key, args.digest)
    if args.format == "bin":
        sys.stdout.buffer.write(signature)
        sys.stdout.buffer.flush()
    elif args.format == "text":
        sys.stdout.write(signature.hex())
    else:
        sys.stdout.write(f'"{signature.hex()}"')


def cmd_read_certificate_data(args: argparse.Namespace) -> None:
    if args.certificate.startswith("pkcs11:"):
        from pki.signer.pkcs11 import matching_identities

        sys.stdout.write(matching_identities(args.certificate, args.pkcs11_lib or None))
        return
    from pki.signer.tools import certificate_data

    if not args.certificate:
        from pki.errors import InvalidInput

        raise InvalidInput("--certificate is required (certificate stores are not supported)")
    sys.stdout.write(certificate_data(args.certificate))


def cmd_version(args: argparse.Namespace) -> None:
    from pki import __version__

    sys.stdout.write(__version__ + "\n")


def cmd_help(args: argparse.Namespace) -> None:
    parser = build_parser()
    if not args.topic:
        parser.print_help()
        return
    subs = {sub.prog.split()[-1]: sub for sub in _subparsers(parser)}
    sub = subs.get(args.topic[0])
    if sub is None:
        from pki.errors import InvalidInput

        raise InvalidInput(f"unknown help topic {args.topic[0]!r}: one of {', '.join(subs)}")
    sub.print_help()


def cmd_completion(args: argparse.Namespace) -> None:
    from pki.signer.completion import completion_script

    sys.stdout.write(completion_script(build_parser(), args.shell))


COMMANDS = {
    "credential-process": cmd_credential_process,
    "serve": cmd_serve,
    "update": cmd_update,
    "sign-string": cmd_sign_string,
    "read-certificate-data": cmd_read_certificate_data,
    "version": cmd_version,
    "help": cmd_help,
    "completion": cmd_completion,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalise_bool_flags(parser, sys.argv[1:] if argv is None else argv))
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
