"""Issue 13: the CLI as a newcomer reads it at 80 columns — tables that do not
break ids, costs or statuses, short ids taken wherever an id is, what happened
(tracebacks, recovery, a holder that is gone) said, and the conventions of
Python CLIs (--version, python -m, --json everywhere, one-line load errors).

Real subprocesses at COLUMNS=80, as test_cli.py runs them."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from flowledger.engine.faults import CRASH_EXIT_CODE
from tests.e2e.test_cli import (
    BUGGY,
    EXAMPLE,
    FLAKY,
    RULE_BREAKER,
    assert_user_error,
    flowledger,
)
from tests.e2e.test_cli_read_side import SHOP

NARROW = {"COLUMNS": "80"}
BOX = re.compile(r"[─━│┃┏┓┗┛┡┩└┘┌┐╇┳┻╋]")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def narrow(*args: str, cwd: Path, env: dict[str, str] | None = None
           ) -> subprocess.CompletedProcess[str]:
    return flowledger(*args, cwd=cwd, env={**NARROW, **(env or {})})


def as_json(folder: Path, *args: str) -> Any:
    result = flowledger(*args, "--json", cwd=folder)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def table_lines(text: str) -> list[str]:
    """The lines of a table: those not noted under it (notes soft-wrap)."""
    return [line for line in text.splitlines() if not line.startswith("  ")]


def short(value: str) -> str:
    return value.replace("-", "")[-8:]


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two sessions of the shop (costs 0.10 + 0.05 a booking), the first one
    stopped on its budget."""
    folder = tmp_path_factory.mktemp("narrow")
    (folder / "shop.py").write_text(SHOP)
    first = flowledger("run", "shop.py", "--max-iterations", "1", cwd=folder)
    assert first.returncode == 0, first.stderr
    second = flowledger("run", "shop.py", cwd=folder)
    assert second.returncode == 0, second.stderr
    return folder


# ------------------------------------------------------------------ 1. tables


@pytest.mark.parametrize("tty", [False, True], ids=["piped", "terminal"])
def test_sessions_at_80_columns_keep_ids_costs_and_statuses_whole(shop: Path,
                                                                 tty: bool) -> None:
    sessions = as_json(shop, "sessions")
    env = {"TTY_COMPATIBLE": "1"} if tty else {}
    shown = narrow("sessions", cwd=shop, env=env)
    assert shown.returncode == 0, shown.stderr
    text = ANSI.sub("", shown.stdout)
    rows = table_lines(text)
    assert all(len(line.rstrip()) <= 80 for line in rows), text
    for s in sessions:
        row = next(line for line in rows if short(s["session_id"]) in line)
        assert re.search(rf"\b{re.escape(s['status'])}\b", row), row
        assert re.search(rf"\b{re.escape(s['cost'])}\b", row), row
    assert {"budget_exhausted", "completed"} <= {s["status"] for s in sessions}
    assert any(s["cost"] == "0.15" for s in sessions)
    assert bool(BOX.search(text)) is tty  # box drawing on a terminal only
    assert ("\x1b[" in shown.stdout) is tty  # and colour


def test_the_work_left_is_said_whole_when_its_column_is_cut(tmp_path: Path) -> None:
    """On a terminal of 80 columns the boxed table cut "remaining work" to
    `BookOrder:…`, and nothing else said what was left: said under it."""
    (tmp_path / "shop.py").write_text(SHOP)
    shown = narrow("run", "shop.py", "--max-iterations", "1", cwd=tmp_path,
                   env={"TTY_COMPATIBLE": "1"})
    assert shown.returncode == 0, shown.stderr
    text = ANSI.sub("", shown.stdout)
    assert "BookOrder:…" in text  # cut in the table...
    session = short(as_json(tmp_path, "sessions")[0]["session_id"])
    assert f"  shop {session} work left: BookOrder: order=1" in text.splitlines()  # ...said
    (tmp_path / "wide").mkdir()
    (tmp_path / "wide" / "shop.py").write_text(SHOP)
    wide = flowledger("run", "shop.py", "--max-iterations", "1", cwd=tmp_path / "wide",
                      env={"COLUMNS": "200", "TTY_COMPATIBLE": "1"})
    text = ANSI.sub("", wide.stdout)
    assert "BookOrder: order=1 │" in text and "work left:" not in text  # whole: not again


