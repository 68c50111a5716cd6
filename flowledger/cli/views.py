"""How each answer looks: the log, sessions, status, blocked runs, listings,
histories, costs, a replay's report, the projections and the demo, printed as
tables and lines on the terminal (render.py says how one value looks)."""

from __future__ import annotations

import dataclasses
import os
import textwrap
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from email.utils import parseaddr
from pathlib import Path
from typing import Any
from uuid import UUID

from rich.panel import Panel
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

import flowledger as fl
from flowledger import demo as demo_module
from flowledger.cli.render import (
    call_text,
    err,
    heading,
    note,
    out,
    plain,
    plain_layout,
    short,
    shown,
    status_style,
    when,
)
from flowledger.cli.tables import Cell, Col, print_table
from flowledger.domain.run_decider import NO_EFFECT_FOUND
from flowledger.infrastructure.store_url import cli_command
from flowledger.read_side.log_view import LoggedEvent

# ------------------------------------------------------------------ the log

# Fields every event of a workflow repeats (the stream says them already); empty
# fields (None) are left out too.
_NOT_KEY = {"workflow_id", "workflow"}

_EVENT_WIDTH = 34  # the longest aggregate.event name, HandlerRun.MutationNeedsReconcile


def key_fields(event: LoggedEvent) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in event.fields.items()
                     if k not in _NOT_KEY and v is not None)


_FIELDS_INDENT = 8


def log_line(event: LoggedEvent, margin: int = 0) -> Text:
    """One event on one line, so that the log can be read, piped and grepped.

    On a terminal too narrow for the line (`margin`: columns the caller puts
    before it), its fields go on the lines below, indented and wrapped at the
    terminal's width, instead of the terminal breaking them anywhere."""
    line = Text()
    line.append(f"{event.position:>6}  ", style="dim")
    line.append(when(event.timestamp) + "  ")
    line.append(f"{event.aggregate}.", style="cyan")
    line.append(event.name.ljust(_EVENT_WIDTH - len(event.aggregate) - 1), style="bold cyan")
    line.append(f"  {short(event.stream_id)}", style="magenta")
    fields = key_fields(event)
    if not fields:
        return line
    width = None if plain_layout() else out.width - margin
    if width is None or line.cell_len + 2 + len(fields) <= width:
        line.append("  " + fields)
        return line
    for part in textwrap.wrap(fields, max(20, width - _FIELDS_INDENT), break_on_hyphens=False):
        line.append("\n" + " " * (margin + _FIELDS_INDENT) + part)
    return line


def print_log(events: Iterable[LoggedEvent]) -> None:
    header = (f"{'pos':>6}  {'time (UTC)':<19}  {'aggregate.event':<{_EVENT_WIDTH}}  "
              "stream    fields")
    if not plain_layout() and len(header) > out.width:
        header = header.replace("stream    fields", "stream")  # fields: below each
    out.print(Text(header, style="bold"), soft_wrap=True)
    for event in events:
        out.print(log_line(event), soft_wrap=True)


# ------------------------------------------------------------------ sessions run


def _remaining(result: fl.SessionResult) -> str:
    return "; ".join(f"{consumer}: " + ", ".join(f"{t}={n}" for t, n in topics.items())
                     for consumer, topics in result.remaining.items()) or "-"


def print_sessions(results: list[fl.SessionResult], title: str = "Sessions") -> None:
    recovered = [r.recovered for r in results if r.recovered is not None]
    if recovered:
        print_recovered(recovered, "First, a crashed session was recovered")
    cut = print_table(
        title, [Col("workflow", max_width=24), Col("session", key=True),
                Col("status", key=True), Col("runs", key=True),
                Col("cost", key=True, justify="right"), Col("remaining work", drop=1)],
        [[r.workflow, short(r.session_id), Text(r.status, style=status_style(r.status)),
          f"{len(r.runs)} ({r.consumer_runs} consumer)", str(r.cost), _remaining(r)]
         for r in results])
    for r in results:
        if "remaining work" in cut and r.remaining:  # the work left, whole, at any width
            note(f"{r.workflow} {short(r.session_id)} work left", _remaining(r))
        if r.error:
            note(f"{r.workflow} {short(r.session_id)} {r.status}", r.error,
                 status_style(r.status))


