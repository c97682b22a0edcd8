"""The standing cluster's service: takes jobs from clients, queues them, and runs each in a
coordinator process of its own on the cluster's address, where the workers that stay
(`mapreduce worker --stay`) serve one job after another.

A job's coordinator is a child process (`mapreduce coordinator`, the same code as a one-job
cluster): the job's code (its app module, a total order's sample) never runs in the service,
so a job that crashes or hangs its coordinator harms only itself. The service reads no pickle:
a client sends an app's Python source, which the job's coordinator loads. Each job has a
folder in the state folder: its app, its coordinator's log and its event log
(`mapreduce report`).

The queue survives the service: each change is journaled (STATE/journal) before the service
acts on it or answers, and a service started on the folder replays it. A job that was running
when the service died runs again, first, in the same folder, its coordinator given that folder
(--state-dir) to resume from: what the job had committed and journalled is not redone.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import zmq

from mapreduce import defaults, output
from mapreduce.cluster import LocalCluster
from mapreduce.errors import ProtocolError, UsageError
from mapreduce.journal import Journal, JournalError
from mapreduce.net.security import CurveGate, Keys, authenticator, clients_authenticator, load
from mapreduce.output import Compression
from mapreduce.service import queue as jobqueue
from mapreduce.service.addresses import clients_endpoint, private_endpoint
from mapreduce.service.forkserver import ForkServer
from mapreduce.service.page import ClusterPage
from mapreduce.service.queue import Cancelling, JobQueue, QueuedJob
from mapreduce.wire import messages as p

log = logging.getLogger(__name__)

POLL_MS = 20  # how often a finished coordinator is noticed
_APP_FILE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,99}\.py")
_JOB_FOLDER = re.compile(r"job-([0-9]{5,})")


@dataclass(frozen=True)
class Watch:
    sock: zmq.Socket
    identity: bytes
    request: p.WatchJob
    deadline: float  # monotonic


@dataclass(frozen=True)
class ServiceOptions:
    bind: str  # where workers connect
    state_dir: Path
    key_dir: Path | None = None
    workers: int = 0  # local workers this service starts (and stops)
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    coordinator_args: tuple[str, ...] = ()  # more options for every job's coordinator
    status: tuple[str, int] | None = None  # (address, port): the cluster's page; each job's on port + 1


class Service:
    def __init__(self, options: ServiceOptions):
        self.options = options
        self.jobs_dir = options.state_dir / "jobs"
        self.jobs_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(options.state_dir, 0o700)  # its socket takes clients without keys
        self._lock = _lock(options.state_dir)
        self.journal, self.queue = self._recover()
        self._compact()
        self._finish_cancels()
        self.keys: Keys | None = load(options.key_dir, "coordinator") if options.key_dir else None
        self.context = zmq.Context()
        self.sockets: list[zmq.Socket] = []
        self.gate: CurveGate | None = None
        private = self._listen(private_endpoint(options.state_dir))
        self.addresses = [private.getsockopt_string(zmq.LAST_ENDPOINT)]
        if self.keys is not None:
            self.gate = clients_authenticator(self.context, self.keys)
            public = self._listen(clients_endpoint(options.bind), self.keys)
            self.addresses.append(public.getsockopt_string(zmq.LAST_ENDPOINT))
        self.forks: ForkServer | None = None  # forks each job's coordinator process
        self.running: QueuedJob | None = None
        self.running_pid: int | None = None  # its coordinator's process, once the fork server said
        self.local: LocalCluster | None = None
        self.watching: list[Watch] = []  # clients waiting for a job to change state
        self.page: ClusterPage | None = None
        if options.status is not None:
            host, port = options.status
            try:
                self.page = ClusterPage(host, port, port + 1)
            except OSError as exc:
                self._close()
                raise UsageError(f"cannot serve the cluster's page on {host}:{port}: {exc}") from None
        self._stops_asked = 0

    def _recover(self) -> tuple[Journal, JobQueue]:
        """The queue as the journal left it; a journal this service cannot take (damaged, of
        another version or another cluster) stops it: it never starts empty over a queue."""
        journal = None
        try:
            journal = Journal.open(self.options.state_dir, "cluster", self.options.bind)
            return journal, JobQueue.restore(journal.records, first_number=_next_number(self.jobs_dir))
        except (JournalError, jobqueue.BadRecord) as exc:
            if journal is not None:
                journal.close()
            self._lock.close()
            raise UsageError(f"cannot start the cluster: {exc}") from None

    def _finish_cancels(self) -> None:
        """Cancel the restored jobs whose cancel the last service had begun when it died."""
        for job_id in self.queue.cancels_left_undone():
            self.queue.cancel(time.time(), job_id)
            self._dequeued(self.queue.job(job_id))

    def _journal(self, *records: dict) -> None:
        """Make the change durable before acting on it; compact when the journal has grown."""
        self.journal.append(*records)
        self._journal_length += len(records)
        if self._journal_length > self._compact_at:
            self._compact()

    def _compact(self) -> None:
        records = self.queue.compacted()
        self.journal.rewrite(records)
        self._journal_length = len(records)
        self._compact_at = 2 * len(records) + 3 * jobqueue.KEEP_FINISHED

    def _listen(self, endpoint: str, keys: Keys | None = None) -> zmq.Socket:
        sock = self.context.socket(zmq.ROUTER)
        if keys is not None:
            keys.serve(sock)
        sock.setsockopt(zmq.LINGER, 500)
        sock.setsockopt(zmq.MAXMSGSIZE, p.MAX_MESSAGE_BYTES)
        self.sockets.append(sock)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            self._close()
            raise UsageError(f"cannot listen for clients on {endpoint}: {exc}") from None
        return sock

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> int:
        previous = {s: signal.signal(s, self._ask_stop) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            if self.options.workers:
                # In sessions of their own: a Ctrl-C stops the service, which lets the running job
                # finish on them before telling them to leave.
                self.local = LocalCluster(
                    _connectable(self.options.bind), self.options.workers, self._worker_args(), own_session=True
                ).start()
            poller = zmq.Poller()
            for sock in self.sockets:
                poller.register(sock, zmq.POLLIN)
            while True:
                if self.forks is None:
                    self.forks = ForkServer()
                    poller.register(self.forks.fd, zmq.POLLIN)
                if self._stops_asked:  # (SIGTERM or Ctrl-C; a second one cancels the running job too)
                    cancel = self._stops_asked > 1 or self.queue.stopping
                    self._stops_asked = 0
                    self._stop(cancel_running=cancel)
                for ready in dict(poller.poll(POLL_MS)):
                    if ready == self.forks.fd:
                        self._heard_from_forks(poller)
                    else:
                        self._answer(ready)
                self._start_next()
                self._answer_watches()
                if self.page is not None:
                    self.page.publish(self.queue.all(), self.queue.stopping)
                if self.queue.stopping and self.running is None:
                    break
            # The whole window even once the local workers have left: workers started elsewhere
            # may still be on their way back (a fresh process per job) and are not known here.
            dismiss_workers(self.options.bind, self.keys, self._dismissal_window())
            return 0
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            if self.page is not None:
                self.page.close()
            if self.forks is not None:  # (a job still running means the service itself failed: it goes too)
                self.forks.close(grace=0.0 if self.running is not None else 5.0)
            if self.local is not None:
                self.local.stop(grace=self.options.heartbeat_interval * 3)
                self.local.cleanup()
            self._close()

    def _close(self) -> None:
        for sock in self.sockets:
            sock.close(500)
        if self.gate is not None:
            self.gate.stop()
        self.context.term()
        self.journal.close()
        self._lock.close()

    def _ask_stop(self, signum, frame) -> None:
        self._stops_asked += 1  # acted on by the loop (within one poll)

    def _answer(self, sock: zmq.Socket) -> None:
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                continue
            identity, frame = frames
            try:
                request = p.decode(frame, p.CLIENT_MESSAGES)
            except ProtocolError as exc:
                log.warning("rejected a client's message: %s", exc)
                sock.send_multipart([identity, p.encode(p.Declined(f"malformed request: {exc}"))])
                continue
            if isinstance(request, p.WatchJob) and request.wait > 0 and self._unchanged(request):
                wait = min(request.wait, p.MAX_WATCH)
                self.watching.append(Watch(sock, identity, request, time.monotonic() + wait))
                continue
            sock.send_multipart([identity, p.encode(self.handle(request))])

    def _unchanged(self, watch: p.WatchJob) -> bool:
        info = self.queue.get(watch.job_id)
        return info is not None and info.state is watch.known

    def _answer_watches(self) -> None:
        """Answer the watches whose job changed state, or whose time is up."""
        now, held = time.monotonic(), []
        for watch in self.watching:
            if now < watch.deadline and self._unchanged(watch.request):
                held.append(watch)
            else:
                watch.sock.send_multipart([watch.identity, p.encode(self.handle(watch.request))])
        self.watching = held

    def handle(self, request) -> p.JobInfo | p.JobList | p.Declined:
        now = time.time()
        if isinstance(request, p.ListJobs):
            return p.JobList(self.queue.all(), self.queue.stopping)
        if isinstance(request, p.StopCluster):
            self._stop(request.cancel_running)
            return p.JobList(self.queue.all(), self.queue.stopping)
        if isinstance(request, p.SubmitJob):
            why = check_request(request)
            if why is not None:
                return p.Declined(why)
            if self.queue.stopping:
                return p.Declined("the cluster is stopping: it takes no new job")
            info = self.queue.submit(now, request, lambda job_id: str(self.jobs_dir / job_id / "events.jsonl"))
            folder = self.jobs_dir / info.job_id
            folder.mkdir()
            if request.app_source:
                (folder / request.app).write_text(request.app_source)
            self._journal(jobqueue.submitted(self.queue.job(info.job_id)))
            log.info("%s queued: %s", info.job_id, request.app)
            return info
        if self.queue.get(request.job_id) is None:
            return p.Declined(f"no job {request.job_id!r} on this cluster")
        if isinstance(request, p.CancelJob):
            self._cancel(now, request.job_id)
        return self.queue.get(request.job_id)

    def _cancel(self, now: float, job_id: str) -> None:
        outcome = self.queue.cancel(now, job_id)
        if outcome is Cancelling.DEQUEUED:
            self._dequeued(self.queue.job(job_id))
        elif outcome is Cancelling.STOP_RUNNING:
            self._journal(jobqueue.cancel_asked(self.queue.job(job_id)))
            self._interrupt()

    def _dequeued(self, job: QueuedJob) -> None:
        """A queued job was cancelled. One that ran before the service died may have left
        part files: removed as a cancelled running job's are."""
        self._journal(jobqueue.ended(job))
        if job.runs:
            output.remove_output(Path(job.request.output), job.output_created)

    def _stop(self, cancel_running: bool) -> None:
        log.info("stopping: %s", "cancelling every job" if cancel_running else "the running job finishes first")
        now = time.time()
        for info in self.queue.all():
            if info.state is p.JobState.QUEUED or (cancel_running and info.state is p.JobState.RUNNING):
                self._cancel(now, info.job_id)
        self.queue.stop(now, cancel_running)

    # ---- jobs' coordinators ------------------------------------------------------

    def _start_next(self) -> None:
        if self.running is not None:
            return
        job = self.queue.start_next(time.time())
        if job is None:
            return
        folder = self.jobs_dir / job.info.job_id
        if job.runs == 1:  # (a rerun keeps what the first run found)
            job.output_created = not os.path.exists(job.request.output)
        self._journal(jobqueue.started(job))
        self.running, self.running_pid = job, None
        argv = self._coordinator_args(job, folder)
        self.forks.order(job.info.job_id, argv, str(folder), str(_coordinator_log(job, folder)))
        log.info("%s started%s", job.info.job_id, f" again (run {job.runs})" if job.runs > 1 else "")

    def _coordinator_args(self, job: QueuedJob, folder: Path) -> list[str]:
        """The command line of the job's coordinator: `coordinator`, `streaming` or `mrjob`
        serving the job on the cluster's address, built from the request's checked fields."""
        r = job.request
        served = ["--bind", self.options.bind, *_resume_from(folder), "--events", job.info.events, "--quiet"]
        served += ["--heartbeat-interval", str(self.options.heartbeat_interval)]
        if self.options.key_dir is not None:
            served += ["--key-dir", str(self.options.key_dir)]
        for flag, value in (
            ("--reduce", r.n_reduce),
            ("--split-size", r.split_size),
            ("--max-attempts", r.max_attempts),
        ):
            if value:
                served += [flag, str(value)]
        for side_file in r.files:
            served += ["--file", side_file]
        if r.overwrite:
            served.append("--overwrite")
        served += self.options.coordinator_args
        if self.options.status is not None:  # each job's live page, beside the cluster's
            served += ["--status-bind", self.options.status[0], "--status-port", str(self.options.status[1] + 1)]
        if r.kind is p.JobKind.STREAMING:
            command = ["streaming", *(a for i in r.inputs for a in ("--input", i)), "--output", r.output]
            for flag, value in (("--mapper", r.mapper), ("--reducer", r.reducer), ("--combiner", r.combiner)):
                if value:
                    command += [flag, value]
            for define in r.defines:
                command += ["-D", define]
            return command + served
        if r.kind is p.JobKind.MRJOB:  # its own arguments last, after JOB.py
            return ["mrjob", "--output", r.output, *served, str(folder / r.app), *r.job_args]
        app = str(folder / r.app) if r.app_source else r.app
        command = ["coordinator", app, *r.inputs, "--output", r.output, *served]
        for param in r.params:
            command += ["--param", param]
        if r.skip_bad_records:
            command += ["--skip-bad-records", str(r.skip_bad_records)]
        return command + ["--compress", r.compress.value]

    def _interrupt(self) -> None:
        """Stop the running job's coordinator: it tells the workers the job is over (they drop
        its files) and removes its temporary output; the service then removes the rest."""
        if self.running is not None and self.running_pid is not None:
            log.info("%s: cancelling", self.running.info.job_id)
            try:
                os.kill(self.running_pid, signal.SIGINT)
            except ProcessLookupError:
                pass  # it has just ended: its exit is on its way
        # (Without a pid yet, the cancel is sent when the fork server names the process.)

    def _heard_from_forks(self, poller: zmq.Poller) -> None:
        answers = self.forks.answers()
        if answers is None:  # the fork server died, and with it any job's coordinator
            log.error("the process that starts jobs' coordinators died: starting another")
            poller.unregister(self.forks.fd)
            self.forks.close(grace=0.0)
            self.forks = None
            if self.running is not None:
                self._ended(self.running, None)
            return
        for answer in answers:
            if self.running is None or answer["job"] != self.running.info.job_id:
                continue
            if "pid" in answer:
                self.running_pid = answer["pid"]
                if self.running.cancel_asked:
                    self._interrupt()
            else:
                self._ended(self.running, answer["exit"])

    def _ended(self, job: QueuedJob, code: int | None) -> None:
        """The job's coordinator exited with ``code`` (None: lost with the fork server)."""
        self.running = self.running_pid = None
        folder = self.jobs_dir / job.info.job_id
        ok = code == 0
        message = f"output committed to {job.request.output}" if ok else _last_line(_coordinator_log(job, folder))
        if not ok and job.cancel_asked:
            message = "cancelled"
        elif not ok and not message:
            message = f"its coordinator exited with status {code}" if code is not None else "its coordinator was lost"
        info = self.queue.ended(time.time(), job.info.job_id, ok, message)
        self._journal(jobqueue.ended(job))
        if info.state is p.JobState.CANCELLED:
            output.remove_output(Path(job.request.output), job.output_created)
        log.info("%s %s: %s", info.job_id, info.state.value, info.message)

    # ---- workers -----------------------------------------------------------------

    def _worker_args(self) -> list[str]:
        args = ["--stay", "--heartbeat-interval", str(self.options.heartbeat_interval)]
        if self.options.key_dir is not None:
            args += ["--key-dir", str(self.options.key_dir)]
        return args

    def _dismissal_window(self) -> float:
        """Long enough for every waiting worker to ask again (each asks every heartbeat) and
        for one just replaced by a fresh process to start."""
        return 3 * self.options.heartbeat_interval + 2.0


