"""Total order: a partitioner from a sample of the map's keys (as Hadoop's TeraSort and
Spark's sortByKey do), so that part files concatenated in order are globally sorted.

Before any task runs, the start of every split (SAMPLE_BYTES of it, cut at line
boundaries) goes through the app's map; the keys it emits are sorted and n_reduce - 1 cut
points taken at even quantiles. A key goes to the first partition whose cut point is
not below it. Quantiles follow the keys' distribution, so skewed data still gets balanced
partitions (only one key repeated very often cannot be split: all of it goes to one
partition). A key equal to a cut point goes to that cut point's partition. The sample is
read the same way every time, so ``mapreduce seq`` and every
distributed run cut the same partitions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from mapreduce.inputs import Split, map_source
from mapreduce.job import App, RangePartition, output_records

SAMPLE_BYTES = 64 * 1024  # read from the start of each split
MAX_SAMPLE_KEYS = 1_000_000


def with_total_order(app: App, splits: Sequence[Split], n_reduce: int) -> App:
    """The app with a partitioner cut from a sample of its map's keys over ``splits``."""
    if n_reduce <= 1:
        return dataclasses.replace(app, partition=RangePartition(()))
    keys = sorted(sample_keys(app, splits))
    if not keys:
        return dataclasses.replace(app, partition=RangePartition(("",) * (n_reduce - 1)))
    cuts = tuple(keys[len(keys) * i // n_reduce] for i in range(1, n_reduce))
    return dataclasses.replace(app, partition=RangePartition(cuts))


def sample_keys(app: App, splits: Sequence[Split]) -> list[str]:
    """The keys the app's map emits for the first SAMPLE_BYTES of each split."""
    keys: list[str] = []
    for split in splits:
        head = dataclasses.replace(split, end=min(split.end, split.start + SAMPLE_BYTES))
        where = f"the sample of input {split.key!r} (bytes {head.start}-{head.end})"
        keys.extend(key for key, _ in output_records(app.run_map(head.key, map_source(app, head)), where))
        if len(keys) >= MAX_SAMPLE_KEYS:
            break
    return keys
