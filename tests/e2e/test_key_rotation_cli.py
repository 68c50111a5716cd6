"""Rotating a store's key from the command line: `flowledger copy --to-key-env`."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import flowledger as fl
from tests.e2e.test_cli import assert_user_error, flowledger
from tests.helpers import ExternalLedger, ScriptedLedgerTool, ledger_workflow


def test_copy_rotates_the_key_and_each_store_opens_only_with_its_own(tmp_path: Path) -> None:
    old_key, new_key = fl.new_cipher_key(), fl.new_cipher_key()
    source = f"sqlite:///{tmp_path / 'old.db'}"
    with fl.Engine(source, cipher_key=old_key) as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        count = len(list(engine.events()))
    target = f"sqlite:///{tmp_path / 'new.db'}"
    env = {"FLOWLEDGER_CIPHER_KEY": old_key, "NEW_KEY": new_key}
    done = flowledger("copy", "--from", source, "--to", target, "--to-key-env", "NEW_KEY",
                      cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    assert f"copied {count} events" in done.stdout
    rotated = {"FLOWLEDGER_CIPHER_KEY": new_key}
    assert flowledger("--store", target, "verify", cwd=tmp_path, env=rotated).returncode == 0
    status = flowledger("--store", target, "status", cwd=tmp_path, env=rotated)
    assert status.returncode == 0 and "wf" in status.stdout
    assert_user_error(flowledger("--store", target, "status", cwd=tmp_path,
                                 env={"FLOWLEDGER_CIPHER_KEY": old_key}),
                      "encrypted with another key")
    assert_user_error(flowledger("copy", "--from", source, "--to",
                                 f"sqlite:///{tmp_path / 'x.db'}", "--to-key-env", "UNSET_KEY",
                                 cwd=tmp_path, env=env),
                      "UNSET_KEY is not set")
    # A key that is not one is named as the user gave it (it said `cipher_key=`).
    bad = flowledger("copy", "--from", source, "--to", f"sqlite:///{tmp_path / 'y.db'}",
                     "--to-key-env", "BADK", cwd=tmp_path, env={**env, "BADK": "not a key"})
    assert_user_error(bad, "the key in environment variable BADK is not a key")
    assert "cipher_key=" not in bad.stderr and not (tmp_path / "y.db").exists()


def test_a_store_in_clear_is_encrypted_as_its_refusal_says(tmp_path: Path) -> None:
    """The refusal of a key for a store in clear prints the command that
    encrypts it; run as printed (NEW_URL filled in), with the key still set,
    it copies the log encrypted with that key."""
    source = f"sqlite:///{tmp_path / 'clear.db'}"
    with fl.Engine(source, cipher_key="") as engine:
        engine.register(ledger_workflow(items=["a", "b"]),
                        tools=[ScriptedLedgerTool(ExternalLedger(tmp_path / "l.db"))])
        engine.run_session("wf")
        before = [(e.position, e.name) for e in engine.events()]
    keyed = {"FLOWLEDGER_CIPHER_KEY": fl.new_cipher_key()}
    refused = flowledger("--store", source, "status", cwd=tmp_path, env=keyed)
    assert_user_error(refused, "written in clear")
    advice = re.search(r"flowledger copy .*? --to NEW_URL", refused.stderr)
    assert advice is not None, refused.stderr
    target = f"sqlite:///{tmp_path / 'encrypted.db'}"
    command = shlex.split(advice.group(0).replace("NEW_URL", target))

    done = flowledger(*command[1:], cwd=tmp_path, env=keyed)

    assert done.returncode == 0, done.stderr
    assert "(encrypted with FLOWLEDGER_CIPHER_KEY's key)" in done.stdout
    assert_user_error(flowledger("--store", target, "status", cwd=tmp_path),
                      "is encrypted and no key was given")
    with fl.Engine(target, cipher_key=keyed["FLOWLEDGER_CIPHER_KEY"]) as engine:
        assert [(e.position, e.name) for e in engine.events()] == before
        assert engine.log.format.encrypted and engine.verify().ok
    # A key named for the source is still the user's word: a clear source refuses it,
    # the engine's own variable named too.
    assert_user_error(flowledger("copy", "--from", source, "--to",
                                 f"sqlite:///{tmp_path / 'z.db'}", "--from-key-env", "K",
                                 cwd=tmp_path, env={"K": keyed["FLOWLEDGER_CIPHER_KEY"]}),
                      "written in clear")
    assert_user_error(flowledger("copy", "--from", source, "--to",
                                 f"sqlite:///{tmp_path / 'w.db'}", "--from-key-env",
                                 "FLOWLEDGER_CIPHER_KEY", cwd=tmp_path, env=keyed),
                      "written in clear")