def print_recovered(results: list[fl.SessionResult], title: str = "Recovered sessions"
                    ) -> None:
    """Sessions a crash left, taken over and finished: each one's runs, and for a
    mutation whose outcome recovery had to settle, how it was settled."""
    print_sessions(results, title=title)
    for r in results:
        counts: dict[str, int] = {}
        for run in r.runs:
            counts[run.status.value] = counts.get(run.status.value, 0) + 1
        if counts:
            note(f"{r.workflow} {short(r.session_id)}", "recovery ran " + ", ".join(
                f"{n} {status}" for status, n in counts.items()) + " run"
                + ("s" if len(r.runs) != 1 else ""))
        for run in r.runs:
            if not run.committed:
                note(f"  run {short(run.run_id)} {run.handler}", run.status.value
                     + (f": {run.reason}" if run.reason else ""), status_style(run.status.value))


@dataclass(frozen=True)
class Settled:
    """A mutation recovery reconciled: the call, its reconcile method, the
    event that settled it (MutationApplied, MutationFailed, or still unknown),
    and the run that made it again, if one did."""

    run_id: UUID
    handler: str
    call: str
    reconcile: str | None
    outcome: str
    fields: dict[str, Any]
    made_again_by: UUID | None = None


def print_settled(settled: list[Settled], store: str) -> None:
    """What recovery did with each mutation a crash left in flight."""
    for m in settled:
        found = {"MutationApplied": f"it had happened, result {plain(m.fields.get('result'))}",
                 "MutationFailed": "it had not happened"
                 + (f" ({m.fields['reason']})" if m.fields.get("reason") not in (
                     None, "", NO_EFFECT_FOUND) else "")
                 + (f"; run {short(m.made_again_by)} made it again" if m.made_again_by
                    else ""),
                 }.get(m.outcome,
                       "its outcome is still unknown; see "
                       + cli_command(store, "blocked", writes=False))
        note(f"run {short(m.run_id)} {m.handler}",
             f"mutation {m.call} was reconciled with {m.reconcile or '(no reconcile)'}: "
             f"{found}", status_style("completed" if m.outcome == "MutationApplied"
                                      else "failed"))


@contextmanager
def recovery_progress(quiet: bool = False) -> Iterator[Callable[[int, int], None] | None]:
    """While recovery runs, on stderr and only on a terminal: `recovering ━━━ 12 of ~40
    runs 0:00:03`, fed by the `progress(done, total)` callback handed back for
    `engine.recover(progress=...)` (None when quiet or not a terminal: nothing shown).
    The total is the engine's estimate of the work left (`~`), revised as runs end."""
    if quiet or not err.is_terminal:
        yield None
        return
    with Progress(SpinnerColumn(), TextColumn("recovering"), BarColumn(bar_width=24),
                  TextColumn("{task.fields[count]}"), TimeElapsedColumn(),
                  console=err, transient=True) as bar:
        task = bar.add_task("recovering", total=None, count="")

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=max(total, 1),
                       count=f"{done} of {'~' if done < total else ''}{total} "
                             f"run{'s' if total != 1 else ''}")

        yield progress


def session_json(r: fl.SessionResult) -> dict[str, Any]:
    """A session's result for --json: its fields, with the consumer runs counted."""
    data = dataclasses.asdict(r)
    data["consumer_runs"] = r.consumer_runs
    if r.recovered is not None:
        data["recovered"] = session_json(r.recovered)
    return data


