"""The coordinator's socket loop around the scheduler, and the output commits.

The loop owns one ROUTER socket. Workers' frames are decoded and validated
(never unpickled), handed to the scheduler with the current monotonic time, and
the scheduler's actions are carried out: messages sent, partitions committed.
Beside the loop, a data server serves the input files to workers on other
hosts, and a transfers thread pulls their reduce output and checks their data
servers, so no transfer ever stalls the loop.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq

from mapreduce import output
from mapreduce.coordinator.recovery import JobState
from mapreduce.coordinator.scheduler import Commit, Discard, Remember, Scheduler, Send, Settings
from mapreduce.coordinator.transfers import Probe, Pull, Transfers
from mapreduce.coordinator.view import JobView
from mapreduce.errors import ProtocolError
from mapreduce.inputs import Split
from mapreduce.job import App
from mapreduce.journal import Superseded, record
from mapreduce.net.dataserver import DataServer
from mapreduce.net.node import endpoint_host, host_id
from mapreduce.net.security import Keys, authenticator
from mapreduce.wire import messages as p
from mapreduce.wire.events import Event, EventLog, Tally

log = logging.getLogger(__name__)

Progress = Callable[[JobView], None]  # called every tick (a progress bar)
# Called every tick and once at the end with the job's view and the events recorded since
# the last call (the status page): observers see the job without touching the scheduler.
Observer = Callable[[JobView, Sequence[Event]], None]
MAX_PROBES = 64  # data-server checks queued at once: a flood of registrations cannot stall real ones
REVOCATION_CHECK = 1.0  # seconds between reads of the key folder for registered workers' keys
EPOCH_CHECK = 1.0  # seconds between checks that no newer coordinator took over the state folder
# For the coordinator's crash test: SIGKILL this process at a point no outside timing hits
# reliably: "after-map:N" (the Nth finished map journalled), "after-commit:N", "before-success".
CRASH_POINT = "MAPREDUCE_CRASH_COORDINATOR"


@dataclass(frozen=True)
class JobResult:
    ok: bool
    message: str
    tally: Tally
    seconds: float
    n_map: int
    n_reduce: int


class Coordinator:
    def __init__(
        self,
        app: App,
        splits: list[Split],
        output_dir: Path,
        settings: Settings,
        bind: str = "tcp://127.0.0.1:*",
        progress: Progress | None = None,
        goodbye_grace: float = 1.0,
        events: Path | None = None,
        watchdog: Callable[[], str | None] | None = None,
        exited: Callable[[], list[tuple[int, int]]] | None = None,
        keys: Keys | None = None,
        observe: Observer | None = None,
        compression: output.Compression = output.Compression.NONE,
        side_files: Sequence[p.SideFile] = (),
        state: JobState | None = None,
    ):
        self.side_files = list(side_files)
        self.state = state  # the job's state folder (--state-dir): journal and epoch fence
        self._crash_point = os.environ.get(CRASH_POINT, "")
        self._journalled = {"map": 0, "commit": 0}
        self.observe = observe
        self.compression = compression  # of the part files: the workers write them, this commits them
        self._unobserved: list[Event] = []  # events recorded since the observer last saw the job
        self.app, self.splits, self.output_dir, self.settings = app, splits, output_dir, settings
        self.progress = progress
        self.goodbye_grace = goodbye_grace
        self.job_id = state.recovered.job_id if state is not None else uuid.uuid4().hex[:12]
        self.epoch = state.recovered.epoch if state is not None else 0
        self.context = zmq.Context()
        self.keys = keys
        self.auth = authenticator(self.context, keys)  # with keys: only allowed clients get through
        self._next_revocation_check = 0.0
        self._next_epoch_check = 0.0
        self.socket = self.context.socket(zmq.ROUTER)
        if keys is not None:
            keys.serve(self.socket)
        self.socket.setsockopt(zmq.LINGER, 1000)
        self.socket.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.socket.setsockopt(zmq.ROUTER_MANDATORY, 0)
        try:
            self.socket.bind(bind)
        except zmq.ZMQError:
            # Close now: a context left with an open socket blocks whoever collects it.
            self.socket.close(0)
            if self.auth is not None:
                self.auth.stop()
            self.context.term()
            raise
        self.address = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        # Inputs for workers that cannot see them, on the interface workers connect to.
        self.data_server = DataServer(
            self.context,
            None,
            endpoint_host(self.address),
            files=[s.path for s in splits] + [f.path for f in self.side_files],
            keys=keys,
        )
        self.transfers = Transfers(self.context, keys)
        self._probing: set[bytes] = set()
        self._app_blob = app.to_bytes()
        self._host_id = host_id()
        self.rejected_messages = 0
        self.events = EventLog(events)
        self.watchdog = watchdog
        self.exited = exited  # (pid, exit code) of this host's worker processes that ended
        self.told_pids: set[int] = set()  # this host's worker processes told that the job is over

    def _welcome(self, worker: int) -> p.Welcome:
        return p.Welcome(
            worker,
            self.job_id,
            self._app_blob,
            len(self.splits),
            self.settings.n_reduce,
            self.settings.heartbeat_interval,
            str(self.output_dir.resolve()),
            self.data_server.port,
            self._output_token,
            self.compression,
            self.side_files,
            self.epoch,
        )

    def _fenced(self, act) -> None:
        """Do ``act`` (a change another coordinator could contradict) under the state
        folder's epoch fence: not at all once a newer coordinator took over (Superseded)."""
        if self.state is None:
            act()
        else:
            self.state.act(act)

    def _crash_at(self, point: str) -> None:
        if self._crash_point == point:
            log.warning("%s=%s: killing this coordinator", CRASH_POINT, point)
            os.kill(os.getpid(), signal.SIGKILL)

    def run(self) -> JobResult:
        # SIGINT (a Ctrl-C, a standing cluster's cancel) stops the job at the loop's next turn,
        # never in the middle of a lock held by a thread or a file half written; a second one
        # while the coordinator cleans up is not allowed to cut that short.
        self._interrupted = False
        in_main = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, self._on_interrupt) if in_main else None
        try:
            return self._run()
        finally:
            if in_main:
                signal.signal(signal.SIGINT, signal.SIG_DFL if previous is None else previous)

    def _on_interrupt(self, signum, frame) -> None:
        self._interrupted = True

    def _run(self) -> JobResult:
        started = time.monotonic()
        scheduler = Scheduler(
            self.splits, self.settings, started, self.job_id, app=self.app.name, output=str(self.output_dir)
        )
        scheduler.job_started(started)
        stopped = None  # why the job ended otherwise than by succeeding or failing
        self.data_server.start()
        token = self.state.recovered.output_token if self.state is not None else None
        try:
            if self.state is not None:
                scheduler.restore(self.state.recovered, started)
            self._fenced(
                lambda: setattr(self, "_output_token", output.show_visibility(self.output_dir, self.job_id, token))
            )
            self._serve(scheduler)
            if scheduler.succeeded and scheduler.failure is None:  # (a commit may fail after the last reduce)
                self._crash_at("before-success")
                message = f"output committed to {self.output_dir}"
                self._fenced(lambda: output.finish(self.output_dir, len(scheduler.outputs), self.compression))
                if self.state is not None:
                    self.state.remember(record("finished", ok=True, message=message))
                ok = True
            else:
                ok, message = False, scheduler.failure or "stopped"
        except Superseded as exc:
            self._superseded_by = str(exc)
            ok, message = False, ""
            stopped = f"superseded: {exc}"
        except KeyboardInterrupt:
            ok, message = False, "the coordinator was interrupted"
            scheduler.job_finished(time.monotonic(), self.rejected_messages, stopped=message)
            self._farewell(scheduler, False, message, grace=0.5)
            self._flush_events(scheduler)
            self._notify(scheduler, time.monotonic())
            self.events.close()
            self._close()
            raise
        except Exception as exc:
            ok, message = False, f"the coordinator failed: {type(exc).__name__}: {exc}"
            stopped = message
            log.exception("coordinator failure")
        finally:
            if not self._superseded_by:
                self.transfers.close()  # no pull may write into the output folder after this
                try:
                    self._fenced(lambda: self._tidy(scheduler))
                except Superseded as exc:
                    self._superseded_by = str(exc)
            scheduler.job_finished(time.monotonic(), self.rejected_messages, stopped)
        if self._superseded_by:
            return self._superseded(scheduler, started)
        self._farewell(scheduler, ok, message, self.goodbye_grace)
        self._flush_events(scheduler)
        self._notify(scheduler, time.monotonic())
        self.events.close()
        self._close()
        return JobResult(
            ok, message, scheduler.tally.copy(), time.monotonic() - started, len(self.splits), self.settings.n_reduce
        )

    _superseded_by = ""

    def _tidy(self, scheduler: Scheduler) -> None:
        """What the job's end removes from the output folder."""
        stays = output.remove_visibility(self.output_dir, self.job_id)
        if stays:
            log.warning("%s", stays)
        if not scheduler.succeeded:
            left = output.remove_temps(self.output_dir)
            if left:
                log.warning(
                    "could not remove %d temporary file(s) from %s, e.g. %s", len(left), self.output_dir, left[0]
                )

    def _superseded(self, scheduler: Scheduler, started: float) -> JobResult:
        """A newer coordinator took the job over: leave without a word to any worker and
        without touching the output folder or the journal."""
        message = f"this coordinator was superseded: {self._superseded_by}; it changed nothing after that"
        log.error("%s", message)
        scheduler.job_finished(time.monotonic(), self.rejected_messages, stopped=message)
        self._flush_events(scheduler)
        self.events.close()
        self._close()
        return JobResult(
            False, message, scheduler.tally.copy(), time.monotonic() - started, len(self.splits), self.settings.n_reduce
        )

    def _close(self) -> None:
        self.transfers.close()
        self.data_server.stop()
        self.socket.close()
        if self.auth is not None:
            self.auth.stop()
        self.context.term()

    def _over(self, scheduler: Scheduler) -> bool:
        """Failed, or every partition done and committed (pulls from other hosts included)."""
        return scheduler.failure is not None or (scheduler.succeeded and self.transfers.pending_pulls == 0)

    def _serve(self, scheduler: Scheduler) -> None:
        tick_every = min(0.1, self.settings.heartbeat_interval / 4)
        next_tick = time.monotonic()
        poller = zmq.Poller()
        poller.register(self.socket, zmq.POLLIN)
        poller.register(self.transfers.wakeup, zmq.POLLIN)
        while not self._over(scheduler):
            ready = dict(poller.poll(max(0.0, next_tick - time.monotonic()) * 1000))
            if self._interrupted:
                raise KeyboardInterrupt
            if self.transfers.wakeup in ready:
                for finished in self.transfers.collect():
                    self._transferred(scheduler, finished)
            if self.socket in ready:
                for _ in range(1000):  # drain a burst, but keep ticking under load
                    try:
                        identity, frame = self._recv()
                    except zmq.Again:
                        break
                    if identity is None:
                        continue
                    self._carry_out(scheduler, self._handle(scheduler, identity, frame))
                    if self._over(scheduler):
                        return
            now = time.monotonic()
            ticked = now >= next_tick
            if ticked:
                self._carry_out(scheduler, scheduler.tick(now))
                self._check_revocations(scheduler, now)
                self._check_epoch(now)
                for pid, code in self.exited() if self.exited is not None else ():
                    self._carry_out(scheduler, scheduler.process_exited(now, self._host_id, pid, code))
                next_tick = now + tick_every
                if self.watchdog is not None and scheduler.failure is None:
                    why = self.watchdog()
                    if why is not None:
                        scheduler.fail(now, why)
            self._flush_events(scheduler)
            if ticked:
                self._notify(scheduler, now, tick=True)

    def _flush_events(self, scheduler: Scheduler) -> None:
        events = scheduler.take_events()
        self.events.write(events)
        if self.observe is not None:
            self._unobserved += events

    def _notify(self, scheduler: Scheduler, now: float, tick: bool = False) -> None:
        """Show the job to the progress display (on ticks) and the observer."""
        if self.observe is None and (self.progress is None or not tick):
            return
        view = scheduler.view(now)
        if self.progress is not None and tick:
            self.progress(view)
        if self.observe is not None:
            events, self._unobserved = self._unobserved, []
            self.observe(view, events)

    def _recv(self) -> tuple[bytes | None, bytes]:
        frames = self.socket.recv_multipart(zmq.NOBLOCK, copy=False)
        if len(frames) != 2:
            self.rejected_messages += 1
            return None, b""
        self._last_frame = frames[1]  # its metadata: the key the sender proved (see _peer_key)
        return frames[0].bytes, frames[1].bytes

    def _peer_key(self) -> str:
        """The public key (z85) the sender of the last message proved in its CURVE handshake,
        as the key gate returned it (ZAP's user id); "" without keys."""
        if self.keys is None:
            return ""
        try:
            return self._last_frame.get("User-Id")
        except (zmq.ZMQError, UnicodeDecodeError):
            return ""

    def _handle(self, scheduler: Scheduler, identity: bytes, frame: bytes) -> list:
        now = time.monotonic()
        try:
            message = p.decode(frame, p.WORKER_MESSAGES)
        except ProtocolError as exc:
            self.rejected_messages += 1
            log.warning("rejected a message from %r: %s", identity, exc)
            return []
        if isinstance(message, p.Register):
            key = self._peer_key()
            if self.keys is not None and (not key or key.encode() not in self.keys.allowed()):
                # Its key was revoked after the handshake (a registration again, on the old connection).
                reason = "this worker's key is not (or no longer) allowed by the coordinator's key folder"
                log.error("refused worker %s on %s: %s", message.name, message.host, reason)
                return [Send(identity, p.Refused(reason))]
            if message.host_id == self._host_id:
                return scheduler.register(now, identity, message, self._welcome, key)
            # From another host: first check its data server answers (in the transfers thread).
            if identity not in self._probing and len(self._probing) < MAX_PROBES:  # else it registers again later
                self._probing.add(identity)
                self.transfers.submit(Probe(identity, message, server_key=key))
            return []
        return scheduler.receive(now, identity, message)

    def _check_epoch(self, now: float) -> None:
        """Leave soon once superseded, even with nothing to do (a paused coordinator woken
        with no worker left to it would otherwise wait for workers for ever)."""
        if self.state is not None and now >= self._next_epoch_check:
            self._next_epoch_check = now + EPOCH_CHECK
            self.state.act(lambda: None)  # Superseded if a newer coordinator took over

    def _check_revocations(self, scheduler: Scheduler, now: float) -> None:
        """Cut off registered workers whose public key was deleted from the key folder."""
        if self.keys is None or now < self._next_revocation_check:
            return
        self._next_revocation_check = now + REVOCATION_CHECK
        live = [w for w in scheduler.live_workers() if w.server_key]
        if not live:
            return
        allowed = self.keys.allowed()
        for worker in live:
            if worker.server_key.encode() not in allowed:
                reason = "this worker's key was revoked (deleted from the coordinator's key folder)"
                self._carry_out(scheduler, scheduler.revoke(now, worker.id, "its key was revoked"))
                self.socket.send_multipart([worker.identity, p.encode(p.Refused(reason))])

    def _transferred(self, scheduler: Scheduler, done: Pull | Probe) -> None:
        now = time.monotonic()
        if isinstance(done, Probe):
            self._probing.discard(done.identity)
            if done.error is None:
                self._carry_out(
                    scheduler, scheduler.register(now, done.identity, done.register, self._welcome, done.server_key)
                )
                return
            reason = (
                f"the coordinator cannot reach this worker's data server at {done.register.data_address} "
                f"({done.error}); start the worker with --advertise ADDRESS, an address of its host "
                "that the coordinator and the other workers can reach"
            )
            log.error("refused worker %s on %s: %s", done.register.name, done.register.host, reason)
            self.socket.send_multipart([done.identity, p.encode(p.Refused(reason))])
            return
        c = done.commit
        if done.output_folder_failed:  # no re-run can help: the output folder takes no file
            scheduler.fail(now, done.error or "the output folder takes no file")
            return
        if done.error is not None:
            self._carry_out(
                scheduler,
                scheduler.commit_failed(now, c.partition, f"pulling it from {c.data_address} failed: {done.error}"),
            )
            return
        self._commit(scheduler, c.partition, done.destination.name, pulled=c.size)

    def _carry_out(self, scheduler: Scheduler, actions: list) -> None:
        now = time.monotonic()
        for action in actions:
            if isinstance(action, Send):
                self.socket.send_multipart([action.identity, p.encode(action.message)])
                scheduler.sent(action.identity, now)
            elif isinstance(action, Commit):
                if output.is_temp_name(action.temp):  # written in the output folder
                    self._commit(scheduler, action.partition, action.temp)
                else:  # written in the reducer's scratch: pull it here first, then commit
                    name = output.attempt_temp_name(action.partition, self.job_id, action.attempt)
                    self.transfers.submit(Pull(action, self.output_dir / name))
            elif isinstance(action, Remember):
                if self.state is not None:
                    self.state.remember(action.output.to_record())
                    self._journalled["map"] += 1
                    self._crash_at(f"after-map:{self._journalled['map']}")
            elif isinstance(action, Discard) and output.is_temp_name(action.temp):
                self._fenced(lambda temp=action.temp: (self.output_dir / temp).unlink(missing_ok=True))

    def _commit(self, scheduler: Scheduler, partition: int, temp: str, pulled: int = 0) -> None:
        """Publish a partition's temporary output; ``pulled``: bytes pulled from its reducer first."""
        now = time.monotonic()
        try:
            if not output.is_temp_name(temp):
                raise FileNotFoundError(f"{temp!r} is not a temporary output name")
            if self.state is None:
                output.commit(self.output_dir, temp, partition, self.compression)
            else:
                self.state.act(
                    lambda: output.commit(self.output_dir, temp, partition, self.compression),
                    record(
                        "committed", partition=partition, counters=scheduler.counters_of(scheduler.outputs[partition])
                    ),
                )
        except FileNotFoundError as exc:  # the attempt's file vanished: run it again
            self._carry_out(scheduler, scheduler.commit_failed(now, partition, str(exc)))
        except OSError as exc:
            scheduler.fail(now, f"could not commit partition {partition} to {self.output_dir}: {exc}")
        else:
            scheduler.committed(now, partition, pulled)
            self._journalled["commit"] += 1
            self._crash_at(f"after-commit:{self._journalled['commit']}")

    def _farewell(self, scheduler: Scheduler, ok: bool, message: str, grace: float) -> None:
        """Tell every worker the job is over, and wait a little for their goodbyes."""
        done = p.encode(p.JobDone(ok, message))
        live = scheduler.live_workers()
        self.told_pids = {w.info.pid for w in live if w.info.host_id == self._host_id}
        waiting = {w.identity for w in live}
        for identity in waiting:
            self.socket.send_multipart([identity, done])
        deadline = time.monotonic() + grace
        while waiting and time.monotonic() < deadline:
            if not self.socket.poll(50):
                continue
            try:
                identity, frame = self._recv()
            except zmq.Again:
                continue
            if identity is None:
                continue
            try:
                message = p.decode(frame, p.WORKER_MESSAGES)
            except ProtocolError:
                continue
            if isinstance(message, p.Goodbye):
                waiting.discard(identity)
                scheduler.receive(time.monotonic(), identity, message)
            else:
                self.socket.send_multipart([identity, done])  # a latecomer: tell it too
