"""The worker: register, heartbeat, run one task at a time, serve map output, reconnect,
and leave cleanly on SIGTERM (drain).

Three threads with one job each: the control loop owns the coordinator socket
(so heartbeats flow while user code runs), the executor runs task bodies, and
the data server answers reducers. The executor hands results back through a
queue and wakes the control loop with an inproc socket.
"""

from __future__ import annotations

import contextlib
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

from mapreduce import output
from mapreduce.errors import ProtocolError
from mapreduce.job import App
from mapreduce.net.dataserver import DataServer, Fetcher, FetchError
from mapreduce.net.node import address_towards, default_scratch, endpoint_host, host_id, hostname
from mapreduce.net.security import HANDSHAKE_FAILURES, Keys, authenticator
from mapreduce.wire import messages as p
from mapreduce.worker.tasks import AttemptCancelled, AttemptContext, JobContext, run_map, run_reduce

log = logging.getLogger(__name__)


class ExitCode:
    DONE = 0  # the job finished, or the worker drained and left
    FATAL = 1
    REFUSED = 2  # the coordinator would not take this worker
    COORDINATOR_LOST = 3


@dataclass(frozen=True)
class WorkerOptions:
    connect: str
    scratch: Path = field(default_factory=default_scratch)
    name: str = ""
    advertise: str = ""  # empty: the address of the interface that reaches the coordinator
    heartbeat_interval: float = 1.0
    liveness: int = 3  # heartbeats missed before reconnecting
    coordinator_timeout: float = 30.0  # silence after which the worker gives up
    max_backoff: float = 8.0
    drain_timeout: float = 30.0  # on SIGTERM, how long the current task may take to finish
    keys: Keys | None = None  # CURVE keys; None: plain connections (loopback, or --insecure)


