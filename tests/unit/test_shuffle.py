"""Map-side buffering, spilling and merging: the output does not depend on spills."""

from __future__ import annotations

import io
import random
from operator import itemgetter

import msgpack
import pytest

from helpers import iter_run_file
from mapreduce import shuffle
from mapreduce.errors import AppError
from mapreduce.job import RangePartition, stable_partition
from mapreduce.shuffle import MapOutputBuffer, iter_run, merge_runs, roundtrip, write_run

first = itemgetter(0)


def random_pairs(seed: int, n: int, n_keys: int = 40) -> list[tuple[str, int]]:
    rng = random.Random(seed)
    keys = [rng.choice(["", "a", "é", "日本", "Zz", "a b"]) + str(k) for k in range(n_keys)]
    # Values number the emissions so order can be checked.
    return [(rng.choice(keys), i) for i in range(n)]


def run_buffer(
    tmp_path,
    name,
    pairs,
    n,
    combine=None,
    limit=shuffle.DEFAULT_BUFFER_RECORDS,
    partition=stable_partition,
    per_call=None,
    as_list=False,
):
    """Feed ``pairs`` through a buffer; ``per_call=None`` is one add_all call, as run_map makes;
    ``as_list`` hands add_all lists (as a map returning a list does), not iterators."""
    scratch = tmp_path / f"scratch-{name}"
    scratch.mkdir()
    buf = MapOutputBuffer(n, partition, combine, scratch, limit)
    size = per_call or max(1, len(pairs))
    for i in range(0, len(pairs), size):
        chunk = pairs[i : i + size]
        buf.add_all(chunk if as_list else iter(chunk), "input 'x'")
    out = tmp_path / f"{name}.out"
    spills = len(buf.spills)
    lengths = buf.finish(out)
    assert len(lengths) == n
    assert sum(lengths) == out.stat().st_size
    assert list(scratch.iterdir()) == []  # spill files are removed
    assert buf.total == len(pairs)
    parts, offset = [], 0
    for length in lengths:
        parts.append([tuple(r) for r in iter_run_file(str(out), offset, length)])
        offset += length
    return parts, spills


def sum_combine(key, values):
    return sum(values)


def concat_combine(key, values):
    # Associative but order-sensitive: exposes any reordering of values.
    return "".join(values)


def check_partitions(parts, pairs, n, combine=None):
    """Each partition holds exactly its keys, sorted; a key's values in emission order."""
    for index, part in enumerate(parts):
        keys = [k for k, _ in part]
        assert keys == sorted(keys)
        mine = [pair for pair in pairs if stable_partition(pair[0], n) == index]
        if combine is None:
            assert part == sorted(mine, key=first)
        else:
            assert keys == sorted({k for k, _ in mine})  # one combined record per key
            for key, value in part:
                assert value == combine(key, iter([v for k, v in mine if k == key]))
    assert sum(len(part) for part in parts) == (len(pairs) if combine is None else len({k for k, _ in pairs}))


COMBINE_CASES = [
    pytest.param(None, lambda: random_pairs(1, 400), id="no-combiner"),
    pytest.param(sum_combine, lambda: random_pairs(2, 500), id="sum"),
    pytest.param(
        concat_combine, lambda: [(random.Random(i).choice("abcdef"), str(i % 10)) for i in range(300)], id="concat"
    ),
]


def test_unspilled_buffer_is_sorted_and_complete(tmp_path):
    pairs = random_pairs(1, 400)
    parts, spills = run_buffer(tmp_path, "mem", pairs, 4)
    assert spills == 0
    check_partitions(parts, pairs, 4)


@pytest.mark.parametrize("limit", [1, 3, 7, 50])
@pytest.mark.parametrize("combine, make_pairs", COMBINE_CASES)
def test_spills_do_not_change_partitions(tmp_path, combine, make_pairs, limit):
    # One record per add_all call: every spill happens at the end of a call.
    pairs = make_pairs()
    expected, spills = run_buffer(tmp_path, "mem", pairs, 3, combine=combine)
    assert spills == 0
    got, spills = run_buffer(tmp_path, "spill", pairs, 3, combine=combine, limit=limit, per_call=1)
    assert spills >= len(pairs) // limit - 1 and spills > 1
    assert got == expected
    check_partitions(got, pairs, 3, combine)


