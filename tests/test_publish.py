"""CRL publishing (``pki.aws.publish``, ``rapki crl publish/status``, ``rapki revoke --publish``).

Every test drives the real ``rapki emulator`` over HTTPS with real boto3 (the ``emulator`` fixture);
each test works in its own 12-digit account (the emulator keys state by access key id), so tests
never see each other's trust anchors. Call counts come from the emulator's own counters.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from sqlalchemy import func, insert, select, update

from pki.aws.client import AwsError, AwsOptions, RolesAnywhere
from pki.aws.publish import CrlPublisher, PublishError, crl_status, publish
from pki.ca.authority import CertificateAuthority
from pki.errors import CrlTooLarge
from pki.store.schema import audit_log, certificates, crl_publications, crl_state
from pki.x509.crl import build_crl
from tests.commands import rapki_cmd
from tests.emulator_fixture import RunningEmulator, pem_of

PASSPHRASE = "test-passphrase-not-secret"



@dataclass
class Aws:
    """One isolated emulator account, with the environment the CLI and library read."""

    emulator: RunningEmulator
    account: str
    client: Any  # boto3 rolesanywhere client of this account
    env: dict[str, str]

    def anchor(self, *certs: x509.Certificate, name: str = "anchor", enabled: bool = True) -> str:
        source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(*certs)}}
        arn = self.client.create_trust_anchor(name=name, source=source, enabled=enabled)["trustAnchor"]
        self.emulator.reset_stats()  # count only what the code under test does
        return str(arn["trustAnchorArn"])

    def crls(self, anchor: str) -> list[dict[str, Any]]:
        return [c for c in self.client.list_crls()["crls"] if c["trustAnchorArn"] == anchor]

    def writes(self) -> int:
        return int(self.emulator.stats()["writesTotal"])

    def rapki(self, *args: str, home: Path | None = None, check: bool = True,
              extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **(extra_env or {})}
        if home is not None:
            env["RAPKI_HOME"] = str(home)
        result = subprocess.run([*rapki_cmd(), *args], env=env, capture_output=True, text=True, check=False,
                                timeout=120)
        if check:
            assert result.returncode == 0, result.stderr
        return result


@pytest.fixture
def aws(emulator: RunningEmulator, monkeypatch: pytest.MonkeyPatch) -> Aws:
    """A fresh emulator account; AWS_* variables point the library and the CLI at the emulator."""
    account = f"{secrets.randbelow(10**11) + 10**11:012d}"
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    values = {
        "AWS_ACCESS_KEY_ID": account, "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": emulator.region,
        "AWS_ENDPOINT_URL_ROLESANYWHERE": emulator.endpoint_url, "AWS_CA_BUNDLE": emulator.ca_bundle,
        "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "RAPKI_AWS_RETRY_BASE": "0.05", "RAPKI_PASSPHRASE": PASSPHRASE,
    }  # fmt: skip
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RAPKI_DATABASE_URL", raising=False)
    emulator.clear_faults()
    emulator.reset_stats()
    import boto3

    client = boto3.session.Session().client(
        "rolesanywhere", endpoint_url=emulator.endpoint_url, verify=emulator.ca_bundle, region_name=emulator.region,
        aws_access_key_id=account, aws_secret_access_key="test",
    )  # fmt: skip
    return Aws(emulator, account, client, dict(os.environ))


def publisher(ca: CertificateAuthority, **kw: Any) -> CrlPublisher:
    return CrlPublisher(ca, RolesAnywhere.connect(AwsOptions(), configured_region=None), **kw)


def publications(ca: CertificateAuthority) -> list[Any]:
    with ca.db.engine.connect() as conn:
        return conn.execute(select(crl_publications).order_by(crl_publications.c.id)).all()


def add_revoked(ca: CertificateAuthority, count: int, *, serial_bytes: int = 20) -> None:
    """``count`` revoked, unexpired certificate rows under the active issuer, inserted directly (fast)."""
    issuer = ca.issuer()
    now = datetime.now(UTC)
    rows = []
    for i in range(count):
        serial = int.from_bytes(secrets.token_bytes(serial_bytes), "big") >> 1 or 1
        fake = secrets.token_bytes(32)
        rows.append({
            "issuer_id": issuer.id, "serial": format(serial, "x"), "subject": f"CN=bulk-{i}",
            "common_name": f"bulk-{i}", "sans": [], "profile": "web", "key_type": "ec-p256",
            "not_before": now - timedelta(hours=1), "not_after": now + timedelta(days=30),
            "revoked_at": now, "revocation_reason": "unspecified", "fingerprint": hashlib.sha256(fake).hexdigest(),
            "der": fake, "created_at": now,
        })  # fmt: skip
    with ca.db.engine.begin() as conn:
        conn.execute(insert(certificates), rows)


# --- the first publish, idempotence -------------------------------------------------------------------
def test_first_publish_imports_enables_reads_back_and_records(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    report = publisher(ca).publish(anchor)
    assert report.ok
    [pub] = report.publications
    assert (pub.action, pub.writes, pub.crl_number, pub.crl_name) == ("imported", ["ImportCrl"], 1, "rapki-issuing-1")
    [remote] = aws.crls(anchor)
    assert remote["enabled"] is True and remote["crlId"] == pub.crl_id and remote["name"] == "rapki-issuing-1"
    assert remote["crlData"] == ca.current_crl().pem  # type: ignore[union-attr]
    [row] = publications(ca)
    assert (row.crl_id, row.crl_number, row.size, row.trust_anchor_arn) == (pub.crl_id, 1, pub.size, anchor)
    assert ca.audit_entries(1)[0]["action"] == "crl.publish"
    # The audit chain's head, crl.publish entry included, is recorded with the publication and reported.
    head = ca.audit_head()
    assert head is not None and (row.audit_seq, row.audit_hash) == (head.seq, head.hash)
    assert pub.audit_head == str(head)
    assert aws.emulator.stats()["writes"] == {"ImportCrl": 1}


def test_second_publish_with_nothing_new_makes_zero_writes(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, home=ca.home.path)
    aws.emulator.reset_stats()
    result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, "--json", home=ca.home.path)
    report = json.loads(result.stdout)
    stats = aws.emulator.stats()
    assert stats["writesTotal"] == 0 and report["writes"] == 0
    assert set(stats["calls"]) <= {"GetTrustAnchor", "GetCrl"}  # reads only
    assert report["publications"][0]["action"] == "unchanged"
    assert len(publications(ca)) == 1  # nothing new recorded either
    quiet = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, "--quiet", home=ca.home.path)
    assert quiet.stdout == "" and quiet.stderr == ""


def test_revocation_gives_a_higher_crl_number_and_one_update(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    publisher(ca).publish(anchor)
    issued = ca.issue("web", cn="web-1")
    ca.revoke(issued.serial_hex)
    aws.emulator.reset_stats()
    report = publisher(ca).publish(anchor)
    [pub] = report.publications
    assert (pub.action, pub.crl_number, pub.entries, pub.built) == ("updated", 2, 1, True)
    assert aws.emulator.stats()["writes"] == {"UpdateCrl": 1}
    [remote] = aws.crls(anchor)
    listed = x509.load_pem_x509_crl(remote["crlData"])
    assert listed.get_revoked_certificate_by_serial_number(issued.certificate.serial_number) is not None
    assert [r.crl_number for r in publications(ca)] == [1, 2]


def test_dry_run_changes_nothing(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    before = ca.crl_state()
    report = publisher(ca).publish(anchor, dry_run=True)
    assert report.publications[0].action == "would-import" and report.writes == 0
    assert aws.crls(anchor) == [] and publications(ca) == []
    assert ca.crl_state()["crl_number"] == before["crl_number"]  # no CRLNumber spent


# --- out-of-band changes -------------------------------------------------------------------------------
def test_recovers_from_deleted_changed_and_disabled_crls(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    first = publisher(ca).publish(anchor).publications[0]
    # Deleted by hand: re-imported.
    aws.client.delete_crl(crlId=first.crl_id)
    again = publisher(ca).publish(anchor).publications[0]
    assert again.action == "imported" and again.crl_id != first.crl_id
    assert any("deleted out of band" in n for n in again.notes)
    # Disabled by hand: one EnableCrl.
    aws.client.disable_crl(crlId=again.crl_id)
    aws.emulator.reset_stats()
    enabled = publisher(ca).publish(anchor).publications[0]
    assert enabled.action == "enabled" and aws.emulator.stats()["writes"] == {"EnableCrl": 1}
    # Replaced with someone else's CRL: put back.
    other = build_crl([], issuer_cert=ca.root_certificate, issuer_key=ca.issuer_key(ca.issuer()), number=1,
                      this_update=datetime.now(UTC), next_update=datetime.now(UTC) + timedelta(days=1))
    aws.client.update_crl(crlId=again.crl_id, crlData=other.pem)
    restored = publisher(ca).publish(anchor).publications[0]
    assert restored.action == "updated"
    assert aws.crls(anchor)[0]["crlData"] == ca.current_crl().pem  # type: ignore[union-attr]
    assert len(aws.crls(anchor)) == 1


def test_adopts_a_crl_imported_by_hand_instead_of_using_the_second_slot(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    by_hand = ca.build_crl()
    aws.client.import_crl(name="manual", crlData=by_hand.pem, trustAnchorArn=anchor, enabled=True)
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    pub = publisher(ca).publish(anchor).publications[0]
    assert pub.action == "updated" and any("adopting" in n for n in pub.notes)
    assert len(aws.crls(anchor)) == 1


def test_deleted_or_foreign_trust_anchor_says_what_to_do(ca: CertificateAuthority, aws: Aws) -> None:
    foreign = CertificateAuthority.init(ca.home.path.parent / "other", passphrase=PASSPHRASE.encode())
    anchor = aws.anchor(foreign.root_certificate)
    with pytest.raises(PublishError, match="trusts neither"):
        publisher(ca).publish(anchor)
    aws.client.delete_trust_anchor(trustAnchorId=anchor.rsplit("/", 1)[1])
    aws.emulator.reset_stats()
    result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, home=ca.home.path, check=False)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "rapki aws register" in result.stderr
    assert aws.writes() == 0


def test_never_replaces_a_newer_crl_of_the_same_ca(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    pub = publisher(ca).publish(anchor).publications[0]
    issuer = ca.issuer()
    newer = build_crl([], issuer_cert=issuer.certificate, issuer_key=ca.issuer_key(issuer), number=50,
                      this_update=datetime.now(UTC), next_update=datetime.now(UTC) + timedelta(days=7))
    aws.client.update_crl(crlId=pub.crl_id, crlData=newer.pem)  # e.g. another home with the same CA
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    aws.emulator.reset_stats()
    with pytest.raises(PublishError, match="refusing to replace it with an older list"):
        publisher(ca).publish(anchor)
    assert aws.writes() == 0
    assert aws.crls(anchor)[0]["crlData"] == newer.pem
    assert [r.crl_number for r in publications(ca)] == [1]


# --- size ------------------------------------------------------------------------------------------------
def test_oversize_crl_is_refused_before_anything_is_sent(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    add_revoked(ca, 6000)  # 20-byte serials: ~5,600 fit
    aws.emulator.reset_stats()
    with pytest.raises(CrlTooLarge, match="6,000 entries"):
        publisher(ca).publish(anchor)
    assert aws.emulator.stats()["calls"] == {}  # not even a read
    result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, home=ca.home.path, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1
    assert "300,000" in result.stderr and "Remedies" in result.stderr
    assert aws.crls(anchor) == [] and publications(ca) == []


# --- retries and failures --------------------------------------------------------------------------------
def test_throttling_and_500s_are_retried_without_duplicating_the_import(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    aws.emulator.set_faults(throttleNext=2, failNext=2, operations=["ImportCrl", "GetCrl"])
    report = publisher(ca).publish(anchor)
    assert report.ok and report.retries == 4
    assert len(aws.crls(anchor)) == 1
    assert aws.emulator.stats()["injected"] == {"ThrottlingException": 2, "InternalServerException": 2}
    assert len(publications(ca)) == 1


def test_publishes_under_the_one_request_per_second_quota(ca: CertificateAuthority, aws: Aws) -> None:
    """The emulator enforces AWS's default control-plane rate (1 request/s): throttled calls are retried."""
    anchor = aws.anchor(ca.root_certificate)
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    aws.emulator.set_faults(throttle=1.0)
    try:
        report = publisher(ca).publish(anchor)
    finally:
        aws.emulator.clear_faults()
    assert report.ok and report.publications[0].action == "imported"
    assert report.retries >= 1 and aws.emulator.stats()["injected"].get("ThrottlingException", 0) == report.retries
    assert len(aws.crls(anchor)) == 1


