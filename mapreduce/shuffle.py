"""Partitioning, map-side buffering and spilling, sorted runs and their merge.

A map task writes one file: its R partitions one after another, each a sorted
run, plus the lengths of the partitions (its index), which travel to the
coordinator in the completion message. A run is a sequence of blocks of at most
``BLOCK`` records, each block two msgpack arrays: the keys, then the values.
Packing and unpacking a whole array is one C call, and a reader holds one block
of each run at a time. Reducers read their partition's byte range of every map's file and
merge the sorted runs a batch at a time (see merge_batches). Sorting is stable, and
runs are merged in map-task order, so a reducer sees a key's values in the order the
maps (in input order) emitted them: the same order the sequential oracle uses.
"""

from __future__ import annotations

import contextlib
import heapq
import io
import os
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import groupby, islice, repeat
from operator import is_not, itemgetter, ne
from pathlib import Path
from typing import Any, BinaryIO
from zlib import crc32

import msgpack

from mapreduce import counters
from mapreduce.errors import AppError, storage_errors
from mapreduce.job import NO_VALUE, RangePartition, TaskReduce, emitted, shuffle_pair, stable_partition

DEFAULT_BUFFER_RECORDS = 400_000
# A run's block: a reduce holds one block of every run it merges, so blocks are small in
# bytes; but each costs a few Python steps, so not too small in records.
BLOCK = 4096  # records at most
BLOCK_BYTES = 128 * 1024  # about
READ_CHUNK = 256 * 1024  # read from a run at once, at most: a reduce reads many side by side
_first = itemgetter(0)
_second = itemgetter(1)

Pair = tuple[str, Any]
Batch = tuple[list[str], list[Any]]  # records as columns: their keys, and their values
_DICT_ITEMS = type({}.items())


def roundtrip(value: Any) -> Any:
    """A value as a reducer sees it after the intermediate format (tuples become lists)."""
    return msgpack.unpackb(msgpack.packb(value), raw=False)


def run_blocks(
    f: BinaryIO,
    offset: int,
    length: int,
    guard: tuple[Path, str] | None = None,
    counted: Callable[[int], None] | None = None,
    chunk: int | None = None,
) -> Iterator[Batch]:
    """Stream the blocks of the run at ``[offset, offset+length)`` of an open file, each a
    (keys, values) batch. Reads by position (pread), so many runs of one file can be read
    side by side. With ``guard`` (folder, what), the file is the framework's own: a read
    error or a damaged block raises a StorageError naming that folder. ``counted`` hears
    each block's number of records; ``chunk``: the bytes read at once (READ_CHUNK)."""
    blocks = _run_blocks(f, offset, length, chunk or READ_CHUNK)
    if guard is not None:
        blocks = _guarded_reads(blocks, *guard)
    for block in blocks:
        if counted is not None:
            counted(len(block[0]))
        yield block


def iter_run(f: BinaryIO, offset: int, length: int, guard: tuple[Path, str] | None = None) -> Iterator[tuple]:
    """The records of a run, one (key, value) at a time (see run_blocks)."""
    return pairs_of(run_blocks(f, offset, length, guard))


def pairs_of(batches: Iterable[Batch]) -> Iterator[tuple]:
    for keys, values in batches:
        yield from zip(keys, values)


def _run_blocks(f: BinaryIO, offset: int, length: int, chunk_size: int) -> Iterator[Batch]:
    """The (keys, values) blocks of a run."""
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    read = _positional_reader(f)
    position = offset
    left = length
    keys = None
    while left > 0:
        chunk = read(min(chunk_size, left), position)
        position += len(chunk)
        if not chunk:
            raise OSError(f"{getattr(f, 'name', 'run')}: ends {left} bytes early")
        left -= len(chunk)
        unpacker.feed(chunk)
        for array in unpacker:
            if keys is None:
                keys = array
            else:
                if type(keys) is not list or type(array) is not list or len(keys) != len(array):
                    raise OSError(
                        f"{getattr(f, 'name', 'run')}: a malformed block before byte {offset + length - left}"
                    )
                yield keys, array
                keys = None
    if unpacker.tell() != length or keys is not None:
        raise OSError(f"{getattr(f, 'name', 'run')}: a block is cut at byte {offset + length}")


def _guarded_reads(blocks: Iterator, folder: Path, what: str) -> Iterator:
    """Items read back from the framework's own file: a read error is the environment's.
    (Only errors of ``blocks`` itself are caught, not those of the code consuming them.)"""
    with storage_errors(folder, what):
        yield from blocks