@pytest.mark.parametrize("limit", [1, 7, 50])
@pytest.mark.parametrize("combine, make_pairs", COMBINE_CASES)
def test_spills_within_one_add_all_call_do_not_change_partitions(tmp_path, combine, make_pairs, limit):
    pairs = make_pairs()
    expected, _ = run_buffer(tmp_path, "mem", pairs, 3, combine=combine)
    got, spills = run_buffer(tmp_path, "spill", pairs, 3, combine=combine, limit=limit)
    assert spills > 1
    assert got == expected


def test_equal_keys_keep_emission_order_across_spills(tmp_path):
    pairs = [("k", i) for i in range(25)] + [("a", i) for i in range(25, 30)] + [("k", i) for i in range(30, 40)]
    (part,), spills = run_buffer(tmp_path, "spill", pairs, 1, limit=3, partition=lambda k, n: 0, per_call=1)
    assert spills >= 10
    assert part == [("a", i) for i in range(25, 30)] + [("k", i) for i in range(25)] + [("k", i) for i in range(30, 40)]


def test_equal_keys_keep_emission_order_without_spills(tmp_path):
    pairs = [("k", i) for i in range(25)] + [("a", i) for i in range(25, 30)] + [("k", i) for i in range(30, 40)]
    (part,), spills = run_buffer(tmp_path, "mem", pairs, 1, partition=lambda k, n: 0)
    assert spills == 0
    assert part == [("a", i) for i in range(25, 30)] + [("k", i) for i in range(25)] + [("k", i) for i in range(30, 40)]


def test_empty_buffer_writes_empty_partitions(tmp_path):
    parts, _ = run_buffer(tmp_path, "empty", [], 3)
    assert parts == [[], [], []]


def test_values_pass_through_msgpack(tmp_path):
    pairs = [("k", (1, 2)), ("k", {"x": [1, None]}), ("j", "é"), ("j", b"\x00\xff"), ("j", 1.5)]
    (part,), _ = run_buffer(tmp_path, "vals", pairs, 1, partition=lambda k, n: 0)
    assert part == [("j", "é"), ("j", b"\x00\xff"), ("j", 1.5), ("k", [1, 2]), ("k", {"x": [1, None]})]


@pytest.mark.parametrize("key", [1, None, b"bytes", 1.5, ("a",), True])
def test_non_str_key_raises_app_error(tmp_path, key):
    buf = MapOutputBuffer(2, stable_partition, None, tmp_path, 10)
    with pytest.raises(AppError, match="keys must be str") as info:
        buf.add_all([("ok", 1), (key, 1)], "input 'f.txt' (bytes 0-10)")
    assert "f.txt" in str(info.value)


def test_str_subclass_key_is_refused(tmp_path):
    class Word(str):
        pass

    buf = MapOutputBuffer(2, stable_partition, None, tmp_path, 10)
    with pytest.raises(AppError, match="keys must be str"):
        buf.add_all([(Word("w"), 1)], "x")


@pytest.mark.parametrize("item", [("k", 1, 2), ("k",), 5, None, "abc", "", ["k", 1, 2], {"k": 1}], ids=repr)
def test_non_pair_item_raises_app_error(tmp_path, item):
    buf = MapOutputBuffer(2, stable_partition, None, tmp_path, 10)
    with pytest.raises(AppError, match=r"expected a \(key, value\) pair") as info:
        buf.add_all([item], "input 'f.txt'")
    assert "f.txt" in str(info.value)


@pytest.mark.parametrize("item", ["ab", {"k": 1, "j": 2}], ids=["two-char-str", "two-key-dict"])
def test_two_item_iterables_that_are_not_pairs_raise_app_error(tmp_path, item):
    buf = MapOutputBuffer(2, stable_partition, None, tmp_path, 10)
    with pytest.raises(AppError):
        buf.add_all([item], "input 'f.txt'")


def test_list_pair_is_accepted(tmp_path):
    (part,), _ = run_buffer(tmp_path, "list", [["k", 1]], 1, partition=lambda k, n: 0)
    assert part == [("k", 1)]


