"""Publishing CRLs to S3, where certificates' CRL Distribution Points lead (``rapki crl publish --s3``).

The way AWS Private CA publishes: each issuing CA's DER CRL at ``<prefix>/<issuer>.crl`` with
``Content-Type: application/pkix-crl``; the bucket (or a CloudFront distribution in front of it) is
what ``[crl].distribution_url`` names, e.g. ``http://crl.example.com/crl/{issuer}.crl``. Cron-safe and
idempotent like the Roles Anywhere publication (``pki.aws.publish``), whose lock it takes:

1. The current CRL of each unexpired issuer (``CertificateAuthority.current_crl``: a new CRLNumber
   only when the revoked set changed or nextUpdate is near).
2. HeadObject: the object's metadata holds the CRL number and SHA-256 it was uploaded with. The same
   bytes there: no write. A higher CRL number there: refused (two homes or a restored backup; a
   person must look), as the Roles Anywhere publication refuses to go backwards.
3. Otherwise PutObject, then the publication is recorded (``crl_publications``, the destination
   ``s3://bucket/prefix`` in place of a trust anchor ARN, the object's ETag as its id) with an audit
   entry ``crl.publish`` in one transaction.

An object deleted or changed by hand is found by the HeadObject and uploaded again.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pki.errors import InvalidInput, RapkiError

if TYPE_CHECKING:
    from pki.aws.client import AwsOptions
    from pki.ca.authority import CertificateAuthority, Issuer
    from pki.x509.crl import BuiltCrl

CONTENT_TYPE = "application/pkix-crl"
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")


class S3PublishError(RapkiError):
    """The S3 publication failed or must not go on (exit 1, one line)."""

    exit_code = 1


@dataclass(frozen=True)
class S3Destination:
    bucket: str
    prefix: str  # without leading or trailing '/'; may be empty

    @classmethod
    def parse(cls, url: str) -> S3Destination:
        if not url.startswith("s3://"):
            raise InvalidInput(f"--s3 takes s3://BUCKET/PREFIX, not {url!r}")
        bucket, _, prefix = url.removeprefix("s3://").partition("/")
        if not _BUCKET.fullmatch(bucket):
            raise InvalidInput(f"{bucket!r} is not an S3 bucket name (3-63 of a-z, 0-9, '.', '-')")
        return cls(bucket, prefix.strip("/"))

    def key(self, issuer: str) -> str:
        return f"{self.prefix}/{issuer}.crl" if self.prefix else f"{issuer}.crl"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass
class S3Publication:
    issuer: str
    key: str
    crl_number: int
    entries: int
    size: int
    action: str  # unchanged | uploaded | would-upload | would-build-and-upload
    etag: str | None = None


@dataclass
class S3Report:
    destination: str
    dry_run: bool
    publications: list[S3Publication] = field(default_factory=list)
    writes: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"destination": self.destination, "dry_run": self.dry_run, "writes": self.writes,
                "seconds": round(self.seconds, 3), "publications": [asdict(p) for p in self.publications]}


def s3_client(options: AwsOptions, endpoint_url: str | None, region: str | None) -> Any:
    """A boto3 S3 client: ``endpoint_url`` (else $AWS_ENDPOINT_URL_S3, boto3's own) addressed by
    path (a bucket is not a DNS label of 127.0.0.1), botocore's standard retries."""
    from botocore.config import Config

    from pki.aws.client import aws_session, boto_client

    verify: str | bool | None = options.ca_bundle or os.environ.get("AWS_CA_BUNDLE") or None
    session = aws_session(options)
    config = Config(region_name=region or options.region or None, retries={"mode": "standard", "max_attempts": 5},
                    connect_timeout=options.connect_timeout, read_timeout=options.read_timeout,
                    user_agent_extra="rapki", s3={"addressing_style": "path" if endpoint_url else "auto"})
    return boto_client(session, "s3", endpoint_url=endpoint_url or None, verify=verify, config=config)


def _remote(client: Any, bucket: str, key: str) -> dict[str, str] | None:
    """The metadata of the object at ``key`` (crl-number, sha256), or None when there is none."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}


class S3Publisher:
    def __init__(self, ca: CertificateAuthority, client: Any, destination: S3Destination, *,
                 actor: str | None = None) -> None:
        self.ca, self.client, self.destination, self.actor = ca, client, destination, actor

    def publish(self, *, dry_run: bool = False, lock_timeout: float = 120.0) -> S3Report:
        from botocore.exceptions import BotoCoreError, ClientError

        from pki.aws.publish import publish_lock

        started = time.monotonic()
        report = S3Report(str(self.destination), dry_run)
        now = datetime.now(UTC)
        issuers = [i for i in self.ca.issuers() if i.not_after > now]
        try:
            with publish_lock(self.ca, lock_timeout):
                for issuer in issuers:
                    built = self.ca.current_crl(issuer.name, build=not dry_run, actor=self.actor)
                    report.publications.append(self._one(issuer, built, dry_run, report))
        except (BotoCoreError, ClientError) as exc:
            raise S3PublishError(f"publishing to {self.destination} failed: {exc}") from None
        report.seconds = time.monotonic() - started
        return report

    def _one(self, issuer: Issuer, built: BuiltCrl | None, dry_run: bool, report: S3Report) -> S3Publication:
        key = self.destination.key(issuer.name)
        if built is None:  # a dry run with a CRL that is not current: the real run would sign one first
            return S3Publication(issuer.name, key, 0, 0, 0, "would-build-and-upload")
        der = built.der
        sha = hashlib.sha256(der).hexdigest()
        result = S3Publication(issuer.name, key, built.number, built.entries, len(der), "unchanged")
        remote = _remote(self.client, self.destination.bucket, key)
        if remote is not None and remote.get("sha256") == sha:
            return result
        if remote is not None and int(remote.get("crl-number") or 0) > built.number:
            raise S3PublishError(
                f"{key} holds CRL #{remote['crl-number']}, newer than this home's #{built.number}: another home "
                "or a restored backup publishes there; nothing was uploaded, look before publishing again")
        if dry_run:
            result.action = "would-upload"
            return result
        put = self.client.put_object(Bucket=self.destination.bucket, Key=key, Body=der, ContentType=CONTENT_TYPE,
                                     Metadata={"crl-number": str(built.number), "sha256": sha})
        report.writes += 1
        result.action, result.etag = "uploaded", str(put.get("ETag", "")).strip('"')[:64]
        self._record(issuer, result, sha)
        return result

    def _record(self, issuer: Issuer, result: S3Publication, sha: str) -> None:
        from pki.aws.publish import record_publication

        record_publication(
            self.ca, self.actor, issuer, {
                "destination": str(self.destination), "key": result.key, "crl_number": result.crl_number,
                "size": result.size, "entries": result.entries, "action": result.action,
            }, destination=str(self.destination), crl_id=result.etag or sha[:64], crl_arn=None, crl_name=result.key,
            crl_number=result.crl_number, sha256=sha, size=result.size)


def publish_s3(ca: CertificateAuthority, destination: str, *, options: AwsOptions | None = None,
               endpoint_url: str | None = None, dry_run: bool = False, lock_timeout: float = 120.0,
               actor: str | None = None) -> S3Report:
    """Publish the current CRL of every unexpired issuing CA to ``destination`` (``s3://bucket/prefix``)."""
    from pki.aws.client import AwsOptions
    from pki.aws.publish import settings
    from pki.rolesanywhere.endpoints import env_region

    target = S3Destination.parse(destination)
    options = options or AwsOptions()
    region = options.region or env_region() or settings(ca).get("region")
    client = s3_client(options, endpoint_url, region)
    return S3Publisher(ca, client, target, actor=actor).publish(dry_run=dry_run, lock_timeout=lock_timeout)