def _positional_reader(f: BinaryIO) -> Callable[[int, int], bytes]:
    try:
        fd = f.fileno()
    except (AttributeError, io.UnsupportedOperation):  # an in-memory file

        def seek_and_read(size: int, position: int) -> bytes:
            f.seek(position)
            return f.read(size)

        return seek_and_read
    return lambda size, position: os.pread(fd, size, position)


def combine_sorted(records: Iterable[Pair], combine: Callable[[str, Iterator[Any]], Any]) -> Iterator[Pair]:
    """Each key's values through ``combine``, which may emit none, one or many values (see
    job.emitted), all under the key it was given: its output is already partitioned. A
    TaskReduce (a streaming combiner) takes the run whole and must emit its keys in order."""
    if isinstance(combine, TaskReduce):
        return _combined_whole(records, combine)
    return _combined_by_key(records, combine)


def _combined_whole(records: Iterable[Pair], combine: TaskReduce) -> Iterator[Pair]:
    counts = counters.current()
    n_in = n_out = 0
    given: set[str] = set()  # a key reaches the combiner before it can write it back

    def counted() -> Iterator[Pair]:
        nonlocal n_in
        for record in records:
            n_in += 1
            given.add(record[0])
            yield record

    last = None
    for item in combine.run(group_sorted(counted())):
        key, value = shuffle_pair(item, "the combiner's output")
        if key not in given or (last is not None and key < last):
            raise AppError(f"the combiner wrote key {key!r} out of turn: it must keep its input's keys, in order")
        last = key
        n_out += 1
        yield key, value
    if counts is not None:
        counts.builtin(counters.COMBINE_INPUT_RECORDS, n_in)
        counts.builtin(counters.COMBINE_OUTPUT_RECORDS, n_out)


def _combined_by_key(records: Iterable[Pair], combine: Callable[[str, Iterator[Any]], Any]) -> Iterator[Pair]:
    counts = counters.current()
    n_in = n_out = 0
    for key, group in groupby(records, key=_first):
        values = list(value for _, value in group)
        n_in += len(values)
        for out_key, value in emitted(key, combine(key, iter(values))):
            if out_key != key:
                raise AppError(f"combine emitted a record under key {out_key!r} for key {key!r}: it must keep its key")
            n_out += 1
            yield key, None if value is NO_VALUE else value
    if counts is not None:
        counts.builtin(counters.COMBINE_INPUT_RECORDS, n_in)
        counts.builtin(counters.COMBINE_OUTPUT_RECORDS, n_out)


def merge_runs(runs: Sequence[Iterable[Pair]], sort_values: bool = False) -> Iterator[Pair]:
    """A stable k-way merge of runs of pairs: equal keys keep the order of ``runs`` (with
    ``sort_values``, runs are in (key, value) order and so is the merge)."""
    if len(runs) == 1:
        return iter(runs[0])
    if sort_values:
        return _comparing(heapq.merge(*runs))
    return pairs_of(merge_batches([column_blocks(run) for run in runs]))


def merge_batches(runs: Sequence[Iterable[Batch]], sort_values: bool = False) -> Iterator[Batch]:
    """A stable k-way merge of sorted runs, each a stream of (keys, values) blocks, as a
    stream of batches in order.

    Each round takes, from every run's current block, the records that are sure to come
    before anything still unread, and orders them with one sort: the list sort merges the
    presorted pieces in C, where a heap costs a Python step per record. The frontier is
    the smallest last key of the runs' blocks (every run's later records are not below its
    block's last key). Records below it all go out; of the records equal to it, those of
    the first run whose block ends on it and of the runs before it (whose blocks go past
    it), in run order, which keeps the merge stable. That first run's block is used up
    then, so each round reads at least one block, and memory stays one block per run,
    whatever the keys' skew.

    With ``sort_values`` the runs are in (key, value) order: they are merged by a heap."""
    if sort_values:
        return column_blocks(merge_runs([pairs_of(run) for run in runs], True))
    if len(runs) == 1:
        return iter(runs[0])
    return _merge_blocks([iter(run) for run in runs])