def status_json(st: fl.EngineStatus, now: bool = True) -> dict[str, Any]:
    """The status for --json: objects with named fields, never bare arrays.
    `now`: the present, whose workers are listed (a view of the past knows none)."""
    names = {w.workflow_id: w.name for w in st.workflows}
    shown = {
        "workflows": [{**dataclasses.asdict(w), "holder_gone": w.name in st.holders_gone}
                      for w in st.workflows],
        "open_sessions": [{"session_id": sid, "workflow_id": wid, "workflow": names.get(wid),
                           "trigger": trigger, "opened_at": opened}
                          for sid, wid, trigger, opened in st.open_sessions],
        "unfinished_runs": [{**dataclasses.asdict(r), "workflow": names.get(r.workflow_id)}
                            for r in st.unfinished_runs],
        "blocked": [dataclasses.asdict(b) for b in st.blocked],
        "holders_gone": list(st.holders_gone),
        "leases_ended": list(st.leases_ended),
        "read_side_behind": st.read_side_behind,
    }
    if now:
        shown["workers"] = [dataclasses.asdict(w) for w in st.workers]
    return shown


# ------------------------------------------------------------------ status


def print_status(st: fl.EngineStatus, store: str, now: bool = True) -> None:
    """`now`: the present, whose workers are shown (a view of the past has none)."""
    if not st.workflows:
        out.print("No workflows in this store yet.")
        if now:
            print_workers(st)
        return
    names = {w.workflow_id: w.name for w in st.workflows}
    print_table("Workflows", [Col("workflow"), Col("status", key=True),
                              Col("open session", key=True), Col("lease holder", drop=2),
                              Col("lease until (UTC)", drop=1, key=True)],
                [[w.name, Text(w.status, style=status_style(w.status)), short(w.open_session),
                  w.owner or "-", when(w.lease_until)] for w in st.workflows])
    for w in st.workflows:
        if w.reason:
            state = "in error" if w.status == "error" else w.status
            note(f"{w.name} is {state}", w.reason, status_style(w.status))
        if w.name in st.holders_gone:
            note(f"{w.name}: holder gone", f"the process holding session "
                 f"{short(w.open_session)} ({w.owner}) is no longer running; its work is left "
                 "as the crash left it (a mutation in_flight is settled by its reconcile, "
                 "never called again). Continue it with: "
                 f"{cli_command(store, 'recover', 'PATH_OR_MODULE')} (or the next run does it "
                 "first)", "red")
        if w.name in st.leases_ended:
            note(f"{w.name}: lease ran out", f"session {short(w.open_session)} ({w.owner}) "
                 f"was leased until {w.lease_until}, and its holder has not renewed it: "
                 f"{cli_command(store, 'recover', 'PATH_OR_MODULE')} takes it over (a "
                 "mutation in_flight is "
                 "settled by its reconcile, never called again)", "yellow")

    if st.open_sessions:
        print_table("Open sessions", [Col("session", key=True), Col("workflow"),
                                      Col("trigger", drop=1), Col("opened (UTC)", key=True)],
                    [[short(session_id), names.get(workflow_id, short(workflow_id)), trigger,
                      when(opened)] for session_id, workflow_id, trigger, opened in
                     st.open_sessions])
    else:
        out.print("No open sessions.")
    if now:
        print_workers(st)

    if st.unfinished_runs:
        out.print(Text("Unfinished runs", style="bold"))
        for r in st.unfinished_runs:
            line = Text(f"  run {short(r.run_id)}  ")
            line.append(f"{names.get(r.workflow_id, short(r.workflow_id))} / {r.handler}  ")
            line.append(f"phase={r.phase} ")
            line.append(f"status={r.status}", style=status_style(r.status))
            if r.mutation_state:
                line.append(f" mutation={r.mutation_state}")
            if r.retry_at:
                line.append(f" retry at {when(r.retry_at)} UTC")
            out.print(line, soft_wrap=True)
    else:
        out.print("No unfinished runs.")

    print_waiting(st, store)


