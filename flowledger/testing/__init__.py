"""flowledger.testing: test your own workflows (DESIGN §8, ADR 0021).

* pytest fixtures (flowledger/testing/plugin.py, loaded by pytest wherever
  flowledger is installed): `flowledger_engine`, `flowledger_new_engine`,
  `flowledger_clock`, `flowledger_store`, `flowledger_fresh_store`, `flowledger_worker`;
* `crash_at(engine, point)`, `crash_if_reached(engine, point)` and
  `expect_crash(engine)`: an engine dies at a durable point (`DURABLE_POINTS`)
  or inside a tool call, in-process;
* `double(tool)` / `ToolDouble`: tools whose calls are recorded and can be told
  to fail (`Fault`);
* `check_exactly_once(...)`: random histories of sessions, crashes and failures
  (needs hypothesis);
* `assert_projections_rebuild_equal(engine)`.

Importing this module imports neither pytest nor hypothesis.
"""

from __future__ import annotations

from typing import Any

from flowledger.engine.faults import DURABLE_POINTS
from flowledger.testing.crashes import (
    CrashNotReached,
    CrashReport,
    EngineCrashed,
    crash_at,
    crash_if_reached,
    expect_crash,
)
from flowledger.testing.engines import EngineFactory
from flowledger.testing.projection_check import assert_projections_rebuild_equal, projection_rows
from flowledger.testing.stores import fresh_postgres_schema, fresh_store
from flowledger.testing.tool_double import Fault, RecordedCall, ToolDouble, double

__all__ = [
    "DURABLE_POINTS",
    "CrashNotReached",
    "CrashReport",
    "EngineCrashed",
    "EngineFactory",
    "ExactlyOnceViolation",
    "Fault",
    "RecordedCall",
    "ToolDouble",
    "assert_projections_rebuild_equal",
    "check_exactly_once",
    "crash_at",
    "crash_if_reached",
    "double",
    "expect_crash",
    "fresh_postgres_schema",
    "fresh_store",
    "projection_rows",
]


def __getattr__(name: str) -> Any:
    # The exactly-once check needs hypothesis: imported only when asked for.
    if name in ("check_exactly_once", "ExactlyOnceViolation"):
        from flowledger.testing import exactly_once

        return getattr(exactly_once, name)
    raise AttributeError(f"module 'flowledger.testing' has no attribute {name!r}")
