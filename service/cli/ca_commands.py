"""``rapki init``, ``rapki ca ...`` and ``rapki profile ...``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from pki.ca.authority import CertificateAuthority, InitOptions, Issuer
from pki.ca.home import Home
from pki.custody.refs import KeyRef, KmsRef, Pkcs11Ref, parse_key_ref
from pki.errors import Conflict, InvalidInput
from pki.store.db import without_password
from pki.x509.durations import format_duration, parse_duration
from pki.x509.keys import KeyType
from pki.x509.pem import Pem
from pki.x509.profiles import Profile, RolesAnywhereBinding
from service.cli.base import echo_json, home_option, json_option, resolve_home

KEY_TYPES = [k.value for k in KeyType]
KEY_BACKENDS = ["file", "pkcs11", "kms"]


def key_backend_options(default: str | None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options that say where new CA keys are made (docs/key-custody.md)."""
    where = "the home's encrypted files" if default else "where the active issuing CA's key is"
    options = [
        click.option("--key-backend", type=click.Choice(KEY_BACKENDS), default=default, show_default=bool(default),
                     help=f"Where new CA keys are made (default: {where})."),
        click.option("--pkcs11-module", default=None, help="pkcs11: path of the token's PKCS#11 library."),
        click.option("--pkcs11-token", default=None, help="pkcs11: label of the token."),
        click.option("--pkcs11-pin-env", default=None, help="pkcs11: environment variable holding the PIN."),
        click.option("--pkcs11-pin-file", default=None,
                     help="pkcs11: file holding the PIN (mode 0600, outside the home)."),
        click.option("--key-label", default=None,
                     help="pkcs11: prefix of the keys' labels on the token (default: rapki; keys "
                          "PREFIX-root, PREFIX-issuing-N)."),
        click.option("--kms-key-id", default=None,
                     help="kms: adopt this key (ARN, id or alias) for the issuing CA instead of creating one."),
        click.option("--kms-region", default=None,
                     help="kms: AWS region (default: from the key ARN or the AWS config)."),
        click.option("--kms-fips", is_flag=True, default=False, help="kms: use the FIPS endpoint."),
        click.option("--kms-endpoint-url", default=None, help="kms: endpoint URL (a VPC endpoint)."),
    ]

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def key_placement(key_backend: str | None, pkcs11_module: str | None, pkcs11_token: str | None,
                  pkcs11_pin_env: str | None, pkcs11_pin_file: str | None, key_label: str | None,
                  kms_key_id: str | None, kms_region: str | None, kms_fips: bool,
                  kms_endpoint_url: str | None) -> KeyRef | None:
    """Where the key backend options say new CA keys go (``pki.custody.refs.key_ref_for``); None
    for files in the home (or, with no ``--key-backend``, wherever the active issuing CA's key is)."""
    given = {"--pkcs11-module": pkcs11_module, "--pkcs11-token": pkcs11_token, "--pkcs11-pin-env": pkcs11_pin_env,
             "--pkcs11-pin-file": pkcs11_pin_file, "--key-label": key_label, "--kms-key-id": kms_key_id,
             "--kms-region": kms_region, "--kms-fips": kms_fips or None, "--kms-endpoint-url": kms_endpoint_url}
    allowed = {"pkcs11": ("--pkcs11-", "--key-label"), "kms": ("--kms-",)}.get(key_backend or "", ())
    stray = [name for name, value in given.items() if value is not None and not (allowed and name.startswith(allowed))]
    if stray:
        raise InvalidInput(f"{stray[0]} does not apply to --key-backend {key_backend or '(not given)'}")
    if key_backend == "pkcs11":
        if not pkcs11_module or not pkcs11_token:
            raise InvalidInput("--key-backend pkcs11 needs --pkcs11-module and --pkcs11-token")
        if (pkcs11_pin_env is None) == (pkcs11_pin_file is None):
            raise InvalidInput("--key-backend pkcs11 needs the PIN's source: --pkcs11-pin-env NAME or "
                               "--pkcs11-pin-file PATH (never the PIN itself)")
        return Pkcs11Ref(module=pkcs11_module, token=pkcs11_token, label=key_label or "rapki",
                         pin_env=pkcs11_pin_env, pin_file=pkcs11_pin_file)
    if key_backend == "kms":
        return KmsRef(key_id=kms_key_id or "", region=kms_region, use_fips_endpoint=kms_fips,
                      endpoint_url=kms_endpoint_url)
    return None