def print_status_at(position: int, moment: datetime | None, st: fl.EngineStatus,
                    store: str) -> None:
    """`flowledger at POSITION status`: the status, under the moment it is of."""
    out.print(Text(f"As of log position {position}"
                   + (f" ({when(moment)} UTC)" if moment else " (the empty log)"),
                   style="bold"))
    print_status(st, store, now=False)


def print_workers(st: fl.EngineStatus) -> None:
    """Workers running, and those gone without saying so (engine.workers())."""
    if not st.workers:
        out.print("No worker is running.")
        return
    holding: dict[str, list[str]] = {}
    for wf in st.workflows:
        if wf.open_session is not None and wf.owner:
            holding.setdefault(wf.owner, []).append(wf.name)
    print_table("Workers", [Col("worker", key=True), Col("state", key=True),
                            Col("in a session of", drop=1), Col("serves", drop=2),
                            Col("started (UTC)", key=True, drop=3)],
                [[w.owner, Text(w.state, style={"running": "green", "gone": "red"}.get(
                    w.state, "yellow")),
                  ", ".join(holding.get(w.owner, [])) or "-", ", ".join(w.workflows) or "-",
                  when(w.started_at)] for w in st.workers])
    for w in st.workers:
        if w.state == "gone":
            note(f"{w.owner}: gone", "it ended without saying so (killed, crashed, or its "
                 "machine lost); a session it held is taken over by the next worker or "
                 "`recover`. Shown for a day after it was found gone", "red")
        elif w.state == "unknown":
            note(f"{w.owner}: unknown", "it runs on another host, and the store keeps no "
                 "lock of its engine (it was closed without the worker saying it stopped, "
                 "or the server restarted since): look on its host", "yellow")


def print_waiting(st: fl.EngineStatus, store: str) -> None:
    """Everything waiting for a person (engine.blocked())."""
    if not st.blocked:
        out.print("Nothing is blocked.")
        return
    print_blocked(st.blocked, store)


def print_blocked(blocked: list[fl.BlockedRun], store: str) -> None:
    """One block per run: what it attempted, why it waits, the commands that decide."""
    out.print(Text("Blocked runs (waiting for a person)", style="bold"))
    for b in blocked:
        out.print(Text(f"  run {short(b.run_id)}  {b.workflow} / {b.handler}  {b.status}",
                       style="red"), soft_wrap=True)
        if b.tool and b.method:
            state = "failed" if b.mutation_state == "failed" else f"is {b.mutation_state}"
            out.print(f"    mutation: {call_text(b.tool, b.method, b.params)} {state}",
                      soft_wrap=True, markup=False)
        if b.reason:
            out.print(f"    reason:   {b.reason}", soft_wrap=True, markup=False)
        # One whole command a line: each can be copied as printed (a line
        # offering `a|b` would pipe the first into a command named b).
        if "resume" in b.actions:
            decide = [cli_command(store, "resume", b.workflow)]
        else:
            decide = [cli_command(store, "resolve", short(b.run_id), action)
                      for action in b.actions]
        for n, command in enumerate(decide):
            out.print(f"    {'decide:' if n == 0 else '':10}{command}", soft_wrap=True,
                      markup=False)


# ------------------------------------------------------------------ listings


def print_runs(found: list[fl.RunInfo]) -> None:
    if not found:
        out.print("No such runs.")
        return
    print_table("Runs (newest first)", [
        Col("run", key=True), Col("created (UTC)", key=True, drop=2), Col("workflow", drop=4),
        Col("handler"), Col("phase", key=True, drop=3), Col("status", key=True),
        Col("mutation", key=True, drop=1)],
        [[short(r.run_id), when(r.created_at), r.workflow, r.handler, r.phase,
          Text(r.status, style=status_style(r.status)), r.mutation_state or "-"]
         for r in found])
    for r in found:
        if r.traceback:
            note(f"run {short(r.run_id)} {r.status}", r.reason or "", status_style(r.status))
            print_traceback(r.traceback, frames=1)


