"""Running one map or reduce attempt inside a worker: the task bodies, free of sockets.

A map reads its split (directly where the worker sees the input file, else
from the coordinator's data server), runs the app's map, and writes one partitioned,
sorted (and combined) file into the worker's scratch folder. A reduce gathers
its partition of every map's output as the locations arrive (reading files on
its own host directly, fetching the rest from the serving worker), merges the
sorted runs as streams, runs the app's reduce, and writes a temporary output
file that the coordinator alone may commit: in the output folder if the worker
sees it, else in scratch, from where the coordinator pulls it.

The framework's own file operations (map output and its spills, fetched runs, reduce
output) raise StorageError when the disk is full or the folder unwritable: the worker's
environment failed, not the user's code, and the attempt is retried elsewhere. An
OSError raised inside the app's functions stays the user's error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from mapreduce import counters, output, shuffle
from mapreduce.counters import Counters, counting
from mapreduce.errors import storage_errors
from mapreduce.inputs import Split, fingerprint, map_source
from mapreduce.job import App, output_records, task_running
from mapreduce.net.dataserver import Fetcher, FetchError, RemoteFile, Unreachable
from mapreduce.wire import messages as p

log = logging.getLogger(__name__)

# A partition whose runs add up to less than this is grouped in a dict, not merged as
# streams: much faster, and bounded (a few times this in memory).
IN_MEMORY_REDUCE_BYTES = 16 * 1024 * 1024
# Runs merged at once: a merge holds a block of each (about 128 KB, a few times that as
# objects), what was read of it, and what it takes of each in a round.
MERGE_FACTOR = 64


class AttemptCancelled(Exception):
    """The coordinator cancelled the attempt; its work is thrown away."""


@dataclass
class AttemptContext:
    """What a running attempt shares with the worker's control loop."""

    attempt: int
    run: int = 0  # the worker core's name for this run of the attempt (results are matched by it)
    cancelled: threading.Event = field(default_factory=threading.Event)
    gathering: threading.Event = field(default_factory=threading.Event)  # a reduce waiting for map output
    inbox: queue.Queue[tuple[list[p.MapOutput], list[int]]] = field(default_factory=queue.Queue)
    report_status: Callable[[str], None] | None = None  # a status line to the coordinator (see StatusReports)

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
    sees_output: bool  # this worker sees the coordinator's output folder (same host or shared)
    input_address: str  # the coordinator's data server, for inputs this worker cannot see
    compression: output.Compression = output.Compression.NONE  # how output tasks write their part files
    _map_log: list = field(default_factory=list)  # the open append file, once created
    _visible: dict = field(default_factory=dict)  # input path -> seen here (as the coordinator saw it)

    def map_log(self) -> BinaryIO:
        """This worker's map output file for the job (used by the executor thread only)."""
        if not self._map_log:
            self._map_log.append(open(self.workdir / "map-output.log", "ab+"))
        return self._map_log[0]

    def append_map_output(
        self, write: Callable[[shuffle.GuardedWriter], list[int]], what: str
    ) -> tuple[str, int, list[int]]:
        """Append one map's output to the map output file with ``write``; return the file's
        path, the output's offset and its partitions' lengths.

        If anything fails (a full disk, the user's combine, a cancel), the file is cut back
        to its old end and reopened next time: the buffered bytes of a failed write cannot
        leak into the next map's output, and the file does not grow with garbage. (A failed
        map's bytes are never announced anyway: only a TaskDone carries offsets.)"""
        with storage_errors(self.workdir, what):
            f = self.map_log()
            offset = f.seek(0, os.SEEK_END)
        guarded = shuffle.GuardedWriter(f, self.workdir, what)
        try:
            lengths = write(guarded)
        except BaseException:
            self._map_log.clear()
            guarded.abandon()
            try:
                os.truncate(f.name, offset)
            except OSError as exc:  # harmless: the next map appends after the garbage
                log.warning("could not cut %s back to %d bytes: %s", f.name, offset, exc)
            raise
        return f.name, offset, lengths

    def sees_input(self, path: str, mark: str) -> bool:
        if path not in self._visible:
            self._visible[path] = bool(mark) and fingerprint(path) == mark
        return self._visible[path]

    def close(self) -> None:
        for f in self._map_log:
            f.close()