def test_permanent_failure_exits_1_and_leaves_the_records(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    publisher(ca).publish(anchor)
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    before = publications(ca)
    aws.emulator.set_faults(failNext=100, operations=["UpdateCrl"])
    result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, home=ca.home.path, check=False,
                       extra_env={"RAPKI_AWS_MAX_ATTEMPTS": "3"})
    assert result.returncode == 1
    *retries, error = result.stderr.splitlines()  # a line per retry, then the failure in one line
    assert [line.split(" (attempt ")[1] for line in retries] == ["2 of 3)", "3 of 3)"]
    assert all("UpdateCrl: HTTP 500 (InternalServerException), retrying in" in line for line in retries)
    assert error.startswith("rapki: error: UpdateCrl: InternalServerException")
    assert aws.emulator.stats()["calls"]["UpdateCrl"] == 3
    assert publications(ca) == before
    aws.emulator.clear_faults()
    assert publisher(ca).publish(anchor).publications[0].action == "updated"


def test_a_permanent_client_error_is_not_retried(ca: CertificateAuthority, aws: Aws) -> None:
    aws_client = RolesAnywhere.connect(AwsOptions())
    with pytest.raises(AwsError) as info:
        aws_client.call("GetCrl", crlId="00000000-0000-0000-0000-000000000000")
    assert info.value.not_found and aws_client.log.retries == 0


