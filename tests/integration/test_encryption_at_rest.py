"""Encryption at rest (DESIGN §9, ADR 0022): nothing a handler read or wrote lies in
clear anywhere in the store, and a wrong, missing or unwanted key is a clear error."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

import flowledger as fl
from flowledger.testing.projection_check import assert_projections_rebuild_equal
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow
from tests.store_contents import run_sql, store_bytes

# What a user's automation reads and writes, each in a place of its own.
NEEDLES = {
    "payload": b"PAYLOAD-c4f1",
    "title": b"TITLE-77ae",
    "tool parameter": b"PARAM-91bd",
    "tool result": b"RESULT-0e2c",
    "handler state": b"STATE-5a6b",
    "cost label": b"LABEL-d3c8",
    "failure reason": b"REASON-b2f9",
}
ITEMS = 25  # past HandlerState's snapshot interval (20): its snapshot holds the state


class EchoLedger(fl.Tool):
    name = "ledger"

    @fl.mutator
    def append(self, key: str, value: str) -> dict[str, str]:
        return {"key": key, "echo": NEEDLES["tool result"].decode()}


def private_workflow() -> fl.Workflow:
    wf = fl.Workflow("private", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        for i in range(ITEMS):
            input_id = ctx.register_input(source="mail", type="message", id=f"i{i}",
                                          title=NEEDLES["title"].decode())
            ctx.publish("in", message_id=f"m{i}", payload={"body": NEEDLES["payload"].decode()},
                        input_id=input_id)

    @wf.consumer(subscribe=["in"])
    class Book:
        def prepare(self, ctx: Any, state: Any) -> fl.Prepared | None:
            pending = ctx.peek("in", limit=1)
            if not pending:
                return None
            m = pending[0]
            assert m.payload == {"body": NEEDLES["payload"].decode()}  # peek opens the seal
            return fl.Prepared(reservations={"in": [m.message_id]}, data=m.message_id,
                               title=NEEDLES["title"].decode())

        def mutate(self, ctx: Any, prepared: fl.Prepared) -> None:
            ctx.tools.ledger.append(prepared.data, NEEDLES["tool parameter"].decode())

        def next(self, ctx: Any, prepared: fl.Prepared, outcome: fl.Outcome) -> Any:
            ctx.add_cost(Decimal("0.01"), label=NEEDLES["cost label"].decode())
            return {"last": NEEDLES["handler state"].decode(), "n": prepared.data}

    return wf


def failing_workflow() -> fl.Workflow:
    wf = fl.Workflow("failing", topics=["in"])

    @wf.producer(publishes=["in"])
    def produce(ctx: Any, state: Any) -> None:
        raise ValueError(NEEDLES["failure reason"].decode())

    return wf


def fill(engine: fl.Engine) -> None:
    engine.register(private_workflow(), tools=[EchoLedger()])
    engine.register(failing_workflow())
    assert engine.run_session("private").status == "completed"
    assert engine.run_session("failing").status == "failed"


def test_nothing_a_handler_wrote_is_in_clear_in_an_encrypted_store(store: str) -> None:
    key = fl.new_cipher_key()
    with fl.Engine(store, cipher_key=key) as engine:
        fill(engine)
        # Everything still reads back through the engine (projections' copies included).
        assert NEEDLES["failure reason"].decode() in (engine.status().workflows[0].reason or "")
        assert engine.costs(workflow="private").total == Decimal("0.25")
        # Sealed copies are deterministic: rebuilt from the log, they are the same bytes.
        assert_projections_rebuild_equal(engine)
    snapshots = run_sql(store, "SELECT COUNT(*) FROM stored_snapshots")[0][0]
    assert snapshots > 0  # the handler state's snapshot is there, and checked below
    contents = store_bytes(store)
    found = [what for what, needle in NEEDLES.items() if needle in contents]
    assert found == [], f"in clear in the encrypted store: {found}"


def test_the_same_run_without_a_key_leaves_every_needle_in_clear(store: str) -> None:
    """The control: the search above would find each of them if it were there."""
    with fl.Engine(store, cipher_key="") as engine:
        fill(engine)
    contents = store_bytes(store)
    missing = [what for what, needle in NEEDLES.items() if needle not in contents]
    assert missing == []


def test_an_encrypted_store_refuses_no_key_and_a_wrong_key(store: str) -> None:
    key = fl.new_cipher_key()
    with fl.Engine(store, cipher_key=key) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[])
    with pytest.raises(fl.EncryptionKeyError, match="is encrypted and no key was given: set "
                                                    "FLOWLEDGER_CIPHER_KEY"):
        fl.Engine(store, cipher_key="")
    with pytest.raises(fl.EncryptionKeyError, match="encrypted with another key than the one "
                                                    "given"):
        fl.Engine(store, cipher_key=fl.new_cipher_key())
    with fl.Engine(store, cipher_key=key) as engine:  # the right key still opens it
        assert [w.name for w in engine.status().workflows] == ["wf"]


def test_a_store_in_clear_refuses_a_key_and_says_how_to_encrypt_it(store: str) -> None:
    with fl.Engine(store, cipher_key="") as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[])
    with pytest.raises(fl.EncryptionKeyError, match=r"written in clear.*FLOWLEDGER_CIPHER_KEY "
                                                    r"set to the key: flowledger copy --from "
                                                    r".* --to NEW_URL"):
        fl.Engine(store, cipher_key=fl.new_cipher_key())


@pytest.mark.parametrize("bad", ["not base64!", "c2hvcnQ="])
def test_a_malformed_key_is_refused_before_anything_opens(tmp_path: Path, bad: str) -> None:
    with pytest.raises(fl.EncryptionKeyError, match="flowledger keygen"):
        fl.Engine(f"sqlite:///{tmp_path / 'x.db'}", cipher_key=bad)
    assert not (tmp_path / "x.db").exists()


def test_the_key_comes_from_flowledger_cipher_key_and_an_explicit_key_wins(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    key, other = fl.new_cipher_key(), fl.new_cipher_key()
    monkeypatch.setenv("FLOWLEDGER_CIPHER_KEY", key)
    with fl.Engine(url) as engine:
        assert engine.log.format.encrypted
    monkeypatch.setenv("FLOWLEDGER_CIPHER_KEY", other)
    with pytest.raises(fl.EncryptionKeyError, match=r"another key .*FLOWLEDGER_CIPHER_KEY"):
        fl.Engine(url)
    with fl.Engine(url, cipher_key=key):  # the argument wins over the environment
        pass


def test_the_librarys_own_variables_never_half_configure_the_cipher(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CIPHER_KEY (meant for another application) and FLOWLEDGER_CIPHER_TOPIC alone
    are the library's settings: flowledger ignores them."""
    monkeypatch.setenv("CIPHER_KEY", fl.new_cipher_key())
    monkeypatch.setenv("FLOWLEDGER_CIPHER_TOPIC", "eventsourcing.cipher:AESCipher")
    monkeypatch.setenv("FLOWLEDGER_COMPRESSOR_TOPIC", "no.such:Thing")
    url = f"sqlite:///{tmp_path / 'flow.db'}"
    with fl.Engine(url) as engine:
        engine.register(ledger_workflow(items=["a"]), tools=[])
        assert not engine.log.format.encrypted and engine.log.flow_mapper.cipher is None
    monkeypatch.delenv("CIPHER_KEY")
    with fl.Engine(url) as engine:
        assert [w.name for w in engine.status().workflows] == ["wf"]


