"""Options that take one of a fixed set of values (issue 9, item 9).

A value outside the set is a user error: exit 2, one line that names the
option and lists the values it takes, from the engine's own lists — never
"No such runs." and exit 0, never a parser's "Value error". The Python API
refuses the same values with fl.InvalidArgument. Real subprocesses, real files.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import flowledger as fl
from flowledger.domain.phases import RunStatus
from flowledger.domain.session import SessionOutcome, Trigger
from flowledger.read_side.queries import ACTIONS, COSTS_BY, RUN_STATUSES, SESSION_STATUSES
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.e2e.test_cli_read_side import SHOP


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder whose store holds one completed shop session; the commands below
    are refused before they read it, or only read it."""
    folder = tmp_path_factory.mktemp("filters")
    (folder / "shop.py").write_text(SHOP)
    result = flowledger("run", "shop.py", cwd=folder)
    assert result.returncode == 0, result.stderr
    return folder


def test_the_lists_come_from_the_domain() -> None:
    assert set(RUN_STATUSES) == {s.value for s in RunStatus} | {"paused", "failed"}
    assert RUN_STATUSES.index("failed") < RUN_STATUSES.index("failed:logic")
    assert set(SESSION_STATUSES) == {"open"} | {o.value for o in SessionOutcome}


@pytest.mark.parametrize(("args", "option", "valid"), [
    (["runs", "--status", "nonsense"], "--status", RUN_STATUSES),
    (["runs", "--status", "FAILED"], "--status", RUN_STATUSES),
    (["sessions", "--status", "nonsense"], "--status", SESSION_STATUSES),
    (["cost", "--by", "week"], "--by", COSTS_BY),
    (["cost", "--by", "week", "--json"], "--by", COSTS_BY),
    (["run", "shop.py", "--trigger", "cron"], "--trigger", tuple(t.value for t in Trigger)),
    (["resolve", "00000000-0000-0000-0000-000000000000", "undo"], "ACTION", ACTIONS),
])
def test_a_value_outside_the_set_is_refused_with_the_values_it_takes(
        shop: Path, args: list[str], option: str, valid: tuple[str, ...]) -> None:
    bad = args[-2] if args[-1] == "--json" else args[-1]

    result = flowledger(*args, cwd=shop)

    assert_user_error(result, f"{option} {bad!r} is not one of: {', '.join(valid)}")
    assert "Value error" not in result.stderr and "Usage:" not in result.stderr


def test_a_refused_run_runs_nothing(shop: Path) -> None:
    before = json.loads(flowledger("sessions", "--json", cwd=shop).stdout)
    assert_user_error(flowledger("run", "shop.py", "--trigger", "cron", cwd=shop), "--trigger")
    assert json.loads(flowledger("sessions", "--json", cwd=shop).stdout) == before


@pytest.mark.parametrize(("args", "expected"), [
    (["runs", "--status", "committed"], 3),
    (["runs", "--status", "failed"], 0),  # a family: failed:logic, failed:internal
    (["runs", "--status", "paused:approval"], 0),
    (["sessions", "--status", "completed"], 1),
    (["sessions", "--status", "open"], 0),
    (["cost", "--by", "handler"], 2),
    (["cost", "--by", "day"], 1),
])
def test_each_value_in_the_set_is_taken(shop: Path, args: list[str], expected: int) -> None:
    result = flowledger(*args, "--json", cwd=shop)

    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert len(found["lines"] if isinstance(found, dict) else found) == expected


def test_the_help_shows_the_values(shop: Path) -> None:
    assert "[run|session|handler|day|workflow]" in flowledger("cost", "--help", cwd=shop).stdout
    assert "[schedule|manual|event]" in flowledger("run", "--help", cwd=shop).stdout
    runs_help = " ".join(flowledger("runs", "--help", cwd=shop).stdout.split())
    assert "paused:reconciliation" in runs_help and "superseded" in runs_help


def test_a_workflow_filter_lists_the_workflows_of_the_store(shop: Path) -> None:
    for command in (["runs"], ["sessions"], ["cost"], ["log"]):
        assert_user_error(flowledger(*command, "--workflow", "nope", cwd=shop),
                          "no workflow named 'nope'", "(it holds: shop)")


def test_the_python_api_refuses_the_same_values(shop: Path) -> None:
    with fl.Engine(f"sqlite:///{shop / 'flowledger.db'}") as engine:
        with pytest.raises(fl.InvalidArgument, match="run status 'nonsense' is not one of: "
                                                     "active, paused, paused:transient"):
            engine.runs(status="nonsense")
        with pytest.raises(fl.InvalidArgument, match="session status 'nonsense' is not one "
                                                     "of: open, completed"):
            engine.sessions(status="nonsense")
        with pytest.raises(fl.InvalidArgument, match="choose one of run, session"):
            engine.costs(by="week")  # type: ignore[arg-type]
        with engine.at(1) as past, pytest.raises(fl.InvalidArgument, match="run status"):
            past.runs(status="nonsense")  # the past is asked the same way
        assert len(engine.runs(status="committed")) == 3
        assert engine.sessions(status="completed")[0].status == "completed"