def _merge_blocks(runs: list[Iterator[Batch]]) -> Iterator[Batch]:
    keys: list[list[str]] = [[] for _ in runs]
    values: list[list[Any]] = [[] for _ in runs]
    starts = [0] * len(runs)  # the first record of each block not yet merged
    live = list(range(len(runs)))
    while True:
        for r in live:
            while starts[r] == len(keys[r]):  # used up: read the run's next block
                block = next(runs[r], None)
                if block is None:
                    break
                keys[r], values[r], starts[r] = block[0], block[1], 0
        live = [r for r in live if starts[r] < len(keys[r])]  # a run that ended leaves the merge
        if len(live) <= 1:
            for r in live:
                yield keys[r][starts[r] :], values[r][starts[r] :]
                yield from runs[r]
            return
        frontier = min(keys[r][-1] for r in live)
        first = next(r for r in live if keys[r][-1] == frontier)
        batch_keys: list[str] = []
        batch_values: list[Any] = []
        pieces = 0
        for r in live:
            block_keys, start = keys[r], starts[r]
            if r == first:
                end = len(block_keys)
            elif r < first:
                end = bisect_right(block_keys, frontier, start)
            else:
                end = bisect_left(block_keys, frontier, start)
            if end > start:
                batch_keys += block_keys[start:end]
                batch_values += values[r][start:end]
                starts[r] = end
                pieces += 1
        yield _sorted_batch(batch_keys, batch_values) if pieces > 1 else (batch_keys, batch_values)


def _sorted_batch(keys: list[str], values: list[Any]) -> Batch:
    """A batch of sorted pieces in run order, sorted by key, stably."""
    if values.count(None) == len(values):  # keys alone (a sort's lines): equal keys are alike
        keys.sort()
        return keys, values
    pairs = sorted(zip(keys, values), key=_first)
    return list(map(_first, pairs)), list(map(_second, pairs))


def count_groups(batches: Iterable[Batch]) -> Iterator[Batch]:
    """The batches, their distinct keys counted as reduce input groups (for a reduce run
    a batch at a time)."""
    groups = 0
    last: Any = object()
    try:
        for keys, values in batches:
            if keys:
                groups += (keys[0] != last) + sum(map(ne, keys[1:], keys))
                last = keys[-1]
            yield keys, values
    finally:
        counts = counters.current()
        if counts is not None:
            counts.builtin(counters.REDUCE_INPUT_GROUPS, groups)


def sort_pairs(pairs: list[Pair], sort_values: bool = False) -> None:
    """Sort by key (stable: a key's values keep their order), or by (key, value)."""
    if sort_values:
        with _comparable():
            pairs.sort()
    else:
        pairs.sort(key=_first)


@contextlib.contextmanager
def _comparable() -> Iterator[None]:
    try:
        yield
    except TypeError as exc:  # only values compare: keys are always str
        raise AppError(f"sort_values needs values that compare with each other (one type): {exc}") from None


def _comparing(records: Iterator[Pair]) -> Iterator[Pair]:
    with _comparable():
        yield from records


def group_in_memory(runs: Sequence[Iterable[Pair]], sort_values: bool = False) -> Iterator[tuple[str, Iterator[Any]]]:
    """Group small runs in a dict: the same result as merging them, with no per-record heap."""
    table: dict[str, list] = {}
    get = table.get
    for run in runs:
        for key, value in run:
            values = get(key)
            if values is None:
                table[key] = [value]
            else:
                values.append(value)
    for key in sorted(table):
        values = table[key]
        if sort_values:
            with _comparable():
                values.sort()
        yield key, iter(values)


def _values_sorted_per_key(records: Iterable[Pair]) -> Iterator[Pair]:
    """(key, value) order again after a combine (one key's output in memory at a time)."""
    for key, group in groupby(records, key=_first):
        values = [value for _, value in group]
        with _comparable():
            values.sort()
        for value in values:
            yield key, value


def group_sorted(records: Iterable[Pair]) -> Iterator[tuple[str, Iterator[Any]]]:
    for key, group in groupby(records, key=_first):
        yield key, (value for _, value in group)


def _blocks(records: Iterable[Pair]) -> Iterator[list]:
    if isinstance(records, list):
        for start in range(0, len(records), BLOCK):
            yield records[start : start + BLOCK]
        return
    stream = iter(records)
    while block := list(islice(stream, BLOCK)):
        yield block


def column_blocks(records: Iterable[Pair]) -> Iterator[Batch]:
    """Records as (keys, values) blocks of at most BLOCK records."""
    for block in _blocks(records):
        yield list(map(_first, block)), list(map(_second, block))


def write_run(f: BinaryIO, records: Iterable[Pair]) -> int:
    """Write records as blocks of keys and values; return the number of bytes written."""
    return write_batches(f, column_blocks(records))


