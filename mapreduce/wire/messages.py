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
import enum
import functools
import ipaddress
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import msgpack

from mapreduce.errors import ProtocolError
from mapreduce.output import Compression

# 2: Welcome lost output_host_id; 3: counters, bad records, compression, pipelines; 4: MapOutput.server_key;
# 5: JobDone.leave, a standing cluster's client messages
PROTOCOL_VERSION = 6
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

# A data server's address as a worker advertises it (the socket's bound endpoint, always
# numeric): tcp://IPv4:PORT or tcp://[IPv6]:PORT. The coordinator connects to the address a
# worker sends (to check that it answers, to pull reduce output), so anything else, a name
# to look up included, must never get that far.
_ENDPOINT = re.compile(
    r"tcp://([0-9]{1,3}(?:\.[0-9]{1,3}){3}|\[[0-9A-Fa-f:.]{2,45}(?:%[A-Za-z0-9_.-]{1,32})?\]):([1-9][0-9]{0,4})"
)


def _check_endpoint(value: str, where: str) -> None:
    if len(value) > 100 or not _is_endpoint(value):  # only short strings reach the cache
        raise ProtocolError(f"{where}: {value[:80]!r} is not a data server address (tcp://IP:PORT)")


@functools.lru_cache(maxsize=1024)  # a reduce's assignment names the same few addresses thousands of times
def _is_endpoint(value: str) -> bool:
    match = _ENDPOINT.fullmatch(value)
    try:
        if match is None or int(match.group(2)) > 65535:
            return False
        host = match.group(1)
        return isinstance(ipaddress.ip_address(host.strip("[]")), ipaddress.IPv6Address) == host.startswith("[")
    except ValueError:
        return False


Endpoint = Annotated[str, _check_endpoint]  # a str field holding a data server's address

_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
_Z85_VALUE = {c: i for i, c in enumerate(_Z85)}


def _check_server_key(value: str, where: str) -> None:
    """A CURVE public key in z85 (40 characters, each 5 encoding 4 bytes), or "" (no keys)."""
    if value == "":
        return
    if len(value) != 40 or any(c not in _Z85_VALUE for c in value):
        raise ProtocolError(f"{where}: {value[:50]!r} is not a public key (40 characters of z85)")
    for i in range(0, 40, 5):
        number = 0
        for c in value[i : i + 5]:
            number = number * 85 + _Z85_VALUE[c]
        if number >= 2**32:
            raise ProtocolError(f"{where}: {value[:50]!r} is not a public key (not valid z85)")


ServerKey = Annotated[str, _check_server_key]  # the CURVE public key a data server proves (z85), or ""


# ---- worker -> coordinator -------------------------------------------------


@dataclass(frozen=True)
class Register:
    """A worker process introduces itself; the reply is Welcome with its incarnation id."""

    name: str
    pid: int
    host: str
    host_id: str  # equal host_ids see the same files (same boot and mount namespace)
    data_address: Endpoint  # where this worker's data server answers
    scratch: str  # the folder its data server serves; workers sharing it can serve each other's output
    # Registering again with a job's restarted coordinator: the job, and the finished outputs this
    # worker holds for it, which the coordinator checks and takes instead of running them again.
    job_id: str = ""
    held: list[HeldOutput] = field(default_factory=list)


@dataclass(frozen=True)
class Heartbeat:
    worker: int  # incarnation id; 0 from the coordinator


@dataclass(frozen=True)
class CounterValue:
    """One counter of an attempt (see mapreduce.counters)."""

    group: str
    counter: str
    value: int


@dataclass(frozen=True)
class HeldOutput:
    """A finished task's output that a worker still holds (a map's, or a pipeline's earlier
    step's reduce's): what it tells a restarted coordinator of its job when registering."""

    stage: int  # 0: a map; k: a reduce of step k, whose output feeds step k + 1
    task: int
    attempt: int
    path: str
    partition_lengths: list[int]
    offset: int = 0
    records: int = 0
    counters: list[CounterValue] = field(default_factory=list)


@dataclass(frozen=True)
class TaskDone:
    worker: int
    attempt: int
    partition_lengths: list[int] = field(default_factory=list)  # a map's index
    path: str = ""  # a map's output file, or a reduce's temporary output name
    records: int = 0
    offset: int = 0  # where in that file a map's output starts
    size: int = 0  # bytes of a reduce's output (the coordinator pulls it from another host)
    fetched: int = 0  # bytes this attempt received over the network (input or map output)
    counters: list[CounterValue] = field(default_factory=list)


