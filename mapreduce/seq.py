"""The sequential oracle: the whole job in one process, no sockets, no spills.

Deliberately simple and independent of the distributed shuffle: every pair in
memory, one stable sort, one reduce per key. Values pass through the
intermediate format once, so reduce sees what it sees in a distributed run.
"""

from __future__ import annotations

from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

from mapreduce import counters, defaults, output
from mapreduce.counters import Counters, counting
from mapreduce.errors import AppError
from mapreduce.inputs import make_splits, map_source
from mapreduce.job import NO_VALUE, App, Record, output_records
from mapreduce.shuffle import roundtrip, sort_pairs


def run_sequential(
    app: App, inputs: list[str], output_dir: Path, n_reduce: int, split_size: int = defaults.SPLIT_SIZE
) -> Counters:
    """Run the job; return its counters (one task at a time counts into them: a combine,
    never run here, counts nothing). ``output_dir`` must be prepared."""
    counts = Counters()
    with counting(counts):
        if n_reduce == 0:
            _map_only(app, inputs, output_dir, split_size, counts)
        else:
            _map_reduce(app, inputs, output_dir, n_reduce, split_size, counts)
    return counts


def _map_reduce(
    app: App, inputs: list[str], output_dir: Path, n_reduce: int, split_size: int, counts: Counters
) -> None:
    partitions: list[list[tuple[str, Any]]] = [[] for _ in range(n_reduce)]
    for split in make_splits(inputs, split_size):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"
        counts.builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
        for pair in app.run_map(split.key, map_source(app, split)):
            if isinstance(pair, Record):
                pair = (pair.key, None if pair.value is NO_VALUE else pair.value)
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise AppError(f"map emitted {pair!r} for {where}: expected a (key, value) pair or a Record")
            key, value = pair
            if type(key) is not str:
                raise AppError(f"map emitted key {key!r} ({type(key).__name__}) for {where}: keys must be str")
            partitions[app.partition(key, n_reduce)].append((key, roundtrip(value)))
            counts.builtin(counters.MAP_OUTPUT_RECORDS, 1)
    for index, pairs in enumerate(partitions):
        sort_pairs(pairs, app.sort_values)  # by key, stable: a key's values stay in map order (or sorted)
        counts.builtin(counters.REDUCE_INPUT_RECORDS, len(pairs))
        groups = ((key, (v for _, v in group)) for key, group in groupby(pairs, key=itemgetter(0)))
        temp = output.temp_name(index, "seq")
        counts.builtin(counters.REDUCE_OUTPUT_RECORDS, output.write_lines(output_dir / temp, app.run_reduce(groups)))
        output.commit(output_dir, temp, index)
    output.finish(output_dir, n_reduce)


def _map_only(app: App, inputs: list[str], output_dir: Path, split_size: int, counts: Counters) -> None:
    """No reduce: each map task's records, in the order emitted, are its own part file."""
    splits = make_splits(inputs, split_size)
    for index, split in enumerate(splits):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"
        counts.builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
        temp = output.temp_name(index, "seq")
        records = output_records(app.run_map(split.key, map_source(app, split)), where)
        written = output.write_lines(output_dir / temp, records)
        counts.builtin(counters.MAP_OUTPUT_RECORDS, written)
        counts.builtin(counters.REDUCE_OUTPUT_RECORDS, written)
        output.commit(output_dir, temp, index)
    output.finish(output_dir, len(splits))
