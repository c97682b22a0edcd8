"""Input files and splits.

A split is a byte range of one file. Splits are cut at fixed offsets without
reading the file; the reader then moves both ends to line boundaries (a split
that starts mid-file skips the partial line it starts in, and every split
reads through the line that crosses its end), so each line belongs to exactly
one split and no UTF-8 character is ever cut.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mapreduce import defaults
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
    if source is not None:
        return read_range(source, split.start, split.end).decode("utf-8", "replace")
    with open(split.path, "rb") as f:
        return read_range(f, split.start, split.end).decode("utf-8", "replace")


def read_range(f: BinaryIO, start: int, end: int) -> bytes:
    """Bytes of the lines that begin in ``[start, end)``; see the module docstring."""
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
        return b""
    data = f.read(end - start)
    if data and not data.endswith(b"\n"):
        data += f.readline()  # finish the line that crosses `end`
    return data
