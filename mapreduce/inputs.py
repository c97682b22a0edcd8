"""Input files and splits.

An input is a file, or a folder standing for the files directly in it (as in Hadoop:
not recursive, sub-folders skipped, names starting with ``_`` or ``.`` skipped so that
an earlier job's ``_SUCCESS`` and temporary files are never read), in name order.

A split is a byte range of one file. Splits are cut at fixed offsets without
reading the file; the reader then moves both ends to line boundaries (a split
that starts mid-file skips the partial line it starts in, and every split
reads through the line that crosses its end), so each line belongs to exactly
one split and no UTF-8 character is ever cut.

A compressed file (``.gz``, ``.bz2``, ``.xz``) cannot be cut: it is one split, read
whole and decompressed. One that turns out corrupt or truncated fails its map with an
InputError naming the file and where reading stopped.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from mapreduce import counters, defaults
from mapreduce.errors import InputError, UsageError


@dataclass(frozen=True)
class Codec:
    """A compression format an input may be in, known by its file name's suffix."""

    name: str
    suffix: str
    magic: bytes  # how every such file starts
    open: Callable[[BinaryIO], BinaryIO]  # the standard library's reader over a binary file object


CODECS = (
    Codec("gzip", ".gz", b"\x1f\x8b", gzip.open),
    Codec("bzip2", ".bz2", b"BZh", bz2.open),
    Codec("xz", ".xz", b"\xfd7zXZ\x00", lzma.open),
)
# What a damaged archive raises while it is decompressed (an OSError with an errno is
# the disk's failure instead, and passes through).
_DAMAGED = (OSError, EOFError, zlib.error, lzma.LZMAError)
_PIECE = 64 * 1024  # uncompressed bytes read at a time: where reading stopped is known to this much


def codec_of(name: str) -> Codec | None:
    """The compression a file is in, by its name; None for a plain file."""
    return next((c for c in CODECS if name.endswith(c.suffix)), None)


def skipped_name(name: str) -> bool:
    """A name in an input folder that is not input (``_SUCCESS``, temporary and hidden files)."""
    return name.startswith(("_", "."))


@dataclass(frozen=True)
class Split:
    """One map task's input: bytes ``[start, end)`` of ``path``, moved to line boundaries."""

    key: str  # the path exactly as the user gave it: what map() receives as its key
    path: str  # absolute path, for reading
    start: int
    end: int
    fingerprint: str = ""  # the file's size and mtime: a worker that sees the same reads it directly


def expand_inputs(paths: Sequence[str]) -> list[str]:
    """The input files the given paths stand for: a file itself, a folder the files in it
    (see the module docstring), each named as the user would (``folder/name``)."""
    if not paths:
        raise UsageError("no input files given")
    files = []
    for given in paths:
        if not Path(given).is_dir():
            files.append(given)  # a file, or what check_inputs will refuse, by the name given
            continue
        try:
            names = sorted(os.listdir(given))
        except OSError as exc:
            raise UsageError(f"input folder {given!r} cannot be listed: {exc.strerror}") from exc
        inside = [os.path.join(given, n) for n in names if not skipped_name(n)]
        inside = [path for path in inside if not os.path.isdir(path)]
        if not inside:
            raise UsageError(
                f"input folder {given!r} holds no input files (sub-folders and names starting "
                "with '_' or '.' are skipped)"
            )
        files.extend(inside)
    return files


def check_inputs(paths: Sequence[str]) -> list[tuple[str, str, int]]:
    """Return ``(given, absolute, size)`` for each input file (folders expanded), or raise
    UsageError naming the bad one."""
    checked = []
    for given in expand_inputs(paths):
        path = Path(given)
        if not path.exists():
            raise UsageError(f"input file {given!r} does not exist")
        if not path.is_file():
            raise UsageError(f"input {given!r} is not a regular file")
        if not os.access(path, os.R_OK):
            raise UsageError(f"input file {given!r} is not readable")
        try:
            with open(path, "rb") as f:
                start = f.read(8)
        except OSError as exc:
            raise UsageError(f"input file {given!r} cannot be opened: {exc.strerror}") from exc
        codec = codec_of(given)
        if codec is not None and start and not start.startswith(codec.magic[: len(start)]):
            raise UsageError(f"input file {given!r} is not {codec.name}-compressed, as its name says")
        checked.append((given, str(path.resolve()), path.stat().st_size))
    return checked


