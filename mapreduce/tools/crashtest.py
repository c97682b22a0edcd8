"""Crash testing: run one job again and again while workers are killed and paused.

``mapreduce crashtest`` runs the job once with ``seq`` (the oracle), once on a local
cluster with no injected faults (the baseline time), then for each round on a fresh
local cluster while a chaos thread, when the first task finishes and then at seeded
random intervals around ``kill_every``, either SIGKILLs a random live worker or
SIGSTOPs one for longer than the worker timeout and then SIGCONTs it. The cluster replaces every killed or paused
worker, so it keeps its size. Each round's output must equal the oracle's byte for
byte. The coordinator's event log of each round gives the summary columns and, for
each SIGKILL, the detection latency: from the signal to the coordinator's first
``task_lost`` or ``worker_dead`` event for that process's incarnation (both on the
monotonic clock; the coordinator runs in this process).

The job is a Python app (a reference, loaded as ``mapreduce run`` loads it) or an ``App``
built beforehand, such as a Hadoop Streaming job's (``mapreduce.streaming.streaming_app``):
the oracle, the baseline and every round run that same app, with the same ``--file``s.

The pure parts (counting events, detection latencies, comparing outputs, formatting)
are functions of their inputs, so they are tested without processes.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mapreduce import defaults, runner
from mapreduce.cluster import LocalCluster
from mapreduce.coordinator.loop import JobResult
from mapreduce.counters import Counters
from mapreduce.errors import JobFailed, UsageError
from mapreduce.inputs import check_side_files
from mapreduce.job import App, load_app
from mapreduce.tools.corpus import write_corpus
from mapreduce.tools.faults import Fault, FaultKind, faults_beside, write_faults
from mapreduce.wire.events import (
    Event,
    JobFinished,
    Tally,
    TaskFinished,
    TaskLost,
    WorkerDead,
    WorkerJoined,
    WorkerLeft,
    parse,
    read_events,
)

log = logging.getLogger(__name__)

CORPUS_FILES = 8
PAUSE_EXTRA = (0.5, 2.0)  # a pause lasts the worker timeout plus this many seconds (uniform)
INTERVAL_SPREAD = (0.5, 1.5)  # each gap between faults is kill_every times a uniform draw from this
# How long the coordinator waits for workers' goodbyes, and the cluster for workers to exit,
# once a job is over: live workers answer in milliseconds, killed ones never do.
GOODBYE_GRACE = 1.0


# ---- options and results --------------------------------------------------------


@dataclass(frozen=True)
class CrashTestOptions:
    app: str | App = "wordcount"  # a Python app's reference, or an app built already (a streaming job)
    inputs: tuple[str, ...] = ()  # none: generate a corpus of corpus_size bytes
    workers: int = 4
    rounds: int = 3
    kill_every: float = 1.0
    pause_probability: float = 0.2
    seed: int = 0
    n_reduce: int | None = None  # None: the app's default (see runner.JobOptions)
    worker_timeout: float = 2.0
    heartbeat_interval: float = 0.5
    corpus_size: int = 20 * 1024 * 1024
    split_size: int = 1024 * 1024
    params: Mapping[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()  # --file: side files shipped to every worker's task folder
    events_dir: Path | None = None  # keep each round's event log and worker logs here

    def check(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")
        if not self.kill_every > 0:
            raise UsageError(f"--kill-every must be more than 0 seconds, got {self.kill_every}")
        if not 0 <= self.pause_probability <= 1:
            raise UsageError(f"--pause-probability must be from 0 to 1, got {self.pause_probability}")
        check_timing_and_corpus(self)

    def job_options(self) -> runner.JobOptions:
        return runner.JobOptions(
            n_reduce=self.n_reduce,
            split_size=self.split_size,
            params=dict(self.params),
            files=self.files,
            heartbeat_interval=self.heartbeat_interval,
            worker_timeout=self.worker_timeout,
        )

    @property
    def job_name(self) -> str:
        return self.app if isinstance(self.app, str) else self.app.name

    def longest_pause(self) -> float:
        return self.worker_timeout + PAUSE_EXTRA[1]


@dataclass(frozen=True)
class Detection:
    """Detection latencies of SIGKILLs (seconds), and how many kills were never detected."""

    latencies: tuple[float, ...] = ()
    undetected: int = 0


@dataclass(frozen=True)
class RoundResult:
    number: int  # 0: the baseline run without injected faults
    seconds: float
    faults: tuple[Fault, ...]
    tally: Tally  # what the coordinator's event log counted
    detection: Detection
    problem: str | None  # None: the job succeeded and its output equals the oracle's
    job_failed: bool = False

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def verdict(self) -> str:
        return "OK" if self.ok else "FAIL" if self.job_failed else "DIFF"

    @property
    def kills(self) -> int:
        return sum(1 for f in self.faults if f.kind is FaultKind.KILL)

    @property
    def pauses(self) -> int:
        return sum(1 for f in self.faults if f.kind is FaultKind.PAUSE)


@dataclass(frozen=True)
class CrashTestReport:
    baseline: RoundResult
    rounds: tuple[RoundResult, ...]

    @property
    def ok(self) -> bool:
        return self.baseline.ok and all(r.ok for r in self.rounds)

    def first_problem(self) -> str | None:
        for result in (self.baseline, *self.rounds):
            if not result.ok:
                where = "the baseline run" if result.number == 0 else f"round {result.number}"
                return f"{where}: {result.problem}"
        return None

    def overhead(self) -> float:
        """The median round's job time over the baseline's."""
        return statistics.median(r.seconds for r in self.rounds) / self.baseline.seconds

    def latencies(self) -> list[float]:
        return [latency for r in self.rounds for latency in r.detection.latencies]

    def undetected(self) -> int:
        return sum(r.detection.undetected for r in self.rounds)


# ---- reading event logs (pure) ----------------------------------------------------


def job_seconds(events: Iterable[Event], started: float, fallback: float) -> float:
    """From the coordinator's start to its job_finished event: the output is committed by then.
    (The coordinator returns later: it waits a little for goodbyes, in vain from a killed worker.)"""
    finished = [event.t for event in events if isinstance(event, JobFinished)]
    return finished[-1] - started if finished else fallback


def detection_latencies(events: Iterable[Event], faults: Iterable[Fault]) -> Detection:
    """For each SIGKILL: the time to the coordinator's first task_lost or worker_dead event
    for the incarnation the killed process had (its latest worker_joined before the kill)."""
    joins: list[tuple[float, int, int]] = []  # (t, pid, worker)
    detected: dict[int, float] = {}  # worker -> first task_lost/worker_dead
    for event in events:
        if isinstance(event, WorkerJoined):
            joins.append((event.t, event.pid, event.worker))
        elif isinstance(event, TaskLost | WorkerDead):
            detected.setdefault(event.worker, event.t)
    latencies, undetected = [], 0
    for kill in (f for f in faults if f.kind is FaultKind.KILL):
        incarnations = [worker for t, pid, worker in joins if pid == kill.pid and t <= kill.time]
        when = detected.get(incarnations[-1]) if incarnations else None
        if when is None or when < kill.time:
            undetected += 1
        else:
            latencies.append(when - kill.time)
    return Detection(tuple(latencies), undetected)


class EventTail:
    """Reads the new complete events of an event log that is still being written."""

    def __init__(self, path: Path):
        self.path = path
        self._offset = 0
        self._partial = b""

    def read(self) -> list[Event]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return [parse(json.loads(line)) for line in lines if line.strip()]


class LiveIncarnations:
    """Which worker processes the coordinator counts as alive, from its event log."""

    def __init__(self) -> None:
        self._latest: dict[int, int] = {}  # pid -> its latest worker id
        self._gone: set[int] = set()

    def update(self, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, WorkerJoined):
                self._latest[event.pid] = event.worker
            elif isinstance(event, WorkerDead | WorkerLeft):
                self._gone.add(event.worker)

    def pids(self) -> set[int]:
        return {pid for pid, worker in self._latest.items() if worker not in self._gone}


# ---- comparing outputs (pure) -----------------------------------------------------


def compare_outputs(expected: Path, actual: Path) -> str | None:
    """None if both folders hold the same files with the same bytes, else what differs first."""
    wanted, found = sorted(p.name for p in expected.iterdir()), sorted(p.name for p in actual.iterdir())
    for name in wanted:
        if name not in found:
            return f"{name} is missing"
    for name in found:
        if name not in wanted:
            return f"{name} should not be there"
    for name in wanted:
        a, b = (expected / name).read_bytes(), (actual / name).read_bytes()
        if a != b:
            return f"{name} differs from the oracle: {_first_difference(a, b)}"
    return None


def compare_counters(expected: Counters, actual: Counters) -> str | None:
    """None if the job's counters equal those of the run without faults, else the first that differs."""
    for key in sorted(set(expected) | set(actual)):
        if expected.get(key, 0) != actual.get(key, 0):
            group, counter = key
            return (
                f"counter {group}.{counter} is {actual.get(key, 0)}, {expected.get(key, 0)} without faults "
                "(a failed, lost or superseded attempt counted, or a successful one did not)"
            )
    return None


