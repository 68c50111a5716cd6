"""Opening the store a command works on, and the engine the commands drive."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from eventsourcing.persistence import InfrastructureFactoryError, PersistenceError

import flowledger as fl
from flowledger.authoring.definition import Workflow as WorkflowDefinition
from flowledger.cli.exits import CommandError
from flowledger.infrastructure.store_url import parse_store_url


class CommandEngine(fl.Engine):
    """An engine that remembers which workflows this command registered, in order.

    With `record=False`, registering a workflow the store does not hold yet runs
    every pre-flight check but appends nothing: the workflow is kept in
    `unrecorded`, for `record` to append later (`run`, once it knows which
    workflows it runs) or never (`replay` and `recover`, which write no
    registration).
    """

    def __init__(self, store: str, *, record: bool = True) -> None:
        super().__init__(store)
        self.registered_names: list[str] = []
        self.recording = record
        self.unrecorded: dict[str, WorkflowDefinition] = {}

    def register(self, workflow: fl.Workflow, tools: Iterable[fl.Tool] = ()) -> None:
        super().register(workflow, tools)
        if workflow.name not in self.registered_names:
            self.registered_names.append(workflow.name)

    def _record_new_workflow(self, workflow: WorkflowDefinition) -> None:
        if self.recording:
            super()._record_new_workflow(workflow)
        else:
            self.unrecorded[workflow.name] = workflow

    def record(self, names: Iterable[str]) -> None:
        """Append the registration of those of `names` that were kept unrecorded."""
        for name in names:
            workflow = self.unrecorded.pop(name, None)
            if workflow is not None:
                super()._record_new_workflow(workflow)


@contextmanager
def open_engine(store: str, *, must_exist: bool = False, record: bool = True,
                writes: str | None = None) -> Iterator[CommandEngine]:
    """An engine on `store`, closed when the command ends, whatever happens.

    `record=False`: see CommandEngine. `writes`: what the command writes (it is
    refused on a store opened read-only, `?mode=ro`)."""
    config = parse_store_url(store)
    if writes is not None and config.read_only:
        raise CommandError(f"store {store!r} is opened read-only (?mode=ro), and this command "
                           f"{writes}; drop ?mode=ro to let it write")
    if must_exist and config.path is not None and not config.path.exists():
        raise CommandError(f"no store at {str(config.path)!r} (from {store}); run a workflow "
                           "first, or point --store at an existing store")
    try:
        engine = CommandEngine(store, record=record)
    except (InfrastructureFactoryError, PersistenceError, sqlite3.DatabaseError) as e:
        # The engine lets these through unwrapped when the URL points at
        # something that is not a store: a folder or a file that is not a
        # SQLite database (PersistenceError, sqlite3.DatabaseError), or
        # postgresql:// without the psycopg_pool module (InfrastructureFactoryError,
        # whose cause says what is missing).
        cause = f" ({e.__cause__})" if e.__cause__ and str(e.__cause__) != str(e) else ""
        raise CommandError(f"cannot open store {store!r}: {e}{cause}") from e
    try:
        yield engine
    finally:
        engine.close()
