"""A read-only picture of a running job, and the states its tasks and workers can be in.

The scheduler builds a :class:`JobView` at a given moment (``scheduler.view(now)``):
a frozen snapshot that shares nothing mutable with the scheduler, so whoever shows
the job (the progress bar, the status page) reads it without touching scheduler
internals and cannot change them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from mapreduce.wire.events import AttemptState, Tally, TaskKind


class TaskState(enum.Enum):
    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"


class WorkerState(enum.Enum):
    IDLE = "idle"
    BUSY = "busy"
    DRAINING = "draining"  # leaving on request: finishes or hands back its attempt, gets no new one
    DEAD = "dead"
    LEFT = "left"


LIVE = (WorkerState.IDLE, WorkerState.BUSY, WorkerState.DRAINING)


class JobPhase(enum.Enum):
    MAPS = "maps"  # some map is not done
    REDUCES = "reduces"  # every map is done, some reduce is not
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class JobFacts:
    """What does not change while a job runs."""

    app: str
    job_id: str
    n_map: int
    n_reduce: int
    inputs: int  # distinct input files
    input_bytes: int
    output: str


@dataclass(frozen=True)
class TaskCounts:
    """The tasks of one phase, by state."""

    total: int
    done: int
    running: int
    pending: int


@dataclass(frozen=True)
class AttemptView:
    id: int
    phase: TaskKind
    task: int
    worker: int
    worker_name: str
    state: AttemptState
    backup: bool
    seconds: float  # how long it ran: until the view's moment, or until it ended
    detail: str = ""  # a failed attempt's error, or why it was cancelled
    status: str = ""  # the last status line its user code reported


@dataclass(frozen=True)
class WorkerView:
    id: int
    name: str
    host: str
    pid: int
    state: WorkerState
    suspect: bool  # silent for a while, not yet declared dead
    heartbeat_age: float  # seconds since it was last heard from
    attempt: AttemptView | None  # the attempt it holds

    @property
    def live(self) -> bool:
        return self.state in LIVE


@dataclass(frozen=True)
class JobView:
    """The job at monotonic time ``now``."""

    now: float
    started: float
    job: JobFacts
    phase: JobPhase
    failure: str | None
    maps: TaskCounts
    reduces: TaskCounts
    input_done: int  # input bytes of the maps done now (a map run again counts once)
    tally: Tally  # a copy: what happened so far
    workers_live: int
    workers_total: int
    workers: tuple[WorkerView, ...]  # every live worker and the last departed ones, by id
    attempts: tuple[AttemptView, ...]  # the most recent attempts, newest first
    step: int = 1  # the step running now (1-based; a job that is not a pipeline has one)
    steps: int = 1

    @property
    def elapsed(self) -> float:
        return max(0.0, self.now - self.started)

    @property
    def over(self) -> bool:
        return self.phase in (JobPhase.DONE, JobPhase.FAILED)