# ---- range partitions: one buffer, sorted and cut ---------------------------------------


@pytest.mark.parametrize("limit", [1, 7, 50, shuffle.DEFAULT_BUFFER_RECORDS])
@pytest.mark.parametrize("as_list", [True, False], ids=["list", "stream"])
def test_range_partitions_are_the_cut_sorted_buffer(tmp_path, limit, as_list):
    pairs = random_pairs(5, 600)
    cuts = tuple(sorted({k for k, _ in pairs})[i] for i in (3, 9, 10, 30))
    partition = RangePartition(cuts)
    got, spills = run_buffer(tmp_path, "r", pairs, 5, partition=partition, limit=limit, as_list=as_list)
    assert spills > 1 or limit > len(pairs)
    expected = [sorted((pr for pr in pairs if partition(pr[0], 5) == i), key=first) for i in range(5)]
    assert got == expected and all(got)


@pytest.mark.parametrize("combine, make_pairs", COMBINE_CASES)
def test_one_partition_takes_the_list_path_and_combines_the_same(tmp_path, combine, make_pairs):
    pairs = make_pairs()
    expected, _ = run_buffer(tmp_path, "hashed", pairs, 1, combine=combine, partition=lambda k, n: 0)
    for limit in (7, shuffle.DEFAULT_BUFFER_RECORDS):
        got, _ = run_buffer(tmp_path, f"l{limit}", pairs, 1, combine=combine, limit=limit, as_list=True)
        assert got == expected


def test_a_range_partition_for_another_count_is_refused(tmp_path):
    with pytest.raises(AppError, match="asked for 3"):
        MapOutputBuffer(3, RangePartition(("m",)), None, tmp_path)


@pytest.mark.parametrize("item", [("k", 1, 2), ["k", 1], None, "ab", (1, 2)], ids=repr)
def test_a_list_with_an_odd_item_takes_the_checking_path(tmp_path, item):
    buf = MapOutputBuffer(2, RangePartition(("m",)), None, tmp_path, 10)
    if item == ["k", 1]:  # a list pair is a pair: accepted, like anywhere
        buf.add_all([("a", 0), item], "x")
        assert buf.count == 2
        return
    with pytest.raises(AppError, match="f.txt"):
        buf.add_all([("a", 0), item], "input 'f.txt'")


# ---- merge_batches ---------------------------------------------------------------


def blocks_of(run, rng):
    """A run cut into blocks of random small sizes, as (keys, values) columns."""
    start = 0
    while start < len(run):
        size = rng.randint(1, 5)
        block = run[start : start + size]
        yield [k for k, _ in block], [v for _, v in block]
        start += size


@pytest.mark.parametrize("seed", range(40))
def test_merge_batches_is_a_stable_sort_whatever_the_blocks_and_skew(seed):
    rng = random.Random(seed)
    keys = [rng.choice("abcdefgh") * rng.randint(1, 2) for _ in range(rng.randint(1, 6))]  # few keys: hot ones
    runs = []
    for r in range(rng.randint(1, 7)):
        run = sorted(((rng.choice(keys), f"r{r}-{i}") for i in range(rng.randint(0, 40))), key=first)
        runs.append(run)
    merged = list(shuffle.pairs_of(shuffle.merge_batches([blocks_of(run, rng) for run in runs])))
    assert merged == sorted((pair for run in runs for pair in run), key=first)


def test_merge_batches_of_key_only_runs_is_sorted():
    rng = random.Random(7)
    runs = [sorted(rng.choice("abcdefghij") for _ in range(rng.randint(0, 30))) for _ in range(6)]
    batches = list(shuffle.merge_batches([blocks_of([(k, None) for k in run], rng) for run in runs]))
    assert [k for keys, _ in batches for k in keys] == sorted(k for run in runs for k in run)
    assert all(values == [None] * len(keys) for keys, values in batches)