@dataclass(frozen=True)
class TaskFailed:
    worker: int
    attempt: int
    error: str  # one line: the exception type and message
    details: str = ""  # the user's traceback
    user_error: bool = True  # False: the worker could not run the task (not the app's fault)
    bad_record: str = ""  # the record the user's code raised on: a map's line offset (or split start), a reduce's key


@dataclass(frozen=True)
class FetchFailed:
    """A running reduce could not read one map's output; it waits for a new location."""

    worker: int
    attempt: int
    map_task: int
    map_attempt: int
    data_address: Endpoint
    error: str


@dataclass(frozen=True)
class Cancelled:
    worker: int
    attempt: int


MAX_STATUS = 200  # characters of a task's status line (longer ones are cut by the worker)


def _check_status(value: str, where: str) -> None:
    if len(value) > MAX_STATUS:
        raise ProtocolError(f"{where}: a status of {len(value)} characters (at most {MAX_STATUS})")


@dataclass(frozen=True)
class TaskStatus:
    """A running attempt's status line (a streaming command's reporter:status, mrjob's set_status)."""

    worker: int
    attempt: int
    status: Annotated[str, _check_status]


@dataclass(frozen=True)
class Goodbye:
    worker: int


@dataclass(frozen=True)
class Draining:
    """The worker is leaving (SIGTERM): give it no new task; it finishes or hands back its current one."""

    worker: int


# ---- coordinator -> worker -------------------------------------------------


@dataclass(frozen=True)
class SideFile:
    """A file shipped to every worker of a job (--file): tasks open it by ``name`` in their
    working folder. A worker that sees ``path`` as the coordinator does (same fingerprint)
    links it; any other fetches it from the coordinator's data server."""

    name: str
    path: str
    size: int
    fingerprint: str


@dataclass(frozen=True)
class Welcome:
    worker: int
    job_id: str
    app: bytes  # the cloudpickled app: the one pickle, flowing to workers only
    n_map: int
    n_reduce: int
    heartbeat_interval: float
    output_dir: str
    data_port: int = 0  # the coordinator's data server (inputs, for workers on other hosts), same host as --connect
    output_token: str = ""  # in the output folder's visibility file: a worker that reads it writes there directly
    compression: Compression = Compression.NONE  # how output tasks write their part files
    files: list[SideFile] = field(default_factory=list)  # --file: shipped to each worker's task folder
    # The coordinator's epoch (its run on a state folder, 0 without one): a worker answers only
    # the newest epoch of its job it has seen, so a coordinator superseded by a restarted one
    # cannot give it work.
    epoch: int = 0


@dataclass(frozen=True)
class MapOutput:
    """Where one map task's output for one partition can be read."""

    map_task: int
    attempt: int
    host_id: str
    path: str
    data_address: Endpoint
    offset: int
    length: int
    # The public key the data server at data_address proves (z85), as the coordinator learnt it
    # in that worker's CURVE handshake; "" without keys.
    server_key: ServerKey = ""


@dataclass(frozen=True)
class AssignMap:
    attempt: int
    task: int
    key: str
    path: str
    start: int
    end: int
    fingerprint: str = ""  # of the input file: a worker that sees the same file reads it directly
    skip: list[str] = field(default_factory=list)  # bad records not to read (--skip-bad-records)


@dataclass(frozen=True)
class AssignReduce:
    attempt: int
    task: int
    outputs: list[MapOutput]
    empty: list[int] = field(default_factory=list)  # finished maps with nothing for this partition
    skip: list[str] = field(default_factory=list)  # bad records (keys) not to reduce (--skip-bad-records)
    step: int = 0  # a pipeline: the step (0-based) whose reduce this is
    partitions: int = 0  # a pipeline: >0, run the next step's map and write map output for this many reduces
    sources: int = 0  # a pipeline: how many tasks of the stage before feed it (0: the job's maps)


@dataclass(frozen=True)
class MapOutputs:
    """Map outputs that became available for a running reduce attempt."""

    attempt: int
    outputs: list[MapOutput]
    empty: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class Cancel:
    attempt: int


@dataclass(frozen=True)
class Unknown:
    """You are not (or no longer) a registered worker: register again."""

    reason: str
    worker: int = 0  # the incarnation the answered message claimed: a stale answer is ignored