def check_request(r: p.SubmitJob) -> str | None:
    """Why a submitted job cannot be queued, or None."""
    if r.kind is p.JobKind.STREAMING:
        if not r.mapper or r.app or r.app_source or r.params or r.job_args:
            return "a streaming job has a mapper and no app, parameters or job arguments"
    elif r.kind is p.JobKind.MRJOB:
        if not r.app_source or not _APP_FILE.fullmatch(r.app):
            return f"an mrjob job travels as its script's source, with a Python file name (got {r.app[:100]!r})"
    elif r.app_source and not _APP_FILE.fullmatch(r.app):
        return f"app file name {r.app[:100]!r}: a Python file name (letters, digits, _) ending in .py"
    elif not r.app_source and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.]{0,200}", r.app):
        return f"app {r.app[:100]!r} is neither a built-in app's name nor a module's"
    if r.kind is not p.JobKind.STREAMING and (r.mapper or r.reducer or r.combiner or r.defines):
        return "mapper, reducer, combiner and -D are a streaming job's"
    if r.kind is not p.JobKind.APP and (r.params or r.skip_bad_records or r.compress is not Compression.NONE):
        return "parameters, bad records to skip and compression are an app's options"
    if not r.inputs and r.kind is not p.JobKind.MRJOB:
        return "no inputs"
    for path in [*r.inputs, r.output, *r.files]:
        if not os.path.isabs(path.partition("#")[0]) or len(path) > 4096:
            return f"path {path[:200]!r} is not an absolute path on the cluster's host"
    for text in [*r.inputs, r.output, *r.files, *r.params, *r.defines, *r.job_args, r.mapper, r.reducer, r.combiner]:
        if "\0" in text:
            return "a NUL character in the request"
    for setting in [*r.params, *r.defines]:
        if "=" not in setting:
            return f"setting {setting[:100]!r} is not NAME=VALUE"
    if r.n_reduce is not None and not 0 <= r.n_reduce <= 100_000:
        return f"--reduce {r.n_reduce}: 0 to 100000"
    if min(r.split_size, r.max_attempts, r.skip_bad_records) < 0:
        return "split size, attempts and bad records to skip cannot be negative"
    return None


