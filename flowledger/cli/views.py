"""How each answer looks: the log, sessions, status, blocked runs, listings,
histories, costs, a replay's report, the projections and the demo, printed as
tables and lines on the terminal (render.py says how one value looks)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import parseaddr
from pathlib import Path

from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.rule import Rule
from rich.table import Table
from rich.text import Text

import flowledger as fl
from flowledger import demo as demo_module
from flowledger.cli.render import call_text, note, out, plain, short, shown, status_style, when
from flowledger.read_side.log_view import LoggedEvent

# ------------------------------------------------------------------ the log

# Fields every event of a workflow repeats (the stream says them already); empty
# fields (None) are left out too.
_NOT_KEY = {"workflow_id", "workflow"}

_EVENT_WIDTH = 34  # the longest aggregate.event name, HandlerRun.MutationNeedsReconcile


def key_fields(event: LoggedEvent) -> str:
    return ", ".join(f"{k}={plain(v)}" for k, v in event.fields.items()
                     if k not in _NOT_KEY and v is not None)


def _utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC) if moment.tzinfo is not None else moment


def log_line(event: LoggedEvent) -> Text:
    """One event on one line, so that the log can be read, piped and grepped."""
    line = Text()
    line.append(f"{event.position:>6}  ", style="dim")
    line.append(_utc(event.timestamp).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "  ")
    line.append(f"{event.aggregate}.", style="cyan")
    line.append(event.name.ljust(_EVENT_WIDTH - len(event.aggregate) - 1), style="bold cyan")
    line.append(f"  {short(event.stream_id)}", style="magenta")
    fields = key_fields(event)
    if fields:
        line.append("  " + fields)
    return line


def print_log(events: Iterable[LoggedEvent]) -> None:
    header = (f"{'pos':>6}  {'time (UTC)':<23}  {'aggregate.event':<{_EVENT_WIDTH}}  "
              "stream    fields")
    out.print(Text(header, style="bold"), soft_wrap=True)
    for event in events:
        out.print(log_line(event), soft_wrap=True)


# ------------------------------------------------------------------ sessions run


def _remaining(result: fl.SessionResult) -> str:
    return "; ".join(f"{consumer}: " + ", ".join(f"{t}={n}" for t, n in topics.items())
                     for consumer, topics in result.remaining.items()) or "-"


def print_sessions(results: list[fl.SessionResult], title: str = "Sessions") -> None:
    table = Table(title=title, title_justify="left")
    for name in ("workflow", "session", "status", "runs", "cost", "remaining work"):
        table.add_column(name, overflow="fold")
    for r in results:
        table.add_row(r.workflow, short(r.session_id), Text(r.status, style=status_style(
            r.status)), f"{len(r.runs)} ({r.consumer_runs} consumer)", str(r.cost),
            _remaining(r))
    out.print(table)
    for r in results:
        if r.error:
            note(f"{r.workflow} {short(r.session_id)} {r.status}", r.error,
                 status_style(r.status))


# ------------------------------------------------------------------ status


def print_status(st: fl.EngineStatus) -> None:
    if not st.workflows:
        out.print("No workflows in this store yet.")
        return
    names = {w.workflow_id: w.name for w in st.workflows}
    table = Table(title="Workflows", title_justify="left")
    for name in ("workflow", "status", "open session", "lease holder", "lease until (UTC)"):
        table.add_column(name, overflow="fold")
    for w in st.workflows:
        table.add_row(w.name, Text(w.status, style=status_style(w.status)),
                      short(w.open_session), w.owner or "-", when(w.lease_until))
    out.print(table)
    for w in st.workflows:
        if w.reason:
            note(f"{w.name} is {w.status}", w.reason, status_style(w.status))

    if st.open_sessions:
        table = Table(title="Open sessions", title_justify="left")
        for name in ("session", "workflow", "trigger", "opened (UTC)"):
            table.add_column(name)
        for session_id, workflow_id, trigger, opened in st.open_sessions:
            table.add_row(short(session_id), names.get(workflow_id, short(workflow_id)),
                          trigger, when(opened))
        out.print(table)
    else:
        out.print("No open sessions.")

    if st.unfinished_runs:
        out.print(Text("Unfinished runs", style="bold"))
        for r in st.unfinished_runs:
            line = Text(f"  run {r.run_id}  ")
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

    print_waiting(st)


def print_status_at(position: int, moment: datetime | None, st: fl.EngineStatus) -> None:
    """`flowledger at POSITION status`: the status, under the moment it is of."""
    out.print(Text(f"As of log position {position}"
                   + (f" ({when(moment)} UTC)" if moment else " (the empty log)"),
                   style="bold"))
    print_status(st)


def print_waiting(st: fl.EngineStatus) -> None:
    """Everything waiting for a person (engine.blocked())."""
    if not st.blocked:
        out.print("Nothing is blocked.")
        return
    print_blocked(st.blocked)


def print_blocked(blocked: list[fl.BlockedRun]) -> None:
    """One block per run: what it attempted, why it waits, the commands that decide."""
    out.print(Text("Blocked runs (waiting for a person)", style="bold"))
    for b in blocked:
        out.print(Text(f"  run {b.run_id}  {b.workflow} / {b.handler}  {b.status}",
                       style="red"), soft_wrap=True)
        if b.tool:
            out.print(f"    mutation: {b.tool}.{b.method}({plain(b.params)}) is "
                      f"{b.mutation_state}", soft_wrap=True, markup=False)
        if b.reason:
            out.print(f"    reason:   {b.reason}", soft_wrap=True, markup=False)
        if "resume" in b.actions:
            decide = f"flowledger resume {b.workflow}"
        else:
            decide = f"flowledger resolve {b.run_id} {'|'.join(b.actions)}"
        out.print(f"    decide:   {decide}", soft_wrap=True, markup=False)


# ------------------------------------------------------------------ listings


def print_runs(found: list[fl.RunInfo]) -> None:
    if not found:
        out.print("No such runs.")
        return
    table = Table(title="Runs (newest first)", title_justify="left")
    table.add_column("run", no_wrap=True, min_width=36)
    for name in ("created (UTC)", "workflow", "handler", "phase", "status", "mutation"):
        table.add_column(name, overflow="fold")
    for r in found:
        table.add_row(str(r.run_id), when(r.created_at), r.workflow, r.handler, r.phase,
                      Text(r.status, style=status_style(r.status)), r.mutation_state or "-")
    out.print(table)


def print_session_list(found: list[fl.SessionInfo]) -> None:
    if not found:
        out.print("No such sessions.")
        return
    table = Table(title="Sessions (newest first)", title_justify="left")
    table.add_column("session", no_wrap=True, min_width=36)
    for name in ("opened (UTC)", "closed (UTC)", "workflow", "trigger", "status",
                 "consumer runs", "cost"):
        table.add_column(name, overflow="fold")
    for s in found:
        table.add_row(str(s.session_id), when(s.opened_at), when(s.closed_at), s.workflow,
                      s.trigger, Text(s.status, style=status_style(s.status)),
                      str(s.consumer_runs), str(s.cost))
    out.print(table)


# ------------------------------------------------------------------ histories


def run_line(run: fl.RunInfo) -> Text:
    line = Text(f"run {run.run_id}  ", style="bold")
    line.append(f"{run.workflow} / {run.handler} ({run.kind})  phase={run.phase} ")
    line.append(f"status={run.status}", style=status_style(run.status))
    if run.mutation_state:
        line.append(f" mutation={run.mutation_state}")
    if run.retry_of:
        line.append(f" retry of {run.retry_of}")
    return line


def print_timeline(found: fl.RunTimeline) -> None:
    out.print(run_line(found.run), soft_wrap=True)
    if found.run.reason:
        note("reason", found.run.reason)
    print_log(found.entries)


def print_event_history(found: fl.EventHistory) -> None:
    out.print(Text(f"{found.workflow} / {found.topic} / {found.message_id}: {found.status}",
                   style="bold"), soft_wrap=True)
    note("payload", plain(found.payload, 200))
    note("caused by input(s)", ", ".join(str(i) for i in found.caused_by) or "-")
    note("published by run", str(found.published_by) if found.published_by else "-")
    print_reservations(found.reservations)
    print_log(found.entries)


def print_reservations(reservations: Iterable[fl.Reservation], title: str = "Reserved by"
                       ) -> None:
    table = Table(title=title, title_justify="left")
    table.add_column("run", no_wrap=True, min_width=36)
    for name in ("handler", "reserved (pos, UTC)", "ended", "at pos", "run status",
                 "mutation"):
        table.add_column(name, overflow="fold")
    rows = list(reservations)
    for r in rows:
        ended = r.ended + (f" to {r.moved_to}" if r.moved_to else "")
        table.add_row(str(r.run_id), r.handler, f"{r.reserved_at}  {when(r.reserved_time)}",
                      ended, str(r.ended_at or "-"),
                      Text(r.run_status, style=status_style(r.run_status)),
                      r.mutation_state or "-")
    if rows:
        out.print(table)
    else:
        out.print("No run reserved it.")


def print_input_history(found: fl.InputHistory) -> None:
    out.print(Text(f"input {found.input_id}  {found.workflow}: {found.source} / {found.type} "
                   f"/ {found.external_id}", style="bold"), soft_wrap=True)
    if found.title:
        note("title", found.title)
    note("registered by run", str(found.registered_by) if found.registered_by else "-")

    caused = Table(title="Messages it caused", title_justify="left")
    for name in ("topic", "message", "status", "reserved by"):
        caused.add_column(name, overflow="fold")
    for h in found.events:
        held = "; ".join(f"{r.handler} {r.run_id} ({r.ended})" for r in h.reservations)
        caused.add_row(h.topic, h.message_id, h.status, held or "-")
    out.print(caused)

    if found.mutations:
        table = Table(title="Mutations", title_justify="left")
        for name in ("pos", "time (UTC)", "run", "title", "call", "outcome"):
            table.add_column(name, overflow="fold")
        for m in found.mutations:
            outcome = m.state + (f": {plain(m.result)}" if m.state == "applied" else
                                 f": {m.reason}" if m.reason else "")
            table.add_row(str(m.position), when(m.time), str(m.run_id), m.title or "-",
                          call_text(m.tool, m.method, m.params),
                          Text(outcome, style=status_style(
                              "completed" if m.state == "applied" else m.state)))
        out.print(table)
    else:
        out.print("No mutations.")
    out.print(Rule("The whole story, in log order", align="left"))
    print_log(found.entries)


# ------------------------------------------------------------------ costs


def print_costs(report: fl.CostReport) -> None:
    if not report.lines:
        out.print("No costs recorded.")
        return
    table = Table(title=f"Costs by {report.by}", title_justify="left")
    for name in ("workflow", report.by, "amount", "not yet counted", "entries", "runs"):
        table.add_column(name, overflow="fold",
                         justify="right" if name in ("amount", "not yet counted", "entries",
                                                     "runs") else "left")
    for line in report.lines:
        table.add_row(line.workflow, line.key, str(line.amount),
                      str(line.not_counted) if line.not_counted else "-", str(line.entries),
                      str(line.runs))
    table.add_section()
    table.add_row("total", "", str(report.total), "", "", "")
    out.print(table)
    if any(line.not_counted for line in report.lines):
        note("not yet counted", "spent by runs still going (or cut short by a crash); the "
             "session that finishes them counts it")


# ------------------------------------------------------------------ replay


def print_replay(report: fl.ReplayReport, code: str) -> None:
    """What re-running a recorded run with the `code` of now did, and how it differs."""
    out.print(Text(f"Replay of run {report.run_id}  {report.workflow} / {report.handler} "
                   f"({report.kind})", style="bold"), soft_wrap=True)
    note("code", f"{code}, as it is now; state and pending messages as of log "
         f"position {report.as_of}; reads from the log; nothing written, no tool called")
    note("steps", f"recorded {' > '.join(report.recorded.steps) or '-'}; replayed "
         f"{' > '.join(report.replayed.steps) or '-'}")
    if report.differences:
        table = Table(title="Differences", title_justify="left")
        for name in ("what", "recorded", "replayed"):
            table.add_column(name, overflow="fold")
        for d in report.differences:
            table.add_row(d.what, shown(d.recorded), shown(d.replayed))
        out.print(table)
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
    with Progress(TextColumn("rebuilding {task.description}"), BarColumn(),
                  MofNCompleteColumn(), TextColumn("events"), TimeElapsedColumn(),
                  console=out, transient=False) as bar:
        task = bar.add_task(description, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield progress


def print_rebuilt(read: int, seconds: float, positions: dict[str, int]) -> None:
    rate = f" ({read / seconds:,.0f} events/s)" if seconds > 0 and read else ""
    out.print(f"Rebuilt from position 0: {read:,} events in {seconds:.2f} s{rate}.")
    print_positions(positions)


def print_positions(positions: dict[str, int], head: int | None = None) -> None:
    table = Table(title="Projections", title_justify="left")
    for name in ("projection", "position", *(("behind",) if head is not None else ())):
        table.add_column(name, justify="left" if name == "projection" else "right")
    for name, position in positions.items():
        table.add_row(name, f"{position:,}",
                      *((f"{head - position:,}",) if head is not None else ()))
    out.print(table)


# ------------------------------------------------------------------ demo


def print_demo(report: demo_module.DemoReport, folder: Path, url: str) -> None:
    """What the demo did, the ledger it wrote, and what to try next."""
    out.print(Panel.fit(
        f"flowledger demo: inbox to ledger, in {folder}/\n"
        f"{len(report.emails)} sample emails in {folder / 'inbox'}/ -> ledger.db -> "
        "summary.md\n"
        f"Each session may start {demo_module.RUNS_PER_SESSION} consumer runs; "
        "sessions run until no work is left."))
    print_sessions(report.sessions)

    rows = Table(title=f"Ledger rows ({folder / 'ledger.db'})", title_justify="left")
    for name in ("row", "date", "from", "subject", "amount"):
        rows.add_column(name, overflow="fold", justify="right" if name == "amount" else "left")
    for row in report.ledger_rows:
        amount = f"{row['amount']} {row['currency']}" if row["amount"] else "-"
        name, address = parseaddr(row["sender"])
        rows.add_row(str(row["row_id"]), (row["date"] or "")[:10], name or address,
                     row["subject"], amount)
    out.print(rows)
    out.print(Rule(f"{folder / 'summary.md'}, as the Summarize consumer wrote it", align="left"))
    out.print(report.summary.rstrip() or "(not written)", soft_wrap=True, markup=False)
    if report.traced_run is not None:
        out.print(Rule(f"From the log: the run that added row 1 ({report.traced_run})",
                       align="left"))
        print_log(report.trace)
    next_steps = [f"flowledger --store {url} log", f"flowledger --store {url} status"]
    if report.traced_run is not None:
        next_steps.append(f"flowledger --store {url} log --run {report.traced_run}")
    next_steps += [f"# drop another .eml into {folder / 'inbox'}/, then:",
                   f"(cd {folder} && flowledger --store sqlite:///flow.db run workflow.py)"]
    out.print("\nNext, try:")
    for step in next_steps:
        out.print(f"  {step}", soft_wrap=True, markup=False)
