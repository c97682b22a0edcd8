"""The worker's decisions as a pure state machine: events in, instructions out, time passed in.

The control loop (loop.py) turns what happens on its sockets, its signal handler and its
executor thread into events, hands those of one poll to ``WorkerCore.handle_all`` with the
time, and carries out the instructions it gets back, in order. It polls no longer than
``next_deadline()``: every timer (heartbeat, reconnect, handshake, drain, cancel grace) is
checked after the events, so a Tick at that time is enough to fire it.

What the core decides: registering (again), heartbeats, reconnecting with a doubling
backoff, giving up on a silent coordinator, failed or stuck security handshakes, which
results the coordinator still expects, cancels, draining on SIGTERM, and restarting the
process when cancelled user code does not return.

An attempt the core asks to run is named by a run number of its own, not by its attempt
id: a result that arrives after its attempt was dropped (a lost registration, a new
coordinator reusing attempt ids) can never pass for the current attempt's.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from dataclasses import dataclass
from typing import Any

from mapreduce.wire import messages as p

log = logging.getLogger(__name__)


class ExitCode(enum.IntEnum):
    DONE = 0  # the job finished, or the worker drained and left
    FATAL = 1
    REFUSED = 2  # the coordinator would not take this worker
    COORDINATOR_LOST = 3


class WorkerState(enum.Enum):
    NEW = "new"  # not started
    REGISTERING = "registering"  # a Register is on its way; no incarnation yet, so no task
    REGISTERED = "registered"  # has an incarnation: takes tasks
    DRAINING = "draining"  # leaving on SIGTERM: no new task; the current one finishes or is handed back
    STOPPED = "stopped"  # an Exit or a Restart was given: nothing more happens


@dataclass(frozen=True)
class Settings:
    heartbeat_interval: float
    liveness: int  # heartbeats missed before reconnecting
    coordinator_timeout: float  # silence after which the worker gives up
    max_backoff: float  # the longest wait between reconnects
    drain_timeout: float  # on SIGTERM, how long the current attempt may take to finish
    cancel_grace: float  # how long cancelled user code may take to return before a restart
    handshake_timeout: float  # connected but not authenticated for this long: the keys do not match
    has_keys: bool  # CURVE keys configured (a plain worker failing a handshake lacks keys)
    coordinator: str  # the coordinator's endpoint, for messages
    stay: bool = False  # serves job after job: before its first job, no silence is too long
    register_retry: float = 0.2  # no welcome this long after a handshake: the registration is sent again


# ---- events --------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    pass


@dataclass(frozen=True)
class Tick:
    """Nothing happened; time passed."""


@dataclass(frozen=True)
class MessageReceived:
    message: Any  # a decoded coordinator message (one of p.COORDINATOR_MESSAGES)


@dataclass(frozen=True)
class GarbageReceived:
    """A frame from the coordinator that did not decode: ignored, but the coordinator is alive."""

    error: str


@dataclass(frozen=True)
class Connected:
    """The transport connected; the security handshake has begun."""


@dataclass(frozen=True)
class HandshakeSucceeded:
    pass


@dataclass(frozen=True)
class HandshakeFailed:
    problem: str
    # False: the connection ended mid-handshake (a coordinator closing, or a wrong server key):
    # it fails only if no handshake succeeds within the handshake timeout.
    definite: bool = True


@dataclass(frozen=True)
class AttemptReported:
    """A running attempt's message on the way (a reduce's FetchFailed)."""

    run: int
    message: Any


@dataclass(frozen=True)
class AttemptFinished:
    """The executor is done with a run: TaskDone, TaskFailed or Cancelled (worker id 0)."""

    run: int
    result: Any


@dataclass(frozen=True)
class DrainAsked:
    gathering: bool  # the running attempt is a reduce still waiting for map output


Event = (
    Started
    | Tick
    | MessageReceived
    | GarbageReceived
    | Connected
    | HandshakeSucceeded
    | HandshakeFailed
    | AttemptReported
    | AttemptFinished
    | DrainAsked
)


# ---- instructions ------------------------------------------------------------


@dataclass(frozen=True)
class Connect:
    """Open a fresh connection to the coordinator, closing the old one."""


@dataclass(frozen=True)
class Send:
    message: Any


@dataclass(frozen=True)
class JoinJob:
    """Set up the job this Welcome names (app, folder, data server root); ``again``: the job
    this worker already serves, from its restarted coordinator (a newer epoch): keep the
    folder and its map output, take the new coordinator's data server."""

    welcome: p.Welcome
    again: bool = False


@dataclass(frozen=True)
class RunAttempt:
    run: int
    assign: p.AssignMap | p.AssignReduce


@dataclass(frozen=True)
class CancelAttempt:
    run: int