def test_merge_batches_holds_one_block_per_run():
    """A run is read only when its block is used up, even when one key fills every block."""
    reads = []

    def run(name, records, size):
        for start in range(0, len(records), size):
            reads.append(name)
            yield [k for k, _ in records[start : start + size]], [v for _, v in records[start : start + size]]

    hot = [("k", i) for i in range(50)]
    merged = shuffle.merge_batches([run("a", hot, 5), run("b", [("j", 0)] + hot, 5)])
    # Run a's k's go first (stable): b's wait in its one block while a is read block by block.
    assert next(merged) == (["j", "k", "k", "k", "k", "k"], [0, 0, 1, 2, 3, 4]) and reads == ["a", "b"]
    assert next(merged) == (["k"] * 5, [5, 6, 7, 8, 9]) and reads == ["a", "b", "a"]
    assert list(shuffle.pairs_of(merged)) == hot[10:] + hot
    assert reads.count("a") == 10 and reads.count("b") == 11


def test_count_groups_counts_distinct_keys_across_batches():
    from mapreduce import counters

    counts = counters.Counters()
    batches = [(["a", "a", "b"], [1, 2, 3]), ([], []), (["b", "c"], [4, 5]), (["c"], [6])]
    with counters.counting(counts):
        assert list(shuffle.count_groups(iter(batches))) == batches
    assert counts[counters.GROUP, counters.REDUCE_INPUT_GROUPS] == 3


# ---- merge_runs ------------------------------------------------------------------


def test_merge_runs_is_stable_across_runs():
    runs = [
        [("a", "r0-1"), ("b", "r0-2"), ("b", "r0-3")],
        [("a", "r1-1"), ("c", "r1-2")],
        [],
        [("a", "r3-1"), ("b", "r3-2"), ("c", "r3-3")],
    ]
    assert list(merge_runs(runs)) == [
        ("a", "r0-1"), ("a", "r1-1"), ("a", "r3-1"),
        ("b", "r0-2"), ("b", "r0-3"), ("b", "r3-2"),
        ("c", "r1-2"), ("c", "r3-3"),
    ]  # fmt: skip


def test_merge_runs_matches_a_stable_sort_on_random_runs():
    rng = random.Random(4)
    for _ in range(200):
        runs = []
        for r in range(rng.randrange(1, 6)):
            run = sorted(((rng.choice("abcde"), (r, i)) for i in range(rng.randrange(8))), key=first)
            runs.append(run)
        flat = [record for run in runs for record in run]
        assert list(merge_runs([iter(run) for run in runs])) == sorted(flat, key=first)


def test_merge_runs_streams_from_iterators():
    runs = [iter([("a", 1), ("c", 3)]), iter([("b", 2)])]
    assert list(merge_runs(runs)) == [("a", 1), ("b", 2), ("c", 3)]
    assert list(merge_runs([iter([("x", 1)])])) == [("x", 1)]


# ---- run files -------------------------------------------------------------------


def _three_runs(tmp_path):
    runs = [
        [("a", 1), ("b", [1, 2])],
        [("c", "x" * 3000), ("d", None), ("e", 2.5)],
        [("f", 6)],
    ]
    path = tmp_path / "runs.bin"
    with open(path, "wb") as f:
        lengths = [write_run(f, run) for run in runs]
    assert sum(lengths) == path.stat().st_size
    return path, runs, lengths


def test_iter_run_file_reads_exactly_its_byte_range(tmp_path):
    path, runs, lengths = _three_runs(tmp_path)
    offset = 0
    for run, length in zip(runs, lengths):
        assert [tuple(r) for r in iter_run_file(str(path), offset, length)] == [
            (k, list(v) if isinstance(v, tuple) else v) for k, v in run
        ]
        offset += length
    # The middle run alone, without its neighbours.
    middle = list(iter_run_file(str(path), lengths[0], lengths[1]))
    assert [r[0] for r in middle] == ["c", "d", "e"]


def test_iter_run_reads_in_small_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(shuffle, "READ_CHUNK", 5)
    path, runs, lengths = _three_runs(tmp_path)
    got = [r[0] for r in iter_run_file(str(path), lengths[0], lengths[1] + lengths[2])]
    assert got == ["c", "d", "e", "f"]


