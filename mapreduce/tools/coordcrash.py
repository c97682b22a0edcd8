"""Crash testing the coordinator: `mapreduce crashtest --kill-coordinator`.

Each round runs the job as separate processes, as on a real cluster: a coordinator
(``mapreduce coordinator ... --state-dir DIR``, its journal in the round's state folder)
and ``--workers`` workers started apart (``mapreduce worker --connect ADDR
--coordinator-timeout 60``) on a private IPC socket of the workspace. The coordinator is
SIGKILLed at the round's kill point, then started again with the same command (each run with
its own event log: ``events-1.jsonl``, ``events-2.jsonl``...), maybe killed once more, until
it exits 0. The kill points rotate round by round (``--kill-points`` picks them):

  mid-map         once a seeded random number of maps (1 to maps-1) has finished
  mid-reduce      once the first reduce is assigned and a seeded random number of
                  partitions (0 to reduces-2) is committed
  after-commit:N  the coordinator kills itself after the N-th partition's commit is
                  journalled (MAPREDUCE_CRASH_COORDINATOR, given to the round's first run only)
  before-success  it kills itself after the last commit is journalled, before _SUCCESS
  after-map:N     it kills itself after the N-th finished map is journalled
  zombie          the coordinator is SIGSTOPped mid-map; a new one starts on the same state
                  folder with fresh workers on another socket and finishes the job; then the
                  old one is SIGCONTed: it must exit non-zero, saying it was superseded, and
                  leave the output folder (names, sizes, mtimes) and the journal as they were
                  (paused in the middle of a commit or journal write, it holds the folder's
                  lock: the new one then SIGKILLs it, the fencing of journal.Epochs)

A round with a second kill (seeded: one or two kills) kills the second run once a seeded
number (1 to 3) of its tasks has finished, if it has not finished by then.

Each round's output must equal the oracle's (``mapreduce seq``, once) byte for byte, with
``_SUCCESS`` and no temp file. After each restart the harness counts, from the journal as
the killed coordinator left it and the new run's event log, the tasks the new run ran again:
(a) unfinished at the kill (neither journalled done nor committed), (b) journalled done but
whose output was lost (a ``map_rerun`` event for it in the new run, or the worker that held
it never joined the new run), (c) needless: journalled done or committed and still run
again. A committed partition run again fails the round; needless maps are reported.

The pure parts (kill planning, kill triggers, journal states, rerun counting, formatting)
are functions of their inputs, tested without processes.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mapreduce import journal, runner
from mapreduce.errors import UsageError
from mapreduce.output import SUCCESS, is_temp_name
from mapreduce.tools.crashtest import (
    EventTail,
    Workspace,
    check_timing_and_corpus,
    compare_outputs,
    inputs_and_oracle,
)
from mapreduce.tools.faults import Fault, FaultKind, faults_beside, write_faults
from mapreduce.wire.events import (
    Event,
    JobFinished,
    JobStarted,
    MapRerun,
    OutputCommitted,
    TaskAssigned,
    TaskFinished,
    TaskKind,
    WorkerJoined,
    parse,
)

log = logging.getLogger(__name__)

CRASH_ENV = "MAPREDUCE_CRASH_COORDINATOR"
MID_MAP, MID_REDUCE, ZOMBIE, QUEUED = "mid-map", "mid-reduce", "zombie", "queued"
KILL_POINTS = (MID_MAP, MID_REDUCE, "after-commit:1", "before-success", ZOMBIE, QUEUED)  # the default rotation
_HOOK = re.compile(r"^(after-map:[1-9]\d*|after-commit:[1-9]\d*|before-success)$")
SECOND_KILL_TASKS = (1, 3)  # a second kill comes once this many (uniform) tasks of the new run finished
WORKER_PATIENCE = 60.0  # the workers' --coordinator-timeout: they outlive every restart of a round
ZOMBIE_EXIT_WAIT = 60.0  # how long a SIGCONTed superseded coordinator may take to notice and exit
POLL = 0.02
STARTUP_WAIT = 30.0  # a new coordinator has started its job (job_started) within this, or it is kept out
ORPHAN_GRACE = 15.0  # a coordinator still running this long after every worker exited has none left to finish with


def is_hook(point: str) -> bool:
    """Whether the coordinator reaches this kill point itself (MAPREDUCE_CRASH_COORDINATOR)."""
    return bool(_HOOK.match(point))


def parse_kill_points(text: str) -> tuple[str, ...]:
    """``--kill-points``: comma-separated kill points, in the order rounds take them."""
    points = tuple(p.strip() for p in text.split(",") if p.strip())
    if not points:
        raise UsageError("--kill-points names no kill point")
    for point in points:
        if point not in (MID_MAP, MID_REDUCE, ZOMBIE, QUEUED) and not is_hook(point):
            raise UsageError(
                f"unknown kill point {point!r}: give {MID_MAP}, {MID_REDUCE}, after-map:N, after-commit:N, "
                f"before-success, {ZOMBIE} or {QUEUED}"
            )
    return points


# ---- options ------------------------------------------------------------------------


@dataclass(frozen=True)
class CoordCrashOptions:
    app: str = "wordcount"  # a Python app's reference, as `mapreduce coordinator` takes it
    inputs: tuple[str, ...] = ()  # none: generate a corpus of corpus_size bytes
    workers: int = 2
    rounds: int = 5
    seed: int = 0
    kill_points: tuple[str, ...] = KILL_POINTS
    max_kills: int = 2  # each round kills its coordinator 1 to max_kills times (seeded)
    n_reduce: int | None = None
    split_size: int = 1024 * 1024
    params: Mapping[str, str] = field(default_factory=dict)
    files: tuple[str, ...] = ()
    worker_timeout: float = 2.0
    heartbeat_interval: float = 0.5
    corpus_size: int = 20 * 1024 * 1024
    events_dir: Path | None = None  # keep each round's event logs, journals' copies and process logs here
    run_timeout: float = 300.0  # one coordinator run longer than this fails the round
    # False: the coordinator runs without --state-dir (and with --overwrite), so each restart
    # starts the job over. Only a check of the harness itself, on a coordinator without a journal.
    journal: bool = True

    def check(self) -> None:
        if self.workers < 1:
            raise UsageError(f"--workers must be at least 1, got {self.workers}")
        if self.rounds < 1:
            raise UsageError(f"--rounds must be at least 1, got {self.rounds}")
        if self.max_kills < 1:
            raise UsageError(f"a round kills its coordinator at least once, got at most {self.max_kills}")
        check_timing_and_corpus(self)
        for point in self.kill_points:
            parse_kill_points(point)

    def job_args(self) -> list[str]:
        """The job's own options on a command line (`coordinator` or `submit`)."""
        args = [] if self.n_reduce is None else ["--reduce", str(self.n_reduce)]
        for name, value in self.params.items():
            args += ["--param", f"{name}={value}"]
        for path in self.files:
            args += ["--file", str(Path(path).resolve())]
        return args

    def job_options(self) -> runner.JobOptions:
        return runner.JobOptions(n_reduce=self.n_reduce, split_size=self.split_size, params=dict(self.params))