# Where flowledger's own code lies: a frame there is not the user's line.
_OWN_CODE = str(Path(fl.__file__).resolve().parent) + os.sep


def _frame_blocks(lines: list[str]) -> list[tuple[int, int]]:
    """Where each frame of a formatted traceback starts and ends (its `File`
    line and the source lines under it)."""
    starts = [i for i, line in enumerate(lines) if line.startswith("  File ")]
    blocks = []
    for k, start in enumerate(starts):
        stop = starts[k + 1] if k + 1 < len(starts) else len(lines)
        end = start + 1
        while end < stop and lines[end].startswith("    "):
            end += 1
        blocks.append((start, end))
    return blocks


def print_traceback(text: str, frames: int | None = None) -> None:
    """A failure's recorded traceback, indented; with `frames`, only the last
    that many of the user's frames (flowledger's own, where a rule broken in a
    call of ctx or a tool was found, come after the line that broke it) and
    the error's lines."""
    lines = text.splitlines()
    if frames is not None:
        blocks = _frame_blocks(lines)
        if blocks:
            users = [b for b in blocks
                     if not lines[b[0]][len('  File "'):].startswith(_OWN_CODE)]
            lines = [line for start, end in (users or blocks)[-frames:]
                     for line in lines[start:end]] + lines[blocks[-1][1]:]
    for line in lines:
        out.print(Text("    " + line, style="dim"), soft_wrap=True)


def print_session_list(found: list[fl.SessionInfo]) -> None:
    if not found:
        out.print("No such sessions.")
        return
    print_table("Sessions (newest first)", [
        Col("session", key=True), Col("opened (UTC)", key=True, drop=3),
        Col("closed (UTC)", key=True, drop=4), Col("workflow", drop=2),
        Col("trigger", drop=5), Col("status", key=True),
        Col("consumer runs", key=True, justify="right"),
        Col("cost", key=True, justify="right")],
        [[short(s.session_id), when(s.opened_at), when(s.closed_at), s.workflow, s.trigger,
          Text(s.status, style=status_style(s.status)), str(s.consumer_runs), str(s.cost)]
         for s in found])


# ------------------------------------------------------------------ histories


def run_line(run: fl.RunInfo) -> Text:
    line = Text(f"run {short(run.run_id)}  ", style="bold")
    line.append(f"{run.workflow} / {run.handler} ({run.kind})  phase={run.phase} ")
    line.append(f"status={run.status}", style=status_style(run.status))
    if run.mutation_state:
        line.append(f" mutation={run.mutation_state}")
    if run.retry_of:
        line.append(f" retry of {short(run.retry_of)}")
    return line


def print_timeline(found: fl.RunTimeline) -> None:
    out.print(run_line(found.run), soft_wrap=True)
    note("id", str(found.run.run_id))
    if found.run.reason:
        note("reason", found.run.reason)
    if found.run.traceback:
        note("traceback", "the handler's last frames, as recorded")
        print_traceback(found.run.traceback)
    print_log(found.entries)


def print_event_history(found: fl.EventHistory) -> None:
    out.print(Text(f"{found.workflow} / {found.topic} / {found.message_id}: {found.status}",
                   style="bold"), soft_wrap=True)
    note("payload", plain(found.payload, 200))
    note("caused by input(s)", ", ".join(short(i) for i in found.caused_by) or "-")
    note("published by run", short(found.published_by))
    print_reservations(found.reservations)
    print_log(found.entries)


def print_reservations(reservations: Iterable[fl.Reservation], title: str = "Reserved by"
                       ) -> None:
    rows = list(reservations)
    if rows:
        print_table(title, [
            Col("run", key=True), Col("handler"),
            Col("reserved at", key=True, drop=2, justify="right"), Col("ended", key=True),
            Col("run status", key=True), Col("mutation", key=True, drop=1)],
            [[short(r.run_id), r.handler, str(r.reserved_at),
              r.ended + (f" to {short(r.moved_to)}" if r.moved_to else "")
              + (f" at {r.ended_at}" if r.ended_at else ""),
              Text(r.run_status, style=status_style(r.run_status)),
              r.mutation_state or "-"] for r in rows])
    else:
        out.print("No run reserved it.")


