"""`fl.verify_store` / `Engine.verify`: prove the log was not edited (DESIGN §9, ADR 0023)."""

from __future__ import annotations

from flowledger.infrastructure.encryption import protection
from flowledger.infrastructure.event_log import EventLog
from flowledger.infrastructure.log_verification import Problem, Verification, verify_chain

__all__ = ["Problem", "Verification", "verify_log", "verify_store"]


def verify_log(log: EventLog, expect: str | None = None) -> Verification:
    chain = log.flow_recorder.chain
    assert chain is not None  # set when the log was opened
    return verify_chain(log.flow_recorder, chain, expect)


def verify_store(store: str, *, cipher_key: str | None = None, chain_key: str | None = None,
                 expect: str | None = None) -> Verification:
    """Walk store `store`'s log and chain once, in position order: every changed,
    removed, inserted or moved event is reported by position. `expect`: a head
    digest recorded earlier (`verify` prints it), which must still be in the chain.
    Keys as for `Engine` (arguments, else FLOWLEDGER_CIPHER_KEY / FLOWLEDGER_CHAIN_KEY)."""
    log = EventLog.open(store, protection(cipher_key, None, chain_key), create=False)
    try:
        return verify_log(log, expect)
    finally:
        log.close()
