"""The exceptions mapreduce raises on purpose, all in one tree.

MapReduceError
 +-- UsageError           bad input detected before any work starts (files, options, output folder)
 |    +-- AppError        the app cannot be loaded or breaks the app contract
 +-- JobFailed            the job ran but could not finish (user code kept raising, workers lost)
 |    +-- InputError      ... an input file turned out unreadable as what its name says (a damaged archive)
 +-- ProtocolError        a malformed or unexpected message arrived from the network
 +-- EventLogError        an event log record does not match the event schema
 +-- FetchError           a data server did not deliver the bytes asked for
 |    +-- Unreachable     ... because it did not answer at all
 +-- StorageError         the framework could not write a file of its own (full disk, read-only folder)
 |    +-- OutputFolderError   ... and that folder is the job's output folder
 +-- ToolError            a tool around the core failed (its message says what to do)
      +-- LaunchError     launching workers on other hosts
      +-- VnetError       building virtual hosts
      +-- ReportError     drawing a report from event logs

The command line turns UsageError into exit 2 and any other MapReduceError into exit 1,
with the message alone (no traceback).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class MapReduceError(Exception):
    """Base class of every error mapreduce raises on purpose."""


class UsageError(MapReduceError):
    """Something the user asked for cannot be done; nothing was started or changed."""


class AppError(UsageError):
    """The app cannot be loaded or does not follow the app contract."""


class JobFailed(MapReduceError):
    """The job stopped without committing its output."""


class InputError(JobFailed):
    """An input file turned out unreadable as what its name says while a map read it (a
    corrupt or truncated archive): the user's data is at fault, so in a worker it fails the
    attempt like an error in user code; in the sequential run it fails the job."""


class ProtocolError(MapReduceError):
    """A message from the network failed validation."""


class EventLogError(MapReduceError, ValueError):
    """An event log record that does not match the event schema (mapreduce.wire.events)."""


class FetchError(MapReduceError):
    """A data server did not deliver the requested bytes (a missing file, a bad reply)."""


class Unreachable(FetchError):
    """The data server did not answer at all: its address, not one file, is the problem."""


class ToolError(MapReduceError):
    """A tool around the core (launcher, virtual network, report) failed."""


class LaunchError(ToolError):
    """Workers could not be launched on other hosts."""


class VnetError(ToolError):
    """Virtual hosts could not be built or used."""


class ReportError(ToolError):
    """A report cannot be made: a missing library, an unreadable log or benchmark file."""


class StorageError(MapReduceError):
    """The framework could not write (or read back) one of its own files: a full disk,
    a read-only or unwritable folder, an I/O error. The worker's environment is at fault,
    not the user's code: the attempt is retried on another worker and does not count
    toward --max-attempts. Deliberately not an OSError, so that neither the user's
    ``except OSError`` nor the framework's handling of unreadable inputs can take it
    for something else."""

    kind = "storage"  # travels as TaskFailed.details: what failed, for the coordinator

    def __init__(self, message: str, folder: str = "", code: int | None = None):
        super().__init__(message)
        self.folder = folder
        self.errno = code  # the OSError's, if one caused it


class OutputFolderError(StorageError):
    """The output folder cannot take the output (read-only, not writable, full): no other
    worker can fix that, so the job fails at once."""

    kind = "output-folder"


# Errors that mean "this folder cannot take a file", whoever tries: for the output folder,
# the job fails at once instead of retrying each reduce.
UNWRITABLE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


def describe_storage_error(exc: OSError, folder: str | Path, role: str, what: str) -> str:
    """One line naming the folder and what went wrong, e.g.
    "no space left in scratch folder /x (map output of attempt 12)"."""
    where = f"{role} folder {folder}"
    code = exc.errno
    if code == errno.ENOSPC:
        text = f"no space left in {where}"
    elif code == errno.EDQUOT:
        text = f"disk quota exceeded in {where}"
    elif code == errno.EROFS:
        text = f"{where} is not writable: read-only file system"
    elif code in (errno.EACCES, errno.EPERM):
        text = f"{where} is not writable: permission denied"
    elif code == errno.EIO:
        text = f"I/O error in {where}"
    else:
        text = f"cannot use {where}: {exc.strerror or exc}"
    return f"{text} ({what})" if what else text


@contextmanager
def storage_errors(folder: str | Path, what: str, role: str = "scratch") -> Iterator[None]:
    """Turn an OSError raised by the framework's own file operations inside the block into
    a StorageError (an OutputFolderError for an unwritable ``output`` folder).

    Wrap only the framework's own calls (open, write, flush, fsync, mkdir): user code run
    inside the block would have its OSErrors taken for the environment's."""
    try:
        yield
    except OSError as exc:
        message = describe_storage_error(exc, folder, role, what)
        cls = OutputFolderError if role == "output" and exc.errno in UNWRITABLE else StorageError
        raise cls(message, str(folder), exc.errno) from exc
