"""Fixtures shared by every suite: a clock, engines on real SQLite files, an external ledger.

The helpers the tests build with (ledger tools, workflows, ways to look at a
store) are in tests/helpers.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from tests.helpers import ExternalLedger


@pytest.fixture
def clock() -> fl.ManualClock:
    return fl.ManualClock()


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'flow.db'}"


@pytest.fixture
def ledger(tmp_path: Path) -> ExternalLedger:
    return ExternalLedger(tmp_path / "ledger.db")


@pytest.fixture
def make_engine(store: str, clock: fl.ManualClock) -> Iterator[Callable[..., fl.Engine]]:
    engines: list[fl.Engine] = []

    def make(**kwargs: Any) -> fl.Engine:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("ids", fl.SeededIds(len(engines)))
        engine = fl.Engine(kwargs.pop("store", store), **kwargs)
        engines.append(engine)
        return engine

    yield make
    for e in engines:
        e.close()
