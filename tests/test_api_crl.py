"""``GET /v1/crl`` serves the CA's current CRL by the library's rule (``current_crl``): the same
CRL while it is current, a new one when the revoked set changed or nextUpdate is near."""

from __future__ import annotations

from datetime import timedelta

from cryptography import x509

from pki.ca.authority import CertificateAuthority
from service.api import create_app


def _number(crl: x509.CertificateRevocationList) -> int:
    return int(crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number)


def test_crl_endpoint_follows_current_crl(ca: CertificateAuthority) -> None:
    client = create_app(ca=ca).test_client()

    def fetch() -> x509.CertificateRevocationList:
        answer = client.get("/v1/crl")
        assert answer.status_code == 200 and answer.content_type == "application/pkix-crl"
        return x509.load_der_x509_crl(answer.data)

    first = fetch()  # none built yet: built now
    assert _number(first) == 1 and len(first) == 0
    assert _number(fetch()) == 1  # current: served again, no CRLNumber burnt

    issued = ca.issue("web", cn="web-1")
    ca.revoke(issued.serial_hex, reason="keyCompromise")
    after_revoke = fetch()
    assert _number(after_revoke) == 2
    assert after_revoke.get_revoked_certificate_by_serial_number(issued.certificate.serial_number) is not None

    # A CRL built elsewhere (``rapki crl build``) is what the API serves while it is current...
    assert _number(fetch()) == 2
    assert ca.build_crl().number == 3
    assert _number(fetch()) == 3
    # ...and one whose nextUpdate is within [crl].republish_before (2 days) is replaced at once,
    # though it was built a moment ago.
    assert ca.build_crl(validity=timedelta(days=1)).number == 4
    assert ca.current_crl(build=False) is None
    assert _number(fetch()) == 5
    assert ca.crl_state()["crl_number"] == 5


def test_crl_endpoint_pem_and_other_issuer(ca: CertificateAuthority) -> None:
    client = create_app(ca=ca).test_client()
    pem = client.get("/v1/crl?issuer=issuing-1", headers={"Accept": "application/x-pem-file"})
    assert pem.status_code == 200 and pem.content_type.startswith("application/x-pem-file")
    assert x509.load_pem_x509_crl(pem.data).issuer == ca.issuer("issuing-1").certificate.subject
    unknown = client.get("/v1/crl?issuer=nope")
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "not_found"


def test_distribution_point_path_serves_der_with_cache_headers(ca: CertificateAuthority) -> None:
    client = create_app(ca=ca).test_client()
    first = client.get("/crl/issuing-1.crl")
    assert first.status_code == 200 and first.content_type == "application/pkix-crl"
    crl = x509.load_der_x509_crl(first.data)
    assert crl.issuer == ca.issuer("issuing-1").certificate.subject
    etag = first.headers["ETag"]
    assert etag.startswith(f'"{_number(crl)}-')
    max_age = int(first.headers["Cache-Control"].split("max-age=")[1])
    assert 0 < max_age <= 300 and "public" in first.headers["Cache-Control"]
    assert first.headers["Last-Modified"].endswith("GMT")
    assert client.head("/crl/issuing-1.crl").headers["Content-Length"] == str(len(first.data))
    unchanged = client.get("/crl/issuing-1.crl", headers={"If-None-Match": etag})
    assert unchanged.status_code == 304 and unchanged.data == b"" and unchanged.headers["ETag"] == etag
    issued = ca.issue("web", cn="web-1")
    ca.revoke(issued.serial_hex)
    changed = client.get("/crl/issuing-1.crl", headers={"If-None-Match": etag})  # the revocation is in it
    assert changed.status_code == 200 and changed.headers["ETag"] != etag
    assert x509.load_der_x509_crl(changed.data).get_revoked_certificate_by_serial_number(
        issued.certificate.serial_number) is not None


def test_distribution_point_path_refuses_in_json(ca: CertificateAuthority) -> None:
    client = create_app(ca=ca).test_client()
    unknown = client.get("/crl/issuing-9.crl")
    assert unknown.status_code == 404 and unknown.get_json()["error"] == "not_found"
    assert "issuing-1" in unknown.get_json()["message"]
    assert client.get("/crl/../rapki.db").status_code == 404
    post = client.post("/crl/issuing-1.crl")
    assert post.status_code == 405 and post.get_json()["error"] == "method_not_allowed"


def test_the_flask_view_answers_the_same_without_the_middleware(ca: CertificateAuthority) -> None:
    app = create_app(ca=ca)
    direct = app.test_client().get("/crl/issuing-1.crl")
    app.wsgi_app = app.wsgi_app.fallback.fallback  # type: ignore[attr-defined, method-assign]  # Flask alone
    client = app.test_client()
    view = client.get("/crl/issuing-1.crl")
    assert view.status_code == 200 and view.content_type == "application/pkix-crl"
    assert view.data == direct.data and view.headers["ETag"] == direct.headers["ETag"]
    assert view.headers["Cache-Control"] == direct.headers["Cache-Control"]
    assert client.get("/crl/issuing-1.crl", headers={"If-None-Match": view.headers["ETag"]}).status_code == 304
    assert client.get("/crl/nope.crl").status_code == 404
    head = client.head("/crl/issuing-1.crl")
    assert head.data == b"" and head.headers["Content-Length"] == str(len(view.data))