def make_splits(paths: Sequence[str], split_size: int = defaults.SPLIT_SIZE) -> list[Split]:
    if split_size < 1:
        raise UsageError(f"split size must be positive, got {split_size}")
    splits = []
    for given, absolute, size in check_inputs(paths):
        mark = fingerprint(absolute)
        if size <= split_size or codec_of(given) is not None:  # an archive cannot be cut
            splits.append(Split(given, absolute, 0, size, mark))
            continue
        for start in range(0, size, split_size):
            splits.append(Split(given, absolute, start, min(start + split_size, size), mark))
    return splits


def check_side_files(paths: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(name, absolute path, size)`` of each --file, or UsageError naming the bad one:
    missing, not a regular file, unreadable, or a name another --file has too. A file's name
    in the task folder is its base name, or NAME given as ``PATH#NAME`` (Hadoop's way)."""
    checked: dict[str, tuple[str, str, int]] = {}
    for given in paths:
        path, name = Path(given), Path(given).name
        if "#" in given and not path.exists():
            before, _, name = given.rpartition("#")
            path = Path(before)
            if not name or "/" in name or name in (".", ".."):
                raise UsageError(f"--file {given!r}: {name!r} after # is not a file name")
        if not path.is_file():
            raise UsageError(f"--file {given!r} {'is not a regular file' if path.exists() else 'does not exist'}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise UsageError(f"--file {given!r} cannot be read: {exc.strerror}") from exc
        if name in checked or skipped_name(name):
            why = "is given twice" if name in checked else "starts with _ or ."
            raise UsageError(f"--file {given!r}: the name {name!r} {why} (tasks open side files by name)")
        checked[name] = (name, str(path.resolve()), path.stat().st_size)
    return list(checked.values())


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


def map_source(app: Any, split: Split, source: BinaryIO | None = None) -> str | bytes | Iterator[tuple[Position, str]]:
    """What an app's map task reads: the split's text, its bytes (a bytes input app), or its
    line records (a line input app); its lines are counted into the running task's counters (MAP_INPUT_RECORDS)."""
    counts = counters.current()
    if app.input_format.value == "lines":
        return line_records(split, source) if counts is None else _counted(line_records(split, source), counts)
    text: str | bytes = _read_lines_of(split, source)[1]
    if app.input_format.value == "text":
        text = text.decode("utf-8", "replace")
    if counts is not None:
        newline = "\n" if isinstance(text, str) else b"\n"
        counts.builtin(counters.MAP_INPUT_RECORDS, text.count(newline) + (1 if text and text[-1:] != newline else 0))
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
    codec = codec_of(split.key)
    if codec is not None:  # one split, the whole file: its lines start at 0 of the uncompressed text
        return 0, read_compressed(split, codec, source)
    if source is not None:
        return line_range(source, split.start, split.end)
    with open(split.path, "rb") as f:
        return line_range(f, split.start, split.end)


def read_compressed(split: Split, codec: Codec, source: BinaryIO | None = None) -> bytes:
    """A compressed file's split (the whole file) decompressed. A remote ``source`` is
    fetched whole first (the decompressors read ahead in small pieces: one range each would
    be a round trip each). A damaged archive raises InputError saying where it broke."""
    if split.end <= split.start:
        return b""  # an empty file: no archive at all, no records
    if source is not None:
        source.seek(0)
        raw: BinaryIO = io.BytesIO(source.read(split.end))
        return _decompress(split.key, codec, raw)
    with open(split.path, "rb") as raw:
        return _decompress(split.key, codec, raw)


def _decompress(key: str, codec: Codec, raw: BinaryIO) -> bytes:
    pieces: list[bytes] = []
    done = 0
    try:
        with codec.open(raw) as f:
            while piece := f.read(_PIECE):
                pieces.append(piece)
                done += len(piece)
    except _DAMAGED as exc:
        if isinstance(exc, OSError) and exc.errno is not None:
            raise  # the disk failed, not the archive
        raise InputError(
            f"input {key!r} is a damaged {codec.name} file: reading failed after {done} uncompressed "
            f"bytes (within its first {raw.tell()} compressed bytes): {str(exc) or type(exc).__name__}"
        ) from exc
    return b"".join(pieces)


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