def print_input_history(found: fl.InputHistory) -> None:
    out.print(Text(f"input {short(found.input_id)}  {found.workflow}: {found.source} / "
                   f"{found.type} / {found.external_id}", style="bold"), soft_wrap=True)
    if found.title:
        note("title", found.title)
    note("id", str(found.input_id))
    note("registered by run", short(found.registered_by))

    print_table("Messages it caused", [
        Col("topic"), Col("message", key=True), Col("status", key=True),
        Col("reserved by", drop=1)],
        [[h.topic, h.message_id, h.status,
          "; ".join(f"{r.handler} {short(r.run_id)} ({r.ended})" for r in h.reservations)
          or "-"] for h in found.events])

    if found.mutations:
        rows: list[list[Cell]] = []
        for m in found.mutations:
            outcome = m.state + (f": {plain(m.result)}" if m.state == "applied" else
                                 f": {m.reason}" if m.reason else "")
            rows.append([str(m.position), when(m.time), short(m.run_id), m.title or "-",
                         call_text(m.tool, m.method, m.params),
                         Text(outcome, style=status_style(
                             "completed" if m.state == "applied" else m.state))])
        print_table("Mutations", [
            Col("pos", key=True, justify="right", drop=2), Col("time (UTC)", key=True, drop=3),
            Col("run", key=True), Col("title", drop=1), Col("call"), Col("outcome")], rows)
    else:
        out.print("No mutations.")
    heading("The whole story, in log order")
    print_log(found.entries)


# ------------------------------------------------------------------ costs


def print_costs(report: fl.CostReport) -> None:
    if not report.lines:
        out.print("No costs recorded.")
        return
    ids = report.by in ("run", "session")
    named = report.by != "workflow"  # else the key is the workflow: one column, not two
    print_table(f"Costs by {report.by}", [
        *([Col("workflow", drop=1)] if named else []), Col(report.by, key=True),
        Col("amount", key=True, justify="right"),
        Col("not yet counted", key=True, justify="right", drop=2),
        Col("entries", justify="right", drop=3), Col("runs", justify="right", drop=4)],
        [[*([line.workflow] if named else []), _short_key(line.key) if ids else line.key,
          str(line.amount), str(line.not_counted) if line.not_counted else "-",
          str(line.entries), str(line.runs)] for line in report.lines],
        footer=[[*([""] if named else []), "total", str(report.total), "", "", ""]])
    if any(line.not_counted for line in report.lines):
        note("not yet counted", "spent by runs still going (or cut short by a crash); the "
             "session that finishes them counts it")


def _short_key(key: str) -> str:
    """A cost line's run or session id, short as everywhere else."""
    try:
        return short(UUID(key))
    except ValueError:
        return key


# ------------------------------------------------------------------ replay


def print_replay(report: fl.ReplayReport, code: str) -> None:
    """What re-running a recorded run with the `code` of now did, and how it differs."""
    out.print(Text(f"Replay of run {short(report.run_id)}  {report.workflow} / {report.handler} "
                   f"({report.kind})", style="bold"), soft_wrap=True)
    note("code", f"{code}, as it is now; state and pending messages as of log "
         f"position {report.as_of}; reads from the log; nothing written, no tool called")
    note("steps", f"recorded {' > '.join(report.recorded.steps) or '-'}; replayed "
         f"{' > '.join(report.replayed.steps) or '-'}")
    if report.differences:
        print_table("Differences", [Col("what"), Col("recorded"), Col("replayed")],
                    [[d.what, shown(d.recorded), shown(d.replayed)] for d in report.differences])
        for d in report.differences:  # whole, as the table may cut them short
            note(d.what, f"recorded {shown(d.recorded)}; replayed {shown(d.replayed)}")
    for call in report.unrecorded_reads:
        note("not recorded, not performed", str(call), "yellow")
    for call in report.unused_reads:
        note("recorded, not asked for", str(call))
    for text in report.notes:
        note("note", text)
    if report.same:
        out.print(Text("Same: the current code does what the recorded run did.",
                       style="green"))
    else:
        count = len(report.differences) + len(report.unrecorded_reads)
        out.print(Text(f"{count} difference{'s' if count != 1 else ''}.", style="yellow"))


