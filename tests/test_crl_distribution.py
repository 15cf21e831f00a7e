"""CRL Distribution Points: the extension in certificates, the IDP in CRLs, the config that turns them on."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509

from pki.ca.authority import CertificateAuthority
from pki.ca.home import Config, Home
from pki.errors import InvalidInput
from tests.conftest import make_ca
from tests.validators import lint_cert, lint_crl, openssl_verify

URL = "http://crl.example.com/crl/{issuer}.crl"


def with_distribution_url(home: Path, url: str = URL) -> CertificateAuthority:
    """The CA in ``home`` reopened with ``[crl].distribution_url`` set."""
    place = Home(home)
    place.save_config(replace(place.load_config(), crl_distribution_url=url))
    return CertificateAuthority.open(home)


def test_off_by_default(ca: CertificateAuthority) -> None:
    cert = ca.issue("web", cn="web-1").certificate
    with pytest.raises(x509.ExtensionNotFound):
        cert.extensions.get_extension_for_class(x509.CRLDistributionPoints)
    with pytest.raises(x509.ExtensionNotFound):
        ca.build_crl().crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)


def test_certificates_and_crls_with_a_distribution_point_pass_pkilint_and_openssl(
        tmp_path: Path, passphrase_env: str) -> None:
    before = make_ca(tmp_path / "home")
    old = before.issue("web", cn="web-9").write_to(tmp_path / "old")  # issued before the CDP was configured
    ca = with_distribution_url(tmp_path / "home")
    good = ca.issue("web", cn="web-1").write_to(tmp_path / "good")
    bad_issued = ca.issue("web", cn="web-2")
    bad = bad_issued.write_to(tmp_path / "bad")
    ca.revoke(bad_issued.serial_hex, reason="keyCompromise")
    cdp = x509.load_pem_x509_certificate(good["certificate"].read_bytes()).extensions.get_extension_for_class(
        x509.CRLDistributionPoints)
    assert not cdp.critical
    assert [n.value for n in cdp.value[0].full_name or []] == ["http://crl.example.com/crl/issuing-1.crl"]
    built = ca.build_crl()
    idp = built.crl.extensions.get_extension_for_class(x509.IssuingDistributionPoint)
    assert idp.critical and idp.value.only_contains_user_certs and idp.value.full_name is None
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(built.pem)
    assert lint_crl(crl_path) == ""
    assert lint_cert(good["certificate"]) == ""
    trust = tmp_path / "trust.pem"
    trust.write_bytes(ca.home.root_cert_path.read_bytes() + good["chain"].read_bytes())
    for path in (good["certificate"], old["certificate"]):  # the CRL covers certificates without the CDP too
        ok = openssl_verify(path, root=trust, crl=crl_path)
        assert ok.returncode == 0, ok.stdout + ok.stderr
    refused = openssl_verify(bad["certificate"], root=trust, crl=crl_path)
    assert refused.returncode != 0 and "certificate revoked" in refused.stdout + refused.stderr


@pytest.mark.parametrize("url", ["https://crl.example.com/{issuer}.crl", "http://crl.example.com/root.crl",
                                 "http://crl.example.com/a b/{issuer}.crl", "ldap://x/{issuer}",
                                 "http:///{issuer}.crl", "http://crl.example.com/{issuer}.crl#x",
                                 "http://crl.example.com/{foo}/{issuer}.crl"])
def test_bad_distribution_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput, match="distribution_url"):
        Config(crl_distribution_url=url)


def test_the_url_round_trips_through_rapki_toml() -> None:
    config = Config(crl_distribution_url=URL)
    assert Config.from_toml(config.to_toml()).crl_distribution_url == URL
    assert config.distribution_url("issuing-2") == "http://crl.example.com/crl/issuing-2.crl"
    assert Config().distribution_url("issuing-1") is None