# --- concurrency -------------------------------------------------------------------------------------------
def _race(aws: Aws, ca: CertificateAuthority, anchor: str, env: dict[str, str] | None = None) -> None:
    """Two CLI publishers started together, with 0.15 s added to every call to widen the window."""
    aws.emulator.set_faults(latency=0.15)
    cmd = [*rapki_cmd(), "crl", "publish", "--trust-anchor-arn", anchor, "--json"]
    full_env = {**aws.env, "RAPKI_HOME": str(ca.home.path), **(env or {})}
    procs = [subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    aws.emulator.clear_faults()
    assert [p.returncode for p in procs] == [0, 0], outs
    actions = sorted(json.loads(out)["publications"][0]["action"] for out, _ in outs)
    assert actions == ["imported", "unchanged"]  # the second waited, then found the first's CRL
    assert aws.emulator.stats()["writes"] == {"ImportCrl": 1}
    assert len(aws.crls(anchor)) == 1


def test_two_publishers_started_together_never_interleave_sqlite(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    _race(aws, ca, anchor)


@pytest.mark.postgres
def test_two_publishers_never_interleave_postgresql(pg_database_url: str, tmp_path: Path, aws: Aws,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAPKI_DATABASE_URL", pg_database_url)
    ca = CertificateAuthority.init(tmp_path / "pg-home", passphrase=PASSPHRASE.encode())
    assert ca.db.engine.dialect.name == "postgresql"
    anchor = aws.anchor(ca.root_certificate)
    _race(aws, ca, anchor, {"RAPKI_DATABASE_URL": pg_database_url})
    # The advisory lock is really taken: held elsewhere, a publisher gives up after --lock-timeout.
    from pki.aws.publish import publish_lock

    with publish_lock(ca, timeout=5):
        result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, "--lock-timeout", "0.5",
                           home=ca.home.path, check=False, extra_env={"RAPKI_DATABASE_URL": pg_database_url})
    assert result.returncode == 1 and "publish lock" in result.stderr
    ca.db.dispose()


# --- rotation ------------------------------------------------------------------------------------------------
def test_each_unexpired_issuer_gets_its_crl(ca: CertificateAuthority, aws: Aws) -> None:
    old = ca.issue("web", cn="web-1")
    ca.sign_intermediate()
    ca.revoke(old.serial_hex)
    anchor = aws.anchor(ca.root_certificate)
    report = publisher(ca).publish(anchor)
    assert sorted(p.crl_name for p in report.publications) == ["rapki-issuing-1", "rapki-issuing-2"]
    assert {p.entries for p in report.publications} == {0, 1}
    assert len(aws.crls(anchor)) == 2
    aws.emulator.reset_stats()
    assert publisher(ca).publish(anchor).writes == 0


def test_a_third_issuer_under_a_root_anchor_is_reported_not_covered(ca: CertificateAuthority, aws: Aws) -> None:
    ca.sign_intermediate()
    ca.sign_intermediate()
    anchor = aws.anchor(ca.root_certificate)
    result = aws.rapki("crl", "publish", "--trust-anchor-arn", anchor, home=ca.home.path, check=False)
    assert result.returncode == 1 and "issuing-1 are NOT enforced" in result.stderr
    assert sorted(c["name"] for c in aws.crls(anchor)) == ["rapki-issuing-2", "rapki-issuing-3"]


def test_anchor_on_the_issuing_ca_publishes_only_its_crl(ca: CertificateAuthority, aws: Aws) -> None:
    first = ca.issuer()
    ca.sign_intermediate()
    anchor = aws.anchor(first.certificate)
    report = publisher(ca).publish(anchor)
    assert [p.issuer for p in report.publications] == [first.name]


# --- GovCloud and FIPS -----------------------------------------------------------------------------------------
def test_govcloud_anchor_region_and_partition_come_from_the_arn(ca: CertificateAuthority, aws: Aws,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import boto3

    gov = boto3.session.Session().client(
        "rolesanywhere", endpoint_url=aws.emulator.endpoint_url, verify=aws.emulator.ca_bundle,
        region_name="us-gov-west-1", aws_access_key_id=aws.account, aws_secret_access_key="test",
    )  # fmt: skip
    source = {"sourceType": "CERTIFICATE_BUNDLE", "sourceData": {"x509CertificateData": pem_of(ca.root_certificate)}}
    anchor = gov.create_trust_anchor(name="gov", source=source, enabled=True)["trustAnchor"]["trustAnchorArn"]
    assert anchor.startswith("arn:aws-us-gov:rolesanywhere:us-gov-west-1:")
    monkeypatch.setenv("AWS_REGION", "us-east-1")  # the ARN's region wins over the environment
    report = publish(ca, anchor)
    assert report.region == "us-gov-west-1" and report.publications[0].action == "imported"
    assert gov.list_crls()["crls"][0]["crlArn"].startswith("arn:aws-us-gov:rolesanywhere:us-gov-west-1:")


def test_fips_endpoints_for_govcloud_and_commercial(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ENDPOINT_URL_ROLESANYWHERE", "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE", "AWS_USE_FIPS_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    cases = {
        ("us-gov-west-1", True): "https://rolesanywhere-fips.us-gov-west-1.amazonaws.com",
        ("us-gov-east-1", False): "https://rolesanywhere.us-gov-east-1.amazonaws.com",
        ("fips-us-gov-east-1", None): "https://rolesanywhere-fips.us-gov-east-1.amazonaws.com",
        ("us-east-2", True): "https://rolesanywhere-fips.us-east-2.amazonaws.com",
    }
    for (region, fips), url in cases.items():
        client = RolesAnywhere.connect(AwsOptions(region=region, fips=fips))
        assert (client.endpoint_url, client.partition) == (url, "aws-us-gov" if "gov" in region else "aws")
    monkeypatch.setenv("AWS_USE_FIPS_ENDPOINT", "true")
    assert "fips" in RolesAnywhere.connect(AwsOptions(region="us-west-2")).endpoint_url
    from pki.errors import InvalidInput

    with pytest.raises(InvalidInput, match="no FIPS endpoint"):
        RolesAnywhere.connect(AwsOptions(region="eu-west-1"))
    with pytest.raises(InvalidInput, match="exclude each other"):
        RolesAnywhere.connect(AwsOptions(region="us-gov-west-1", endpoint_url="https://127.0.0.1:1"))


# --- status and the fast path ---------------------------------------------------------------------------------
def test_status_shows_lag_pending_revocations_and_near_next_update(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    publisher(ca).publish(anchor)
    status = crl_status(ca, anchor)
    assert status["warnings"] == []
    [item] = status["issuers"]
    assert item["local_crl_number"] == item["published_crl_number"] == 1 and item["budget_used"] > 0
    ca.revoke(ca.issue("web", cn="web-1").serial_hex)
    assert any("not in the local CRL" in w for w in crl_status(ca, anchor)["warnings"])
    ca.build_crl()
    assert any("lags the local #2" in w for w in crl_status(ca, anchor)["warnings"])
    ca.home.update_section("crl", {"republish_before": "8d"})  # beyond the 7-day validity: always near
    near = CertificateAuthority.open(ca.home.path)
    assert any("nextUpdate" in w for w in crl_status(near, anchor)["warnings"])
    result = aws.rapki("crl", "status", "--trust-anchor-arn", anchor, "--check", home=ca.home.path, check=False)
    assert result.returncode == 1 and "lags" in result.stdout
    # Near nextUpdate, a publish signs a new CRL even with nothing newly revoked.
    number = near.crl_state()["crl_number"]
    assert publisher(near).publish(anchor).publications[0].crl_number == number + 1


def test_status_shows_a_crl_dated_in_the_future_as_clock_skew(ca: CertificateAuthority, aws: Aws) -> None:
    """thisUpdate ahead of this host's clock (clocks apart): "in 1h47m (clock skew?)", never "-1h47m"."""
    ca.build_crl()
    ahead = datetime.now(UTC) + timedelta(hours=1, minutes=47, seconds=30)
    with ca.db.engine.begin() as conn:
        conn.execute(update(crl_state).values(this_update=ahead))
    out = aws.rapki("crl", "status", home=ca.home.path).stdout
    assert "age in 1h47m (clock skew?)" in out and "age -" not in out, out
    assert any("in the future" in w and "NTP" in w for w in crl_status(ca)["warnings"])
    [item] = crl_status(ca)["issuers"]
    assert item["age_seconds"] < 0  # the raw figure stays in --json

def test_revoke_with_publish_and_auto_publish(ca: CertificateAuthority, aws: Aws) -> None:
    anchor = aws.anchor(ca.root_certificate)
    ca.home.update_section("roles_anywhere", {"trust_anchor_arn": anchor})
    one, two = ca.issue("web", cn="web-1"), ca.issue("web", cn="web-2")
    aws.emulator.reset_stats()
    result = aws.rapki("revoke", one.serial_hex, "--publish", "--json", home=ca.home.path)
    assert json.loads(result.stdout)["publication"]["publications"][0]["action"] == "imported"
    assert aws.emulator.stats()["writes"] == {"ImportCrl": 1}
    ca.home.update_section("roles_anywhere", {"auto_publish": True})
    aws.rapki("revoke", two.serial_hex, home=ca.home.path)
    remote = x509.load_pem_x509_crl(aws.crls(anchor)[0]["crlData"])
    assert {r.serial_number for r in remote} == {one.certificate.serial_number, two.certificate.serial_number}
    three = ca.issue("web", cn="web-3")
    aws.rapki("revoke", three.serial_hex, "--no-publish", home=ca.home.path)
    assert len(x509.load_pem_x509_crl(aws.crls(anchor)[0]["crlData"])) == 2


def test_revoke_publish_failure_is_one_line_and_the_revocation_stays(ca: CertificateAuthority, aws: Aws) -> None:
    issued = ca.issue("web", cn="web-1")
    result = aws.rapki("revoke", issued.serial_hex, "--publish", home=ca.home.path, check=False)
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and "no trust anchor" in result.stderr
    assert "revoked, but publishing the CRL failed" in result.stderr
    assert ca.find(issued.serial_hex).revoked_at is not None
    with ca.db.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(audit_log)
                            .where(audit_log.c.action == "certificate.revoke")).scalar() == 1


def test_publish_crl_script_is_cron_safe(ca: CertificateAuthority, aws: Aws) -> None:
    """scripts/publish-crl with the stored anchor: publishes, then stays silent and write-free."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "publish-crl"
    anchor = aws.anchor(ca.root_certificate)
    ca.home.update_section("roles_anywhere", {"trust_anchor_arn": anchor})
    if shutil.which("rapki") is None:
        pytest.skip("the rapki console script is not installed")
    env = {**aws.env, "RAPKI_HOME": str(ca.home.path)}
    first = subprocess.run([str(script), "--quiet"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert "imported" in first.stdout
    aws.emulator.reset_stats()
    again = subprocess.run([str(script), "--quiet"], env=env, capture_output=True, text=True, timeout=120, check=False)
    assert (again.returncode, again.stdout, again.stderr) == (0, "", "")
    assert aws.writes() == 0
    cron = (script.parent / "publish-crl.cron").read_text()
    assert "scripts/publish-crl --quiet" in cron


def test_flags_and_the_generic_endpoint_variable_drive_the_cli(ca: CertificateAuthority, aws: Aws) -> None:
    """--endpoint-url/--ca-bundle without any AWS_ENDPOINT_* variable, then AWS_ENDPOINT_URL alone."""
    anchor = aws.anchor(ca.root_certificate)
    bare = {k: v for k, v in aws.env.items() if k not in ("AWS_ENDPOINT_URL_ROLESANYWHERE", "AWS_CA_BUNDLE")}
    flags = ["--endpoint-url", aws.emulator.endpoint_url, "--ca-bundle", aws.emulator.ca_bundle]
    env = {**bare, "RAPKI_HOME": str(ca.home.path)}
    first = subprocess.run([*rapki_cmd(), "crl", "publish", "--trust-anchor-arn", anchor, *flags, "--json"],
                           env=env, capture_output=True, text=True, timeout=120, check=False)
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout)["endpoint_url"] == aws.emulator.endpoint_url
    generic = {**env, "AWS_ENDPOINT_URL": aws.emulator.endpoint_url, "AWS_CA_BUNDLE": aws.emulator.ca_bundle}
    again = subprocess.run([*rapki_cmd(), "crl", "publish", "--trust-anchor-arn", anchor, "--json"],
                           env=generic, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["publications"][0]["action"] == "unchanged"
    # Without a CA bundle, TLS to the emulator's self-signed certificate fails with a hint, in one line.
    no_bundle = subprocess.run([*rapki_cmd(), "crl", "publish", "--trust-anchor-arn", anchor, "--endpoint-url",
                                aws.emulator.endpoint_url], env={**env, "RAPKI_AWS_MAX_ATTEMPTS": "1"},
                               capture_output=True, text=True, timeout=120, check=False)
    assert no_bundle.returncode == 1 and no_bundle.stderr.count("\n") == 1
    assert "--ca-bundle" in no_bundle.stderr
