"""The event log's schema: every event kind and its fields, declared once.

The scheduler records these events (the coordinator through the scheduler's methods);
the status page, the report and the crash test read them back with :func:`parse` or
:func:`read_events`. Nothing downstream matches names or message texts: it matches
classes and reads typed fields. This module needs only the standard library (and
mapreduce.errors), so reading a log pulls in no control plane.

A log line is one JSON object: ``{"t": monotonic s, "wall": unix s, "event": kind,
...fields}``, the fields being those of the event's class below (enums by value).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
import typing
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ClassVar

from mapreduce.counters import Counters
from mapreduce.errors import EventLogError


# Both are str enums, so a record read as a plain dict compares equal to them too.
class TaskKind(enum.StrEnum):
    MAP = "map"
    REDUCE = "reduce"


class AttemptState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # user code raised, or the worker could not run it
    LOST = "lost"  # its worker died
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # another attempt of the task won


class EventKind(enum.Enum):
    WORKER_JOINED = "worker_joined"
    WORKER_SUSPECT = "worker_suspect"
    WORKER_DEAD = "worker_dead"
    WORKER_DRAINING = "worker_draining"
    WORKER_LEFT = "worker_left"
    MESSAGE_FENCED = "message_fenced"
    TASK_ASSIGNED = "task_assigned"
    BACKUP_LAUNCHED = "backup_launched"
    TASK_FINISHED = "task_finished"
    TASK_FAILED = "task_failed"
    TASK_LOST = "task_lost"
    TASK_CANCELLED = "task_cancelled"
    RESULT_DISCARDED = "result_discarded"
    MAP_OUTPUT_MOVED = "map_output_moved"
    MAP_OUTPUT_ORPHANED = "map_output_orphaned"
    MAP_RERUN = "map_rerun"
    OUTPUT_RECOVERED = "output_recovered"
    FETCH_FAILED = "fetch_failed"
    COMMIT_FAILED = "commit_failed"
    OUTPUT_COMMITTED = "output_committed"
    RECORD_SKIPPED = "record_skipped"
    JOB_STARTED = "job_started"
    JOB_FAILING = "job_failing"
    JOB_FINISHED = "job_finished"


EventError = EventLogError  # a log record that does not match the schema


@dataclass(frozen=True, kw_only=True)
class Event:
    """One thing that happened. ``t`` is monotonic seconds (the coordinator's clock);
    ``wall`` is unix seconds, known once the event is read back from a log (an event
    read back equals the one recorded: ``wall`` is not compared)."""

    kind: ClassVar[EventKind]
    t: float
    wall: float | None = dataclasses.field(default=None, compare=False)

    def fields(self) -> dict[str, Any]:
        """The event's own fields as the log writes them (enums by value; no ``t``, ``wall``)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name not in ("t", "wall")}


def _plain(value: Any) -> Any:
    return value.value if isinstance(value, enum.Enum) else value


# ---- workers ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class WorkerJoined(Event):
    kind = EventKind.WORKER_JOINED
    worker: int
    name: str
    pid: int
    host: str


@dataclass(frozen=True, kw_only=True)
class WorkerSuspect(Event):
    """Silent for a while, not yet declared dead."""

    kind = EventKind.WORKER_SUSPECT
    worker: int
    silent: float


@dataclass(frozen=True, kw_only=True)
class WorkerDead(Event):
    kind = EventKind.WORKER_DEAD
    worker: int
    why: str
    silent: float
    attempt: int | None = None  # the attempt it was running


@dataclass(frozen=True, kw_only=True)
class WorkerDraining(Event):
    """Leaving on request: it finishes or hands back its attempt and gets no new one."""

    kind = EventKind.WORKER_DRAINING
    worker: int
    attempt: int | None = None


@dataclass(frozen=True, kw_only=True)
class WorkerLeft(Event):
    kind = EventKind.WORKER_LEFT
    worker: int


@dataclass(frozen=True, kw_only=True)
class MessageFenced(Event):
    """A message from an incarnation that is not alive: ignored, answered "register again"."""

    kind = EventKind.MESSAGE_FENCED
    worker: int | None
    message: str  # the message's type
    attempt: int | None
    why: str


# ---- attempts ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class AttemptEvent(Event):
    """An event of one task attempt."""

    attempt: int
    task: int
    phase: TaskKind
    worker: int
    step: int = 1  # the step of a pipeline (1-based): a map is step 1's, a reduce its step's


@dataclass(frozen=True, kw_only=True)
class TaskAssigned(AttemptEvent):
    kind = EventKind.TASK_ASSIGNED


@dataclass(frozen=True, kw_only=True)
class BackupLaunched(AttemptEvent):
    """A second attempt of a straggling task (speculative execution)."""

    kind = EventKind.BACKUP_LAUNCHED


@dataclass(frozen=True, kw_only=True)
class TaskFinished(AttemptEvent):
    kind = EventKind.TASK_FINISHED
    records: int
    seconds: float
    backup: bool
    fetched: int  # bytes fetched over the network: a map's input, a reduce's map output
    input_bytes: int  # a map's split (0 for a reduce)
    output_bytes: int  # a map's output (every partition), a reduce's output file
    counters: list = dataclasses.field(default_factory=list)  # [group, counter, value] of this attempt


@dataclass(frozen=True, kw_only=True)
class TaskFailed(AttemptEvent):
    kind = EventKind.TASK_FAILED
    error: str
    user_error: bool  # the app's code raised (else: the worker's disk, network...)


@dataclass(frozen=True, kw_only=True)
class TaskLost(AttemptEvent):
    """The attempt was lost with its worker."""

    kind = EventKind.TASK_LOST


@dataclass(frozen=True, kw_only=True)
class TaskCancelled(AttemptEvent):
    kind = EventKind.TASK_CANCELLED
    why: str
    superseded_by: int | None = None  # the attempt of the same task that finished first


@dataclass(frozen=True, kw_only=True)
class ResultDiscarded(AttemptEvent):
    """A result that came too late: the task was done, or the attempt had already ended."""

    kind = EventKind.RESULT_DISCARDED
    was: AttemptState  # the attempt's state when the result came


@dataclass(frozen=True, kw_only=True)
class FetchFailed(AttemptEvent):
    """A reduce attempt could not read a map's output."""

    kind = EventKind.FETCH_FAILED
    map_task: int
    map_attempt: int
    error: str


@dataclass(frozen=True, kw_only=True)
class RecordSkipped(Event):
    """A bad record (--skip-bad-records): the user's code raised on it in two attempts of
    its task, so the task's next attempts do not read it."""

    kind = EventKind.RECORD_SKIPPED
    task: int
    phase: TaskKind
    record: str  # a map's line offset in its input (or its split's start), or a reduce's key
    input: str  # a map's input as given ("" for a reduce)
    error: str  # the exception's line


# ---- map output and commits ------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class MapOutputMoved(Event):
    kind = EventKind.MAP_OUTPUT_MOVED
    task: int
    phase: TaskKind = TaskKind.MAP  # a map, or (in a pipeline) a reduce whose output feeds the next step
    step: int = 1
    worker: int  # the worker that serves it now


@dataclass(frozen=True, kw_only=True)
class OutputRecovered(Event):
    """A restarted coordinator took a finished output a worker held (its attempt ran under an
    earlier coordinator) instead of running the task again."""

    kind = EventKind.OUTPUT_RECOVERED
    task: int
    phase: TaskKind = TaskKind.MAP
    step: int = 1
    worker: int
    attempt: int


@dataclass(frozen=True, kw_only=True)
class MapOutputOrphaned(Event):
    """A finished map's output has no live server for now (reducers on its host may still read it)."""

    kind = EventKind.MAP_OUTPUT_ORPHANED
    task: int
    phase: TaskKind = TaskKind.MAP  # a map, or (in a pipeline) a reduce whose output feeds the next step
    step: int = 1


@dataclass(frozen=True, kw_only=True)
class MapRerun(Event):
    kind = EventKind.MAP_RERUN
    task: int
    phase: TaskKind = TaskKind.MAP  # a map, or (in a pipeline) a reduce whose output feeds the next step
    step: int = 1


@dataclass(frozen=True, kw_only=True)
class CommitFailed(Event):
    kind = EventKind.COMMIT_FAILED
    task: int
    why: str


@dataclass(frozen=True, kw_only=True)
class OutputCommitted(Event):
    kind = EventKind.OUTPUT_COMMITTED
    partition: int
    pulled: int = 0  # bytes the coordinator pulled from the reducer's host first


# ---- the job -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class JobStarted(Event):
    kind = EventKind.JOB_STARTED
    job: str
    maps: int
    reduces: int
    input_bytes: int


@dataclass(frozen=True, kw_only=True)
class JobFailing(Event):
    """The job cannot succeed any more: the reason, recorded once, when it is decided."""

    kind = EventKind.JOB_FAILING
    why: str


@dataclass(frozen=True, kw_only=True)
class JobFinished(Event):
    kind = EventKind.JOB_FINISHED
    ok: bool
    message: str
    input_fetched: int = 0
    shuffle_fetched: int = 0
    output_pulled: int = 0
    rejected: int = 0  # malformed frames from the network


EVENT_TYPES: dict[EventKind, type[Event]] = {
    cls.kind: cls for cls in [
        WorkerJoined, WorkerSuspect, WorkerDead, WorkerDraining, WorkerLeft, MessageFenced,
        TaskAssigned, BackupLaunched, TaskFinished, TaskFailed, TaskLost, TaskCancelled, ResultDiscarded,
        FetchFailed, MapOutputMoved, OutputRecovered, MapOutputOrphaned, MapRerun, CommitFailed, OutputCommitted,
        RecordSkipped, JobStarted, JobFailing, JobFinished,
    ]
}  # fmt: skip
assert set(EVENT_TYPES) == set(EventKind), "every event kind has its class"


# ---- reading and writing -----------------------------------------------------------------

ENVELOPE = ("t", "wall", "event")  # the keys of a log line that are not the event's own fields


@dataclass(frozen=True)
class _Field:
    """How one field of an event class is read from JSON."""

    name: str
    accepted: tuple[type, ...]  # JSON types taken as they are
    enum: type[enum.Enum] | None  # taken by value
    required: bool

    def read(self, kind: EventKind, value: Any) -> Any:
        if self.enum is not None and isinstance(value, str):
            try:
                return self.enum(value)
            except ValueError:
                pass
        elif isinstance(value, self.accepted) and (bool in self.accepted or not isinstance(value, bool)):
            return value
        raise EventError(f"a {kind.value} event's field {self.name!r} is {value!r}, not {self._expected()}")

    def _expected(self) -> str:
        names = [t.__name__ for t in self.accepted if t is not int or float not in self.accepted]
        if self.enum is not None:
            names.append(" or ".join(repr(m.value) for m in self.enum))
        return " or ".join(names)


_FIELDS: dict[type[Event], list[_Field]] = {}


def _fields_of(cls: type[Event]) -> list[_Field]:
    if cls not in _FIELDS:
        hints = typing.get_type_hints(cls)
        specs = []
        for f in dataclasses.fields(cls):
            if f.name == "wall":
                continue
            types = typing.get_args(hints[f.name]) or (hints[f.name],)
            enums = [t for t in types if isinstance(t, type) and issubclass(t, enum.Enum)]
            accepted = tuple(t for t in types if t not in enums)
            if float in accepted:
                accepted += (int,)  # JSON writes 2.0 as 2
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            specs.append(_Field(f.name, accepted, enums[0] if enums else None, required))
        _FIELDS[cls] = specs
    return _FIELDS[cls]


def parse(record: dict) -> Event:
    """An event from one log record; EventError if it does not match the schema
    (an unknown kind, a field missing, unknown or of the wrong type)."""
    if not isinstance(record, dict):
        raise EventError(f"not an event record (a JSON object): {str(record)[:200]}")
    try:
        kind = EventKind(record["event"])
    except (KeyError, ValueError, TypeError) as exc:
        raise EventError(f"not an event record (no known 'event' name): {str(record)[:200]}") from exc
    cls = EVENT_TYPES[kind]
    specs = _fields_of(cls)
    unknown = set(record) - {spec.name for spec in specs} - set(ENVELOPE)
    if unknown:
        raise EventError(f"a {kind.value} event has unknown field(s) {', '.join(sorted(unknown))}")
    values = {}
    for spec in specs:
        if spec.name in record:
            values[spec.name] = spec.read(kind, record[spec.name])
        elif spec.required:
            raise EventError(f"a {kind.value} event lacks its field {spec.name!r}")
    if cls is TaskFinished:
        _check_counters(kind, values.get("counters", []))
    wall = record.get("wall")
    if wall is not None and (isinstance(wall, bool) or not isinstance(wall, (int, float))):
        raise EventError(f"a {kind.value} event's 'wall' is {wall!r}, not a number")
    return cls(**values, wall=wall)


def _check_counters(kind: EventKind, counters: list) -> None:
    for entry in counters:
        if not (
            isinstance(entry, list)
            and len(entry) == 3
            and isinstance(entry[0], str)
            and isinstance(entry[1], str)
            and type(entry[2]) is int
        ):
            raise EventError(f"a {kind.value} event's counter {entry!r} is not [group, counter, int]")


def to_record(event: Event, wall_offset: float) -> dict:
    """The log record of an event; ``wall_offset`` is unix time minus monotonic time."""
    return {
        "t": round(event.t, 6),
        "wall": round(event.t + wall_offset, 6),
        "event": event.kind.value,
        **event.fields(),
    }


class EventLog:
    """Appends events to a JSON-lines file as they happen (does nothing without a path)."""

    def __init__(self, path: Path | None):
        self._file: IO[str] | None = open(path, "w", encoding="utf-8") if path is not None else None

    def write(self, events: Iterable[Event]) -> None:
        if self._file is None:
            return
        offset = time.time() - time.monotonic()
        lines = [json.dumps(to_record(event, offset)) + "\n" for event in events]
        if lines:
            self._file.writelines(lines)
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_records(path: str | Path) -> Iterator[dict]:
    """The raw JSON objects of a JSON-lines file (event log or faults file)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def read_events(path: str | Path) -> Iterator[Event]:
    """The events of a log file, checked against the schema (EventError at the first bad one)."""
    for number, record in enumerate(read_records(path), 1):
        try:
            yield parse(record)
        except EventError as exc:
            raise EventError(f"{path}, line {number}: {exc}") from None


# ---- one tally of what happened ----------------------------------------------------------


@dataclass
class Tally:
    """Counts of what happened in a job, from its events: the one place they are counted.
    The scheduler keeps one as it records; the crash test and the report make one from a log.
    (How many tasks are done now is state, not a count of events: see the scheduler's view.)"""

    attempts: int = 0  # assigned, backups included
    backups: int = 0
    succeeded: int = 0
    failed_attempts: int = 0
    lost_attempts: int = 0
    cancelled: int = 0  # stopped by the coordinator or its worker, not superseded
    superseded: int = 0  # cancelled because another attempt of the task finished first
    workers_joined: int = 0
    workers_dead: int = 0
    maps_rerun: int = 0
    fenced: int = 0
    fetch_failures: int = 0
    commits: int = 0
    records_skipped: int = 0
    # Bytes moved over the network: input that maps read from the coordinator, map output
    # that reduces fetched from other workers, reduce output the coordinator pulled.
    input_fetched: int = 0
    shuffle_fetched: int = 0
    output_pulled: int = 0
    input_done: int = 0  # input bytes read by finished maps, re-runs included (throughput)
    output_written: int = 0  # output bytes of finished reduces
    # Each task's counters, from its latest successful attempt: a failed, lost or superseded
    # attempt reports none, and a map run again (its output lost) replaces its own counts.
    task_counters: dict[tuple, list] = dataclasses.field(default_factory=dict)

    @property
    def counters(self) -> Counters:
        """The job's counters: the sum over its tasks."""
        total = Counters()
        for counts in self.task_counters.values():
            total.merge(((group, counter), value) for group, counter, value in counts)
        return total

    def add(self, event: Event) -> None:
        if isinstance(event, TaskFinished):
            self.task_counters[event.step, event.phase, event.task] = event.counters
        match event:
            case TaskAssigned():
                self.attempts += 1
            case BackupLaunched():
                self.attempts += 1
                self.backups += 1
            case TaskFinished(phase=TaskKind.MAP):
                self.succeeded += 1
                self.input_fetched += event.fetched
                self.input_done += event.input_bytes
            case TaskFinished():
                self.succeeded += 1
                self.shuffle_fetched += event.fetched
                self.output_written += event.output_bytes
            case TaskFailed():
                self.failed_attempts += 1
            case TaskLost():
                self.lost_attempts += 1
            case TaskCancelled(superseded_by=None):
                self.cancelled += 1
            case TaskCancelled():
                self.superseded += 1
            case WorkerJoined():
                self.workers_joined += 1
            case WorkerDead():
                self.workers_dead += 1
            case MapRerun():
                self.maps_rerun += 1
            case MessageFenced():
                self.fenced += 1
            case FetchFailed():
                self.fetch_failures += 1
            case RecordSkipped():
                self.records_skipped += 1
            case OutputCommitted():
                self.commits += 1
                self.output_pulled += event.pulled

    @classmethod
    def of(cls, events: Iterable[Event]) -> Tally:
        tally = cls()
        for event in events:
            tally.add(event)
        return tally

    def copy(self) -> Tally:
        return dataclasses.replace(self, task_counters=dict(self.task_counters))

    def __add__(self, other: Tally) -> Tally:
        """The counts of two jobs together (a crash test's rounds, say)."""
        counts = {name: getattr(self, name) + getattr(other, name) for name in self.as_dict()}
        tasks = {(0, *k): v for k, v in self.task_counters.items()} | {
            (1, *k): v for k, v in other.task_counters.items()
        }
        return Tally(**counts, task_counters=tasks)

    def as_dict(self) -> dict[str, int]:
        """The counts of events (the job's counters apart)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "task_counters"}