# ------------------------------------------------------------------ projections


@contextmanager
def rebuild_progress(description: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar while projections are rebuilt: hands back the `progress(done,
    total)` callback the engine calls after each batch."""
    with progress_bar(f"rebuilding {description}") as progress:
        yield progress


@contextmanager
def progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """`what ━━━ 1,200/5,000 events 0:00:03` on stderr, and only on a terminal
    (piped output stays plain text): the `progress(done, total)` callback."""
    if not err.is_terminal:
        yield lambda done, total: None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
                  TimeElapsedColumn(), console=err, transient=True) as bar:
        task = bar.add_task(what, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def print_rebuilt(read: int, seconds: float, positions: dict[str, int]) -> None:
    rate = f" ({read / seconds:,.0f} events/s)" if seconds > 0 and read else ""
    out.print(f"Rebuilt from position 0: {read:,} events in {seconds:.2f} s{rate}.")
    print_positions(positions)


def print_positions(positions: dict[str, int], head: int | None = None) -> None:
    print_table("Projections", [
        Col("projection"), Col("position", key=True, justify="right"),
        *((Col("behind", key=True, justify="right"),) if head is not None else ())],
        [[name, f"{position:,}", *((f"{head - position:,}",) if head is not None else ())]
         for name, position in positions.items()])


# ------------------------------------------------------------------ demo


def print_demo(report: demo_module.DemoReport, folder: Path, url: str) -> None:
    """What the demo did, the ledger it wrote, and what to try next."""
    intro = (f"flowledger demo: inbox to ledger, in {folder}/\n"
             f"{len(report.emails)} sample emails in {folder / 'inbox'}/ -> ledger.db -> "
             "summary.md\n"
             f"Each session may start {demo_module.RUNS_PER_SESSION} consumer runs; "
             "sessions run until no work is left.")
    if plain_layout():
        out.print(intro, soft_wrap=True, markup=False)
    else:
        out.print(Panel.fit(intro))
    print_sessions(report.sessions)

    rows: list[list[Cell]] = []
    for row in report.ledger_rows:
        amount = f"{row['amount']} {row['currency']}" if row["amount"] else "-"
        name, address = parseaddr(row["sender"])
        rows.append([str(row["row_id"]), (row["date"] or "")[:10], name or address,
                     row["subject"], amount])
    print_table(f"Ledger rows ({folder / 'ledger.db'})", [
        Col("row", key=True, justify="right"), Col("date", key=True, drop=2),
        Col("from", drop=1), Col("subject"), Col("amount", key=True, justify="right")], rows)
    heading(f"{folder / 'summary.md'}, as the Summarize consumer wrote it")
    out.print(report.summary.rstrip() or "(not written)", soft_wrap=True, markup=False)
    if report.traced_run is not None:
        heading(f"From the log: the run that added row 1 ({short(report.traced_run)})")
        print_log(report.trace)
    next_steps = [f"flowledger --store {url} log", f"flowledger --store {url} status"]
    if report.traced_run is not None:
        next_steps.append(f"flowledger --store {url} log --run {short(report.traced_run)}")
    next_steps += [f"# drop another .eml into {folder / 'inbox'}/, then:",
                   f"(cd {folder} && flowledger --store sqlite:///flow.db run workflow.py)"]
    out.print("\nNext, try:")
    for step in next_steps:
        out.print(f"  {step}", soft_wrap=True, markup=False)
