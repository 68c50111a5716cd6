"""What a store records about how it is written, checked at every opening (ADR 0022, 0023).

`fl_store_format` holds a few named values, written once when the store is
created (or first opened by a release that has them):

* `cipher`: `aes-gcm` or `none`; `key_check`: a known text encrypted with the
  store's key, so a wrong key is told at opening, not at the first read;
* `compression`: `zlib` or `none`;
* `chain`: `hmac-sha256` or `sha256`; `chain_check`: a value only the chain's
  key reproduces; `chain_from`: the first position the chain covers (1 for a
  new store; for a store created before the chain, the next position then);
  `store_id`: random, bound into the chain's first link;
* `tables`: the version of the tables, indexes and functions (`TABLES_VERSION`)
  that a release opening the store last created in full (ADR 0013): a release
  whose version it is, or an older one, creates nothing, so a role that may
  only read and write can open the store; `tables_objects`: the names of the
  store's objects then (one dropped by hand since is made again).

A store written encrypted refuses to open without its key, one written in
clear refuses a key, and a keyed chain refuses a wrong or missing chain key:
an engine that opened anyway would write events the store's other readers
cannot read, or links that break its chain.
"""

from __future__ import annotations

import shlex
import uuid
from dataclasses import dataclass
from typing import Any

from eventsourcing.persistence import Cipher, Compressor
from eventsourcing.utils import Environment, resolve_topic

from flowledger.domain.errors import EncryptionKeyError, StoreInClear
from flowledger.infrastructure.encryption import (
    CHAIN_KEY_ENV,
    CIPHER_TOPIC,
    COMPRESSOR_TOPIC,
    KEY_ENV,
    NEW_KEY_HINT,
    Protection,
)
from flowledger.infrastructure.hash_chain import CHAIN_TABLE, CREATE_CHAIN, Chain
from flowledger.infrastructure.store import LogStore
from flowledger.infrastructure.store_url import shown

FORMAT_TABLE = "fl_store_format"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {FORMAT_TABLE} (name TEXT PRIMARY KEY, "
           "value TEXT NOT NULL)")
_KEY_CHECK_TEXT = b"flowledger cipher key check v1"

# What this release's tables, indexes, functions and triggers are. Raise it
# whenever any of them changes (a test compares the catalog a new store gets
# with the one recorded for this version): stores whose recorded version is
# lower are brought up to date at their next opening by a role that may create.
TABLES_VERSION = 5
TABLES = "tables"
TABLES_OBJECTS = "tables_objects"  # what of ours the schema held when it was recorded


@dataclass(frozen=True)
class StoreFormat:
    encrypted: bool
    compressed: bool
    chain_keyed: bool
    chain_from: int
    store_id: str
    key_check: str | None = None
    chain_check: str | None = None
    recorded: bool = True  # False: a read-only store that predates the record
    # The store a copy into this one is carrying, until it ends (copying.py).
    copying_from: str | None = None

    def as_rows(self) -> list[tuple[str, str]]:
        rows = [("cipher", "aes-gcm" if self.encrypted else "none"),
                ("compression", "zlib" if self.compressed else "none"),
                ("chain", "hmac-sha256" if self.chain_keyed else "sha256"),
                ("chain_from", str(self.chain_from)), ("store_id", self.store_id)]
        if self.key_check is not None:
            rows.append(("key_check", self.key_check))
        if self.chain_check is not None:
            rows.append(("chain_check", self.chain_check))
        return rows

    @classmethod
    def from_rows(cls, rows: dict[str, str]) -> StoreFormat:
        return cls(encrypted=rows.get("cipher") == "aes-gcm",
                   compressed=rows.get("compression") == "zlib",
                   chain_keyed=rows.get("chain") == "hmac-sha256",
                   chain_from=int(rows.get("chain_from", "1")),
                   store_id=rows.get("store_id", ""), key_check=rows.get("key_check"),
                   chain_check=rows.get("chain_check"), copying_from=rows.get(COPYING))

    def chain(self, key: bytes | None) -> Chain:
        return Chain(key, self.store_id, self.chain_from)


