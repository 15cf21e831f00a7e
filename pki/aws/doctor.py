"""``rapki doctor``: why would Roles Anywhere refuse this certificate? The answer to ``Untrusted Signing Certificate``.

The service says little: ``Untrusted Signing Certificate`` covers a wrong chain, a missing intermediate,
a disabled anchor, a weak algorithm... and ``Certificate revoked`` or a signature error covers the rest.
The doctor replays the service's checks locally, one by one, and prints each with pass/fail and the
fix. What it knows about the trust anchor comes from AWS (GetTrustAnchor, ListCrls: read-only calls)
when a trust anchor ARN is given or registered, else from the local rapki CA (offline mode).

``diagnose`` is pure (certificates in, checks out), so tests and the API can use it without AWS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from itertools import pairwise
from typing import Any

from cryptography import x509

from pki.errors import RapkiError
from pki.rolesanywhere import trustpath
from pki.rolesanywhere.sigv4x509 import MAX_CHAIN_CERTIFICATES
from pki.x509.preflight import (
    common_name,
    extension_problems,
    public_key_problem,
    signature_problem,
    source_identity,
    source_identity_problem,
)

MAX_SKEW = timedelta(minutes=5)  # SigV4 requests outside +-5 minutes are refused
PASS, FAIL, WARN, SKIP = "pass", "fail", "warn", "skip"


@dataclass
class Check:
    name: str
    status: str
    detail: str = ""
    fix: str = ""


@dataclass
class AnchorView:
    """What the doctor knows of the trust anchor: its certificates, state and CRLs."""

    label: str  # the ARN, or "local CA (offline)"
    certificates: list[x509.Certificate]
    enabled: bool | None = None
    crls: list[tuple[str, bool, x509.CertificateRevocationList]] = field(default_factory=list)  # (name, enabled, crl)
    server_date: datetime | None = None
    crl_dp: bool | None = None  # crlDpRevocationEnabled: revocation by the certificates' distribution points


@dataclass
class DoctorReport:
    checks: list[Check]
    source_identity: str | None
    anchor: str | None

    @property
    def ok(self) -> bool:
        return all(c.status != FAIL for c in self.checks)

    @property
    def verdict(self) -> str:
        failed = [c for c in self.checks if c.status == FAIL]
        if not failed:
            return "Roles Anywhere should accept this certificate"
        return f"Roles Anywhere would refuse this certificate: {failed[0].name}: {failed[0].detail}"

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "verdict": self.verdict, "source_identity": self.source_identity,
                "anchor": self.anchor, "checks": [asdict(c) for c in self.checks]}


def _subject(cert: x509.Certificate) -> str:
    return cert.subject.rfc4514_string() or "(empty subject)"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    if b"-----BEGIN" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def diagnose(certificate: bytes, private_key: bytes | None = None, intermediates: bytes | None = None, *,
             anchor: AnchorView | None = None, now: datetime | None = None,
             key_password: bytes | None = None,
             fetch_crl: Callable[[str], trustpath.ParsedCrl] | None = None) -> DoctorReport:
    """Every check, in the order the service meets them. ``fetch_crl(url)``: the CRL at a
    distribution point (``pki.rolesanywhere.crlfetch``); None: distribution points are not fetched."""
    now = now or datetime.now(UTC)
    checks: list[Check] = []
    try:
        leaf = load_certificates(certificate)[0]
    except (ValueError, IndexError) as exc:
        checks.append(Check("certificate readable", FAIL, f"not a PEM or DER certificate ({exc})",
                            "pass the certificate file 'rapki issue' wrote (cert.pem)"))
        return DoctorReport(checks, None, anchor.label if anchor else None)
    checks.append(Check("certificate readable", PASS, f"{_subject(leaf)}, serial {leaf.serial_number:x}"))
    checks.append(_key_check(leaf, private_key, key_password))
    checks.extend(_leaf_checks(leaf))
    cn = common_name(leaf.subject)
    identity = source_identity(cn) if cn and source_identity_problem(cn) is None else None
    chain: list[x509.Certificate] = []
    if intermediates:
        try:
            chain = load_certificates(intermediates)
        except ValueError as exc:
            checks.append(Check("intermediates readable", FAIL, f"not PEM/DER certificates ({exc})",
                                "pass the chain file 'rapki issue' wrote (chain.pem), or 'rapki ca chain' output"))
    checks.append(_validity_check(leaf, now, anchor.server_date if anchor else None))
    checks.append(_chain_shape_check(chain, now))
    if anchor is None:
        checks.append(Check("chain builds to the trust anchor", SKIP, "no trust anchor known",
                            "pass --trust-anchor-arn (or run it in a rapki home)"))
        return DoctorReport(checks, identity, None)
    path_check, path = _path_check(leaf, chain, anchor, bool(intermediates), now)
    checks.append(path_check)
    reaches_anchor = any(path[-1] is c for c in anchor.certificates)
    if anchor.enabled is False:
        checks.append(Check("trust anchor enabled", FAIL, f"{anchor.label} is disabled",
                            "enable it: 'rapki aws register' (or aws rolesanywhere enable-trust-anchor)"))
    elif anchor.enabled is True:
        checks.append(Check("trust anchor enabled", PASS))
    if anchor.crl_dp:
        checks.append(Check("not revoked in the published CRL", SKIP, "the anchor checks revocation at the "
                            "certificates' distribution points (crlDpRevocationEnabled): imported CRLs do not decide"))
    else:
        checks.append(_revocation_check(path, anchor, now, reaches_anchor))
    if (dp_check := _distribution_point_check(path, anchor, fetch_crl)) is not None:
        checks.append(dp_check)
    return DoctorReport(checks, identity, anchor.label)


def _distribution_point_check(path: tuple[x509.Certificate, ...], anchor: AnchorView,
                              fetch_crl: Callable[[str], trustpath.ParsedCrl] | None) -> Check | None:
    """Each CRL Distribution Point of the path reachable, its CRL current and its issuer's, the
    certificate not on it. A failure fails the check when the anchor relies on distribution points
    (crlDpRevocationEnabled: the emulator refuses then, see docs/emulator.md), else warns."""
    name = "CRL distribution point"
    points = [(child, parent, url) for child, parent in pairwise(path) for url in trustpath.distribution_points(child)]
    if not points:
        if anchor.crl_dp:
            return Check(name, WARN, f"the anchor checks distribution points, but {_subject(path[0])} has none: its "
                         "revocation is not checked", "set [crl].distribution_url in rapki.toml and issue it again")
        return None
    if fetch_crl is None:
        return Check(name, SKIP, f"{points[0][2]} not fetched")
    bad = FAIL if anchor.crl_dp else WARN
    verdict = trustpath.check_distribution_points(path, fetch_crl)
    if verdict is not None and verdict.problem == trustpath.REVOKED:
        return Check(name, FAIL, f"{verdict.detail}: the service answers 'Certificate revoked'",
                     "a revocation is final: issue a new certificate ('rapki issue')")
    if verdict is not None:
        return Check(name, bad, verdict.detail, "publish the CRL where the distribution point leads: 'rapki crl "
                     "publish --s3 ...' or 'rapki serve --crl-http-port', and check the URL is reachable")
    fetched = [fetch_crl(url) for _, _, url in points]  # cached by the fetcher: no second download
    detail = "; ".join(f"{url}: not listed, nextUpdate {parsed.crl.next_update_utc:%Y-%m-%dT%H:%M:%SZ}"
                       for (_, _, url), parsed in zip(points, fetched, strict=True))
    return Check(name, PASS, detail)


def _key_check(leaf: x509.Certificate, private_key: bytes | None, password: bytes | None) -> Check:
    name = "private key matches the certificate"
    if private_key is None:
        return Check(name, SKIP, "no --private-key given")
    from pki.x509.keys import load_private_key, public_key_matches

    try:
        key = load_private_key(private_key, password, what="private key")
    except RapkiError as exc:
        return Check(name, FAIL, str(exc),
                     "pass the key.pem written with this certificate (PEM or DER, PKCS#8/SEC1/PKCS#1)")
    if not public_key_matches(key, leaf.public_key()):
        return Check(name, FAIL, "the key belongs to another certificate: the service answers 'Invalid signature'",
                     "use the key.pem from the same 'rapki issue' run; after a renewal, both files change")
    return Check(name, PASS)


def _leaf_checks(leaf: x509.Certificate) -> list[Check]:
    out: list[Check] = []
    # End-entity profile: basicConstraints, keyUsage, extendedKeyUsage (the preflight's own rules).
    problems = extension_problems(leaf.extensions)
    out.append(Check("key usage (end-entity, digitalSignature)", FAIL if problems else PASS, "; ".join(problems),
                     "issue the certificate from rapki ('rapki issue'), which sets these" if problems else ""))
    # Algorithms.
    problems = []
    if (problem := signature_problem(leaf.signature_hash_algorithm, leaf.signature_algorithm_oid)) is not None:
        problems.append(problem)
    if (problem := public_key_problem(leaf.public_key())) is not None:
        problems.append(problem)
    out.append(Check("algorithms", FAIL if problems else PASS, "; ".join(problems) or _alg(leaf),
                     "issue a new certificate with an EC P-256/P-384, RSA >= 2048 or ML-DSA key "
                     "('rapki issue --key-type')"
                     if problems else ""))
    # Serial.
    serial = leaf.serial_number
    if serial <= 0 or (serial.bit_length() + 8) // 8 > 20:
        out.append(Check("serial number", FAIL, "not a positive integer of at most 20 octets",
                         "issue a new certificate from rapki"))
    # CN -> STS source identity.
    cn = common_name(leaf.subject)
    if cn is None:
        out.append(Check("CN as source identity", FAIL, "the subject has no CN",
                         "issue with --cn: the CN becomes the STS source identity"))
    elif (problem := source_identity_problem(cn)) is not None:
        out.append(Check("CN as source identity", FAIL, problem + " (the session fails in STS)",
                         "use a CN of letters, digits, spaces and _.:/=+-@ (at most 64): constrain the profile's "
                         "--cn-pattern"))
    else:
        out.append(Check("CN as source identity", PASS, f"sourceIdentity will be {source_identity(cn)!r}"))
    return out


def _alg(cert: x509.Certificate) -> str:
    key = cert.public_key()
    size = getattr(key, "key_size", "")
    curve = getattr(getattr(key, "curve", None), "name", "")
    hash_name = cert.signature_hash_algorithm.name if cert.signature_hash_algorithm else "no separate hash"
    family = f"{type(key).__name__.lstrip('_').replace('PublicKey', '')} {curve or size}".rstrip()  # ML-DSA: neither
    return f"{family}, {hash_name}"


def _validity_check(leaf: x509.Certificate, now: datetime, server_date: datetime | None) -> Check:
    name = "validity and clock"
    notes = []
    if server_date is not None:
        skew = now - server_date
        if abs(skew) > MAX_SKEW:
            return Check(name, FAIL, f"this clock is {skew.total_seconds():+.0f} s off the service's: signed requests "
                         "more than 5 minutes off are refused", "synchronise the clock (NTP / chrony)")
        notes.append(f"clock within {abs(skew.total_seconds()):.0f} s of the service's")
    if now < leaf.not_valid_before_utc:
        return Check(name, FAIL, f"not valid before {leaf.not_valid_before_utc:%Y-%m-%dT%H:%M:%SZ} (now "
                     f"{now:%Y-%m-%dT%H:%M:%SZ})", "check this machine's clock, or wait until the certificate is valid")
    if now > leaf.not_valid_after_utc:
        return Check(name, FAIL, f"expired at {leaf.not_valid_after_utc:%Y-%m-%dT%H:%M:%SZ}",
                     "renew it ('rapki renew' or 'rapki issue')")
    left = leaf.not_valid_after_utc - now
    notes.insert(0, f"valid for another {left.days}d {left.seconds // 3600}h")
    return Check(name, PASS, "; ".join(notes))


def _chain_shape_check(chain: Sequence[x509.Certificate], now: datetime) -> Check:
    name = "intermediates"
    if not chain:
        return Check(name, PASS, "none given")
    problems = []
    if len(chain) > MAX_CHAIN_CERTIFICATES:
        problems.append(f"{len(chain)} certificates: X-Amz-X509-Chain carries at most {MAX_CHAIN_CERTIFICATES}")
    for cert in chain:
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            problems.append(f"{_subject(cert)} is not a CA certificate (the leaf itself in the chain file?)")
            continue
        try:
            if not cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign:
                problems.append(f"{_subject(cert)} lacks keyCertSign")
        except x509.ExtensionNotFound:
            pass
        if signature_problem(cert.signature_hash_algorithm, cert.signature_algorithm_oid) is not None:
            problems.append(f"{_subject(cert)} is signed with a weak hash")
        if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
            problems.append(f"{_subject(cert)} is not valid now (until {cert.not_valid_after_utc:%Y-%m-%d})")
    fix = "use the chain.pem from 'rapki issue' (or 'rapki ca chain'): the intermediates only"
    return Check(name, FAIL if problems else PASS, "; ".join(problems) or f"{len(chain)} CA certificate(s)",
                 fix if problems else "")


def _path_check(leaf: x509.Certificate, chain: list[x509.Certificate], anchor: AnchorView,
                had_intermediates: bool, now: datetime) -> tuple[Check, tuple[x509.Certificate, ...]]:
    """The model's path (every link's signature, every CA's rules), explained with a fix."""
    name = "chain builds to the trust anchor"
    verdict = trustpath.build_path(leaf, chain, anchor.certificates, now)
    path = verdict.path
    if verdict.ok:
        return Check(name, PASS, " -> ".join(_subject(c) for c in path) + " (anchor)"), path
    current = path[-1]
    if verdict.problem == trustpath.CA_RULE:
        detail = f"{verdict.detail}: this is 'Untrusted Signing Certificate'"
        fix = ("use CA certificates that are valid now, CA:TRUE with keyCertSign and a pathLen that allows the "
               "chain ('rapki ca chain'), and re-register the anchor if it changed ('rapki aws register')")
    elif verdict.problem == trustpath.FOREIGN_CA:
        detail = (f"{_subject(current)} names {current.issuer.rfc4514_string()} as issuer, and a certificate "
                  "with that name is there, but its key did not sign it: a different CA with the same name "
                  "(re-initialised CA, or an old bundle)")
        fix = "re-register the anchor with this CA's certificates ('rapki aws register'), or use matching files"
    elif current is leaf and not had_intermediates:
        held = "; ".join(_subject(c) for c in anchor.certificates) or "no certificates"
        detail = (f"the issuer {current.issuer.rfc4514_string()} is not in the trust anchor ({held}) and no "
                  "--intermediates were given: this is 'Untrusted Signing Certificate'")
        fix = ("send the chain: --intermediates chain.pem ('rapki ca chain'), or anchor on the issuing CA "
               "('rapki aws register --anchor issuing' or 'both')")
    else:
        held = "; ".join(_subject(c) for c in anchor.certificates) or "no certificates"
        detail = (f"nothing in the intermediates or the trust anchor ({held}) issued {_subject(current)} "
                  f"(issuer {current.issuer.rfc4514_string()}): this is 'Untrusted Signing Certificate'")
        fix = ("check the --trust-anchor-arn (is this the anchor of the CA that issued the certificate?), "
               "or update the anchor: 'rapki aws register'")
    return Check(name, FAIL, detail, fix), path