def test_iter_run_does_not_read_past_its_range():
    data = msgpack.packb(["a", "b"]) + msgpack.packb([1, 2])  # one block: keys, then values
    f = io.BytesIO(data + b"\xc1 garbage that is not msgpack")
    assert list(iter_run(f, 0, len(data))) == [("a", 1), ("b", 2)]
    assert f.tell() == len(data)


@pytest.mark.parametrize("value_size", [1, 1000])
def test_blocks_hold_at_most_block_records_and_about_block_bytes(value_size):
    records = [(f"k{i:06d}", "v" * value_size) for i in range(shuffle.BLOCK * 3 + 5)]
    f = io.BytesIO()
    length = shuffle.write_run(f, iter(records))  # a stream, not a list
    unpacker = msgpack.Unpacker(io.BytesIO(f.getvalue()), raw=False)
    sizes, ends = [], []
    for array in unpacker:
        sizes.append(len(array))
        ends.append(unpacker.tell())
    keys, values = sizes[0::2], sizes[1::2]
    assert keys == values and sum(keys) == len(records) and max(keys) <= shuffle.BLOCK
    block_bytes = [b - a for a, b in zip([0, *ends[1::2]], ends[1::2])]
    assert max(block_bytes[1:]) < 2 * shuffle.BLOCK_BYTES  # after the first, sized by what it saw
    if value_size == 1:
        assert keys.count(shuffle.BLOCK) >= 2  # small records: full blocks
    assert list(iter_run(f, 0, length)) == records


def test_malformed_block_is_an_error():
    data = msgpack.packb(["a", "b"]) + msgpack.packb([1])  # two keys, one value
    with pytest.raises(OSError, match="malformed"):
        list(iter_run(io.BytesIO(data), 0, len(data)))
    data = msgpack.packb(["a"])  # keys without values
    with pytest.raises(OSError, match="cut"):
        list(iter_run(io.BytesIO(data), 0, len(data)))


def test_iter_run_file_of_zero_length_reads_nothing(tmp_path):
    assert list(iter_run_file(str(tmp_path / "does-not-exist"), 0, 0)) == []


def test_iter_run_file_past_end_of_file_raises(tmp_path):
    path, runs, lengths = _three_runs(tmp_path)
    with pytest.raises(OSError, match="early"):
        list(iter_run_file(str(path), lengths[0], sum(lengths)))


# ---- helpers -----------------------------------------------------------------


def test_roundtrip_turns_tuples_into_lists():
    assert roundtrip((1, ("a", (2.5, None)))) == [1, ["a", [2.5, None]]]
    assert roundtrip({"k": (1, 2)}) == {"k": [1, 2]}
    assert roundtrip("é") == "é" and roundtrip(7) == 7
    assert type(roundtrip(("x",))) is list


def test_group_and_combine_sorted():
    records = [("a", 1), ("a", 2), ("b", 5), ("c", 1), ("c", 1)]
    assert [(k, list(vs)) for k, vs in shuffle.group_sorted(records)] == [("a", [1, 2]), ("b", [5]), ("c", [1, 1])]
    assert list(shuffle.combine_sorted(records, sum_combine)) == [("a", 3), ("b", 5), ("c", 2)]


def test_grouping_in_memory_equals_the_streaming_merge():
    import random

    from mapreduce.shuffle import group_in_memory, group_sorted, merge_runs

    rng = random.Random(5)
    for _ in range(200):
        runs = [
            sorted(
                ((rng.choice("abcdefg") * rng.randint(1, 3), rng.randint(0, 9)) for _ in range(rng.randint(0, 30))),
                key=lambda r: r[0],
            )
            for _ in range(rng.randint(1, 6))
        ]
        streamed = [(k, list(vs)) for k, vs in group_sorted(merge_runs([iter(r) for r in runs]))]
        grouped = [(k, list(vs)) for k, vs in group_in_memory([iter(r) for r in runs])]
        assert grouped == streamed


def _output_bytes(
    tmp_path, name, calls, n=4, limit=shuffle.DEFAULT_BUFFER_RECORDS, partition=stable_partition, combine=None
):
    scratch = tmp_path / f"scratch-{name}"
    scratch.mkdir()
    buf = MapOutputBuffer(n, partition, combine, scratch, limit)
    for pairs in calls:
        buf.add_all(pairs, "input 'x'")
    out = tmp_path / f"{name}.out"
    lengths = buf.finish(out)
    return out.read_bytes(), lengths, buf.total


