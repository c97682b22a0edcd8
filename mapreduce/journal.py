"""What a coordinator must not forget, kept in its state folder: a journal and an epoch.

The journal is an append-only file of records, one a line: ``CRC32 JSON``, the CRC (8 hex
digits) over the JSON's bytes. A record is durable (fsynced) before the caller acts on the
fact it holds. Reading it back:
- a last line cut short or failing its CRC is a write a crash interrupted: it is cut off
  (the fact was never acted on, since acting waits for the fsync);
- a bad line with good lines after it is damage no crash makes: the journal is refused
  (JournalError says what to do), never skipped over or read as empty.
The first record names the format, its version and what the journal belongs to; a journal
of another version or of something else is refused too. ``rewrite`` compacts it: the given
records go to a new file, fsynced, renamed over the old one.

The epoch fences a coordinator that lost its place. Each coordinator that starts on a
state folder takes the next epoch (``take_over``); before every act another coordinator
could contradict (a commit, a deletion, a journal write) it holds the folder's lock and
checks that the epoch is still its own (``fenced``): one paused (SIGSTOP) or cut off while
a newer one took over raises Superseded there, having changed nothing. The lock is held
only for the act, never while the coordinator waits, so a paused coordinator does not keep
a new one out; one paused in the middle of an act (a commit, an fsync) does hold the lock,
and the new one fences it the way clusters fence a node that stopped answering: it
SIGKILLs that stopped process (found in /proc/locks), whose act then ends as a crash would
end it (a rename done or not, a journal line cut), which recovery is built for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import signal
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mapreduce.errors import MapReduceError

log = logging.getLogger(__name__)

FORMAT = "mapreduce-journal"
STOPPED_GRACE = 1.0  # seconds a stopped holder of the lock is given (a SIGCONT) before it is killed
LOCK_PATIENCE = 60.0  # seconds to wait for a running holder's act to end
VERSION = 1
JOURNAL = "journal"
EPOCH = "epoch"


class JournalError(MapReduceError):
    """A state folder that cannot be used as it is: what is wrong and what to do."""


class Superseded(MapReduceError):
    """A newer coordinator took over this state folder: this one must change nothing more."""


def _line(record: dict) -> bytes:
    body = json.dumps(record, separators=(",", ":"), sort_keys=True).encode()
    return b"%08x %s\n" % (zlib.crc32(body), body)


def _parse(line: bytes) -> dict | None:
    """The record of one whole line (newline stripped), or None if it is damaged."""
    crc, _, body = line.partition(b" ")
    try:
        if len(crc) != 8 or int(crc, 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_records(path: Path) -> tuple[list[dict], int]:
    """The journal's good records and the length of the good part. Raises JournalError for
    damage before the last line."""
    *lines, _torn = path.read_bytes().split(b"\n")  # _torn: what follows the last newline
    records, good = [], 0
    for number, line in enumerate(lines, 1):
        record = _parse(line)
        if record is None:
            if number == len(lines):
                break  # the last write, torn by a crash: cut
            raise JournalError(
                f"{path} is damaged at line {number} of {len(lines)}, with good records after it: "
                "not the trace of a crash. Restore the folder from a backup, or move it away to start "
                "afresh (what it remembered is then forgotten)"
            )
        records.append(record)
        good += len(line) + 1
    return records, good


class Journal:
    """An open journal: replayed records in ``records``, new ones appended with ``append``."""

    def __init__(self, path: Path, records: list[dict]):
        self.path = path
        self.records = records  # as read at opening (header excluded)
        self._file = open(path, "ab")

    @classmethod
    def open(cls, folder: Path, kind: str, identity: str) -> Journal:
        """The journal of ``kind`` (what keeps it: "job", "cluster") in ``folder``, made if
        absent. ``identity``: what it must belong to (a job's spec); a journal of something
        else is refused."""
        path = folder / JOURNAL
        header = {"format": FORMAT, "version": VERSION, "kind": kind, "identity": identity}
        if not path.exists():
            _write_atomically(path, [header])
            return cls(path, [])
        records, good = read_records(path)
        what = f"state folder {folder}"
        if not records:
            raise JournalError(f"{what}: its journal has no readable header; move the folder away to start afresh")
        first = records[0]
        if first.get("format") != FORMAT:
            raise JournalError(f"{what} holds a file named {JOURNAL} that is not a mapreduce journal")
        if first.get("version") != VERSION:
            raise JournalError(
                f"{what} was written by another version of mapreduce (journal version {first.get('version')}, "
                f"this one reads {VERSION}): finish its work with that version, or move the folder away"
            )
        if first.get("kind") != kind:
            raise JournalError(
                f"{what} holds the state of a {first.get('kind')}, not of a {kind}: give this one a folder of its own"
            )
        if first.get("identity") != identity:
            raise JournalError(
                f"{what} holds the state of another {kind} ({first.get('identity')}, this is {identity}): "
                "run that one again to finish it, or give this one a folder of its own"
            )
        if good < path.stat().st_size:
            with open(path, "r+b") as f:  # the torn tail of a crash
                f.truncate(good)
                os.fsync(f.fileno())
        return cls(path, records[1:])

    def append(self, *records: dict, sync: bool = True) -> None:
        self._file.write(b"".join(_line(r) for r in records))
        self._file.flush()
        if sync:
            os.fsync(self._file.fileno())

    def rewrite(self, records: list[dict]) -> None:
        """Compact: the journal becomes its header and ``records``."""
        header = read_records(self.path)[0][0]
        self._file.close()
        _write_atomically(self.path, [header, *records])
        self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()


def _write_atomically(path: Path, records: list[dict]) -> None:
    temp = path.with_name(path.name + ".new")
    with open(temp, "wb") as f:
        f.write(b"".join(_line(r) for r in records))
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Epochs:
    """A state folder's epoch file: which coordinator owns the folder now."""

    def __init__(self, folder: Path):
        self._fd = os.open(folder / EPOCH, os.O_RDWR | os.O_CREAT, 0o600)
        self.epoch = 0  # this coordinator's, once it took over

    def _read(self) -> int:
        text = os.pread(self._fd, 32, 0).decode("ascii", "replace").strip()
        if not text:
            return 0
        if not text.isdigit():
            raise JournalError(f"the state folder's {EPOCH} file holds {text[:20]!r}, not an epoch")
        return int(text)

    def take_over(self, stopped_grace: float = STOPPED_GRACE, patience: float = LOCK_PATIENCE) -> int:
        """Become the folder's coordinator: the next epoch, made durable. A coordinator holding
        the lock while stopped (SIGSTOP) is killed after ``stopped_grace``; a running one is
        waited for up to ``patience`` (JournalError after that)."""
        self._acquire(stopped_grace, patience)
        try:
            self.epoch = self._read() + 1
            data = b"%d\n" % self.epoch
            os.pwrite(self._fd, data, 0)
            os.ftruncate(self._fd, len(data))
            os.fsync(self._fd)
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        return self.epoch

    def _acquire(self, stopped_grace: float, patience: float) -> None:
        start = time.monotonic()
        while True:
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                pass
            waited = time.monotonic() - start
            holder = self._holder()
            if holder is not None and _stopped(holder) and waited >= stopped_grace:
                log.warning(
                    "coordinator pid %d holds this state folder while stopped (SIGSTOP) in the middle of an "
                    "act: killing it, so that it can do nothing more (fencing)",
                    holder,
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(holder, signal.SIGKILL)
            elif waited >= patience:
                who = f"pid {holder}" if holder is not None else "another process"
                raise JournalError(
                    f"{who} has held the state folder's lock for {waited:.0f} s: is another coordinator of this "
                    "job stuck? Stop it, then start this one again"
                )
            time.sleep(0.02)

    def _holder(self) -> int | None:
        """The pid holding a lock on the epoch file (from /proc/locks), if it can be told."""
        inode = os.fstat(self._fd).st_ino
        try:
            with open("/proc/locks") as f:
                for line in f:
                    fields = line.split()
                    # "1: FLOCK ADVISORY WRITE PID MAJ:MIN:INODE START END" ("->" marks a waiter)
                    ours = len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].rsplit(":", 1)[-1] == str(inode)
                    if ours and fields[4].isdigit() and int(fields[4]) != os.getpid():
                        return int(fields[4])
        except OSError:
            pass
        return None

    @contextlib.contextmanager
    def fenced(self) -> Iterator[None]:
        """Hold the folder for one act, which only happens while the epoch is still ours."""
        with self._locked():
            now = self._read()
            if now != self.epoch:
                raise Superseded(
                    f"a newer coordinator (epoch {now}) took over this state folder from epoch {self.epoch}"
                )
            yield

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fcntl.flock(self._fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        os.close(self._fd)


def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[-1][:1] in ("T", "t")
    except OSError:
        return False


def record(kind: str, **fields: Any) -> dict:
    return {"r": kind, **fields}