def _revocation_check(path: tuple[x509.Certificate, ...], anchor: AnchorView, now: datetime,
                      reaches_anchor: bool = True) -> Check:
    """The model's revocation rule (an enabled CRL signed by the CA above any link), plus warnings
    when the leaf's issuer has no enabled CRL or its CRL is past nextUpdate. Only a path that ends
    at the anchor's certificates says which CRLs matter: otherwise (e.g. another CA with the same
    name) a missing CRL is no advice worth giving."""
    name = "not revoked in the published CRL"
    if len(path) < 2:
        return Check(name, SKIP, "the issuer is unknown (see the chain check)")
    enabled = [(crl_name, trustpath.ParsedCrl.of(crl)) for crl_name, is_enabled, crl in anchor.crls if is_enabled]
    hit = trustpath.find_revocation(path, [parsed for _, parsed in enabled])
    if hit is not None:
        crl_name = next(n for n, parsed in enabled if parsed is hit.crl)
        entry = hit.crl.crl.get_revoked_certificate_by_serial_number(hit.certificate.serial_number)
        when = f" on {entry.revocation_date_utc:%Y-%m-%dT%H:%M:%SZ}" if entry is not None else ""
        which = "" if hit.certificate is path[0] else f"the CA certificate {_subject(hit.certificate)} is "
        return Check(name, FAIL, f"{which}revoked{when} in CRL {crl_name!r}: the service answers "
                     "'Certificate revoked'", "a revocation is final: issue a new certificate ('rapki issue')")
    if not reaches_anchor:
        return Check(name, SKIP, "the chain does not reach the trust anchor (see the chain check), so the "
                     "anchor's CRLs do not apply to it")
    issuer = path[1]
    relevant = [(n, is_enabled, crl) for n, is_enabled, crl in anchor.crls
                if trustpath.ParsedCrl.of(crl).signature_valid_for(issuer)]
    enabled_ones = [r for r in relevant if r[1]]
    if not enabled_ones:
        what = "only disabled CRLs" if relevant else "no CRL"
        return Check(name, WARN, f"the anchor holds {what} from {_subject(issuer)}: revocations are not enforced",
                     "publish it: 'rapki crl publish'")
    crl_name, _, crl = enabled_ones[0]
    detail = f"not listed in {crl_name!r}"
    if crl.next_update_utc is not None and crl.next_update_utc < now:
        return Check(name, WARN, detail + f", but that CRL's nextUpdate ({crl.next_update_utc:%Y-%m-%d}) has passed",
                     "publish from cron: 'rapki crl publish' (see scripts/publish-crl)")
    return Check(name, PASS, detail)


