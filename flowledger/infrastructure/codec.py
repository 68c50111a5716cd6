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

from flowledger.domain.errors import ConfigurationError, LogicError
from flowledger.domain.instants import in_utc
from flowledger.domain.secret import Secret
from flowledger.domain.text import unencodable

_UUID = 1
_DECIMAL = 2
_NAIVE_DATETIME = 3
_TUPLE = 4
_SECRET = 5  # a secret's reference, never its value (DESIGN §9)

# msgpack stores ints of at most 64 bits.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1
_MAX_DEPTH = 500  # below msgpack's own nesting limit of 512


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


def _value_default(obj: Any) -> Any:
    """Handler values are packed with strict types, so that what comes back is
    equal to what went in: a tuple stays a tuple (and a dict keyed by tuples
    stays readable), a subclass of a native type is stored as that type."""
    if isinstance(obj, msgpack.ExtType):
        raise TypeError("msgpack.ExtType values are reserved for the log's own types")
    if isinstance(obj, tuple):
        return _ext(_TUPLE, _pack_value(list(obj)))
    if isinstance(obj, Secret):
        return _ext(_SECRET, _pack_value([obj.source, obj.name]))
    if isinstance(obj, str):
        return str.__str__(obj)
    if isinstance(obj, int):  # bool is native; IntEnum and other subclasses
        return int.__int__(obj)
    if isinstance(obj, float):
        return float.__float__(obj)
    if isinstance(obj, bytes):
        return bytes(obj)
    if isinstance(obj, dict):
        return dict(obj)
    if isinstance(obj, list):
        return list(obj)
    if isinstance(obj, dt.datetime) and type(obj) is not dt.datetime:
        # A subclass (pandas' Timestamp, pendulum's DateTime) as a plain datetime.
        return dt.datetime(obj.year, obj.month, obj.day, obj.hour, obj.minute, obj.second,
                           obj.microsecond, obj.tzinfo, fold=obj.fold)
    return _default(obj)


def _pack_value(value: Any) -> bytes:
    # A fresh packer: _value_default may run inside another packer's call.
    return msgpack.packb(value, default=_value_default, strict_types=True, datetime=True,
                         use_bin_type=True)


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _UUID:
        return UUID(bytes=data)
    if code == _DECIMAL:
        return Decimal(data.decode())
    if code == _NAIVE_DATETIME:
        return dt.datetime.fromisoformat(data.decode())
    if code == _TUPLE:
        return tuple(decode(data))
    if code == _SECRET:
        source, name = decode(data)
        return Secret(name, source)
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


def _hashable_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_frozen(k): v for k, v in pairs}


def _frozen(key: Any) -> Any:
    return tuple(_frozen(k) for k in key) if isinstance(key, list) else key


SUPPORTED = ("dict, list, tuple, str, int, float, bool, None, bytes, Decimal, UUID, datetime "
             "or fl.Secret")


def pack(value: Any, where: str | Callable[[], str], field: str) -> bytes:
    """Encode a handler's value, or say clearly why it cannot be stored.

    `where` may be a function: the place is worked out only for the error.
    """
    try:
        data = _pack_value(value)
        # Read it back once: what the log accepts must come back, or every run
        # that reads it would fail (a poison message). Small next to the append.
        unpack(data)
        return data
    except (TypeError, ValueError, OverflowError) as e:
        problem = find_problem(value) or f"it does not read back ({e})"
        raise LogicError(
            f"{where() if callable(where) else where}: {field} cannot be stored in the log: "
            f"{problem}."
        ) from None


def find_problem(value: Any, path: str = "", depth: int = 0) -> str | None:
    """What in `value` the log cannot store, and where (only called on failure)."""
    at = f"{path} " if path else "the value "
    if depth > _MAX_DEPTH:
        return f"{at}is nested more than {_MAX_DEPTH} levels deep; flatten it"
    if value is None or isinstance(value, bool | float | bytes | bytearray | memoryview
                                   | UUID | Decimal | dt.datetime | Secret):
        return None
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            digits = str(value) if value.bit_length() < 200 else f"of {value.bit_length()} bits"
            return (f"{at}is the int {digits}, beyond the 64 bits the log stores "
                    f"(-2**63 to 2**64-1); store it as a str or a Decimal")
        return None
    if isinstance(value, str):
        why = unencodable(value)
        return f"{at}is a string that {why}" if why else None
    if isinstance(value, msgpack.ExtType):
        return f"{at}is a msgpack.ExtType, reserved for the log's own types"
    if isinstance(value, dict):
        for k, v in value.items():
            problem = (find_problem(k, (f"{path} " if path else "") + f"key {k!r}"[:200],
                                    depth + 1)
                       or find_problem(v, f"{path}[{k!r}]"[:200], depth + 1))
            if problem:
                return problem
        return None
    if isinstance(value, list | tuple):
        for i, item in enumerate(value):
            problem = find_problem(item, f"{path}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, set | frozenset):
        return f"{at}is a {type(value).__name__}, which has no order; use a sorted list"
    return (f"{at}is of type {type(value).__name__}, which the log cannot store; use only "
            f"{SUPPORTED} values")


def unpack(data: bytes | None) -> Any:
    if data is None or data == b"":
        return None
    try:
        return decode(data)
    except TypeError:
        # Written before tuples were kept: a dict keyed by tuples came back
        # keyed by lists. Read such a value with its keys made tuples again.
        return msgpack.unpackb(data, ext_hook=_ext_hook, timestamp=3, raw=False,
                               strict_map_key=False, object_pairs_hook=_hashable_keys)


NONE_PACKED = encode(None)


class MsgpackTranscoder(Transcoder):
    def encode(self, obj: Any) -> bytes:
        return encode(obj)

    def decode(self, data: bytes) -> Any:
        return decode(data)


def _refuse_unreadable_time(moment: Any, event: Any) -> None:
    """An event's time is kept as an instant in UTC: one within a day of the
    calendar's ends in a zone (an engine clock gone wrong) would be written
    and never read back, and every later reading would stop at it."""
    if not isinstance(moment, dt.datetime) or moment.year not in (1, 9999):
        return  # the only years where a zone can push an instant out of range
    if in_utc(moment) is None:
        raise ConfigurationError(
            f"the engine's clock gave {moment.isoformat()} for a {type(event).__qualname__} "
            "event, which the log cannot keep: in UTC it falls outside years 1 to 9999. "
            "Nothing of this append was stored; give the engine a clock that tells the time")


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
        _refuse_unreadable_time(state.get("timestamp"), domain_event)
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
