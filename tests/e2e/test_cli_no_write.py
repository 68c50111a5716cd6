"""Commands that must not write (issue 9, item 8), counted in the log itself.

`replay` promises to write nothing; `recover` has nothing to do for a workflow
the store does not hold; `run --workflow NAME` refuses a name the module does
not define before it writes anything. Each test counts the store's events
(rows and last position) before and after the command: real subprocesses, real
files, as tests/e2e/test_cli.py.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import psycopg
import pytest

from tests import postgres
from tests.e2e.test_cli import FLAKY, TWO_WORKFLOWS, assert_user_error, flowledger
from tests.e2e.test_cli_read_side import SHOP

# The shop workflow, and a second one the shop's store has never seen.
SHOP_AND_MORE = SHOP + '''

more = fl.Workflow("more", topics=["t"])


@more.producer(publishes=["t"])
def produce(ctx, state):
    ctx.publish("t", message_id="m", payload=1)
'''


def log_size(path: Path) -> tuple[int, int]:
    """(rows, last position) of the store's log."""
    with sqlite3.connect(path) as db:
        rows, last = db.execute("SELECT COUNT(*), MAX(rowid) FROM stored_events").fetchone()
    return int(rows), int(last or 0)


def workflows_in(path: Path) -> list[str]:
    with sqlite3.connect(path) as db:
        return sorted(name for (name,) in db.execute("SELECT name FROM fl_workflows"))


@pytest.fixture
def shop(tmp_path: Path) -> Path:
    """A folder whose store (flowledger.db) holds one completed shop session."""
    (tmp_path / "shop.py").write_text(SHOP)
    (tmp_path / "shop_and_more.py").write_text(SHOP_AND_MORE)
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)
    result = flowledger("run", "shop.py", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    return tmp_path


def a_run_of(folder: Path) -> str:
    found = json.loads(flowledger("runs", "--json", cwd=folder).stdout)
    return str(next(r["run_id"] for r in found if r["handler"] == "BookOrder"))


def test_replay_registers_nothing(shop: Path) -> None:
    store = shop / "flowledger.db"
    run = a_run_of(shop)
    before = log_size(store)

    # The module also defines `more`, which the store has never seen.
    replayed = flowledger("replay", run, "shop_and_more.py", cwd=shop)
    assert replayed.returncode == 0, replayed.stderr + replayed.stdout
    assert "Same" in replayed.stdout
    as_json = flowledger("replay", run, "shop_and_more.py", "--json", cwd=shop)
    assert json.loads(as_json.stdout)["same"] is True

    assert log_size(store) == before
    assert workflows_in(store) == ["shop"]


def test_replay_still_runs_the_pre_flight_checks(shop: Path) -> None:
    store = shop / "flowledger.db"
    (shop / "broken.py").write_text(SHOP.replace('publishes=["booked"]', 'publishes=["nope"]'))
    before = log_size(store)

    assert_user_error(flowledger("replay", a_run_of(shop), "broken.py", cwd=shop),
                      "uses topic 'nope', which the workflow does not declare")
    assert log_size(store) == before


def test_replay_with_code_that_lacks_the_runs_workflow_says_so(shop: Path) -> None:
    store = shop / "flowledger.db"
    before = log_size(store)
    assert_user_error(flowledger("replay", a_run_of(shop), "flaky.py", cwd=shop),
                      "'flaky.py' defines no workflow 'shop', the workflow of run",
                      "(it defines: flaky)", "Nothing was replayed")
    assert log_size(store) == before


def test_recover_on_another_workflows_store_refuses_and_writes_nothing(shop: Path) -> None:
    store = shop / "flowledger.db"
    before = log_size(store)

    assert_user_error(flowledger("recover", "flaky.py", cwd=shop),
                      "holds none of the workflows 'flaky.py' defines (flaky)",
                      "it holds: shop", "Nothing was recovered or written")

    assert log_size(store) == before
    assert workflows_in(store) == ["shop"]


def test_recover_leaves_out_the_workflows_the_store_does_not_hold(shop: Path) -> None:
    store = shop / "flowledger.db"
    before = log_size(store)

    recovered = flowledger("recover", "shop_and_more.py", cwd=shop)

    assert recovered.returncode == 0, recovered.stderr
    assert "Nothing to recover" in recovered.stdout
    assert log_size(store) == before
    assert workflows_in(store) == ["shop"]


def test_recover_needs_an_existing_store(tmp_path: Path) -> None:
    (tmp_path / "flaky.py").write_text(FLAKY)
    assert_user_error(flowledger("--store", "sqlite:///new.db", "recover", "flaky.py",
                                 cwd=tmp_path), "no store at")
    assert not (tmp_path / "new.db").exists()


def test_run_of_a_workflow_the_module_does_not_define_writes_nothing(shop: Path) -> None:
    store = shop / "flowledger.db"
    before = log_size(store)

    for module in ("flaky.py", "two.py", "shop_and_more.py"):
        result = flowledger("run", module, "--workflow", "nope", cwd=shop)
        assert_user_error(result, f"{module!r} defines no workflow 'nope'",
                          "nothing was run or written")
    assert "(it defines: first, second)" in flowledger(
        "run", "two.py", "--workflow", "nope", cwd=shop).stderr

    assert log_size(store) == before
    assert workflows_in(store) == ["shop"]


# Mistakes in the code a command loads, each with what it says.
CODE_MISTAKES = {
    "no_such_file.py": (None, "no such file"),
    "syntax.py": ("import flowledger as fl\ndef broken(:\n", "does not compile"),
    "imports.py": ("import flowledger as fl\nimport no_such_module_here\n",
                   "cannot be imported"),
    "no_tools.py": (FLAKY.replace("TOOLS = [Remote()]", ""),
                    "tool 'remote', which was not provided (provided: []); list it in the "
                    "module's TOOLS = [...]"),
    "tools_none.py": (FLAKY.replace("TOOLS = [Remote()]", "TOOLS = None"),
                      "tools must be a list of fl.Tool instances"),
    "tools_class.py": (FLAKY.replace("TOOLS = [Remote()]", "TOOLS = Remote"),
                       "tools must be a list of fl.Tool instances"),
    "refusing.py": ("import flowledger as fl\n"
                    "def register(engine):\n"
                    "    raise fl.ConfigurationError('no inbox folder here')\n",
                    "no inbox folder here"),
    "asks_more.py": (FLAKY + "\ndef register(engine):\n    engine.status()\n",
                     "its register(engine) uses engine.status"),
    # Any error the code raises: one line naming it and the user's line, no traceback.
    "raises.py": ("import flowledger as fl\nSETTINGS = {}\nINBOX = SETTINGS['inbox']\n",
                  ("'raises.py' raised KeyError while it was imported: 'inbox' (at ",
                   "raises.py, line 3: INBOX = SETTINGS['inbox'])")),
    # A module that exits as it is imported ended the command there, silently, with
    # its own code (0: a worker under Restart=always started again and again).
    "exits.py": ("import sys\nsys.exit(0)\n",
                 ("'exits.py' called sys.exit(0) while it was imported (at ",
                  "exits.py, line 2: sys.exit(0))", "if __name__ == \"__main__\":")),
    "register_exits.py": (FLAKY + "\ndef register(engine):\n    raise SystemExit(3)\n",
                          ("'register_exits.py' called sys.exit(3) in its register(engine)",)),
    "register_raises.py": (FLAKY + "\ndef register(engine):\n    int('seven')\n",
                           ("'register_raises.py' raised ValueError in its register(engine): "
                            "invalid literal for int() with base 10: 'seven' (at ",
                            "register_raises.py, line ")),
}


@pytest.mark.parametrize("command", ["run", "worker"])
@pytest.mark.parametrize("module", sorted(CODE_MISTAKES))
def test_a_mistake_in_the_code_leaves_no_store_behind(tmp_path: Path, command: str,
                                                      module: str) -> None:
    source, said = CODE_MISTAKES[module]
    if source is not None:
        (tmp_path / module).write_text(source)

    assert_user_error(flowledger("--store", "sqlite:///new.db", command, module,
                                 cwd=tmp_path), *([said] if isinstance(said, str) else said))

    assert not (tmp_path / "new.db").exists(), "a store was made for code that cannot run"


def test_a_bad_max_cost_is_refused_before_a_store_is_made(tmp_path: Path) -> None:
    """It was refused by the engine, once the store was made and the workflows
    recorded in it, and under the Python name (max_cost)."""
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)
    assert_user_error(flowledger("--store", "sqlite:///new.db", "run", "two.py", "--max-cost",
                                 "abc", cwd=tmp_path),
                      "--max-cost must be an amount of 0 or more (a decimal, such as 2.50), "
                      "got 'abc'; nothing was run or written")
    assert not (tmp_path / "new.db").exists()


