"""The ``kms`` backend: a CA key as an AWS KMS asymmetric ``SIGN_VERIFY`` key, used through boto3.

Signing sends a digest computed here (``MessageType=DIGEST``), never the TBS itself: KMS takes at
most 4096 bytes of raw message, and a CRL or a certificate with many names is larger; a digest is
also all KMS needs to see. The signing algorithm follows the key type (``ECDSA_SHA_256``/``_384``,
``RSASSA_PKCS1_V1_5_SHA_256``).

ML-DSA keys (KeySpec ``ML_DSA_44``/``_65``/``_87``, SigningAlgorithm ``ML_DSA_SHAKE_256``) cannot be
signed as a digest: a TBS of at most 4096 bytes is sent whole (``MessageType=RAW``), a larger one as
its 64-byte FIPS 204 mu (``EXTERNAL_MU``: SHAKE256 over the public key's hash, the empty context and
the TBS, computed here by ``cryptography``'s ``MLDSAMuHasher``); KMS signs both as pure ML-DSA, and
the signature verifies over the TBS either way. An adopted key is kept by its ARN, never by an alias, so an alias
pointed elsewhere later cannot swap the key under a CA certificate.

GovCloud regions (``us-gov-west-1``, ``us-gov-east-1``) resolve to their own partition's endpoints;
``use_fips_endpoint`` selects the FIPS 140 endpoints (``kms-fips.<region>.amazonaws.com``);
``endpoint_url`` overrides both (a VPC endpoint, a test server). Credentials come from the usual
boto3 chain (instance role, environment, profile), never from the key reference.
"""

from __future__ import annotations

import hashlib
from typing import Any, cast

from pki.custody.refs import KmsRef
from pki.errors import InvalidInput, KeyUnavailable, NotFound
from pki.x509.keys import KeyType, MLDSAPublicKey, PublicKey

KEY_SPECS = {
    KeyType.EC_P256: "ECC_NIST_P256",
    KeyType.EC_P384: "ECC_NIST_P384",
    KeyType.RSA_2048: "RSA_2048",
    KeyType.RSA_3072: "RSA_3072",
    KeyType.RSA_4096: "RSA_4096",
    KeyType.ML_DSA_44: "ML_DSA_44",
    KeyType.ML_DSA_65: "ML_DSA_65",
    KeyType.ML_DSA_87: "ML_DSA_87",
}
_KEY_TYPES = {spec: key_type for key_type, spec in KEY_SPECS.items()}
SIGNING_ALGORITHMS = {
    KeyType.EC_P256: "ECDSA_SHA_256",
    KeyType.EC_P384: "ECDSA_SHA_384",
    KeyType.RSA_2048: "RSASSA_PKCS1_V1_5_SHA_256",
    KeyType.RSA_3072: "RSASSA_PKCS1_V1_5_SHA_256",
    KeyType.RSA_4096: "RSASSA_PKCS1_V1_5_SHA_256",
    KeyType.ML_DSA_44: "ML_DSA_SHAKE_256",
    KeyType.ML_DSA_65: "ML_DSA_SHAKE_256",
    KeyType.ML_DSA_87: "ML_DSA_SHAKE_256",
}
RAW_MESSAGE_LIMIT = 4096  # bytes KMS signs as a RAW message; an ML-DSA TBS beyond it goes as its mu


ATTEMPTS = 3  # per call: a KMS that cannot be reached fails within seconds, never hangs a command


