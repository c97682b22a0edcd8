"""Pictures of a job from its event log: a timeline per worker, progress rates, speedup.

``mapreduce report EVENTS.jsonl [MORE.jsonl ...] --output DIR [--speedup results.json]``
writes, for each event log, a timeline (one row per worker incarnation, one bar per task
attempt) and a progress figure (input rate, reduce rate, output committed: the panels of
the MapReduce paper's Figure 3), a side-by-side comparison when given several logs, a
speedup curve from a benchmark's JSON, and an ``index.html`` showing them with summary
numbers.

A log is read through the event schema (``mapreduce.wire.events``): ``run_log`` matches
typed events, never names or message texts, and is pure; the counts come from the schema's
``Tally``. matplotlib is imported only when a picture is drawn (``pip install
mapreduce[report]``), with the Agg backend, so importing this module and the command line
stay fast.

Injected faults (kills and pauses, e.g. from ``mapreduce crashtest``) are not in the
coordinator's log: pass them as ``faults`` (``mapreduce.tools.faults.Fault``, with a
monotonic ``time`` on the log's clock), or put them beside the log as ``NAME.faults.jsonl``,
which ``write_report`` and the command read when present.
"""

from __future__ import annotations

import enum
import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from mapreduce.errors import ReportError
from mapreduce.tools.faults import Fault, FaultKind, faults_beside, read_faults
from mapreduce.wire import events as wire
from mapreduce.wire.events import (
    AttemptEvent,
    BackupLaunched,
    Event,
    JobFailing,
    JobFinished,
    JobStarted,
    MapRerun,
    MessageFenced,
    OutputCommitted,
    ResultDiscarded,
    Tally,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskLost,
    WorkerDead,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
    WorkerSuspect,
)

# ---- what a log says (pure) -------------------------------------------------------------


class Outcome(enum.Enum):
    """How an attempt ended, as the timeline draws it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"
    CANCELLED = "cancelled"
    SUPERSEDED = "superseded"  # another attempt of its task finished first
    RUNNING = "running"  # never ended in the log


class MarkerKind(enum.Enum):
    SUSPECT = "suspect"
    DEAD = "dead"
    FENCED = "fenced"
    BACKUP = "backup"
    RERUN = "rerun"
    KILL = "kill"
    PAUSE = "pause"
    RESUME = "resume"


FAULT_MARKERS = {
    FaultKind.KILL: MarkerKind.KILL,
    FaultKind.PAUSE: MarkerKind.PAUSE,
    FaultKind.RESUME: MarkerKind.RESUME,
}


@dataclass
class AttemptSpan:
    """One task attempt as the timeline draws it: from its assignment to the event that ended it."""

    id: int
    phase: str  # "map" or "reduce"
    task: int
    worker: int
    start: float  # monotonic seconds, as in the log
    backup: bool = False
    end: float | None = None  # None: never ended in the log
    outcome: Outcome = Outcome.RUNNING
    records: int | None = None
    fetched: int | None = None
    input_bytes: int | None = None
    output_bytes: int | None = None
    why: str = ""

    @property
    def seconds(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass
class Incarnation:
    """One registration of a worker process: a worker id, from worker_joined to its end."""

    id: int
    name: str = ""
    pid: int | None = None
    host: str = ""
    joined: float | None = None
    dead: float | None = None  # declared dead
    dead_why: str = ""
    left: float | None = None
    draining: float | None = None
    suspects: list[float] = field(default_factory=list)
    fenced: list[float] = field(default_factory=list)  # messages of this incarnation ignored

    @property
    def label(self) -> str:
        return f"{self.name or '?'}#{self.id}"

    @property
    def end(self) -> float | None:
        return self.dead if self.dead is not None else self.left


@dataclass(frozen=True)
class Marker:
    """A point event drawn on a worker's row (worker None: not tied to a worker)."""

    time: float
    kind: MarkerKind
    worker: int | None
    task: int | None = None


