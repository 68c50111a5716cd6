"""`flowledger copy --from URL --to URL`: move a whole log to another store."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import flowledger as fl
from flowledger.cli.render import out, print_json


@contextmanager
def _copy_progress() -> Iterator[Callable[[int, int], None]]:
    with Progress(TextColumn("copying"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("events"), TimeElapsedColumn(), console=out) as bar:
        task = bar.add_task("copy", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def copy(
    source: Annotated[str, typer.Option("--from", metavar="URL",
                                        help="The store to copy from (it is only read).")],
    target: Annotated[str, typer.Option("--to", metavar="URL",
                                        help="An empty store to copy into.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Copy a whole log, in position order, into an empty store and rebuild its
    projections there (e.g. from an SQLite file to PostgreSQL)."""
    started = time.perf_counter()
    if as_json:
        copied = fl.copy_store(source, target)
    else:
        with _copy_progress() as progress:
            copied = fl.copy_store(source, target, progress)
    seconds = time.perf_counter() - started
    if as_json:
        print_json({"events": copied, "seconds": round(seconds, 3), "to": target})
        return
    out.print(f"Copied {copied:,} events to {target} in {seconds:.2f} s and rebuilt its "
              "projections.")