def make_cipher(key: str) -> Cipher:
    """The library's AES-GCM cipher for a base64 key."""
    cipher_class: type[Cipher] = resolve_topic(CIPHER_TOPIC)
    return cipher_class(Environment(env={"CIPHER_KEY": key}))


def make_compressor() -> Compressor:
    compressor_class: type[Compressor] = resolve_topic(COMPRESSOR_TOPIC)
    return compressor_class()


# The rows that mark a store a copy is still filling: the source's URL as
# shown, and its store id (what tells one log from another, however named).
COPYING = "copying_from"
COPYING_ID = "copying_store_id"
# Kept once a copy ended: the same copy run again knows its own work.
COPIED = "copied_from"
COPIED_ID = "copied_store_id"
COPIED_EVENTS = "copied_events"


def mark_copying(c: Any, source: str, source_id: str) -> None:
    c.executemany(f"INSERT INTO {FORMAT_TABLE} VALUES (?, ?)",
                  [(COPYING, source), (COPYING_ID, source_id)])


def unmark_copying(c: Any, events: int) -> None:
    """The copy ended: the mark that kept engines out becomes the record of
    where the log came from, and of how many events the copy wrote. A mark
    already lifted (the same copy, run at once, ended first) is left as that
    one recorded it."""
    c.execute(f"SELECT 1 FROM {FORMAT_TABLE} WHERE name = ?", (COPYING,))
    if not c.fetchall():
        return
    c.execute(f"DELETE FROM {FORMAT_TABLE} WHERE name IN (?, ?, ?)",
              (COPIED, COPIED_ID, COPIED_EVENTS))
    c.execute(f"UPDATE {FORMAT_TABLE} SET name = ? WHERE name = ?", (COPIED, COPYING))
    c.execute(f"UPDATE {FORMAT_TABLE} SET name = ? WHERE name = ?", (COPIED_ID, COPYING_ID))
    c.execute(f"INSERT INTO {FORMAT_TABLE} VALUES (?, ?)", (COPIED_EVENTS, str(events)))


def recorded_tables(c: Any) -> tuple[int, set[str]]:
    """The tables version the store records (0: none recorded), and the objects
    of ours it held then."""
    c.execute(f"SELECT name, value FROM {FORMAT_TABLE} WHERE name IN (?, ?)",
              (TABLES, TABLES_OBJECTS))
    rows = {str(name): str(value) for name, value in c.fetchall()}
    version = rows.get(TABLES, "")
    objects = rows.get(TABLES_OBJECTS, "")
    return (int(version) if version.isdigit() else 0), set(objects.split(",") if objects else ())


def record_tables_version(c: Any, objects: str) -> None:
    """Say that this release's tables all exist now, and which objects of ours
    the store holds (`objects`, as the store names them); a newer release's
    record stays."""
    if recorded_tables(c)[0] > TABLES_VERSION:
        return
    c.execute(f"DELETE FROM {FORMAT_TABLE} WHERE name IN (?, ?)", (TABLES, TABLES_OBJECTS))
    c.executemany(f"INSERT INTO {FORMAT_TABLE} VALUES (?, ?)",
                  [(TABLES, str(TABLES_VERSION)), (TABLES_OBJECTS, objects)])


# Noted when an engine finds the projections past the log's head (the log lost
# events outside flowledger): "FURTHEST HEAD". Appends made after would hide it
# (they move the head and the projections on); the note stays until a rebuild.
CUT_BACK = "log_cut_back"


def note_cut_back(c: Any, furthest: int, head: int) -> None:
    clear_cut_back(c)
    c.execute(f"INSERT INTO {FORMAT_TABLE} VALUES (?, ?)", (CUT_BACK, f"{furthest} {head}"))


def cut_back_of(noted: str | None) -> tuple[int, int] | None:
    """The note's (furthest, head), or None."""
    if noted is None:
        return None
    furthest, _, head = noted.partition(" ")
    return int(furthest), int(head)