def run_map(
    job: JobContext,
    task: p.AssignMap,
    ctx: AttemptContext,
    fetcher: Fetcher,
    buffer_records: int = shuffle.DEFAULT_BUFFER_RECORDS,
) -> p.TaskDone:
    split = Split(task.key, task.path, task.start, task.end)
    received = fetcher.received
    counts = Counters()
    counts.builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
    # The user's code and the framework count into this attempt's counters.
    with counting(counts), task_running("map", task.task, ctx.cancelled, ctx.report_status):
        done = _map_body(job, task, ctx, fetcher, split, buffer_records)
    counts.builtin(counters.MAP_OUTPUT_RECORDS, done.records)
    if job.n_reduce == 0:
        counts.builtin(counters.REDUCE_OUTPUT_RECORDS, done.records)  # a map-only job's output
    return dataclasses.replace(done, fetched=fetcher.received - received, counters=_wire(counts))


def _map_body(
    job: JobContext, task: p.AssignMap, ctx: AttemptContext, fetcher: Fetcher, split: Split, buffer_records: int
) -> p.TaskDone:
    local = job.sees_input(split.path, task.fingerprint)
    source = map_source(job.app, split, None if local else RemoteFile(fetcher, job.input_address, split.path))
    where = f"input {split.key!r} (bytes {split.start}-{split.end})"
    emitted = job.app.run_map(split.key, source, split.start, frozenset(task.skip))
    if job.n_reduce == 0:  # a map-only job: the map's records are the output, in the order emitted
        records = output_records(emitted, where)
        return write_output(job, task.task, task.attempt, _checked(records, ctx), "map")
    what = f"map output of attempt {task.attempt}"
    buffer = shuffle.MapOutputBuffer(
        job.n_reduce,
        job.app.partition,
        job.app.combine,
        job.workdir,
        buffer_records,
        f"a{task.attempt}-spill",
        what,
        job.app.sort_values,
    )
    try:
        buffer.add_all(emitted, where)
        ctx.check()
        # Every map of this worker appends to one file: no file to create per task.
        path, offset, lengths = job.append_map_output(buffer.finish_into, what)
    finally:
        buffer.discard()  # spills of a failed attempt too
    return p.TaskDone(0, task.attempt, lengths, path, buffer.total, offset)