def _first_difference(expected: bytes, actual: bytes) -> str:
    a, b = expected.split(b"\n"), actual.split(b"\n")
    for number, (x, y) in enumerate(zip(a, b), 1):
        if x != y:
            return f"line {number} is {y[:80]!r}, expected {x[:80]!r}"
    return f"{len(actual)} bytes, expected {len(expected)} ({len(b) - 1} lines, expected {len(a) - 1})"


# ---- formatting (pure) ------------------------------------------------------------

COLUMNS = ("round", "seconds", "kills", "pauses", "dead", "lost", "rerun", "backups", "fenced", "fetchfail", "result")
_WIDTHS = (5, 8, 6, 7, 5, 5, 6, 8, 7, 10)


def format_header() -> str:
    return "  ".join(name.rjust(width) for name, width in zip(COLUMNS, _WIDTHS)) + "  " + COLUMNS[-1]


def format_row(result: RoundResult) -> str:
    return _row(
        str(result.number) if result.number else "base",
        result.seconds,
        result.kills,
        result.pauses,
        result.tally,
        result.verdict,
    )


def format_totals(report: CrashTestReport) -> str:
    rounds = report.rounds
    tally = sum((r.tally for r in rounds), Tally())
    matched = sum(1 for r in rounds if r.ok)
    return _row(
        "all",
        sum(r.seconds for r in rounds),
        sum(r.kills for r in rounds),
        sum(r.pauses for r in rounds),
        tally,
        f"{matched}/{len(rounds)} OK",
    )