def write_batches(f: BinaryIO, batches: Iterable[Batch]) -> int:
    """Write a run given as (keys, values) batches in order: the same bytes as write_run."""
    run = RunWriter(f)
    for keys, values in batches:
        run.write(keys, values)
    return run.written


def write_columns(f: BinaryIO, keys: list[str], values: list[Any]) -> int:
    """Write a run given as its keys (sorted) and their values: the same bytes as write_run."""
    return write_batches(f, [(keys, values)])


class RunWriter:
    """Writes a run's records as blocks of about BLOCK_BYTES (at most BLOCK records): the
    bytes per record of each block set the next one's number of records."""

    def __init__(self, f: BinaryIO):
        self.f = f
        self.pack = msgpack.Packer(use_bin_type=True).pack
        self.size = 256  # records in the next block
        self.written = 0

    def write(self, keys: list[str], values: list[Any]) -> None:
        start = 0
        while start < len(keys):
            end = start + self.size
            if start == 0 and len(keys) <= end:  # no copy of a batch that is one block
                data = self.pack(keys) + self.pack(values)
            else:
                data = self.pack(keys[start:end]) + self.pack(values[start:end])
            records = min(end, len(keys)) - start
            self.size = max(16, min(BLOCK, records * BLOCK_BYTES // len(data)))
            self.f.write(data)
            self.written += len(data)
            start = end


class GuardedWriter:
    """A binary file of the framework's own whose failures are the environment's: an
    OSError of ``write``, ``flush`` or ``close`` becomes a StorageError naming ``folder``.
    Only file calls are guarded: records computed by user code on their way in (a lazy
    combine, a reduce) raise as they are."""

    def __init__(self, f: BinaryIO, folder: str | Path, what: str):
        self.f, self.folder, self.what = f, folder, what
        self.name = getattr(f, "name", "")

    @classmethod
    def open(cls, path: Path, what: str, mode: str = "wb") -> GuardedWriter:
        with storage_errors(path.parent, what):
            return cls(open(path, mode), path.parent, what)

    def write(self, data: bytes) -> int:
        with storage_errors(self.folder, self.what):
            return self.f.write(data)

    def flush(self) -> None:
        with storage_errors(self.folder, self.what):
            self.f.flush()

    def close(self) -> None:
        with storage_errors(self.folder, self.what):
            self.f.close()

    def abandon(self) -> None:
        """Close after a failure: bytes still buffered are dropped if they cannot be written."""
        with contextlib.suppress(OSError):
            self.f.close()


def _sorted_columns(pairs: list[Pair], sort_values: bool) -> Batch:
    """Pairs sorted by key, stably (or by key and value), as columns. Keys with no values
    (a sort's lines) are sorted alone: no pairs to move, and str against str compares fastest."""
    if not any(map(is_not, map(_second, pairs), repeat(None))):  # in C, and stops at the first value
        keys = list(map(_first, pairs))
        keys.sort()
        return keys, [None] * len(keys)
    sort_pairs(pairs, sort_values)
    return list(map(_first, pairs)), list(map(_second, pairs))


_KNOWN_PARTITIONS: dict[int, dict[str, int]] = {}  # n -> key -> stable_partition(key, n)
_KNOWN_MAX = 200_000  # keys: a few tens of megabytes at most


def _stable_partitions(keys: Iterable[str], n: int) -> list[int]:
    """stable_partition of each key, remembered across the maps of this process: the keys
    of in-mapper combining (words, say) recur from split to split, and a dict lookup costs a
    fifth of encoding and checksumming the key. Forgotten when it holds _KNOWN_MAX keys."""
    known = _KNOWN_PARTITIONS.setdefault(n, {})
    if len(known) > _KNOWN_MAX:
        known.clear()
    get = known.get
    partitions = list(map(get, keys))
    if None in partitions:
        for i, (key, p) in enumerate(zip(keys, partitions)):
            if p is None:
                partitions[i] = known[key] = crc32(key.encode("utf-8", "surrogatepass")) % n
    return partitions


def _cut_points(partition: Callable[[str, int], int], n: int) -> tuple[str, ...] | None:
    """The cut points of partitions that are key ranges, else None."""
    if isinstance(partition, RangePartition):
        partition.check(n)
        return partition.cuts
    return () if n == 1 else None


class MapOutputBuffer:
    """Collects a map task's output in memory up to a limit, sorting, combining and
    spilling partitioned runs to disk when full; `finish` writes the one file."""

    def __init__(
        self,
        n_partitions: int,
        partition: Callable[[str, int], int],
        combine: Callable[[str, Iterator[Any]], Any] | None,
        scratch: Path,
        limit_records: int = DEFAULT_BUFFER_RECORDS,
        spill_prefix: str = "spill",
        what: str = "map output",  # for error messages, e.g. "map output of attempt 12"
        sort_values: bool = False,  # runs in (key, value) order: a secondary sort
    ):
        self.sort_values = sort_values
        self.n = n_partitions
        self.partition = partition
        self.combine = combine
        self.scratch = scratch
        self.spill_prefix = spill_prefix
        self.what = what
        self.limit = limit_records
        # Partitions that are key ranges (a total order, or just one) need no call per
        # record: records wait in one list, and a sorted buffer is cut at the cut points.
        self.cuts = _cut_points(partition, n_partitions)
        self.buffers: list[list[Pair]] = [[] for _ in range(1 if self.cuts is not None else n_partitions)]
        # A map that returned dict.items() into an empty buffer: the dict and each partition's
        # keys. Its keys are distinct, so they sort as plain strings and need no combining.
        self.mapping: tuple[dict, list[list[str]]] | None = None
        self.count = 0  # records in the buffer now
        self.total = 0  # records added in all
        self.spills: list[tuple[Path, list[int]]] = []

    def add_all(self, pairs: Iterable[Any], where: str) -> None:
        if (
            type(pairs) is _DICT_ITEMS
            and not self.count
            and len(pairs) < self.limit
            and self._add_mapping(pairs.mapping)
        ):
            return
        self._unpack_mapping()
        if self.cuts is not None and type(pairs) is list and self._add_list(pairs):
            return
        n, partition, buffers, limit = self.n, self.partition, self.buffers, self.limit
        default_partition = partition is stable_partition  # inlined below: it runs per record
        ranges = self.cuts is not None
        count = self.count
        for pair in pairs:
            if (pair.__class__ is not tuple and pair.__class__ is not list) or len(pair) != 2:
                pair = shuffle_pair(pair, where)
            key, value = pair
            if type(key) is not str:
                raise AppError(f"map emitted key {key!r} ({type(key).__name__}) for {where}: keys must be str")
            if ranges:
                p = 0  # one list, cut into partitions when sorted
            elif default_partition:
                p = crc32(key.encode("utf-8", "surrogatepass")) % n
            else:
                p = partition(key, n)
            buffers[p].append((key, value))
            count += 1
            if count >= limit:
                self.count = count
                self._spill()
                buffers, count = self.buffers, 0  # the spill started fresh buffers
        self.count = count

    def _add_list(self, pairs: list) -> bool:
        """A map's list of pairs into the one list of a range-partitioned buffer, checked by
        passes in C rather than a Python step per pair, spilling as the buffer fills. False,
        adding nothing, if an item is not a tuple of a str and a value: the general path
        names it."""
        if not (
            set(map(type, pairs)) <= {tuple}
            and set(map(len, pairs)) <= {2}
            and set(map(type, map(_first, pairs))) <= {str}
        ):
            return False
        taken = 0
        while taken < len(pairs):
            room = self.limit - self.count
            chunk = pairs if taken == 0 and room >= len(pairs) else pairs[taken : taken + room]
            self.buffers[0].extend(chunk)
            self.count += len(chunk)
            taken += len(chunk)
            if self.count >= self.limit:
                self._spill()
        return True

    def _add_mapping(self, mapping: dict) -> bool:
        """Buffer a dict's items as its keys per partition (in-mapper combining makes this the
        common case: no tuple per record). False, buffering nothing, if a key is not a str."""
        if not all(type(key) is str for key in mapping):
            return False  # the general path names the bad key
        n = self.n
        if self.partition is stable_partition:
            partitions = _stable_partitions(mapping, n)
        else:
            partitions = [self.partition(key, n) for key in mapping]
        keys: list[list[str]] = [[] for _ in range(n)]
        appends = [part.append for part in keys]
        for p, key in zip(partitions, mapping):
            appends[p](key)
        self.mapping = (mapping, keys)
        self.count = len(mapping)
        return True

    def _unpack_mapping(self) -> None:
        """Turn a buffered mapping into records, before anything else joins it."""
        if self.mapping is not None:
            mapping, keys = self.mapping
            self.mapping = None
            for p, part in enumerate(keys):
                self.buffers[0 if self.cuts is not None else p].extend((key, mapping[key]) for key in part)

    def _sorted_partitions(self) -> list[Batch]:
        """The buffer's partitions, sorted and combined, as columns; the buffer is emptied."""
        self._unpack_mapping()
        runs = []
        for keys, values in self._partitions():
            # With in-mapper combining, keys are often distinct already: nothing to combine.
            if self.combine and len(set(keys)) < len(keys):
                combined = list(combine_sorted(zip(keys, values), self.combine))
                if self.sort_values:  # what combine emitted for a key, in order again
                    sort_pairs(combined, True)
                keys, values = list(map(_first, combined)), list(map(_second, combined))
            runs.append((keys, values))
        self.buffers = [[] for _ in self.buffers]
        self.total += self.count
        self.count = 0
        return runs

    def _partitions(self) -> list[Batch]:
        """The buffer's records by partition, each sorted: a range-partitioned buffer is
        sorted whole and cut where its keys cross the cut points."""
        if self.cuts is None:
            return [_sorted_columns(buf, self.sort_values) for buf in self.buffers]
        keys, values = _sorted_columns(self.buffers[0], self.sort_values)
        ends = [bisect_right(keys, cut) for cut in self.cuts] + [len(keys)]
        return [(keys[start:end], values[start:end]) for start, end in zip([0, *ends], ends)]

    def _spill(self) -> None:
        runs = self._sorted_partitions()  # user code (combine): outside the storage guard
        path = self.scratch / f"{self.spill_prefix}-{len(self.spills)}.run"
        what = f"spill of {self.what}"
        spilled = counters.current()
        if spilled is not None:
            spilled.builtin(counters.SPILLED_RECORDS, sum(len(keys) for keys, _ in runs))
        try:
            with storage_errors(self.scratch, what), open(path, "wb") as f:
                lengths = [write_columns(f, keys, values) for keys, values in runs]
        except BaseException:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
            raise
        self.spills.append((path, lengths))

    def finish(self, path: Path) -> list[int]:
        """Write the partitioned output file at ``path``; return each partition's length."""
        f = GuardedWriter.open(path, self.what)
        try:
            lengths = self.finish_into(f)
            f.close()
            return lengths
        except BaseException:
            f.abandon()
            raise

    def finish_into(self, f: BinaryIO | GuardedWriter) -> list[int]:
        """Append the partitioned output at ``f``'s position; return each partition's length.
        (No fsync: map output that a crash could cut is lost with its host anyway.)
        Pass a GuardedWriter so that a full or unwritable disk raises a StorageError; spills
        are removed whether or not it succeeds."""
        try:
            if self.mapping is not None:
                lengths = self._write_mapping(f)
            elif not self.spills:
                lengths = [write_columns(f, keys, values) for keys, values in self._sorted_partitions()]
            else:
                self._spill()
                lengths = self._merge_spills(f)
            f.flush()
        finally:
            self.discard()
        return lengths

    def _write_mapping(self, f: BinaryIO | GuardedWriter) -> list[int]:
        mapping, keys = self.mapping
        lengths = []
        for part in keys:
            part.sort()
            lengths.append(write_columns(f, part, list(map(mapping.__getitem__, part))))
        self.mapping = None
        self.total += self.count
        self.count = 0
        return lengths

    def discard(self) -> None:
        """Remove the spill files (after the output is written, or when the attempt fails)."""
        for spill, _ in self.spills:
            with contextlib.suppress(OSError):
                spill.unlink(missing_ok=True)
        self.spills.clear()

    def _merge_spills(self, out: BinaryIO | GuardedWriter) -> list[int]:
        what = f"spill of {self.what}"
        files: list[BinaryIO] = []
        try:
            with storage_errors(self.scratch, what):
                for path, _ in self.spills:
                    files.append(open(path, "rb"))
            offsets = [0] * len(files)
            lengths = []
            for p in range(self.n):
                runs = []
                for i, (f, (_, spill_lengths)) in enumerate(zip(files, self.spills)):
                    if spill_lengths[p]:
                        runs.append(run_blocks(f, offsets[i], spill_lengths[p], (self.scratch, what)))
                    offsets[i] += spill_lengths[p]
                # Each run reads its own file, so the k-way merge streams them side by side.
                merged = merge_batches(runs, self.sort_values)
                if self.combine:
                    combined = combine_sorted(pairs_of(merged), self.combine)
                    if self.sort_values:
                        combined = _values_sorted_per_key(combined)
                    lengths.append(write_run(out, combined))
                else:
                    lengths.append(write_batches(out, merged))
            return lengths
        finally:
            for f in files:
                f.close()