# --- where the anchor view comes from -------------------------------------------------------------
def anchor_from_aws(aws: Any, trust_anchor_arn: str) -> AnchorView:
    """GetTrustAnchor + ListCrls (read-only), and the service's clock from the response Date."""
    from pki.aws.client import AwsError
    from pki.aws.publish import anchor_certificates
    from pki.rolesanywhere.arns import RolesAnywhereArn

    anchor_id = RolesAnywhereArn.parse(trust_anchor_arn, "--trust-anchor-arn", expected_type="trust-anchor").identifier
    try:
        detail = aws.call("GetTrustAnchor", trustAnchorId=anchor_id)["trustAnchor"]
    except AwsError as exc:
        if exc.not_found:
            raise RapkiError(f"trust anchor {trust_anchor_arn} does not exist: check the ARN and region") from exc
        raise
    server_date = None
    if aws.log.server_date:
        try:
            server_date = parsedate_to_datetime(aws.log.server_date).astimezone(UTC)
        except (TypeError, ValueError):
            server_date = None
    crls = []
    for item in aws.paginate("ListCrls", "crls"):
        if item.get("trustAnchorArn") != detail.get("trustAnchorArn") or not item.get("crlData"):
            continue
        data = bytes(item["crlData"])
        try:
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
        except ValueError:
            continue
        crls.append((str(item.get("name")), bool(item.get("enabled")), crl))
    return AnchorView(trust_anchor_arn, anchor_certificates(detail), bool(detail.get("enabled")), crls, server_date,
                      bool(detail.get("crlDpRevocationEnabled")))


