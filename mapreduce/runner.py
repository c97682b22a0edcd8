"""Running a job: every check before any work, then the sequential oracle, a
coordinator serving external workers, or a coordinator with its own local cluster."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mapreduce import defaults, output
from mapreduce.cluster import LocalCluster
from mapreduce.counters import Counters
from mapreduce.errors import JobFailed, MapReduceError, UsageError
from mapreduce.inputs import Split, check_side_files, fingerprint, make_splits
from mapreduce.job import App, load_app
from mapreduce.net.node import endpoint_host
from mapreduce.net.security import Keys, check_exposure, generate, load
from mapreduce.sampling import with_total_order
from mapreduce.seq import run_sequential
from mapreduce.wire import messages as p

if TYPE_CHECKING:
    from mapreduce.coordinator.loop import Coordinator, JobResult, Observer, Progress
    from mapreduce.coordinator.recovery import JobState
    from mapreduce.coordinator.scheduler import Settings

log = logging.getLogger(__name__)

WHOLE_FILE = 1 << 62


@dataclass(frozen=True)
class JobOptions:
    n_reduce: int | None = None  # None: defaults.N_REDUCE, or 0 for an app without reduce
    split_size: int = defaults.SPLIT_SIZE
    overwrite: bool = False
    params: Mapping[str, str] = field(default_factory=dict)
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    worker_timeout: float = defaults.WORKER_TIMEOUT
    max_attempts: int = defaults.MAX_ATTEMPTS
    task_timeout: float | None = None
    speculation: bool = defaults.SPECULATION
    max_worker_losses: int = defaults.MAX_WORKER_LOSSES
    min_workers: int = defaults.MIN_WORKERS
    files: tuple[str, ...] = ()  # --file: side files shipped to every worker's task folder
    skip_bad_records: int = 0  # records a task may skip when the user's code keeps raising on them
    compress: output.Compression = output.Compression.NONE  # how part files are written

    def settings(self, n_reduce: int, later_steps: tuple[int, ...] = ()) -> Settings:
        from mapreduce.coordinator.scheduler import Settings

        return Settings(
            n_reduce,
            self.heartbeat_interval,
            self.worker_timeout,
            self.max_attempts,
            max_lost=self.max_worker_losses,
            task_timeout=self.task_timeout,
            speculation=self.speculation,
            min_workers=self.min_workers,
            skip_bad_records=self.skip_bad_records,
            later_steps=later_steps,
        )


@dataclass(frozen=True)
class PreparedJob:
    app: App
    splits: list[Split]
    output_dir: Path
    split_size: int
    n_reduce: int  # 0: a map-only job
    side_files: list[p.SideFile] = field(default_factory=list)  # --file
    later_steps: tuple[int, ...] = ()  # a pipeline: the reduce count of each step after the first
    state: JobState | None = None  # its state folder (--state-dir), taken over by this run

    def coordinator(self, options: JobOptions, bind: str, **loop: Any) -> Coordinator:
        """The coordinator of this job, bound to ``bind`` (``loop``: the loop's other settings)."""
        from mapreduce.coordinator.loop import Coordinator

        return Coordinator(
            self.app,
            self.splits,
            self.output_dir,
            options.settings(self.n_reduce, self.later_steps),
            bind,
            compression=options.compress,
            side_files=self.side_files,
            state=self.state,
            **loop,
        )


def prepare(
    app_ref: str | App,
    inputs: Sequence[str],
    output_dir: str | Path,
    options: JobOptions,
    state_dir: Path | None = None,
) -> PreparedJob:
    """Check everything a job needs, in the order a user would fix it; change nothing
    on disk except creating an empty output folder (and dropping a stale _SUCCESS).
    With ``state_dir`` (a coordinator's --state-dir): its journal, which must be this job's;
    one that already holds the job takes its output folder as it stands (the job resumes)."""
    if options.n_reduce is not None and options.n_reduce < 0:
        raise UsageError(f"the number of reduce tasks must be 0 (a map-only job) or more, got {options.n_reduce}")
    if options.skip_bad_records < 0:
        raise UsageError(f"--skip-bad-records must be 0 or more, got {options.skip_bad_records}")
    if options.max_worker_losses < 1:
        raise UsageError(f"--max-worker-losses must be at least 1, got {options.max_worker_losses}")
    if options.min_workers < 1:
        raise UsageError(f"--min-workers must be at least 1, got {options.min_workers}")
    if options.max_attempts < 1:
        raise UsageError(f"--max-attempts must be at least 1, got {options.max_attempts}")
    if options.worker_timeout <= options.heartbeat_interval:
        raise UsageError(
            f"--worker-timeout ({options.worker_timeout} s) must exceed --heartbeat-interval "
            f"({options.heartbeat_interval} s)"
        )
    app = app_ref if isinstance(app_ref, App) else load_app(app_ref, options.params)
    n_reduce = options.n_reduce
    if n_reduce is None:
        n_reduce = app.n_reduce or (defaults.N_REDUCE if app.reduce is not None else 0)
    elif app.n_reduce is not None and n_reduce != app.n_reduce:
        raise UsageError(f"app {app.name!r} needs exactly {app.n_reduce} reduce task(s), got --reduce {n_reduce}")
    elif n_reduce and app.reduce is None:
        raise UsageError(f"app {app.name!r} has no reduce: it is map-only, so --reduce must be 0, got {n_reduce}")
    if app.steps and not n_reduce:
        raise UsageError(f"app {app.name!r} is a pipeline: its first step needs at least one reduce, got --reduce 0")
    later_steps = tuple(step.n_reduce or defaults.N_REDUCE for step in app.steps[1:])
    split_size = WHOLE_FILE if app.whole_files else options.split_size
    splits = make_splits(list(inputs), split_size)
    checked = check_side_files(options.files)  # before the output folder: nothing changed on bad input
    side_files = [p.SideFile(name, path, size, fingerprint(path)) for name, path, size in checked]
    if app.total_order and n_reduce:
        with side_files_here(side_files):  # the sample runs the map, which may open them
            app = with_total_order(app, splits, n_reduce)
    if state_dir is None:
        folder = output.prepare_output(output_dir, options.overwrite)
        return PreparedJob(app, splits, folder.resolve(), split_size, n_reduce, side_files, later_steps)
    from mapreduce.coordinator import recovery

    resolved = Path(output_dir).resolve()
    stages = [n_reduce, *later_steps] if n_reduce else []
    placing = f"{options.compress.value} {app.partition!r}" if app.total_order else options.compress.value
    identity = recovery.job_identity(app.name, splits, stages, resolved, placing)
    resuming = recovery.has_journal(state_dir)
    if not resuming:
        output.prepare_output(output_dir, options.overwrite)  # refused before the folder is marked
    try:
        state = recovery.JobState(state_dir, identity)
    except MapReduceError as exc:
        raise UsageError(str(exc)) from None
    if resuming and state.recovered.finished is None:
        output.prepare_output(output_dir, overwrite=True)  # its own parts: kept, replaced as they commit
    return PreparedJob(app, splits, resolved, split_size, n_reduce, side_files, later_steps, state)


def run_seq(
    app_ref: str | App, inputs: Sequence[str], output_dir: str | Path, options: JobOptions = JobOptions()
) -> Counters:
    job = prepare(app_ref, inputs, output_dir, options)
    resolved = [str(Path(i).resolve()) for i in inputs]  # here, before moving to the side files' folder
    with side_files_here(job.side_files):
        return run_sequential(
            job.app,
            resolved,
            job.output_dir,
            [job.n_reduce, *job.later_steps] if job.n_reduce else [],
            job.split_size,
            options.skip_bad_records,
            options.compress,
        )


@contextmanager
def side_files_here(files: Sequence[p.SideFile]) -> Iterator[None]:
    """Run the block in a folder holding a link to each side file (as a worker's task folder
    does), so that tasks open them by name; back to the current folder after."""
    if not files:
        yield
        return
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="mapreduce-seq-") as folder:
        for f in files:
            os.symlink(f.path, os.path.join(folder, f.name))
        os.chdir(folder)
        try:
            yield
        finally:
            os.chdir(here)


