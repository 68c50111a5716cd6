"""What the commands take: the global --store, the options several commands
share, and the checks that turn a value typed in into what the engine takes.

An option that takes one of a fixed set of values takes it as text, checked
(by `check_choice`) against the engine's own list, so that a wrong one is a
one-line error (exit 2) that lists the right ones, like every other mistake.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated

import typer

from flowledger.cli.exits import CommandError
from flowledger.domain.errors import InvalidArgument
from flowledger.domain.session import Trigger
from flowledger.infrastructure.store_url import DEFAULT_STORE, STORE_ENV
from flowledger.read_side.queries import amount

TRIGGERS: tuple[str, ...] = tuple(t.value for t in Trigger)


@dataclass
class GlobalOptions:
    store: str
    position: int | None = None  # `flowledger at POSITION ...`


def _print_version(value: bool) -> None:
    if value:
        from flowledger import __version__

        typer.echo(f"flowledger {__version__}")
        raise typer.Exit()


def global_options(
    ctx: typer.Context,
    store: Annotated[str, typer.Option(
        "--store", metavar="URL", envvar=STORE_ENV,
        help="Store URL: sqlite:///file.db, sqlite:////abs/file.db, "
             "postgresql://user@host:5432/dbname[?schema=NAME] or memory://; add ?mode=ro "
             "(or &mode=ro) to open it read-only.",
    )] = DEFAULT_STORE,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version,
        help="Print flowledger's version and exit.")] = False,
) -> None:
    ctx.obj = GlobalOptions(store)


StoreOption = Annotated[
    str | None,
    typer.Option("--store", metavar="URL",
                 help=f"Store URL (overrides the global --store and ${STORE_ENV})."),
]
TargetArgument = Annotated[
    str,
    typer.Argument(metavar="PATH_OR_MODULE", show_default=False,
                   help="A .py file or a dotted module name that defines register(engine), "
                        "or module-level fl.Workflow objects (and TOOLS)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts instead "
                                                          "of tables.")]


def store_url(ctx: typer.Context, store: str | None) -> str:
    """The command's own --store, else the global one (or $FLOWLEDGER_STORE)."""
    return store or ctx.ensure_object(GlobalOptions).store


def at_options(
    ctx: typer.Context,
    position: Annotated[int, typer.Argument(
        metavar="POSITION", show_default=False,
        help="A log position (see `flowledger log`); 0 is the empty log.")],
) -> None:
    ctx.ensure_object(GlobalOptions).position = position


def at_position(ctx: typer.Context) -> int:
    """The POSITION of `flowledger at POSITION ...`."""
    at = ctx.ensure_object(GlobalOptions).position
    assert at is not None
    return at


def choices(valid: Sequence[str]) -> str:
    """The metavar that shows an option's values in the help, as click.Choice would."""
    return "[" + "|".join(valid) + "]"


def check_amount(value: str | None, option: str) -> None:
    """An amount typed for `option`, refused (by the engine's own rule) before
    anything is loaded or written, under the option's own name."""
    try:
        amount(value, option)
    except InvalidArgument as e:
        raise CommandError(f"{e}; nothing was run or written") from None


def parse_time(value: str | None, option: str) -> datetime | None:
    """An ISO date or date-time; without a zone it is UTC."""
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{option} {value!r} is not a date or time; use e.g. 2026-03-01 or "
                           "2026-03-01T09:30") from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