def anchor_from_local_ca(ca: Any) -> AnchorView:
    """Offline: the local root and issuing CAs stand in for the anchor, the local CRLs for the published ones."""
    certs = [ca.root_certificate, *(i.certificate for i in ca.issuers())]
    crls = []
    for issuer in ca.issuers():
        state = ca.crl_state(issuer.name)
        if state["der"]:
            crls.append((f"local CRL of {issuer.name}", True, x509.load_der_x509_crl(state["der"])))
    return AnchorView("local CA (offline: not what AWS holds)", certs, None, crls)


def local_revocation_check(ca: Any, leaf: x509.Certificate) -> Check | None:
    """With a rapki home: revoked in the CA but not yet in what the anchor holds is worth a warning."""
    from pki.errors import NotFound

    try:
        record = ca.find(leaf.serial_number)
    except (NotFound, RapkiError):
        return None
    if record.revoked_at is None:
        return Check("revocation in the local CA", PASS, f"{record.serial} is {record.status()} in the CA")
    if record.not_after <= datetime.now(UTC):
        # RFC 5280 lets an expired certificate leave the CRL, and rapki's CRLs drop it: there is
        # nothing to publish, and the service refuses the certificate as expired anyway.
        return Check("revocation in the local CA", PASS,
                     f"revoked in the CA at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ} and expired at "
                     f"{record.not_after:%Y-%m-%dT%H:%M:%SZ}: expired certificates leave the CRL, and Roles "
                     "Anywhere refuses it as expired")
    return Check("revocation in the local CA", WARN,
                 f"revoked in the CA at {record.revoked_at:%Y-%m-%dT%H:%M:%SZ}",
                 "if the CRL check above passed, the revocation is not published yet: 'rapki crl publish'")
