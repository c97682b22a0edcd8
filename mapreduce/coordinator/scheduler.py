"""The coordinator's brain: task and worker state machines and every scheduling decision.

Pure logic with no I/O: messages and the current time go in, actions come out
(messages to send, partitions to commit). Every method that depends on time
takes ``now`` (monotonic seconds), so tests drive time without sleeping.
Every change of state records a typed event (mapreduce.wire.events), and the
coordinator changes the state only through the methods here; whoever shows the
job reads ``view(now)``, a frozen picture of it.

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
- An attempt that failed for its worker's sake, not the user's code (a full or
  unwritable scratch disk, a fetch that failed: ``user_error=False``), counts
  toward ``max_lost`` too, and that worker does not get the task again while
  another live worker could take it (per-task exclusion); if every live worker
  is excluded, the task goes to any of them rather than wait. An output folder
  that cannot take the output fails the job at once: no worker can fix it.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from mapreduce import defaults, output
from mapreduce.coordinator.recovery import FinishedOutput, Recovered
from mapreduce.coordinator.view import (
    LIVE,
    AttemptView,
    JobFacts,
    JobPhase,
    JobView,
    TaskCounts,
    TaskState,
    WorkerState,
    WorkerView,
)
from mapreduce.errors import OutputFolderError
from mapreduce.inputs import Split
from mapreduce.wire import events as ev
from mapreduce.wire import messages as p

log = logging.getLogger(__name__)

TAKES_WORK = (WorkerState.IDLE, WorkerState.BUSY)  # live and not leaving
MAX_OFFSET = 2**63 - 1  # file offsets must fit the wire's int64
KEEP_ATTEMPTS = 30  # recent attempts in a view
KEEP_DEPARTED = 50  # dead or left workers in a view, besides every live one
EPOCH_IDS = 1_000_000  # worker and attempt ids of one epoch (a coordinator's run on a state folder)


@dataclass(frozen=True)
class Settings:
    n_reduce: int
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    worker_timeout: float = defaults.WORKER_TIMEOUT
    max_attempts: int = defaults.MAX_ATTEMPTS
    max_lost: int = defaults.MAX_WORKER_LOSSES
    task_timeout: float | None = None
    speculation: bool = defaults.SPECULATION
    # An attempt is a straggler once it has run slow_factor times the median time of its
    # phase's finished tasks and slow_margin seconds longer than that median. Backups run
    # only on otherwise idle workers, so a false alarm costs little: the bar is low.
    slow_factor: float = defaults.SLOW_FACTOR
    slow_margin: float = defaults.SLOW_MARGIN
    min_workers: int = defaults.MIN_WORKERS  # hand out no task until this many workers have joined (then never again)
    skip_bad_records: int = 0  # records a task may skip when the user's code keeps raising on them
    later_steps: tuple[int, ...] = ()  # a pipeline: the reduce counts of its steps after the first

    @property
    def suspect_after(self) -> float:
        return defaults.SUSPECT_AFTER_HEARTBEATS * self.heartbeat_interval


@dataclass
class MapResult:
    attempt: int
    worker: RegisteredWorker
    path: str
    lengths: list[int]
    offsets: list[int]
    orphaned: bool = False  # its worker is gone and no live worker shares its folder yet


@dataclass
class Task:
    kind: ev.TaskKind
    index: int
    split: Split | None = None
    stage: int = 0  # 0: the maps; k: the reduces of step k (and, in a pipeline, step k+1's map)
    state: TaskState = TaskState.PENDING
    failures: int = 0
    lost: int = 0
    running: list[TaskAttempt] = field(default_factory=list)
    result: MapResult | None = None
    fetch_reruns: int = 0  # times reducers could not read this map's output
    commit_failures: int = 0  # times a finished reduce's output could not be committed
    # Workers (ids) where an attempt failed for the worker's sake: not given it again
    # while another live worker could take it.
    excluded: set[int] = field(default_factory=set)
    # --skip-bad-records: how often the user's code raised on each record, and those skipped.
    record_failures: dict[str, int] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.split is not None:
            s = self.split
            return f"map task {self.index} (input {s.key!r}, bytes {s.start}-{s.end})"
        step = f" of step {self.stage}" if self.stage > 1 else ""
        return f"reduce task {self.index}{step} (partition part-{self.index:05d})"


@dataclass
class TaskAttempt:
    id: int
    task: Task
    worker: RegisteredWorker
    started: float
    state: ev.AttemptState = ev.AttemptState.RUNNING
    backup: bool = False
    ended: float | None = None
    detail: str = ""  # why it ended: a failure's error, or why it was cancelled
    status: str = ""  # the last status line its user code reported while it ran


@dataclass
class RegisteredWorker:
    id: int
    identity: bytes
    info: p.Register
    joined: float
    last_seen: float
    last_sent: float
    state: WorkerState = WorkerState.IDLE
    attempt: TaskAttempt | None = None
    # The public key (z85) its data server proves, learnt in its CURVE handshake ("" without keys).
    server_key: str = ""
    suspect: bool = False  # silent for a while, not yet declared dead
    slow: bool = False  # its last attempt was a straggler: it runs no backups (they would be slow too)

    def describe(self) -> str:
        return f"worker {self.id} ({self.info.name}, pid {self.info.pid} on {self.info.host})"


@dataclass(frozen=True)
class Send:
    identity: bytes
    message: Any


@dataclass(frozen=True)
class Commit:
    """Publish a reduce attempt's temporary output as the partition's final file.

    ``temp`` is a name in the output folder when the reducer sees that folder;
    otherwise a path in the reducer's scratch, to pull from its data server."""

    partition: int
    temp: str
    attempt: int = 0
    data_address: str = ""  # the reducer's data server
    size: int = 0
    server_key: str = ""  # the public key the reducer's data server proves (z85), "" without keys


@dataclass(frozen=True)
class Remember:
    """Make a finished task's output durable in the job's journal before anything that
    follows (reducers told where it is) is carried out."""

    output: FinishedOutput


