"""The output folder: checking it before a job, and committing partitions atomically.

Each partition is written to a temporary file inside the output folder, fsynced,
and renamed to ``part-NNNNN`` (``part-NNNNN.gz`` for a job run with ``--compress gzip``);
the first attempt to commit a partition wins. ``_SUCCESS`` is written last, only when
every partition is committed.

Compressed output is deterministic (no time or name in the gzip header, one compression
level, the same writes in the same order), so a distributed run's parts equal the
sequential oracle's byte for byte.
"""

from __future__ import annotations

import contextlib
import enum
import gzip
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mapreduce.errors import JobFailed, UsageError, storage_errors
from mapreduce.job import NO_VALUE

SUCCESS = "_SUCCESS"
_OURS = re.compile(r"^(part-\d{5}(\.gz)?|_SUCCESS|\.part-\d{5}\.[0-9a-z-]+\.tmp|\.mapreduce-visible-[0-9a-f]+)$")
GZIP_LEVEL = 6  # zlib's default: most of level 9's gain at a fraction of its time


class Compression(enum.StrEnum):
    """How part files are written (``--compress``)."""

    NONE = "none"
    GZIP = "gzip"

    @property
    def suffix(self) -> str:
        return ".gz" if self is Compression.GZIP else ""


_TEMP = re.compile(r"^\.part-\d{5}\.[0-9a-z-]+\.tmp$")


def is_temp_name(name: str) -> bool:
    """A reduce attempt's temporary output name (never a path: no folder can sneak in)."""
    return bool(_TEMP.match(name))


def attempt_temp_name(partition: int, job_id: str, attempt: int) -> str:
    """A reduce attempt's temporary output: unique across jobs, not just attempts."""
    return temp_name(partition, f"{job_id}-a{attempt}" if job_id else f"a{attempt}")


def part_name(partition: int, compression: Compression = Compression.NONE) -> str:
    return f"part-{partition:05d}{compression.suffix}"


def temp_name(partition: int, attempt_tag: str) -> str:
    return f".part-{partition:05d}.{attempt_tag}.tmp"