@dataclass
class JobSpan:
    start: float  # job_started, else the first event
    finished: float | None = None  # job_finished, else the last event
    ok: bool | None = None
    message: str = ""
    failing: str = ""  # why the job could not succeed, when it was decided (job_failing)
    rejected: int = 0
    commits: list[tuple[float, int]] = field(default_factory=list)  # (t, partition)
    n_maps: int = 0  # job_started's, or from the task indices seen
    n_reduces: int = 0

    @property
    def end(self) -> float:
        return self.finished if self.finished is not None else self.start

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass
class RunLog:
    """Everything a report draws, from one event log."""

    job: JobSpan
    attempts: list[AttemptSpan]
    workers: list[Incarnation]  # in order of joining
    markers: list[Marker]
    tally: Tally
    faults: list[Fault] = field(default_factory=list)

    def rel(self, t: float) -> float:
        """Seconds since the job started."""
        return t - self.job.start

    def worker(self, worker_id: int) -> Incarnation | None:
        return next((w for w in self.workers if w.id == worker_id), None)

    def incarnation_of(self, pid: int, time: float) -> Incarnation | None:
        """The incarnation process ``pid`` had at ``time``: its latest join at or before it."""
        known = [w for w in self.workers if w.pid == pid and w.joined is not None and w.joined <= time]
        return known[-1] if known else None

    @property
    def bytes_moved(self) -> int:
        """Input and map output read over the network, and reduce output pulled to the coordinator."""
        return self.tally.input_fetched + self.tally.shuffle_fetched + self.tally.output_pulled


@dataclass(frozen=True)
class Summary:
    seconds: float
    ok: bool | None
    maps: int
    reduces: int
    attempts: int
    succeeded: int
    failed: int
    lost: int
    cancelled: int  # cancelled or superseded
    backups: int
    workers: int  # incarnations
    workers_dead: int
    fenced: int
    maps_rerun: int
    fetch_failures: int
    bytes_moved: int
    kills: int
    pauses: int


def _ending(event: AttemptEvent) -> tuple[Outcome, str] | None:
    """How an event ends its attempt, and why; None if it does not end one."""
    match event:
        case TaskFinished():
            return Outcome.SUCCEEDED, ""
        case TaskFailed(error=error):
            return Outcome.FAILED, error
        case TaskLost():
            return Outcome.LOST, ""
        case TaskCancelled(superseded_by=None, why=why):
            return Outcome.CANCELLED, why
        case TaskCancelled(why=why):
            return Outcome.SUPERSEDED, why
        case ResultDiscarded():  # the result of a running attempt whose task was already done
            return Outcome.SUPERSEDED, ""
    return None


class _Reader:
    """Folds a log's events, in order, into a RunLog."""

    def __init__(self, start: float):
        self.job = JobSpan(start=start)
        self.attempts: dict[int, AttemptSpan] = {}
        self.workers: dict[int, Incarnation] = {}
        self.markers: list[Marker] = []
        self.maps: set[int] = set()
        self.reduces: set[int] = set()

    def incarnation(self, worker_id: int) -> Incarnation:
        if worker_id not in self.workers:  # a log that starts late: a worker never seen joining
            self.workers[worker_id] = Incarnation(worker_id)
        return self.workers[worker_id]

    def add(self, event: Event) -> None:
        t = event.t
        match event:
            case WorkerJoined():
                w = self.incarnation(event.worker)
                w.name, w.pid, w.host, w.joined = event.name, event.pid, event.host, t
            case WorkerDead():
                w = self.incarnation(event.worker)
                w.dead, w.dead_why = t, event.why
                self.markers.append(Marker(t, MarkerKind.DEAD, w.id))
            case WorkerLeft():
                self.incarnation(event.worker).left = t
            case WorkerDraining():
                self.incarnation(event.worker).draining = t
            case WorkerSuspect():
                self.incarnation(event.worker).suspects.append(t)
                self.markers.append(Marker(t, MarkerKind.SUSPECT, event.worker))
            case MessageFenced():
                known = event.worker in self.workers
                if known:
                    self.workers[event.worker].fenced.append(t)
                self.markers.append(Marker(t, MarkerKind.FENCED, event.worker if known else None))
            case TaskAssigned() | BackupLaunched():
                self.start_attempt(event)
            case AttemptEvent():  # any other event of an attempt may end it
                self.end_attempt(event)
            case MapRerun():
                self.maps.add(event.task)
                served = [
                    a
                    for a in self.attempts.values()
                    if a.phase == "map" and a.task == event.task and a.outcome is Outcome.SUCCEEDED
                ]
                self.markers.append(Marker(t, MarkerKind.RERUN, served[-1].worker if served else None, event.task))
            case OutputCommitted():
                self.job.commits.append((t, event.partition))
                self.reduces.add(event.partition)
            case JobStarted():  # the coordinator's start is the origin
                self.job.start, self.job.n_maps, self.job.n_reduces = t, event.maps, event.reduces
            case JobFailing():
                self.job.failing = event.why
            case JobFinished():
                self.job.finished, self.job.ok, self.job.message = t, event.ok, event.message
                self.job.rejected = event.rejected

    def start_attempt(self, event: TaskAssigned | BackupLaunched) -> None:
        backup = isinstance(event, BackupLaunched)
        self.attempts[event.attempt] = AttemptSpan(
            event.attempt, event.phase, event.task, event.worker, event.t, backup=backup
        )
        self.incarnation(event.worker)
        (self.maps if event.phase == "map" else self.reduces).add(event.task)
        if backup:
            self.markers.append(Marker(event.t, MarkerKind.BACKUP, event.worker, event.task))

    def end_attempt(self, event: AttemptEvent) -> None:
        ending = _ending(event)
        a = self.attempts.get(event.attempt)
        if ending is None or a is None or a.end is not None:
            return  # not an ending, an unknown attempt, or a result discarded after its attempt ended
        a.end = event.t
        a.outcome, a.why = ending
        if isinstance(event, TaskFinished):
            a.records, a.fetched = event.records, event.fetched
            a.input_bytes, a.output_bytes = event.input_bytes, event.output_bytes


