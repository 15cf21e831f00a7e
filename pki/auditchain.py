"""The audit log's hash chain: how an entry is hashed, and how a run of entries is checked.

Pure functions over plain values (no database), so an exported log can be checked anywhere
rapki is installed: ``verify(read_json_lines(lines))``. ``pki.store`` hashes with these when it
writes an entry; ``pki.ca`` checks the database's log with ``verify``.

An entry's hash, in two steps (``docs/audit.md`` has the same with an example):

1. its content digest: SHA-256 (hex) of the canonical JSON array
   ``["rapki-audit-1", at, actor, action, target, details]``: ``at`` in ISO 8601, UTC, with
   microseconds (``2025-01-02T03:04:05.000006+00:00``); ``details`` as stored (JSON or null);
   keys sorted, no spaces, UTF-8 (what ``orjson`` writes with sorted keys);
2. its hash: SHA-256 (hex) of the ASCII text ``"<previous hash> <seq> <content digest>"``, where
   ``seq`` is the entry number (1, 2, 3... with no gaps) and the first entry's previous hash is
   ``GENESIS`` (64 zeros).

Step 2 is small on purpose: the database computes it (SQLite through a function rapki registers,
PostgreSQL with its own ``sha256``) while it advances the chain, so a writer never reads the
previous hash in a round trip of its own.

What the chain shows: an entry edited, deleted, inserted or moved anywhere before the newest one.
What it cannot show alone: someone with write access rewriting every hash from an entry onwards,
or dropping the newest entries. Comparing the head (``seq`` and hash of the newest entry) with a
copy kept elsewhere closes both; see ``docs/audit.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

GENESIS = "0" * 64
FORMAT = "rapki-audit-1"  # the first element of the content, so a future encoding can tell itself apart
CHAIN_FIELDS = ("seq", "at", "actor", "action", "target", "details", "prev_hash", "hash")


def canonical_time(at: datetime) -> str:
    """``at`` as hashed: ISO 8601 in UTC with microseconds (a naive time is taken as UTC)."""
    aware = at if at.tzinfo else at.replace(tzinfo=UTC)
    return aware.astimezone(UTC).isoformat(timespec="microseconds")


def content_digest(at: datetime | str, actor: str, action: str, target: str, details: Any) -> str:
    """SHA-256 (hex) of the canonical encoding of an entry's fields. ``at``: a datetime, or the
    text ``canonical_time`` gives (as exported)."""
    when = at if isinstance(at, str) else canonical_time(at)
    encoded = orjson.dumps([FORMAT, when, actor, action, target, details],
                           option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    return hashlib.sha256(encoded).hexdigest()


def link_text(prev_hash: str, seq: int, digest: str) -> str:
    """What an entry's hash is taken over (the database builds the same text in SQL)."""
    return f"{prev_hash} {seq} {digest}"


def entry_hash(prev_hash: str, seq: int, digest: str) -> str:
    return hashlib.sha256(link_text(prev_hash, seq, digest).encode()).hexdigest()


@dataclass(frozen=True)
class ChainHead:
    """The newest entry's number and hash: what is compared with a copy kept elsewhere."""

    seq: int
    hash: str

    def __str__(self) -> str:
        return f"{self.seq}:{self.hash}"

    @classmethod
    def parse(cls, text: str) -> ChainHead:
        """``SEQ:HASH`` (as ``str`` writes it); ValueError when it is not."""
        seq, sep, digest = text.strip().partition(":")
        digest = digest.lower()
        if not sep or not seq.isdigit() or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"{text!r} is not SEQ:HASH (an entry number, a colon and 64 hex digits)")
        return cls(int(seq), digest)


@dataclass
class ChainReport:
    """What ``verify`` found: ``problem`` is None when every entry checked out."""

    entries: int = 0  # entries checked
    first: int | None = None  # the first entry's number
    head: ChainHead | None = None  # the last entry that checked out
    problem: str | None = None
    bad_entry: int | None = None  # the entry ``problem`` names
    seen: dict[int, str] = field(default_factory=dict, repr=False)  # hashes of the ``watch`` entries found

    @property
    def ok(self) -> bool:
        return self.problem is None

    def summary(self) -> str:
        if self.problem is not None:
            return self.problem
        if self.head is None:
            return "the audit log is empty"
        count = "1 entry" if self.entries == 1 else f"{self.entries} entries"
        return f"intact: {count} ({self.first} to {self.head.seq}), head {self.head}"


def _as_time(value: Any) -> datetime | str:
    return value if isinstance(value, datetime) else str(value)


def own_hash(entry: Mapping[str, Any]) -> str:
    """The hash ``entry`` should carry, from its own fields and its ``prev_hash``."""
    digest = content_digest(_as_time(entry["at"]), entry["actor"], entry["action"], entry["target"],
                            entry["details"])
    return entry_hash(entry["prev_hash"], int(entry["seq"]), digest)