@dataclass(frozen=True)
class DeliverOutputs:
    """Map output locations for a running reduce."""

    run: int
    outputs: list[p.MapOutput]
    empty: list[int]


@dataclass(frozen=True)
class Report:
    """Send an attempt's message to the coordinator. A reduce output it names is this
    worker's to delete at exit if the coordinator never commits it."""

    message: Any


@dataclass(frozen=True)
class Discard:
    """A result no one expects any more: delete the reduce output it names, if any."""

    result: Any


@dataclass(frozen=True)
class Restart:
    why: str


@dataclass(frozen=True)
class Exit:
    code: ExitCode
    why: str
    job_over: bool = False  # the job finished: its files on this host may go
    leave: bool = False  # the cluster is stopping: even a worker that stays leaves
    retry: bool = False  # the handshake failed: wrong keys, or a coordinator closing just then


Instruction = Connect | Send | JoinJob | RunAttempt | CancelAttempt | DeliverOutputs | Report | Discard | Restart | Exit


@dataclass(frozen=True)
class _Current:
    run: int
    attempt: int


class WorkerCore:
    def __init__(self, settings: Settings, register: p.Register):
        self.settings = settings
        self.register = register
        self.state = WorkerState.NEW
        self.incarnation: int | None = None
        self.job_id: str | None = None
        self.epoch = 0  # the newest epoch of this job's coordinator heard of
        self.current: _Current | None = None  # the attempt the coordinator expects a result for
        self.stopping: dict[int, float] = {}  # runs told to stop, not yet returned: since when
        self._runs = 0
        self._last_heard = 0.0
        self._next_heartbeat = 0.0
        self._next_reconnect = 0.0
        self._backoff = settings.heartbeat_interval
        self._connected_at: float | None = None  # a connection not yet through its handshake
        self._handshake_problem: str | None = None  # why the last one ended, if it did not succeed
        self._resend_register_at: float | None = None
        self._drain_deadline: float | None = None
        self._out: list[Instruction] = []

    # ---- the interface -------------------------------------------------------

    def handle(self, event: Event, now: float) -> list[Instruction]:
        return self.handle_all([event], now)

    def handle_all(self, events: list[Event], now: float) -> list[Instruction]:
        """What happened at ``now`` (all that one poll found, in order), then the timers:
        a message read in the same poll as a due reconnect still counts as word from the
        coordinator."""
        if self.state is WorkerState.STOPPED:
            return []
        assert self.state is not WorkerState.NEW or isinstance(events[0], Started), "Started comes first"
        self._out = []
        for event in events:
            self._on(event, now)
            if self.state is WorkerState.STOPPED:
                return self._out
        self._check_timers(now)
        return self._out

    def next_deadline(self) -> float | None:
        """When the loop must hand in a Tick at the latest; None once stopped."""
        if self.state in (WorkerState.NEW, WorkerState.STOPPED):
            return None
        s = self.settings
        deadlines = [self._next_heartbeat, self._next_reconnect]
        if self._connected_at is not None:
            deadlines.append(self._connected_at + s.handshake_timeout)
        if self._resend_register_at is not None:
            deadlines.append(self._resend_register_at)
        if self.stopping:
            deadlines.append(min(self.stopping.values()) + s.cancel_grace)
        if self._drain_deadline is not None and self.current is not None and self.current.run not in self.stopping:
            deadlines.append(self._drain_deadline)
        return min(deadlines)

    @property
    def current_run(self) -> int | None:
        return self.current.run if self.current is not None else None

    # ---- events ------------------------------------------------------------------

    def _on(self, event: Event, now: float) -> None:
        if isinstance(event, Started):
            self._heard(now)
            self._next_heartbeat = now + self.settings.heartbeat_interval
            self._connect()
        elif isinstance(event, MessageReceived):
            self._heard(now)
            self._on_message(event.message, now)
        elif isinstance(event, GarbageReceived):
            self._heard(now)
            log.warning("ignored a malformed message from the coordinator: %s", event.error)
        elif isinstance(event, Connected):
            self._connected_at = now if self._connected_at is None else self._connected_at
        elif isinstance(event, HandshakeSucceeded):
            self._connected_at = self._handshake_problem = None
            if self.state is WorkerState.REGISTERING:
                # A registration may go to a peer that closes without answering (a standing
                # cluster's last job ending just as this worker connected): sent again soon.
                self._resend_register_at = now + self.settings.register_retry
        elif isinstance(event, HandshakeFailed) and event.definite:
            self._handshake_failed(event.problem)
        elif isinstance(event, HandshakeFailed):
            self._handshake_problem = event.problem
            self._connected_at = now if self._connected_at is None else self._connected_at
        elif isinstance(event, AttemptReported):
            if self._expects(event.run):
                self._emit(Report(self._stamped(event.message)))
        elif isinstance(event, AttemptFinished):
            self._finished(event.run, event.result)
        elif isinstance(event, DrainAsked):
            self._drain(event.gathering, now)

    def _on_message(self, message: Any, now: float) -> None:
        if isinstance(message, p.Welcome):
            self._welcome(message)
        elif isinstance(message, (p.AssignMap, p.AssignReduce)):
            self._assign(message, now)
        elif isinstance(message, p.MapOutputs):
            if self._is_current(message.attempt):
                self._emit(DeliverOutputs(self.current.run, message.outputs, message.empty))
        elif isinstance(message, p.Cancel):
            if self._is_current(message.attempt) and self.current.run not in self.stopping:
                log.info("attempt %d cancelled by the coordinator", message.attempt)
                self._cancel(self.current.run, now)
        elif isinstance(message, p.Unknown):
            if self.incarnation is not None and message.worker == self.incarnation:
                # (An answer to an older incarnation's message is stale: already registered again.)
                log.warning("the coordinator does not know this worker (%s): registering again", message.reason)
                self._lost_registration(now)
        elif isinstance(message, p.Refused):
            log.error("the coordinator refused this worker: %s", message.reason)
            self._exit(ExitCode.REFUSED, message.reason)
        elif isinstance(message, p.JobDone):
            self._goodbye()
            if message.leave:
                log.info("the cluster is stopping (%s): leaving", message.message)
                self._stop(Exit(ExitCode.DONE, "the cluster stopped", job_over=True, leave=True))
                return
            outcome = "succeeded" if message.ok else f"failed: {message.message}"
            log.info("job finished (%s): exiting", outcome)
            self._exit(ExitCode.DONE, f"the job {outcome}", job_over=True)

    def _welcome(self, welcome: p.Welcome) -> None:
        if welcome.job_id == self.job_id and welcome.epoch < self.epoch:
            # A coordinator superseded by a restarted one (paused, or cut off, meanwhile): not ours.
            log.warning(
                "ignored a welcome from an older coordinator of job %s (epoch %d, now %d)",
                welcome.job_id,
                welcome.epoch,
                self.epoch,
            )
            return
        self.incarnation = welcome.worker
        if self.state is WorkerState.REGISTERING:
            self.state = WorkerState.REGISTERED
        if welcome.job_id != self.job_id:
            self.job_id, self.epoch = welcome.job_id, welcome.epoch
            self._emit(JoinJob(welcome))
        elif welcome.epoch > self.epoch:
            log.info(
                "job %s: its coordinator restarted (epoch %d): keeping this worker's output",
                welcome.job_id,
                welcome.epoch,
            )
            self.epoch = welcome.epoch
            self._emit(JoinJob(welcome, again=True))
        log.info("registered as worker %d for job %s", welcome.worker, welcome.job_id)

    def _assign(self, assign: p.AssignMap | p.AssignReduce, now: float) -> None:
        if self.state is WorkerState.DRAINING:  # it crossed our Draining on the wire: hand it back
            self._emit(Send(p.Cancelled(self.incarnation, assign.attempt)))
            return
        if self.state is not WorkerState.REGISTERED:
            return
        self._drop_current(now)  # only after a lost registration: the old attempt is gone for the coordinator
        self._runs += 1
        self.current = _Current(self._runs, assign.attempt)
        self._emit(RunAttempt(self._runs, assign))

    def _finished(self, run: int, result: Any) -> None:
        self.stopping.pop(run, None)  # the executor is free of it
        if not self._expects(run):
            self._emit(Discard(result))
            return
        self.current = None
        self._emit(Report(self._stamped(result)))

    # ---- timers ------------------------------------------------------------------

    def _check_timers(self, now: float) -> None:
        s = self.settings
        if self._connected_at is not None and now - self._connected_at >= s.handshake_timeout:
            within = f"{s.handshake_timeout:.0f} s"
            self._handshake_failed(
                self._handshake_problem
                or f"connected, but no secure handshake within {within} (is coordinator.key the coordinator's?)"
            )
            return
        if self._resend_register_at is not None and now >= self._resend_register_at:
            self._resend_register_at = None
            if self.state is WorkerState.REGISTERING:
                self._emit(Send(self.register))
        if self.state is WorkerState.DRAINING:
            self._drain_step(now)
        elif self._stuck(now):
            self._stop(Restart(f"a cancelled attempt's user code did not return within {s.cancel_grace:.0f} s"))
        if self.state is WorkerState.STOPPED:
            return
        if now >= self._next_heartbeat:
            if self.incarnation is not None:
                self._emit(Send(p.Heartbeat(self.incarnation)))
            self._next_heartbeat = now + s.heartbeat_interval
        if now >= self._next_reconnect:
            self._reconnect(now)

    def _reconnect(self, now: float) -> None:
        silent = now - self._last_heard
        waiting = self.settings.stay and self.job_id is None  # between jobs, silence is the rule
        if silent > self.settings.coordinator_timeout and not waiting:
            log.error("coordinator at %s unreachable for %.0f s: giving up", self.settings.coordinator, silent)
            self._exit(ExitCode.COORDINATOR_LOST, f"no word from the coordinator for {silent:.0f} s")
            return
        if waiting:
            log.debug("waiting for a coordinator at %s (%.0f s so far)", self.settings.coordinator, silent)
        else:
            log.warning("no word from the coordinator for %.1f s: reconnecting", silent)
        if self.state is WorkerState.DRAINING:
            self._leave_unregistered()
            return
        self._drop_current(now)
        self._connect()
        self._next_reconnect = now + self._backoff
        # Waiting for its next job, a worker that stays tries every heartbeat: the next job's
        # coordinator finds it within one, not after a backoff grown over hours of quiet.
        cap = self.settings.heartbeat_interval if waiting else self.settings.max_backoff
        self._backoff = min(self._backoff * 2, cap)

    def _stuck(self, now: float) -> bool:
        return any(now - since >= self.settings.cancel_grace for since in self.stopping.values())

    # ---- draining ------------------------------------------------------------------

    def _drain(self, gathering: bool, now: float) -> None:
        """Leave without failing anything: no new task; a reduce still waiting for map output
        is handed back at once, anything else may finish within the drain timeout."""
        if self.state is WorkerState.DRAINING:
            return
        log.warning("SIGTERM: draining (finishing or handing back the current task), then leaving")
        if self.state is not WorkerState.REGISTERED:
            self._leave_drained()  # no incarnation: nothing to hand back, no one to tell
            return
        self.state = WorkerState.DRAINING
        self._drain_deadline = now + self.settings.drain_timeout
        self._emit(Send(p.Draining(self.incarnation)))
        if gathering and self.current is not None:
            self._cancel(self.current.run, now)

    def _drain_step(self, now: float) -> None:
        current = self.current
        if current is not None and now >= self._drain_deadline and current.run not in self.stopping:
            log.warning("the current attempt did not finish within the drain timeout: handing it back")
            self._cancel(current.run, now)
        if current is None or self._stuck(now):
            self._leave_drained()

    def _leave_unregistered(self) -> None:
        """Draining and no longer registered: leave without registering again (a new
        incarnation would only be given work) and without a Goodbye (no one knows us)."""
        self.incarnation = None
        self._leave_drained()

    def _leave_drained(self) -> None:
        self._goodbye()
        log.warning("drained: leaving")
        self._exit(ExitCode.DONE, "drained")

    # ---- helpers -----------------------------------------------------------------

    def _connect(self) -> None:
        # _connected_at is kept: it dates the first connection not yet authenticated.
        self.incarnation = None
        self.state = WorkerState.REGISTERING
        self._emit(Connect())
        self._emit(Send(self.register))

    def _lost_registration(self, now: float) -> None:
        if self.state is WorkerState.DRAINING:
            self._leave_unregistered()
            return
        self._drop_current(now)
        self.incarnation = None
        self.state = WorkerState.REGISTERING
        self._emit(Send(self.register))

    def _heard(self, now: float) -> None:
        self._last_heard = now
        self._next_reconnect = now + self.settings.liveness * self.settings.heartbeat_interval
        self._backoff = self.settings.heartbeat_interval

    def _handshake_failed(self, problem: str) -> None:
        if not self.settings.has_keys:
            problem = "the coordinator requires keys and this worker has none"
        where = self.settings.coordinator
        log.error("cannot talk to the coordinator at %s: authentication failed: %s", where, problem)
        why = f"authentication with the coordinator at {where} failed: {problem} (check --key-dir)"
        self._stop(Exit(ExitCode.REFUSED, why, retry=True))

    def _cancel(self, run: int, now: float) -> None:
        self.stopping.setdefault(run, now)
        self._emit(CancelAttempt(run))

    def _drop_current(self, now: float) -> None:
        if self.current is not None:
            self._cancel(self.current.run, now)
            self.current = None

    def _goodbye(self) -> None:
        if self.incarnation is not None:
            self._emit(Send(p.Goodbye(self.incarnation)))

    def _is_current(self, attempt: int) -> bool:
        return self.current is not None and self.current.attempt == attempt

    def _expects(self, run: int) -> bool:
        return self.current is not None and self.current.run == run and self.incarnation is not None

    def _stamped(self, message: Any) -> Any:
        return dataclasses.replace(message, worker=self.incarnation)

    def _exit(self, code: ExitCode, why: str, job_over: bool = False) -> None:
        self._stop(Exit(code, why, job_over))

    def _stop(self, instruction: Restart | Exit) -> None:
        self.state = WorkerState.STOPPED
        self._emit(instruction)

    def _emit(self, instruction: Instruction) -> None:
        self._out.append(instruction)