@pytest.mark.parametrize("partition", [stable_partition, lambda key, n: len(key) % n], ids=["default", "custom"])
def test_dict_items_take_a_shortcut_to_the_same_bytes(tmp_path, partition):
    counts = {key: value for key, value in random_pairs(3, 3000, n_keys=500)}
    assert len(counts) > 400
    fast = _output_bytes(tmp_path, "fast", [counts.items()], partition=partition)
    general = _output_bytes(tmp_path, "general", [list(counts.items())], partition=partition)
    assert fast == general and fast[2] == len(counts)
    probe = MapOutputBuffer(4, partition, None, tmp_path, shuffle.DEFAULT_BUFFER_RECORDS)
    probe.add_all(counts.items(), "input 'x'")
    assert probe.mapping is not None and not any(probe.buffers)  # the shortcut was taken
    # A second call after the shortcut, and a dict too big for the buffer, go the general way.
    more = [("a1", 7), ("zz", 8)]
    assert _output_bytes(
        tmp_path, "fast2", [counts.items(), iter(more)], combine=sum_combine, partition=partition
    ) == _output_bytes(
        tmp_path, "general2", [list(counts.items()), iter(more)], combine=sum_combine, partition=partition
    )
    assert _output_bytes(tmp_path, "small", [counts.items()], limit=100, partition=partition) == _output_bytes(
        tmp_path, "small-general", [list(counts.items())], limit=100, partition=partition
    )


def test_dict_items_with_a_non_str_key_raise_app_error(tmp_path):
    buf = MapOutputBuffer(2, stable_partition, None, tmp_path, 10)
    with pytest.raises(AppError, match="keys must be str"):
        buf.add_all({"ok": 1, 5: 1}.items(), "input 'f.txt'")


def test_sort_values_orders_each_keys_values_through_spills_combine_and_merge(tmp_path):
    from mapreduce.shuffle import group_in_memory, group_sorted, merge_runs

    rng = random.Random(9)
    pairs = [(rng.choice("abc"), rng.randrange(1000)) for _ in range(500)]

    def combine(key, values):
        yield from reversed(list(values))  # out of order on purpose: the buffer must sort again

    buf = MapOutputBuffer(1, stable_partition, combine, tmp_path, 37, sort_values=True)  # many spills
    buf.add_all(pairs, "test")
    out = tmp_path / "map.out"
    lengths = buf.finish(out)
    with open(out, "rb") as f:
        records = [tuple(r) for r in iter_run(f, 0, lengths[0])]
    assert records == sorted(pairs)
    runs = [sorted(pairs[:250]), sorted(pairs[250:])]
    for grouped in (group_in_memory([iter(r) for r in runs], True), group_sorted(merge_runs(runs, True))):
        assert [(k, list(v)) for k, v in grouped] == [
            (k, sorted(v for kk, v in pairs if kk == k)) for k in sorted({k for k, _ in pairs})
        ]


def test_sort_values_of_types_that_do_not_compare_is_a_clear_error(tmp_path):
    buf = MapOutputBuffer(1, stable_partition, None, tmp_path, 100, sort_values=True)
    buf.add_all([("a", 1), ("a", "x")], "test")
    with pytest.raises(AppError, match="sort_values needs values that compare"):
        buf._sorted_partitions()


def test_remembered_stable_partitions_equal_computed_ones(monkeypatch):
    monkeypatch.setattr(shuffle, "_KNOWN_PARTITIONS", {})
    monkeypatch.setattr(shuffle, "_KNOWN_MAX", 50)
    for seed in range(4):
        keys = [k for k, _ in random_pairs(seed, 40, n_keys=80)]
        for n in (1, 3, 7):
            assert shuffle._stable_partitions(dict.fromkeys(keys), n) == [
                stable_partition(k, n) for k in dict.fromkeys(keys)
            ]
    assert all(len(known) <= 50 + 80 for known in shuffle._KNOWN_PARTITIONS.values())
