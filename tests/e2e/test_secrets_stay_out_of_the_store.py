"""Secrets (DESIGN §9): the log, snapshots and projections hold a secret's reference,
never its value, before and after a real process crash and its recovery; the tool
gets the value, a reconcile after the crash gets it again, replay shows the reference."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flowledger as fl
from flowledger.engine.faults import CRASH_EXIT_CODE
from tests.e2e.secret_worker import Payments, workflow
from tests.store_contents import store_bytes

WORKER = Path(__file__).with_name("secret_worker.py")
PAY_KEY = "sk_live_8f3a61c9d2e0"
PAY_TOKEN = "tok_5e19b7a0c344"


def worker(store: str, calls: Path, mode: str, crash_at: str | None = None,
           cipher_key: str = "") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "FLOWLEDGER_CRASH_AT"}
    env.update(PAY_KEY=PAY_KEY, PAY_TOKEN=PAY_TOKEN, FLOWLEDGER_CIPHER_KEY=cipher_key)
    if crash_at:
        env["FLOWLEDGER_CRASH_AT"] = crash_at
    return subprocess.run([sys.executable, str(WORKER), store, str(calls), mode],
                          capture_output=True, text=True, timeout=120, env=env)


def in_clear(store: str) -> list[str]:
    contents = store_bytes(store)
    return [name for name, value in (("PAY_KEY", PAY_KEY), ("PAY_TOKEN", PAY_TOKEN))
            if value.encode() in contents]


def calls_made(calls: Path) -> list[tuple[str, str]]:
    return [(c["call"], c["secret"]) for c in map(json.loads, calls.read_text().splitlines())]


@pytest.mark.parametrize("cipher", ["clear", "encrypted"])
def test_a_secret_never_reaches_the_store_across_a_crash_and_recovery(
        store: str, tmp_path: Path, cipher: str) -> None:
    """Encryption is not what keeps it out: the store in clear holds no value either."""
    calls = tmp_path / "calls.jsonl"
    key = fl.new_cipher_key() if cipher == "encrypted" else ""
    # The mutator was called, then the process died before its outcome was recorded.
    crashed = worker(store, calls, "session", crash_at="after_call", cipher_key=key)
    assert crashed.returncode == CRASH_EXIT_CODE, crashed.stderr
    assert calls_made(calls) == [("balance", PAY_TOKEN), ("charge", PAY_KEY)]
    assert in_clear(store) == []
    recovered = worker(store, calls, "recover", cipher_key=key)
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["status"] == "completed"
    # The reconcile after the crash got the value, resolved anew from the reference.
    assert calls_made(calls)[2:] == [("reconcile", PAY_KEY)]
    assert in_clear(store) == []
    with fl.Engine(store, cipher_key=key) as engine:
        called = [e for e in engine.events() if e.name == "MutationInFlight"]
        assert called[0].fields["params"]["kwargs"] == {"api_key": fl.Secret.from_env("PAY_KEY")}
        reads = [e for e in engine.events() if e.name == "ReadRecorded"]
        assert reads and reads[0].fields["params"]["kwargs"] == {"token": fl.Secret("token")}
        # Replay shows the reference, and finds no difference.
        engine.register(workflow(), tools=[Payments(tmp_path / "unused.jsonl")])
        report = engine.replay(called[0].stream_id)
        assert report.differences == ()
        assert report.recorded.mutation is not None
        assert "api_key=Secret.from_env('PAY_KEY')" in str(report.recorded.mutation)
        assert engine.verify().ok


class SdkError(Exception):
    """An SDK's error that makes its message from its fields in `__str__`."""

    def __init__(self, status: int, key: str) -> None:
        super().__init__(status)
        self.status, self.key = status, key

    def __str__(self) -> str:
        return f"HTTP {self.status} for key {self.key}"


class NestedError(Exception):
    def __init__(self, request: dict[str, str]) -> None:
        super().__init__("request refused")
        self.request = request

    def __str__(self) -> str:
        return f"request refused: {self.request}"


@dataclasses.dataclass(frozen=True)
class FrozenAuthError(fl.AuthError):
    """An SDK's refusal as a frozen dataclass: scrubbing it raised, and the run
    was left asking whether a refused charge had happened."""

    code: int
    token: str

    def __str__(self) -> str:
        return f"error {self.code} for token {self.token}"


class SlotsError(Exception):
    __slots__ = ("token",)

    def __init__(self, token: str) -> None:
        super().__init__("request refused")
        self.token = token

    def __str__(self) -> str:
        return f"request refused for {self.token}"


def _raises(kind: str, api_key: str) -> BaseException:
    if kind == "a frozen dataclass":
        return FrozenAuthError(401, api_key)
    if kind == "in a slot":
        return SlotsError(api_key)
    if kind == "in its args":
        return fl.AuthError(f"key {api_key} was revoked")
    if kind == "in __str__ from its fields":
        return SdkError(401, api_key)
    if kind == "in an OSError's filename":
        return FileNotFoundError(2, "No such file or directory", f"/keys/{api_key}.pem")
    return NestedError({"authorization": f"Bearer {api_key}"})