def dismiss_workers(bind: str, keys: Keys | None, window: float) -> int:
    """Answer every worker that asks, for ``window`` seconds, that the cluster is stopping:
    workers that stay leave. Returns how many were told."""
    context = zmq.Context()
    gate = authenticator(context, keys)
    sock = context.socket(zmq.ROUTER)
    if keys is not None:
        keys.serve(sock)
    told: set[bytes] = set()
    try:
        sock.bind(bind)
        farewell = p.encode(p.JobDone(True, "the cluster is stopping", leave=True))
        deadline = time.monotonic() + window
        while time.monotonic() < deadline:
            if not sock.poll(50):
                continue
            frames = sock.recv_multipart()
            if len(frames) != 2:
                continue
            try:
                message = p.decode(frames[1], p.WORKER_MESSAGES)
            except ProtocolError:
                continue
            if not isinstance(message, p.Goodbye):
                sock.send_multipart([frames[0], farewell])
                told.add(frames[0])
    except zmq.ZMQError as exc:
        log.warning("could not tell the workers to leave (%s): they leave after their coordinator timeout", exc)
    finally:
        sock.close(500)
        if gate is not None:
            gate.stop()
        context.term()
    return len(told)


def _lock(state_dir: Path):
    """Hold the state folder for this service's life: a second service on it would take its
    clients' socket."""
    import fcntl

    held = open(state_dir / "lock", "w")  # open for the service's life
    try:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held.close()
        raise UsageError(
            f"a cluster already runs with state folder {str(state_dir)!r}: stop it (mapreduce cluster stop "
            "--state-dir ...) or give this one another --state-dir"
        ) from None
    return held


def _connectable(bind: str) -> str:
    """Where a worker on this host connects for ``bind`` (a wildcard address is not one)."""
    return bind.replace("//0.0.0.0:", "//127.0.0.1:").replace("//*:", "//127.0.0.1:").replace("//[::]:", "//[::1]:")


def _next_number(jobs_dir: Path) -> int:
    """Job numbers go on from the last in the state folder: a job id is never reused."""
    numbers = [int(m.group(1)) for m in map(_JOB_FOLDER.fullmatch, os.listdir(jobs_dir)) if m]
    return max(numbers, default=0) + 1


def _resume_from(folder: Path) -> list[str]:
    """The job's folder, where its coordinator keeps (and after a killed service finds) its
    journal."""
    return ["--state-dir", str(folder)]


def _coordinator_log(job: QueuedJob, folder: Path) -> Path:
    return Path(jobqueue.rerun_file(str(folder / "coordinator.log"), job.runs))


def _last_line(path: Path) -> str:
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1][:500] if lines else ""