# ---- planning kills (pure) -----------------------------------------------------------


@dataclass(frozen=True)
class KillPlan:
    point: str  # the round's kill point (see the module's doc)
    kills: int  # kills planned (0 for a zombie round: it pauses)
    draw: float  # uniform in [0, 1): where a mid-map or mid-reduce kill lands
    second_tasks: int  # a second kill: once this many tasks of the second run have finished

    @property
    def hook(self) -> str | None:
        """MAPREDUCE_CRASH_COORDINATOR for the round's first run, if the coordinator kills itself."""
        return self.point if is_hook(self.point) else None


def plan_round(number: int, points: Sequence[str], rng: random.Random, max_kills: int = 2) -> KillPlan:
    """Round ``number`` (from 1) takes the next kill point of the rotation; the rng (seeded
    per round) draws how many kills and where they land."""
    point = points[(number - 1) % len(points)]
    kills = 0 if point == ZOMBIE else rng.randint(1, max_kills)
    return KillPlan(point, kills, rng.random(), rng.randint(*SECOND_KILL_TASKS))


def mid_map_target(draw: float, maps: int) -> int:
    """How many maps must have finished before a mid-map kill: 1 to maps - 1 (1 if one map)."""
    return 1 + min(int(draw * max(1, maps - 1)), max(0, maps - 2))


def mid_reduce_target(draw: float, reduces: int) -> int:
    """How many partitions must be committed before a mid-reduce kill: 0 to reduces - 2 (0
    for one reduce), so that a reduce is still to commit when the kill lands."""
    return min(int(draw * max(1, reduces - 1)), max(0, reduces - 2))


