"""How values look on the terminal: the two consoles, ids, times, amounts and
any recorded value in a few characters, status colours, notes under a table,
JSON for scripts, and an error on one line."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn
from uuid import UUID

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.text import Text

import flowledger as fl
from flowledger.cli.exits import EXIT_PIPE_CLOSED
from flowledger.domain.phases import RunStatus
from flowledger.domain.secret import Secret
from flowledger.domain.session import SessionOutcome
from flowledger.domain.text import TIME_FORMAT  # every time the CLI prints, in UTC
from flowledger.domain.workflow import WorkflowStatus
from flowledger.read_side.queries import SHORT_ID


def _piped_width() -> int | None:
    """Output that is not a terminal (a file, a pipe) is not squeezed into 80
    columns: lines are as long as what they hold, unless $COLUMNS says a width."""
    if sys.stdout.isatty() or os.environ.get("COLUMNS"):
        return None  # the terminal's width, or $COLUMNS
    return 400


def pipe_closed() -> NoReturn:
    """The reader went away (`flowledger log | head`): stop quietly with the
    code of a command a closed pipe stopped, not 1 (a session not done).
    What is still buffered goes nowhere, instead of failing at exit."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    raise SystemExit(EXIT_PIPE_CLOSED)


class _Console(Console):
    def on_broken_pipe(self) -> None:
        pipe_closed()


out = _Console(highlight=False, width=_piped_width())
err = _Console(stderr=True, highlight=False)


def plain_layout() -> bool:
    """Not a terminal: tables without box drawing, no colour (rich leaves colour
    out by itself when it does not write to a terminal)."""
    return not out.is_terminal


# ------------------------------------------------------------------ values


def short(value: UUID | None) -> str:
    """The last 8 hex digits: run and session ids are time-ordered, so their
    first digits are the same for everything created in the same hour."""
    return value.hex[-SHORT_ID:] if value is not None else "-"


TIME_WIDTH = 19


def when(value: datetime | None) -> str:
    """A moment as every command prints it: UTC, to the second."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone(UTC)
    return value.strftime(TIME_FORMAT)


def plain(value: Any, limit: int = 80) -> str:
    """Any recorded value (payload, parameters, result) as short plain text."""
    if isinstance(value, UUID):
        text = short(value)
    elif isinstance(value, enum.Enum):
        text = str(value.value)
    elif isinstance(value, datetime):
        text = when(value)
    elif isinstance(value, Decimal):
        text = str(value)
    elif isinstance(value, list | tuple):
        text = "[" + ", ".join(plain(v, limit) for v in value) + "]"
    elif isinstance(value, dict):
        text = "{" + ", ".join(f"{k}: {plain(v, limit)}" for k, v in value.items()) + "}"
    else:
        text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def shown(value: Any) -> str:
    """A value in a table cell: text and tool calls as they are, others as `plain`."""
    if value is None:
        return "-"
    return str(value) if isinstance(value, str | fl.ToolCall) else plain(value, 200)


def call_text(tool: str, method: str, params: Any) -> str:
    """A recorded tool call as `tool.method(arg, key=value)`."""
    args = [plain(a) for a in (params or {}).get("args", [])]
    args += [f"{k}={plain(v)}" for k, v in (params or {}).get("kwargs", {}).items()]
    return f"{tool}.{method}({', '.join(args)})"


# ------------------------------------------------------------------ colours

# Statuses of sessions, workflows and runs: good is green, waiting on a limit
# or a person's say is yellow, anything else (failed, paused:..., open) is red.
_GOOD: tuple[str, ...] = (SessionOutcome.COMPLETED, WorkflowStatus.ACTIVE, RunStatus.ACTIVE,
                          RunStatus.COMMITTED)
_WAITING: tuple[str, ...] = (SessionOutcome.BUDGET_EXHAUSTED, WorkflowStatus.PAUSED)


def status_style(status: str) -> str:
    if status in _GOOD:
        return "green"
    return "yellow" if status in _WAITING else "red"


def say(text: str) -> None:
    """A line of a command's message: as it is, on one line (a terminal wraps
    it; a pipe or a script gets it whole, a digest never cut from its label)."""
    out.print(text, markup=False, highlight=False, soft_wrap=True)


def heading(text: str) -> None:
    """A line that heads what follows: a rule on a terminal, plain text otherwise."""
    if plain_layout():
        out.print(f"--- {text}", soft_wrap=True, markup=False)
    else:
        out.print(Rule(text, align="left"))


def note(label: str, text: str, style: str = "") -> None:
    """A long explanation under a table: one soft-wrapped line, never squeezed into a cell."""
    line = Text("  ")
    line.append(f"{label}: ", style=style or "bold")
    line.append(text)
    out.print(line, soft_wrap=True)


# ------------------------------------------------------------------ JSON


def json_value(value: Any) -> Any:
    if isinstance(value, UUID | Decimal):
        return str(value)  # a decimal as text: exact
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, Secret):
        return repr(value)  # its reference, never its value (flowledger holds none)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _jsonable(value)
    raise TypeError(f"cannot show a {type(value).__name__} as JSON")


def _jsonable(value: Any) -> Any:
    """`value` with what JSON cannot hold as it is made so: objects' fields read
    as they are (not deep-copied: `dataclasses.asdict` fails on a Secret), keys
    that are not text written as text (a payload may key by a tuple)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {_key(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    try:
        return str(json_value(key))  # an id, a time, a decimal: as its value is shown
    except TypeError:
        return str(key)


def print_json(value: Any) -> None:
    """Plain JSON on stdout (no colours, no wrapping): decimals and ids as strings."""
    _write(json.dumps(_jsonable(value), default=json_value, indent=2, ensure_ascii=False)
           + "\n")


def print_json_line(value: Any, **more: Any) -> None:
    """One JSON object on one line (JSON Lines), for output that streams;
    `more`: fields added to `value`'s."""
    _write(json.dumps({**_jsonable(value), **more} if more else _jsonable(value),
                      default=json_value, ensure_ascii=False) + "\n")


def _write(text: str) -> None:
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        pipe_closed()


# ------------------------------------------------------------------ progress


@contextmanager
def working(what: str, quiet: bool = False) -> Iterator[None]:
    """A spinner with the time elapsed on stderr while long work goes on, so that
    a long recovery or session does not look hung; only on a terminal."""
    if quiet or not err.is_terminal:
        yield
        return
    with Progress(SpinnerColumn(), TextColumn(what + "..."), TimeElapsedColumn(),
                  console=err, transient=True):
        yield


# ------------------------------------------------------------------ errors


def one_line(message: str) -> str:
    """A multi-line message (e.g. a DefinitionError's list of problems) on one line."""
    lines = [line.strip().removeprefix("- ") for line in message.splitlines() if line.strip()]
    return " ".join([*lines[:1], "; ".join(lines[1:])]).strip() if lines else message


def print_error(message: str) -> None:
    """`error: ...` on stderr, on one line."""
    err.print(Text(f"error: {one_line(message)}", style="red"), soft_wrap=True)
