"""A secret's reference: what the log records in place of an API key, a password, a
token (DESIGN §9). It holds no value: the engine resolves it when it calls a tool,
and anew for a reconcile after a crash, so the value never reaches the log."""

from __future__ import annotations

from typing import Literal

SecretSource = Literal["env", "provider"]


class Secret:
    """`fl.Secret.from_env("STRIPE_KEY")`: the value of environment variable
    STRIPE_KEY; `fl.Secret("stripe")`: the value the engine's `secrets=` provider
    gives for "stripe". Pass it to a tool method in place of the value: the tool
    receives the value, the log records this reference."""

    __slots__ = ("name", "source")

    name: str
    source: SecretSource

    def __init__(self, name: str, source: SecretSource = "provider") -> None:
        if not isinstance(name, str) or not name or len(name) > 256:
            raise ValueError(f"a secret's name must be a non-empty str of at most 256 "
                             f"characters, got {name!r}")
        if source not in ("env", "provider"):
            raise ValueError(f"a secret's source is 'env' or 'provider', got {source!r}")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "source", source)

    @classmethod
    def from_env(cls, name: str) -> Secret:
        return cls(name, "env")

    def __setattr__(self, key: str, value: object) -> None:
        raise AttributeError("a Secret is immutable")

    # Immutable: a copy is itself (`copy.deepcopy`, `dataclasses.asdict` of what
    # holds one, as `replay --json` made, failed on the slots it cannot set).
    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> Secret:
        return self

    def __reduce__(self) -> tuple[type[Secret], tuple[str, SecretSource]]:
        return (Secret, (self.name, self.source))

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Secret) and other.name == self.name
                and other.source == self.source)

    def __hash__(self) -> int:
        return hash((Secret, self.name, self.source))

    def __repr__(self) -> str:
        return (f"Secret.from_env({self.name!r})" if self.source == "env"
                else f"Secret({self.name!r})")

    __str__ = __repr__