@pytest.mark.parametrize("command", [["runs"], ["status"], ["cost", "--by", "run"],
                                     ["cost", "--by", "session"]])
def test_every_table_fits_80_columns_without_wrapping(shop: Path, command: list[str]) -> None:
    shown = narrow(*command, cwd=shop)
    assert shown.returncode == 0, shown.stderr
    assert not BOX.search(shown.stdout)
    for line in table_lines(shown.stdout):
        assert len(line.rstrip()) <= 80, shown.stdout


@pytest.mark.parametrize("tty", [False, True], ids=["piped", "terminal"])
def test_runs_at_80_columns_show_short_ids_and_whole_statuses(shop: Path, tty: bool) -> None:
    runs = as_json(shop, "runs")
    shown = narrow("runs", cwd=shop, env={"TTY_COMPATIBLE": "1"} if tty else {})
    text = ANSI.sub("", shown.stdout)
    for r in runs:
        row = next(line for line in text.splitlines() if short(r["run_id"]) in line)
        assert re.search(rf"\b{r['status']}\b", row)
        assert re.search(rf"\b{r['phase']}\b", row)  # a status too: whole (it was cut)
        mutation = r["mutation_state"] or "-"
        assert re.search(rf"(^|[\s│]){mutation}([\s│]|$)", row) or "mutation" in text.split(
            "left out at this width:")[1].splitlines()[0]  # whole, or left out and said
        assert r["handler"] in row or re.search(rf"\b{r['handler'][:5]}\w*…", row)  # may be cut
    assert "left out at this width" in text  # says what it left out