def serve(
    app_ref: str | App,
    inputs: Sequence[str],
    output_dir: str | Path,
    bind: str,
    options: JobOptions = JobOptions(),
    progress: Progress | None = None,
    on_ready=None,
    events: Path | None = None,
    keys: Keys | None = None,
    insecure: bool = False,
    observe: Observer | None = None,
    state_dir: Path | None = None,
) -> JobResult:
    """Serve one job to workers that connect to ``bind``; raise JobFailed if it fails. With
    ``state_dir``: journalled there, and resumed from there if a coordinator before this one
    did not finish it."""
    check_exposure("the coordinator's address", endpoint_host(bind), keys, insecure)  # ipc:// counts as loopback
    job = prepare(app_ref, inputs, output_dir, options, state_dir)
    if job.state is not None and job.state.recovered.finished is not None:
        job.state.close()
        return already_finished(job)
    try:
        try:
            coordinator = job.coordinator(options, bind, progress=progress, events=events, keys=keys, observe=observe)
        except Exception as exc:  # zmq.ZMQError for a bad or busy address
            raise UsageError(f"cannot bind {bind}: {exc}") from exc
        if on_ready is not None:
            on_ready(coordinator.address)
        return _finished(coordinator.run())
    finally:
        if job.state is not None:
            job.state.close()