def _row(label: str, seconds: float, kills: int, pauses: int, tally: Tally, verdict: str) -> str:
    counted = (tally.workers_dead, tally.lost_attempts, tally.maps_rerun, tally.backups, tally.fenced)
    cells = (label, f"{seconds:.2f}", str(kills), str(pauses), *map(str, (*counted, tally.fetch_failures)))
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, _WIDTHS)) + "  " + verdict


def format_overhead(report: CrashTestReport) -> str:
    median = statistics.median(r.seconds for r in report.rounds)
    return (
        f"job time: median round {median:.2f} s, baseline without faults {report.baseline.seconds:.2f} s: "
        f"overhead {report.overhead():.2f}x"
    )


def format_latency(report: CrashTestReport, worker_timeout: float) -> str:
    latencies = report.latencies()
    missed = report.undetected()
    tail = f"; {missed} kill(s) not detected before the job finished without them" if missed else ""
    if not latencies:
        return f"detection latency: {'no SIGKILL was detected' if missed else 'no SIGKILL was sent'}{tail}"
    return (
        f"detection latency over {len(latencies)} SIGKILLs: median {statistics.median(latencies):.2f} s, "
        f"max {max(latencies):.2f} s (worker timeout {worker_timeout:g} s){tail}"
    )


# ---- the chaos thread -------------------------------------------------------------


