"""Engines for one test: all on the same store and the same manual clock, each
with ids of its own seed, all closed at the end."""

from __future__ import annotations

from typing import Any

from flowledger.engine.clock import ManualClock, SeededIds
from flowledger.engine.engine import Engine


class EngineFactory:
    """`make()` opens another engine on the test's store: the same store after a
    crash, or a second "process" racing the first. Deterministic: the n-th engine
    draws its ids from `SeededIds(n)`, so two engines never repeat each other's."""

    def __init__(self, store: str, clock: ManualClock) -> None:
        self.store = store
        self.clock = clock
        self.engines: list[Engine] = []

    def __call__(self, **options: Any) -> Engine:
        """A new engine; `options` are fl.Engine's (store=, clock=, ids=, policy=, ...)."""
        options.setdefault("clock", self.clock)
        options.setdefault("ids", SeededIds(len(self.engines)))
        engine = Engine(options.pop("store", self.store), **options)
        self.engines.append(engine)
        return engine

    def close_all(self) -> None:
        for engine in self.engines:
            engine.close()
        self.engines.clear()
