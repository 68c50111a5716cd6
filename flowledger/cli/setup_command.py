"""`flowledger setup`: make a store, or bring its tables up to date, without
running anything; and let roles that may not create use it, or only read it."""

from __future__ import annotations

from typing import Annotated

import typer

from flowledger.cli.options import StoreOption, store_url
from flowledger.cli.render import say
from flowledger.cli.store import open_engine
from flowledger.infrastructure.store_url import shown


def setup(
    ctx: typer.Context,
    store: StoreOption = None,
    grant: Annotated[list[str] | None, typer.Option(
        metavar="ROLE", help="A PostgreSQL role that may only read and write, to let use the "
                             "store (repeat for several).")] = None,
    grant_read: Annotated[list[str] | None, typer.Option(
        metavar="ROLE", help="A PostgreSQL role to let only read the store, opening it with "
                             "?mode=ro (repeat for several).")] = None,
) -> None:
    """Create the store's tables, or bring them up to date after an upgrade, as the
    role the store URL names (on PostgreSQL: one that may create in the schema,
    its owner). With --grant, also let ROLE use the store: reads and writes on its
    tables, now and on those later upgrades create; with --grant-read, reads alone.
    Runs no workflow."""
    url = store_url(ctx, store)
    asked = [(role, False) for role in grant or []] + [(role, True) for role in grant_read or []]
    with open_engine(url, writes="creates or brings up to date the store's tables") as engine:
        done = [(role, read_only, engine.grant(role, read_only)) for role, read_only in asked]
    say(f"store {shown(url)} is ready: its tables are this release's")
    for role, read_only, statements in done:
        what = "reading it (open it with ?mode=ro)" if read_only else "the use of it"
        say(f"granted {role!r} {what}:")
        for statement in statements:
            say(f"  {statement}")