def run_log(events: Iterable[Event], faults: Iterable[Fault] = ()) -> RunLog:
    """Attempts, worker incarnations, markers, job times and the tally from a log's events (in order)."""
    events = list(events)
    if not events:
        raise ReportError("the event log is empty")
    reader = _Reader(start=min(e.t for e in events))
    for event in events:
        reader.add(event)
    job = reader.job
    if job.finished is None:
        job.finished = max(e.t for e in events)
    job.n_maps = max(job.n_maps, max(reader.maps) + 1 if reader.maps else 0)
    job.n_reduces = max(job.n_reduces, max(reader.reduces) + 1 if reader.reduces else 0)
    workers = sorted(reader.workers.values(), key=lambda w: (w.joined if w.joined is not None else math.inf, w.id))
    attempts = sorted(reader.attempts.values(), key=lambda a: a.id)
    log = RunLog(job, attempts, workers, reader.markers, Tally.of(events), list(faults))
    for f in log.faults:
        w = log.incarnation_of(f.pid, f.time)
        log.markers.append(Marker(f.time, FAULT_MARKERS[f.kind], w.id if w else None))
    return log


def read_log(path: str | Path) -> list[Event]:
    """The events of a log file, each line checked against the schema; a ReportError names the
    file and line of the first that is not an event."""
    events = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    events.append(wire.parse(json.loads(line)))
                except ValueError as exc:  # not JSON (json.JSONDecodeError), or not an event (EventError)
                    raise ReportError(f"{path}, line {number}: not an event: {exc}") from exc
    except OSError as exc:
        raise ReportError(f"cannot read event log {str(path)!r}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ReportError(f"{str(path)!r} is not an event log: it is not UTF-8 text") from exc
    return events


def load(path: str | Path, faults: Iterable[Fault] | None = None) -> RunLog:
    """Read an event log file; faults from ``NAME.faults.jsonl`` beside it unless given."""
    path = Path(path)
    events = read_log(path)
    if faults is None:
        beside = faults_beside(path)
        try:
            faults = read_faults(beside) if beside.exists() else []
        except OSError as exc:
            raise ReportError(f"cannot read faults file {str(beside)!r}: {exc.strerror}") from exc
        except ValueError as exc:  # read_faults names the file
            raise ReportError(str(exc)) from exc
    try:
        return run_log(events, faults)
    except ReportError as exc:
        raise ReportError(f"{path}: {exc}") from exc


def summarize(log: RunLog) -> Summary:
    tally = log.tally
    cancelled = sum(1 for a in log.attempts if a.outcome in (Outcome.CANCELLED, Outcome.SUPERSEDED))
    return Summary(
        seconds=log.job.seconds,
        ok=log.job.ok,
        maps=log.job.n_maps,
        reduces=log.job.n_reduces,
        attempts=tally.attempts,
        succeeded=tally.succeeded,
        failed=tally.failed_attempts,
        lost=tally.lost_attempts,
        cancelled=cancelled,  # from the attempts: a discarded result can supersede a running attempt
        backups=tally.backups,
        workers=len(log.workers),
        workers_dead=tally.workers_dead,
        fenced=tally.fenced,
        maps_rerun=tally.maps_rerun,
        fetch_failures=tally.fetch_failures,
        bytes_moved=log.bytes_moved,
        kills=sum(1 for f in log.faults if f.kind is FaultKind.KILL),
        pauses=sum(1 for f in log.faults if f.kind is FaultKind.PAUSE),
    )


def rate_series(
    spans: Iterable[tuple[float, float, float]], start: float, end: float, width: float
) -> tuple[list[float], list[float]]:
    """Spread each ``(begin, finish, amount)`` evenly over its span and sum per bin of ``width``
    seconds from ``start`` to ``end``: returns the bins' left edges and amounts per second."""
    if width <= 0:
        raise ValueError("the bin width must be positive")
    n = max(1, math.ceil((end - start) / width - 1e-9))
    totals = [0.0] * n
    for begin, finish, amount in spans:
        if finish <= begin:  # an instant: all in its bin
            i = min(n - 1, max(0, int((begin - start) / width)))
            totals[i] += amount
            continue
        per_second = amount / (finish - begin)
        first = max(0, int((begin - start) / width))
        last = min(n - 1, int((finish - start) / width))
        for i in range(first, last + 1):
            lo, hi = max(begin, start + i * width), min(finish, start + (i + 1) * width)
            if hi > lo:
                totals[i] += per_second * (hi - lo)
    return [start + i * width for i in range(n)], [total / width for total in totals]


def bin_width(seconds: float) -> float:
    """About 60 bins over the job, at most 1 s and at least 10 ms each."""
    return min(1.0, max(0.01, seconds / 60))


@dataclass(frozen=True)
class ProgressSeries:
    """The three panels' data for one run; times in seconds from the job's start."""

    edges: list[float]
    width: float
    input_rate: list[float]
    input_unit: str  # "input MB/s", or "maps done/s" without input sizes
    reduce_rate: list[float]
    reduce_unit: str  # "shuffle MB/s" (reduce input), "reduce out MB/s" or "reduce out records/s"
    committed_times: list[float]
    committed_fraction: list[float]


def progress_data(log: RunLog, input_bytes: Mapping[int, int] | None = None) -> ProgressSeries:
    """Input read per second (each successful map's bytes, or the map itself, spread over its
    attempt), reduce rate (likewise, from the last map finished before it), and the fraction of
    partitions committed over time."""
    job = log.job
    width = bin_width(max(job.seconds, 1e-3))
    done = [a for a in log.attempts if a.outcome is Outcome.SUCCEEDED and a.end is not None]
    maps = [a for a in done if a.phase == "map"]
    reduces = [a for a in done if a.phase == "reduce"]
    sizes = dict(input_bytes or {})
    for a in maps:
        if a.input_bytes is not None:
            sizes.setdefault(a.task, a.input_bytes)
    by_bytes = bool(maps) and all(a.task in sizes for a in maps)
    spans = [(log.rel(a.start), log.rel(a.end), sizes[a.task] / 1e6 if by_bytes else 1.0) for a in maps]
    edges, input_rate = rate_series(spans, 0.0, job.seconds, width)
    # The shuffle if the log gives each reduce's input bytes, else the reduce's output bytes, else its records.
    if reduces and all(a.input_bytes for a in reduces):
        amount, reduce_unit = (lambda a: a.input_bytes / 1e6), "shuffle MB/s"
    elif reduces and all(a.output_bytes is not None for a in reduces):
        amount, reduce_unit = (lambda a: a.output_bytes / 1e6), "reduce out MB/s"
    else:
        amount, reduce_unit = (lambda a: float(a.records or 0)), "reduce out records/s"
    map_ends = sorted(a.end for a in maps)

    def busy_from(
        r: AttemptSpan,
    ) -> float:  # a reduce waits for the maps before it works: from the last one before its end
        before = [t for t in map_ends if t <= r.end]
        return max(r.start, before[-1]) if before else r.start

    spans = [(log.rel(busy_from(a)), log.rel(a.end), amount(a)) for a in reduces]
    _, reduce_rate = rate_series(spans, 0.0, job.seconds, width)
    total = job.n_reduces or len({p for _, p in job.commits}) or 1
    times, fractions = [0.0], [0.0]
    for i, (t, _) in enumerate(sorted(job.commits), 1):
        times.append(log.rel(t))
        fractions.append(i / total)
    times.append(job.seconds)
    fractions.append(fractions[-1])
    return ProgressSeries(
        edges,
        width,
        input_rate,
        "input MB/s" if by_bytes else "maps done/s",
        reduce_rate,
        reduce_unit,
        times,
        fractions,
    )


# ---- speedup data (pure) ------------------------------------------------------------------


@dataclass(frozen=True)
class SpeedupSeries:
    label: str
    workers: list[int]
    seconds: list[float]

    def speedups(self) -> list[float]:
        """Against the fewest workers measured, taken as scaling perfectly up to that count."""
        base_n, base_s = self.workers[0], self.seconds[0]
        return [base_n * base_s / s for s in self.seconds]


def speedup_series(data: Any) -> list[SpeedupSeries]:
    """From ``[{"workers": n, "seconds": s}, ...]`` (optionally with "system" or "label"), or
    the JSON of scripts/bench_wordcount.py (``{"results": [{"system", "workers", "wall_median"}]}``)."""
    rows = data.get("results", data.get("rows")) if isinstance(data, dict) else data
    if not isinstance(rows, list):
        raise ReportError('a speedup file holds a list of {"workers": N, "seconds": S} or {"results": [...]}')
    series: dict[str, dict[int, list[float]]] = {}
    for row in rows:
        if not isinstance(row, dict) or "workers" not in row:
            raise ReportError(f'a speedup row lacks "workers": {row!r}')
        seconds = next((row[k] for k in ("seconds", "wall_median", "wall") if k in row), None)
        if seconds is None or not seconds > 0:
            raise ReportError(f'a speedup row lacks positive "seconds": {row!r}')
        label = str(row.get("system", row.get("label", "")))
        series.setdefault(label, {}).setdefault(int(row["workers"]), []).append(float(seconds))
    out = []
    for label, points in series.items():
        counts = sorted(points)
        out.append(SpeedupSeries(label, counts, [sorted(points[n])[len(points[n]) // 2] for n in counts]))
    if not out:
        raise ReportError("the speedup file has no rows")
    return out


# ---- drawing ------------------------------------------------------------------------------


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ReportError("reports need matplotlib: pip install 'mapreduce[report]'") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


PHASE_COLOURS = {"map": "#4c72b0", "reduce": "#dd8452"}
OUTCOME_STYLE = {  # hatch, edge colour
    Outcome.SUCCEEDED: ("", "#222222"),
    Outcome.FAILED: ("xxx", "#c00000"),
    Outcome.LOST: ("///", "#000000"),
    Outcome.CANCELLED: ("...", "#666666"),
    Outcome.SUPERSEDED: ("\\\\\\", "#666666"),
    Outcome.RUNNING: ("---", "#666666"),
}
MARKER_STYLE = {  # matplotlib marker, colour, size, legend text
    MarkerKind.SUSPECT: ("o", "#e6b800", 6, "suspect (silent)"),
    MarkerKind.DEAD: ("X", "#c00000", 9, "declared dead"),
    MarkerKind.FENCED: ("|", "#7b3294", 10, "message fenced"),
    MarkerKind.BACKUP: ("^", "#1a9850", 8, "backup launched"),
    MarkerKind.RERUN: ("v", "#d95f02", 8, "map output lost: re-run"),
    MarkerKind.KILL: ("*", "#000000", 13, "SIGKILL"),
    MarkerKind.PAUSE: ("P", "#2166ac", 9, "SIGSTOP"),
    MarkerKind.RESUME: ("P", "#92c5de", 9, "SIGCONT"),
}


def _as_log(events: RunLog | Iterable[Event], faults: Iterable[Fault] = ()) -> RunLog:
    return events if isinstance(events, RunLog) else run_log(events, faults)


def timeline(events: RunLog | Iterable[Event], path: str | Path, faults: Iterable[Fault] = (), title: str = "") -> int:
    """A PNG with one row per worker incarnation and a bar per attempt; returns the rows drawn."""
    plt = _pyplot()
    from matplotlib.collections import PolyCollection
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    log = _as_log(events, faults)
    rows = {w.id: i for i, w in enumerate(log.workers)}
    end = log.job.seconds
    height = max(2.5, 0.38 * len(rows) + 1.8)
    fig, ax = plt.subplots(figsize=(12, height))
    try:
        for w in log.workers:  # the incarnation's life: a thin line from joining to its end
            y = rows[w.id]
            born = log.rel(w.joined) if w.joined is not None else 0.0
            gone = log.rel(w.end) if w.end is not None else end
            ax.plot([born, gone], [y, y], color="#bbbbbb", linewidth=1, zorder=1)
        for f in log.faults:  # a pause: a shaded span until its resume
            if f.kind is not FaultKind.PAUSE:
                continue
            resume = next(
                (g.time for g in log.faults if g.kind is FaultKind.RESUME and g.pid == f.pid and g.time >= f.time), None
            )
            w = log.incarnation_of(f.pid, f.time)
            if w is not None and resume is not None:
                ax.fill_betweenx(
                    [rows[w.id] - 0.45, rows[w.id] + 0.45],
                    log.rel(f.time),
                    log.rel(resume),
                    color="#2166ac",
                    alpha=0.12,
                    zorder=0,
                )
        groups: dict[tuple[str, Outcome, bool], list[tuple[float, float, float]]] = {}  # one barh call per style
        for a in log.attempts:
            if a.worker in rows:
                stop = a.end if a.end is not None else log.job.end
                groups.setdefault((a.phase, a.outcome, a.backup), []).append(
                    (rows[a.worker], log.rel(a.start), max(stop - a.start, end / 500))
                )
        for (phase, outcome, backup), bars in groups.items():
            hatch, edge = OUTCOME_STYLE[outcome]
            boxes = [[(x, y - 0.3), (x + w, y - 0.3), (x + w, y + 0.3), (x, y + 0.3)] for y, x, w in bars]
            ax.add_collection(
                PolyCollection(
                    boxes,
                    facecolors=PHASE_COLOURS.get(phase, "#999999"),
                    edgecolors=edge,
                    hatch=hatch or None,
                    linewidths=1.6 if backup else 0.6,
                    zorder=2,
                )
            )
        points: dict[MarkerKind, tuple[list[float], list[float]]] = {}
        for m in log.markers:
            xs, ys = points.setdefault(m.kind, ([], []))
            xs.append(log.rel(m.time))
            ys.append(rows.get(m.worker, -0.8))
        for kind, (xs, ys) in points.items():
            marker, colour, size, _ = MARKER_STYLE[kind]
            thin = marker == "|"
            ax.plot(
                xs,
                ys,
                marker=marker,
                color=colour,
                markersize=size,
                linestyle="none",
                zorder=3,
                markeredgecolor=colour if thin else "#000000",
                markeredgewidth=2 if thin else 0.5,
            )
        if log.job.ok is not None:
            ax.axvline(end, color="#1a9850" if log.job.ok else "#c00000", linestyle="--", linewidth=1)
        ax.set_yticks(range(len(rows)), [w.label for w in log.workers])
        loose = any(m.worker not in rows for m in log.markers)  # markers of no known worker: a row above
        ax.set_ylim(len(rows) - 0.4, -1.4 if loose else -0.6)
        ax.set_xlim(0, max(end, 1e-3) * 1.02)
        ax.set_xlabel("seconds since the job started")
        ax.set_ylabel("worker incarnation (name#id)")
        ax.grid(axis="x", alpha=0.3)
        s = summarize(log)
        ax.set_title(
            title
            or f"{s.seconds:.2f} s, {s.maps} maps, {s.reduces} reduces, {s.attempts} attempts, "
            f"{s.lost} lost, {s.failed} failed, {s.backups} backups, {s.workers_dead} workers dead"
        )
        handles = [Patch(facecolor=c, label=p) for p, c in PHASE_COLOURS.items()]
        used = {a.outcome for a in log.attempts}
        handles += [
            Patch(facecolor="white", edgecolor=e, hatch=h, label=o.value)
            for o, (h, e) in OUTCOME_STYLE.items()
            if o in used
        ]
        kinds = {m.kind for m in log.markers}
        handles += [
            Line2D([], [], marker=mk, color=c, markersize=sz, linestyle="none", label=text)
            for k, (mk, c, sz, text) in MARKER_STYLE.items()
            if k in kinds
        ]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8, frameon=False)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return len(rows)


def _progress_column(axes, log: RunLog, label: str, input_bytes: Mapping[int, int] | None, x_end: float) -> None:
    data = progress_data(log, input_bytes)
    centres = [e + data.width / 2 for e in data.edges]
    top, middle, bottom = axes
    top.fill_between(centres, data.input_rate, step="mid", color=PHASE_COLOURS["map"], alpha=0.8)
    top.set_ylabel("\n".join(data.input_unit.rsplit(" ", 1)))
    middle.fill_between(centres, data.reduce_rate, step="mid", color=PHASE_COLOURS["reduce"], alpha=0.8)
    middle.set_ylabel("\n".join(data.reduce_unit.rsplit(" ", 1)))
    bottom.step(data.committed_times, [100 * f for f in data.committed_fraction], where="post", color="#1a9850")
    bottom.set_ylabel("output\ncommitted %")
    bottom.set_ylim(0, 105)
    bottom.set_xlabel("seconds since the job started")
    top.set_title(label, fontsize=10)
    for ax in axes:
        ax.set_xlim(0, x_end)
        ax.grid(alpha=0.3)
        for w in log.workers:
            if w.dead is not None:
                ax.axvline(log.rel(w.dead), color="#c00000", linewidth=0.8, alpha=0.6)
        for f in log.faults:
            if f.kind is FaultKind.KILL:
                ax.axvline(log.rel(f.time), color="#000000", linewidth=0.8, linestyle=":")


def progress_compare(
    runs: Sequence[tuple[str, RunLog | Iterable[Event]]],
    path: str | Path,
    input_bytes: Mapping[int, int] | None = None,
) -> int:
    """Figure 3 of the MapReduce paper for several runs side by side (one column each, the
    same time scale): input rate, reduce rate, output committed. Red lines: workers declared
    dead; dotted: kills. Returns the number of columns."""
    plt = _pyplot()
    if not runs:
        raise ReportError("no runs to compare")
    logs = [(label, _as_log(events)) for label, events in runs]
    x_end = max(max(log.job.seconds, 1e-3) for _, log in logs) * 1.02
    fig, axes = plt.subplots(3, len(logs), figsize=(4.2 * len(logs) + 1, 7), sharex=True, sharey="row", squeeze=False)
    try:
        for column, (label, log) in enumerate(logs):
            _progress_column(axes[:, column], log, label, input_bytes, x_end)
            if column:
                for ax in axes[:, column]:
                    ax.set_ylabel("")
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return len(logs)


def progress(
    events: RunLog | Iterable[Event], path: str | Path, label: str = "", input_bytes: Mapping[int, int] | None = None
) -> int:
    """Figure 3 of the MapReduce paper for one run; see ``progress_compare``."""
    log = _as_log(events)
    return progress_compare([(label or f"{log.job.seconds:.2f} s", log)], path, input_bytes)


def speedup(results_json: str | Path | Any, path: str | Path) -> int:
    """Speedup against the number of workers, with the ideal line, from a benchmark's JSON
    (a file or the loaded data); returns the number of series drawn."""
    if isinstance(results_json, (str, Path)):
        try:
            data = json.loads(Path(results_json).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ReportError(f"cannot read {str(results_json)!r}: {exc.strerror}") from exc
        except ValueError as exc:
            raise ReportError(f"{str(results_json)!r} is not JSON: {exc}") from exc
    else:
        data = results_json
    series = speedup_series(data)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 5))
    try:
        most = max(max(s.workers) for s in series)
        least = min(min(s.workers) for s in series)
        ax.plot([least, most], [least, most], color="#888888", linestyle="--", label="ideal")
        for s in series:
            ax.plot(s.workers, s.speedups(), marker="o", label=s.label or "measured")
        ax.set_xlabel("workers")
        ax.set_ylabel(f"speedup (against {least} worker{'s' if least != 1 else ''}, scaled)")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return len(series)


# ---- the report -----------------------------------------------------------------------------


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


SUMMARY_COLUMNS = (
    ("job s", lambda s: f"{s.seconds:.2f}"),
    ("result", lambda s: {True: "ok", False: "FAILED", None: "?"}[s.ok]),
    ("maps", lambda s: s.maps),
    ("reduces", lambda s: s.reduces),
    ("attempts", lambda s: s.attempts),
    ("failed", lambda s: s.failed),
    ("lost", lambda s: s.lost),
    ("cancelled", lambda s: s.cancelled),
    ("backups", lambda s: s.backups),
    ("workers", lambda s: s.workers),
    ("dead", lambda s: s.workers_dead),
    ("fenced", lambda s: s.fenced),
    ("map re-runs", lambda s: s.maps_rerun),
    ("fetch failures", lambda s: s.fetch_failures),
    ("kills", lambda s: s.kills),
    ("pauses", lambda s: s.pauses),
    ("bytes moved", lambda s: _megabytes(s.bytes_moved)),
)


def write_report(
    event_logs: Sequence[str | Path],
    output_dir: str | Path,
    speedup_json: str | Path | None = None,
    faults: Mapping[str, Iterable[Fault]] | None = None,
) -> Path:
    """PNGs for each event log (and a comparison, and a speedup curve) and an index.html
    showing them with summary numbers; returns the index's path. ``faults`` maps a log's
    path to its faults; otherwise ``NAME.faults.jsonl`` beside a log is read if present."""
    return report_files(event_logs, output_dir, speedup_json, faults)[-1]


def report_files(
    event_logs: Sequence[str | Path],
    output_dir: str | Path,
    speedup_json: str | Path | None = None,
    faults: Mapping[str, Iterable[Fault]] | None = None,
) -> list[Path]:
    """``write_report``, returning every file written (index.html last)."""
    if not event_logs and speedup_json is None:
        raise ReportError("nothing to report: give event logs or a speedup file")
    _pyplot()  # a missing matplotlib is reported before any work
    out = Path(output_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReportError(f"cannot create {str(out)!r}: {exc.strerror}") from exc
    names = _unique_names([Path(p) for p in event_logs])
    runs: list[tuple[str, Path, RunLog]] = []
    for path, name in zip(map(Path, event_logs), names):
        given = (faults or {}).get(str(path))
        runs.append((name, path, load(path, given)))
    sections, rows = [], []
    for name, path, log in runs:
        picture = out / f"timeline-{name}.png"
        timeline(log, picture, title=f"{name}: " + _headline(log))
        rates = out / f"progress-{name}.png"
        progress(log, rates, name)
        rows.append((name, summarize(log)))
        sections.append((f"{name} ({html.escape(str(path))})", [picture.name, rates.name]))
    if len(runs) > 1:
        compare = out / "progress-compare.png"
        progress_compare([(name, log) for name, _, log in runs], compare)
        sections.insert(0, ("Progress, side by side", [compare.name]))
    if speedup_json is not None:
        curve = out / "speedup.png"
        speedup(speedup_json, curve)
        sections.append((f"Speedup ({html.escape(str(speedup_json))})", [curve.name]))
    index = out / "index.html"
    index.write_text(_html(rows, sections, runs), encoding="utf-8")
    return [out / image for _, images in sections for image in images] + [index]


def _headline(log: RunLog) -> str:
    s = summarize(log)
    return (
        f"{s.seconds:.2f} s, {s.attempts} attempts, {s.lost} lost, {s.failed} failed, "
        f"{s.backups} backups, {s.workers_dead} dead"
    )


def _unique_names(paths: Sequence[Path]) -> list[str]:
    names: list[str] = []
    for p in paths:
        base = "".join(c if c.isalnum() or c in "-_." else "_" for c in p.stem) or "run"
        name, n = base, 2
        while name in names:
            name, n = f"{base}-{n}", n + 1
        names.append(name)
    return names


def _counters_table(runs) -> str:
    """The job counters of each run (of successful attempts only), a column per run."""
    per_run = [(name, {f"{g}.{c}": v for (g, c), v in log.tally.counters.sorted_items()}) for name, _, log in runs]
    names = list(dict.fromkeys(k for _, counts in per_run for k in counts))
    if not names:
        return ""
    head = "".join(f"<th>{html.escape(name)}</th>" for name, _ in per_run)
    body = "".join(
        f"<tr><td style='text-align:left'>{html.escape(k)}</td>"
        + "".join(f"<td>{counts.get(k, '')}</td>" for _, counts in per_run)
        + "</tr>"
        for k in names
    )
    return f"<h2>Job counters</h2><table id='job-counters'><tr><th>counter</th>{head}</tr>{body}</table>"


def _html(rows: list[tuple[str, Summary]], sections: list[tuple[str, list[str]]], runs) -> str:
    head = "".join(f"<th>{html.escape(title)}</th>" for title, _ in SUMMARY_COLUMNS)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>"
        + "".join(f"<td>{html.escape(str(value(s)))}</td>" for _, value in SUMMARY_COLUMNS)
        + "</tr>"
        for name, s in rows
    )
    notes = "".join(
        f"<p><b>{html.escape(name)}</b> failed: {html.escape(log.job.message or log.job.failing)}</p>"
        for name, _, log in runs
        if log.job.ok is False
    )
    table = f"<table><tr><th>run</th>{head}</tr>{body}</table>" if rows else ""
    table += _counters_table(runs)
    figures = "".join(
        f"<h2>{title}</h2>"
        + "".join(f'<p><img src="{html.escape(image)}" alt="{html.escape(image)}"></p>' for image in images)
        for title, images in sections
    )
    legend = (
        "<p>Timeline: one row per worker incarnation (name#id); bars are attempts, blue maps and orange reduces; "
        "hatching gives how an attempt ended (none: succeeded); a thick edge marks a backup attempt. "
        "Progress: input read and reduce work per second, each successful attempt's amount spread over its run, "
        "and the share of output partitions committed; red lines mark workers declared dead, dotted lines kills.</p>"
    )
    style = (
        "body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}img{max-width:100%}"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>mapreduce report</title>'
        f"<style>{style}</style></head>"
        f"<body><h1>mapreduce report</h1>{table}{notes}{legend}{figures}</body></html>\n"
    )


@click.command()
@click.argument("event_logs", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for the pictures and index.html.",
)
@click.option(
    "--speedup",
    "speedup_json",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help='A benchmark\'s JSON: [{"workers": N, "seconds": S}, ...] or scripts/bench_wordcount.py\'s.',
)
def report(event_logs, output, speedup_json):
    """Timelines and progress charts of jobs from their event logs (--events), and an index.html.

    Faults injected from outside (kills, pauses) are read from NAME.faults.jsonl beside a log.
    """
    if not event_logs and speedup_json is None:
        raise click.UsageError("give at least one event log or --speedup")
    try:
        written = report_files(list(event_logs), output, speedup_json)
    except ReportError as exc:
        raise click.ClickException(str(exc)) from None
    for path in written:
        click.echo(str(path))
