"""The sequential oracle: the whole job in one process, no sockets, no spills.

Deliberately simple and independent of the distributed shuffle: every pair in
memory, one stable sort, one reduce per key. Values pass through the
intermediate format once, so reduce sees what it sees in a distributed run.
"""

from __future__ import annotations

from operator import itemgetter
from pathlib import Path
from typing import Any

from mapreduce import defaults, output
from mapreduce.errors import AppError
from mapreduce.inputs import make_splits, read_split
from mapreduce.job import NO_VALUE, App, Record, emitted, output_records
from mapreduce.shuffle import roundtrip


def run_sequential(
    app: App,
    inputs: list[str],
    output_dir: Path,
    n_reduce: int,
    split_size: int = defaults.SPLIT_SIZE,
    compression: output.Compression = output.Compression.NONE,
) -> int:
    """Run the job; return the number of output lines. ``output_dir`` must be prepared."""
    if n_reduce == 0:
        return _map_only(app, inputs, output_dir, split_size, compression)
    partitions: list[list[tuple[str, Any]]] = [[] for _ in range(n_reduce)]
    for split in make_splits(inputs, split_size):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"
        for pair in app.map(split.key, read_split(split)):
            if isinstance(pair, Record):
                pair = (pair.key, None if pair.value is NO_VALUE else pair.value)
            if not (isinstance(pair, tuple | list) and len(pair) == 2):
                raise AppError(f"map emitted {pair!r} for {where}: expected a (key, value) pair or a Record")
            key, value = pair
            if type(key) is not str:
                raise AppError(f"map emitted key {key!r} ({type(key).__name__}) for {where}: keys must be str")
            partitions[app.partition(key, n_reduce)].append((key, roundtrip(value)))
    lines = 0
    for index, pairs in enumerate(partitions):
        pairs.sort(key=itemgetter(0))
        results = []
        start = 0
        while start < len(pairs):
            key = pairs[start][0]
            end = start
            while end < len(pairs) and pairs[end][0] == key:
                end += 1
            results.extend(emitted(key, app.reduce(key, iter([v for _, v in pairs[start:end]]))))
            start = end
        temp = output.temp_name(index, "seq")
        lines += output.write_lines(output_dir / temp, results, compression=compression)
        output.commit(output_dir, temp, index, compression)
    output.finish(output_dir, n_reduce, compression)
    return lines


def _map_only(app: App, inputs: list[str], output_dir: Path, split_size: int, compression: output.Compression) -> int:
    """No reduce: each map task's records, in the order emitted, are its own part file."""
    lines = 0
    splits = make_splits(inputs, split_size)
    for index, split in enumerate(splits):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"
        temp = output.temp_name(index, "seq")
        records = output_records(app.map(split.key, read_split(split)), where)
        lines += output.write_lines(output_dir / temp, records, compression=compression)
        output.commit(output_dir, temp, index, compression)
    output.finish(output_dir, len(splits), compression)
    return lines
