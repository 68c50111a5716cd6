"""Text the log can hold: UTF-8, so no lone surrogates (DESIGN §1.7).

Python strings may hold lone surrogates (`"\\ud800"`, from broken JSON escapes
or `errors="surrogateescape"`), which UTF-8 cannot encode. Names and ids a
user hands in are refused with `unstorable`'s answer (which also refuses NUL
and the separator ids are joined with; names also `unfit_name`'s, by length);
free text the engine must record whatever it holds (an exception's message)
goes through `recordable`.
"""

from __future__ import annotations

from datetime import UTC, datetime

# An exception's text kept in the log: enough for a traceback's last line and
# then some, never megabytes.
MAX_RECORDED_TEXT = 4000
# What joins names into stream ids (domain/ids.py): no name or id may hold it,
# or ("a\x1fb", "c") and ("a", "b\x1fc") would be one stream.
SEPARATOR = "\x1f"
# A workflow's, topic's, handler's or tool's name, in UTF-8 bytes: names go into
# the projections' keys and indexes, whose rows PostgreSQL holds to about 2.7 kB.
MAX_NAME_BYTES = 200


def unencodable(text: str) -> str | None:
    """Why `text` cannot be stored, or None when it can."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        return (f"holds {text[e.start]!r} at position {e.start}, a lone surrogate that "
                "UTF-8 cannot encode (clean it, e.g. with "
                "text.encode('utf-8', 'replace').decode())")
    return None


def unstorable(text: str) -> str | None:
    """Why `text` cannot be a name, id or label, or None when it can. These are
    kept in the projections' text columns too, which on PostgreSQL cannot hold
    a NUL character: refused on every store, so that a log moves between
    stores unchanged (ADR 0014, 0017). Payloads and state are not text there."""
    why = unencodable(text)
    if why is not None:
        return why
    at = text.find("\x00")
    if at >= 0:
        return (f"holds a NUL character ('\\x00') at position {at}, which a PostgreSQL "
                "store cannot keep in text (remove it)")
    at = text.find(SEPARATOR)
    if at >= 0:
        return (f"holds the unit separator ('\\x1f') at position {at}, which flowledger "
                "keeps for joining names into ids (remove it)")
    return None


def unfit_name(name: str) -> str | None:
    """Why `name` cannot name a workflow, topic, handler or tool, or None."""
    why = unstorable(name)
    if why is not None:
        return why
    size = len(name.encode())
    if size > MAX_NAME_BYTES:
        return f"is {size:,} bytes long, over the {MAX_NAME_BYTES} bytes a name may have"
    return None


def recordable(text: str, limit: int = MAX_RECORDED_TEXT) -> str:
    """`text` as the log can always hold it: unencodable characters and NUL
    escaped, bounded."""
    if unencodable(text) is not None:
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    text = text.replace("\x00", "\\x00")
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text) - limit:,} more characters)"
    return text


# Every time flowledger shows a person: UTC, to the second (the CLI's tables
# say "(UTC)" in their headers; a message marks it Z).
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def shown_time(moment: datetime | None) -> str:
    """A moment as a message shows it: `2026-12-01 22:15:56Z` ("-" for none)."""
    if moment is None:
        return "-"
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return f"{moment:{TIME_FORMAT}}Z"


def one_line(value: object) -> str:
    """`str(value)` with its whitespace runs, newlines too, made single spaces:
    a driver's error carries DETAIL and HINT lines, and a log line or a
    message that quotes it holds one line."""
    return " ".join(str(value).split())