def test_compression_is_its_own_option_and_stays_with_the_store(store: str,
                                                                 tmp_path: Path) -> None:
    key = fl.new_cipher_key()
    with fl.Engine(store, cipher_key=key, compress=True) as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        assert engine.run_session("wf").status == "completed"
        assert engine.log.flow_mapper.compressor is not None
    with fl.Engine(store, cipher_key=key) as engine:  # compression follows the store
        assert len(list(engine.events())) > 5
    with pytest.raises(fl.EncryptionKeyError, match=r"compressed .*keeps the compression"):
        fl.Engine(store, cipher_key=key, compress=False)


def test_a_key_is_rotated_by_copying_into_a_new_store(store: str, tmp_path: Path) -> None:
    old_key, new_key = fl.new_cipher_key(), fl.new_cipher_key()
    with fl.Engine(store, cipher_key=old_key) as engine:
        fill(engine)
        before = [(e.position, e.name, e.fields) for e in engine.events()]
    target = f"sqlite:///{tmp_path / 'rotated.db'}"
    copied = fl.copy_store(store, target, source_key=old_key, target_key=new_key)
    assert copied == len(before)
    with pytest.raises(fl.EncryptionKeyError, match="another key"):
        fl.Engine(target, cipher_key=old_key)
    with fl.Engine(target, cipher_key=new_key) as engine:
        assert [(e.position, e.name, e.fields) for e in engine.events()] == before
        assert engine.verify().ok
    found = [what for what, needle in NEEDLES.items() if needle in store_bytes(target)]
    assert found == []
    # And back to clear, for a store that should not be encrypted after all.
    clear = f"sqlite:///{tmp_path / 'clear.db'}"
    fl.copy_store(target, clear, source_key=new_key, target_key="")
    with fl.Engine(clear, cipher_key="") as engine:
        assert [(e.position, e.name, e.fields) for e in engine.events()] == before
