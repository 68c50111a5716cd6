"""Why a handler or tool method would never run its body when called synchronously."""

from __future__ import annotations

import functools
import inspect
from typing import Any

from flowledger.domain.errors import LogicError


def not_runnable(func: Any) -> str | None:
    """Why a handler or tool method would never run its body when called, or None.

    flowledger calls handlers and tools synchronously: an `async def` (or a
    generator function) called so returns an object and runs nothing — a
    mutate would be skipped without a word, so such a definition is refused.
    """
    target = func
    if not inspect.isroutine(func) and not isinstance(func, functools.partial) and callable(
            func):
        target = type(func).__call__  # a callable object: its __call__
    if inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target):
        return ("is an async def, which flowledger does not run yet: called, it would "
                "only return a coroutine and its body (and any side effect) would never run. "
                "Make it a plain def; to use an async client inside it, call "
                "asyncio.run(...) there")
    if inspect.isgeneratorfunction(target):
        return ("is a generator function (it yields): called, its body would never run. "
                "Return a value instead of yielding")
    return None


def refuse_awaitable(returned: Any, where: str) -> None:
    """A handler that returned a coroutine did not do its work (registration
    refuses `async def`; a wrapper can still hand one back)."""
    if inspect.isawaitable(returned):
        close = getattr(returned, "close", None)
        if callable(close):
            close()  # no "never awaited" warning: it is reported here
        raise LogicError(f"{where}: the handler returned {type(returned).__name__}, so its "
                         "body never ran; flowledger runs handlers synchronously: make it a "
                         "plain def")