def run_local(
    app_ref: str | App,
    inputs: Sequence[str],
    output_dir: str | Path,
    workers: int,
    options: JobOptions = JobOptions(),
    progress: Progress | None = None,
    keep_logs: bool = False,
    events: Path | None = None,
    observe: Observer | None = None,
) -> JobResult:
    """Run a job on a coordinator in this process and ``workers`` local worker processes."""
    if workers < 1:
        raise UsageError(f"--workers must be at least 1, got {workers}")
    job = prepare(app_ref, inputs, output_dir, options)
    logs = Path(tempfile.mkdtemp(prefix="mapreduce-logs-")) if keep_logs else None
    # The workers start first and boot while this process loads the coordinator.
    with local_cluster(workers, options.heartbeat_interval, keep_logs=logs) as local:
        coordinator = job.coordinator(
            options, local.address, progress=progress, events=events, keys=local.keys, observe=observe
        )
        result = local.serve(coordinator)
        if not result.ok and logs is None:
            tail = local.cluster.log_tail()
            if tail:
                log.info("worker logs:\n%s", tail)
    if logs is not None:
        log.warning("worker logs kept in %s", logs)
    return _finished(result)


@dataclass(frozen=True)
class LocalRun:
    """Workers on this machine and where their coordinator must listen for them."""

    address: str  # a private IPC socket
    keys: Keys  # the coordinator's keys, made for this run
    cluster: LocalCluster

    def serve(self, coordinator: Coordinator) -> JobResult:
        """Run ``coordinator`` (bound to ``address``) with these workers."""
        self.cluster.attach(coordinator)
        try:
            return coordinator.run()
        finally:
            self.cluster.release_others(coordinator.told_pids)


@contextmanager
def local_cluster(
    workers: int,
    heartbeat_interval: float,
    worker_args: Sequence[str] = (),
    keep_logs: Path | None = None,
    stop_grace: float = 3.0,
) -> Iterator[LocalRun]:
    """Start ``workers`` local worker processes for a coordinator that this process binds
    next: the one wiring of `mapreduce run` and the crash test. Keys are made for the run,
    so even on loopback no other local user can join or listen in; the workers connect to a
    socket in a private folder. At the end the workers are stopped (``stop_grace`` seconds
    for each step) and their files removed, but their logs, moved to ``keep_logs`` if given."""
    with tempfile.TemporaryDirectory(prefix="mapreduce-run-") as private:
        key_dir = Path(private) / "keys"
        generate(key_dir)
        address = private_endpoint(private)
        extra = ["--heartbeat-interval", str(heartbeat_interval), "--key-dir", str(key_dir), *worker_args]
        cluster = LocalCluster(address, workers, extra, keep_logs=keep_logs is not None).start()
        try:
            yield LocalRun(address, load(key_dir, "coordinator"), cluster)
        except BaseException:
            stop_grace = min(stop_grace, 0.5)
            raise
        finally:
            cluster.stop(grace=stop_grace)
            if keep_logs is not None:
                shutil.rmtree(keep_logs, ignore_errors=True)
                shutil.move(str(cluster.logs), str(keep_logs))
            cluster.keep_logs = False
            cluster.cleanup()


def private_endpoint(folder: str) -> str:
    """An IPC endpoint inside ``folder`` (a private temporary folder). Where the path is
    longer than a socket path may be, an abstract socket (Linux), which the run's keys guard."""
    path = os.path.join(folder, "coordinator")
    return f"ipc://{path}" if len(path.encode()) <= 100 else f"ipc://@{os.path.basename(folder)}"


def already_finished(job: PreparedJob) -> JobResult:
    """The result of a job whose state folder says it succeeded already (nothing runs)."""
    from mapreduce.coordinator.loop import JobResult
    from mapreduce.wire.events import Tally

    message = f"already finished: {job.state.recovered.finished}"
    log.warning("the job in %s %s", job.state.folder, message)
    return JobResult(True, message, Tally(), 0.0, len(job.splits), job.n_reduce)


def _finished(result: JobResult) -> JobResult:
    if not result.ok:
        raise JobFailed(result.message)
    return result
