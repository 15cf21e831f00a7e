"""CreateSession against a trust anchor with ``crlDpRevocationEnabled``: the emulator fetches the CRL
at each certificate's distribution point (bounded, cached), and refuses what it lists or what it
cannot judge (``--crl-dp-unreachable deny``, the default)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pki.aws.doctor import anchor_from_local_ca, diagnose
from pki.ca.authority import CertificateAuthority
from pki.ca.home import Home
from pki.ca.values import IssuedCertificate
from pki.rolesanywhere.arns import RolesAnywhereArn
from pki.rolesanywhere.crlfetch import CrlFetcher
from service.emulator.sessions import DistributionPoints
from tests.conftest import make_ca
from tests.emulator_fixture import InProcessEmulator

ROLE = "arn:aws:iam::123456789012:role/ci-deployer"


class CrlSite:
    """A plain-HTTP server answering each path with what ``pages`` says: (status, headers, body)."""

    def __init__(self) -> None:
        self.pages: dict[str, tuple[int, dict[str, str], bytes]] = {}
        self.hits = 0
        site = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                site.hits += 1
                status, headers, body = site.pages.get(self.path, (404, {}, b"no"))
                self.send_response(status)
                for name, value in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def site() -> Iterator[CrlSite]:
    served = CrlSite()
    yield served
    served.server.shutdown()
    served.server.server_close()


def dp_ca(home: Path, base_url: str) -> CertificateAuthority:
    make_ca(home)
    place = Home(home)
    place.save_config(replace(place.load_config(), crl_distribution_url=base_url + "/crl/{issuer}.crl"))
    return CertificateAuthority.open(home)


def enable_dp(emu: InProcessEmulator, anchor_arn: str) -> None:
    """What UpdateTrustAnchor with crlDpRevocationEnabled stores, set in the emulator's state."""
    arn = RolesAnywhereArn.parse(anchor_arn, "anchor", expected_type="trust-anchor")
    state = emu.app.extensions["rapki_emulator"]["state"]
    with state.lock:
        state.data["accounts"][arn.account][arn.region]["trustAnchors"][arn.id]["crlDpRevocationEnabled"] = True


@pytest.fixture
def setup(tmp_path: Path, passphrase_env: str, site: CrlSite) -> dict[str, Any]:
    ca = dp_ca(tmp_path / "home", site.url)
    emu = InProcessEmulator.create(tmp_path / "emulator" / "state.json",
                                   crl_dp=DistributionPoints(CrlFetcher(max_bytes=4096, timeout=2)))
    anchor = emu.trust_anchor(ca.root_certificate)
    enable_dp(emu, anchor)
    return {"ca": ca, "emu": emu, "anchor": anchor, "profile": emu.profile(ROLE), "site": site}


def session(s: dict[str, Any], issued: IssuedCertificate, emu: InProcessEmulator | None = None) -> Any:
    return (emu or s["emu"]).create_session(certificate=issued.certificate, private_key=issued.private_key,
                                            chain=list(issued.chain), trust_anchor_arn=s["anchor"],
                                            profile_arn=s["profile"], role_arn=ROLE)


def serve_crl(s: dict[str, Any], body: bytes | None = None, status: int = 200, **headers: str) -> None:
    s["site"].pages["/crl/issuing-1.crl"] = (status, headers, s["ca"].current_crl().der if body is None else body)


def test_a_certificate_on_the_distribution_point_crl_is_refused(setup: dict[str, Any]) -> None:
    ca = setup["ca"]
    revoked, fresh = ca.issue("web", cn="web-1"), ca.issue("web", cn="web-2")
    ca.revoke(revoked.serial_hex)
    serve_crl(setup)
    answer = session(setup, revoked)
    assert (answer.status, answer.message) == (403, "Certificate revoked"), answer.detail
    assert "/crl/issuing-1.crl" in (answer.detail or "")
    assert session(setup, fresh).status == 201
    assert setup["site"].hits == 1  # kept until its nextUpdate: one download for both


def test_imported_crls_do_not_decide_in_distribution_point_mode(setup: dict[str, Any]) -> None:
    ca = setup["ca"]
    listed_only_by_import = ca.issue("web", cn="web-3")
    serve_crl(setup)  # lists nothing
    ca.revoke(listed_only_by_import.serial_hex)
    setup["emu"].import_crl(setup["anchor"], ca.build_crl().pem)
    assert session(setup, listed_only_by_import).status == 201


@pytest.mark.parametrize("case", ["unreachable", "http-500", "too-large", "not-a-crl", "stale", "other-issuer",
                                  "redirect-to-file"])
def test_no_usable_crl_refuses_by_default_and_allow_lets_through(setup: dict[str, Any], case: str,
                                                                  tmp_path: Path) -> None:
    ca: CertificateAuthority = setup["ca"]
    issued = ca.issue("web", cn="web-4")
    now = datetime.now(UTC)
    if case == "unreachable":
        setup["site"].server.shutdown()
        setup["site"].server.server_close()
    elif case == "http-500":
        serve_crl(setup, b"oops", status=500)
    elif case == "too-large":
        serve_crl(setup, b"\x30" * 5000)
    elif case == "not-a-crl":
        serve_crl(setup, b"hello")
    elif case == "stale":  # the emulator's clock past the CRL's nextUpdate, the certificate still valid
        serve_crl(setup, ca.build_crl(validity=timedelta(seconds=1)).der)
        now += timedelta(seconds=3)
    elif case == "other-issuer":
        serve_crl(setup, make_ca(tmp_path / "other").build_crl().der)
    elif case == "redirect-to-file":
        serve_crl(setup, b"", status=302, Location="file:///etc/passwd")
    state = tmp_path / "emulator" / "state.json"
    strict = InProcessEmulator.create(state, clock=lambda: now, crl_dp=DistributionPoints(CrlFetcher(max_bytes=4096)))
    refused = session(setup, issued, strict)
    assert (refused.status, refused.message) == (403, "Untrusted Signing Certificate"), refused.detail
    assert "no usable CRL" in (refused.detail or "")
    lenient = InProcessEmulator.create(state, clock=lambda: now,
                                       crl_dp=DistributionPoints(CrlFetcher(max_bytes=4096), "allow"))
    assert session(setup, issued, lenient).status == 201


def test_doctor_checks_the_distribution_point(setup: dict[str, Any]) -> None:
    ca: CertificateAuthority = setup["ca"]
    revoked, fresh = ca.issue("web", cn="web-5"), ca.issue("web", cn="web-6")
    ca.revoke(revoked.serial_hex)
    fetcher, now = CrlFetcher(), datetime.now(UTC)

    def dp_check(issued: IssuedCertificate, anchor_in_dp_mode: bool) -> Any:
        view = anchor_from_local_ca(ca)
        view.crl_dp = anchor_in_dp_mode
        report = diagnose(issued.cert_pem.data, intermediates=issued.chain_pem.data, anchor=view,
                          fetch_crl=lambda url: fetcher.get(url, now))
        return {c.name: c for c in report.checks}

    down = dp_check(fresh, True)["CRL distribution point"]
    assert down.status == "fail" and "HTTP 404" in down.detail and "crl publish" in down.fix
    assert dp_check(fresh, False)["CRL distribution point"].status == "warn"  # the anchor does not rely on it
    serve_crl(setup)
    checks = dp_check(fresh, True)
    assert checks["CRL distribution point"].status == "pass" and "nextUpdate" in checks["CRL distribution point"].detail
    assert checks["not revoked in the published CRL"].status == "skip"
    assert dp_check(revoked, True)["CRL distribution point"].status == "fail"