class Trigger:
    """Says, from a run's events as they come, when a planned kill is due."""

    def __init__(self, point: str, draw: float = 0.0, tasks: int = 1):
        self.point, self.draw, self.tasks = point, draw, tasks
        self.target: int | None = tasks if point not in (MID_MAP, MID_REDUCE) else None
        self._maps: set[int] = set()
        self._commits: set[int] = set()
        self._finished = 0
        self._reducing = False

    def update(self, events: Iterable[Event]) -> bool:
        """Feed new events; True once the kill is due."""
        for event in events:
            if isinstance(event, JobStarted) and self.target is None:
                if self.point == MID_MAP:
                    self.target = mid_map_target(self.draw, event.maps)
                elif self.point == MID_REDUCE:
                    self.target = mid_reduce_target(self.draw, event.reduces)
            elif isinstance(event, TaskFinished):
                self._finished += 1
                if event.phase is TaskKind.MAP:
                    self._maps.add(event.task)
            elif isinstance(event, TaskAssigned) and event.phase is TaskKind.REDUCE:
                self._reducing = True
            elif isinstance(event, OutputCommitted):
                self._commits.add(event.partition)
        return self.due

    @property
    def due(self) -> bool:
        if self.target is None:
            return False
        if self.point == MID_MAP:
            return len(self._maps) >= self.target
        if self.point == MID_REDUCE:
            return self._reducing and len(self._commits) >= self.target
        return self._finished >= self.target

    def describe(self) -> str:
        if self.point == MID_MAP:
            return f"after {self.target} finished maps"
        if self.point == MID_REDUCE:
            return f"in the reduces, after {self.target} commits"
        return f"after {self.target} finished tasks"


# ---- what the journal says (pure) ----------------------------------------------------


@dataclass(frozen=True)
class JournalState:
    """The job's journal as a killed coordinator left it: finished outputs that feed a next
    stage (stage, task) with the pid of the worker holding each, and committed partitions."""

    done: Mapping[tuple[int, int], int | None] = field(default_factory=dict)
    committed: frozenset[int] = frozenset()
    epochs: tuple[int, ...] = ()
    finished: bool | None = None  # the job's end as journalled: None if not yet

    @staticmethod
    def of(records: Iterable[dict]) -> JournalState:
        """From ``journal.read_records(...)[0]`` (the header, without "r", is skipped)."""
        done: dict[tuple[int, int], int | None] = {}
        committed: set[int] = set()
        epochs: list[int] = []
        finished = None
        for r in records:
            kind = r.get("r")
            if kind == "done":
                worker = r.get("worker")
                pid = worker.get("pid") if isinstance(worker, dict) else None
                done[(int(r["stage"]), int(r["task"]))] = pid if isinstance(pid, int) else None
            elif kind == "committed":
                committed.add(int(r["partition"]))
            elif kind == "epoch":
                epochs.append(int(r["epoch"]))
            elif kind == "finished":
                finished = bool(r.get("ok"))
        return JournalState(done, frozenset(committed), tuple(epochs), finished)

    @staticmethod
    def read(folder: Path) -> JournalState:
        """The state folder's journal now (empty if there is none yet)."""
        path = folder / journal.JOURNAL
        if not path.exists():
            return JournalState()
        return JournalState.of(journal.read_records(path)[0])


# ---- counting re-runs (pure) ---------------------------------------------------------


@dataclass(frozen=True)
class Reruns:
    """Tasks one restarted run ran again, by why (see the module's doc)."""

    unfinished: int = 0  # (a) neither journalled done nor committed at the kill
    lost: int = 0  # (b) journalled done, output lost: map_rerun in the new run, or its worker gone
    needless: int = 0  # (c) journalled done or committed, run again anyway
    needless_committed: int = 0  # of (c): committed partitions (must be 0)
    reused: int = 0  # journalled done or committed and not run again

    def __add__(self, other: Reruns) -> Reruns:
        return Reruns(*(getattr(self, f.name) + getattr(other, f.name) for f in dataclasses.fields(self)))


def stage_of(phase: TaskKind, step: int) -> int:
    """The journal's stage of a task: 0 for a map, k for a reduce of the pipeline's step k."""
    return 0 if phase is TaskKind.MAP else step