class Worker:
    def __init__(self, options: WorkerOptions):
        self.options = options
        self.name = options.name or f"{hostname()}:{os.getpid()}"
        self.context = zmq.Context()
        self.host_id = host_id()
        self.scratch = options.scratch.resolve()
        self.scratch.mkdir(parents=True, exist_ok=True)
        keys = options.keys
        self.auth = authenticator(self.context, keys)  # admits only allowed keys to the data server
        # Serves nothing until a job begins, then only that job's folder (see _welcome).
        self.data_server = DataServer(
            self.context, None, options.advertise or address_towards(options.connect), keys=keys
        )
        self.fetcher = Fetcher(
            self.context, FETCH_TIMEOUT, keys, keys.worker if keys else b""
        )  # other workers' map output
        self.input_fetcher = Fetcher(self.context, FETCH_TIMEOUT, keys, keys.coordinator if keys else b"")
        self._monitor: zmq.Socket | None = None  # handshake events of the coordinator socket
        self._connected_at: float | None = None  # a connection not yet through its handshake
        _raise_open_file_limit()  # a reduce holds one open run per map task
        self.incarnation: int | None = None
        self.job: JobContext | None = None
        self.current: AttemptContext | None = None
        self._work: queue.Queue[Any] = queue.Queue()
        # Messages from the executor: (attempt, message, final). A final one ends the attempt.
        self._results: queue.Queue[tuple[AttemptContext, Any, bool]] = queue.Queue()
        self._temps: set[Path] = set()  # reduce outputs this process wrote, maybe never committed
        wake = f"inproc://wake-{uuid.uuid4().hex}"
        self._wake_recv = self.context.socket(zmq.PAIR)
        self._wake_recv.bind(wake)
        self._wake_send = self.context.socket(zmq.PAIR)
        self._wake_send.connect(wake)
        self._executor = threading.Thread(target=self._execute, name="executor", daemon=True)
        self.socket: zmq.Socket | None = None
        self._job_finished = False
        self._cancelled_at: float | None = None  # when the running attempt was told to stop
        self._drain_asked = False  # set by SIGTERM
        self._drain_deadline: float | None = None  # set once draining has begun
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
                return self._loop()
        finally:
            # The executor first: nothing may be deleted or closed under a running attempt.
            self._drop_attempt()
            self._work.put(None)
            self._executor.join(timeout=CANCEL_GRACE)
            self._remove_temps()
            if self._job_finished and self.job is not None:
                # The job is over: no map output is needed any more, this host's included.
                self.job.close()
                shutil.rmtree(self.job.workdir.parent, ignore_errors=True)
            self._close_monitor()
            if self.socket is not None:
                self.socket.close(linger=500)
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

    def _loop(self) -> int:
        opts = self.options
        self._connect()
        last_heard = time.monotonic()
        next_heartbeat = last_heard + opts.heartbeat_interval
        next_reconnect = last_heard + opts.liveness * opts.heartbeat_interval
        backoff = opts.heartbeat_interval
        poller = zmq.Poller()
        poller.register(self._wake_recv, zmq.POLLIN)
        if self._signals is not None:
            poller.register(self._signals, zmq.POLLIN)
        while True:
            poller.register(self.socket, zmq.POLLIN)
            poller.register(self._monitor, zmq.POLLIN)
            timeout = max(0.0, min(next_heartbeat, next_reconnect) - time.monotonic())
            ready = dict(poller.poll(timeout * 1000))
            now = time.monotonic()
            if self._monitor in ready or self._connected_at is not None:
                problem = self._handshake_problem(now)
                if problem is not None and self.options.keys is None:
                    problem = "the coordinator requires keys and this worker has none"
                if problem is not None:
                    log.error("cannot talk to the coordinator at %s: authentication failed: %s", opts.connect, problem)
                    self.refused = (
                        f"authentication with the coordinator at {opts.connect} failed: {problem} (check --key-dir)"
                    )
                    return ExitCode.REFUSED
            if self._signals is not None and self._signals.fileno() in ready:
                self._signals.recv(64)  # the handler has run: its flag is read below
            if self._wake_recv in ready:
                self._wake_recv.recv()
                self._forward_results()
            if self.socket in ready:
                frame = self.socket.recv()
                last_heard = now
                next_reconnect = now + opts.liveness * opts.heartbeat_interval
                backoff = opts.heartbeat_interval
                try:
                    message = p.decode(frame, p.COORDINATOR_MESSAGES)
                except ProtocolError as exc:
                    log.warning("ignored a malformed message from the coordinator: %s", exc)
                    continue
                code = self._handle(message)
                if code is not None:
                    return code
            if self._drain_asked:
                code = self._drain(now)
                if code is not None:
                    return code
            elif self._cancelled_at is not None and now - self._cancelled_at > CANCEL_GRACE:
                self._restart("a cancelled attempt's user code did not return")
            if now >= next_heartbeat:
                if self.incarnation is not None:
                    self._send(p.Heartbeat(self.incarnation))
                next_heartbeat = now + opts.heartbeat_interval
            if now >= next_reconnect:
                silent = now - last_heard
                if silent > opts.coordinator_timeout:
                    log.error("coordinator at %s unreachable for %.0f s: giving up", opts.connect, silent)
                    return ExitCode.COORDINATOR_LOST
                log.warning("no word from the coordinator for %.1f s: reconnecting", silent)
                poller.unregister(self.socket)
                poller.unregister(self._monitor)
                self._connect()
                next_reconnect = now + backoff
                backoff = min(backoff * 2, opts.max_backoff)

    def _ask_drain(self, signum: int, frame: Any) -> None:
        self._drain_asked = True  # acted on by the control loop within a heartbeat interval

    def _drain(self, now: float) -> int | None:
        """Leave without failing anything: no new task; a reduce still waiting for map output
        is handed back at once, anything else may finish within the drain timeout."""
        current = self.current
        if self._drain_deadline is None:
            log.warning("SIGTERM: draining (finishing or handing back the current task), then leaving")
            self._drain_deadline = now + self.options.drain_timeout
            if self.incarnation is not None:
                self._send(p.Draining(self.incarnation))
            if current is not None and current.gathering.is_set():
                current.cancelled.set()
                self._cancelled_at = now
        elif current is not None and now >= self._drain_deadline and not current.cancelled.is_set():
            log.warning("the current attempt did not finish within the drain timeout: handing it back")
            current.cancelled.set()
            self._cancelled_at = now
        stuck = self._cancelled_at is not None and now - self._cancelled_at > CANCEL_GRACE
        if current is None or self.incarnation is None or stuck:
            if self.incarnation is not None:
                self._send(p.Goodbye(self.incarnation))
            log.warning("drained: leaving")
            return ExitCode.DONE
        return None

    def _connect(self) -> None:
        self._drop_attempt()
        self._close_monitor()
        if self.socket is not None:
            self.socket.close(0)
        self.socket = self.context.socket(zmq.DEALER)
        self.socket.setsockopt(zmq.LINGER, 0)
        self.socket.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        # A coordinator that is not up yet (a local cluster starts its workers first) is
        # retried soon, then less and less often.
        self.socket.setsockopt(zmq.RECONNECT_IVL, 10)
        self.socket.setsockopt(zmq.RECONNECT_IVL_MAX, 1000)
        if self.options.keys is not None:
            self.options.keys.connect_to(self.socket, self.options.keys.coordinator)
        # _connected_at is kept across reconnects: it dates the first connection not yet authenticated.
        self._monitor = self.socket.get_monitor_socket(
            sum(HANDSHAKE_FAILURES) | zmq.EVENT_CONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self.socket.connect(self.options.connect)
        self.incarnation = None
        self._register()

    def _handshake_problem(self, now: float) -> str | None:
        """Why the security handshake with the coordinator failed, if it did. A connection
        that stays unauthenticated for long is a failure too: with a wrong server key the
        coordinator cannot even answer, so no failure event may ever come."""
        from zmq.utils.monitor import recv_monitor_message

        problem = None
        while self._monitor.poll(0):
            event = recv_monitor_message(self._monitor)["event"]
            if event == zmq.EVENT_CONNECTED:
                self._connected_at = now if self._connected_at is None else self._connected_at
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._connected_at = None
            problem = HANDSHAKE_FAILURES.get(event, problem)
        if problem is None and self._connected_at is not None and now - self._connected_at > HANDSHAKE_TIMEOUT:
            problem = f"connected, but no secure handshake within {HANDSHAKE_TIMEOUT:.0f} s (is coordinator.key the coordinator's?)"
        return problem

    def _close_monitor(self) -> None:
        if self._monitor is not None:
            self.socket.disable_monitor()
            self._monitor.close(0)
            self._monitor = None

    def _register(self) -> None:
        self._send(
            p.Register(self.name, os.getpid(), hostname(), self.host_id, self.data_server.address, str(self.scratch))
        )

    def _send(self, message: Any) -> None:
        self.socket.send(p.encode(message))

    def _handle(self, message: Any) -> int | None:
        if isinstance(message, p.Welcome):
            self._welcome(message)
        elif isinstance(message, (p.AssignMap, p.AssignReduce)):
            self._assign(message)
        elif isinstance(message, p.MapOutputs):
            if self.current is not None and self.current.attempt == message.attempt:
                self.current.inbox.put((message.outputs, message.empty))
        elif isinstance(message, p.Cancel):
            if self.current is not None and self.current.attempt == message.attempt:
                log.info("attempt %d cancelled by the coordinator", message.attempt)
                self.current.cancelled.set()
                self._cancelled_at = time.monotonic()
        elif isinstance(message, p.Unknown):
            if message.worker != self.incarnation:
                return None  # an answer to an older incarnation's message: already re-registered
            log.warning("the coordinator does not know this worker (%s): registering again", message.reason)
            self._drop_attempt()
            self.incarnation = None
            self._register()
        elif isinstance(message, p.Refused):
            log.error("the coordinator refused this worker: %s", message.reason)
            self.refused = message.reason
            return ExitCode.REFUSED
        elif isinstance(message, p.JobDone):
            return self._job_done(message)
        return None

    def _welcome(self, welcome: p.Welcome) -> None:
        self.incarnation = welcome.worker
        if self.job is None or self.job.job_id != welcome.job_id:
            app = App.from_bytes(welcome.app)
            app.start()
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
            )
        log.info("registered as worker %d for job %s", welcome.worker, welcome.job_id)

    def _assign(self, assign: p.AssignMap | p.AssignReduce) -> None:
        if self.job is None or self.incarnation is None:
            return
        if self._drain_deadline is not None:  # crossed our Draining on the wire: hand it back
            self._send(p.Cancelled(self.incarnation, assign.attempt))
            return
        if self.current is not None:
            # Only after a lost registration: the old attempt is gone for the coordinator.
            self._drop_attempt()
        self.current = AttemptContext(assign.attempt)
        self._work.put((self.job, assign, self.current))

    def _drop_attempt(self) -> None:
        if self.current is not None:
            self.current.cancelled.set()
            self.current = None
            self._cancelled_at = time.monotonic()

    def _forward_results(self) -> None:
        while True:
            try:
                ctx, result, final = self._results.get_nowait()
            except queue.Empty:
                return
            output_file = self._reduce_output(result)
            if ctx is not self.current or self.incarnation is None:
                # The coordinator no longer expects it; a reduce's output must not linger.
                if output_file is not None:
                    output_file.unlink(missing_ok=True)
                continue
            if final:
                self.current = None
                if output_file is not None:
                    self._temps.add(output_file)
            self._send(_with_worker(result, self.incarnation))

    def _reduce_output(self, result: Any) -> Path | None:
        """The temporary file a finished reduce wrote: in the output folder, or in scratch."""
        if not isinstance(result, p.TaskDone) or self.job is None:
            return None
        if output.is_temp_name(result.path):
            return self.job.output_dir / result.path
        path = Path(result.path)
        return path if path.parent == self.job.workdir and output.is_temp_name(path.name) else None

    def _job_done(self, done: p.JobDone) -> int:
        if self.incarnation is not None:
            self._send(p.Goodbye(self.incarnation))
        self._job_finished = True  # cleaned up in run(), once the executor has stopped
        log.info("job finished (%s): exiting", "succeeded" if done.ok else f"failed: {done.message}")
        return ExitCode.DONE

    def _restart(self, why: str) -> None:
        """Replace this process with a fresh one: the only way to stop a thread stuck in user code."""
        log.error("%s within %.0f s: restarting this worker", why, CANCEL_GRACE)
        if self.socket is not None:
            self.socket.close(0)
        os.execv(sys.executable, [sys.executable, "-P", "-m", "mapreduce", *sys.argv[1:]])

    def _remove_temps(self) -> None:
        """Delete reduce outputs this worker wrote that were never committed.
        (A committed one was renamed, so its temporary name no longer exists.)"""
        for temp in self._temps:
            temp.unlink(missing_ok=True)
        self._temps.clear()

    # ---- executor thread -------------------------------------------------

    def _execute(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            job, assign, ctx = item
            result = self._run_attempt(job, assign, ctx)
            self._post(ctx, result, final=True)

    def _post(self, ctx: AttemptContext, message: Any, final: bool) -> None:
        """Hand a message to the control loop (called from the executor thread)."""
        self._results.put((ctx, message, final))
        if final:
            self._cancelled_at = None  # the executor is free again
        try:
            self._wake_send.send(b"")
        except zmq.ZMQError:
            pass  # the worker is shutting down

    def _run_attempt(self, job: JobContext, assign: Any, ctx: AttemptContext) -> Any:
        from mapreduce.errors import StorageError

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
        except Exception as exc:
            log.warning("attempt %d failed: %s: %s", assign.attempt, type(exc).__name__, exc)
            return p.TaskFailed(0, assign.attempt, f"{type(exc).__name__}: {exc}", user_traceback(exc))


FETCH_TIMEOUT = 5.0
HANDSHAKE_TIMEOUT = 5.0  # connected to the coordinator but not authenticated: the keys do not match
CANCEL_GRACE = 10.0  # how long a cancelled attempt may take to notice before the worker restarts


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
    package = os.path.dirname(os.path.abspath(__file__))  # not its apps/ subfolder: those are user code too
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if os.path.dirname(f.filename) != package]
    lines = traceback.format_list(frames) + traceback.format_exception_only(type(exc), exc)
    return "".join(["Traceback (most recent call last):\n", *lines] if frames else lines)


def _with_worker(message: Any, worker: int) -> Any:
    return type(message)(**{**message.__dict__, "worker": worker})
