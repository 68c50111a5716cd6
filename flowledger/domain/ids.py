"""Deterministic stream ids (DESIGN §2.1): the same name always gives the same id."""

from __future__ import annotations

from functools import lru_cache
from uuid import UUID, uuid5

from flowledger.domain.text import SEPARATOR

NAMESPACE = UUID("5b0f2c7e-2d1a-4c59-9a2e-6f1f0f8f1e11")


@lru_cache(maxsize=65536)
def _id(*parts: str) -> UUID:
    # No name or id may hold the separator (text.unstorable), so ("a", "b/c")
    # and ("a/b", "c") never collide.
    return uuid5(NAMESPACE, SEPARATOR.join(parts))


def workflow_id(name: str) -> UUID:
    return _id("workflow", name)


def topic_event_id(workflow: str, topic: str, message_id: str) -> UUID:
    return _id("topic-event", workflow, topic, message_id)


def handler_state_id(workflow: str, handler: str) -> UUID:
    return _id("handler-state", workflow, handler)


def input_id(workflow: str, source: str, type_: str, external_id: str) -> UUID:
    return _id("input", workflow, source, type_, external_id)