class Chaos:
    """Kills or pauses a random live worker when the first task finishes, then at random
    intervals around ``kill_every`` until stopped.

    Only processes whose current incarnation the coordinator counts as alive are
    picked (known from the event log), never a paused one. A paused worker is
    resumed after ``pause_seconds``; the cluster replaces killed and paused workers.
    """

    def __init__(
        self,
        cluster: LocalCluster,
        events: Path,
        rng: random.Random,
        kill_every: float,
        pause_probability: float,
        pause_seconds: Callable[[random.Random], float],
    ):
        self.cluster = cluster
        self.rng = rng
        self.kill_every = kill_every
        self.pause_probability = pause_probability
        self.pause_seconds = pause_seconds
        self.faults: list[Fault] = []
        self._tail = EventTail(events)
        self._alive = LiveIncarnations()
        self._resume_at: list[tuple[float, subprocess.Popen]] = []  # (monotonic time, process)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> tuple[Fault, ...]:
        """Stop injecting faults (paused workers stay paused: the cluster kills them when it stops)."""
        self._stop.set()
        self._thread.join()
        return tuple(self.faults)

    def _run(self) -> None:
        try:
            if not self._wait_for_first_task():
                return
            next_fault = time.monotonic()
            while not self._stop.is_set():
                now = time.monotonic()
                self._resume_due(now)
                if now >= next_fault:
                    self._strike()
                    next_fault = now + self._interval()
                wake = min([next_fault, *(when for when, _ in self._resume_at)])
                self._stop.wait(max(0.0, wake - time.monotonic()))
        except Exception:
            log.exception("the chaos thread failed; no more faults this round")

    def _wait_for_first_task(self) -> bool:
        """The first fault strikes when the first task finishes, so that even a short job
        gets one (a job's first moments are only processes starting up)."""
        while not self._stop.is_set():
            events = self._tail.read()
            self._alive.update(events)
            if any(isinstance(event, TaskFinished) for event in events):
                return True
            self._stop.wait(0.02)
        return False

    def _interval(self) -> float:
        return self.kill_every * self.rng.uniform(*INTERVAL_SPREAD)

    def _strike(self) -> None:
        self._alive.update(self._tail.read())
        alive = self._alive.pids()
        candidates = sorted((p for p in self.cluster.active_workers() if p.pid in alive), key=lambda p: p.pid)
        pause = self.rng.random() < self.pause_probability
        if not candidates:
            log.info("chaos: no live worker to %s", "pause" if pause else "kill")
            return
        victim = self.rng.choice(candidates)
        if pause:
            seconds = self.pause_seconds(self.rng)
            sent = self.cluster.pause_worker(victim)
            self._resume_at.append((sent + seconds, victim))
            self.faults.append(Fault(FaultKind.PAUSE, victim.pid, sent))
            log.info("chaos: paused worker pid %d for %.1f s", victim.pid, seconds)
        else:
            sent = self.cluster.kill_worker(victim)
            self.faults.append(Fault(FaultKind.KILL, victim.pid, sent))
            log.info("chaos: killed worker pid %d", victim.pid)

    def _resume_due(self, now: float) -> None:
        due = [(when, process) for when, process in self._resume_at if when <= now]
        for item in due:
            self._resume_at.remove(item)
            self.cluster.resume_worker(item[1])
            log.info("chaos: resumed worker pid %d", item[1].pid)


# ---- running rounds ---------------------------------------------------------------


@dataclass(frozen=True)
class Workspace:
    """Where one crash test keeps its files: all removed at the end, but the kept logs."""

    root: Path
    oracle: Path
    events_dir: Path
    kept: Path | None  # --events-dir: event logs and worker logs stay here

    @staticmethod
    def create(events_dir: Path | None) -> Workspace:
        if events_dir is not None:
            try:
                events_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UsageError(f"cannot create --events-dir {str(events_dir)!r}: {exc.strerror}") from exc
        root = Path(tempfile.mkdtemp(prefix="mapreduce-crashtest-"))
        return Workspace(root, root / "oracle", events_dir or root / "events", events_dir)

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def check_timing_and_corpus(options) -> None:
    """The checks every crash test makes of its options' timeouts and generated corpus."""
    if options.worker_timeout <= options.heartbeat_interval:
        raise UsageError(
            f"--worker-timeout ({options.worker_timeout} s) must exceed --heartbeat-interval "
            f"({options.heartbeat_interval} s)"
        )
    if not options.inputs and options.corpus_size < 1:
        raise UsageError(f"--corpus-size must be at least 1 byte, got {options.corpus_size}")


def inputs_and_oracle(options, name: str, workspace: Workspace, on_stage: Callable[[str], None]) -> list[str]:
    """A crash test's inputs (given, or a corpus generated in the workspace), and the sequential
    oracle's output of them in ``workspace.oracle``."""
    if options.inputs:
        inputs = [str(Path(i).resolve()) for i in options.inputs]
    else:
        size = options.corpus_size
        on_stage(f"generating a {size / 2**20:.1f} MiB corpus")
        inputs = [str(p) for p in write_corpus(workspace.root / "corpus", size, CORPUS_FILES, seed=options.seed)]
    on_stage(f"oracle: mapreduce seq {name} over {len(inputs)} input(s)")
    started = time.monotonic()
    runner.run_seq(options.app, inputs, workspace.oracle, options.job_options())
    on_stage(f"oracle done in {time.monotonic() - started:.2f} s")
    return inputs