class Leaky(fl.Tool):
    """A tool that repeats its key in what it raises."""

    name = "payments"

    def __init__(self, kind: str = "in its args") -> None:
        self.kind = kind

    @fl.mutator
    def charge(self, item: str, api_key: str) -> None:
        raise _raises(self.kind, api_key)


@pytest.mark.parametrize("kind", ["in __str__ from its fields", "in an OSError's filename",
                                  "in __str__ from a nested field", "a frozen dataclass",
                                  "in a slot"])
def test_a_tools_error_that_holds_the_secret_elsewhere_than_its_args_is_scrubbed(
        store: str, monkeypatch: pytest.MonkeyPatch, kind: str) -> None:
    """Only args were scrubbed: the value reached the log, the projections and
    every command that prints a run's failure."""
    monkeypatch.setenv("PAY_KEY", PAY_KEY)
    with fl.Engine(store) as engine:
        engine.register(leaking(), tools=[Leaky(kind)])
        engine.run_session("leak")
        run = next(r for r in engine.runs() if r.handler == "Charge")
        assert "Secret.from_env('PAY_KEY')" in f"{run.reason} {run.traceback}"
        if kind == "a frozen dataclass":  # still the refusal it was: a person approves
            assert run.status == "paused:approval", run
        assert PAY_KEY not in f"{engine.runs()} {engine.status()} {engine.blocked()}"
    assert PAY_KEY.encode() not in store_bytes(store)


def leaking(first: object = "o1") -> fl.Workflow:
    """A charge of one order with the PAY_KEY secret; `first`: its first argument."""
    wf = fl.Workflow("leak", topics=["orders"])

    @wf.producer(publishes=["orders"])
    def orders(ctx: object, state: object) -> None:
        ctx.publish("orders", message_id="o1", payload=1)  # type: ignore[attr-defined]

    @wf.consumer(subscribe=["orders"])
    class Charge:
        def prepare(self, ctx: object, state: object) -> fl.Prepared:
            return fl.Prepared({"orders": ["o1"]})

        def mutate(self, ctx: object, prepared: fl.Prepared) -> None:
            ctx.tools.payments.charge(first, api_key=fl.Secret.from_env("PAY_KEY"))  # type: ignore[attr-defined]

    return wf


def test_a_tools_error_that_repeats_the_secret_is_recorded_with_the_reference(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAY_KEY", PAY_KEY)
    with fl.Engine(store) as engine:
        engine.register(leaking(), tools=[Leaky()])
        result = engine.run_session("leak")
        assert result.status == "suspended"
        blocked = engine.blocked()
        assert "Secret.from_env('PAY_KEY') was revoked" in str(blocked)
    assert PAY_KEY.encode() not in store_bytes(store)


def test_a_missing_secret_pauses_the_run_for_a_person_and_names_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAY_KEY", raising=False)
    with fl.Engine(f"sqlite:///{tmp_path / 'flow.db'}", secrets={"token": PAY_TOKEN}) as engine:
        engine.register(workflow(), tools=[Payments(tmp_path / "calls.jsonl")])
        result = engine.run_session("billing")
        assert result.status == "suspended"
        assert "environment variable PAY_KEY is not set" in str(engine.blocked())


class Login(fl.Tool):
    name = "payments"

    @fl.mutator
    def charge(self, user: str, api_key: str) -> None:
        raise ValueError(f"login failed for password {api_key}")


def test_a_secret_whose_value_holds_another_s_is_scrubbed_whole(
        store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With secrets "admin" and "admin-Hunter2!", the shorter was replaced
    first: the error read "Secret('user')-Hunter2!", the rest of the password
    in the log and the wrong secret named."""
    monkeypatch.setenv("PAY_KEY", "admin-Hunter2!")
    with fl.Engine(store, secrets={"user": "admin"}) as engine:
        engine.register(leaking(fl.Secret("user")), tools=[Login()])
        engine.run_session("leak")
        run = next(r for r in engine.runs() if r.handler == "Charge")
        said = f"{run.reason} {run.traceback}"
        assert "password Secret.from_env('PAY_KEY')" in said, said
        assert "Hunter2" not in said
    assert b"Hunter2" not in store_bytes(store)


def test_data_holding_a_secret_can_be_copied_as_replay_json_does() -> None:
    """`replay RUN --json` crashed (a Secret could not be deep-copied); nor
    could a Secret be pickled (its slots cannot be set once made)."""
    import copy
    import pickle

    secret = fl.Secret.from_env("PAY_KEY")
    held = {"token": secret, "items": [secret]}
    assert copy.deepcopy(held) == held and copy.deepcopy(secret) is secret
    assert pickle.loads(pickle.dumps(held)) == held
