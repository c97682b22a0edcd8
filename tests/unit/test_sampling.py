"""The total-order partitioner: cut points from a sample, ranges in key order."""

from __future__ import annotations

import random

import pytest

from mapreduce.errors import AppError
from mapreduce.inputs import make_splits
from mapreduce.job import App, RangePartition, Record
from mapreduce.sampling import sample_keys, with_total_order


def line_app() -> App:
    return App("t", map=lambda key, text: [Record(line) for line in text.splitlines()], reduce=lambda k, v: None)


def test_ranges_follow_the_cut_points_and_keys_equal_to_a_cut_go_to_its_partition():
    part = RangePartition(("b", "d"))
    assert [part(k, 3) for k in ["", "a", "b", "ba", "c", "d", "e"]] == [0, 0, 0, 1, 1, 1, 2]
    with pytest.raises(AppError, match="asked for 4"):
        part("a", 4)


def test_skewed_keys_still_get_balanced_partitions(tmp_path):
    rng = random.Random(3)
    # 90% of lines start with "a": cut points at quantiles, not at even letters.
    lines = [("a" if rng.random() < 0.9 else rng.choice("bcdefgh")) + str(rng.random()) for _ in range(40_000)]
    path = tmp_path / "skewed.txt"
    path.write_text("\n".join(lines) + "\n")
    splits = make_splits([str(path)], 256 * 1024)  # the sample: the first 64 KB of each
    app = with_total_order(line_app(), splits, 8)
    sizes = [0] * 8
    for line in lines:
        sizes[app.partition(line, 8)] += 1
    assert min(sizes) > 0.5 * len(lines) / 8 and max(sizes) < 1.6 * len(lines) / 8, sizes
    keys = sample_keys(line_app(), splits)
    assert len(keys) < len(lines) and keys == sample_keys(line_app(), splits)  # a sample, the same every time


def test_no_sample_and_one_reduce():
    app = with_total_order(line_app(), [], 3)  # no input, no sample: any valid cut will do
    assert 0 <= app.partition("anything", 3) < 3
    assert with_total_order(line_app(), [], 1).partition("x", 1) == 0
