"""The log's codec: pydantic events stored as msgpack bytes (ADR 0002).

`pack`/`unpack` encode values handed in by handlers (payloads, state, data,
params, results). `MsgpackTranscoder` plugs the same encoding into the
library, and `PydanticMapper` turns events into stored events and back,
keeping the library's order: encode → compress → encrypt.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any, ClassVar
from uuid import UUID

import msgpack
from eventsourcing.persistence import Mapper, MapperDeserialisationError, StoredEvent, Transcoder
from eventsourcing.utils import get_topic, resolve_topic

from flowledger.domain.errors import LogicError

_UUID = 1
_DECIMAL = 2
_NAIVE_DATETIME = 3


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    # ExtType is a namedtuple: building the tuple directly skips its
    # Python-level __new__, which costs more than the packing (UUIDs are in
    # nearly every event).
    return tuple.__new__(msgpack.ExtType, (code, data))


def _default(obj: Any) -> Any:
    if isinstance(obj, UUID):
        return _ext(_UUID, obj.bytes)
    if isinstance(obj, Decimal):
        return _ext(_DECIMAL, str(obj).encode())
    if isinstance(obj, dt.datetime):  # only naive ones reach here; aware ones are native
        return _ext(_NAIVE_DATETIME, obj.isoformat().encode())
    if isinstance(obj, set | frozenset):
        raise TypeError(f"a {type(obj).__name__} has no order; use a sorted list")
    raise TypeError(f"cannot serialise a value of type {type(obj).__name__}")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _UUID:
        return UUID(bytes=data)
    if code == _DECIMAL:
        return Decimal(data.decode())
    if code == _NAIVE_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    return msgpack.ExtType(code, data)


_local = threading.local()


def encode(obj: Any) -> bytes:
    # One Packer per thread, reused: building one per call costs more than
    # packing a small event.
    packer = getattr(_local, "packer", None)
    if packer is None:
        packer = _local.packer = msgpack.Packer(default=_default, datetime=True,
                                                use_bin_type=True)
    return packer.pack(obj)


def decode(data: bytes) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, timestamp=3, raw=False,
                           strict_map_key=False)


SUPPORTED = "dict, list, tuple, str, int, float, bool, None, bytes, Decimal, UUID or datetime"


def pack(value: Any, where: str | Callable[[], str], field: str) -> bytes:
    """Encode a handler's value, or say clearly why it cannot be stored.

    `where` may be a function: the place is worked out only for the error.
    """
    try:
        return encode(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise LogicError(
            f"{where() if callable(where) else where}: {field} cannot be stored in the log "
            f"({e}). "
            f"Use only {SUPPORTED} values."
        ) from None


def unpack(data: bytes | None) -> Any:
    return None if data is None or data == b"" else decode(data)


NONE_PACKED = encode(None)


class MsgpackTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return encode(obj)

    def decode(self, data: bytes) -> Any:
        return decode(data)


class PydanticMapper(Mapper[UUID]):
    """Stores an event's fields (not its id and version, which have their own columns)."""

    # Per event class: (topic, class_version). A missing class attribute of a
    # pydantic model is looked up through its metaclass, which raises and
    # catches on every call: too slow for every event appended.
    _classes: ClassVar[dict[type, tuple[str, int]]] = {}

    @classmethod
    def _class_info(cls, event_class: type) -> tuple[str, int]:
        info = cls._classes.get(event_class)
        if info is None:
            info = cls._classes[event_class] = (
                get_topic(event_class), getattr(event_class, "class_version", 1))
        return info

    def to_stored_event(self, domain_event: Any) -> StoredEvent:
        _, version, topic, data = self.to_row(domain_event)
        return StoredEvent(originator_id=domain_event.originator_id,
                           originator_version=version, topic=topic, state=data)

    def to_row(self, domain_event: Any) -> tuple[str, int, str, bytes]:
        """The stored columns of an event: stream id (hex), version, topic, state.

        The append path inserts these directly (no StoredEvent in between).
        """
        state = dict(domain_event.__dict__)
        originator_id = state.pop("originator_id")
        originator_version = state.pop("originator_version")
        topic, class_version = self._class_info(type(domain_event))
        if class_version > 1:
            state["class_version"] = class_version
        data = self.transcoder.encode(state)
        if self.compressor:
            data = self.compressor.compress(data)
        if self.cipher:
            data = self.cipher.encrypt(data)
        return originator_id.hex, originator_version, topic, data

    def to_domain_event(self, stored_event: StoredEvent) -> Any:
        cls = resolve_topic(stored_event.topic)
        data = stored_event.state
        try:
            if self.cipher:
                data = self.cipher.decrypt(data)
            if self.compressor:
                data = self.compressor.decompress(data)
            state: dict[str, Any] = self.transcoder.decode(data)
        except Exception as e:
            raise MapperDeserialisationError(
                f"cannot decode stored event {stored_event.topic} of stream "
                f"{stored_event.originator_id} version {stored_event.originator_version}: {e}"
            ) from e
        originator_id = stored_event.originator_id
        state["originator_id"] = (
            originator_id if isinstance(originator_id, UUID) else UUID(originator_id)
        )
        state["originator_version"] = stored_event.originator_version
        from_version = state.pop("class_version", 1)
        class_version = self._class_info(cls)[1]
        while from_version < class_version:  # upcasting is the mapper's job
            getattr(cls, f"upcast_v{from_version}_v{from_version + 1}")(state)
            from_version += 1
        # Validation restores enums and checks the stored shape still fits the class.
        return cls.model_validate(state)