class ReduceInputs:
    """Collects one partition of every map's output as its location arrives.

    A run on this host is opened at once (an open file outlives its deletion); a run
    elsewhere is fetched from the serving worker into this attempt's folder. A run
    that cannot be read is reported with ``report`` and skipped: the coordinator
    answers with a new location, from a moved server or a re-run map.
    """

    def __init__(
        self,
        job: JobContext,
        ctx: AttemptContext,
        fetcher: Fetcher,
        folder: Path,
        report: Callable[[object], None],
        sources: int = 0,
        sort_values: bool = False,
    ):
        self.job, self.ctx, self.fetcher, self.folder, self.report = job, ctx, fetcher, folder, report
        self.n_sources = sources or job.n_map  # the tasks of the stage before: maps, or a step's reduces
        self.sort_values = sort_values
        self.runs: dict[int, tuple[BinaryIO | None, int, int]] = {}  # map task -> (file, offset, length)
        self.files: dict[str, BinaryIO] = {}  # open files by path: a worker's maps share one
        self.failed: set[tuple[int, int, str]] = set()
        self.unreachable: dict[str, str] = {}  # data servers that did not answer, and the error

    def gather(self, initial: list[p.MapOutput], empty: list[int]) -> None:
        self.ctx.gathering.set()
        try:
            self._take(initial, empty)
            while len(self.runs) < self.n_sources:
                self.ctx.check()
                try:
                    self._take(*self.ctx.inbox.get(timeout=0.2))
                except queue.Empty:
                    pass
        finally:
            self.ctx.gathering.clear()

    def _take(self, locations: list[p.MapOutput], empty: list[int] = ()) -> None:
        for map_task in empty:
            if 0 <= map_task < self.n_sources:
                self.runs.setdefault(map_task, (None, 0, 0))
        self._take_locations(locations)

    def _take_locations(self, locations: list[p.MapOutput]) -> None:
        for loc in locations:
            self.ctx.check()  # a fetch can take a while: a cancelled attempt stops between them
            if loc.map_task in self.runs or not 0 <= loc.map_task < self.n_sources:
                continue  # a re-run map's output is the same data: the first copy serves
            if (loc.map_task, loc.attempt, loc.data_address) in self.failed:
                continue
            try:
                if loc.data_address in self.unreachable and loc.host_id != self.job.host_id:
                    raise Unreachable(self.unreachable[loc.data_address])  # don't wait for it again
                self.runs[loc.map_task] = self._open(loc)
            except (OSError, FetchError) as exc:
                if isinstance(exc, Unreachable):
                    self.unreachable[loc.data_address] = str(exc)
                self.failed.add((loc.map_task, loc.attempt, loc.data_address))
                self.report(
                    p.FetchFailed(
                        0, self.ctx.attempt, loc.map_task, loc.attempt, loc.data_address, f"{type(exc).__name__}: {exc}"
                    )
                )

    def _open(self, loc: p.MapOutput) -> tuple[BinaryIO | None, int, int]:
        if loc.length == 0:
            return None, 0, 0
        if loc.host_id == self.job.host_id:
            try:
                return self._file(loc.path), loc.offset, loc.length
            except FileNotFoundError:
                pass  # gone from this host's disk: perhaps its server still has it
        local = self.folder / f"fetched-{loc.map_task:06d}.run"
        # Writing the copy is this worker's storage: its failure is a StorageError, which
        # fails the attempt (retried elsewhere) rather than blaming the map's server.
        out = shuffle.GuardedWriter.open(
            local, f"output of map task {loc.map_task} fetched by reduce attempt {self.ctx.attempt}"
        )
        try:
            self.fetcher.copy(loc.data_address, loc.path, loc.offset, loc.length, out, loc.server_key.encode())
            out.close()
        except BaseException:
            out.abandon()
            raise
        return self._file(str(local)), 0, loc.length

    def _file(self, path: str) -> BinaryIO:
        f = self.files.get(path)
        if f is None:
            f = self.files[path] = open(path, "rb")
        return f

    def groups(self) -> Iterator[tuple[str, Iterator]]:
        """Each key with its values (in map order), keys ascending."""
        if self._size() <= IN_MEMORY_REDUCE_BYTES:
            return shuffle.group_in_memory([shuffle.pairs_of(run) for run in self._runs()], self.sort_values)
        return shuffle.group_sorted(shuffle.pairs_of(self.batches()))

    def batches(self) -> Iterator[shuffle.Batch]:
        """The partition's records in order, as (keys, values) batches.

        More than MERGE_FACTOR runs are merged in passes, as Hadoop does: consecutive runs
        (so map order is kept) into a file of this attempt's folder, each merge taking just
        enough runs that MERGE_FACTOR remain at the end; memory holds a block of at most
        MERGE_FACTOR runs however many maps there are, and the fewest records are merged twice."""
        runs = self._runs()
        at = merges = 0
        while len(runs) > MERGE_FACTOR:
            merges += 1
            take = min(MERGE_FACTOR, len(runs) - MERGE_FACTOR + 1)  # merging k runs leaves k - 1 fewer
            if at + take > len(runs):
                at = 0  # a pass over every run is done: merge merged runs again
            runs[at : at + take] = [self._merged_into_file(runs[at : at + take], f"merged-{merges}.run")]
            at += 1
        return shuffle.merge_batches(runs, self.sort_values)

    def _merged_into_file(self, runs: list[Iterator[shuffle.Batch]], name: str) -> Iterator[shuffle.Batch]:
        what = f"merged map output of reduce attempt {self.ctx.attempt}"
        path = self.folder / name
        out = shuffle.GuardedWriter.open(path, what)
        try:
            length = shuffle.write_batches(out, shuffle.merge_batches(runs, self.sort_values))
            out.close()
        except BaseException:
            out.abandon()
            raise
        self.ctx.check()
        return shuffle.run_blocks(self._file(str(path)), 0, length, (self.folder, what))

    def _runs(self) -> list[Iterator[shuffle.Batch]]:
        """Every map's run of this partition (in map order), as a stream of blocks."""
        counts = counters.current()
        read = None if counts is None else (lambda n: counts.builtin(counters.REDUCE_INPUT_RECORDS, n))
        runs = [self.runs[m] for m in range(self.n_sources) if self.runs[m][0] is not None]
        return [shuffle.run_blocks(f, offset, length, counted=read) for f, offset, length in runs]

    def _size(self) -> int:
        return sum(length for _, _, length in self.runs.values())

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def run_reduce(
    job: JobContext, task: p.AssignReduce, ctx: AttemptContext, fetcher: Fetcher, report: Callable[[object], None]
) -> p.TaskDone:
    folder = job.workdir / f"a{task.attempt}"
    with storage_errors(job.workdir, f"fetched map output of reduce attempt {task.attempt}"):
        folder.mkdir()
    received = fetcher.received
    this = job.app.step(task.step)
    inputs = ReduceInputs(job, ctx, fetcher, folder, report, task.sources, this.sort_values)
    try:
        inputs.gather(task.outputs, task.empty)
        counts = Counters()
        with counting(counts), task_running("reduce", task.task, ctx.cancelled, ctx.report_status):
            if task.partitions:  # a pipeline's step before the last: the next step's map, its output kept here
                results = this.run_reduce(_checked(inputs.groups(), ctx), frozenset(task.skip))
                done = _fused_map(job, task, ctx, app_of_next_step=job.app.step(task.step + 1), records=results)
            else:
                done = write_output(job, task.task, task.attempt, _reduced(this, inputs, task, ctx), "reduce")
                counts.builtin(counters.REDUCE_OUTPUT_RECORDS, done.records)
        return dataclasses.replace(done, fetched=fetcher.received - received, counters=_wire(counts))
    finally:
        inputs.close()
        _remove_folder(folder)


