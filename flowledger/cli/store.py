"""Opening the store a command works on, and the engine the commands drive."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import flowledger as fl
from flowledger.authoring.definition import Workflow as WorkflowDefinition
from flowledger.cli.exits import CommandError
from flowledger.cli.render import err
from flowledger.domain.errors import NoStoreYet
from flowledger.infrastructure.store_url import DEFAULT_STORE, STORE_ENV, parse_store_url, shown


class CommandEngine(fl.Engine):
    """An engine that remembers which workflows this command registered, in order.

    With `record=False`, registering a workflow the store does not hold yet runs
    every pre-flight check but appends nothing: the workflow is kept in
    `unrecorded`, for `record` to append later (`run`, once it knows which
    workflows it runs) or never (`replay` and `recover`, which write no
    registration).
    """

    def __init__(self, store: str, *, record: bool = True, create: bool = True) -> None:
        super().__init__(store, create=create)
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
                writes: str | None = None, reads_side: bool = True, say_new: bool = False
                ) -> Iterator[CommandEngine]:
    """An engine on `store`, closed when the command ends, whatever happens.

    `record=False`: see CommandEngine. `writes`: what the command writes (it is
    refused on a store opened read-only, `?mode=ro`, before any code is loaded).
    `reads_side=False`: the command answers from the log alone (`log`, `at`), so
    a read side left behind is not said. `say_new`: a store made now is said
    (on stderr): a typo in --store would otherwise start everything afresh
    without a word.

    Whatever keeps the store from opening is a FlowledgerError the engine raises
    (ConfigurationError, StoreBusyError): `main` prints it on one line, exit 2.
    The CLI imports no database driver and catches none of their errors."""
    config = parse_store_url(store)
    if writes is not None:
        refuse_writes(store, writes)
    try:
        if say_new and not must_exist and not store.startswith("memory:"):
            try:
                engine = CommandEngine(store, record=record, create=False)
            except NoStoreYet:
                engine = CommandEngine(store, record=record, create=True)  # said once made
                err.print(f"note: no store at {shown(store)} yet: a new one is made there (if "
                          "you meant a store that exists, check --store)", soft_wrap=True,
                          markup=False, highlight=False)
        else:
            engine = CommandEngine(store, record=record, create=not must_exist)
    except NoStoreYet as e:
        if store != DEFAULT_STORE or os.environ.get(STORE_ENV):
            raise
        raise CommandError(f"{e}. {DEFAULT_STORE} is also the default store, in the "
                           f"current folder, used when neither --store nor {STORE_ENV} names "
                           f"one: if you named none, name yours with --store URL or "
                           f"{STORE_ENV}") from e
    try:
        if config.read_only and reads_side:
            _say_how_far_behind(engine)
        yield engine
    finally:
        engine.close()


def refuse_writes(store: str, writes: str) -> None:
    """A command that `writes` is refused on a store opened read-only
    (`?mode=ro`): said before the user's code is loaded."""
    parse_store_url(store).refuse_writes(f"this command {writes}")


def _say_how_far_behind(engine: fl.Engine) -> None:
    """On a store opened read-only, which cannot fold in what its read side
    has not: how much of the log the answers leave out (on stderr)."""
    behind = engine.read_side_behind()
    if behind:
        err.print(f"note: the store is opened read-only (?mode=ro), and its read side (status, "
                  f"runs, costs, audit) has not folded in the log's last {behind} "
                  f"event{'s' if behind != 1 else ''}: a session under way, or a process that "
                  "stopped before folding them in. What follows may leave them out; `log` "
                  "shows them.", soft_wrap=True, markup=False, highlight=False)


def require_workflow(engine: fl.Engine, workflow: str | None) -> None:
    """A workflow named on the command line must be one the store holds: a
    misspelt name would show nothing, and say nothing of why."""
    if workflow is None:
        return
    try:
        engine.workflow(workflow)  # its stream: one read
    except fl.NotFoundError:
        held = sorted(w.name for w in engine.status().workflows)
        raise CommandError(f"no workflow named {workflow!r} in store {shown(engine.store)} "
                           f"(it holds: {', '.join(held) or 'none'})") from None
