"""The `flowledger` command, end to end: real subprocesses, real files, real stores."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger import demo
from flowledger.engine.faults import CRASH_EXIT_CODE

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "inbox_to_ledger" / "workflow.py"
RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

FLAKY = '''
import flowledger as fl

wf = fl.Workflow("flaky", topics=["jobs"])


class Remote(fl.Tool):
    name = "remote"

    @fl.mutator  # no reconcile: an uncertain call cannot be settled without a person
    def send(self, job):
        raise fl.UncertainOutcome("timeout talking to the remote")


@wf.producer(publishes=["jobs"])
def feed(ctx, state):
    ctx.publish("jobs", message_id="job-1", payload={"n": 1})


@wf.consumer(subscribe=["jobs"], tools=["remote"])
class Send:
    def prepare(self, ctx, state):
        jobs = ctx.peek("jobs", limit=1)
        if not jobs:
            return fl.Prepared()
        return fl.Prepared(reservations={"jobs": [jobs[0].message_id]}, data=jobs[0].payload)

    def mutate(self, ctx, prepared):
        ctx.tools.remote.send(prepared.data)


TOOLS = [Remote()]
'''

BUGGY = '''
import os
import flowledger as fl

wf = fl.Workflow("buggy", topics=["jobs"])


@wf.producer(publishes=["jobs"])
def feed(ctx, state):
    ctx.publish("jobs", message_id="job-1", payload={"n": 1})


@wf.consumer(subscribe=["jobs"])
class Work:
    def prepare(self, ctx, state):
        jobs = ctx.peek("jobs", limit=1)
        if not jobs:
            return fl.Prepared()
        if os.environ.get("WITH_BUG"):
            raise KeyError("a bug in the handler")
        return fl.Prepared(reservations={"jobs": [jobs[0].message_id]})
'''

TWO_WORKFLOWS = '''
import flowledger as fl

first = fl.Workflow("first", topics=["t"])
second = fl.Workflow("second", topics=["t"])
for wf in (first, second):
    @wf.producer(publishes=["t"])
    def produce(ctx, state):
        ctx.publish("t", message_id="m", payload=1)
'''

RULE_BREAKER = '''
import flowledger as fl

wf = fl.Workflow("rules", topics=["in", "out"])


@wf.producer(publishes=["in"])
def feed(ctx, state):
    ctx.publish("in", message_id="a", payload=1)


@wf.consumer(subscribe=["in"])
class Publishes:
    def prepare(self, ctx, state):
        found = ctx.peek("in", limit=1)
        return fl.Prepared(reservations={"in": [found[0].message_id]}) if found else None

    def next(self, ctx, prepared, outcome):
        ctx.publish("out", message_id="x", payload=1)  # "out" is not declared
'''

BROKEN_DEFINITION = '''
import flowledger as fl

wf = fl.Workflow("broken", topics=["a"])

@wf.producer(publishes=["b"])
def produce(ctx, state):
    pass

@wf.consumer(subscribe=[])
class Orphan:
    def prepare(self, ctx, state):
        pass
'''


def flowledger(*args: str, cwd: Path, env: dict[str, str] | None = None
               ) -> subprocess.CompletedProcess[str]:
    """The command as a user runs it, in its own process."""
    full_env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    full_env.update({"COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "flowledger.cli", *args], cwd=cwd,
                          env=full_env, capture_output=True, text=True, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    """Exit code 2, one line on stderr, no traceback anywhere."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder with the example's inbox, as the example expects to find it."""
    shutil.copytree(EXAMPLE.parent / "inbox", tmp_path / "inbox")
    return tmp_path


