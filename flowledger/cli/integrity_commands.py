"""`flowledger verify` and `flowledger keygen`: prove the log unedited, make a key
(DESIGN §9, ADR 0022 and 0023)."""

from __future__ import annotations

from typing import Annotated

import typer

import flowledger as fl
from flowledger.cli.exits import EXIT_NOT_DONE
from flowledger.cli.options import JsonOption, StoreOption, store_url
from flowledger.cli.render import print_json, say


def verify(
    ctx: typer.Context,
    store: StoreOption = None,
    expect: Annotated[str | None, typer.Option(
        metavar="DIGEST", help="A head digest printed by an earlier verify (kept outside "
                               "the store): it must still be in the chain.")] = None,
    log_only: Annotated[bool, typer.Option(
        "--log-only", help="Check the log and its chain alone, not the projections (which "
                           "take a second read of the log).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Prove the log was not edited: walk every event and its chain link once, in
    position order, and name the position of any changed, removed, inserted or
    moved event; then fold the log again and compare every projection table with
    it (the engine acts on pending work). Prints the head digest to keep
    elsewhere (--expect). Exit 1 if anything was found. Needs the store's key
    (FLOWLEDGER_CIPHER_KEY, or FLOWLEDGER_CHAIN_KEY)."""
    found = fl.verify_store(store_url(ctx, store), expect=expect,  # refuses a missing store
                            projections=not log_only)
    in_log = [p for p in found.problems if p.kind != "projection"]
    in_projections = [p for p in found.problems if p.kind == "projection"]
    if as_json:
        print_json({"ok": found.ok, "events": found.events, "covered_from": found.covered_from,
                    "uncovered": found.uncovered, "keyed": found.keyed,
                    "head": {"position": found.head_position, "digest": found.head_digest},
                    "expected_found": found.expected_found,
                    "projection_rows": found.projection_rows,
                    "problems": [{"position": p.position, "kind": p.kind, "detail": p.detail}
                                 for p in found.problems]})
    else:
        for problem in in_log:
            say(f"position {problem.position}: {problem.kind}: {problem.detail}")
        for problem in in_projections:
            say(f"projection: {problem.detail}")
        if found.expected_found is False and in_log:  # else the last line says it
            say(f"the expected digest {expect} is not in the chain: the events up to "
                "where it was taken were changed or removed")
        kind = "HMAC-SHA256 (keyed)" if found.keyed else (
            "SHA-256 (unkeyed: whoever can write the store can recompute it; anchor the "
            "head digest elsewhere, or give the store a key)")
        say(f"{found.events:,} events checked; chain {kind}")
        if found.uncovered:
            say(f"positions before {found.covered_from} ({found.uncovered:,} events) are not "
                "covered by the chain: written before it existed, or the chain and the "
                "store's format record were removed since. verify cannot tell which; a "
                "head digest kept from before, checked with --expect, can")
        if found.projection_rows is not None:
            say(f"{found.projection_rows:,} projection rows compared with a fold of the log")
        say(f"head: position {found.head_position} digest {found.head_digest or '-'}")
        first = min((p.position for p in in_log), default=None)
        what = (f"{len(in_log)} problem(s). The store was changed outside flowledger"
                + (f" from position {first} on" if first is not None else "")
                if in_log else "the digest kept elsewhere is not in the chain. The "
                "log was cut or rewritten since that digest was printed (or it is another "
                "store's)")
        if found.ok:
            say("OK: the log is as it was written"
                + (f" from position {found.covered_from} on" if found.uncovered else "")
                + ("" if found.projection_rows is None else
                   ", and its projections are what it makes"))
        elif in_log or found.expected_found is False:
            say(f"NOT OK: {what}: restore it from a backup taken before that (verify the "
                "backup with --expect and a digest kept elsewhere), and find who could write "
                "to it")
        else:
            say(f"NOT OK: the log is as it was written, but {len(in_projections)} "
                "projection table(s) are not what it makes: changed outside flowledger (the "
                "engine acts on pending work: stop its workers first). Make them again from "
                "the log with `flowledger projections rebuild`, and find who could write to "
                "the store")
    if not found.ok:
        raise typer.Exit(EXIT_NOT_DONE)


def keygen() -> None:
    """Print a new random AES-256 key (base64) for FLOWLEDGER_CIPHER_KEY. Keep it
    outside the store: without it, an encrypted store cannot be read."""
    say(fl.new_cipher_key())