def test_run_says_when_it_makes_a_new_store(tmp_path: Path) -> None:
    """A typo in --store would start every workflow afresh: the store made is said."""
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)
    first = flowledger("--store", "sqlite:///flows.db", "run", "two.py", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "note: no store at sqlite:///flows.db yet: a new one is made there" in first.stderr
    again = flowledger("--store", "sqlite:///flows.db", "run", "two.py", cwd=tmp_path)
    assert again.returncode == 0 and "new one" not in again.stderr, again.stderr


@pytest.mark.postgres
def test_run_says_when_it_makes_a_new_store_on_postgresql(tmp_path: Path) -> None:
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)
    with postgres.fresh_schema() as url:
        first = flowledger("--store", url, "run", "two.py", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        assert "yet: a new one is made there" in first.stderr
        again = flowledger("--store", url, "run", "two.py", cwd=tmp_path)
        assert again.returncode == 0 and "new one" not in again.stderr, again.stderr


def test_run_of_a_workflow_the_module_does_not_define_on_a_new_store(tmp_path: Path) -> None:
    (tmp_path / "two.py").write_text(TWO_WORKFLOWS)

    assert_user_error(flowledger("--store", "sqlite:///new.db", "run", "two.py", "--workflow",
                                 "nope", cwd=tmp_path), "defines no workflow 'nope'")

    assert not (tmp_path / "new.db").exists()


@pytest.mark.postgres
def test_a_mistake_in_the_code_makes_no_tables_on_postgresql(tmp_path: Path) -> None:
    (tmp_path / "syntax.py").write_text(str(CODE_MISTAKES["syntax.py"][0]))
    with postgres.fresh_schema() as url:
        assert_user_error(flowledger("--store", url, "run", "syntax.py", cwd=tmp_path),
                          "does not compile")
        schema = url.rpartition("schema=")[2]
        with psycopg.connect(postgres.URL) as c:
            made = c.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s",
                             (schema,)).fetchall()
        assert made == [], "the store's schema was made for code that cannot run"


def test_run_of_one_workflow_records_only_that_one(shop: Path) -> None:
    result = flowledger("run", "two.py", "--workflow", "second", cwd=shop)

    assert result.returncode == 0, result.stderr
    assert workflows_in(shop / "flowledger.db") == ["second", "shop"]
    both = flowledger("run", "two.py", cwd=shop)  # without --workflow: every one of them
    assert both.returncode == 0, both.stderr
    assert workflows_in(shop / "flowledger.db") == ["first", "second", "shop"]
