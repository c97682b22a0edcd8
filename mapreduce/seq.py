"""The sequential oracle: the whole job in one process, no sockets, no spills.

Deliberately simple and independent of the distributed shuffle: every pair in
memory, one stable sort, one reduce per key. Values pass through the
intermediate format once, so reduce sees what it sees in a distributed run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from mapreduce import counters, defaults, output
from mapreduce.counters import Counters, counting
from mapreduce.inputs import make_splits, map_source
from mapreduce.job import App, bad_record, output_records, shuffle_pair, task_running
from mapreduce.shuffle import roundtrip, sort_pairs

log = logging.getLogger(__name__)


def run_sequential(
    app: App,
    inputs: list[str],
    output_dir: Path,
    n_reduce: int | list[int],
    split_size: int = defaults.SPLIT_SIZE,
    skip_bad_records: int = 0,
    compression: output.Compression = output.Compression.NONE,
) -> Counters:
    """Run the job; return its counters (one task at a time counts into them: a combine,
    never run here, counts nothing). ``output_dir`` must be prepared. With
    ``skip_bad_records``, a record the user's code raises on is skipped at once (up to that
    many per task): the distributed run skips it after two attempts, with the same result.
    ``n_reduce``: the reduce count, or a pipeline's reduce count of each step."""
    counts = Counters()
    sizes = n_reduce if isinstance(n_reduce, list) else [n_reduce] if n_reduce else []
    if not sizes:
        _map_only(app, inputs, output_dir, split_size, counts, skip_bad_records, compression)
    else:
        _map_reduce(app, inputs, output_dir, sizes, split_size, counts, skip_bad_records, compression)
    return counts


def _task(run: Callable[[frozenset[str]], Any], counts: Counters, budget: int, what: str) -> Any:
    """One task, again without each bad record it raises on (up to ``budget`` of them); only
    the successful run's counters count."""
    skip: set[str] = set()
    while True:
        attempt = Counters()
        try:
            with counting(attempt):
                result = run(frozenset(skip))
        except Exception as exc:
            record = bad_record(exc)
            if not record or record in skip or len(skip) >= budget:
                raise
            log.warning("skipping record %s of %s: %s: %s", record, what, type(exc).__name__, exc)
            skip.add(record)
            continue
        counts.merge(attempt.items())
        return result


def _map_reduce(
    app: App,
    inputs: list[str],
    output_dir: Path,
    sizes: list[int],
    split_size: int,
    counts: Counters,
    skip_bad_records: int,
    compression: output.Compression,
) -> None:
    n_reduce = sizes[0]
    partitions: list[list[tuple[str, Any]]] = [[] for _ in range(n_reduce)]
    for index, split in enumerate(make_splits(inputs, split_size)):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"

        def run_map(skip: frozenset[str], split=split, where=where, index=index) -> list[tuple[str, Any]]:
            with task_running("map", index):
                records = app.run_map(split.key, map_source(app, split), split.start, skip)
                pairs = [_pair(pair, where) for pair in records]
            counters.current().builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
            counters.current().builtin(counters.MAP_OUTPUT_RECORDS, len(pairs))
            return pairs

        for key, value in _task(run_map, counts, skip_bad_records, f"map task {index} ({where})"):
            partitions[app.partition(key, n_reduce)].append((key, value))
    for step in range(len(sizes)):  # each step's reduces; in a pipeline, fused with the next step's map
        this, last = app.step(step), step == len(sizes) - 1
        following = [] if last else [[] for _ in range(sizes[step + 1])]
        for index, pairs in enumerate(partitions):
            sort_pairs(pairs, this.sort_values)  # by key, stable: a key's values stay in map order (or sorted)
            temp = output.temp_name(index, "seq")

            def run_reduce(skip: frozenset[str], pairs=pairs, temp=temp, this=this, last=last, step=step, index=index):
                groups = ((key, (v for _, v in group)) for key, group in groupby(pairs, key=itemgetter(0)))
                counters.current().builtin(counters.REDUCE_INPUT_RECORDS, len(pairs))
                with task_running("reduce", index):
                    if last:
                        written = output.write_lines(
                            output_dir / temp, this.run_reduce(groups, skip), compression=compression
                        )
                        counters.current().builtin(counters.REDUCE_OUTPUT_RECORDS, written)
                        return []
                    emitted = [
                        _pair(pair, "the records of the step before")
                        for pair in app.step(step + 1).run_record_map(this.run_reduce(groups, skip))
                    ]
                counters.current().builtin(counters.MAP_OUTPUT_RECORDS, len(emitted))
                return emitted

            where = f"reduce task {index}" + (f" of step {step + 1}" if len(sizes) > 1 else "")
            for key, value in _task(run_reduce, counts, skip_bad_records, where):
                following[app.step(step + 1).partition(key, sizes[step + 1])].append((key, value))
            if last:
                output.commit(output_dir, temp, index, compression)
        partitions = following
    output.finish(output_dir, sizes[-1], compression)


def _pair(pair: Any, where: str) -> tuple[str, Any]:
    """A map's pair (or Record) as it reaches the reduce side: checked, through the
    intermediate format."""
    key, value = shuffle_pair(pair, where)
    return key, roundtrip(value)


def _map_only(
    app: App,
    inputs: list[str],
    output_dir: Path,
    split_size: int,
    counts: Counters,
    skip_bad_records: int,
    compression: output.Compression,
) -> None:
    """No reduce: each map task's records, in the order emitted, are its own part file."""
    splits = make_splits(inputs, split_size)
    for index, split in enumerate(splits):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"
        temp = output.temp_name(index, "seq")

        def run_map(skip: frozenset[str], split=split, where=where, temp=temp, index=index) -> None:
            with task_running("map", index):
                records = output_records(app.run_map(split.key, map_source(app, split), split.start, skip), where)
                written = output.write_lines(output_dir / temp, records, compression=compression)
            counters.current().builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
            counters.current().builtin(counters.MAP_OUTPUT_RECORDS, written)
            counters.current().builtin(counters.REDUCE_OUTPUT_RECORDS, written)

        _task(run_map, counts, skip_bad_records, f"map task {index} ({where})")
        output.commit(output_dir, temp, index, compression)
    output.finish(output_dir, len(splits), compression)
