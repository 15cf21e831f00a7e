"""A local AWS KMS for tests and benchmarks: moto's KMS in server mode on 127.0.0.1, with ``Sign``
honouring ``MessageType=DIGEST``. moto is a dev dependency, imported only when a server starts.

moto (5.x) treats a DIGEST message as a message: it hashes it again, so a signature it returns
verifies over nothing rapki signed, and a CA whose key is in moto refuses every certificate. AWS
signs the digest itself. ``kms_server`` starts moto with its Sign handler taught DIGEST as AWS does:
the digest is checked to be as long as the algorithm's hash and signed as a prehashed value, with
the private key moto holds. Everything else (CreateKey,
DescribeKey, GetPublicKey, errors, RAW messages) is moto's own, over HTTP; rapki's side is its real
boto3 client. What this adds leans on moto's internals (``KmsResponse``, ``Key.private_key``), so
pyproject.toml bounds moto below 6.

moto 5 has no ML-DSA keys at all. As the test server's stand-in for AWS's (KeySpec ``ML_DSA_44``/
``_65``/``_87``, SigningAlgorithm ``ML_DSA_SHAKE_256``), ``kms_server`` also teaches moto those key
specs: the key pair is made by ``cryptography``, GetPublicKey returns its SubjectPublicKeyInfo, Sign
signs a RAW message (at most 4096 bytes) as pure ML-DSA with an empty context and an
``EXTERNAL_MU`` message (64 bytes) as that mu, as AWS documents; Verify checks both. It is a stand-in
for what AWS does, not evidence of it.

botocore's Stubber, in tests/test_custody_kms.py, remains the check of the exact Sign request.
"""

from __future__ import annotations

import base64
import json
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from unittest import mock

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, mldsa, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

_HASHES: dict[str, hashes.SHA256 | hashes.SHA384] = {
    "ECDSA_SHA_256": hashes.SHA256(), "ECDSA_SHA_384": hashes.SHA384(),
    "RSASSA_PKCS1_V1_5_SHA_256": hashes.SHA256(), "RSASSA_PKCS1_V1_5_SHA_384": hashes.SHA384(),
}


_MLDSA_SPECS: dict[str, type[mldsa.MLDSA44PrivateKey | mldsa.MLDSA65PrivateKey | mldsa.MLDSA87PrivateKey]] = {
    "ML_DSA_44": mldsa.MLDSA44PrivateKey, "ML_DSA_65": mldsa.MLDSA65PrivateKey, "ML_DSA_87": mldsa.MLDSA87PrivateKey,
}
MLDSA_ALGORITHM = "ML_DSA_SHAKE_256"
_RAW_LIMIT, _MU_SIZE = 4096, 64