def clear_cut_back(c: Any) -> None:
    c.execute(f"DELETE FROM {FORMAT_TABLE} WHERE name = ?", (CUT_BACK,))


def read_format(c: Any) -> dict[str, str]:
    c.execute(f"SELECT name, value FROM {FORMAT_TABLE}")
    return {str(n): str(v) for n, v in c.fetchall()}


def _recorded(recorder: LogStore) -> dict[str, str]:
    """The recorded format (empty: none yet), read without the write lock."""
    try:
        with recorder.reading() as c:
            return read_format(c)
    except Exception:  # no such table yet (each store's driver has its own error)
        return {}


def settle_format(recorder: LogStore, asked: Protection, url: str,
                  read_only: bool) -> StoreFormat:
    """The store's recorded format (recorded now from `asked` if it has none),
    checked against `asked`: raises EncryptionKeyError on any mismatch."""
    rows = _recorded(recorder)
    if not rows and not read_only:
        # Under the write lock: of two processes creating a store at once, one
        # records its format whole, the other finds it recorded.
        with recorder.writing() as c:
            c.execute(_CREATE)
            c.execute(CREATE_CHAIN)
        with recorder.writing() as c:
            if not read_format(c):
                _refuse_a_chain_without_its_record(c, url)
                new = _new_format(asked, recorder.max_position(c))
                c.executemany(f"INSERT INTO {FORMAT_TABLE} VALUES (?, ?)", new.as_rows())
        rows = _recorded(recorder)
    if rows:
        found = StoreFormat.from_rows(rows)
        _refuse_a_record_without_its_chain(recorder, found, url)
    else:  # a read-only store that predates the record: in clear, no chain
        with recorder.reading() as c:  # a read of its own: a missing table aborts it
            _refuse_a_chain_without_its_record(c, url)
        with recorder.reading() as c:
            head = recorder.max_position(c)
        found = StoreFormat(False, False, False, head + 1, "", recorded=False)
    check_format(found, asked, url)
    return found


def _refuse_a_chain_without_its_record(c: Any, url: str) -> None:
    """A store with no format record is one written before the record existed,
    and before the chain: its chain holds no link. One whose chain holds links
    lost its record outside flowledger, and taking it for such an old store
    would record a new format over it (in clear, its chain starting at the
    head): what was edited before would verify (ADR 0023)."""
    if _has_links(c):  # (None: no chain table, a store from before the chain)
        raise format_record_gone(url)


def _refuse_a_record_without_its_chain(recorder: LogStore, found: StoreFormat,
                                       url: str) -> None:
    """A store that records a chain, and holds events the chain covers, must
    hold links: a chain table dropped or emptied outside flowledger is said so
    (appends failed on it with what read like an outage)."""
    with recorder.reading() as c:  # the head first: a missing table ends the read
        intact = recorder.max_position(c) < found.chain_from or _has_links(c)
    if not intact:
        raise EncryptionKeyError(
            f"store {url!r} records a tamper-evident chain from position {found.chain_from}, "
            f"and its log holds events there, but its chain table ({CHAIN_TABLE}) is gone or "
            "empty: it was removed outside flowledger. Nothing was read or written; restore "
            "the store from a backup (verify the backup first)")


def _has_links(c: Any) -> bool | None:
    """Whether the chain table holds a link; None when there is no chain table
    (any other failure is the store's, raised as it is)."""
    try:
        c.execute(f"SELECT 1 FROM {CHAIN_TABLE} LIMIT 1")
        return bool(c.fetchall())
    except Exception as e:
        if CHAIN_TABLE not in str(e):
            raise
        return None


def format_record_gone(url: str) -> EncryptionKeyError:
    return EncryptionKeyError(
        f"store {url!r} holds a tamper-evident chain but its format record "
        f"({FORMAT_TABLE}) is gone: it was removed outside flowledger, and with it what "
        "the store's events and chain are checked against. Nothing was read or written; "
        "restore the store from a backup (verify the backup first)")