@dataclass(frozen=True)
class Discard:
    """Remove a losing attempt's temporary output."""

    temp: str


class Scheduler:
    """The job's state. Every change of it goes through a method that records its event
    (``events``, taken by the coordinator with ``take_events``), and ``tally`` counts them."""

    def __init__(
        self, splits: list[Split], settings: Settings, now: float, job_id: str = "", app: str = "", output: str = ""
    ):
        self.settings = settings
        self.job_id = job_id
        self.facts = JobFacts(
            app,
            job_id,
            len(splits),
            settings.n_reduce,
            len({s.path for s in splits}),
            sum(s.end - s.start for s in splits),
            output,
        )
        # Stages: the maps, then each step's reduces. A reduce of a step before the last also
        # runs the next step's map on what it emits, so its output is map output for the next
        # stage, kept and served by its worker like a map's; only the last stage commits.
        sizes = [settings.n_reduce, *settings.later_steps] if settings.n_reduce else []
        self.stages: list[list[Task]] = [[Task(ev.TaskKind.MAP, i, split) for i, split in enumerate(splits)]]
        self.stages += [[Task(ev.TaskKind.REDUCE, r, stage=k) for r in range(n)] for k, n in enumerate(sizes, 1)]
        self.maps = self.stages[0]
        self.reduces = self.stages[1] if len(self.stages) > 1 else []  # the first step's reduces
        self.last = len(self.stages) - 1
        # A map-only job (no reduce): each map's output is committed as its own part file.
        self.map_only = self.last == 0
        self.outputs = self.stages[-1]  # the tasks whose output is committed
        self.workers: dict[int, RegisteredWorker] = {}
        self.by_identity: dict[bytes, RegisteredWorker] = {}
        self.attempts: dict[int, TaskAttempt] = {}
        self.tally = ev.Tally()
        self.started = now
        self.events: list[ev.Event] = []  # recorded since the coordinator last took them
        self._failure: str | None = None
        self._job_finished = False
        self._next_worker = 1
        self._next_attempt = 1
        # Pending tasks by phase: a heap of indices (lowest first) checked lazily on pop,
        # so choosing the next task costs O(log n) however many tasks a job has.
        # All by stage.
        self._pending_heap = [list(range(len(tasks))) for tasks in self.stages]
        self._pending_count = [len(tasks) for tasks in self.stages]
        self._running: list[set[int]] = [set() for _ in self.stages]
        self._done_count = [0 for _ in self.stages]
        self._done_input = 0  # input bytes of the maps done now
        self._durations: list[list[float]] = [[] for _ in self.stages]  # sorted
        self._map_sizes: list[int] = []  # input bytes of the finished maps, sorted
        self._done_at: list[float | None] = [None if tasks else now for tasks in self.stages]  # all done
        self._now = now
        self._started_work = False  # becomes True once min_workers have joined

    def restore(self, recovered: Recovered, now: float) -> None:
        """Take up a job a coordinator before this one left (see coordinator.recovery): its
        committed partitions are done; its finished map outputs are done too, orphaned until
        a worker with their folder registers (they wait in it; a reducer on their host reads
        them directly; one that cannot fetch them says so, and the map runs again). Ids go on
        from where no earlier epoch's can be, so no attempt's files are mistaken for another's."""
        self._next_worker = self._next_attempt = (recovered.epoch - 1) * EPOCH_IDS + 1
        for (stage, index), out in recovered.outputs.items():
            if stage >= self.last or index >= len(self.stages[stage]):
                continue
            task = self.stages[stage][index]
            if len(out.lengths) != len(self.stages[stage + 1]):
                continue  # not this job's shape: run it again
            ghost = RegisteredWorker(0, b"", out.worker, now, now, now, WorkerState.DEAD, server_key=out.server_key)
            task.result = MapResult(out.attempt, ghost, out.path, list(out.lengths), list(out.offsets), orphaned=True)
            self._set_state(task, TaskState.DONE)
            self.tally.task_counters[self._counted(task)] = out.counters
        for partition, counters in recovered.committed.items():
            if partition < len(self.outputs):
                self._set_state(self.outputs[partition], TaskState.DONE)
                self.tally.task_counters[self._counted(self.outputs[partition])] = counters

    @staticmethod
    def _counted(task: Task) -> tuple:
        """The key of a task's counters in the tally (as its TaskFinished events give it)."""
        return (max(task.stage, 1), task.kind, task.index)

    def counters_of(self, task: Task) -> list:
        """The counters of the attempt that finished ``task`` ([] if none did)."""
        return self.tally.task_counters.get(self._counted(task), [])

    def record(self, event: ev.Event) -> None:
        self.events.append(event)
        self.tally.add(event)

    def take_events(self) -> list[ev.Event]:
        """The events recorded since the last call (for the log and the observers)."""
        events, self.events = self.events, []
        return events

    @staticmethod
    def _where(task: Task) -> dict[str, Any]:
        """The fields that place a task whose output feeds the next stage: a map, or a step's reduce."""
        return {"phase": task.kind, "step": max(task.stage, 1)}

    @staticmethod
    def _ids(attempt: TaskAttempt) -> dict[str, Any]:
        """The fields that name an attempt in its events."""
        return {
            "attempt": attempt.id,
            "task": attempt.task.index,
            "phase": attempt.task.kind,
            "worker": attempt.worker.id,
            "step": max(attempt.task.stage, 1),
        }

    # ---- state queries -----------------------------------------------------

    @property
    def failure(self) -> str | None:
        """Why the job cannot succeed any more (set once, by ``fail``)."""
        return self._failure

    @property
    def maps_done(self) -> int:
        return self._done_count[0]

    @property
    def reduces_done(self) -> int:
        return sum(self._done_count[1:])

    @property
    def succeeded(self) -> bool:
        return self._done_count[self.last] == len(self.outputs)

    @property
    def step(self) -> int:
        """The step running now (1-based): that of the lowest stage with unfinished tasks."""
        unfinished = [k for k, tasks in enumerate(self.stages) if self._done_count[k] < len(tasks)]
        return max(unfinished[0] if unfinished else self.last, 1)

    @property
    def finished(self) -> bool:
        return self.succeeded or self._failure is not None

    def live_workers(self) -> list[RegisteredWorker]:
        return [w for w in self.workers.values() if w.state in LIVE]

    def view(self, now: float) -> JobView:
        """A frozen picture of the job at ``now``, sharing nothing mutable with the scheduler."""
        if self._failure is not None:
            phase = JobPhase.FAILED
        elif self.succeeded:
            phase = JobPhase.DONE
        elif self.maps_done == len(self.maps):
            phase = JobPhase.REDUCES
        else:
            phase = JobPhase.MAPS
        live = [w for w in self.workers.values() if w.state in LIVE]
        departed = [w for w in self.workers.values() if w.state not in LIVE][-KEEP_DEPARTED:]
        workers = tuple(self._worker_view(w, now) for w in sorted(live + departed, key=lambda w: w.id))
        recent = itertools.islice(reversed(self.attempts.values()), KEEP_ATTEMPTS)
        return JobView(
            now=now,
            started=self.started,
            job=self.facts,
            phase=phase,
            failure=self._failure,
            maps=self._counts(self.stages[:1]),
            reduces=self._counts(self.stages[1:]),
            input_done=self._done_input,
            tally=self.tally.copy(),
            workers_live=len(live),
            workers_total=len(self.workers),
            workers=workers,
            attempts=tuple(self._attempt_view(a, now) for a in recent),
            step=self.step,
            steps=max(self.last, 1),
        )

    def _counts(self, stages: list[list[Task]]) -> TaskCounts:
        ks = [tasks[0].stage for tasks in stages if tasks]
        return TaskCounts(
            sum(map(len, stages)),
            sum(self._done_count[k] for k in ks),
            sum(len(self._running[k]) for k in ks),
            sum(self._pending_count[k] for k in ks),
        )

    def _worker_view(self, w: RegisteredWorker, now: float) -> WorkerView:
        return WorkerView(
            w.id,
            w.info.name,
            w.info.host,
            w.info.pid,
            w.state,
            w.suspect,
            max(0.0, now - w.last_seen),
            self._attempt_view(w.attempt, now) if w.attempt is not None else None,
        )

    @staticmethod
    def _attempt_view(a: TaskAttempt, now: float) -> AttemptView:
        until = now if a.ended is None else a.ended
        return AttemptView(
            a.id,
            a.task.kind,
            a.task.index,
            a.worker.id,
            a.worker.info.name,
            a.state,
            a.backup,
            max(0.0, until - a.started),
            a.detail,
            a.status,
        )

    # ---- task states -------------------------------------------------------

    def _set_state(self, task: Task, state: TaskState) -> None:
        """The one place a task changes state, so the queues and counts stay right."""
        if task.state is state:
            return
        k = task.stage
        if task.state is TaskState.PENDING:
            self._pending_count[k] -= 1
        if task.state is TaskState.RUNNING:
            self._running[k].discard(task.index)
        if state is TaskState.RUNNING:
            self._running[k].add(task.index)
        if state is TaskState.PENDING:
            self._pending_count[k] += 1
            heapq.heappush(self._pending_heap[k], task.index)
        size = task.split.end - task.split.start if task.split is not None else 0
        if state is TaskState.DONE:
            self._done_count[k] += 1
            self._done_input += size
            if self._done_count[k] == len(self.stages[k]):
                self._done_at[k] = self._now
        elif task.state is TaskState.DONE:
            self._done_count[k] -= 1
            self._done_input -= size
            self._done_at[k] = None
        task.state = state

    def _next_pending(self, stage: int, worker: RegisteredWorker) -> Task | None:
        """The lowest pending task of a stage that ``worker`` may run. Without exclusions
        that is one heap pop (O(log n)); a task ``worker`` is excluded from is passed over
        and pushed back, costing a pop and push each."""
        heap, tasks = self._pending_heap[stage], self.stages[stage]
        held, found = [], None
        while heap:
            index = heapq.heappop(heap)
            task = tasks[index]
            if task.state is not TaskState.PENDING:
                continue
            if worker.id in task.excluded and self._someone_else_can_run(task):
                held.append(index)
                continue
            found = task
            break
        for index in held:
            heapq.heappush(heap, index)
        return found

    def _someone_else_can_run(self, task: Task) -> bool:
        """Whether a live worker not excluded from ``task`` could take it (now or once free)."""
        return any(w.state in TAKES_WORK and w.id not in task.excluded for w in self.workers.values())

    # ---- inputs ------------------------------------------------------------

    def register(self, now: float, identity: bytes, hello: p.Register, welcome: Any, server_key: str = "") -> list:
        """A worker joined (or rejoined: its old incarnation is gone for good). ``server_key``: the
        public key it proved in its handshake, which its data server proves too."""
        self._now = now
        old = self.by_identity.get(identity)
        actions: list = []
        if old is not None and old.state in LIVE:
            actions += self._declare_dead(now, old, "it registered again")
        # The same process (its host, pid and data server) on a new connection: its old registration
        # is over, and must not hold tasks until its silence is noticed.
        same_process = (hello.host_id, hello.pid, hello.data_address)
        for earlier in [w for w in self.workers.values() if w.state in LIVE and w.identity != identity]:
            if (earlier.info.host_id, earlier.info.pid, earlier.info.data_address) == same_process:
                actions += self._declare_dead(now, earlier, "it registered again on a new connection")
        worker = RegisteredWorker(self._next_worker, identity, hello, now, now, now, server_key=server_key)
        self._next_worker += 1
        self.workers[worker.id] = worker
        self.by_identity[identity] = worker
        log.info("%s joined", worker.describe())
        self.record(ev.WorkerJoined(t=now, worker=worker.id, name=hello.name, pid=hello.pid, host=hello.host))
        actions.append(Send(identity, welcome(worker.id)))
        for map_task in self._producers():  # outputs left in this worker's folder by a dead one: it serves them
            r = map_task.result
            if r is not None and r.orphaned and _same_folder(r.worker.info, hello):
                r.worker, r.orphaned = worker, False
                self.record(ev.MapOutputMoved(t=now, task=map_task.index, worker=worker.id, **self._where(map_task)))
                actions += self._announce(map_task)
        return actions + self._dispatch(now)

    def receive(self, now: float, identity: bytes, message: Any) -> list:
        self._now = now
        worker = self.workers.get(getattr(message, "worker", -1))
        if worker is None or worker.identity != identity or worker.state not in LIVE:
            return self._fence(now, identity, worker, message)
        worker.last_seen = now
        worker.suspect = False
        if isinstance(message, p.Heartbeat):
            return []
        if isinstance(message, p.Goodbye):
            # After Draining, an attempt still held (assigned while the worker began to drain)
            # is handed back, not lost: a drain counts against nothing. Without Draining, a
            # worker leaving mid-attempt loses it, as a crash would.
            attempt = worker.attempt
            if (
                worker.state is WorkerState.DRAINING
                and attempt is not None
                and attempt.state is ev.AttemptState.RUNNING
            ):
                self._cancel(now, attempt, "its worker left")
            worker.state = WorkerState.LEFT
            self.record(ev.WorkerLeft(t=now, worker=worker.id))
            return self._release(now, worker, "it left") + self._dispatch(now)
        if isinstance(message, p.Draining):
            worker.state = WorkerState.DRAINING
            self.record(
                ev.WorkerDraining(t=now, worker=worker.id, attempt=worker.attempt.id if worker.attempt else None)
            )
            log.info("%s is draining", worker.describe())
            return []
        attempt = self.attempts.get(message.attempt)
        if attempt is None or attempt.worker is not worker or worker.attempt is not attempt:
            log.warning(
                "ignored %s from %s for attempt %s it is not running",
                type(message).__name__,
                worker.describe(),
                message.attempt,
            )
            return []
        if isinstance(message, p.FetchFailed):
            return self._fetch_failed(now, attempt, message) + self._dispatch(now)
        if isinstance(message, p.TaskStatus):
            attempt.status = message.status
            return []
        worker.attempt = None
        if worker.state is WorkerState.BUSY:
            worker.state = WorkerState.IDLE
        if isinstance(message, p.TaskDone):
            actions = self._succeeded(now, attempt, message)
        elif isinstance(message, p.TaskFailed):
            actions = self._failed(now, attempt, message)
        else:  # Cancelled: normally accounted for when the coordinator cancelled it
            actions = []
            if attempt.state is ev.AttemptState.RUNNING:  # it stopped unasked: give the task back
                self._cancel(now, attempt, "the worker stopped it")
        return actions + self._dispatch(now)

    def _fence(self, now: float, identity: bytes, worker: RegisteredWorker | None, message: Any) -> list:
        """A message from an incarnation that is not alive: ignore its content, tell it to re-register."""
        if isinstance(message, p.Goodbye):
            return []
        why = "unknown worker" if worker is None else f"worker {worker.id} is {worker.state.value}"
        log.info("fenced %s from %r: %s", type(message).__name__, identity, why)
        self.record(
            ev.MessageFenced(
                t=now,
                worker=getattr(message, "worker", None),
                message=type(message).__name__,
                attempt=getattr(message, "attempt", None),
                why=why,
            )
        )
        actions: list = [Send(identity, p.Unknown(why, getattr(message, "worker", 0)))]
        if isinstance(message, p.TaskDone) and self._zombie_output(identity, worker, message):
            actions.append(Discard(message.path))  # a zombie's finished reduce: never committed
        return actions

    def _zombie_output(self, identity: bytes, worker: RegisteredWorker | None, done: p.TaskDone) -> bool:
        """Whether ``done`` names the output of a reduce attempt this dead incarnation really ran
        (so deleting it deletes nothing else: a stranger's message deletes no file)."""
        attempt = self.attempts.get(done.attempt)
        return (
            worker is not None
            and worker.identity == identity
            and attempt is not None
            and attempt.worker is worker
            and self._commits(attempt.task)
            and done.path == output.attempt_temp_name(attempt.task.index, self.job_id, attempt.id)
        )

    def tick(self, now: float) -> list:
        """Expire silent workers and overdue attempts; keep heartbeats flowing."""
        self._now = now
        actions: list = []
        for worker in self.live_workers():
            silent = now - worker.last_seen
            if silent > self.settings.worker_timeout:
                actions += self._declare_dead(now, worker, f"silent for {silent:.1f} s")
                continue
            if silent > self.settings.suspect_after and not worker.suspect:
                worker.suspect = True
                self.record(ev.WorkerSuspect(t=now, worker=worker.id, silent=round(silent, 6)))
            if now - worker.last_sent >= self.settings.heartbeat_interval:
                actions.append(Send(worker.identity, p.Heartbeat(0)))
        timeout = self.settings.task_timeout
        if timeout is not None:
            for attempt in list(self.attempts.values()):
                if attempt.state is ev.AttemptState.RUNNING and now - self._effective_start(attempt) > timeout:
                    actions += self._timed_out(now, attempt)
        return actions + self._dispatch(now)

    def sent(self, identity: bytes, now: float) -> None:
        worker = self.by_identity.get(identity)
        if worker is not None:
            worker.last_sent = now

    def process_exited(self, now: float, host_id: str, pid: int, code: int) -> list:
        """A supervisor saw a worker process exit: no need to wait for its silence."""
        self._now = now
        actions: list = []
        for worker in self.live_workers():
            if worker.info.pid == pid and worker.info.host_id == host_id:
                actions += self._declare_dead(now, worker, f"its process exited with code {code}")
        return actions + self._dispatch(now)

    def revoke(self, now: float, worker_id: int, why: str) -> list:
        """The worker's key was taken off the allow-list: it is gone, as if dead."""
        self._now = now
        worker = self.workers.get(worker_id)
        if worker is None or worker.state not in LIVE:
            return []
        return self._declare_dead(now, worker, why) + self._dispatch(now)

    def commit_failed(self, now: float, partition: int, why: str) -> list:
        """The coordinator could not publish a reduce's output: run that reduce again."""
        self._now = now
        task = self.outputs[partition]
        self.record(ev.CommitFailed(t=now, task=partition, why=why))
        log.warning("could not commit %s (%s): running it again", task.describe(), why)
        self._set_state(task, TaskState.PENDING)
        task.commit_failures += 1
        if task.commit_failures >= self.settings.max_lost:
            self.fail(
                now, f"{task.describe()} could not be committed {task.commit_failures} times; the last error: {why}"
            )
        return self._dispatch(now)

    def committed(self, now: float, partition: int, pulled: int = 0) -> None:
        """The coordinator published a partition's output (after pulling ``pulled`` bytes of it
        from the reducer's host)."""
        self.record(ev.OutputCommitted(t=now, partition=partition, pulled=pulled))

    def fail(self, now: float, why: str) -> None:
        """The job cannot succeed any more: no task is handed out from now on. The first
        reason stands; later ones are only logged."""
        if self._failure is not None:
            log.info("also: %s", why)
            return
        self._failure = why
        self.record(ev.JobFailing(t=now, why=why))

    def job_started(self, now: float) -> None:
        f = self.facts
        self.record(ev.JobStarted(t=now, job=f.job_id, maps=f.n_map, reduces=f.n_reduce, input_bytes=f.input_bytes))

    def job_finished(self, now: float, rejected: int = 0, stopped: str | None = None) -> None:
        """The job is over: succeeded, failed, or ``stopped`` for that reason (an interruption,
        a failure of the coordinator itself). Recorded once; ``rejected``: malformed frames."""
        if self._job_finished:
            return
        self._job_finished = True
        t = self.tally
        self.record(
            ev.JobFinished(
                t=now,
                ok=self.succeeded and self._failure is None and stopped is None,
                message=stopped or self._failure or "",
                input_fetched=t.input_fetched,
                shuffle_fetched=t.shuffle_fetched,
                output_pulled=t.output_pulled,
                rejected=rejected,
            )
        )

    # ---- transitions -------------------------------------------------------

    def _start(self, now: float, worker: RegisteredWorker, task: Task, backup: bool = False) -> Send:
        attempt = TaskAttempt(self._next_attempt, task, worker, now, backup=backup)
        self._next_attempt += 1
        self.attempts[attempt.id] = attempt
        self._set_state(task, TaskState.RUNNING)
        task.running.append(attempt)
        worker.state = WorkerState.BUSY
        worker.attempt = attempt
        if task.kind is ev.TaskKind.MAP:
            s = task.split
            message: Any = p.AssignMap(
                attempt.id, task.index, s.key, s.path, s.start, s.end, s.fingerprint, list(task.skip)
            )
        else:
            done = [m for m in self.stages[task.stage - 1] if m.state is TaskState.DONE]
            outputs = [self._location(m, task.index) for m in done if m.result.lengths[task.index]]
            empty = [m.index for m in done if not m.result.lengths[task.index]]
            partitions = len(self.stages[task.stage + 1]) if task.stage < self.last else 0
            sources = len(self.stages[task.stage - 1])
            message = p.AssignReduce(
                attempt.id, task.index, outputs, empty, list(task.skip), task.stage - 1, partitions, sources
            )
        log.debug("attempt %d: %s on %s", attempt.id, task.describe(), worker.describe())
        self.record((ev.BackupLaunched if backup else ev.TaskAssigned)(t=now, **self._ids(attempt)))
        return Send(worker.identity, message)

    def _location(self, map_task: Task, partition: int) -> p.MapOutput:
        r = map_task.result
        info = r.worker.info
        return p.MapOutput(
            map_task.index,
            r.attempt,
            info.host_id,
            r.path,
            info.data_address,
            r.offsets[partition],
            r.lengths[partition],
            r.worker.server_key,
        )

    def _end(self, now: float, attempt: TaskAttempt, state: ev.AttemptState, detail: str = "") -> None:
        attempt.state, attempt.ended, attempt.detail = state, now, detail
        task = attempt.task
        if attempt in task.running:
            task.running.remove(attempt)
        if task.state is TaskState.RUNNING and not task.running:
            self._set_state(task, TaskState.PENDING)

    def _cancel(self, now: float, attempt: TaskAttempt, why: str) -> None:
        self._end(now, attempt, ev.AttemptState.CANCELLED, why)
        self.record(ev.TaskCancelled(t=now, **self._ids(attempt), why=why))

    def _succeeded(self, now: float, attempt: TaskAttempt, done: p.TaskDone) -> list:
        task = attempt.task
        if task.state is TaskState.DONE or attempt.state is not ev.AttemptState.RUNNING:
            self.record(ev.ResultDiscarded(t=now, **self._ids(attempt), was=attempt.state))
            if attempt.state is ev.AttemptState.RUNNING:
                self._end(now, attempt, ev.AttemptState.SUPERSEDED, "its task was done already")
            return [Discard(done.path)] if self._commits(task) and is_reduce_temp(done.path) else []
        problem = self._check_result(attempt, done)
        if problem:
            return self._failed(now, attempt, p.TaskFailed(done.worker, attempt.id, problem, user_error=False))
        self._end(now, attempt, ev.AttemptState.SUCCEEDED)
        # Bytes in: a map's split; bytes out: a map's output (all partitions) or a reduce's output file.
        size_in = task.split.end - task.split.start if task.kind is ev.TaskKind.MAP else 0
        size_out = done.size if self._commits(task) else sum(done.partition_lengths)
        self.record(
            ev.TaskFinished(
                t=now,
                **self._ids(attempt),
                records=done.records,
                seconds=round(now - attempt.started, 6),
                backup=attempt.backup,
                fetched=done.fetched,
                input_bytes=size_in,
                output_bytes=size_out,
                counters=[[c.group, c.counter, c.value] for c in done.counters],
            )
        )
        duration = now - self._effective_start(attempt)
        attempt.worker.slow = duration > self._slow_limit(task)
        bisect.insort(self._durations[task.stage], duration)
        if task.kind is ev.TaskKind.MAP:
            bisect.insort(self._map_sizes, size_in)
        task.lost = 0
        actions: list = []
        for other in list(task.running):  # the losers of a race: stop them, discard their output
            why = f"attempt {attempt.id} finished first"
            self._end(now, other, ev.AttemptState.SUPERSEDED, why)
            self.record(ev.TaskCancelled(t=now, **self._ids(other), why=why, superseded_by=attempt.id))
            actions.append(Send(other.worker.identity, p.Cancel(other.id)))
        self._set_state(task, TaskState.DONE)
        if self._commits(task):
            info = attempt.worker.info
            return actions + [
                Commit(task.index, done.path, attempt.id, info.data_address, done.size, attempt.worker.server_key)
            ]
        offsets, total = [], done.offset
        for length in done.partition_lengths:
            offsets.append(total)
            total += length
        task.result = MapResult(attempt.id, attempt.worker, done.path, list(done.partition_lengths), offsets)
        w = attempt.worker
        kept = FinishedOutput(
            task.stage,
            task.index,
            attempt.id,
            w.info,
            w.server_key,
            done.path,
            task.result.lengths,
            offsets,
            self.counters_of(task),
        )
        return [*actions, Remember(kept), *self._announce(task)]

    def _commits(self, task: Task) -> bool:
        """Whether a finished attempt of ``task`` wrote output to commit (a task of the last
        stage: the last step's reduces, or the maps of a map-only job), rather than map output
        for the next stage."""
        return task.stage == self.last

    def _producers(self) -> list[Task]:
        """The tasks whose output is map output for a next stage."""
        return [task for tasks in self.stages[:-1] for task in tasks]

    def _check_result(self, attempt: TaskAttempt, done: p.TaskDone) -> str:
        if not self._commits(attempt.task):
            lengths = done.partition_lengths
            wanted = len(self.stages[attempt.task.stage + 1])
            if (
                len(lengths) != wanted
                or any(n < 0 for n in lengths)
                or not 0 <= done.offset <= MAX_OFFSET - sum(lengths)
            ):
                return f"map output index has {len(done.partition_lengths)} partitions, expected {wanted}"
            return ""
        expected = output.attempt_temp_name(attempt.task.index, self.job_id, attempt.id)
        # The name in the output folder, or (from another host) a path in scratch ending in it.
        named = done.path == expected or done.path.endswith("/" + expected)
        if not named or not 0 <= done.size < MAX_OFFSET:
            return f"output named {done.path!r} ({done.size} bytes), expected {expected!r}"
        return ""

    def _announce(self, map_task: Task, only: TaskAttempt | None = None) -> list:
        """Tell the next stage's running attempts (or just ``only``) where this map output is."""
        attempts = [only] if only is not None else [a for t in self.stages[map_task.stage + 1] for a in t.running]
        sends = []
        for a in attempts:
            if map_task.result.lengths[a.task.index]:
                sends.append(Send(a.worker.identity, p.MapOutputs(a.id, [self._location(map_task, a.task.index)])))
            else:  # nothing to read: a list of one int, not a location
                sends.append(Send(a.worker.identity, p.MapOutputs(a.id, [], [map_task.index])))
        return sends

    def _fetch_failed(self, now: float, attempt: TaskAttempt, failed: p.FetchFailed) -> list:
        """A reducer could not read a map's output: point it elsewhere, or run the map again."""
        self.record(
            ev.FetchFailed(
                t=now,
                **self._ids(attempt),
                map_task=failed.map_task,
                map_attempt=failed.map_attempt,
                error=failed.error,
            )
        )
        producers = self.stages[attempt.task.stage - 1]
        if not 0 <= failed.map_task < len(producers) or attempt.state is not ev.AttemptState.RUNNING:
            return []
        map_task = producers[failed.map_task]
        r = map_task.result
        if map_task.state is not TaskState.DONE or r is None:
            return []  # it is running again already; the new output will be announced
        if r.attempt == failed.map_attempt and r.worker.info.data_address == failed.data_address:
            log.warning(
                "%s cannot read the output of %s from %s: running that map again",
                attempt.worker.describe(),
                map_task.describe(),
                failed.data_address,
            )
            map_task.fetch_reruns += 1
            if map_task.fetch_reruns > self.settings.max_lost:
                # The fault may be the readers' (no route to the server, a full disk): stop.
                self.fail(
                    now,
                    f"reducers failed to read the output of {map_task.describe()} {map_task.fetch_reruns} times, "
                    f"the last time {attempt.worker.describe()}: {failed.error}; check that workers can reach each "
                    "other's data servers (--advertise) and have room in their scratch folders",
                )
            self._lose_map_output(now, map_task)
            if r.orphaned:  # no live server: its other outputs are as unreachable, run them now too
                for other in self._producers():
                    o = other.result
                    if (
                        other.state is TaskState.DONE
                        and o is not None
                        and o.orphaned
                        and o.worker is r.worker
                        and self._still_needed(other)
                    ):
                        self._lose_map_output(now, other)
            return []
        return self._announce(map_task, only=attempt)  # it has moved since: say where

    def _failed(self, now: float, attempt: TaskAttempt, failed: p.TaskFailed) -> list:
        task = attempt.task
        if attempt.state is not ev.AttemptState.RUNNING:
            return []  # already accounted for when it timed out or was cancelled
        self._end(now, attempt, ev.AttemptState.FAILED, failed.error)
        self.record(ev.TaskFailed(t=now, **self._ids(attempt), error=failed.error, user_error=failed.user_error))
        if task.state is TaskState.DONE:
            return []
        if failed.user_error and self._skips_bad_record(now, task, failed):
            return []  # its next attempt runs without that record (or retries to make sure)
        if failed.user_error:
            task.failures += 1
            limit, count = self.settings.max_attempts, task.failures
        else:
            # The worker's environment failed (its disk, its network): try another worker.
            task.lost += 1
            limit, count = self.settings.max_lost, task.lost
            task.excluded.add(attempt.worker.id)
        log.warning(
            "attempt %d of %s failed on %s (%d of %d): %s",
            attempt.id,
            task.describe(),
            attempt.worker.describe(),
            count,
            limit,
            failed.error,
        )
        if not failed.user_error and failed.details == OutputFolderError.kind:
            # No other worker can write into a read-only, unwritable or full output folder.
            self.fail(now, f"{failed.error}, on {attempt.worker.describe()}")
        elif count >= limit and failed.user_error:
            self.fail(
                now,
                (
                    f"{task.describe()} failed {count} times; the last attempt, on {attempt.worker.describe()}, "
                    f"raised:\n{failed.details or failed.error}"
                ).rstrip(),
            )
        elif count >= limit:
            self.fail(
                now,
                f"{task.describe()} failed {count} times in a row for reasons not in the app's code; "
                f"the last attempt, on {attempt.worker.describe()}: {failed.error}",
            )
        return []

    def _skips_bad_record(self, now: float, task: Task, failed: p.TaskFailed) -> bool:
        """With --skip-bad-records: a failure that names its record counts toward that record
        (skipped once it failed in two attempts, as the MapReduce paper does), not toward
        --max-attempts, while the task may skip more records."""
        record = failed.bad_record
        if not record or len(task.skip) >= self.settings.skip_bad_records or record in task.skip:
            return False
        task.record_failures[record] = task.record_failures.get(record, 0) + 1
        if task.record_failures[record] >= 2:
            task.skip.append(record)
            log.warning("skipping record %s of %s: it raised twice: %s", record, task.describe(), failed.error)
            source = task.split.key if task.split is not None else ""
            self.record(
                ev.RecordSkipped(
                    t=now, task=task.index, phase=task.kind, record=record, input=source, error=failed.error
                )
            )
        return True

    def _timed_out(self, now: float, attempt: TaskAttempt) -> list:
        worker = attempt.worker
        message = p.TaskFailed(
            worker.id, attempt.id, f"ran longer than the task timeout ({self.settings.task_timeout} s)"
        )
        # The worker stays busy until it confirms the cancellation.
        return self._failed(now, attempt, message) + [Send(worker.identity, p.Cancel(attempt.id))]

    def _declare_dead(self, now: float, worker: RegisteredWorker, why: str) -> list:
        worker.state = WorkerState.DEAD
        doing = (
            f" while running attempt {worker.attempt.id} of {worker.attempt.task.describe()}"
            if worker.attempt
            else " while idle"
        )
        log.warning(
            "%s declared dead: %s%s, last heard %.1f s after the job started; see that worker's log",
            worker.describe(),
            why,
            doing,
            worker.last_seen - self.started,
        )
        self.record(
            ev.WorkerDead(
                t=now,
                worker=worker.id,
                why=why,
                silent=round(now - worker.last_seen, 6),
                attempt=worker.attempt.id if worker.attempt else None,
            )
        )
        return self._release(now, worker, why)

    def _release(self, now: float, worker: RegisteredWorker, why: str) -> list:
        """Give back what a departed worker held: its attempt, and map outputs only it could serve."""
        attempt, worker.attempt = worker.attempt, None
        if attempt is not None and attempt.state is ev.AttemptState.RUNNING:
            self._end(now, attempt, ev.AttemptState.LOST, why)
            self.record(ev.TaskLost(t=now, **self._ids(attempt)))
            task = attempt.task
            task.lost += 1
            if task.lost >= self.settings.max_lost:
                self.fail(
                    now,
                    f"{task.describe()} lost {task.lost} workers in a row (the last: {worker.describe()}, {why}); "
                    "the task may crash whatever runs it: look at that input and at the worker logs",
                )
        actions = []
        if not self.succeeded:
            for map_task in self._producers():
                r = map_task.result
                if (
                    map_task.state is TaskState.DONE
                    and r is not None
                    and r.worker is worker
                    and self._still_needed(map_task)
                ):
                    actions += self._rehome(now, map_task)
        return actions

    def _still_needed(self, producer: Task) -> bool:
        """Whether an unfinished task of the next stage has data in this map output."""
        lengths = producer.result.lengths
        return any(t.state is not TaskState.DONE and lengths[t.index] for t in self.stages[producer.stage + 1])

    def _rehome(self, now: float, map_task: Task) -> list:
        """Move a finished map's output to a live worker that can serve it, or run it again."""
        old = map_task.result.worker.info
        for candidate in self.live_workers():
            if (
                candidate.state is not WorkerState.DRAINING
                and _same_folder(candidate.info, old)
                and candidate.info.data_address != old.data_address
            ):
                map_task.result.worker = candidate
                self.record(ev.MapOutputMoved(t=now, task=map_task.index, worker=candidate.id, **self._where(map_task)))
                return self._announce(map_task)
        # No server for now. The files most likely outlive the process (a crash, not a lost
        # disk): reducers on that host read them directly, a worker joining with that folder
        # serves them, and a reducer that cannot read them says so (FetchFailed): then it re-runs.
        map_task.result.orphaned = True
        self.record(ev.MapOutputOrphaned(t=now, task=map_task.index, **self._where(map_task)))
        return []

    def _lose_map_output(self, now: float, map_task: Task) -> None:
        self.record(ev.MapRerun(t=now, task=map_task.index, **self._where(map_task)))
        map_task.result = None
        self._set_state(map_task, TaskState.PENDING)

    # ---- decisions ---------------------------------------------------------

    def _dispatch(self, now: float) -> list:
        if self.finished:
            return []
        if not self._started_work:
            if len(self.live_workers()) < self.settings.min_workers:
                return []
            self._started_work = True
        actions: list = []
        for worker in [w for w in self.workers.values() if w.state is WorkerState.IDLE]:
            step = self._next_step(now, worker)
            if step is not None:
                actions.append(step)
        # Tasks that must run before a later stage's can: the lowest stage's pending ones, and
        # stragglers no idle worker could back up. A later task waiting for them only waits:
        # its worker can run them.
        lowest = next((k for k in range(self.last + 1) if self._pending_count[k]), None)
        wanted = self._pending_count[lowest] if lowest is not None else 0
        why = f"{_stage_name(lowest)} must run first"
        if lowest is None and self.settings.speculation:
            for k in range(self.last):
                if self._running[k]:
                    lowest, why = k, f"a straggling {_stage_name(k)[2:]} needs a backup"
                    wanted = len(self._stragglers(now, k))
                    break
        if wanted and lowest is not None:
            # Workers still finishing a cancelled attempt will be free soon: count them.
            freeing = sum(
                1
                for w in self.live_workers()
                if w.attempt is not None and w.attempt.state is not ev.AttemptState.RUNNING
            )
            actions += self._preempt_later(now, lowest, wanted - freeing, why)
        return actions

    def _next_step(self, now: float, worker: RegisteredWorker) -> Send | None:
        """What idle ``worker`` does next: the lowest stage's pending task; a stage's tasks go
        out only once no earlier stage has one pending, and a straggler's backup of an earlier
        stage comes before them (it holds up every later task)."""
        for k in range(self.last + 1):
            if self._pending_count[k]:
                task = self._next_pending(k, worker)
                if task is not None:
                    return self._start(now, worker, task)
                return self._backup(now, worker, self.last)  # every pending one excludes this worker
            if k < self.last:
                backup = self._backup(now, worker, k)
                if backup is not None:
                    return backup
        return self._backup(now, worker, self.last)

    def _effective_start(self, attempt: TaskAttempt) -> float:
        """When an attempt could start working: a reduce waits for the last task of the stage before."""
        stage = attempt.task.stage
        if stage > 0 and self._done_at[stage - 1] is not None:
            return max(attempt.started, self._done_at[stage - 1])
        return attempt.started

    def _backup(self, now: float, worker: RegisteredWorker, stage: int) -> Send | None:
        """A backup attempt on idle ``worker`` for the most overdue straggler of ``stage``, if any.
        A worker that straggled itself runs none: it would most likely be slow again."""
        if not self.settings.speculation or worker.slow:
            return None
        overdue = [
            (over, attempt)
            for over, attempt in self._stragglers(now, stage)
            if attempt.worker is not worker and worker.id not in attempt.task.excluded
        ]
        if not overdue:
            return None
        straggler = max(overdue, key=lambda pair: pair[0])[1]
        straggler.worker.slow = True
        log.info("backup attempt for %s, slow on %s", straggler.task.describe(), straggler.worker.describe())
        return self._start(now, worker, straggler.task, backup=True)

    def _stragglers(self, now: float, stage: int) -> list[tuple[float, TaskAttempt]]:
        """Running attempts of a stage past its straggler limit (any, on a slow worker),
        with how far past it.

        Only tasks with a single running attempt qualify (one backup per task), and a
        reduce only once every task of the stage before is done (till then it waits)."""
        if stage > 0 and self._done_at[stage - 1] is None:
            return []
        tasks, found = self.stages[stage], []
        for index in self._running[stage]:
            running = tasks[index].running
            if len(running) == 1:
                # On a worker that straggled before, an attempt is likely late too: at once.
                limit = 0.0 if running[0].worker.slow else self._slow_limit(tasks[index])
                over = (now - self._effective_start(running[0])) - limit
                if over > 0:
                    found.append((over, running[0]))
        return found

    def _slow_limit(self, task: Task) -> float:
        """How long an attempt of ``task`` may run before it counts as a straggler (forever
        until a task of its phase has finished). A map with more input than the typical
        finished map is expected to take proportionally longer: unequal splits are not slow."""
        durations = self._durations[task.stage]
        if not durations:
            return math.inf
        expected = durations[len(durations) // 2]
        if task.kind is ev.TaskKind.MAP:
            typical = self._map_sizes[len(self._map_sizes) // 2]
            expected *= max(1.0, (task.split.end - task.split.start) / max(typical, 1))
        return max(self.settings.slow_factor * expected, expected + self.settings.slow_margin)

    def _preempt_later(self, now: float, stage: int, wanted: int, why: str) -> list:
        """Cancel up to ``wanted`` running attempts of stages after ``stage``, the youngest
        first, to free their workers for it (none of a worker that straggled: it would be slow)."""
        if wanted <= 0:
            return []
        later = (a for tasks in self.stages[stage + 1 :] for t in tasks for a in t.running if not a.worker.slow)
        running = sorted(later, key=lambda a: a.id, reverse=True)
        actions = []
        for attempt in running[:wanted]:
            log.info("cancelling attempt %d of %s: %s", attempt.id, attempt.task.describe(), why)
            self._cancel(now, attempt, why)
            actions.append(Send(attempt.worker.identity, p.Cancel(attempt.id)))
        return actions


def _stage_name(stage: int | None) -> str:
    return "a map" if not stage else "a reduce" if stage == 1 else f"a reduce of step {stage}"


def _same_folder(a: p.Register, b: p.Register) -> bool:
    """Whether two workers share a scratch folder on one host (and so can serve each other's output)."""
    return a.host_id == b.host_id and a.scratch == b.scratch


def is_reduce_temp(name: str) -> bool:
    return output.is_temp_name(name)