def open_ca(home: Path | None) -> CertificateAuthority:
    return CertificateAuthority.open(resolve_home(home))


def progress(message: str) -> None:
    click.echo(message, err=True)


@click.command()
@home_option
@click.option("--key-type", type=click.Choice(KEY_TYPES), default="ec-p256", show_default=True,
              help="Key type of the root and issuing CA.")
@click.option("--org", "organization", default="rapki", show_default=True, help="Subject O of the CA certificates.")
@click.option("--country", default=None, help="Subject C (two letters) of the CA certificates.")
@click.option("--root-cn", default=None,
              help="Root CA name (default: 'rapki Root CA' and a short id of this installation's root key).")
@click.option("--issuing-cn", default=None, help="Issuing CA name (default: 'rapki Issuing CA 1' and the same id).")
@click.option("--root-lifetime", default="10y", show_default=True)
@click.option("--issuing-lifetime", default="3y", show_default=True)
@click.option("--root-path-len", type=click.IntRange(0, 5), default=1, show_default=True)
@click.option("--issuing-path-len", type=click.IntRange(0, 4), default=0, show_default=True)
@click.option("--offline-root", "offline_root", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write the (encrypted) root key here instead of the home; move it offline afterwards.")
@click.option("--passphrase-file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="Read the CA key passphrase from this file (default: $RAPKI_PASSPHRASE, else generate "
                   "HOME/passphrase, mode 0600).")
@click.option("--serial-bytes", type=click.IntRange(9, 20), default=16, show_default=True,
              help="Length of new certificate serials (shorter fits more entries in a CRL).")
@key_backend_options("file")
@json_option
def init(home: Path | None, key_type: str, organization: str, country: str | None, root_cn: str,
         issuing_cn: str, root_lifetime: str, issuing_lifetime: str, root_path_len: int,
         issuing_path_len: int, offline_root: Path | None, passphrase_file: Path | None,
         serial_bytes: int, as_json: bool, **key_options: Any) -> None:
    """Create a rapki home: config, root CA, issuing CA and database.

    With --key-backend pkcs11 or kms both CA keys are made on the token or in KMS (the root's
    unless --offline-root), and never leave it."""
    if country is not None and len(country) != 2:
        raise InvalidInput("--country must be a two-letter ISO 3166 code")
    if issuing_path_len >= root_path_len:
        raise InvalidInput("--issuing-path-len must be lower than --root-path-len")
    import os

    env_passphrase = os.environ.get("RAPKI_PASSPHRASE")
    root_placement, issuing_placement = _init_placements(key_placement(**key_options))
    options = InitOptions(
        key_type=KeyType(key_type), organization=organization or None, country=country,
        root_cn=root_cn, issuing_cn=issuing_cn, root_lifetime=parse_duration(root_lifetime),
        issuing_lifetime=parse_duration(issuing_lifetime), root_path_length=root_path_len,
        issuing_path_length=issuing_path_len, offline_root_key_out=offline_root,
        passphrase_file=passphrase_file, serial_bytes=serial_bytes,
        root_key_placement=root_placement, issuing_key_placement=issuing_placement,
    )
    target = resolve_home(home)
    if Home(target).exists():
        raise Conflict(f"{target} is already a rapki home: refusing to overwrite its CA")
    progress(f"creating {key_type} root and issuing CA in {target} (keys: {key_options['key_backend']}) ...")
    passphrase = env_passphrase.encode() if env_passphrase and not passphrase_file else None
    ca = CertificateAuthority.init(target, options, passphrase=passphrase)
    issuer = ca.issuer()
    summary = {
        "home": str(ca.home.path),
        "root": ca.root_certificate.subject.rfc4514_string(),
        "issuing_ca": issuer.certificate.subject.rfc4514_string(),
        "root_key": str(offline_root or ca.config.root_key or ca.home.root_key_path),
        "issuing_key": issuer.key_ref,
        "key_backend": issuer.backend,
        "database": without_password(ca.db.url),
    }
    if as_json:
        echo_json(summary)
        return
    click.echo(f"Initialised {summary['home']}")
    click.echo(f"  root CA:    {summary['root']}")
    click.echo(f"  issuing CA: {summary['issuing_ca']}")
    if issuer.backend != "file":
        click.echo(f"  keys:       {issuer.key.describe() if issuer.key is not None else issuer.key_ref}")
    if offline_root:
        click.echo(f"  root key:   {offline_root}  <- move it offline; "
                   "'rapki ca sign-intermediate --root-key' needs it")
    if ca.config.passphrase_file == "passphrase":
        click.echo(f"  passphrase: {ca.home.path / 'passphrase'} (0600; keep it apart from backups of the keys)")
    click.echo("Next: rapki profile add NAME --cn-pattern REGEX")


@click.group()
def ca() -> None:
    """The CA hierarchy: chain, root, issuing CAs and rotation."""


@ca.command("chain")
@home_option
def ca_chain(home: Path | None) -> None:
    """Print the issuing chain (intermediates, the X-Amz-X509-Chain content), PEM."""
    click.echo(Pem.of_certificates(open_ca(home).chain()).text(), nl=False)


@ca.command("root")
@home_option
def ca_root(home: Path | None) -> None:
    """Print the root CA certificate, PEM."""
    click.echo(Pem.of_certificates([open_ca(home).root_certificate]).text(), nl=False)


@ca.command("list")
@home_option
@json_option
def ca_list(home: Path | None, as_json: bool) -> None:
    """List the root and the issuing CAs (the active one, *, signs new certificates) and where each key is."""
    authority = open_ca(home)
    root = authority.root_certificate
    rows: list[dict[str, Any]] = [
        {"name": "root", "role": "root", "subject": root.subject.rfc4514_string(),
         "key_type": authority.config.key_type.value, "not_after": root.not_valid_after_utc.isoformat(),
         "active": False, **_root_key(authority)},
    ]
    rows += [
        {"name": i.name, "role": "issuing", "subject": i.certificate.subject.rfc4514_string(),
         "key_type": i.key_type.value, "not_after": i.not_after.isoformat(), "active": i.active,
         "backend": i.backend, "key_ref": i.key_ref}
        for i in authority.issuers()
    ]
    if as_json:
        echo_json(rows)
        return
    for r in rows:
        mark = "*" if r["active"] else " "
        click.echo(f"{mark} {r['name']:<12} {r['key_type']:<9} {r['backend']:<7} until {r['not_after'][:10]}  "
                   f"{r['subject']}")


def _root_key(authority: CertificateAuthority) -> dict[str, str]:
    """Where the root's key is: the configured reference, the home's key file, or offline."""
    if authority.config.root_key:
        return {"backend": parse_key_ref(authority.config.root_key).backend, "key_ref": authority.config.root_key}
    if authority.home.root_key_path.is_file():
        return {"backend": "file", "key_ref": str(authority.home.root_key_path.relative_to(authority.home.path))}
    return {"backend": "offline", "key_ref": ""}


@ca.command("sign-intermediate")
@home_option
@click.option("--root-key", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              help="The root key file (needed when the root is kept offline).")
@click.option("--key-type", type=click.Choice(KEY_TYPES), default=None, help="Default: the home's key type.")
@click.option("--cn", default=None, help="Subject CN of the new issuing CA.")
@click.option("--lifetime", default="3y", show_default=True)
@click.option("--inactive", is_flag=True,
              help="Only make it: copy its key to every replica, then 'rapki ca activate NAME'.")
@key_backend_options(None)
@json_option
def ca_sign_intermediate(home: Path | None, root_key: Path | None, key_type: str | None, cn: str | None,
                         lifetime: str, inactive: bool, as_json: bool, **key_options: Any) -> None:
    """Make a new issuing CA the active one (rotation). Older issuing CAs keep signing CRLs.

    Its key is made where the active issuing CA's key is (a new file, a new key pair on the same
    token, a new key in the same KMS region) unless --key-backend says otherwise."""
    placement = key_placement(**key_options)
    authority = open_ca(home)
    validity = parse_duration(lifetime)  # refused before the progress line, so a refusal is one line
    progress("signing a new issuing CA ...")
    issuer = authority.sign_intermediate(root_key_path=root_key, key_type=KeyType(key_type) if key_type else None,
                                         cn=cn, lifetime=validity, activate=not inactive,
                                         placement=placement)
    _print_issuer(issuer, as_json)


@ca.command("activate")
@home_option
@click.argument("name")
@json_option
def ca_activate(home: Path | None, name: str, as_json: bool) -> None:
    """Make issuing CA NAME the active one (every server and replica follows within seconds)."""
    _print_issuer(open_ca(home).activate_issuer(name), as_json)


def _print_issuer(issuer: Issuer, as_json: bool) -> None:
    info = {"name": issuer.name, "subject": issuer.certificate.subject.rfc4514_string(),
            "not_after": issuer.not_after.isoformat(), "active": issuer.active, "backend": issuer.backend,
            "key_ref": issuer.key_ref}
    if as_json:
        echo_json(info)
    elif issuer.active:
        needs = (f"each needs its key file {issuer.key_ref} ('rapki check' on each)" if issuer.backend == "file"
                 else f"key: {issuer.backend}, reachable from every replica")
        click.echo(f"{info['name']} is now the active issuing CA: {info['subject']} (until "
                   f"{issuer.not_after:%Y-%m-%d}); servers and replicas switch within seconds, {needs}")
    else:
        copy = f"copy {issuer.key_ref} to every replica's home, " if issuer.backend == "file" else ""
        click.echo(f"{info['name']} made, not active: {copy}run 'rapki check' on every replica, "
                   f"then 'rapki ca activate {issuer.name}'")


def _init_placements(placement: KeyRef | None) -> tuple[KeyRef | None, KeyRef | None]:
    """The root's and the issuing CA's key placements for ``InitOptions``: a KMS key to adopt
    (``--kms-key-id``) is the issuing CA's; the root's is then created beside it."""
    if isinstance(placement, KmsRef) and placement.key_id:
        root = KmsRef(key_id="", region=placement.region, use_fips_endpoint=placement.use_fips_endpoint,
                      endpoint_url=placement.endpoint_url)
        return root, placement
    return placement, placement


# --- profiles ---------------------------------------------------------------------------------
@click.group()
def profile() -> None:
    """Issuance profiles: which names, key types and lifetimes are allowed (deny by default)."""


def _profile_options(*, update: bool) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """The options of ``profile add`` (with their defaults), or of ``profile update`` (no
    defaults: an option not given keeps what the profile has)."""
    keep = " Repeat it to list several; given once with '' it empties the list." if update else " (repeatable)"

    def default(value: object) -> dict[str, Any]:
        return {"default": None} if update else {"default": value, "show_default": True}

    options = [
        click.option("--cn-pattern", required=not update, help="Regular expression every CN must fully match."),
        click.option("--san-dns-pattern", multiple=True, help="Regex a DNS SAN must fully match." + keep),
        click.option("--san-uri-pattern", multiple=True, help="Regex a URI SAN must fully match." + keep),
        click.option("--key-types", **default(",".join(KEY_TYPES)),
                     help="Comma-separated key types allowed; the first is the default."),
        click.option("--default-ttl", **default("24h")),
        click.option("--max-ttl", **default("30d")),
        click.option("--profile-arn", **default(""), help="Roles Anywhere profile ARN ('' removes it)."),
        click.option("--trust-anchor-arn", **default(""), help="Roles Anywhere trust anchor ARN ('' removes it)."),
        click.option("--role-arn", "role_arns", multiple=True, help="IAM role ARN." + keep),
        click.option("--session-duration", type=int, **default(3600)),
        click.option("--require-san-uri/--no-require-san-uri", **default(False),
                     help="Refuse certificates without a URI SAN (for a Roles Anywhere profile whose trusted "
                          "identity propagation takes x509SAN/URI)."),
    ]

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def _build_profile(name: str, cn_pattern: str, san_dns_pattern: tuple[str, ...],
                   san_uri_pattern: tuple[str, ...], key_types: str, default_ttl: str, max_ttl: str,
                   profile_arn: str, trust_anchor_arn: str, role_arns: tuple[str, ...],
                   session_duration: int, require_san_uri: bool) -> Profile:
    return Profile(
        name=name, cn_pattern=cn_pattern, san_dns_patterns=san_dns_pattern, san_uri_patterns=san_uri_pattern,
        key_types=tuple(KeyType.parse(k) for k in key_types.split(",") if k.strip()),
        default_ttl=parse_duration(default_ttl), max_ttl=parse_duration(max_ttl),
        roles_anywhere=RolesAnywhereBinding(profile_arn=profile_arn, role_arns=role_arns,
                                            trust_anchor_arn=trust_anchor_arn,
                                            session_duration=session_duration),
        require_san_uri=require_san_uri,
    )


@profile.command("add")
@home_option
@click.argument("name")
@_profile_options(update=False)
@json_option
def profile_add(home: Path | None, name: str, as_json: bool, **fields: object) -> None:
    """Add profile NAME."""
    saved = open_ca(home).add_profile(_build_profile(name, **fields))  # type: ignore[arg-type]  # click's values
    _print_profile(saved, as_json, verb="added")


@profile.command("update")
@home_option
@click.argument("name")
@_profile_options(update=True)
@json_option
def profile_update(home: Path | None, name: str, as_json: bool, cn_pattern: str | None,
                   san_dns_pattern: tuple[str, ...], san_uri_pattern: tuple[str, ...], key_types: str | None,
                   default_ttl: str | None, max_ttl: str | None, profile_arn: str | None,
                   trust_anchor_arn: str | None, role_arns: tuple[str, ...], session_duration: int | None,
                   require_san_uri: bool | None) -> None:
    """Change the options given of profile NAME; the others keep their values.

    A list option given (--san-dns-pattern, --san-uri-pattern, --role-arn) replaces that whole
    list; given once as '' it empties it.
    """
    given: dict[str, object] = {"cn_pattern": cn_pattern, "default_ttl": default_ttl, "max_ttl": max_ttl,
                                "key_types": _key_types(key_types) if key_types is not None else None,
                                "require_san_uri": require_san_uri}
    changes = {key: value for key, value in given.items() if value is not None}
    for key, values in (("san_dns_patterns", san_dns_pattern), ("san_uri_patterns", san_uri_pattern)):
        if values:
            changes[key] = [v for v in values if v]
    given = {"profile_arn": profile_arn, "trust_anchor_arn": trust_anchor_arn, "session_duration": session_duration}
    binding = {key: value for key, value in given.items() if value is not None}
    if role_arns:
        binding["role_arns"] = [v for v in role_arns if v]
    if binding:
        changes["roles_anywhere"] = binding
    if not changes:
        raise InvalidInput("nothing to change: give the options to change (see 'rapki profile update --help')")
    _print_profile(open_ca(home).update_profile(name, changes), as_json, verb="updated")


def _key_types(text: str) -> list[str]:
    """The key types of a comma-separated ``--key-types``, each checked."""
    return [KeyType.parse(k).value for k in text.split(",") if k.strip()]


@profile.command("list")
@home_option
@json_option
def profile_list(home: Path | None, as_json: bool) -> None:
    """List profiles."""
    profiles = open_ca(home).profiles()
    if as_json:
        echo_json([p.to_dict() for p in profiles])
        return
    if not profiles:
        click.echo("no profiles: nothing can be issued until one is added ('rapki profile add')")
    for p in profiles:
        click.echo(f"{p.name:<20} cn={p.cn_pattern!r} ttl={format_duration(p.default_ttl)}/"
                   f"{format_duration(p.max_ttl)} keys={','.join(k.value for k in p.key_types)}")


@profile.command("show")
@home_option
@click.argument("name")
@json_option
def profile_show(home: Path | None, name: str, as_json: bool) -> None:
    """Show profile NAME."""
    _print_profile(open_ca(home).profile(name), as_json)


@profile.command("remove")
@home_option
@click.argument("name")
def profile_remove(home: Path | None, name: str) -> None:
    """Remove profile NAME (certificates already issued stay valid)."""
    open_ca(home).remove_profile(name)
    click.echo(f"removed profile {name}")


def _print_profile(p: Profile, as_json: bool, verb: str | None = None) -> None:
    if as_json:
        echo_json(p.to_dict())
        return
    if verb:
        click.echo(f"{verb} profile {p.name}")
    for key, value in p.to_dict().items():
        click.echo(f"  {key}: {value}")