def prepare_output(folder: str | Path, overwrite: bool) -> Path:
    """Check the output folder can take a new job's output, creating it if needed.

    A folder holding anything is refused unless ``overwrite``; even then only a
    previous mapreduce output (``part-NNNNN``, ``part-NNNNN.gz``, ``_SUCCESS``) may be replaced, and it is
    replaced as the new partitions commit, so a failed job leaves no ``_SUCCESS``.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise UsageError(f"output {str(folder)!r} exists and is not a folder")
    if path.exists():
        entries = sorted(os.listdir(path))
        if entries and not overwrite:
            raise UsageError(
                f"output folder {str(folder)!r} already holds {len(entries)} file(s) "
                f"(e.g. {entries[0]!r}); choose another folder or pass --overwrite"
            )
        foreign = [e for e in entries if not _OURS.match(e)]
        if foreign:
            raise UsageError(
                f"output folder {str(folder)!r} holds {foreign[0]!r}, which is not mapreduce output; "
                "--overwrite only replaces a previous job's part-* files: choose another folder"
            )
    else:
        try:
            path.mkdir(parents=True)
        except OSError as exc:
            raise UsageError(f"cannot create output folder {str(folder)!r}: {exc.strerror}") from exc
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"output folder {str(folder)!r} is not writable")
    probe = path / f".mapreduce-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"output folder {str(folder)!r} is not writable: {exc.strerror}") from exc
    # A stale success marker must never vouch for a mix of old and new parts.
    (path / SUCCESS).unlink(missing_ok=True)
    return path


def show_visibility(folder: Path, job_id: str, token: str | None = None) -> str:
    """Write a file only processes that see this folder can read; return its token (new
    unless given: a restarted coordinator keeps its job's)."""
    token = token or secrets.token_hex(16)
    (folder / visibility_name(job_id)).write_text(token)
    return token


def sees_folder(folder: Path, job_id: str, token: str) -> bool:
    """Whether this process sees the coordinator's output folder (not just a folder of the same name)."""
    try:
        return bool(token) and (folder / visibility_name(job_id)).read_text() == token
    except (OSError, UnicodeDecodeError):
        return False


def visibility_name(job_id: str) -> str:
    return f".mapreduce-visible-{job_id}"


def remove_visibility(folder: Path, job_id: str) -> str | None:
    """Remove the file of ``show_visibility``. Never raises: at the end of a job that failed
    because the folder turned read-only, the job's own error is what to report; returns
    why the file stays, if it does."""
    try:
        (folder / visibility_name(job_id)).unlink(missing_ok=True)
        return None
    except OSError as exc:
        return f"{visibility_name(job_id)} stays in {folder}: {exc.strerror or exc}"


def format_line(key: str, value: Any) -> str:
    """``key<TAB>value``, or the key alone for a record with no value (``Record(line)``)."""
    if value is NO_VALUE:
        return f"{key}\n"
    return f"{key}\t{value if isinstance(value, str) else str(value)}\n"


@dataclass(frozen=True)
class Batches:
    """Output records given as (keys, values) batches in order, formatted a batch at a time
    (the identity reduce's output): a value of None is a record with no value."""

    batches: Iterable[tuple[list[str], list[Any]]]


def format_batch(keys: list[str], values: list[Any]) -> str:
    """The lines of a batch of records (see Batches)."""
    if values.count(None) == len(values):
        return "\n".join(keys) + "\n" if keys else ""
    return "".join(format_line(key, NO_VALUE if value is None else value) for key, value in zip(keys, values))


def write_lines(
    path: Path,
    results: Iterable[tuple[str, Any]] | Batches,
    what: str = "",
    role: str = "output",
    compression: Compression = Compression.NONE,
) -> int:
    """Write ``key<TAB>value`` lines (see format_line), compressed as asked, and fsync;
    return the number of lines.

    An OSError of the file itself (a full disk, a read-only folder) becomes a StorageError
    naming the folder as ``role`` ("output" or "scratch"): an OutputFolderError if the output
    folder cannot take the file. An exception raised while ``results`` computes a value
    (the user's reduce) passes through unchanged."""
    what = what or f"writing {path.name}"
    with storage_errors(path.parent, what, role):
        f = open(path, "wb")
    # No name and time 0 in the header: the same lines give the same bytes anywhere.
    sink = (
        gzip.GzipFile(filename="", mode="wb", fileobj=f, compresslevel=GZIP_LEVEL, mtime=0)
        if compression is Compression.GZIP
        else f
    )
    count = 0
    try:
        for text, lines in _chunks(results):
            with storage_errors(path.parent, what, role):
                sink.write(text.encode("utf-8", "surrogateescape"))
            count += lines
        with storage_errors(path.parent, what, role):
            if sink is not f:
                sink.close()  # writes the gzip stream's end (f stays open)
            f.flush()
            os.fsync(f.fileno())
            f.close()
    except BaseException:
        with contextlib.suppress(OSError):  # buffered bytes that cannot be written are dropped
            if sink is not f:
                sink.close()
        with contextlib.suppress(OSError):
            f.close()
        raise
    return count


def _chunks(results: Iterable[tuple[str, Any]] | Batches) -> Iterator[tuple[str, int]]:
    """Output text in chunks of thousands of lines, with their number of lines."""
    if isinstance(results, Batches):
        for keys, values in results.batches:
            yield format_batch(keys, values), len(keys)
        return
    batch = []
    for key, value in results:
        batch.append(format_line(key, value))
        if len(batch) >= 4096:
            yield "".join(batch), len(batch)
            batch.clear()
    yield "".join(batch), len(batch)


def commit(folder: Path, temp: str, partition: int, compression: Compression = Compression.NONE) -> None:
    """Atomically publish a partition written to ``temp`` inside ``folder``."""
    os.replace(folder / temp, folder / part_name(partition, compression))
    fsync_dir(folder)


def finish(folder: Path, n_partitions: int, compression: Compression = Compression.NONE) -> None:
    """Remove parts left from an older job (a wider one, or one compressed otherwise) and
    leftover temp files, then write _SUCCESS."""
    wanted = {part_name(p, compression) for p in range(n_partitions)}
    with storage_errors(folder, "removing what an earlier job left", "output"):
        for entry in os.listdir(folder):
            if _OURS.match(entry) and entry != SUCCESS and entry not in wanted:
                (folder / entry).unlink(missing_ok=True)
    missing = [name for name in sorted(wanted) if not (folder / name).exists()]
    if missing:
        raise JobFailed(f"cannot write {SUCCESS}: {missing[0]} was never committed")
    with storage_errors(folder, f"writing {SUCCESS}", "output"):
        with open(folder / SUCCESS, "wb") as f:
            os.fsync(f.fileno())
        fsync_dir(folder)


def remove_temps(folder: Path) -> list[str]:
    """Remove reduce attempts' temporary files; return those that could not be removed
    (a folder turned read-only keeps them)."""
    left = []
    try:
        entries = os.listdir(folder)
    except OSError:
        return left
    for entry in entries:
        if entry.startswith(".part-") and entry.endswith(".tmp"):
            try:
                (folder / entry).unlink(missing_ok=True)
            except OSError:
                left.append(entry)
    return left


def remove_output(folder: Path, created: bool) -> None:
    """Undo a cancelled job's output: its parts, temporary files and success marker, and the
    folder itself if the job ``created`` it and nothing else is in it."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    for entry in entries:
        if _OURS.match(entry):
            (folder / entry).unlink(missing_ok=True)
    if created:
        try:
            folder.rmdir()
        except OSError:
            pass  # something not ours is in it: it stays


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_output(folder: str | Path) -> Iterator[str]:
    """Every line of a committed output, partition by partition, decompressed (for tests and tools)."""
    folder = Path(folder)
    for part in sorted(p for p in folder.glob("part-*") if _OURS.match(p.name)):
        opener = gzip.open if part.name.endswith(".gz") else open
        with opener(part, "rt", encoding="utf-8") as f:
            yield from f
