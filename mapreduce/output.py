"""The output folder: checking it before a job, and committing partitions atomically.

Each partition is written to a temporary file inside the output folder, fsynced,
and renamed to ``part-NNNNN``; the first attempt to commit a partition wins.
``_SUCCESS`` is written last, only when every partition is committed.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from mapreduce.errors import JobFailed, UsageError, storage_errors
from mapreduce.job import NO_VALUE

SUCCESS = "_SUCCESS"
_OURS = re.compile(r"^(part-\d{5}|_SUCCESS|\.part-\d{5}\.[0-9a-z-]+\.tmp|\.mapreduce-visible-[0-9a-f]+)$")


_TEMP = re.compile(r"^\.part-\d{5}\.[0-9a-z-]+\.tmp$")


def is_temp_name(name: str) -> bool:
    """A reduce attempt's temporary output name (never a path: no folder can sneak in)."""
    return bool(_TEMP.match(name))


def attempt_temp_name(partition: int, job_id: str, attempt: int) -> str:
    """A reduce attempt's temporary output: unique across jobs, not just attempts."""
    return temp_name(partition, f"{job_id}-a{attempt}" if job_id else f"a{attempt}")


def part_name(partition: int) -> str:
    return f"part-{partition:05d}"


def temp_name(partition: int, attempt_tag: str) -> str:
    return f".{part_name(partition)}.{attempt_tag}.tmp"


def prepare_output(folder: str | Path, overwrite: bool) -> Path:
    """Check the output folder can take a new job's output, creating it if needed.

    A folder holding anything is refused unless ``overwrite``; even then only a
    previous mapreduce output (``part-*``, ``_SUCCESS``) may be replaced, and it is
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


def show_visibility(folder: Path, job_id: str) -> str:
    """Write a file only processes that see this folder can read; return its token."""
    token = secrets.token_hex(16)
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


def write_lines(path: Path, results: Iterable[tuple[str, Any]], what: str = "", role: str = "output") -> int:
    """Write ``key<TAB>value`` lines (see format_line) and fsync; return the number of lines.

    An OSError of the file itself (a full disk, a read-only folder) becomes a StorageError
    naming the folder as ``role`` ("output" or "scratch"): an OutputFolderError if the output
    folder cannot take the file. An exception raised while ``results`` computes a value
    (the user's reduce) passes through unchanged."""
    what = what or f"writing {path.name}"
    with storage_errors(path.parent, what, role):
        f = open(path, "w", encoding="utf-8", errors="surrogateescape", newline="\n")
    count = 0
    try:
        batch = []
        for key, value in results:
            batch.append(format_line(key, value))
            count += 1
            if len(batch) >= 4096:
                with storage_errors(path.parent, what, role):
                    f.write("".join(batch))
                batch.clear()
        with storage_errors(path.parent, what, role):
            f.write("".join(batch))
            f.flush()
            os.fsync(f.fileno())
            f.close()
    except BaseException:
        with contextlib.suppress(OSError):  # buffered text that cannot be written is dropped
            f.close()
        raise
    return count


def commit(folder: Path, temp: str, partition: int) -> None:
    """Atomically publish a partition written to ``temp`` inside ``folder``."""
    os.replace(folder / temp, folder / part_name(partition))
    fsync_dir(folder)


def finish(folder: Path, n_partitions: int) -> None:
    """Remove parts left from an older, wider job and leftover temp files, then write _SUCCESS."""
    wanted = {part_name(p) for p in range(n_partitions)}
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


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_output(folder: str | Path) -> Iterator[str]:
    """Every line of a committed output, partition by partition (for tests and tools)."""
    folder = Path(folder)
    for part in sorted(folder.glob("part-*")):
        with open(part, encoding="utf-8") as f:
            yield from f
