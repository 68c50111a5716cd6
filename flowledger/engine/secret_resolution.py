"""Secrets resolved at the tool's door (DESIGN §9): a tool call's arguments with every
`fl.Secret` replaced by its value, just before the call, and the values scrubbed
from what the call raised before anything records it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from flowledger.domain.errors import AuthError, ConfigurationError
from flowledger.domain.secret import Secret

# What `Engine(secrets=...)` takes: a mapping of names to values, or a function.
SecretProvider = Mapping[str, str] | Callable[[str], str]


class SecretResolver:
    def __init__(self, provider: SecretProvider | None = None,
                 environ: Mapping[str, str] | None = None) -> None:
        if provider is not None and not (isinstance(provider, Mapping) or callable(provider)):
            raise ConfigurationError(
                f"Engine(secrets=...) takes a mapping of names to values or a function "
                f"name -> value, got {type(provider).__name__}")
        self.provider = provider
        self.environ = os.environ if environ is None else environ

    def value(self, secret: Secret) -> str:
        """The secret's value now; a missing one is an AuthError (a person must set
        it: the run pauses for approval, and nothing is recorded but the reference)."""
        if secret.source == "env":
            found = self.environ.get(secret.name)
            if found is None:
                raise AuthError(f"{secret!r}: environment variable {secret.name} is not set "
                                "in this process; set it and resume")
            return found
        if self.provider is None:
            raise AuthError(f"{secret!r}: this engine has no secrets provider; give one with "
                            "fl.Engine(..., secrets=...) or use fl.Secret.from_env(NAME)")
        try:
            got = (self.provider.get(secret.name) if isinstance(self.provider, Mapping)
                   else self.provider(secret.name))
        except Exception as e:
            raise AuthError(f"{secret!r}: the secrets provider raised "
                            f"{type(e).__name__}") from None
        if not isinstance(got, str):
            raise AuthError(f"{secret!r}: the secrets provider has no value for it (it gave "
                            f"{type(got).__name__}); add it to the provider")
        return got

    def resolve(self, args: tuple[Any, ...], kwargs: dict[str, Any]
                ) -> tuple[tuple[Any, ...], dict[str, Any], dict[str, Secret]]:
        """The arguments with their secrets' values (in lists, tuples and dict values
        too), and value → reference for scrubbing. Arguments without a secret are
        returned as they are."""
        revealed: dict[str, Secret] = {}

        def walk(value: Any) -> Any:
            if isinstance(value, Secret):
                plain = self.value(value)
                revealed[plain] = value
                return plain
            if isinstance(value, list):
                return [walk(v) for v in value]
            if isinstance(value, tuple):
                return tuple(walk(v) for v in value)
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            return value

        if not _holds_secret((args, kwargs)):
            return args, kwargs, revealed
        return tuple(walk(a) for a in args), {k: walk(v) for k, v in kwargs.items()}, revealed


def _holds_secret(value: Any) -> bool:
    if isinstance(value, Secret):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_secret(v) for v in value)
    if isinstance(value, dict):
        return any(_holds_secret(v) for v in value.values())
    return False


def scrub(error: BaseException, revealed: Mapping[str, Secret]) -> None:
    """Replace every revealed value in the messages of `error` and the errors it
    chains to by its reference, before the engine records them (a tool that says
    "invalid key sk_live_..." must not put the key in the log)."""
    if not revealed:
        return
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        _scrub_one(current, revealed)
        current = current.__cause__ or current.__context__


def _scrub_one(error: BaseException, revealed: Mapping[str, Secret]) -> None:
    """Its args, the text an OSError keeps beside them (`filename`), and its own
    text fields (an SDK's error that makes its message from them in `__str__`);
    if its message still shows a value (made from a nested field, say), it is
    given its scrubbed message to show instead. Set as `object` sets them, so a
    frozen dataclass's error is scrubbed too; what cannot be set is left, and
    scrubbing never raises: the error must reach the run as it was raised."""
    with contextlib.suppress(Exception):
        error.args = tuple(_scrubbed(a, revealed) for a in error.args)
    for name in ("filename", "filename2"):
        if isinstance(getattr(error, name, None), str):
            with contextlib.suppress(Exception):
                setattr(error, name, _scrubbed(getattr(error, name), revealed))
    for name in _text_fields(error):
        with contextlib.suppress(Exception):
            object.__setattr__(error, name, _scrubbed(getattr(error, name), revealed))
    for value in getattr(error, "__dict__", {}).values():  # an SDK's response body, say
        if isinstance(value, dict | list):
            _scrub_within(value, revealed)
    for inner in getattr(error, "exceptions", ()):  # an exception group's own
        if isinstance(inner, BaseException):
            scrub(inner, revealed)
    try:
        text = str(error)
    except Exception:  # a broken __str__ shows nothing (failures.describe)
        return
    if any(plain and plain in text for plain in revealed):
        _shows_only(error, _scrubbed(text, revealed))


def _scrub_within(value: dict[Any, Any] | list[Any], revealed: Mapping[str, Secret],
                  depth: int = 0) -> None:
    """The text in a dict or list (and those within it), replaced in place."""
    if depth > 8:
        return
    keys = list(value) if isinstance(value, dict) else range(len(value))
    for key in keys:
        item = value[key]
        if isinstance(item, str):
            value[key] = _scrubbed(item, revealed)
        elif isinstance(item, dict | list):
            _scrub_within(item, revealed, depth + 1)


def _text_fields(error: BaseException) -> list[str]:
    """The names of its own attributes holding text: in its __dict__ and its slots."""
    names = [n for n, v in getattr(error, "__dict__", {}).items() if isinstance(v, str)]
    for cls in type(error).__mro__:
        slots = cls.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if isinstance(getattr(error, name, None), str):
                names.append(name)
    return names


def _shows_only(error: BaseException, text: str) -> None:
    """`error`'s message is `text` from now on: its class becomes a subclass of
    its own (same name, still caught by the same `except`; no slots of its own,
    so it fits any error's layout) whose `__str__` says `text`. Where that
    cannot be (a built-in type, a class that refuses subclasses), it gets
    `text` as its args."""
    cls = type(error)
    try:
        shown = type(cls.__name__, (cls,), {"__str__": lambda self: text, "__slots__": (),
                                            "__module__": cls.__module__,
                                            "__qualname__": cls.__qualname__})
        object.__setattr__(error, "__class__", shown)
    except Exception:
        with contextlib.suppress(Exception):
            error.args = (text,)


def _scrubbed(value: Any, revealed: Mapping[str, Secret]) -> Any:
    if not isinstance(value, str):
        return value
    # Longest first: a value within another ("admin" in "admin-Hunter2!") would
    # otherwise be replaced inside it, leaving the rest of the longer one shown.
    for plain in sorted(revealed, key=len, reverse=True):
        if plain:
            value = value.replace(plain, repr(revealed[plain]))
    return value
