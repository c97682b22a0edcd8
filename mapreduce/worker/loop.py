"""The worker process: the shell around WorkerCore (core.py) that only moves bytes.

It polls its sockets, turns what it reads into the core's events, and carries out the
core's instructions: sending, reconnecting, starting and cancelling attempts, restarting,
exiting. Every decision (registration, heartbeats, backoff, drain, cancel grace) is the
core's.

Three threads with one job each: the control thread runs this loop and owns the coordinator
socket, its handshake monitor and the core (so heartbeats flow while user code runs); the
executor thread runs one attempt at a time (tasks.py); the data server's thread answers other
workers' fetches.

What the control and executor threads share, and why it is safe:

- ``_work`` (control -> executor: job, assignment, AttemptContext) and ``_results``
  (executor -> control: run, message, final) are queue.Queues. What the control thread wrote
  into a JobContext or an AttemptContext before putting it into ``_work`` is seen by the
  executor that takes it out.
- ``_wake_send`` is used by the executor only, ``_wake_recv`` by the control thread only (a
  zmq socket must stay in one thread): one byte after each put into ``_results`` wakes the
  control thread's poll (a status line, put from any thread of the attempt, wakes nothing: the
  next poll, within a heartbeat interval, takes it). Both are closed by the control thread at
  exit, after the executor was told to stop; an executor stuck in user code past that gets a
  ZMQError, which it ignores.
- an AttemptContext: ``cancelled`` and ``gathering`` are threading.Events, ``inbox`` is a
  queue.Queue (map output locations for a reduce), ``attempt`` and ``run`` never change.
- a JobContext: its fields are fixed before it is shared; its map output file and input cache
  are the executor's alone. The control thread reads only ``workdir`` and ``output_dir``.
- the fetchers are the executor's alone; the control thread closes them at exit.

Nothing else: in particular the time an attempt was cancelled (a restart follows if its user
code does not return within the cancel grace) is the core's, so the control thread's; the
executor only reports that a run finished, through ``_results``. The SIGTERM handler runs in
the main thread, which is the control thread, and only sets a flag the loop reads. The data
server's thread reads ``data_server.root``, which the control thread sets (one attribute
assignment) when a job begins, before any task of that job runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import shutil
import signal
import socket
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from mapreduce import defaults, output, shuffle
from mapreduce.errors import InputError, ProtocolError, StorageError
from mapreduce.guardian import GUARDIAN
from mapreduce.inputs import fingerprint
from mapreduce.job import App, bad_record
from mapreduce.net.dataserver import DataServer, Fetcher, FetchError
from mapreduce.net.node import address_towards, default_scratch, endpoint_host, host_id, hostname
from mapreduce.net.security import HANDSHAKE_FAILURES, Keys, authenticator
from mapreduce.wire import messages as p
from mapreduce.worker import core
from mapreduce.worker.core import ExitCode, WorkerCore
from mapreduce.worker.tasks import (
    AttemptCancelled,
    AttemptContext,
    JobContext,
    StatusReports,
    run_map,
    run_reduce,
)
from mapreduce.worker.zygote import RESTART

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerOptions:
    connect: str
    scratch: Path = field(default_factory=default_scratch)
    name: str = ""
    advertise: str = ""  # empty: the address of the interface that reaches the coordinator
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    liveness: int = defaults.LIVENESS  # heartbeats missed before reconnecting
    coordinator_timeout: float = defaults.COORDINATOR_TIMEOUT  # silence after which the worker gives up
    max_backoff: float = defaults.MAX_BACKOFF
    drain_timeout: float = defaults.DRAIN_TIMEOUT  # on SIGTERM, how long the current task may take to finish
    cancel_grace: float = defaults.CANCEL_GRACE  # cancelled user code still running after this: restart
    handshake_timeout: float = defaults.HANDSHAKE_TIMEOUT
    fetch_timeout: float = defaults.FETCH_TIMEOUT
    keys: Keys | None = None  # CURVE keys; None: plain connections (loopback, or --insecure)
    stay: bool = False  # serve job after job (see Worker.serves_again)

    def settings(self) -> core.Settings:
        return core.Settings(
            heartbeat_interval=self.heartbeat_interval,
            liveness=self.liveness,
            coordinator_timeout=self.coordinator_timeout,
            max_backoff=self.max_backoff,
            drain_timeout=self.drain_timeout,
            cancel_grace=self.cancel_grace,
            handshake_timeout=self.handshake_timeout,
            has_keys=self.keys is not None,
            coordinator=self.connect,
            stay=self.stay,
        )


class Worker:
    def __init__(self, options: WorkerOptions):
        self.options = options
        self.name = options.name or f"{hostname()}:{os.getpid()}"
        self.context = zmq.Context()
        self.host_id = host_id()
        self.scratch = options.scratch.resolve()
        self._started_in = os.getcwd()  # a job's tasks run in its folder (side files); a restart runs here
        self.scratch.mkdir(parents=True, exist_ok=True)
        keys = options.keys
        self.auth = authenticator(self.context, keys)  # admits only allowed keys to the data server
        # Serves nothing until a job begins, then only that job's folder (see _join).
        self.data_server = DataServer(
            self.context, None, options.advertise or address_towards(options.connect), keys=keys
        )
        timeout = options.fetch_timeout
        # Other workers' map output: each location names the key its server proves (the
        # shared workers' key is the default, for a coordinator that names none).
        self.fetcher = Fetcher(self.context, timeout, keys, keys.worker if keys else b"")
        self.input_fetcher = Fetcher(self.context, timeout, keys, keys.coordinator if keys else b"")
        _raise_open_file_limit()  # a reduce holds one open run per map task
        register = p.Register(
            self.name, os.getpid(), hostname(), self.host_id, self.data_server.address, str(self.scratch)
        )
        self.core = WorkerCore(options.settings(), register)
        self.job: JobContext | None = None
        self._attempts: dict[int, AttemptContext] = {}  # runs handed to the executor, not yet finished
        self._work: queue.Queue[Any] = queue.Queue()
        self._results: queue.Queue[tuple[int, Any, bool]] = queue.Queue()  # run, message, final
        self._temps: set[Path] = set()  # reduce outputs this process wrote, maybe never committed
        wake = f"inproc://wake-{uuid.uuid4().hex}"
        self._wake_recv = self.context.socket(zmq.PAIR)
        self._wake_recv.bind(wake)
        self._wake_send = self.context.socket(zmq.PAIR)
        self._wake_send.connect(wake)
        self._executor = threading.Thread(target=self._execute, name="executor", daemon=True)
        self._poller = zmq.Poller()
        self.socket: zmq.Socket | None = None
        self._monitor: zmq.Socket | None = None  # handshake events of the coordinator socket
        self._exit: core.Exit | None = None
        self._drain_asked = False  # set by SIGTERM
        self.refused: str | None = None  # why the coordinator would not take this worker
        self._signals: socket.socket | None = None  # readable once a signal arrived (main thread only)

    # ---- control loop ----------------------------------------------------

    def run(self) -> int:
        self.data_server.start()
        self._executor.start()
        try:
            if threading.current_thread() is not threading.main_thread():
                return self._loop()
            signal.signal(signal.SIGTERM, self._ask_drain)
            with self._signals_wake_loop():
                # A signal that came while exec_afresh replaced the process waited, blocked, for
                # the handler above: delivered now.
                signal.pthread_sigmask(signal.SIG_UNBLOCK, HELD_ACROSS_EXEC)
                return self._loop()
        finally:
            # The executor first: nothing may be deleted or closed under a running attempt.
            for attempt in self._attempts.values():
                attempt.cancelled.set()
            self._work.put(None)
            self._executor.join(timeout=self.options.cancel_grace)
            self._remove_temps()
            if (self._exit is not None and self._exit.job_over or self.serves_again) and self.job is not None:
                # The job is over (or, for a worker that stays, lost with its coordinator): no
                # map output is needed any more, this host's included.
                self.job.close()
                os.chdir(self._started_in)
                shutil.rmtree(self.job.workdir.parent, ignore_errors=True)
            # A goodbye may still be on its way; but a registration a worker that will try again
            # left unsent must not reach the next coordinator after this process is gone.
            self._close_socket(linger=0 if self.retries else 500)
            self.data_server.stop()
            self.fetcher.close()
            self.input_fetcher.close()
            if self.auth is not None:
                self.auth.stop()
            self._wake_recv.close(0)
            self._wake_send.close(0)
            self.context.term()

    @contextlib.contextmanager
    def _signals_wake_loop(self):
        """Make a signal (SIGTERM: drain) wake the control loop's poll at once, not at
        its next timeout: the interpreter writes a byte to a socket the loop polls."""
        self._signals, written = socket.socketpair()
        written.setblocking(False)
        previous = signal.set_wakeup_fd(written.fileno(), warn_on_full_buffer=False)
        try:
            yield
        finally:
            signal.set_wakeup_fd(previous)
            self._signals.close()
            written.close()
            self._signals = None

    def _ask_drain(self, signum: int, frame: Any) -> None:
        self._drain_asked = True  # handed to the core by the loop, which the signal wakes

    def _loop(self) -> int:
        self._poller.register(self._wake_recv, zmq.POLLIN)
        if self._signals is not None:
            self._poller.register(self._signals, zmq.POLLIN)
        self._feed([core.Started()])
        while self._exit is None:
            timeout = max(0.0, self.core.next_deadline() - time.monotonic())
            ready = dict(self._poller.poll(timeout * 1000))
            self._feed(self._events(ready))
        return self._exit.code

    def _events(self, ready: dict) -> list[core.Event]:
        """What happened since the last poll, as the core's events."""
        events: list[core.Event] = []
        if self._monitor in ready:
            events += self._handshake_events()
        if self._wake_recv in ready:
            self._wake_recv.recv()
        events += self._attempt_events()  # status lines come without a wake
        if self.socket in ready:
            frame = self.socket.recv()
            try:
                events.append(core.MessageReceived(p.decode(frame, p.COORDINATOR_MESSAGES)))
            except ProtocolError as exc:
                events.append(core.GarbageReceived(str(exc)))
        if self._signals is not None and self._signals.fileno() in ready:
            self._signals.recv(64)  # the handler has run: its flag is read below
        if self._drain_asked:
            self._drain_asked = False
            events.append(core.DrainAsked(self._gathering()))
        return events or [core.Tick()]

    def _handshake_events(self) -> list[core.Event]:
        from zmq.utils.monitor import recv_monitor_message

        events: list[core.Event] = []
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                events.append(core.Connected())
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                events.append(core.HandshakeSucceeded())
            elif event in HANDSHAKE_FAILURES:
                definite = event != zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL  # (else the connection just ended)
                events.append(core.HandshakeFailed(HANDSHAKE_FAILURES[event], definite))
        return events

    def _attempt_events(self) -> list[core.Event]:
        events: list[core.Event] = []
        while True:
            try:
                run, message, final = self._results.get_nowait()
            except queue.Empty:
                return events
            if final:
                self._attempts.pop(run, None)
                events.append(core.AttemptFinished(run, message))
            else:
                events.append(core.AttemptReported(run, message))

    def _gathering(self) -> bool:
        """Whether the current attempt is a reduce still waiting for map output."""
        attempt = self._attempts.get(self.core.current_run)
        return attempt is not None and attempt.gathering.is_set()

    def _feed(self, events: list[core.Event]) -> None:
        for instruction in self.core.handle_all(events, time.monotonic()):
            self._carry_out(instruction)

    def _carry_out(self, instruction: core.Instruction) -> None:
        match instruction:
            case core.Send(message):
                self._send(message)
            case core.Connect():
                self._connect()
            case core.JoinJob(welcome, again=True):
                self._rejoin(welcome)
            case core.JoinJob(welcome):
                self._join(welcome)
            case core.RunAttempt(run, assign):
                attempt = self._attempts[run] = AttemptContext(assign.attempt, run)
                attempt.report_status = StatusReports(
                    lambda status, ctx=attempt: self._results.put(
                        (ctx.run, p.TaskStatus(0, ctx.attempt, status), False)
                    )
                )
                self._work.put((self.job, assign, attempt))
            case core.CancelAttempt(run):
                if run in self._attempts:
                    self._attempts[run].cancelled.set()
            case core.DeliverOutputs(run, outputs, empty):
                if run in self._attempts:
                    self._attempts[run].inbox.put((outputs, empty))
            case core.Report(message):
                output_file = self._reduce_output(message)
                if output_file is not None:
                    self._temps.add(output_file)
                self._send(message)
            case core.Discard(result):
                # The coordinator no longer expects it; a reduce's output must not linger.
                output_file = self._reduce_output(result)
                if output_file is not None:
                    output_file.unlink(missing_ok=True)
            case core.Restart(why):
                self._restart(why)
            case core.Exit(code, why):
                self._exit = instruction
                if code == ExitCode.REFUSED:
                    self.refused = why
            case _:
                raise AssertionError(f"unknown instruction {instruction!r}")

    def _connect(self) -> None:
        # What was just sent on the old socket (the heartbeat of a worker that was paused, which
        # the coordinator then fences) may still leave for a moment; closing does not wait for it.
        self._close_socket(linger=RECONNECT_LINGER_MS)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        # A coordinator that is not up yet (a local cluster starts its workers first) is
        # retried soon, then less and less often; a worker that stays waits for a standing
        # cluster's next job, which must not wait a second for it.
        self.socket.setsockopt(zmq.RECONNECT_IVL, 10)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 50 if self.options.stay else 1000)
        if self.options.keys is not None:
            self.options.keys.connect_to(self.socket, self.options.keys.coordinator)
        self._monitor = self.socket.get_monitor_socket(
            sum(HANDSHAKE_FAILURES) | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.socket.connect(self.options.connect)
        self._poller.register(self.socket, zmq.POLLIN)
        self._poller.register(self._monitor, zmq.POLLIN)

    def _close_socket(self, linger: int) -> None:
        if self.socket is None:
            return
        with contextlib.suppress(KeyError):  # not registered: the loop never ran
            self._poller.unregister(self.socket)
            self._poller.unregister(self._monitor)
        self.socket.disable_monitor()
        self._monitor.close(0)
        self.socket.close(linger=linger)
        self.socket = self._monitor = None

    def _send(self, message: Any) -> None:
        self.socket.send(p.encode(message))

    def _join(self, welcome: p.Welcome) -> None:
        """Set up the job a Welcome names: its app, this worker's folder, what the data server serves."""
        app = App.from_bytes(welcome.app)
        app.start()
        if self.options.stay:
            remove_dead_workers_files(self.scratch, keep_job=welcome.job_id)
        workdir = self.scratch / f"job-{welcome.job_id}" / f"w-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        workdir.mkdir(parents=True)
        self.data_server.root = workdir.parent.resolve()  # this job's files only (its workers' folders)
        input_address = f"tcp://{endpoint_host(self.options.connect)}:{welcome.data_port}"
        output_dir = Path(welcome.output_dir)
        sees_output = output.sees_folder(output_dir, welcome.job_id, welcome.output_token)
        self.job = JobContext(
            app,
            welcome.job_id,
            welcome.n_map,
            welcome.n_reduce,
            self.host_id,
            workdir,
            output_dir,
            sees_output,
            input_address,
            welcome.compression,
        )
        self._place_side_files(welcome.files, workdir, input_address)
        os.chdir(workdir)  # tasks open side files by name, as in Hadoop (one job at a time per worker)

    def _rejoin(self, welcome: p.Welcome) -> None:
        """The job's restarted coordinator: its data server and output token are new."""
        self.job = dataclasses.replace(
            self.job,
            input_address=f"tcp://{endpoint_host(self.options.connect)}:{welcome.data_port}",
            sees_output=output.sees_folder(Path(welcome.output_dir), welcome.job_id, welcome.output_token),
        )

    def _place_side_files(self, files: list[p.SideFile], workdir: Path, input_address: str) -> None:
        """Each side file in the job's task folder: linked where this worker sees the very file
        the coordinator does, else fetched from the coordinator's data server."""
        for f in files:
            target = workdir / f.name
            if f.fingerprint and fingerprint(f.path) == f.fingerprint:
                target.symlink_to(f.path)
                continue
            out = shuffle.GuardedWriter.open(target, f"side file {f.name}")
            try:
                self.input_fetcher.copy(input_address, f.path, 0, f.size, out)
                out.close()
            except BaseException:
                out.abandon()
                raise

    def _reduce_output(self, result: Any) -> Path | None:
        """The temporary file a finished reduce wrote: in the output folder, or in scratch."""
        if not isinstance(result, p.TaskDone) or self.job is None:
            return None
        if output.is_temp_name(result.path):
            return self.job.output_dir / result.path
        path = Path(result.path)
        return path if path.parent == self.job.workdir and output.is_temp_name(path.name) else None

    @property
    def serves_again(self) -> bool:
        """A worker that stays (--stay) and whose job ended, or whose coordinator was lost: the
        next job is served by a fresh process (forked by the zygote), so nothing of this job's
        code, module state, threads or memory reaches it."""
        if not self.options.stay or self._exit is None or self._exit.leave:
            return False
        return self._exit.job_over or self._exit.code is ExitCode.COORDINATOR_LOST or self._exit.retry

    @property
    def retries(self) -> bool:
        """A worker that stays whose handshake failed: it tries again after a pause (a coordinator
        that closed during the handshake, as one does between a standing cluster's jobs, looks
        like one with other keys)."""
        return self.serves_again and self._exit.retry

    def _restart(self, why: str) -> None:
        """Replace this process with a fresh one: the only way to stop a thread stuck in user code."""
        log.error("%s: restarting this worker", why)
        if self.socket is not None:
            self.socket.close(0)
        if self.options.stay:  # a process forked for this job: its zygote forks a fresh one
            os._exit(RESTART)
        os.chdir(self._started_in)  # its command line's relative paths are relative to there
        exec_afresh()

    def _remove_temps(self) -> None:
        """Delete reduce outputs this worker wrote that were never committed.
        (A committed one was renamed, so its temporary name no longer exists.) That includes
        one an attempt finished after the loop stopped (a backup cancelled as the job ended):
        its result was never sent, so the coordinator cannot have committed it."""
        while True:
            try:
                _, message, _ = self._results.get_nowait()
            except queue.Empty:
                break
            unsent = self._reduce_output(message)
            if unsent is not None:
                self._temps.add(unsent)
        for temp in self._temps:
            temp.unlink(missing_ok=True)
        self._temps.clear()

    # ---- executor thread -------------------------------------------------

    def _execute(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            job, assign, attempt = item
            result = self._run_attempt(job, assign, attempt)
            self._post(attempt, result, final=True)

    def _post(self, attempt: AttemptContext, message: Any, final: bool) -> None:
        """Hand a message to the control loop (called from the executor thread)."""
        self._results.put((attempt.run, message, final))
        try:
            self._wake_send.send(b"")
        except zmq.ZMQError:
            pass  # the worker is shutting down

    def _run_attempt(self, job: JobContext, assign: Any, ctx: AttemptContext) -> Any:
        try:
            ctx.check()
            if isinstance(assign, p.AssignMap):
                return run_map(job, assign, ctx, self.input_fetcher)
            return run_reduce(job, assign, ctx, self.fetcher, lambda message: self._post(ctx, message, final=False))
        except AttemptCancelled:
            return p.Cancelled(0, assign.attempt)
        except FetchError as exc:
            return p.TaskFailed(0, assign.attempt, f"FetchError: {exc}", "", user_error=False)
        except StorageError as exc:  # this worker's disk or folder failed, not the user's code
            log.warning("attempt %d failed: %s", assign.attempt, exc)
            return p.TaskFailed(0, assign.attempt, str(exc), exc.kind, user_error=False)
        except InputError as exc:  # the user's data is bad: a user error, but no user code to show
            log.warning("attempt %d failed: %s", assign.attempt, exc)
            return p.TaskFailed(0, assign.attempt, f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            if ctx.cancelled.is_set():  # what stopping it raised (a streaming command killed): not a failure
                return p.Cancelled(0, assign.attempt)
            log.warning("attempt %d failed: %s: %s", assign.attempt, type(exc).__name__, exc)
            error = f"{type(exc).__name__}: {exc}"
            return p.TaskFailed(0, assign.attempt, error, user_traceback(exc), bad_record=bad_record(exc))


RECONNECT_LINGER_MS = 200


def remove_dead_workers_files(scratch: Path, keep_job: str) -> None:
    """Remove what worker processes that died (SIGKILL, a segfault) left in ``scratch`` for jobs
    other than ``keep_job`` (whose orphaned map output may still be served): a worker that stays
    on a host must not let such leftovers pile up job after job. Folders of live processes stay."""
    for job in scratch.glob("job-*"):
        if job.name == f"job-{keep_job}":
            continue
        for folder in job.glob("w-*"):
            try:
                os.kill(int(folder.name.split("-")[1]), 0)
            except ProcessLookupError:
                shutil.rmtree(folder, ignore_errors=True)
            except (ValueError, IndexError, PermissionError):
                pass  # not ours, or another user's live process
        try:
            job.rmdir()  # only if nothing is left in it
        except OSError:
            pass


# The environment this process started with, before any job's code could change it.
_STARTED_WITH = dict(os.environ)

# Signals that must not find the fresh process before it has its handlers (SIGTERM's default
# kills it, where a worker drains): the signal mask and pending signals survive exec.
HELD_ACROSS_EXEC = frozenset({signal.SIGTERM, signal.SIGINT})


def exec_afresh() -> None:
    """Replace this process with a new worker run with the same command line and the same
    environment it started with (the same pid)."""
    # Its commands die first (exec would close the guardian's pipe too, but then this process
    # could not reap the guardian).
    GUARDIAN.close()
    sys.stdout.flush()
    sys.stderr.flush()
    signal.pthread_sigmask(signal.SIG_BLOCK, HELD_ACROSS_EXEC)
    os.execve(sys.executable, [sys.executable, "-P", "-m", "mapreduce", *sys.argv[1:]], _STARTED_WITH)


def _raise_open_file_limit() -> None:
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def user_traceback(exc: BaseException) -> str:
    """The exception's traceback without the framework's own frames: the user's code only."""
    package = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # mapreduce/
    apps = os.path.join(package, "apps")  # the built-in apps are user code too

    def framework(filename: str) -> bool:
        folder = os.path.dirname(os.path.abspath(filename))
        inside = folder == package or folder.startswith(package + os.sep)
        return inside and not (folder == apps or folder.startswith(apps + os.sep))

    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not framework(f.filename)]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "".join(["Traceback (most recent call last):\n", *lines] if frames else lines)