def final_stage(runs: Iterable[Iterable[Event]]) -> int:
    """The stage whose tasks write part files: the last step's reduces, or the maps of a
    map-only job (as seen in any run's events)."""
    return max((stage_of(e.phase, e.step) for events in runs for e in events if isinstance(e, TaskAssigned)), default=0)


def count_reruns(state: JournalState, events: Iterable[Event], last: int) -> Reruns:
    """What the run after a kill ran again, given the journal at the kill and the run's events.
    ``last``: the final stage (see ``final_stage``); its task i commits partition i."""
    assigned: set[tuple[int, int]] = set()
    rerun: set[tuple[int, int]] = set()
    joined: set[int] = set()
    for event in events:
        if isinstance(event, TaskAssigned):
            assigned.add((stage_of(event.phase, event.step), event.task))
        elif isinstance(event, MapRerun):
            rerun.add((stage_of(event.phase, event.step), event.task))
        elif isinstance(event, WorkerJoined):
            joined.add(event.pid)
    unfinished = lost = needless = needless_committed = 0
    for key in assigned:
        stage, task = key
        if stage == last and task in state.committed:
            needless += 1
            needless_committed += 1
        elif stage != last and key in state.done:
            pid = state.done[key]
            if key in rerun or (pid is not None and pid not in joined):
                lost += 1
            else:
                needless += 1
        else:
            unfinished += 1
    known = {key for key in state.done if key[0] != last} | {(last, p) for p in state.committed}
    return Reruns(unfinished, lost, needless, needless_committed, len(known - assigned))


# ---- checking the output (pure but for reading the folder) -----------------------------


def check_output(oracle: Path, out: Path) -> str | None:
    """None if ``out`` holds the oracle's files byte for byte, _SUCCESS, and no temp file."""
    if not out.is_dir():
        return f"no output folder {out}"
    names = sorted(p.name for p in out.iterdir())
    temps = [n for n in names if is_temp_name(n)]
    if temps:
        return f"temp files left in the output: {', '.join(temps[:3])}"
    if SUCCESS not in names:
        return f"{SUCCESS} is missing"
    return compare_outputs(oracle, out)


def folder_snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Each file's (size, mtime in ns), by name: what a zombie must not change."""
    if not folder.is_dir():
        return {}
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


def snapshot_change(before: Mapping[str, tuple[int, int]], after: Mapping[str, tuple[int, int]]) -> str | None:
    for name in sorted(set(before) | set(after)):
        if name not in after:
            return f"{name} was removed"
        if name not in before:
            return f"{name} appeared"
        if before[name] != after[name]:
            (s0, m0), (s1, m1) = before[name], after[name]
            return f"{name} changed ({s0} -> {s1} bytes, mtime {'same' if m0 == m1 else 'changed'})"
    return None


# ---- results and formatting (pure) ---------------------------------------------------


@dataclass(frozen=True)
class CoordRound:
    number: int
    point: str
    kills: int  # SIGKILLs the coordinator got (sent by the harness or by itself at a hook)
    pauses: int  # SIGSTOPs (a zombie round)
    seconds: float  # from the first coordinator's start to the last one's exit
    restarts: tuple[Reruns, ...]  # one for each run after a kill or pause
    problem: str | None
    verdict: str  # OK, DIFF (output), FAIL (a run failed), MISS (the kill point was not reached),
    # REDONE (a committed partition ran again), ZOMBIE (the superseded coordinator misbehaved),
    # TWICE (a queued job of a standing cluster ran more often than the kills allow)

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def reruns(self) -> Reruns:
        return sum(self.restarts, Reruns())


@dataclass(frozen=True)
class CoordCrashReport:
    rounds: tuple[CoordRound, ...]

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.rounds)

    def first_problem(self) -> str | None:
        for r in self.rounds:
            if not r.ok:
                return f"round {r.number} ({r.point}): {r.problem}"
        return None

    @property
    def reruns(self) -> Reruns:
        return sum((r.reruns for r in self.rounds), Reruns())


COLUMNS = ("round", "point", "kills", "seconds", "unfinished", "lost", "needless", "reused", "result")
_WIDTHS = (5, 15, 5, 8, 10, 5, 8, 6)


def format_header() -> str:
    return _cells(COLUMNS[:-1]) + "  " + COLUMNS[-1]


def format_row(result: CoordRound) -> str:
    kills = f"{result.kills}" + (f"+{result.pauses}p" if result.pauses else "")
    return _line(str(result.number), result.point, kills, result.seconds, result.reruns, result.verdict)