def verify(entries: Iterable[Mapping[str, Any]], *, after: ChainHead | None = None,
           head: ChainHead | None = None, watch: Collection[int] = ()) -> ChainReport:
    """Check ``entries`` (mappings with ``CHAIN_FIELDS``, oldest first) and name the first
    entry edited, missing or out of order.

    ``after``: the entry just before the first one (a previous export's head), when the run does
    not start at entry 1. ``head``: where the chain should end (the database's head record): the
    newest entries dropped, or the last one edited, shows only against it. ``watch``: entry
    numbers whose hashes to keep in ``report.seen`` (heads anchored elsewhere). Reads ``entries``
    once; after a problem, the rest is read only to tell a moved entry from an edited one.
    """
    report = ChainReport()
    expected_seq = after.seq + 1 if after else 1
    prev_hash = after.hash if after else GENESIS
    stream: Iterator[Mapping[str, Any]] = iter(entries)
    for entry in stream:
        seq = int(entry["seq"])
        stored = entry["hash"]
        if seq != expected_seq or entry["prev_hash"] != prev_hash or own_hash(entry) != stored:
            report.problem, report.bad_entry = _diagnose(entry, expected_seq, prev_hash, stream)
            return report
        report.entries += 1
        report.first = seq if report.first is None else report.first
        report.head = ChainHead(seq, stored)
        if seq in watch:
            report.seen[seq] = stored
        expected_seq, prev_hash = seq + 1, stored
    if head is not None and (report.head or after) != head:
        last = report.head or after
        last_seq = last.seq if last else 0
        if head.seq > last_seq:
            report.problem = (f"entry {last_seq + 1} is missing (the log ends at entry {last_seq}; "
                              f"the chain head records entry {head.seq})")
            report.bad_entry = last_seq + 1
        else:
            report.problem = (f"entry {head.seq} was edited (the chain head records hash {head.hash[:16]}..., "
                              f"the log ends at {last})")
            report.bad_entry = head.seq
    return report


def _diagnose(entry: Mapping[str, Any], expected_seq: int, prev_hash: str,
              rest: Iterator[Mapping[str, Any]]) -> tuple[str, int]:
    """Why ``entry`` (found where ``expected_seq`` should be, after an entry hashed ``prev_hash``)
    does not fit, naming the entry at fault."""
    seq = int(entry["seq"])
    self_consistent = own_hash(entry) == entry["hash"]
    if seq > expected_seq:
        # The entry that should come next may sit further on (moved) rather than be gone.
        for later in rest:
            if later["prev_hash"] == prev_hash and _position_hashed_for(later, expected_seq) == expected_seq:
                return (f"entry {expected_seq} is out of order (it was moved to entry {later['seq']})",
                        expected_seq)
        between = f"{expected_seq - 1} and {seq}"
        if seq == expected_seq + 1:
            return f"entry {expected_seq} is missing (chain breaks between {between})", expected_seq
        return (f"entries {expected_seq} to {seq - 1} are missing (chain breaks between {between})",
                expected_seq)
    if seq < expected_seq:
        return f"entry {seq} appears twice or out of order (expected entry {expected_seq})", seq
    if self_consistent:  # its own hash holds: the link to the entry before is what broke
        if expected_seq == 1:
            return "entry 1 does not start the chain (its previous hash is not the genesis hash)", 1
        return (f"entry {seq - 1} was edited (its hash was recomputed; entry {seq} still links to the "
                "original)", seq - 1)
    if entry["prev_hash"] != prev_hash:
        # Hashed for another place in the chain: an entry moved here from elsewhere?
        recorded_as = _position_hashed_for(entry)
        if recorded_as is not None:
            return f"entry {seq} is out of order (it was recorded as entry {recorded_as})", seq
    return f"entry {seq} was edited (hash mismatch)", seq


def _position_hashed_for(entry: Mapping[str, Any], seq: int | None = None, window: int = 64) -> int | None:
    """The position ``entry``'s stored hash was made for, if it is ``seq`` (or, with None, within
    ``window`` of the entry's own number): a moved entry rather than an edited one."""
    digest = content_digest(_as_time(entry["at"]), entry["actor"], entry["action"], entry["target"],
                            entry["details"])
    own = int(entry["seq"])
    candidates = [seq] if seq is not None else [s for s in range(max(1, own - window), own + window + 1) if s != own]
    return next((s for s in candidates if entry_hash(entry["prev_hash"], s, digest) == entry["hash"]), None)


def to_json_line(entry: Mapping[str, Any]) -> str:
    """One exported entry: the chain fields, ``at`` as hashed, keys sorted."""
    record = {name: entry[name] for name in CHAIN_FIELDS}
    if isinstance(record["at"], datetime):
        record["at"] = canonical_time(record["at"])
    return orjson.dumps(record, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode()


def read_json_lines(lines: Iterable[str | bytes]) -> Iterator[dict[str, Any]]:
    """Entries from exported JSON lines (blank lines skipped); ValueError naming a bad line."""
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"line {number} is not JSON: {exc}") from None
        if not isinstance(entry, dict) or not set(CHAIN_FIELDS) <= entry.keys():
            raise ValueError(f"line {number} lacks the chain fields {', '.join(CHAIN_FIELDS)}")
        yield entry
