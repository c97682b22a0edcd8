"""The coordinator's brain: task and worker state machines and every scheduling decision.

Pure logic with no I/O: messages and the current time go in, actions come out
(messages to send, partitions to commit). Every method that depends on time
takes ``now`` (monotonic seconds), so tests drive time without sleeping.

Rules worth knowing:
- Each registration gets a fresh incarnation id and each attempt a fresh attempt
  id. A message from an incarnation that is not alive is answered with Unknown
  (the worker re-registers) and its content is ignored: a result from a worker
  already declared dead is never used, so a task's output is decided only by
  attempts of live workers, and then only by the first to finish.
- Maps are handed out first. Idle workers take reduce tasks once no map is
  pending; a reduce attempt then fetches map outputs as they finish, so the map
  tail and the shuffle overlap. If a map becomes pending again and no worker is
  free, the newest reduce attempt is cancelled to make room (it cannot finish
  before that map anyway).
- A finished map's output stays valid while any live worker on the same host and
  scratch folder can serve it; otherwise the map runs again if a reduce still
  needs it.
- An attempt whose user code raised counts toward ``max_attempts``; an attempt
  lost with its worker counts toward ``max_lost`` (a task that kills whatever
  runs it).
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from . import protocol as p
from .inputs import Split

log = logging.getLogger(__name__)


class TaskKind(enum.Enum):
    MAP = "map"
    REDUCE = "reduce"


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class AttemptState(enum.Enum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # user code raised, or the worker could not run it
    LOST = "lost"  # its worker died
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # another attempt of the task won


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"
    LEFT = "left"


LIVE = (WorkerState.IDLE, WorkerState.BUSY)


class EventKind(enum.Enum):
    WORKER_JOINED = "worker_joined"
    WORKER_DEAD = "worker_dead"
    WORKER_LEFT = "worker_left"
    MESSAGE_FENCED = "message_fenced"
    TASK_ASSIGNED = "task_assigned"
    TASK_FINISHED = "task_finished"
    TASK_FAILED = "task_failed"
    TASK_LOST = "task_lost"
    TASK_CANCELLED = "task_cancelled"
    RESULT_DISCARDED = "result_discarded"
    MAP_OUTPUT_MOVED = "map_output_moved"
    MAP_RERUN = "map_rerun"
    OUTPUT_COMMITTED = "output_committed"
    JOB_FINISHED = "job_finished"


@dataclass(frozen=True)
class Event:
    """One thing that happened, for the event log; ``time`` is monotonic seconds."""

    time: float
    kind: EventKind
    fields: dict


@dataclass(frozen=True)
class Settings:
    n_reduce: int
    heartbeat_interval: float = 1.0
    worker_timeout: float = 5.0
    max_attempts: int = 4
    max_lost: int = 8
    task_timeout: float | None = None


@dataclass
class MapResult:
    attempt: int
    worker: "Worker"
    path: str
    lengths: list[int]
    offsets: list[int]


@dataclass
class Task:
    kind: TaskKind
    index: int
    split: Split | None = None
    state: TaskState = TaskState.PENDING
    failures: int = 0
    lost: int = 0
    running: list["Attempt"] = field(default_factory=list)
    result: MapResult | None = None

    def describe(self) -> str:
        if self.split is not None:
            s = self.split
            return f"map task {self.index} (input {s.key!r}, bytes {s.start}-{s.end})"
        return f"reduce task {self.index} (partition part-{self.index:05d})"


@dataclass
class Attempt:
    id: int
    task: Task
    worker: "Worker"
    started: float
    state: AttemptState = AttemptState.RUNNING


@dataclass
class Worker:
    id: int
    identity: bytes
    info: p.Register
    joined: float
    last_seen: float
    last_sent: float
    state: WorkerState = WorkerState.IDLE
    attempt: Attempt | None = None

    def describe(self) -> str:
        return f"worker {self.id} ({self.info.name}, pid {self.info.pid} on {self.info.host})"


@dataclass(frozen=True)
class Send:
    identity: bytes
    message: Any


@dataclass(frozen=True)
class Commit:
    """Publish a reduce attempt's temporary output as the partition's final file."""

    partition: int
    temp: str


@dataclass(frozen=True)
class Discard:
    """Remove a losing attempt's temporary output."""

    temp: str


@dataclass
class Counters:
    maps_done: int = 0
    reduces_done: int = 0
    attempts: int = 0
    failed_attempts: int = 0
    lost_attempts: int = 0
    workers_dead: int = 0
    maps_rerun: int = 0