def _reduced(this: App, inputs: ReduceInputs, task: p.AssignReduce, ctx: AttemptContext) -> Iterator | output.Batches:
    """What a reduce task writes: the identity reduce's are the merge's batches as they come,
    with no call per key."""
    if this.passes_records_through() and not task.skip:
        return output.Batches(_checked(shuffle.count_groups(inputs.batches()), ctx, every=16))
    return this.run_reduce(_checked(inputs.groups(), ctx), frozenset(task.skip))


def _fused_map(
    job: JobContext, task: p.AssignReduce, ctx: AttemptContext, app_of_next_step: App, records: Iterator
) -> p.TaskDone:
    """Run the next step's map over a reduce's records, into map output for the next step's
    reduces, appended to this worker's map output file (served like any map's)."""
    what = f"map output of step {task.step + 2} from reduce attempt {task.attempt}"
    buffer = shuffle.MapOutputBuffer(
        task.partitions,
        app_of_next_step.partition,
        app_of_next_step.combine,
        job.workdir,
        shuffle.DEFAULT_BUFFER_RECORDS,
        f"a{task.attempt}-spill",
        what,
        app_of_next_step.sort_values,
    )
    try:
        buffer.add_all(app_of_next_step.run_record_map(records), f"reduce task {task.task} of step {task.step + 1}")
        ctx.check()
        path, offset, lengths = job.append_map_output(buffer.finish_into, what)
    finally:
        buffer.discard()
    counters.current().builtin(counters.MAP_OUTPUT_RECORDS, buffer.total)
    return p.TaskDone(0, task.attempt, lengths, path, buffer.total, offset)


def write_output(
    job: JobContext, task: int, attempt: int, records: Iterator | output.Batches, phase: str
) -> p.TaskDone:
    """Write a task's output records to its attempt's temporary file, which the coordinator
    alone may commit: in the output folder where this worker sees it, else in scratch (from
    where the coordinator pulls it)."""
    temp = output.attempt_temp_name(task, job.job_id, attempt)
    target = job.output_dir / temp if job.sees_output else job.workdir / temp
    role = "output" if job.sees_output else "scratch"
    what = f"output of {phase} task {task}, attempt {attempt}"
    try:
        count = output.write_lines(target, records, what, role, job.compression)
        with storage_errors(target.parent, what, role):
            size = target.stat().st_size
    except BaseException:
        with contextlib.suppress(OSError):  # a read-only folder refuses even this
            target.unlink(missing_ok=True)
        raise
    return p.TaskDone(0, attempt, [], temp if job.sees_output else str(target), count, size=size)


def _wire(counts: Counters) -> list[p.CounterValue]:
    return [p.CounterValue(group, counter, value) for (group, counter), value in counts.sorted_items()]


def _remove_folder(folder: Path) -> None:
    """Remove an attempt's folder of fetched runs; a failure must not hide why the attempt
    failed (the worker removes the whole job folder at the end anyway)."""
    with contextlib.suppress(OSError):
        for run in folder.glob("*"):
            with contextlib.suppress(OSError):
                run.unlink()
        folder.rmdir()


class StatusReports:
    """An attempt's status lines on their way to the coordinator: at most one every
    ``every`` seconds (a status is a glance at a task, not a log: one that comes sooner is
    dropped); each cut to the longest the coordinator takes."""

    def __init__(self, send: Callable[[str], None], every: float = 1.0, clock: Callable[[], float] = time.monotonic):
        self._send, self._every, self._clock = send, every, clock
        self._sent_at: float | None = None

    def __call__(self, status: str) -> None:
        now = self._clock()
        if self._sent_at is None or now - self._sent_at >= self._every:
            self._sent_at = now
            self._send(status[: p.MAX_STATUS])


def _checked(items: Iterator, ctx: AttemptContext, every: int = 65536) -> Iterator:
    """Pass items through, checking now and then whether the attempt was cancelled."""
    for i, item in enumerate(items):
        if i % every == 0:
            ctx.check()
        yield item