class _MLDSAKey:
    """What moto keeps as a key's private part (``moto.kms.utils.AbstractPrivateKey``), for ML-DSA."""

    def __init__(self, key_spec: str) -> None:
        self.private_key = _MLDSA_SPECS[key_spec].generate()

    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(serialization.Encoding.DER,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign(self, message: bytes, message_type: str) -> bytes:
        return self.private_key.sign_mu(message) if message_type == "EXTERNAL_MU" else self.private_key.sign(message)

    def verify(self, message: bytes, signature: bytes, message_type: str) -> bool:
        public_key = self.private_key.public_key()
        try:
            if message_type == "EXTERNAL_MU":
                public_key.verify_mu(signature, message)
            else:
                public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


def _generate_private_key(original: Any, key_spec: str) -> Any:
    return _MLDSAKey(key_spec) if key_spec in _MLDSA_SPECS else original(key_spec)


def _signing_algorithms(self: Any, original: Any) -> list[str] | None:
    if self.key_spec in _MLDSA_SPECS and self.key_usage == "SIGN_VERIFY":
        return [MLDSA_ALGORITHM]
    algorithms: list[str] | None = original.fget(self)  # None for ENCRYPT_DECRYPT keys, as moto has it
    return algorithms


def _message(self: Any) -> bytes:
    message = self._get_param("Message")  # bytes when moto parses the request by the model, else base64 text
    return message if isinstance(message, bytes) else base64.b64decode(message)


def _mldsa_message(self: Any, key: Any) -> tuple[bytes, str]:
    """The message and MessageType of a Sign or Verify request for ML-DSA ``key``, checked as AWS does."""
    from moto.kms.exceptions import ValidationException

    algorithm, message_type = self._get_param("SigningAlgorithm"), self._get_param("MessageType") or "RAW"
    message = _message(self)
    if algorithm != MLDSA_ALGORITHM:
        raise ValidationException(f"{algorithm} cannot be used with key {key.arn}")
    if message_type == "EXTERNAL_MU" and len(message) != _MU_SIZE:
        raise ValidationException(f"An EXTERNAL_MU message is {_MU_SIZE} bytes, not {len(message)}.")
    if message_type not in ("RAW", "EXTERNAL_MU") or not 1 <= len(message) <= _RAW_LIMIT:
        raise ValidationException(f"MessageType {message_type} with {len(message)} bytes cannot be signed with ML-DSA.")
    return message, message_type


def _sign_mldsa(self: Any, key: Any) -> str:
    message, message_type = _mldsa_message(self, key)
    signature = key.private_key.sign(message, message_type)
    return json.dumps({"KeyId": key.arn, "Signature": base64.b64encode(signature).decode(),
                       "SigningAlgorithm": MLDSA_ALGORITHM})


def _verify(self: Any, original: Any) -> str:
    """``KmsResponse.verify``, with ML-DSA keys checked by the stand-in."""
    key = self.kms_backend.describe_key(self._get_param("KeyId"))
    if key.key_spec not in _MLDSA_SPECS:
        return str(original(self))
    message, message_type = _mldsa_message(self, key)
    signature = self._get_param("Signature")
    signature = signature if isinstance(signature, bytes) else base64.b64decode(signature)
    return json.dumps({"KeyId": key.arn, "SignatureValid": key.private_key.verify(message, signature, message_type),
                       "SigningAlgorithm": MLDSA_ALGORITHM})


def _sign_digest(self: Any, original: Any) -> str:
    """``KmsResponse.sign``, with DIGEST messages signed as digests and ML-DSA keys by the stand-in."""
    from moto.kms.exceptions import ValidationException

    key = self.kms_backend.describe_key(self._get_param("KeyId"))
    if key.key_spec in _MLDSA_SPECS:
        return _sign_mldsa(self, key)
    if self._get_param("MessageType") != "DIGEST":
        return str(original(self))
    algorithm = self._get_param("SigningAlgorithm")
    digest = _message(self)
    if key.key_usage != "SIGN_VERIFY" or algorithm not in key.signing_algorithms or algorithm not in _HASHES:
        raise ValidationException(f"{algorithm} cannot be used with key {key.arn}")
    hash_algorithm = _HASHES[algorithm]
    if len(digest) != hash_algorithm.digest_size:
        raise ValidationException(f"Digest is invalid length for algorithm {algorithm}.")
    private_key = key.private_key.private_key  # moto's cryptography key object
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        signature = private_key.sign(digest, ec.ECDSA(Prehashed(hash_algorithm)))
    else:
        signature = private_key.sign(digest, padding.PKCS1v15(), Prehashed(hash_algorithm))
    return json.dumps({"KeyId": key.arn, "Signature": base64.b64encode(signature).decode(),
                       "SigningAlgorithm": algorithm})


@contextmanager
def kms_server() -> Iterator[str]:
    """moto's KMS with DIGEST signing and ML-DSA keys, listening on 127.0.0.1; yields its endpoint URL."""
    from moto.kms import models
    from moto.kms.responses import KmsResponse
    from moto.kms.utils import KeySpec
    from moto.server import ThreadedMotoServer

    sign, verify, algorithms = KmsResponse.sign, KmsResponse.verify, models.Key.signing_algorithms
    generate, specs = models.generate_private_key, KeySpec.key_specs
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    signing_algorithms = property(lambda self: _signing_algorithms(self, algorithms))
    with (mock.patch.object(KmsResponse, "sign", lambda self: _sign_digest(self, sign)),
          mock.patch.object(KmsResponse, "verify", lambda self: _verify(self, verify)),
          mock.patch.object(models.Key, "signing_algorithms", signing_algorithms),
          mock.patch.object(models, "generate_private_key", lambda spec: _generate_private_key(generate, spec)),
          mock.patch.object(KeySpec, "key_specs", classmethod(lambda _cls: sorted([*specs(), *_MLDSA_SPECS])))):
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