def format_totals(report: CoordCrashReport) -> str:
    rounds = report.rounds
    kills = sum(r.kills for r in rounds)
    pauses = sum(r.pauses for r in rounds)
    label = f"{kills}" + (f"+{pauses}p" if pauses else "")
    matched = sum(1 for r in rounds if r.ok)
    return _line("all", "-", label, sum(r.seconds for r in rounds), report.reruns, f"{matched}/{len(rounds)} OK")


def format_needless(report: CoordCrashReport) -> str:
    total = report.reruns
    restarts = sum(len(r.restarts) for r in report.rounds)
    return (
        f"after {restarts} restart(s): {total.unfinished} unfinished task(s) run again, {total.lost} whose output "
        f"was lost, {total.needless} needless ({total.needless_committed} of them committed partitions, "
        f"which must be 0); {total.reused} journalled task(s) kept"
    )


def _line(label: str, point: str, kills: str, seconds: float, reruns: Reruns, verdict: str) -> str:
    cells = (label, point, kills, f"{seconds:.2f}", *map(str, (reruns.unfinished, reruns.lost, reruns.needless)))
    return _cells((*cells, str(reruns.reused))) + "  " + verdict


def _cells(cells: Sequence[str]) -> str:
    return "  ".join(
        cell.ljust(width) if i == 1 else cell.rjust(width) for i, (cell, width) in enumerate(zip(cells, _WIDTHS))
    )


# ---- processes --------------------------------------------------------------------------


def mapreduce_command(*args: str) -> list[str]:
    """The mapreduce command line, run by this Python (-P: never the current folder's package)."""
    return [sys.executable, "-P", "-m", "mapreduce", *args]


class Processes:
    """The processes of one round: started in sessions of their own (a Ctrl-C at the
    terminal is the harness's to handle), each killed by its pid at the end."""

    def __init__(self) -> None:
        self.started: list[subprocess.Popen] = []

    def start(self, command: list[str], log_path: Path, env: Mapping[str, str] | None = None) -> subprocess.Popen:
        with open(log_path, "ab") as out:
            process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env} if env else None,
                start_new_session=True,
            )
        self.started.append(process)
        return process

    def stop_all(self) -> None:
        for process in self.started:
            if process.poll() is None:
                for sig in (signal.SIGKILL, signal.SIGCONT):  # SIGCONT: a stopped one dies at once
                    try:
                        os.kill(process.pid, sig)
                    except ProcessLookupError:
                        pass
            process.wait()


def kill(process: subprocess.Popen) -> float | None:
    """SIGKILL the process if it still runs; when (monotonic), or None if it had exited."""
    if process.poll() is not None:
        return None
    sent = time.monotonic()
    os.kill(process.pid, signal.SIGKILL)
    return sent


@dataclass
class RoundFiles:
    folder: Path  # the round's work folder (output, state, scratch)
    logs: Path  # its event logs and process logs (kept with --events-dir)
    sockets: Path | None = None  # a short folder for IPC sockets (and a cluster's state), if the round's is too deep

    @property
    def out(self) -> Path:
        return self.folder / "out"

    @property
    def state(self) -> Path:
        return self.folder / "state"

    def events(self, run: int) -> Path:
        return self.logs / f"events-{run}.jsonl"

    def address(self, name: str = "coordinator") -> str:
        """A private IPC endpoint: in the round's folder, or where that path is longer than a
        socket path may be, in a short private folder of /tmp (an abstract socket would need keys)."""
        return f"ipc://{self.short(name + '.ipc')}"

    def short(self, name: str, room: int = 0) -> Path:
        """``name`` in the round's folder, or in the short folder of its sockets if a socket
        path there (``room`` bytes longer, for a socket inside) would be too long."""
        path = self.folder / name
        if len(str(path).encode()) + room > 100:
            if self.sockets is None:
                self.sockets = Path(tempfile.mkdtemp(prefix="mapreduce-cc-", dir="/tmp"))
            path = self.sockets / name
        return path

    def remove_sockets(self) -> None:
        if self.sockets is not None:
            shutil.rmtree(self.sockets, ignore_errors=True)


class RoundFailed(Exception):
    """A round went wrong: why, and the verdict."""

    def __init__(self, verdict: str, problem: str):
        super().__init__(problem)
        self.verdict, self.problem = verdict, problem


# ---- running rounds ---------------------------------------------------------------------


