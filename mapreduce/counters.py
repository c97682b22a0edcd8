"""Counters: named counts that user code and the framework add to while a task runs
(the MapReduce paper's section 4.9, Hadoop's counters).

User code calls ``mapreduce.increment(group, counter, amount=1)`` from map, combine,
reduce or their set-up and tear-down. Each attempt counts on its own; the coordinator adds
up the counts of successful attempts only, so a retried, lost or superseded attempt never
counts twice. The framework's own counts are in the group ``mapreduce`` (see BUILTIN).
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from mapreduce.errors import AppError

GROUP = "mapreduce"  # the framework's own counters, named as Hadoop names them

MAP_INPUT_RECORDS = "MAP_INPUT_RECORDS"  # lines read by maps
MAP_INPUT_BYTES = "MAP_INPUT_BYTES"
MAP_OUTPUT_RECORDS = "MAP_OUTPUT_RECORDS"  # records maps emitted (before combining)
COMBINE_INPUT_RECORDS = "COMBINE_INPUT_RECORDS"
COMBINE_OUTPUT_RECORDS = "COMBINE_OUTPUT_RECORDS"
SPILLED_RECORDS = "SPILLED_RECORDS"  # records written to spill files while a map's buffer was full
REDUCE_INPUT_GROUPS = "REDUCE_INPUT_GROUPS"  # distinct keys reduced
REDUCE_INPUT_RECORDS = "REDUCE_INPUT_RECORDS"
REDUCE_OUTPUT_RECORDS = "REDUCE_OUTPUT_RECORDS"  # records written by reduces (or maps of a map-only job)
BUILTIN = (
    MAP_INPUT_RECORDS,
    MAP_INPUT_BYTES,
    MAP_OUTPUT_RECORDS,
    COMBINE_INPUT_RECORDS,
    COMBINE_OUTPUT_RECORDS,
    SPILLED_RECORDS,
    REDUCE_INPUT_GROUPS,
    REDUCE_INPUT_RECORDS,
    REDUCE_OUTPUT_RECORDS,
)

Key = tuple[str, str]  # (group, counter)


class Counters(dict[Key, int]):
    """Counts by (group, counter)."""

    def add(self, group: str, counter: str, amount: int = 1) -> None:
        self[group, counter] = self.get((group, counter), 0) + amount

    def builtin(self, counter: str, amount: int) -> None:
        if amount:
            self.add(GROUP, counter, amount)

    def merge(self, other: Iterable[tuple[Key, int]]) -> None:
        for (group, counter), amount in other:
            self.add(group, counter, amount)

    def sorted_items(self) -> list[tuple[Key, int]]:
        """The framework's group first (in BUILTIN order), then the others by name."""
        order = {name: i for i, name in enumerate(BUILTIN)}
        return sorted(self.items(), key=lambda kv: (kv[0][0] != GROUP, order.get(kv[0][1], len(order)), kv[0]))


_current: contextvars.ContextVar[Counters | None] = contextvars.ContextVar("mapreduce_counters", default=None)


def increment(group: str, counter: str, amount: int = 1) -> None:
    """Add ``amount`` to the counter ``group``/``counter`` of the running task."""
    counters = _current.get()
    if counters is None:
        raise AppError("increment() counts for a running task: call it from map, combine, reduce or their hooks")
    if type(group) is not str or type(counter) is not str or type(amount) is not int:
        raise AppError(f"increment({group!r}, {counter!r}, {amount!r}): expected (str, str, int)")
    counters.add(group, counter, amount)


def current() -> Counters | None:
    """The running task's counters (None outside a task): for the framework's own counts."""
    return _current.get()


@contextmanager
def counting(counters: Counters) -> Iterator[Counters]:
    """Let the code run inside the block count into ``counters``."""
    token = _current.set(counters)
    try:
        yield counters
    finally:
        _current.reset(token)


def format_counters(counters: Counters) -> list[str]:
    """Lines ``group.counter = value`` for a summary."""
    return [f"{group}.{counter} = {value}" for (group, counter), value in counters.sorted_items()]
