"""Running one map or reduce attempt inside a worker: the task bodies, free of sockets.

A map reads its split, runs the app's map, and writes one partitioned, sorted
(and combined) file into the worker's scratch folder. A reduce gathers its
partition of every map's output as the locations arrive (reading files on its
own host directly, fetching the rest from the serving worker), merges the
sorted runs as streams, runs the app's reduce, and writes a temporary output
file that the coordinator alone may commit.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from . import output, protocol as p, shuffle
from .dataserver import FetchError, Fetcher
from .inputs import Split, read_split
from .job import App


class AttemptCancelled(Exception):
    """The coordinator cancelled the attempt; its work is thrown away."""


@dataclass
class AttemptContext:
    """What a running attempt shares with the worker's control loop."""

    attempt: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    inbox: "queue.Queue[list[p.MapOutput]]" = field(default_factory=queue.Queue)

    def check(self) -> None:
        if self.cancelled.is_set():
            raise AttemptCancelled()


@dataclass(frozen=True)
class JobContext:
    app: App
    job_id: str
    n_map: int
    n_reduce: int
    host_id: str
    workdir: Path  # this worker's folder for this job
    output_dir: Path
    output_host_id: str


def run_map(job: JobContext, task: p.AssignMap, ctx: AttemptContext, buffer_records: int = shuffle.DEFAULT_BUFFER_RECORDS) -> p.TaskDone:
    split = Split(task.key, task.path, task.start, task.end)
    text = read_split(split)
    attempt_dir = job.workdir / f"a{task.attempt}"
    attempt_dir.mkdir()
    buffer = shuffle.MapOutputBuffer(job.n_reduce, job.app.partition, job.app.combine, attempt_dir, buffer_records)
    buffer.add_all(job.app.map(split.key, text), f"input {split.key!r} (bytes {split.start}-{split.end})")
    ctx.check()
    path = job.workdir / f"map-{task.task:06d}.a{task.attempt}.out"
    lengths = buffer.finish(path)
    attempt_dir.rmdir()
    return p.TaskDone(0, task.attempt, lengths, str(path), buffer.total)


class ReduceInputs:
    """Collects one partition of every map's output, local or fetched, as it arrives."""

    def __init__(self, job: JobContext, ctx: AttemptContext, fetcher: Fetcher, folder: Path):
        self.job, self.ctx, self.fetcher, self.folder = job, ctx, fetcher, folder
        self.runs: dict[int, tuple[str, int, int]] = {}  # map task -> (path, offset, length)

    def gather(self, initial: list[p.MapOutput]) -> None:
        self._take(initial)
        while len(self.runs) < self.job.n_map:
            self.ctx.check()
            try:
                self._take(self.ctx.inbox.get(timeout=0.2))
            except queue.Empty:
                pass

    def _take(self, locations: list[p.MapOutput]) -> None:
        for loc in locations:
            if loc.map_task in self.runs or not 0 <= loc.map_task < self.job.n_map:
                continue  # a re-run map's output is the same data: the first copy serves
            if loc.length == 0:
                self.runs[loc.map_task] = ("", 0, 0)
            elif loc.host_id == self.job.host_id and Path(loc.path).is_file():
                self.runs[loc.map_task] = (loc.path, loc.offset, loc.length)
            else:
                local = self.folder / f"fetched-{loc.map_task:06d}.run"
                with open(local, "wb") as out:
                    self.fetcher.copy(loc.data_address, loc.path, loc.offset, loc.length, out)
                self.runs[loc.map_task] = (str(local), 0, loc.length)

    def records(self) -> Iterator[shuffle.Record]:
        runs = [shuffle.iter_run_file(*self.runs[m]) for m in range(self.job.n_map) if self.runs[m][2]]
        return shuffle.merge_runs(runs)


def run_reduce(job: JobContext, task: p.AssignReduce, ctx: AttemptContext, fetcher: Fetcher) -> p.TaskDone:
    if job.output_host_id != job.host_id:
        raise FetchError("the output folder is on another host; this version writes output only where the coordinator's folder is visible")
    folder = job.workdir / f"a{task.attempt}"
    folder.mkdir()
    try:
        inputs = ReduceInputs(job, ctx, fetcher, folder)
        inputs.gather(task.outputs)
        temp = output.temp_name(task.task, f"a{task.attempt}")
        reduce = job.app.reduce
        results = ((key, reduce(key, values)) for key, values in shuffle.group_sorted(_checked(inputs.records(), ctx)))
        try:
            count = output.write_lines(job.output_dir / temp, results)
        except BaseException:
            (job.output_dir / temp).unlink(missing_ok=True)
            raise
        return p.TaskDone(0, task.attempt, [], temp, count)
    finally:
        for run in folder.glob("*"):
            run.unlink()
        folder.rmdir()


def _checked(records: Iterator[shuffle.Record], ctx: AttemptContext, every: int = 65536) -> Iterator[shuffle.Record]:
    """Pass records through, checking now and then whether the attempt was cancelled."""
    for i, record in enumerate(records):
        if i % every == 0:
            ctx.check()
        yield record