def make_client(ref: KmsRef) -> Any:
    """A KMS client for ``ref``'s region and endpoint (boto3 clients are safe to share between threads)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError

    config = Config(use_fips_endpoint=ref.use_fips_endpoint, retries={"mode": "standard", "max_attempts": ATTEMPTS},
                    connect_timeout=5, read_timeout=15)
    try:
        return boto3.session.Session().client("kms", region_name=ref.region, endpoint_url=ref.endpoint_url,
                                              config=config)
    except BotoCoreError as exc:  # no region anywhere, an unknown one
        raise InvalidInput(f"KMS key {ref.key_id or '(new)'}: {exc}") from exc


def _kms_error(exc: Exception, ref: KmsRef, action: str) -> Exception:
    """The project error for a failed KMS call, naming the key and the KMS error code."""
    from botocore.exceptions import ClientError, ConnectionError

    what = f"KMS {action} for key {ref.key_id or '(new)'}"
    if isinstance(exc, ConnectionError):  # refused, unresolvable, timed out: retried first
        return KeyUnavailable(f"{what} failed after {ATTEMPTS} attempts: {exc}")
    if not isinstance(exc, ClientError):  # no credentials, a bad region
        return KeyUnavailable(f"{what} failed: {exc}")
    code = exc.response.get("Error", {}).get("Code", "")
    message = exc.response.get("Error", {}).get("Message", "")
    detail = f"{what}: {code} {message}".strip()
    if code == "NotFoundException":
        return NotFound(detail)
    if code in ("ValidationException", "InvalidKeyUsageException", "UnsupportedOperationException",
                "InvalidArnException"):
        return InvalidInput(detail)
    return KeyUnavailable(detail)  # access denied, disabled or pending deletion, throttled, KMS down


def _call(ref: KmsRef, action: str, function: Any, **params: Any) -> dict[str, Any]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        result: dict[str, Any] = function(**params)
    except (ClientError, BotoCoreError) as exc:
        raise _kms_error(exc, ref, action) from exc
    return result


class KmsKey:
    """An AWS KMS asymmetric signing key; the private key never leaves KMS."""

    def __init__(self, ref: KmsRef, public_key: PublicKey, client: Any) -> None:
        self._ref = ref
        self._public_key = public_key
        self._key_type = KeyType.of(public_key)
        self._hash = self._key_type.signature_hash()
        self._algorithm = SIGNING_ALGORITHMS[self._key_type]
        self.client = client

    @property
    def key_type(self) -> KeyType:
        return self._key_type

    @property
    def ref(self) -> KmsRef:
        return self._ref

    @classmethod
    def adopt(cls, ref: KmsRef, *, client: Any = None) -> KmsKey:
        """The KMS key ``ref`` names (ARN, id or alias), checked to be an asymmetric signing key of a
        type rapki uses; the returned key's ``ref`` holds its ARN."""
        from cryptography.hazmat.primitives.serialization import load_der_public_key

        if not ref.key_id:
            raise InvalidInput("a kms key reference needs key_id (the key's ARN, id or alias)")
        client = client if client is not None else make_client(ref)
        meta = _call(ref, "DescribeKey", client.describe_key, KeyId=ref.key_id)["KeyMetadata"]
        arn, state = str(meta["Arn"]), meta.get("KeyState", "Enabled")
        if state != "Enabled":
            raise KeyUnavailable(f"KMS key {arn} is {state}: a CA key must be enabled")
        usage = meta.get("KeyUsage", "")
        if usage != "SIGN_VERIFY":
            raise InvalidInput(f"KMS key {arn} is for {usage}, not SIGN_VERIFY: a CA key signs")
        spec = meta.get("KeySpec") or meta.get("CustomerMasterKeySpec", "")
        key_type = _KEY_TYPES.get(spec)
        if key_type is None:
            raise InvalidInput(f"KMS key {arn} is {spec}: a CA key is one of {', '.join(_KEY_TYPES)}")
        if SIGNING_ALGORITHMS[key_type] not in meta.get("SigningAlgorithms", []):
            raise InvalidInput(f"KMS key {arn} does not offer {SIGNING_ALGORITHMS[key_type]}")
        answer = _call(ref, "GetPublicKey", client.get_public_key, KeyId=arn)
        public_key = load_der_public_key(answer["PublicKey"])
        if KeyType.of(public_key) is not key_type:
            raise InvalidInput(f"KMS key {arn} says {spec} but its public key is not")
        adopted = KmsRef(key_id=arn, use_fips_endpoint=ref.use_fips_endpoint, endpoint_url=ref.endpoint_url)
        return cls(adopted, public_key, client)  # type: ignore[arg-type]

    @classmethod
    def create(cls, ref: KmsRef, key_type: KeyType, *, description: str = "rapki CA key",
               client: Any = None) -> KmsKey:
        """A new KMS key of ``key_type`` (``CreateKey``, ``KeyUsage=SIGN_VERIFY``) in ``ref``'s region."""
        if ref.key_id:
            raise InvalidInput(f"to create a KMS key leave key_id empty ({ref.key_id!r} names an existing one)")
        client = client if client is not None else make_client(ref)
        answer = _call(ref, "CreateKey", client.create_key, KeySpec=KEY_SPECS[key_type], KeyUsage="SIGN_VERIFY",
                       Description=description, Tags=[{"TagKey": "rapki", "TagValue": "ca-key"}])
        arn = answer["KeyMetadata"]["Arn"]
        return cls.adopt(KmsRef(key_id=arn, use_fips_endpoint=ref.use_fips_endpoint,
                                endpoint_url=ref.endpoint_url), client=client)

    def public_key(self) -> PublicKey:
        return self._public_key

    def sign(self, data: bytes) -> bytes:
        message, message_type = self._message(data)
        answer = _call(self._ref, "Sign", self.client.sign, KeyId=self._ref.key_id, Message=message,
                       MessageType=message_type, SigningAlgorithm=self._algorithm)
        return bytes(answer["Signature"])

    def _message(self, data: bytes) -> tuple[bytes, str]:
        """What KMS is sent to sign ``data``, and as which MessageType (see the module doc)."""
        if self._hash is not None:
            return hashlib.new(self._hash.name, data).digest(), "DIGEST"
        if len(data) <= RAW_MESSAGE_LIMIT:
            return data, "RAW"
        from cryptography.hazmat.primitives.asymmetric.mldsa import MLDSAMuHasher

        hasher = MLDSAMuHasher(cast(MLDSAPublicKey, self._public_key))
        hasher.update(data)
        return hasher.finalize(), "EXTERNAL_MU"

    def describe(self) -> str:
        where = self._ref.region or "default region"
        if self._ref.use_fips_endpoint:
            where += ", FIPS endpoint"
        if self._ref.endpoint_url:
            where += f", endpoint {self._ref.endpoint_url}"
        return f"kms {self._ref.key_id} ({where}, {self._key_type})"
