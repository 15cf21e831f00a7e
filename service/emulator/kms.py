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

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

_HASHES: dict[str, hashes.SHA256 | hashes.SHA384] = {
    "ECDSA_SHA_256": hashes.SHA256(), "ECDSA_SHA_384": hashes.SHA384(),
    "RSASSA_PKCS1_V1_5_SHA_256": hashes.SHA256(), "RSASSA_PKCS1_V1_5_SHA_384": hashes.SHA384(),
}


def _sign_digest(self: Any, original: Any) -> str:
    """``KmsResponse.sign``, with DIGEST messages signed as digests."""
    from moto.kms.exceptions import ValidationException

    if self._get_param("MessageType") != "DIGEST":
        return str(original(self))
    algorithm = self._get_param("SigningAlgorithm")
    message = self._get_param("Message")  # bytes when moto parses the request by the model, else base64 text
    digest = message if isinstance(message, bytes) else base64.b64decode(message)
    key = self.kms_backend.describe_key(self._get_param("KeyId"))
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
    """moto's KMS with DIGEST signing, listening on 127.0.0.1; yields its endpoint URL."""
    from moto.kms.responses import KmsResponse
    from moto.server import ThreadedMotoServer

    original = KmsResponse.sign
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    with mock.patch.object(KmsResponse, "sign", lambda self: _sign_digest(self, original)):
        server.start()
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            server.stop()
