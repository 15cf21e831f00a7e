"""Certificate serial numbers: random, positive, at most 20 octets, parsed from hex or decimal."""

from __future__ import annotations

import os
import re

from pki.errors import InvalidInput

_HEX = re.compile(r"(?:0x)?[0-9a-f]+")


def random_serial(octets: int) -> int:
    """A random positive serial whose DER encoding is exactly ``octets`` long.

    The top bit is cleared (so no leading zero octet is needed) and the second set (so the length
    is stable), leaving ``8 * octets - 2`` random bits.
    """
    value = int.from_bytes(os.urandom(octets), "big")  # what secrets.token_bytes reads, minus two call layers
    top = 8 * octets - 1
    return (value & ((1 << top) - 1)) | (1 << (top - 1))


def serial_hex(serial: int) -> str:
    return format(serial, "x")


def parse_serial(text: str) -> list[int]:
    """Candidates for a serial typed by a person, most likely first.

    ``0x``-prefixed, colon-separated or letter-bearing input is hex. All-digit input is ambiguous:
    it is tried as hex (how rapki prints serials) and then as decimal (how Roles Anywhere's
    ``Credential=`` shows them).
    """
    raw = text.strip().lower().replace(":", "")
    if len(raw) > 64:  # RFC 5280 serials are at most 20 octets: 40 hex or 49 decimal digits
        raise InvalidInput(f"invalid serial {text[:20]!r}...: serials are at most 20 bytes (40 hex digits)")
    if not raw or not _HEX.fullmatch(raw):
        raise InvalidInput(f"invalid serial {text!r}: give it in hex (as 'rapki list' shows) or decimal")
    if raw.startswith("0x"):
        candidates = [int(raw[2:], 16)]
    elif raw.isdigit() and ":" not in text:
        candidates = [int(raw, 16), int(raw, 10)]
    else:
        candidates = [int(raw, 16)]
    if any(c <= 0 for c in candidates):
        raise InvalidInput(f"invalid serial {text!r}: serials are positive")
    return candidates