def ledger_keys(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return [k for (k,) in db.execute("SELECT key FROM ledger_rows ORDER BY row_id")]


# ----------------------------------------------------------------------- demo


def test_demo_runs_the_example_end_to_end(tmp_path: Path) -> None:
    result = flowledger("demo", "--dir", "demo", cwd=tmp_path)

    assert result.returncode == 0, result.stderr
    assert len(ledger_keys(tmp_path / "demo" / "ledger.db")) == 5
    assert "Total EUR: 1,469.01" in result.stdout
    assert "MutationApplied" in result.stdout  # the log excerpt shows the mutation ledger
    assert "flowledger --store sqlite:///demo/flow.db log" in result.stdout
    assert "flowledger --store sqlite:///demo/flow.db status" in result.stdout

    status = flowledger("--store", "sqlite:///demo/flow.db", "status", cwd=tmp_path)
    assert status.returncode == 0
    assert "inbox-to-ledger" in status.stdout


def test_demo_starts_from_scratch_each_time(tmp_path: Path) -> None:
    for _ in range(2):
        result = flowledger("demo", "--dir", "demo", cwd=tmp_path)
        assert result.returncode == 0, result.stderr

    assert len(ledger_keys(tmp_path / "demo" / "ledger.db")) == 5
    assert "Rows: 5" in (tmp_path / "demo" / "summary.md").read_text()


def test_demo_folder_can_run_the_workflow_again(tmp_path: Path) -> None:
    flowledger("demo", "--dir", "demo", cwd=tmp_path)
    shutil.copy(EXAMPLE.parent / "inbox" / "2024-03-01-hetzner-invoice.eml",
                tmp_path / "demo" / "inbox" / "copy-of-a-seen-email.eml")

    # The command the demo prints last.
    result = flowledger("--store", "sqlite:///flow.db", "run", "workflow.py",
                        cwd=tmp_path / "demo")

    assert result.returncode == 0, result.stderr
    assert len(ledger_keys(tmp_path / "demo" / "ledger.db")) == 5  # same Message-ID


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(tmp_path: Path) -> None:
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.txt").write_text("do not delete")

    assert_user_error(flowledger("demo", "--dir", "precious", cwd=tmp_path), "refusing")
    assert (tmp_path / "precious" / "thesis.txt").exists()


def test_bundled_example_is_found_in_a_wheel_and_in_a_checkout(tmp_path: Path) -> None:
    assert demo.bundled_example_dir() == EXAMPLE.parent  # this checkout

    wheel_package = tmp_path / "site-packages" / "flowledger"
    shutil.copytree(EXAMPLE.parent, wheel_package / "_examples" / "inbox_to_ledger")
    assert demo.bundled_example_dir(wheel_package) == (
        wheel_package / "_examples" / "inbox_to_ledger")

    with pytest.raises(demo.DemoError, match="bundled example is missing"):
        demo.bundled_example_dir(tmp_path / "elsewhere" / "flowledger")


def test_run_demo_reports_what_happened(tmp_path: Path) -> None:
    report = demo.run_demo(tmp_path / "demo")

    assert report.succeeded
    assert len(report.emails) == len(report.ledger_rows) == 5
    assert "Rows: 5" in report.summary
    # The first session stops on its small budget; a later one finishes.
    assert report.sessions[0].status == "budget_exhausted"
    assert [e.name for e in report.trace if e.name.startswith("Mutation")] == [
        "MutationInFlight", "MutationApplied"]


# ------------------------------------------------------------ run, status, log


def test_run_status_and_log_on_the_example(workdir: Path) -> None:
    store = f"sqlite:///{workdir / 'flow.db'}"
    env = {"FLOWLEDGER_EXAMPLE_DIR": str(workdir)}

    run = flowledger("run", str(EXAMPLE), "--store", store, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    assert "completed" in run.stdout
    assert len(ledger_keys(workdir / "ledger.db")) == 5

    again = flowledger("run", str(EXAMPLE), "--store", store, cwd=REPO, env=env)
    assert again.returncode == 0
    assert len(ledger_keys(workdir / "ledger.db")) == 5

    status = flowledger("status", cwd=workdir, env={"FLOWLEDGER_STORE": store})
    assert status.returncode == 0, status.stderr
    assert re.search(r"inbox-to-ledger\s+active", status.stdout)
    assert "No open sessions." in status.stdout
    assert "Nothing is blocked." in status.stdout

    log = flowledger("--store", store, "log", "--workflow", "inbox-to-ledger", cwd=workdir)
    assert log.returncode == 0, log.stderr
    assert "Input.Registered" in log.stdout
    assert "HandlerRun.MutationInFlight" in log.stdout
    assert "TopicEvent.Published" in log.stdout

    tail = flowledger("--store", store, "log", "--workflow", "inbox-to-ledger", "--limit", "3",
                      cwd=workdir)
    assert len(tail.stdout.strip().splitlines()) == 1 + 3  # the header and three events
    assert "Workflow.SessionClosed" in tail.stdout.splitlines()[-1]


def test_log_of_one_run_as_the_demo_suggests(tmp_path: Path) -> None:
    shown = flowledger("demo", "--dir", "demo", cwd=tmp_path).stdout
    suggested = re.search(r"flowledger (--store \S+ log --run \S+)", shown)
    assert suggested is not None

    one = flowledger(*suggested.group(1).split(), cwd=tmp_path)

    assert one.returncode == 0, one.stderr
    names = [line.split()[3] for line in one.stdout.strip().splitlines()[1:]]
    assert names[0] == "HandlerRun.Created"
    assert "HandlerRun.MutationApplied" in names
    assert names[-1] == "HandlerRun.Committed"


def test_run_a_dotted_module_with_module_level_workflows(tmp_path: Path) -> None:
    (tmp_path / "my_flows.py").write_text(TWO_WORKFLOWS)

    both = flowledger("run", "my_flows", cwd=tmp_path)
    assert both.returncode == 0, both.stderr
    assert "first" in both.stdout and "second" in both.stdout

    one = flowledger("run", "my_flows", "--workflow", "second", "--trigger", "event",
                     cwd=tmp_path)
    assert one.returncode == 0, one.stderr
    assert "second" in one.stdout and "first" not in one.stdout


# ------------------------------------------------- blocked, resolve, resume


def test_a_blocked_run_is_shown_and_decided(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)

    first = flowledger("run", "flaky.py", cwd=tmp_path)
    assert first.returncode == 1
    assert "suspended" in first.stdout

    blocked = flowledger("blocked", cwd=tmp_path)
    assert blocked.returncode == 0
    # The short id it prints is what `resolve` takes.
    run_id = re.search(r"decide: +flowledger resolve ([0-9a-f]{8}) did_not_happen$",
                       blocked.stdout, re.MULTILINE)
    assert run_id is not None, blocked.stdout
    assert f"flowledger resolve {run_id.group(1)} skip" in blocked.stdout
    assert "mutation: remote.send({n: 1}) is indeterminate" in blocked.stdout

    assert flowledger("run", "flaky.py", cwd=tmp_path).returncode == 1  # blocked
    assert_user_error(flowledger("resume", "flaky", cwd=tmp_path), "decide first")
    assert_user_error(flowledger("resolve", run_id.group(1), "retry_reconcile", cwd=tmp_path),
                      "no reconcile method")

    decided = flowledger("resolve", run_id.group(1), "skip", cwd=tmp_path)
    assert decided.returncode == 0, decided.stderr
    assert "Recorded skip" in decided.stdout

    assert flowledger("run", "flaky.py", cwd=tmp_path).returncode == 0
    assert "Nothing is blocked." in flowledger("status", cwd=tmp_path).stdout
    assert_user_error(flowledger("resolve", run_id.group(1), "skip", cwd=tmp_path),
                      "its mutation is skipped")
    resumed = flowledger("resume", "flaky", cwd=tmp_path)
    assert resumed.returncode == 0
    assert "already active" in resumed.stdout


def test_a_reason_that_ends_its_sentence_gets_no_second_stop(tmp_path: Path) -> None:
    (tmp_path / "rules.py").write_text(RULE_BREAKER)
    assert flowledger("run", "rules.py", cwd=tmp_path).returncode == 1
    again = flowledger("run", "rules.py", cwd=tmp_path)
    said = " ".join((again.stdout + again.stderr).split())
    assert "publishes=[...]. Nothing was done" in said, said
    assert ".. Nothing" not in said


def test_the_commands_suggested_act_on_the_store_given(tmp_path: Path) -> None:
    """Pasted into a shell as printed, each suggested command acts on the store
    of the message, not on ./flowledger.db, where `run` would start afresh;
    `decide:` offers one whole command a line (`a|b` would be a pipe)."""
    (tmp_path / "flaky.py").write_text(FLAKY)
    store = ("--store", "sqlite:///my flows.db")  # a space: the suggestion quotes it
    assert flowledger(*store, "run", "flaky.py", cwd=tmp_path).returncode == 1

    blocked = flowledger(*store, "blocked", cwd=tmp_path).stdout
    lines = re.findall(r"^    (?:decide: +| {10})(flowledger .*)$", blocked, re.MULTILINE)
    assert [shlex.split(line)[-1] for line in lines] == ["did_not_happen", "skip"], blocked
    assert all(shlex.split(line)[1:3] == list(store) for line in lines), lines
    again = flowledger(*store, "run", "flaky.py", cwd=tmp_path)
    assert "flowledger --store 'sqlite:///my flows.db' blocked" in again.stdout + again.stderr

    shell = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
             f"{os.environ.get('PATH', '')}", "COLUMNS": "200"}
    shell.pop("FLOWLEDGER_STORE", None)
    decided = subprocess.run(["bash", "-c", lines[1]], cwd=tmp_path, env=shell,
                             capture_output=True, text=True, timeout=120)  # as pasted
    assert decided.returncode == 0, decided.stderr
    assert "Recorded skip" in decided.stdout
    assert "flowledger --store 'sqlite:///my flows.db' run PATH_OR_MODULE" in decided.stdout
    assert "Nothing is blocked." in flowledger(*store, "blocked", cwd=tmp_path).stdout
    assert not (tmp_path / "flowledger.db").exists()


def test_a_workflow_in_error_waits_for_resume(tmp_path: Path) -> None:
    (tmp_path / "buggy.py").write_text(BUGGY)

    failed = flowledger("run", "buggy.py", cwd=tmp_path, env={"WITH_BUG": "1"})
    assert failed.returncode == 1
    assert "failed" in failed.stdout and "KeyError" in failed.stdout

    waiting = flowledger("blocked", cwd=tmp_path)
    assert "buggy / Work  failed:logic" in waiting.stdout
    assert "KeyError" in waiting.stdout
    assert "flowledger resume buggy" in waiting.stdout
    assert flowledger("run", "buggy.py", cwd=tmp_path).returncode == 1  # blocked

    resumed = flowledger("resume", "buggy", cwd=tmp_path)  # the bug is fixed: no WITH_BUG
    assert resumed.returncode == 0
    assert "active again" in resumed.stdout
    assert flowledger("run", "buggy.py", cwd=tmp_path).returncode == 0
    assert "Nothing is blocked." in flowledger("blocked", cwd=tmp_path).stdout


def test_recover_finishes_what_a_crash_left(workdir: Path) -> None:
    # The process dies right after the second ledger insert, before the log
    # knows it happened: recovery must reconcile, never insert again.
    crashed = flowledger("run", str(EXAMPLE), cwd=workdir,
                         env={"FLOWLEDGER_CRASH_AT": "after_call#2"})
    assert crashed.returncode == CRASH_EXIT_CODE
    assert len(ledger_keys(workdir / "ledger.db")) == 2

    recovered = flowledger("recover", str(EXAMPLE), cwd=workdir)
    assert recovered.returncode == 0, recovered.stderr + recovered.stdout
    assert "completed" in recovered.stdout
    keys = ledger_keys(workdir / "ledger.db")
    assert len(keys) == len(set(keys)) == 5

    nothing = flowledger("recover", str(EXAMPLE), cwd=workdir)
    assert nothing.returncode == 0
    assert "Nothing to recover" in nothing.stdout


def test_recover_of_a_session_its_living_holder_keeps_says_nothing_was_recovered(
        tmp_path: Path) -> None:
    """A session this test's own process holds (alive, its lease running) is
    left to it: recover said so under "Recovered sessions"."""
    from flowledger.engine.faults import SimulatedCrash

    (tmp_path / "flaky.py").write_text(FLAKY)
    namespace: dict[str, Any] = {}
    exec(compile(FLAKY, "flaky.py", "exec"), namespace)

    def stop_after_opening(point: str) -> None:
        if point == "after_append:session_open":
            raise SimulatedCrash(point)  # the session stays open, held by this process

    with fl.Engine(f"sqlite:///{tmp_path / 'flowledger.db'}",
                   checkpoint=stop_after_opening) as engine:
        engine.register(namespace["wf"], tools=namespace["TOOLS"])
        with pytest.raises(SimulatedCrash):
            engine.run_session("flaky")
    held = flowledger("recover", "flaky.py", cwd=tmp_path)
    assert "Sessions still held (nothing recovered)" in held.stdout, held.stdout
    assert "Recovered sessions" not in held.stdout
    assert "busy" in held.stdout


def test_the_next_run_recovers_what_a_crash_left(workdir: Path) -> None:
    crashed = flowledger("run", str(EXAMPLE), cwd=workdir,
                         env={"FLOWLEDGER_CRASH_AT": "after_call#2"})
    assert crashed.returncode == CRASH_EXIT_CODE
    again = flowledger("run", str(EXAMPLE), cwd=workdir)
    assert again.returncode == 0, again.stderr + again.stdout
    keys = ledger_keys(workdir / "ledger.db")
    assert len(keys) == len(set(keys)) == 5


# ----------------------------------------------------------- user mistakes


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with faulty workflow files and a store that holds one workflow.

    Shared by the cases below: a mistake changes nothing, so none disturbs another.
    """
    folder = tmp_path_factory.mktemp("mistakes")
    (folder / "empty.py").write_text("ANSWER = 42\n")
    (folder / "broken.py").write_text(BROKEN_DEFINITION)
    (folder / "flaky.py").write_text(FLAKY)
    assert flowledger("run", "flaky.py", cwd=folder).returncode == 1
    return folder


@pytest.mark.parametrize(("args", "fragment"), [
    (["--store", "nope", "status"], "is not a URL"),
    (["--store", "mysql://db", "status"], "unknown scheme 'mysql'; use sqlite:///"),
    (["--store", "sqlite:///no/such/folder/flow.db", "status"], "does not exist"),
    (["--store", "sqlite:///never-ran.db", "status"], "no store at"),
    (["--store", "sqlite:///empty.py", "status"], "cannot open store"),  # not a database
    (["--store", "sqlite:///.", "run", "flaky.py"], "cannot open store"),  # a folder
    # PostgreSQL is not supported in this release (see the README).
    (["--store", "postgresql://user@127.0.0.1:5432/flow", "status"],
     "store 'postgresql://user@127.0.0.1:5432/flow'"),
    (["run", "no_such_file.py"], "no such file"),
    (["run", "no_such_package.flows"], "no module named"),
    (["run", "."], "is a folder"),
    (["run", "empty.py"], "registers no workflow"),
    (["run", "broken.py"], "consumer 'Orphan' subscribes to nothing"),
    (["run", "flaky.py", "--workflow", "nope"], "defines no workflow 'nope'"),
    (["run", "flaky.py", "--max-cost", "a lot"], "--max-cost must be an amount of 0 or more"),
    (["run", "flaky.py", "--max-cost", "-1"], "--max-cost must be an amount of 0 or more"),
    (["--store", "sqlite:/flow.db", "status"], "store URL 'sqlite:/flow.db' is not a URL"),
    (["resolve", "00000000-0000-0000-0000-000000000000", "skip"], "no run"),
    (["resolve", "not-a-run-id", "skip"], "is not a run id"),
    (["resume", "nope"], "no workflow named 'nope'"),
    (["resume", "nope"], "(it holds: flaky)"),
    (["events", "nope", "jobs", "job-1"], "no workflow named 'nope'"),
    (["events", "flaky", "nope", "job-1"], "workflow 'flaky' has no topic 'nope' (its topics: "
                                           "jobs)"),
    (["events", "flaky", "jobs", "job-9"], "no message 'job-9' in topic 'jobs'"),
    (["log", "--workflow", "nope"], "no workflow named 'nope'"),
    (["follow", "--workflow", "nope"], "no workflow named 'nope'"),  # it waited for ever
    (["log", "--run", "00000000-0000-0000-0000-000000000000"], "no run"),
])
def test_user_mistakes_exit_2_on_one_line(mistakes: Path, args: list[str],
                                          fragment: str) -> None:
    assert_user_error(flowledger(*args, cwd=mistakes), fragment)


def test_no_store_where_none_was_named_says_it_was_the_default(tmp_path: Path) -> None:
    """In a folder without one, it said only "check the file's name", of a
    file the user never named."""
    assert_user_error(flowledger("status", cwd=tmp_path),
                      "no store at", "sqlite:///flowledger.db is also the default store, in "
                      "the current folder, used when neither --store nor FLOWLEDGER_STORE "
                      "names one: if you named none, name yours with --store URL or "
                      "FLOWLEDGER_STORE")
    named = flowledger("--store", "sqlite:///mine.db", "status", cwd=tmp_path)
    assert_user_error(named, "no store at")
    assert "default store" not in named.stderr


def test_the_installed_script_is_the_same_command(tmp_path: Path) -> None:
    script = shutil.which("flowledger", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("no flowledger script next to this Python")

    result = subprocess.run([script, "--store", "nope", "status"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60)

    assert_user_error(result, "is not a URL")
    assert "Usage" in subprocess.run([script, "--help"], capture_output=True, text=True,
                                     timeout=60).stdout


@pytest.mark.parametrize("spec", ["after_cal", "after_call#0", "after_call#two"])
def test_a_crash_point_that_does_not_exist_is_refused_instead_of_never_reached(
        tmp_path: Path, spec: str) -> None:
    """A mistyped FLOWLEDGER_CRASH_AT would never crash anything, and a crash test
    relying on it would pass without testing: it is a user error, said at once."""
    shutil.copytree(EXAMPLE.parent / "inbox", tmp_path / "inbox")
    result = flowledger("run", str(EXAMPLE), cwd=tmp_path, env={"FLOWLEDGER_CRASH_AT": spec})
    assert_user_error(result, "FLOWLEDGER_CRASH_AT", "names no durable point", "after_call#2")
    assert not (tmp_path / "flowledger.db").exists()  # refused before the store is opened


@pytest.mark.parametrize("args", [["log"], ["log", "--json"]], ids=["text", "json"])
def test_a_reader_that_stops_early_ends_the_command_quietly(tmp_path: Path,
                                                             args: list[str]) -> None:
    """`flowledger log | head -1`: it exited 1 (a session not done) with a
    closed pipe; now 141, as a command a closed pipe stopped, and says nothing."""
    import flowledger as fl

    store = f"sqlite:///{tmp_path / 'flow.db'}"
    wf = fl.Workflow("many", topics=["t"])

    @wf.producer(publishes=["t"])
    def fill(ctx: object, state: object) -> None:
        for i in range(1500):  # a log of well over a pipe's 64 kB
            ctx.publish("t", message_id=str(i), payload={"i": i})  # type: ignore[attr-defined]

    with fl.Engine(store) as engine:
        engine.register(wf)
        engine.run_session("many")
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_STORE"}
    reader = subprocess.Popen([sys.executable, "-m", "flowledger.cli", "--store", store, *args],
                              cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.readline()
    reader.stdout.close()  # as `head -1` does, the rest unread
    said = reader.stderr.read()
    assert reader.wait(timeout=60) == 141, said
    assert said == ""


def test_json_shows_any_value_the_log_holds(tmp_path: Path) -> None:
    """`log --json` (and `follow --json`, which printed another shape) failed on
    a secret's reference (deep-copied: a Secret is immutable) and on a payload
    keyed by a tuple, which the codec keeps."""
    import json
    from decimal import Decimal

    import flowledger as fl

    class Pay(fl.Tool):
        name = "pay"

        @fl.mutator
        def charge(self, key: fl.Secret, amount: Decimal) -> dict[str, object]:
            return {"ok": True, "raw": b"\x01\x02"}

    wf = fl.Workflow("wf", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> bool:
        if state is None:
            ctx.publish("in", message_id="m1", payload={"amount": Decimal("1.10"),
                                                        ("a", 1): "tuple-keyed"})
        return True

    @wf.consumer(subscribe=["in"])
    class Charge:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            m = ctx.peek("in", limit=1)
            return fl.Prepared({"in": [m[0].message_id]}, data=m[0].payload["amount"]) if m \
                else None

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.pay.charge(fl.Secret.from_env("PAY_KEY"), prepared.data)

    store = f"sqlite:///{tmp_path / 'flow.db'}"
    os.environ["PAY_KEY"] = "sk-never-shown"
    try:
        with fl.Engine(store) as engine:
            engine.register(wf, tools=[Pay()])
            assert engine.run_session("wf").status == "completed"
    finally:
        del os.environ["PAY_KEY"]
    logged = flowledger("--store", store, "log", "--json", cwd=tmp_path)
    assert logged.returncode == 0, logged.stderr
    events = [json.loads(line) for line in logged.stdout.splitlines()]
    assert "Secret.from_env('PAY_KEY')" in logged.stdout and "sk-never" not in logged.stdout
    assert any(e["fields"].get("payload", {}).get("('a', 1)") == "tuple-keyed"
               for e in events if isinstance(e["fields"].get("payload"), dict))
    follower = subprocess.Popen([sys.executable, "-m", "flowledger.cli", "--store", store,
                                 "follow", "--json", "--after", "0", "--interval", "0.05"],
                                cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
    assert follower.stdout is not None
    followed = [json.loads(follower.stdout.readline()) for _ in events]
    follower.send_signal(signal.SIGINT)
    follower.communicate(timeout=10)
    assert [{k: v for k, v in e.items() if k != "notable"} for e in followed] == events
