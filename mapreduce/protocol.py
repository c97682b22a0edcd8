"""Every message between coordinator and workers: typed dataclasses on the wire.

A message is one ZeroMQ frame holding the msgpack array
``[PROTOCOL_VERSION, type name, {field: value}]``. Decoding checks the version,
the type, and every field's type against the dataclass annotations, so the
coordinator never acts on a malformed message and never unpickles anything it
receives. The only pickle in the protocol (``Welcome.app``) flows from the
coordinator to workers.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import msgpack

from .errors import ProtocolError

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


# ---- worker -> coordinator -------------------------------------------------


@dataclass(frozen=True)
class Register:
    """A worker process introduces itself; the reply is Welcome with its incarnation id."""

    name: str
    pid: int
    host: str
    host_id: str  # equal host_ids see the same files (same boot and mount namespace)
    data_address: str  # where this worker's data server answers
    scratch: str  # the folder its data server serves; workers sharing it can serve each other's output


@dataclass(frozen=True)
class Heartbeat:
    worker: int  # incarnation id; 0 from the coordinator


@dataclass(frozen=True)
class TaskDone:
    worker: int
    attempt: int
    partition_lengths: list[int] = field(default_factory=list)  # a map's index
    path: str = ""  # a map's output file, or a reduce's temporary output name
    records: int = 0


@dataclass(frozen=True)
class TaskFailed:
    worker: int
    attempt: int
    error: str  # one line: the exception type and message
    details: str = ""  # the user's traceback
    user_error: bool = True  # False: the worker could not run the task (not the app's fault)


@dataclass(frozen=True)
class FetchFailed:
    """A running reduce could not read one map's output; it waits for a new location."""

    worker: int
    attempt: int
    map_task: int
    map_attempt: int
    data_address: str
    error: str


@dataclass(frozen=True)
class Cancelled:
    worker: int
    attempt: int


@dataclass(frozen=True)
class Goodbye:
    worker: int


# ---- coordinator -> worker -------------------------------------------------


@dataclass(frozen=True)
class Welcome:
    worker: int
    job_id: str
    app: bytes  # the cloudpickled app: the one pickle, flowing to workers only
    n_map: int
    n_reduce: int
    heartbeat_interval: float
    output_dir: str
    output_host_id: str


@dataclass(frozen=True)
class MapOutput:
    """Where one map task's output for one partition can be read."""

    map_task: int
    attempt: int
    host_id: str
    path: str
    data_address: str
    offset: int
    length: int


@dataclass(frozen=True)
class AssignMap:
    attempt: int
    task: int
    key: str
    path: str
    start: int
    end: int


@dataclass(frozen=True)
class AssignReduce:
    attempt: int
    task: int
    outputs: list[MapOutput]


@dataclass(frozen=True)
class MapOutputs:
    """Map outputs that became available for a running reduce attempt."""

    attempt: int
    outputs: list[MapOutput]


@dataclass(frozen=True)
class Cancel:
    attempt: int


@dataclass(frozen=True)
class Unknown:
    """You are not (or no longer) a registered worker: register again."""

    reason: str


@dataclass(frozen=True)
class JobDone:
    ok: bool
    message: str = ""


WORKER_MESSAGES: tuple[type, ...] = (Register, Heartbeat, TaskDone, TaskFailed, FetchFailed, Cancelled, Goodbye)
COORDINATOR_MESSAGES: tuple[type, ...] = (Welcome, Heartbeat, AssignMap, AssignReduce, MapOutputs, Cancel, Unknown, JobDone)
_BY_NAME: dict[str, type] = {cls.__name__: cls for cls in WORKER_MESSAGES + COORDINATOR_MESSAGES + (MapOutput,)}
_HINTS: dict[type, dict[str, Any]] = {}


def encode(message: Any) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, type(message).__name__, _to_plain(message)], use_bin_type=True)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_plain(v) for v in value]
    return value


def decode(frame: bytes, allowed: tuple[type, ...]) -> Any:
    """Decode and validate one frame; raise ProtocolError saying what is wrong."""
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(f"message of {len(frame)} bytes exceeds the limit")
    try:
        envelope = msgpack.unpackb(frame, raw=False, strict_map_key=True)
    except Exception as exc:
        raise ProtocolError(f"not a msgpack message: {exc}") from None
    if not isinstance(envelope, list) or len(envelope) != 3:
        raise ProtocolError("a message must be [version, type, fields]")
    version, name, fields = envelope
    if type(version) is not int or version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    cls = _BY_NAME.get(name) if isinstance(name, str) else None
    if cls is None or cls not in allowed:
        raise ProtocolError(f"unexpected message type {name!r}")
    return _build(cls, fields, name)


def _build(cls: type, fields: Any, where: str) -> Any:
    if not isinstance(fields, dict):
        raise ProtocolError(f"{where}: fields must be a map")
    hints = _HINTS.get(cls)
    if hints is None:
        hints = _HINTS[cls] = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in fields:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ProtocolError(f"{where}: missing field {f.name!r}")
            continue
        kwargs[f.name] = _check(hints[f.name], fields[f.name], f"{where}.{f.name}")
    extra = set(fields) - set(kwargs) - {f.name for f in dataclasses.fields(cls)}
    if extra:
        raise ProtocolError(f"{where}: unknown field(s) {sorted(map(str, extra))}")
    return cls(**kwargs)


def _check(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            if option is type(None) and value is None:
                return None
            if option is not type(None):
                try:
                    return _check(option, value, where)
                except ProtocolError:
                    pass
        raise ProtocolError(f"{where}: unexpected {type(value).__name__}")
    if origin is list:
        if not isinstance(value, list):
            raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check(item, v, f"{where}[]") for v in value]
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if hint is float and type(value) is int:
        return float(value)
    if hint is int and type(value) is bool:
        raise ProtocolError(f"{where}: expected int, got bool")
    if not isinstance(value, hint):
        raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    if hint is int and not -(2**63) <= value < 2**63:
        raise ProtocolError(f"{where}: integer out of range")
    return value

