"""The log's tamper-evident chain (ADR 0023).

Every event appended from the chain's start on has a link in `fl_chain`,
written in the append's own transaction: (position, the previous chained
event's position, digest), where

    digest = HMAC-SHA256(key, previous digest || position || previous position
                              || stream || version || topic || stored body)

(SHA-256 of the same bytes when the store has no key). The chain follows the
events in position order over whatever positions the store gave (PostgreSQL's
can have gaps), and a link names its predecessor, so `verify` tells a changed,
a removed and an inserted event apart and names its position. Bodies are
hashed as stored (encrypted, when the store is): verifying needs the chain's
key, never the cipher's plaintext.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Iterable, Sequence

from flowledger.infrastructure.store import Row

CHAIN_TABLE = "fl_chain"
CREATE_CHAIN = (f"CREATE TABLE IF NOT EXISTS {CHAIN_TABLE} (position INTEGER PRIMARY KEY, "
                "previous INTEGER NOT NULL, digest BLOB NOT NULL)")
HEAD_SQL = f"SELECT position, digest FROM {CHAIN_TABLE} ORDER BY position DESC LIMIT 1"
INSERT_SQL = f"INSERT INTO {CHAIN_TABLE} VALUES (?, ?, ?)"

_HEADER = struct.Struct(">qqq")  # position, previous position, version
_LENGTHS = struct.Struct(">III")  # stream, topic, body


Link = tuple[int, int, bytes]  # position, previous position, digest


class Chain:
    """Computes links; `key` None: an unkeyed SHA-256 chain."""

    def __init__(self, key: bytes | None, store_id: str, starts_at: int) -> None:
        self.key = key
        self.starts_at = starts_at
        # The first link's predecessor: bound to this store and to where the
        # chain starts, so neither can be changed without breaking it.
        self.genesis = self._digest(b"flowledger chain genesis", store_id.encode()
                                    + struct.pack(">q", starts_at))

    @property
    def keyed(self) -> bool:
        return self.key is not None

    def _digest(self, *parts: bytes) -> bytes:
        if self.key is None:
            h = hashlib.sha256()
            for part in parts:
                h.update(part)
            return h.digest()
        m = hmac.new(self.key, digestmod=hashlib.sha256)
        for part in parts:
            m.update(part)
        return m.digest()

    def digest(self, previous_digest: bytes, position: int, previous: int, row: Row) -> bytes:
        stream, version, topic, state = row
        stream_b, topic_b = stream.encode(), topic.encode()
        return self._digest(previous_digest, _HEADER.pack(position, previous, version),
                            _LENGTHS.pack(len(stream_b), len(topic_b), len(state)),
                            stream_b, topic_b, bytes(state))

    def links(self, head: tuple[int, bytes] | None, positions: Sequence[int],
              rows: Sequence[Row]) -> list[Link]:
        """The links of appended `rows` at `positions`, after the chain's `head`
        (its last link's position and digest; None: the chain is empty)."""
        previous, digest = head if head is not None else (0, self.genesis)
        out: list[Link] = []
        for position, row in zip(positions, rows, strict=True):
            digest = self.digest(digest, position, previous, row)
            out.append((position, previous, digest))
            previous = position
        return out

    def check_value(self) -> str:
        """What the store records to tell, at opening, whether a key is this chain's."""
        return self._digest(b"flowledger chain key check", self.genesis).hex()


def head_of(rows: Iterable[tuple[int, bytes]]) -> tuple[int, bytes] | None:
    """The chain's head from HEAD_SQL's result rows."""
    for position, digest in rows:
        return int(position), bytes(digest)
    return None
