"""`flowledger copy --from URL --to URL`: move a whole log to another store."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Annotated, Any

import typer

from flowledger.cli.exits import EXIT_INTERRUPTED, EXIT_NOT_DONE, CommandError
from flowledger.cli.render import err, print_error, print_json, say
from flowledger.cli.views import progress_bar
from flowledger.engine.engine import CopyReport, copy_store_report
from flowledger.infrastructure.encryption import KEY_ENV, decode_key
from flowledger.infrastructure.store_url import shown


def _key_from(name: str) -> str:
    """The key in environment variable `name` ("" when it is unset: no key)."""
    if not name:
        raise CommandError("name an environment variable that holds the key")
    value = os.environ.get(name, "")
    if not value and name != KEY_ENV:
        raise CommandError(f"environment variable {name} is not set: set it to the cipher "
                           "key (base64; `flowledger keygen` makes one)")
    if value:
        decode_key(value, f"the key in environment variable {name}")  # named as given
    return value


def copy(
    source: Annotated[str, typer.Option("--from", metavar="URL",
                                        help="The store to copy from (it is only read).")],
    target: Annotated[str, typer.Option("--to", metavar="URL",
                                        help="An empty store to copy into.")],
    from_key_env: Annotated[str | None, typer.Option(
        metavar="NAME", help="The environment variable holding the source's cipher key "
                             f"(default: {KEY_ENV}, which a source in clear leaves for the "
                             "copy).")] = None,
    to_key_env: Annotated[str | None, typer.Option(
        metavar="NAME", help="The environment variable holding the copy's cipher key (a new "
                             "key rotates it; default: the source's key, or for a source "
                             "in clear FLOWLEDGER_CIPHER_KEY's, if set).")] = None,
    to_clear: Annotated[bool, typer.Option(
        "--to-clear", help="Write the copy in clear (decrypt it).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Copy a whole log, in position order, into an empty store and rebuild its
    projections there (e.g. from an SQLite file to PostgreSQL). The source's chain
    is verified first. With --to-key-env, the copy is encrypted with another key:
    that is how a key is rotated (or a store in clear encrypted)."""
    # Not named, the key is the engine's own variable's: copy_store reads it, and
    # a source in clear with it set is a store to encrypt. Named, it is the source's.
    source_key = None if from_key_env is None else _key_from(from_key_env)
    target_key = "" if to_clear else None if to_key_env is None else _key_from(to_key_env)
    started = time.perf_counter()
    seen = [0, 0]  # events copied, events in all: what an interrupt says

    def noted(shown: Callable[[int, int], None]) -> Callable[[int, int], None]:
        def progress(done: int, total: int) -> None:
            seen[:] = [done, total]
            shown(done, total)
        return progress

    terminated: list[int] = []  # SIGTERM, once it came
    try:
        with _terminated_as_interrupted(terminated):
            if as_json:
                report = copy_store_report(source, target, noted(lambda done, total: None),
                                           source_key=source_key, target_key=target_key)
            else:
                with progress_bar("copying") as progress:
                    report = copy_store_report(source, target, noted(progress),
                                               source_key=source_key, target_key=target_key)
    except KeyboardInterrupt:
        # At least: a batch may have gone in as the signal came, before it was told.
        where = (f"with at least {seen[0]:,} of about {seen[1]:,} events in"
                 if seen[0] < seen[1]
                 else "once its events were in" if seen[1]
                 else "before this run copied any event")
        print_error(f"the copy into {shown(target)} was interrupted {where}. Run the same "
                    "command again: it goes on where this one stopped, or finds the copy whole")
        raise typer.Exit(128 + signal.SIGTERM if terminated else EXIT_INTERRUPTED) from None
    # The copy is whole: a Ctrl-C now would only cut its report short.
    with _not_interrupted():
        seconds = time.perf_counter() - started
        copied, held = report.events, report.open_sessions
        # The key the copy was written with came from the first of these named.
        sealed = (f"encrypted with {to_key_env or from_key_env or KEY_ENV}'s key"
                  if report.encrypted else "in clear" if to_clear else None)
        if as_json:
            print_json({"events": copied, "written": report.written,
                        "seconds": round(seconds, 3), "to": shown(target),
                        "open_sessions": list(held), "still_held": list(report.still_held)})
        else:
            _say_copied(report, target, seconds, sealed)
    if report.still_held:
        raise typer.Exit(EXIT_NOT_DONE)


def _say_copied(report: CopyReport, target: str, seconds: float, sealed: str | None) -> None:
    """What the copy made, and the sessions open in it, for a person."""
    copied, held = report.events, report.open_sessions
    if copied and not report.written:
        say(f"{shown(target)} holds this copy already, whole: its {copied:,} events (no event "
            "was written now), its projections caught up.")
    else:
        say(f"Verified the source's chain, copied {copied:,} events to {shown(target)} in "
            f"{seconds:.2f} s{f' ({sealed})' if sealed else ''} and rebuilt its projections. "
            "Its chain is its own: anchor its head anew (`verify` on it prints it); the "
            "source's no longer applies.")
    running = report.still_held
    if running:
        err.print(f"note: sessions of {', '.join(running)} are held in the source by "
                  "processes that still run: their work from now on goes to the source "
                  "alone, and the two logs go apart. Stop them (their sessions then close "
                  "or are left as a crash leaves them), then copy again into a new store.",
                  soft_wrap=True, markup=False, highlight=False)
    left = [name for name in held if name not in running]
    if left:
        err.print(f"note: sessions were open in the source ({', '.join(left)}), and are open "
                  "in the copy as the source had them; their holders run no more (or "
                  "on another host, which this cannot tell): a run or recover on the copy "
                  "continues their sessions.", soft_wrap=True, markup=False, highlight=False)


def _terminated_as_interrupted(came: list[int]) -> contextlib.AbstractContextManager[None]:
    """SIGTERM stops the copy as Ctrl-C does (a KeyboardInterrupt where it is,
    the copy resumable), where it killed the process without a word; `came`
    is given the signal once it came."""
    def interrupt(signum: int, frame: object) -> None:
        came.append(signum)
        raise KeyboardInterrupt

    return _handling(signal.SIGTERM, interrupt)


def _not_interrupted() -> contextlib.AbstractContextManager[None]:
    """SIGINT ignored meanwhile: the copy is whole, a Ctrl-C would only cut its
    report short."""
    return _handling(signal.SIGINT, signal.SIG_IGN)


@contextlib.contextmanager
def _handling(signum: int, handler: Any) -> Iterator[None]:
    """`handler` for `signum` meanwhile (from the main thread, where signals
    are set; elsewhere nothing changes), then as it was."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signum, handler)
    try:
        yield
    finally:
        if before is not None:  # None: set outside Python, and not to be set back from it
            signal.signal(signum, before)