class CoordinatorCrashTest:
    def __init__(self, options: CoordCrashOptions):
        options.check()
        from mapreduce.job import load_app

        load_app(options.app, options.params)  # a bad app or parameter is reported before any work
        self.options = options

    def run(
        self, on_result: Callable[[CoordRound], None] = lambda r: None, on_stage: Callable[[str], None] = log.info
    ) -> CoordCrashReport:
        workspace = Workspace.create(self.options.events_dir)
        try:
            inputs = inputs_and_oracle(self.options, self.options.app, workspace, on_stage)
            rounds = []
            for number in range(1, self.options.rounds + 1):
                rounds.append(self._round(number, inputs, workspace))
                on_result(rounds[-1])
            return CoordCrashReport(tuple(rounds))
        finally:
            workspace.remove()

    # -- one round

    def _round(self, number: int, inputs: Sequence[str], workspace: Workspace) -> CoordRound:
        name = f"round-{number:02d}"
        files = RoundFiles(workspace.root / name, workspace.events_dir / name)
        files.folder.mkdir(parents=True)
        files.logs.mkdir(parents=True, exist_ok=True)
        plan = plan_round(number, self.options.kill_points, random.Random(f"{self.options.seed}:{number}"))
        processes = Processes()
        round_run = RoundRun(plan, files, processes)
        started = time.monotonic()
        try:
            if plan.point == ZOMBIE:
                self._zombie(inputs, workspace, round_run)
            elif plan.point == QUEUED:
                from mapreduce.tools.clustercrash import QueuedRound  # (it builds on this module)

                QueuedRound(self.options, inputs, workspace.oracle, round_run).run()
            else:
                self._kills(inputs, workspace, round_run)
            problem, verdict = None, "OK"
        except RoundFailed as failed:
            problem, verdict = failed.problem, failed.verdict
        finally:
            processes.stop_all()
            files.remove_sockets()
        seconds = (round_run.ended or time.monotonic()) - started
        for run in sorted({run for run, _ in round_run.faults}):  # beside each run's event log: `report` reads them
            write_faults(faults_beside(files.events(run)), [f for n, f in round_run.faults if n == run])
        return CoordRound(
            number,
            plan.point,
            round_run.kills,
            round_run.pauses,
            seconds,
            tuple(round_run.restarts),
            problem,
            verdict,
        )

    def _kills(self, inputs: Sequence[str], workspace: Workspace, r: RoundRun) -> None:
        """Run, kill, run again... until a run exits 0; then check the output and count re-runs."""
        address = r.files.address()
        states: list[JournalState] = []  # the journal after each kill
        runs: list[list[Event]] = []
        plan = r.plan
        while True:
            run = len(runs) + 1
            if run > plan.kills + 1:
                raise RoundFailed("FAIL", f"the coordinator died {run - 1} times, {plan.kills} kill(s) planned")
            env = {CRASH_ENV: plan.hook} if run == 1 and plan.hook else None
            coordinator = self._start_coordinator(inputs, r, run, address, env)
            if run == 1:
                self._start_workers(r, address, "w")
            trigger = None
            if run == 1 and plan.hook is None:
                trigger = Trigger(plan.point, plan.draw)
            elif run == 2 and plan.kills >= 2:
                trigger = Trigger("tasks", tasks=plan.second_tasks)
            code = self._watch(coordinator, r, run, trigger)
            r.ended = time.monotonic()
            runs.append(run_events(r.files.events(run)))
            if code == -signal.SIGKILL:
                r.kills += 1
                if not self.options.journal and any(isinstance(e, JobFinished) and e.ok for e in runs[-1]):
                    break  # killed in its goodbyes: without a journal, a new run would start the done job over
                states.append(JournalState.read(r.files.state) if self.options.journal else JournalState())
                continue
            if code != 0:
                raise RoundFailed("FAIL", f"run {run} of the coordinator exited {code}: {r.tail(run)}")
            if run == 1:
                what = f"{CRASH_ENV}={plan.hook}" if plan.hook else trigger.describe() if trigger else plan.point
                raise RoundFailed("MISS", f"the job finished before its kill point ({what})")
            break
        last = final_stage(runs)
        r.restarts = [count_reruns(state, events, last) for state, events in zip(states, runs[1:])]
        problem = check_output(workspace.oracle, r.files.out)
        if problem is not None:
            raise RoundFailed("DIFF", problem)
        redone = sum(x.needless_committed for x in r.restarts)
        if redone:
            raise RoundFailed("REDONE", f"{redone} committed partition(s) ran again after a restart")

    def _zombie(self, inputs: Sequence[str], workspace: Workspace, r: RoundRun) -> None:
        """Pause the coordinator mid-map, finish the job with a new one, then let the old one go."""
        old_address, new_address = r.files.address("coordinator-1"), r.files.address("coordinator-2")
        old = self._start_coordinator(inputs, r, 1, old_address)
        self._start_workers(r, old_address, "w1-")
        trigger = Trigger(MID_MAP, r.plan.draw)
        code = self._watch(old, r, 1, trigger, stop=True)
        if code is not None:
            raise RoundFailed("MISS", f"the coordinator exited ({code}) before it could be paused: {r.tail(1)}")
        state = JournalState.read(r.files.state) if self.options.journal else JournalState()
        new = self._start_coordinator(inputs, r, 2, new_address)
        self._start_workers(r, new_address, "w2-")
        self._wait_for_start(new, r, 2)
        code = self._watch(new, r, 2, None)
        r.ended = time.monotonic()
        if code != 0:
            raise RoundFailed("FAIL", f"the new coordinator exited {code}: {r.tail(2)}")
        runs = [run_events(r.files.events(n)) for n in (1, 2)]
        r.restarts = [count_reruns(state, runs[-1], final_stage(runs))]
        problem = check_output(workspace.oracle, r.files.out)
        if problem is not None:
            raise RoundFailed("DIFF", problem)
        if old.poll() == -signal.SIGKILL:
            return  # paused in the middle of a commit or journal write: the new one fenced it off by killing it
        before = folder_snapshot(r.files.out), _bytes(r.files.state / journal.JOURNAL)
        os.kill(old.pid, signal.SIGCONT)
        r.faults.append((1, Fault(FaultKind.RESUME, old.pid, time.monotonic())))
        try:
            code = old.wait(timeout=ZOMBIE_EXIT_WAIT)
        except subprocess.TimeoutExpired:
            raise RoundFailed(
                "ZOMBIE", f"the superseded coordinator still ran {ZOMBIE_EXIT_WAIT:.0f} s after SIGCONT"
            ) from None
        output_change = snapshot_change(before[0], folder_snapshot(r.files.out))
        if output_change is not None:
            raise RoundFailed("ZOMBIE", f"the superseded coordinator changed the output: {output_change}")
        if _bytes(r.files.state / journal.JOURNAL) != before[1]:
            raise RoundFailed("ZOMBIE", "the superseded coordinator changed the journal")
        said = r.tail(1)
        if code == 0:
            raise RoundFailed("ZOMBIE", f"the superseded coordinator exited 0: {said}")
        if "supersede" not in said.lower():
            raise RoundFailed("ZOMBIE", f"the superseded coordinator exited {code} without saying so: {said}")

    def _wait_for_start(self, coordinator: subprocess.Popen, r: RoundRun, run: int) -> None:
        """Fail at once, saying where it waits, if a coordinator has not started its job (its
        job_started event) within STARTUP_WAIT while it runs: in a zombie round, a paused
        coordinator must not keep the new one out."""
        deadline = time.monotonic() + STARTUP_WAIT
        tail = EventTail(r.files.events(run))
        while coordinator.poll() is None and time.monotonic() < deadline:
            if any(isinstance(e, JobStarted) for e in tail.read()):
                return
            time.sleep(POLL)
        if coordinator.poll() is None:
            try:
                where = Path(f"/proc/{coordinator.pid}/wchan").read_text().strip() or "?"
            except OSError:
                where = "?"
            raise RoundFailed(
                "ZOMBIE",
                f"the new coordinator had not started the job {STARTUP_WAIT:.0f} s after its start while the old one "
                f"was paused (it waits in the kernel at {where}; locks_lock_inode_wait: the paused coordinator holds "
                "the state folder's lock)",
            )

    # -- processes

    def _start_coordinator(
        self, inputs: Sequence[str], r: RoundRun, run: int, address: str, env: Mapping[str, str] | None = None
    ) -> subprocess.Popen:
        opts = self.options
        args = [
            "coordinator",
            opts.app,
            *inputs,
            "--output",
            str(r.files.out),
            "--bind",
            address,
            "--events",
            str(r.files.events(run)),
            "--quiet",
            "--split-size",
            str(opts.split_size),
            "--heartbeat-interval",
            str(opts.heartbeat_interval),
            "--worker-timeout",
            str(opts.worker_timeout),
            *opts.job_args(),
        ]
        args += ["--state-dir", str(r.files.state)] if opts.journal else ["--overwrite"]
        process = r.processes.start(mapreduce_command(*args), r.files.logs / f"coordinator-{run}.log", env)
        r.coordinators[run] = process
        return process

    def _start_workers(self, r: RoundRun, address: str, prefix: str) -> None:
        opts = self.options
        for i in range(1, opts.workers + 1):
            scratch = r.files.folder / f"scratch-{prefix}{i}"
            command = mapreduce_command(
                "worker",
                "--connect",
                address,
                "--coordinator-timeout",
                str(WORKER_PATIENCE),
                "--heartbeat-interval",
                str(opts.heartbeat_interval),
                "--scratch",
                str(scratch),
                "--name",
                f"{prefix}{i}",
            )
            r.processes.start(command, r.files.logs / f"worker-{prefix}{i}.log")

    def _watch(
        self, coordinator: subprocess.Popen, r: RoundRun, run: int, trigger: Trigger | None, stop: bool = False
    ) -> int | None:
        """Wait for the coordinator's exit, SIGKILLing (or with ``stop``, SIGSTOPping) it when
        the trigger says so. Its exit status; None once it is stopped."""
        tail = EventTail(r.files.events(run))
        deadline = time.monotonic() + self.options.run_timeout
        orphaned: float | None = None  # since when every worker has exited
        while True:
            code = coordinator.poll()
            if code is not None:
                return code
            if trigger is not None and trigger.update(tail.read()):
                if stop:
                    sent = time.monotonic()
                    os.kill(coordinator.pid, signal.SIGSTOP)
                    r.faults.append((run, Fault(FaultKind.PAUSE, coordinator.pid, sent)))
                    r.pauses += 1
                    log.info("round: paused coordinator pid %d %s", coordinator.pid, trigger.describe())
                    return None
                sent = kill(coordinator)
                if sent is not None:
                    r.faults.append((run, Fault(FaultKind.KILL, coordinator.pid, sent)))
                    log.info("round: killed coordinator pid %d %s", coordinator.pid, trigger.describe())
                trigger = None
            workers = [p for p in r.processes.started if p not in r.coordinators.values()]
            if not workers or any(p.poll() is None for p in workers):
                orphaned = None
            elif orphaned is None:
                orphaned = time.monotonic()  # a coordinator that finds the job done exits without them
            elif time.monotonic() - orphaned > ORPHAN_GRACE:
                kill(coordinator)
                coordinator.wait()
                raise RoundFailed(
                    "FAIL", f"every worker exited while run {run} of the coordinator ran: {r.worker_tail()}"
                )
            if time.monotonic() > deadline:
                kill(coordinator)
                coordinator.wait()
                raise RoundFailed("FAIL", f"run {run} of the coordinator took over {self.options.run_timeout:.0f} s")
            time.sleep(POLL)