class CrashTest:
    def __init__(self, options: CrashTestOptions):
        options.check()
        # A bad app, parameter or side file is reported before any work.
        if isinstance(options.app, str):
            load_app(options.app, options.params)
        check_side_files(options.files)
        self.options = options

    def run(
        self, on_result: Callable[[RoundResult], None] = lambda result: None, on_stage: Callable[[str], None] = log.info
    ) -> CrashTestReport:
        """Oracle, baseline, then every round; ``on_result`` hears of each run as it ends."""
        workspace = Workspace.create(self.options.events_dir)
        try:
            inputs = inputs_and_oracle(self.options, self.options.job_name, workspace, on_stage)
            on_stage("baseline run without injected faults")
            baseline = self._round(0, inputs, workspace, chaos=False)
            on_result(baseline)
            if not baseline.ok:
                raise JobFailed(f"the baseline run without injected faults went wrong: {baseline.problem}")
            rounds = []
            for number in range(1, self.options.rounds + 1):
                rounds.append(self._round(number, inputs, workspace, True, baseline.tally.counters))
                on_result(rounds[-1])
            return CrashTestReport(baseline, tuple(rounds))
        finally:
            workspace.remove()

    def _round(
        self,
        number: int,
        inputs: Sequence[str],
        workspace: Workspace,
        chaos: bool,
        expected_counters: Counters | None = None,
    ) -> RoundResult:
        """One run of the job; its output must equal the oracle's and (given
        ``expected_counters``, the run's without faults) its counters must equal those."""
        name = f"round-{number:02d}" if number else "baseline"
        out, events = workspace.root / name, workspace.events_dir / f"{name}.jsonl"
        events.parent.mkdir(parents=True, exist_ok=True)
        job = runner.prepare(self.options.app, inputs, out, self.options.job_options())
        rng = random.Random(f"{self.options.seed}:{number}") if chaos else None
        logs = workspace.kept / f"{name}-logs" if workspace.kept is not None else None
        run = self._run_job(job, events, rng, logs)
        problem = compare_outputs(workspace.oracle, out) if run.result.ok else f"the job failed: {run.result.message}"
        shutil.rmtree(out, ignore_errors=True)
        log_events = list(read_events(events))
        tally = Tally.of(log_events)
        if problem is None and expected_counters is not None:
            problem = compare_counters(expected_counters, tally.counters)
        # The faults beside the event log, on its clock: `mapreduce report` marks them on the timeline.
        write_faults(faults_beside(events), run.faults)
        return RoundResult(
            number,
            job_seconds(log_events, run.started, run.result.seconds),
            run.faults,
            tally,
            detection_latencies(log_events, run.faults),
            problem,
            job_failed=not run.result.ok,
        )

    def _run_job(
        self, job: runner.PreparedJob, events: Path, rng: random.Random | None, keep_logs: Path | None
    ) -> JobRun:
        """The job on a fresh local cluster, wired as `mapreduce run` wires it (a private IPC
        socket, keys made for the run), with a chaos thread if given its randomness."""
        opts = self.options
        faults: tuple[Fault, ...] = ()
        with runner.local_cluster(
            opts.workers, opts.heartbeat_interval, self._worker_args(), keep_logs, stop_grace=GOODBYE_GRACE
        ) as local:
            coordinator = job.coordinator(
                opts.job_options(), local.address, goodbye_grace=GOODBYE_GRACE, events=events, keys=local.keys
            )
            chaos = None
            if rng is not None:
                chaos = Chaos(local.cluster, events, rng, opts.kill_every, opts.pause_probability, self._pause_seconds)
                chaos.start()
            try:
                started = time.monotonic()
                result = local.serve(coordinator)
            finally:
                if chaos is not None:
                    faults = chaos.stop()
        return JobRun(result, started, faults)

    def _worker_args(self) -> list[str]:
        # A worker must outlive its longest pause without giving up on the coordinator.
        patience = max(defaults.COORDINATOR_TIMEOUT, 2 * self.options.longest_pause())
        return ["--coordinator-timeout", str(patience)]

    def _pause_seconds(self, rng: random.Random) -> float:
        return self.options.worker_timeout + rng.uniform(*PAUSE_EXTRA)


@dataclass(frozen=True)
class JobRun:
    result: JobResult
    started: float  # monotonic, just before the coordinator started
    faults: tuple[Fault, ...]
