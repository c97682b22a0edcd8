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
from mapreduce.errors import AppError
from mapreduce.inputs import make_splits, map_source
from mapreduce.job import NO_VALUE, App, Record, bad_record, output_records
from mapreduce.shuffle import roundtrip, sort_pairs

log = logging.getLogger(__name__)


def run_sequential(
    app: App,
    inputs: list[str],
    output_dir: Path,
    n_reduce: int,
    split_size: int = defaults.SPLIT_SIZE,
    skip_bad_records: int = 0,
    compression: output.Compression = output.Compression.NONE,
) -> Counters:
    """Run the job; return its counters (one task at a time counts into them: a combine,
    never run here, counts nothing). ``output_dir`` must be prepared. With
    ``skip_bad_records``, a record the user's code raises on is skipped at once (up to that
    many per task): the distributed run skips it after two attempts, with the same result."""
    counts = Counters()
    if n_reduce == 0:
        _map_only(app, inputs, output_dir, split_size, counts, skip_bad_records, compression)
    else:
        _map_reduce(app, inputs, output_dir, n_reduce, split_size, counts, skip_bad_records, compression)
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
    n_reduce: int,
    split_size: int,
    counts: Counters,
    skip_bad_records: int,
    compression: output.Compression,
) -> None:
    partitions: list[list[tuple[str, Any]]] = [[] for _ in range(n_reduce)]
    for index, split in enumerate(make_splits(inputs, split_size)):
        where = f"input {split.key!r} (bytes {split.start}-{split.end})"

        def run_map(skip: frozenset[str], split=split, where=where) -> list[tuple[str, Any]]:
            pairs = []
            for pair in app.run_map(split.key, map_source(app, split), split.start, skip):
                if isinstance(pair, Record):
                    pair = (pair.key, None if pair.value is NO_VALUE else pair.value)
                if not (isinstance(pair, tuple | list) and len(pair) == 2):
                    raise AppError(f"map emitted {pair!r} for {where}: expected a (key, value) pair or a Record")
                key, value = pair
                if type(key) is not str:
                    raise AppError(f"map emitted key {key!r} ({type(key).__name__}) for {where}: keys must be str")
                pairs.append((key, roundtrip(value)))
            counters.current().builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
            counters.current().builtin(counters.MAP_OUTPUT_RECORDS, len(pairs))
            return pairs

        for key, value in _task(run_map, counts, skip_bad_records, f"map task {index} ({where})"):
            partitions[app.partition(key, n_reduce)].append((key, value))
    for index, pairs in enumerate(partitions):
        sort_pairs(pairs, app.sort_values)  # by key, stable: a key's values stay in map order (or sorted)
        temp = output.temp_name(index, "seq")

        def run_reduce(skip: frozenset[str], pairs=pairs, temp=temp) -> None:
            groups = ((key, (v for _, v in group)) for key, group in groupby(pairs, key=itemgetter(0)))
            written = output.write_lines(output_dir / temp, app.run_reduce(groups, skip), compression=compression)
            counters.current().builtin(counters.REDUCE_INPUT_RECORDS, len(pairs))
            counters.current().builtin(counters.REDUCE_OUTPUT_RECORDS, written)

        _task(run_reduce, counts, skip_bad_records, f"reduce task {index}")
        output.commit(output_dir, temp, index, compression)
    output.finish(output_dir, n_reduce, compression)


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

        def run_map(skip: frozenset[str], split=split, where=where, temp=temp) -> None:
            records = output_records(app.run_map(split.key, map_source(app, split), split.start, skip), where)
            written = output.write_lines(output_dir / temp, records, compression=compression)
            counters.current().builtin(counters.MAP_INPUT_BYTES, split.end - split.start)
            counters.current().builtin(counters.MAP_OUTPUT_RECORDS, written)
            counters.current().builtin(counters.REDUCE_OUTPUT_RECORDS, written)

        _task(run_map, counts, skip_bad_records, f"map task {index} ({where})")
        output.commit(output_dir, temp, index, compression)
    output.finish(output_dir, len(splits), compression)