@dataclass(frozen=True)
class Refused:
    """The coordinator will not take this worker (e.g. its data server is unreachable): exit."""

    reason: str


@dataclass(frozen=True)
class JobDone:
    ok: bool
    message: str = ""
    leave: bool = False  # the cluster is stopping: a worker that stays (--stay) leaves too


# ---- a standing cluster's clients (submit, jobs, cancel, cluster stop) and its service ----


class JobState(enum.StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def over(self) -> bool:
        return self not in (JobState.QUEUED, JobState.RUNNING)


class JobKind(enum.StrEnum):
    APP = "app"  # an app (mapreduce run's): by name, or its source
    STREAMING = "streaming"  # commands as mapper, reducer, combiner (mapreduce streaming's)
    MRJOB = "mrjob"  # an mrjob job: its script's source and its arguments (mapreduce mrjob's)


@dataclass(frozen=True)
class SubmitJob:
    """A job for the service's queue. Paths are paths on the service's host. The app travels
    as Python source (never a pickle): run by the job's own coordinator process, not the service."""

    app: str  # a built-in app's name, or the file name app_source had on the client ("" streaming)
    inputs: list[str]
    output: str
    app_source: str = ""  # "": app names a built-in app
    kind: JobKind = JobKind.APP
    mapper: str = ""  # streaming: the commands
    reducer: str = ""
    combiner: str = ""
    defines: list[str] = field(default_factory=list)  # streaming: -D NAME=VALUE
    job_args: list[str] = field(default_factory=list)  # mrjob: the job's own arguments (inputs among them)
    n_reduce: int | None = None
    params: list[str] = field(default_factory=list)  # NAME=VALUE
    split_size: int = 0  # 0: the default
    overwrite: bool = False
    files: list[str] = field(default_factory=list)  # side files (--file)
    compress: Compression = Compression.NONE
    max_attempts: int = 0  # 0: the default
    skip_bad_records: int = 0


@dataclass(frozen=True)
class ListJobs:
    pass


MAX_WATCH = 10.0  # seconds a watch may be held


@dataclass(frozen=True)
class WatchJob:
    """The job's info; with ``wait``, not before its state differs from ``known`` or ``wait``
    seconds have passed (at most MAX_WATCH): a follower hears of the end at once."""

    job_id: str
    known: JobState | None = None
    wait: float = 0.0


@dataclass(frozen=True)
class CancelJob:
    job_id: str


@dataclass(frozen=True)
class StopCluster:
    cancel_running: bool = False  # else the running job finishes first


@dataclass(frozen=True)
class JobInfo:
    job_id: str
    state: JobState
    app: str
    output: str
    submitted: float  # wall-clock seconds (time.time())
    started: float = 0.0  # 0: not yet
    finished: float = 0.0
    message: str = ""
    events: str = ""  # the job's event log on the service's host (mapreduce report)


@dataclass(frozen=True)
class JobList:
    jobs: list[JobInfo]
    stopping: bool = False


@dataclass(frozen=True)
class Declined:
    """The service would not do what a client asked, and why."""

    reason: str


WORKER_MESSAGES: tuple[type, ...] = (
    Register,
    Heartbeat,
    TaskDone,
    TaskFailed,
    FetchFailed,
    Cancelled,
    Goodbye,
    Draining,
    TaskStatus,
)
COORDINATOR_MESSAGES: tuple[type, ...] = (
    Welcome,
    Heartbeat,
    AssignMap,
    AssignReduce,
    MapOutputs,
    Cancel,
    Unknown,
    Refused,
    JobDone,
)
CLIENT_MESSAGES: tuple[type, ...] = (SubmitJob, ListJobs, WatchJob, CancelJob, StopCluster)
SERVICE_MESSAGES: tuple[type, ...] = (JobInfo, JobList, Declined)
_BY_NAME: dict[str, type] = {
    cls.__name__: cls
    for cls in WORKER_MESSAGES + COORDINATOR_MESSAGES + CLIENT_MESSAGES + SERVICE_MESSAGES + (MapOutput, HeldOutput)
}


def encode(message: Any) -> bytes:
    return msgpack.packb([PROTOCOL_VERSION, type(message).__name__, _to_plain(message)], use_bin_type=True)


def _to_plain(message: Any) -> dict:
    spec = _spec(type(message))
    plain = {name: getattr(message, name) for name in spec.names}
    for name in spec.nested:  # lists of dataclasses (MapOutput)
        plain[name] = [_to_plain(item) for item in plain[name]]
    return plain


def to_plain(message: Any) -> dict:
    """A message as plain data (str, int, float, bool, None, lists, maps): what JSON holds."""
    return json.loads(json.dumps(_to_plain(message)))


def from_plain(cls: type, fields: Any) -> Any:
    """A message of ``cls`` back from ``to_plain``'s data, validated as a decoded one is
    (ProtocolError says what is wrong)."""
    return _build(cls, fields, cls.__name__)


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


# ---- validation, compiled once per message class from its annotations ----------

Checker = Callable[[Any, str], Any]


@dataclass(frozen=True)
class _Spec:
    names: tuple[str, ...]
    fields: tuple[tuple[str, Checker, bool], ...]  # name, checker, required
    nested: tuple[str, ...]


@functools.cache
def _spec(cls: type) -> _Spec:
    hints = typing.get_type_hints(cls, include_extras=True)
    fields, nested = [], []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        fields.append((f.name, _checker(hints[f.name]), required))
        if typing.get_origin(hints[f.name]) is list and dataclasses.is_dataclass(typing.get_args(hints[f.name])[0]):
            nested.append(f.name)
    return _Spec(tuple(f.name for f in dataclasses.fields(cls)), tuple(fields), tuple(nested))


def _build(cls: type, fields: Any, where: str) -> Any:
    if not isinstance(fields, dict):
        raise ProtocolError(f"{where}: fields must be a map")
    spec = _spec(cls)
    kwargs = {}
    for name, check, required in spec.fields:
        if name in fields:
            kwargs[name] = check(fields[name], f"{where}.{name}")
        elif required:
            raise ProtocolError(f"{where}: missing field {name!r}")
    if len(kwargs) != len(fields):
        extra = set(fields) - set(spec.names)
        raise ProtocolError(f"{where}: unknown field(s) {sorted(map(str, extra))}")
    return cls(**kwargs)


def _checker(hint: Any) -> Checker:
    origin = typing.get_origin(hint)
    if origin is Annotated:  # a base type, then checks of the value (after the type check)
        base, *extras = typing.get_args(hint)
        check_base = _checker(base)

        def check_annotated(value: Any, where: str) -> Any:
            value = check_base(value, where)
            for extra in extras:
                extra(value, where)
            return value

        return check_annotated
    if origin in (typing.Union, types.UnionType):
        options = [_checker(o) for o in typing.get_args(hint) if o is not type(None)]
        nullable = type(None) in typing.get_args(hint)

        def check_union(value: Any, where: str) -> Any:
            if value is None and nullable:
                return None
            for option in options:
                try:
                    return option(value, where)
                except ProtocolError:
                    pass
            raise ProtocolError(f"{where}: unexpected {type(value).__name__}")

        return check_union
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        item = _checker(item_hint)
        if item_hint in (int, str):  # the common flat lists: one type test per item

            def check_flat(value: Any, where: str) -> Any:
                if type(value) is not list or not all(type(v) is item_hint for v in value):
                    raise ProtocolError(f"{where}: expected a list of {item_hint.__name__}")
                return [item(v, where) for v in value] if item_hint is int else value

            return check_flat

        def check_list(value: Any, where: str) -> Any:
            if type(value) is not list:
                raise ProtocolError(f"{where}: expected a list, got {type(value).__name__}")
            return [item(v, where) for v in value]

        return check_list
    if dataclasses.is_dataclass(hint):
        return lambda value, where: _build(hint, value, where)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):  # travels as its value

        def check_enum(value: Any, where: str) -> Any:
            try:
                return hint(value)
            except (ValueError, TypeError):
                raise ProtocolError(f"{where}: {str(value)[:40]!r} is not a {hint.__name__}") from None

        return check_enum
    if hint is int:

        def check_int(value: Any, where: str) -> Any:
            if type(value) is not int:
                raise ProtocolError(f"{where}: expected int, got {type(value).__name__}")
            if not -(2**63) <= value < 2**63:
                raise ProtocolError(f"{where}: integer out of range")
            return value

        return check_int
    if hint is float:

        def check_float(value: Any, where: str) -> Any:
            if type(value) is float:
                return value
            if type(value) is int:
                return float(value)
            raise ProtocolError(f"{where}: expected float, got {type(value).__name__}")

        return check_float

    def check_exact(value: Any, where: str) -> Any:
        if type(value) is not hint:
            raise ProtocolError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
        return value

    return check_exact