class Scheduler:
    def __init__(self, splits: list[Split], settings: Settings, now: float):
        self.settings = settings
        self.maps = [Task(TaskKind.MAP, i, split) for i, split in enumerate(splits)]
        self.reduces = [Task(TaskKind.REDUCE, r) for r in range(settings.n_reduce)]
        self.workers: dict[int, Worker] = {}
        self.by_identity: dict[bytes, Worker] = {}
        self.attempts: dict[int, Attempt] = {}
        self.counters = Counters()
        self.failure: str | None = None
        self.started = now
        self._next_worker = 1
        self._next_attempt = 1
        self.events: list[Event] = []

    def record(self, now: float, kind: EventKind, **fields: Any) -> None:
        self.events.append(Event(now, kind, fields))

    def _attempt_fields(self, attempt: "Attempt") -> dict:
        return {"attempt": attempt.id, "task": attempt.task.index, "phase": attempt.task.kind.value, "worker": attempt.worker.id}

    # ---- state queries -----------------------------------------------------

    @property
    def succeeded(self) -> bool:
        return all(t.state is TaskState.DONE for t in self.reduces)

    @property
    def finished(self) -> bool:
        return self.succeeded or self.failure is not None

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers.values() if w.state in LIVE]

    # ---- inputs ------------------------------------------------------------

    def register(self, now: float, identity: bytes, hello: p.Register, welcome: Any) -> list:
        """A worker joined (or rejoined: its old incarnation is gone for good)."""
        old = self.by_identity.get(identity)
        actions: list = []
        if old is not None and old.state in LIVE:
            actions += self._declare_dead(now, old, "it registered again")
        worker = Worker(self._next_worker, identity, hello, now, now, now)
        self._next_worker += 1
        self.workers[worker.id] = worker
        self.by_identity[identity] = worker
        log.info("%s joined", worker.describe())
        self.record(now, EventKind.WORKER_JOINED, worker=worker.id, name=hello.name, pid=hello.pid, host=hello.host)
        actions.append(Send(identity, welcome(worker.id)))
        return actions + self._dispatch(now)

    def receive(self, now: float, identity: bytes, message: Any) -> list:
        worker = self.workers.get(getattr(message, "worker", -1))
        if worker is None or worker.identity != identity or worker.state not in LIVE:
            if isinstance(message, p.Goodbye):
                return []
            why = "unknown worker" if worker is None else f"worker {worker.id} is {worker.state.value}"
            log.info("fenced %s from %r: %s", type(message).__name__, identity, why)
            self.record(now, EventKind.MESSAGE_FENCED, worker=getattr(message, "worker", None), message=type(message).__name__, attempt=getattr(message, "attempt", None), why=why)
            return [Send(identity, p.Unknown(why))]
        worker.last_seen = now
        if isinstance(message, p.Heartbeat):
            return []
        if isinstance(message, p.Goodbye):
            worker.state = WorkerState.LEFT
            self.record(now, EventKind.WORKER_LEFT, worker=worker.id)
            return self._release(now, worker, "it left")
        attempt = self.attempts.get(message.attempt)
        if attempt is None or attempt.worker is not worker or worker.attempt is not attempt:
            log.warning("ignored %s from %s for attempt %s it is not running", type(message).__name__, worker.describe(), message.attempt)
            return []
        worker.attempt = None
        worker.state = WorkerState.IDLE
        if isinstance(message, p.TaskDone):
            actions = self._succeeded(now, attempt, message)
        elif isinstance(message, p.TaskFailed):
            actions = self._failed(now, attempt, message)
        else:  # Cancelled: the attempt was already accounted for when cancelled
            actions = []
        return actions + self._dispatch(now)

    def tick(self, now: float) -> list:
        """Expire silent workers and overdue attempts; keep heartbeats flowing."""
        actions: list = []
        for worker in self.live_workers():
            if now - worker.last_seen > self.settings.worker_timeout:
                actions += self._declare_dead(now, worker, f"silent for {now - worker.last_seen:.1f} s")
            elif now - worker.last_sent >= self.settings.heartbeat_interval:
                actions.append(Send(worker.identity, p.Heartbeat(0)))
        timeout = self.settings.task_timeout
        if timeout is not None:
            for attempt in list(self.attempts.values()):
                if attempt.state is AttemptState.RUNNING and now - attempt.started > timeout:
                    actions += self._timed_out(now, attempt)
        return actions + self._dispatch(now)

    def sent(self, identity: bytes, now: float) -> None:
        worker = self.by_identity.get(identity)
        if worker is not None:
            worker.last_sent = now

    # ---- transitions -------------------------------------------------------

    def _start(self, now: float, worker: Worker, task: Task) -> Send:
        attempt = Attempt(self._next_attempt, task, worker, now)
        self._next_attempt += 1
        self.attempts[attempt.id] = attempt
        self.counters.attempts += 1
        task.state = TaskState.RUNNING
        task.running.append(attempt)
        worker.state = WorkerState.BUSY
        worker.attempt = attempt
        if task.kind is TaskKind.MAP:
            s = task.split
            message: Any = p.AssignMap(attempt.id, task.index, s.key, s.path, s.start, s.end)
        else:
            done = [m for m in self.maps if m.state is TaskState.DONE]
            message = p.AssignReduce(attempt.id, task.index, [self._location(m, task.index) for m in done])
        log.debug("attempt %d: %s on %s", attempt.id, task.describe(), worker.describe())
        self.record(now, EventKind.TASK_ASSIGNED, **self._attempt_fields(attempt))
        return Send(worker.identity, message)

    def _location(self, map_task: Task, partition: int) -> p.MapOutput:
        r = map_task.result
        info = r.worker.info
        return p.MapOutput(map_task.index, r.attempt, info.host_id, r.path, info.data_address, r.offsets[partition], r.lengths[partition])

    def _end(self, attempt: Attempt, state: AttemptState) -> None:
        attempt.state = state
        task = attempt.task
        if attempt in task.running:
            task.running.remove(attempt)
        if task.state is TaskState.RUNNING and not task.running:
            task.state = TaskState.PENDING

    def _succeeded(self, now: float, attempt: Attempt, done: p.TaskDone) -> list:
        task = attempt.task
        if task.state is TaskState.DONE or attempt.state is not AttemptState.RUNNING:
            self.record(now, EventKind.RESULT_DISCARDED, **self._attempt_fields(attempt), was=attempt.state.value)
            if attempt.state is AttemptState.RUNNING:
                self._end(attempt, AttemptState.SUPERSEDED)
            return [Discard(done.path)] if task.kind is TaskKind.REDUCE else []
        if task.kind is TaskKind.MAP and len(done.partition_lengths) != self.settings.n_reduce:
            return self._failed(now, attempt, p.TaskFailed(done.worker, attempt.id, f"map output index has {len(done.partition_lengths)} partitions, expected {self.settings.n_reduce}", user_error=False))
        self._end(attempt, AttemptState.SUCCEEDED)
        self.record(now, EventKind.TASK_FINISHED, **self._attempt_fields(attempt), records=done.records, seconds=round(now - attempt.started, 6))
        task.state = TaskState.DONE
        task.lost = 0
        for other in list(task.running):  # losers of a race: stop them
            self._end(other, AttemptState.SUPERSEDED)
        if task.kind is TaskKind.REDUCE:
            self.counters.reduces_done += 1
            return [Commit(task.index, done.path)]
        self.counters.maps_done += 1
        offsets, total = [], 0
        for length in done.partition_lengths:
            offsets.append(total)
            total += length
        task.result = MapResult(attempt.id, attempt.worker, done.path, list(done.partition_lengths), offsets)
        return self._announce(task)

    def _announce(self, map_task: Task) -> list:
        """Tell every running reduce attempt where this map's output is."""
        actions = []
        for reduce_task in self.reduces:
            for attempt in reduce_task.running:
                location = self._location(map_task, reduce_task.index)
                actions.append(Send(attempt.worker.identity, p.MapOutputs(attempt.id, [location])))
        return actions

    def _failed(self, now: float, attempt: Attempt, failed: p.TaskFailed) -> list:
        task = attempt.task
        if attempt.state is not AttemptState.RUNNING:
            return []  # already accounted for when it timed out or was cancelled
        self._end(attempt, AttemptState.FAILED)
        self.counters.failed_attempts += 1
        if task.state is TaskState.DONE:
            return []
        if failed.user_error:
            task.failures += 1
            limit, count = self.settings.max_attempts, task.failures
        else:
            task.lost += 1
            limit, count = self.settings.max_lost, task.lost
        log.warning("attempt %d of %s failed on %s (%d of %d): %s", attempt.id, task.describe(), attempt.worker.describe(), count, limit, failed.error)
        self.record(now, EventKind.TASK_FAILED, **self._attempt_fields(attempt), error=failed.error, user_error=failed.user_error)
        if count >= limit and self.failure is None:
            self.failure = (
                f"{task.describe()} failed {count} times; the last attempt, on {attempt.worker.describe()}, "
                f"raised:\n{failed.details or failed.error}"
            ).rstrip()
        return []

    def _timed_out(self, now: float, attempt: Attempt) -> list:
        worker = attempt.worker
        message = p.TaskFailed(worker.id, attempt.id, f"ran longer than the task timeout ({self.settings.task_timeout} s)")
        # The worker stays busy until it confirms the cancellation.
        return self._failed(now, attempt, message) + [Send(worker.identity, p.Cancel(attempt.id))]

    def _declare_dead(self, now: float, worker: Worker, why: str) -> list:
        worker.state = WorkerState.DEAD
        self.counters.workers_dead += 1
        doing = f", running attempt {worker.attempt.id} of {worker.attempt.task.describe()}" if worker.attempt else ""
        log.warning("%s declared dead: %s%s", worker.describe(), why, doing)
        self.record(now, EventKind.WORKER_DEAD, worker=worker.id, why=why, silent=round(now - worker.last_seen, 6))
        return self._release(now, worker, why)

    def _release(self, now: float, worker: Worker, why: str) -> list:
        """Give back what a departed worker held: its attempt, and map outputs only it could serve."""
        attempt, worker.attempt = worker.attempt, None
        if attempt is not None and attempt.state is AttemptState.RUNNING:
            self._end(attempt, AttemptState.LOST)
            self.record(now, EventKind.TASK_LOST, **self._attempt_fields(attempt))
            self.counters.lost_attempts += 1
            task = attempt.task
            task.lost += 1
            if task.lost >= self.settings.max_lost and self.failure is None:
                self.failure = (
                    f"{task.describe()} lost {task.lost} workers in a row (the last: {worker.describe()}, {why}); "
                    "the task may crash whatever runs it: look at that input and at the worker logs"
                )
        actions = []
        if not self.succeeded:
            for map_task in self.maps:
                r = map_task.result
                if map_task.state is TaskState.DONE and r is not None and r.worker is worker:
                    actions += self._rehome(now, map_task)
        return actions

    def _rehome(self, now: float, map_task: Task) -> list:
        """Move a finished map's output to a live worker that can serve it, or run it again."""
        old = map_task.result.worker.info
        for candidate in self.live_workers():
            same_folder = candidate.info.host_id == old.host_id and candidate.info.scratch == old.scratch
            if same_folder and candidate.info.data_address != old.data_address:
                map_task.result.worker = candidate
                self.record(now, EventKind.MAP_OUTPUT_MOVED, task=map_task.index, worker=candidate.id)
                return self._announce(map_task)
        log.info("output of %s is lost with its worker: running it again", map_task.describe())
        self.record(now, EventKind.MAP_RERUN, task=map_task.index)
        map_task.state = TaskState.PENDING
        map_task.result = None
        self.counters.maps_done -= 1
        self.counters.maps_rerun += 1
        return []

    def _dispatch(self, now: float) -> list:
        if self.finished:
            return []
        actions: list = []
        pending_maps = [t for t in self.maps if t.state is TaskState.PENDING]
        pending_reduces = [t for t in self.reduces if t.state is TaskState.PENDING]
        idle = [w for w in self.workers.values() if w.state is WorkerState.IDLE]
        for worker in idle:
            if pending_maps:
                actions.append(self._start(now, worker, pending_maps.pop(0)))
            elif pending_reduces and not any(t.state is TaskState.PENDING for t in self.maps):
                actions.append(self._start(now, worker, pending_reduces.pop(0)))
        if pending_maps:
            # Workers still finishing a cancelled attempt will be free soon: count them.
            freeing = sum(1 for w in self.live_workers() if w.attempt is not None and w.attempt.state is not AttemptState.RUNNING)
            actions += self._preempt_reduces(now, len(pending_maps) - freeing)
        return actions

    def _preempt_reduces(self, now: float, wanted: int) -> list:
        if wanted <= 0:
            return []
        running = sorted((a for t in self.reduces for a in t.running), key=lambda a: a.id, reverse=True)
        actions = []
        for attempt in running[:wanted]:
            log.info("cancelling attempt %d of %s to run a pending map", attempt.id, attempt.task.describe())
            self._end(attempt, AttemptState.CANCELLED)
            self.record(now, EventKind.TASK_CANCELLED, **self._attempt_fields(attempt), why="a map must run first")
            actions.append(Send(attempt.worker.identity, p.Cancel(attempt.id)))
        return actions
