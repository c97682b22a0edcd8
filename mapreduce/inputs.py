"""Input files and splits.

A split is a byte range of one file. Splits are cut at fixed offsets without
reading the file; the reader then moves both ends to line boundaries (a split
that starts mid-file skips the partial line it starts in, and every split
reads through the line that crosses its end), so each line belongs to exactly
one split and no UTF-8 character is ever cut.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mapreduce import counters, defaults
from mapreduce.errors import UsageError


@dataclass(frozen=True)
class Split:
    """One map task's input: bytes ``[start, end)`` of ``path``, moved to line boundaries."""

    key: str  # the path exactly as the user gave it: what map() receives as its key
    path: str  # absolute path, for reading
    start: int
    end: int
    fingerprint: str = ""  # the file's size and mtime: a worker that sees the same reads it directly


def check_inputs(paths: Sequence[str]) -> list[tuple[str, str, int]]:
    """Return ``(given, absolute, size)`` for each input, or raise UsageError naming the bad one."""
    if not paths:
        raise UsageError("no input files given")
    checked = []
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise UsageError(f"input file {given!r} does not exist")
        if not path.is_file():
            raise UsageError(f"input {given!r} is not a regular file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"input file {given!r} is not readable")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"input file {given!r} cannot be opened: {exc.strerror}") from exc
        checked.append((given, str(path.resolve()), path.stat().st_size))
    return checked


def make_splits(paths: Sequence[str], split_size: int = defaults.SPLIT_SIZE) -> list[Split]:
    if split_size < 1:
        raise UsageError(f"split size must be positive, got {split_size}")
    splits = []
    for given, absolute, size in check_inputs(paths):
        mark = fingerprint(absolute)
        if size <= split_size:
            splits.append(Split(given, absolute, 0, size, mark))
            continue
        for start in range(0, size, split_size):
            splits.append(Split(given, absolute, start, min(start + split_size, size), mark))
    return splits


def fingerprint(path: str) -> str:
    """Size and modification time (ns): equal at the same path means the same file, on
    this host or on a shared filesystem; "" if the file cannot be seen."""
    try:
        st = os.stat(path)
    except OSError:
        return ""
    return f"{st.st_size}:{st.st_mtime_ns}"


def read_split(split: Split, source: BinaryIO | None = None) -> str:
    """The text of a split, decoded as UTF-8 with replacement characters.
    ``source``: the file opened elsewhere (a remote one); by default the local path."""
    return _read_lines_of(split, source)[1].decode("utf-8", "replace")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a line record starts: the input as the user named it, and the byte offset of
    the line in that file (a line input app's map key, like Hadoop's text input)."""

    path: str
    offset: int


def line_records(split: Split, source: BinaryIO | None = None) -> Iterator[tuple[Position, str]]:
    """The lines of a split, each with its position: split at ``\n`` only, without it (a
    ``\r`` before it stays: the line as it is), decoded as UTF-8 with replacement characters."""
    offset, data = _read_lines_of(split, source)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the data ends with a newline: no line after it
    for raw in lines:
        yield Position(split.key, offset), raw.decode("utf-8", "replace")
        offset += len(raw) + 1


def map_source(app: Any, split: Split, source: BinaryIO | None = None) -> str | Iterator[tuple[Position, str]]:
    """What an app's map task reads: the split's text, or its line records (a line input
    app); its lines are counted into the running task's counters (MAP_INPUT_RECORDS)."""
    counts = counters.current()
    if app.input_format.value == "lines":
        return line_records(split, source) if counts is None else _counted(line_records(split, source), counts)
    text = read_split(split, source)
    if counts is not None:
        counts.builtin(counters.MAP_INPUT_RECORDS, text.count("\n") + (1 if text and text[-1] != "\n" else 0))
    return text


def _counted(records: Iterator, counts: counters.Counters) -> Iterator:
    n = 0
    try:
        for record in records:
            n += 1
            yield record
    finally:
        counts.builtin(counters.MAP_INPUT_RECORDS, n)


def _read_lines_of(split: Split, source: BinaryIO | None) -> tuple[int, bytes]:
    """Where the split's first whole line starts in its file, and the bytes of its lines."""
    if source is not None:
        return line_range(source, split.start, split.end)
    with open(split.path, "rb") as f:
        return line_range(f, split.start, split.end)


def read_range(f: BinaryIO, start: int, end: int) -> bytes:
    """Bytes of the lines that begin in ``[start, end)``; see the module docstring."""
    return line_range(f, start, end)[1]


def line_range(f: BinaryIO, start: int, end: int) -> tuple[int, bytes]:
    """Where the first line that begins in ``[start, end)`` begins, and the bytes of those lines."""
    if start > 0:
        # A line that began before `start` belongs to the previous split: skip it,
        # unless the byte before `start` ends a line (then a new line begins here).
        f.seek(start - 1)
        if f.read(1) != b"\n":
            f.readline()
        start = f.tell()
    else:
        f.seek(0)
    if start >= end:
        return start, b""
    data = f.read(end - start)
    if data and not data.endswith(b"\n"):
        data += f.readline()  # finish the line that crosses `end`
    return start, data
