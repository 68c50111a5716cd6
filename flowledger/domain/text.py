"""Text the log can hold: UTF-8, so no lone surrogates (DESIGN §1.7).

Python strings may hold lone surrogates (`"\\ud800"`, from broken JSON escapes
or `errors="surrogateescape"`), which UTF-8 cannot encode. Names and ids a
user hands in are refused with `unstorable`'s answer (which also refuses NUL);
free text the engine must record whatever it holds (an exception's message)
goes through `recordable`.
"""

from __future__ import annotations

# An exception's text kept in the log: enough for a traceback's last line and
# then some, never megabytes.
MAX_RECORDED_TEXT = 4000


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


def one_line(value: object) -> str:
    """`str(value)` with its whitespace runs, newlines too, made single spaces:
    a driver's error carries DETAIL and HINT lines, and a log line or a
    message that quotes it holds one line."""
    return " ".join(str(value).split())