def test_piped_output_without_columns_is_not_cut(shop: Path) -> None:
    env = {k: v for k, v in __import__("os").environ.items() if k != "COLUMNS"}
    env.pop("FLOWLEDGER_STORE", None)
    shown = subprocess.run([sys.executable, "-m", "flowledger", "runs"], cwd=shop, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "…" not in shown.stdout and "left out" not in shown.stdout
    assert "workflow" in shown.stdout.splitlines()[1]


def test_one_time_format_everywhere(shop: Path) -> None:
    stamp = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d")
    log = flowledger("log", "--limit", "1", cwd=shop).stdout
    runs = flowledger("runs", "--limit", "1", cwd=shop).stdout
    assert stamp.search(log) and stamp.search(runs)
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", log + runs)  # no second format


# ------------------------------------------------------------------ 2. short ids


def test_a_short_id_or_a_prefix_is_taken_wherever_an_id_is(shop: Path) -> None:
    run_id = str(as_json(shop, "events", "shop", "order", "A-1")["reservations"][0]["run_id"])
    full = as_json(shop, "timeline", run_id)
    for given in (short(run_id), run_id[:20], run_id.replace("-", "")[:24]):
        assert as_json(shop, "timeline", given) == full, given
    log = flowledger("log", "--run", short(run_id), cwd=shop)
    assert log.returncode == 0 and "HandlerRun.MutationApplied" in log.stdout
    replay = flowledger("replay", short(run_id), "shop.py", cwd=shop)
    assert replay.returncode == 0, replay.stderr

    input_id = as_json(shop, "events", "shop", "order", "A-1")["caused_by"][0]
    audit = as_json(shop, "audit", "input", short(input_id))
    assert audit["input_id"] == input_id


def test_the_printed_short_id_is_the_one_taken(shop: Path) -> None:
    printed = re.findall(r"^([0-9a-f]{8}) ", narrow("runs", cwd=shop).stdout, re.M)
    assert printed
    shown = flowledger("timeline", printed[0], cwd=shop)
    assert shown.returncode == 0, shown.stderr
    assert f"run {printed[0]}" in shown.stdout


def test_an_ambiguous_short_id_lists_the_candidates(shop: Path) -> None:
    runs = [r["run_id"] for r in as_json(shop, "runs")]
    # Time-ordered ids created within seconds share their first digits.
    prefix = runs[0][:6]
    matching = [r for r in runs if r.startswith(prefix)]
    assert len(matching) > 1
    result = flowledger("timeline", prefix, cwd=shop)
    assert_user_error(result, "ambiguous", f"matches {len(matching)} runs")
    assert all(r in result.stderr for r in matching[:10])
    assert_user_error(flowledger("timeline", "01a", cwd=shop), "too short")
    assert_user_error(flowledger("timeline", "ffffffff", cwd=shop), "no run 'ffffffff'")


# ------------------------------------------------------------------ 3. what happened


def test_a_failing_handler_traceback_is_kept_and_shown(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text(BUGGY)
    failed = flowledger("run", "buggy.py", cwd=tmp_path, env={"WITH_BUG": "1"})
    assert failed.returncode == 1
    run = next(r for r in as_json(tmp_path, "runs") if r["status"] == "failed:logic")
    assert 'buggy.py", line' in run["traceback"] and "in prepare" in run["traceback"]
    assert run["traceback"].rstrip().endswith("KeyError: 'a bug in the handler'")

    timeline = narrow("timeline", short(run["run_id"]), cwd=tmp_path)
    assert timeline.returncode == 0, timeline.stderr
    assert 'raise KeyError("a bug in the handler")' in timeline.stdout
    assert "buggy.py\", line" in timeline.stdout
    runs = narrow("runs", cwd=tmp_path)
    assert "KeyError: 'a bug in the handler'" in runs.stdout
    assert 'raise KeyError("a bug in the handler")' in runs.stdout


def test_runs_shows_the_users_line_where_a_rule_was_broken_in_a_call(tmp_path: Path
                                                                      ) -> None:
    """A rule broken in a call of ctx is raised in flowledger's code; `runs`
    shows the handler's line that made the call, not flowledger's frame."""
    (tmp_path / "rules.py").write_text(RULE_BREAKER)
    assert flowledger("run", "rules.py", cwd=tmp_path).returncode == 1
    shown = narrow("runs", cwd=tmp_path).stdout
    assert 'rules.py", line' in shown and "in next" in shown, shown
    assert 'ctx.publish("out", message_id="x", payload=1)' in shown
    assert "flowledger/engine" not in shown and "RuleBroken" in shown


def test_status_says_the_holder_is_gone_and_what_to_run(crashed: Path) -> None:
    shown = narrow("status", cwd=crashed)
    assert shown.returncode == 0, shown.stderr
    assert "holder gone" in shown.stdout and "no longer running" in shown.stdout
    assert "flowledger recover" in shown.stdout
    data = as_json(crashed, "status")
    assert data["holders_gone"] == ["inbox-to-ledger"]
    assert data["workflows"][0]["holder_gone"] is True
    assert data["open_sessions"][0]["workflow"] == "inbox-to-ledger"  # objects, not arrays


def test_recover_says_which_mutation_it_reconciled_and_how(crashed: Path) -> None:
    recovered = narrow("recover", str(EXAMPLE), cwd=crashed)
    assert recovered.returncode == 0, recovered.stderr
    assert "Recovered sessions" in recovered.stdout
    assert re.search(r"mutation ledger\.append\(.*\) was reconciled with find_appended: it "
                     r"had happened, result 2", recovered.stdout), recovered.stdout
    assert "recovery ran 5 committed runs" in recovered.stdout


def test_recover_says_a_call_found_not_made_was_made_again(tmp_path: Path) -> None:
    """Killed after the second call's in_flight record, before the call: the
    reconcile finds no ledger row, the run the crash left is superseded and a
    fresh run makes the call. Only the fresh run is in the session's result;
    `recover` still names the run it reconciled, what it found, and the run
    that made the call again (README: Recovery)."""
    shutil.copytree(EXAMPLE.parent / "inbox", tmp_path / "inbox")
    crashed = flowledger("run", str(EXAMPLE), cwd=tmp_path,
                         env={"FLOWLEDGER_CRASH_AT": "before_call#2"})
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    recovered = narrow("recover", str(EXAMPLE), cwd=tmp_path)
    assert recovered.returncode == 0, recovered.stderr
    said = re.search(r"run (\w+) AddRow: mutation ledger\.append\(.*\) was reconciled with "
                     r"find_appended: it had not happened \(no ledger row .*\); run (\w+) "
                     r"made it again", recovered.stdout)
    assert said, recovered.stdout
    left, again = said.groups()
    runs = {r["run_id"].replace("-", "")[-8:]: r for r in as_json(tmp_path, "runs")}
    assert runs[left]["status"] == "superseded"
    assert runs[again]["status"] == "committed"
    assert runs[again]["retry_of"].replace("-", "").endswith(left)


def test_run_says_it_first_recovered_a_crashed_session(crashed: Path) -> None:
    again = narrow("run", str(EXAMPLE), cwd=crashed)
    assert again.returncode == 0, again.stderr
    assert "First, a crashed session was recovered" in again.stdout
    assert "was reconciled with find_appended" in again.stdout
    data = as_json(crashed, "run", str(EXAMPLE))
    assert data[0]["status"] == "completed" and data[0]["recovered"] is None


def test_run_json_reports_the_recovered_session(crashed: Path) -> None:
    data = as_json(crashed, "run", str(EXAMPLE))
    assert data[0]["recovered"]["status"] == "completed"
    assert data[0]["recovered"]["consumer_runs"] == 5


# ------------------------------------------------------------------ 4. conventions


def test_version_and_python_dash_m(tmp_path: Path) -> None:
    import flowledger as fl

    version = flowledger("--version", cwd=tmp_path)
    assert version.returncode == 0 and version.stdout.strip() == f"flowledger {fl.__version__}"
    module = subprocess.run([sys.executable, "-m", "flowledger", "--version"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)
    assert module.returncode == 0 and module.stdout == version.stdout


def test_shell_completion_is_offered(tmp_path: Path) -> None:
    shown = flowledger("--show-completion", cwd=tmp_path, env={"SHELL": "/bin/bash"})
    assert shown.returncode == 0, shown.stderr
    assert "complete" in shown.stdout and "flowledger" in shown.stdout


@pytest.mark.parametrize(("source", "fragment"), [
    ("import flowledger as fl\ndef broken(:\n", "does not compile: SyntaxError at"),
    ("import no_such_module_anywhere\n", "cannot be imported: ModuleNotFoundError"),
])
def test_a_workflow_file_that_does_not_load_is_one_line_and_exit_2(tmp_path: Path,
                                                                  source: str,
                                                                  fragment: str) -> None:
    (tmp_path / "wf.py").write_text(source)
    assert_user_error(flowledger("run", "wf.py", cwd=tmp_path), fragment, "wf.py")


@pytest.mark.parametrize("command", [["status"], ["blocked"], ["runs"], ["sessions"],
                                     ["cost"], ["at", "5", "status"]])
def test_json_on_the_commands_that_print_data(shop: Path, command: list[str]) -> None:
    data = as_json(shop, *command)
    assert isinstance(data, dict | list)


def test_at_status_json_gives_objects(shop: Path) -> None:
    data = as_json(shop, "at", "40", "status")
    sessions = data["status"]["open_sessions"]
    assert all(isinstance(s, dict) for s in sessions)


def test_log_json_after_and_since(shop: Path) -> None:
    lines = flowledger("log", "--json", cwd=shop).stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["position"] for e in events] == sorted(e["position"] for e in events)
    after = [json.loads(line) for line in
             flowledger("log", "--json", "--after", "10", cwd=shop).stdout.splitlines()]
    assert after and after[0]["position"] == 11
    assert [e["position"] for e in after] == [e["position"] for e in events if
                                              e["position"] > 10]
    assert flowledger("log", "--since", "2999-01-01", cwd=shop).stdout.strip() == (
        "The log holds no such events.")
    assert flowledger("log", "--since", "2000-01-01", "--json", cwd=shop
                      ).stdout.splitlines() == lines


def test_blocked_shows_the_call_as_audit_does(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    assert flowledger("run", "flaky.py", cwd=tmp_path).returncode == 1
    shown = narrow("blocked", cwd=tmp_path)
    assert "mutation: remote.send({n: 1}) is indeterminate" in shown.stdout
    data = as_json(tmp_path, "blocked")
    assert data[0]["tool"] == "remote" and data[0]["actions"] == ["did_not_happen", "skip"]


def test_a_store_opened_read_only_is_read_and_never_written(shop: Path, tmp_path: Path
                                                            ) -> None:
    copy = tmp_path / "copy.db"
    source, target = sqlite3.connect(shop / "flowledger.db"), sqlite3.connect(copy)
    source.backup(target)
    target.execute("PRAGMA journal_mode=WAL")  # as every flowledger store is
    source.close()
    target.close()
    (tmp_path / "shop.py").write_text(SHOP)
    copy.chmod(0o444)  # SQLite's read-only mode needs no write permission
    try:
        url = f"sqlite:///{copy}?mode=ro"
        assert as_json(tmp_path, "--store", url, "runs") == as_json(shop, "runs")
        run = as_json(shop, "runs")[0]["run_id"]
        # Every reading command the README lists for ?mode=ro (but `follow`,
        # which runs until stopped: test_cli_live_log_and_progress).
        for reading in (["status"], ["runs"], ["sessions"], ["timeline", run], ["blocked"],
                        ["cost"], ["log"], ["verify"], ["at", "5", "status"],
                        ["replay", run, "shop.py"]):
            shown = flowledger("--store", url, *reading, cwd=tmp_path)
            assert shown.returncode == 0, (reading, shown.stderr)
        assert_user_error(flowledger("--store", url, "run", "shop.py", cwd=tmp_path),
                          "opened read-only (?mode=ro)", "drop ?mode=ro")
    finally:
        copy.chmod(0o644)


@pytest.mark.parametrize(("query", "fragment"), [
    ("?mode=rw", "mode='rw' is not ro; give ?mode=ro"),
    ("?mode=ro&mode=rw", "mode= is given 2 times; give it once"),
    ("?cache=shared", "unknown query parameter 'cache'"),
    ("?nonsense", "unknown query parameter"),
])
def test_a_sqlite_url_refuses_what_its_query_cannot_say(shop: Path, query: str,
                                                        fragment: str) -> None:
    assert_user_error(flowledger("--store", f"sqlite:///flow.db{query}", "status", cwd=shop),
                      fragment)
    assert not list(shop.glob("flow.db?*"))  # never taken as part of the file name


def test_parse_store_url_reads_the_query() -> None:
    from flowledger.infrastructure.store_url import parse_store_url

    plain = parse_store_url(f"sqlite:///{__file__}")
    assert not plain.read_only
    ro = parse_store_url(f"sqlite:///{__file__}?mode=ro")
    assert ro.read_only and ro.path == Path(__file__)
    assert ro.env["SQLITE_DBNAME"].startswith("file:") and ro.env["SQLITE_DBNAME"].endswith(
        "?mode=ro")


def test_the_log_on_an_80_column_terminal_puts_fields_below_instead_of_breaking_them(
        shop: Path) -> None:
    """A terminal breaks a long line anywhere (`state_replaced` as `state` / `_replaced`):
    on a terminal, the fields of a line too long go below it, indented and wrapped
    between fields; piped, a line stays one line to grep."""
    listed = flowledger("log", "--json", cwd=shop)
    events = [json.loads(line) for line in listed.stdout.splitlines()]
    shown = narrow("log", cwd=shop, env={"TTY_COMPATIBLE": "1"})
    assert shown.returncode == 0, shown.stderr
    lines = ANSI.sub("", shown.stdout).splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(x for x in lines if len(x) > 80)
    committed = next(e for e in events if e["name"] == "Committed")
    at = next(i for i, line in enumerate(lines)
              if line.lstrip().startswith(f"{committed['position']} "))
    assert lines[at + 1].startswith(" " * 8) and "state_replaced=" in lines[at + 1]
    piped = flowledger("log", cwd=shop)
    one = next(line for line in piped.stdout.splitlines()
               if line.lstrip().startswith(f"{committed['position']} "))
    assert "HandlerRun.Committed" in one and "state_replaced=" in one


def test_a_long_handler_name_is_cut_before_a_phase_or_a_mutation_state(tmp_path: Path) -> None:
    """At 80 columns on a terminal, a phase ("committ…") was cut for a long
    handler name: a status-like value is shown whole or not at all."""
    (tmp_path / "shop.py").write_text(SHOP.replace("def orders(ctx, state)",
                                                   "def fetch_orders_from_the_shop(ctx, state)"))
    assert flowledger("run", "shop.py", cwd=tmp_path).returncode == 0
    shown = narrow("runs", cwd=tmp_path, env={"TTY_COMPATIBLE": "1"})
    text = ANSI.sub("", shown.stdout)
    rows = [line for line in text.splitlines() if line.startswith("│")]
    assert rows and all("committed │ committed │" in row for row in rows), text
    assert all(len(line.rstrip()) <= 80 for line in text.splitlines()), text  # the note too