def _new_format(asked: Protection, head: int) -> StoreFormat:
    """A new store is written as asked; a store that already holds events
    (written before this record existed) was written in clear, uncompressed,
    and its chain starts with the next append."""
    legacy = head > 0
    encrypted = asked.encrypted and not legacy
    chain_key = asked.hmac_key()
    if legacy and asked.chain_key is None:
        chain_key = None  # a key derived from a cipher key this store does not use
    fmt = StoreFormat(encrypted=encrypted, compressed=bool(asked.compress) and not legacy,
                      chain_keyed=chain_key is not None, chain_from=head + 1,
                      store_id=uuid.uuid4().hex)
    key_check = (make_cipher(asked.cipher_key).encrypt(_KEY_CHECK_TEXT).hex()
                 if encrypted and asked.cipher_key else None)
    return StoreFormat(fmt.encrypted, fmt.compressed, fmt.chain_keyed, fmt.chain_from,
                       fmt.store_id, key_check, fmt.chain(chain_key).check_value())


def check_format(found: StoreFormat, asked: Protection, url: str) -> None:
    where = f"store {url!r}"
    if found.encrypted and not asked.encrypted:
        raise EncryptionKeyError(
            f"{where} is encrypted and no key was given: set {KEY_ENV} (or pass "
            "Engine(..., cipher_key=...)) to the key it was written with. Nothing was read")
    if asked.encrypted and not found.encrypted:
        raise StoreInClear(
            f"{where} was written in clear, and a cipher key was given ({asked.key_source}): "
            "its events cannot be encrypted where they are. To encrypt it, copy it into a "
            f"new store with {KEY_ENV} set to the key: flowledger copy --from "
            f"{shlex.quote(shown(url))} --to NEW_URL (or open it without a key). Nothing was "
            "written")
    if found.encrypted and asked.cipher_key is not None and not found.key_check:
        raise EncryptionKeyError(
            f"{where} is encrypted, and its format record ({FORMAT_TABLE}) lacks the check "
            "of its key (key_check): it was edited outside flowledger, so no key can be told "
            "right or wrong. Nothing was read or written; restore the store from a backup")
    if found.encrypted and asked.cipher_key is not None:
        try:
            plain = make_cipher(asked.cipher_key).decrypt(bytes.fromhex(found.key_check or ""))
        except ValueError:
            plain = b""
        if plain != _KEY_CHECK_TEXT:
            raise EncryptionKeyError(
                f"{where} was encrypted with another key than the one given "
                f"({asked.key_source}): give the key it was written with. Nothing was read "
                "or written")
    if asked.compress is not None and asked.compress != found.compressed:
        state = "compressed (zlib)" if found.compressed else "not compressed"
        raise EncryptionKeyError(
            f"{where} is {state}, and compression was asked {'on' if asked.compress else 'off'}"
            ": a store keeps the compression it was created with. Leave it unset to follow "
            "the store, or copy the log into a new store to change it")
    check_chain_key(found, asked.hmac_key(), where)


def check_chain_key(found: StoreFormat, key: bytes | None, where: str) -> None:
    """The chain's key must be the store's: links written with another would break it."""
    if not found.recorded:
        return
    if found.chain_keyed and key is None:
        raise EncryptionKeyError(
            f"{where} has a keyed chain (HMAC) and no key was given: set {CHAIN_KEY_ENV} "
            f"(or {KEY_ENV}, for an encrypted store) to the key it was written with")
    if not found.chain_keyed and key is not None:
        raise EncryptionKeyError(
            f"{where} has an unkeyed chain, and a chain key was given: a store keeps the "
            f"chain it was created with. Unset {CHAIN_KEY_ENV}, or copy the log into a new "
            "store to key its chain")
    if found.chain(key).check_value() != found.chain_check:
        raise EncryptionKeyError(
            f"{where}: the chain key given is not the one its chain was written with (or "
            f"its format record was edited); give the right {CHAIN_KEY_ENV}. {NEW_KEY_HINT}"
            if key is not None else
            f"{where}: its chain's check value does not match: its format record "
            f"({FORMAT_TABLE}) was edited")
