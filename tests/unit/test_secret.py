"""fl.Secret: a reference that the codec stores as itself and the resolver turns into
its value only at the tool's door (DESIGN §9)."""

from __future__ import annotations

import pytest

import flowledger as fl
from flowledger.engine.secret_resolution import SecretResolver, scrub
from flowledger.infrastructure.codec import pack, unpack


def test_a_secret_is_stored_as_its_reference_and_comes_back_equal() -> None:
    value = {"args": ["x", (fl.Secret.from_env("A"),)], "kwargs": {"k": fl.Secret("b")}}
    data = pack(value, "here", "params")
    assert b"A" in data and unpack(data) == value
    assert repr(fl.Secret.from_env("A")) == "Secret.from_env('A')"


def test_the_resolver_gives_values_inside_containers_and_leaves_the_rest_alone() -> None:
    resolver = SecretResolver({"b": "vb"}, environ={"A": "va"})
    args, kwargs, revealed = resolver.resolve(
        ("x", [fl.Secret.from_env("A")]), {"k": {"n": fl.Secret("b")}})
    assert args == ("x", ["va"]) and kwargs == {"k": {"n": "vb"}}
    assert revealed == {"va": fl.Secret.from_env("A"), "vb": fl.Secret("b")}
    plain = ("x",), {"y": 1}
    assert resolver.resolve(*plain)[:2] == plain


def test_missing_secrets_are_auth_errors_that_name_them() -> None:
    with pytest.raises(fl.AuthError, match="environment variable A is not set"):
        SecretResolver(environ={}).value(fl.Secret.from_env("A"))
    with pytest.raises(fl.AuthError, match="no secrets provider"):
        SecretResolver(environ={}).value(fl.Secret("b"))
    with pytest.raises(fl.AuthError, match="has no value for it"):
        SecretResolver({}, environ={}).value(fl.Secret("b"))


def test_scrub_replaces_values_in_an_error_and_its_causes() -> None:
    try:
        try:
            raise ValueError("token va refused")
        except ValueError as inner:
            raise RuntimeError("call failed with va") from inner
    except RuntimeError as e:
        scrub(e, {"va": fl.Secret.from_env("A")})
        assert str(e) == "call failed with Secret.from_env('A')"
        assert str(e.__cause__) == "token Secret.from_env('A') refused"
