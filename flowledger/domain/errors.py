"""One error hierarchy, rooted in FlowledgerError.

Every message says what was wrong, where (workflow, handler, run, field) and
what to do next. Connector errors (TransientError, AuthError, PermissionDenied,
UncertainOutcome) are raised by tools; the engine turns them into run statuses.
"""

from __future__ import annotations

from uuid import UUID


class FlowledgerError(Exception):
    """Base of every error flowledger raises on purpose."""

    def __reduce__(self) -> tuple[object, ...]:
        # Pickled with what it holds, whatever its __init__ asks for: an error
        # raised in a process pool's worker or a task queue reaches the caller.
        return (_rebuilt, (type(self), self.args, self.__dict__))


def _rebuilt(cls: type[FlowledgerError], args: tuple[object, ...],
             state: dict[str, object]) -> FlowledgerError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class DefinitionError(FlowledgerError):
    """A workflow definition cannot be registered as written (DESIGN §1.6)."""


class ConfigurationError(FlowledgerError):
    """The engine was configured wrongly (store URL, limits, policy)."""


class EncryptionKeyError(ConfigurationError):
    """A store's cipher key is missing, wrong, malformed, or given for a store
    written in clear (ADR 0022). Nothing was read or written."""


class NoStoreYet(ConfigurationError):
    """A store opened by what does not create one does not exist yet."""


class StoreInClear(EncryptionKeyError):
    """A cipher key was given for a store written in clear."""


class StoreError(FlowledgerError):
    """The store failed under a call of the engine: its server down or
    restarting past the wait, a connection lost with an append whose outcome is
    unknown, writes refused (a read-only role, a standby), a log restored from
    an older backup. The same class on every store, so that a service's
    handling does not change with its store (ADR 0030); `error` is the
    driver's (or the persistence library's) own, also the `__cause__`. What
    the log held stands, and each append is in it whole or not at all."""

    def __init__(self, message: str, error: BaseException | None = None) -> None:
        super().__init__(message)
        self.error = error


class StoreUnreachable(ConfigurationError, StoreError):
    """The store's server did not answer (down, starting, a network cut): a
    worker started before it waits for it; other commands say it and stop."""


class EngineClosed(FlowledgerError):
    """The engine was closed (`Engine.close()`, the end of its `with`): it does
    nothing more; open a new one on the store."""


class EngineForked(EngineClosed):
    """The engine is used in a process forked from the one that opened it: its
    connections, its liveness lock and its lease's heartbeat are the parent's.
    Open a new engine in the child."""


class CorruptEventError(FlowledgerError):
    """A stored event cannot be read back: its body (or its type) was changed or
    damaged outside flowledger. Nothing is skipped: what needed the event stops.

    `position` is its log position (None for a snapshot, which is not part of
    the log), `stream_id` and `version` its stream and place in it, `topic` its
    stored type.
    """

    def __init__(self, message: str, *, position: int | None, stream_id: UUID,
                 version: int, topic: str) -> None:
        super().__init__(message)
        self.position = position
        self.stream_id = stream_id
        self.version = version
        self.topic = topic


class ProjectionConflictError(FlowledgerError):
    """An append could not write a projection's row (or a chain link): its table
    already holds one under that key, written outside flowledger. Nothing of
    the append was stored and the log is intact; rebuilding the projections
    mends them. `table` names the table."""

    def __init__(self, message: str, *, table: str) -> None:
        super().__init__(message)
        self.table = table


class NotFoundError(FlowledgerError):
    """A workflow, run or session named by the caller does not exist."""


class ActionNotApplicable(FlowledgerError):
    """A person's decision does not apply to the run in its current state."""


class LogicError(FlowledgerError):
    """A handler broke a rule of DESIGN §1 (or raised): the run fails as `failed:logic`."""


class InternalError(FlowledgerError):
    """An engine or tool bug: the run fails as `failed:internal`."""


class StoreBusyError(StoreError):
    """Another process held the store's write lock past the lock timeout."""


class ConcurrencyError(FlowledgerError):
    """Another process wrote to the same streams: this engine lost its session or lock."""


class ToolError(FlowledgerError):
    """Base of the errors a connector raises to say how a call went wrong."""


class TransientError(ToolError):
    """Timeouts, rate limits, network trouble: try again later."""


class AuthError(ToolError):
    """Credentials are missing or expired: a person must act."""


class PermissionDenied(ToolError):
    """The credentials lack a permission: a person must act."""


class UncertainOutcome(ToolError):
    """A mutator cannot tell whether its effect happened: reconcile."""


class InvalidArgument(FlowledgerError, ValueError):
    """A call into the API was given a value it cannot use."""