@dataclass
class RoundRun:
    """What one round has done so far."""

    plan: KillPlan
    files: RoundFiles
    processes: Processes
    kills: int = 0
    pauses: int = 0
    faults: list[tuple[int, Fault]] = field(default_factory=list)  # (run, fault)
    restarts: list[Reruns] = field(default_factory=list)
    coordinators: dict[int, subprocess.Popen] = field(default_factory=dict)
    ended: float | None = None

    def worker_tail(self) -> str:
        """The last line of each worker's log."""
        tails = []
        for path in sorted(self.files.logs.glob("worker-*.log")):
            lines = path.read_text(errors="replace").strip().splitlines()
            tails.append(f"{path.stem}: {lines[-1] if lines else '(nothing)'}")
        return "; ".join(tails)

    def tail(self, run: int, lines: int = 3) -> str:
        """The last lines a run of the coordinator wrote (its log)."""
        path = self.files.logs / f"coordinator-{run}.log"
        try:
            text = path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(nothing)"


def run_events(path: Path) -> list[Event]:
    """A run's event log, whole lines only (a SIGKILL may cut the last one); [] if none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = data.split(b"\n")[:-1]  # what follows the last newline is a cut line, or nothing
    return [parse(json.loads(line)) for line in lines if line.strip()]


def _bytes(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
