"""A consumer's commit takes the messages it publishes by id for new ones.

Looking a message's stream up before the commit costs a round trip on a
server, and almost every message a consumer publishes is new. So the commit
goes on without looking, and the log's unique stream versions check the
guess: a message already there fails the whole append, nothing of it stored.
The session then reads itself back from the log and runs that run's `next`
again, with its messages looked up (ADR 0032). A workflow that republished
an id stops guessing for a while, so one that often does pays that once.
"""

from __future__ import annotations

import threading
from typing import NamedTuple
from uuid import UUID


class Guess(NamedTuple):
    """What an append took for new: whose commit guessed, the message streams
    it guessed, the other streams it began (a new run's, say), and the
    session's workflow stream as its last stored append left it (the log
    holds it at that version unless someone else wrote it since)."""

    run_id: UUID
    streams: list[UUID]
    begun: list[UUID]
    workflow_version: int | None


class MessageNotNew(BaseException):
    """A commit that took the messages it published by id for new ones found
    one of them in the log: nothing of it was stored, and the session goes on
    from the log (`SessionRunner`). A BaseException, so that neither a
    handler's `except Exception` nor a run's failure handling takes it."""

    def __init__(self, guess: Guess, error: BaseException) -> None:
        super().__init__(f"run {guess.run_id}: a message it published is not new ({error})")
        self.guess = guess
        self.error = error


class PublishGuesses:
    """Whether one workflow's consumer commits may guess, in one engine."""

    # Commits that look their messages up after a guess was wrong.
    PAUSE = 100

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._paused = 0

    def may_guess(self) -> bool:
        with self._lock:
            if self._paused:
                self._paused -= 1
                return False
            return True

    def missed(self) -> None:
        with self._lock:
            self._paused = self.PAUSE
