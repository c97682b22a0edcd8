"""Hadoop Streaming: mappers and reducers that are executables in any language.

The mapper is started once per map task and reads the split's lines on stdin; each line it
writes is a record, its key what comes before the first tab (a line with no tab is all key).
The reducer is started once per reduce task and reads ``key<TAB>value`` lines sorted by key
(byte order), a key's lines together; the lines it writes are the output, as written. With no
reducer, the mappers' lines are the output.

A command is split like a shell would split it, but run without one (use ``sh -c '...'`` for
pipes). It runs in a process group of its own, killed whenever the task ends, and by the
process's guardian (guardian.py) should the process die first, SIGKILLed; its stdin is fed
by a thread while its stdout is read, so neither side can block the other whatever it writes.
Its stderr lines ``reporter:counter:GROUP,COUNTER,AMOUNT`` add to the task's counters; other
lines go to the log, and the last ones are in the error when the command fails. Settings
reach it as environment variables, dots turned into underscores (``mapreduce_map_input_file``,
``mapreduce_task_partition``, ``mapreduce_task_ismap``, and each ``-D NAME=VALUE``). A non-zero
exit fails the attempt, unless ``-D stream.non.zero.exit.is.failure=false``; a command killed by
a signal always does.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from mapreduce import counters
from mapreduce.errors import AppError, UsageError
from mapreduce.guardian import GUARDIAN
from mapreduce.inputs import codec_of
from mapreduce.job import NO_VALUE, App, Flag, Record, TaskMap, TaskReduce, running_task
from mapreduce.output import format_line

log = logging.getLogger(__name__)

STDERR_TAIL = 10  # lines of a failed command's stderr in its error
_REPORTER_COUNTER = "reporter:counter:"
_REPORTER_STATUS = "reporter:status:"
# A word of a command that stands for the Python interpreter running the task (a worker's own,
# which may live elsewhere than the submitting host's); shell-safe, so it may sit in `sh -c` text.
PYTHON = "@PYTHON@"
_PIECE = 1 << 16  # characters of lines written to a command at a time
_CANCEL_POLL = 0.1  # seconds between looks at whether a running command's attempt was cancelled


def parse_command(text: str, what: str) -> tuple[str, ...]:
    """A command line split into its words; UsageError if it is empty or malformed."""
    try:
        argv = tuple(shlex.split(text))
    except ValueError as exc:
        raise UsageError(f"{what} {text!r} is not a command line: {exc}") from None
    if not argv:
        raise UsageError(f"{what} is empty")
    return argv


def settings(pairs: Iterable[str]) -> dict[str, str]:
    """``-D NAME=VALUE`` settings as environment variables (dots become underscores)."""
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name or not all(c.isalnum() or c in "._" for c in name):
            raise UsageError(f"-D {pair!r}: expected NAME=VALUE, NAME of letters, digits, dots and underscores")
        env[name.replace(".", "_")] = value
    return env


@dataclass(frozen=True)
class Command:
    """An executable a task runs, with the job's settings in its environment."""

    argv: tuple[str, ...]
    role: str  # "mapper", "combiner" or "reducer", for messages
    env: Mapping[str, str] = field(default_factory=dict)
    exit_status_counts: bool = True  # a non-zero exit fails the attempt (-D stream.non.zero.exit.is.failure)

    def lines(
        self, text_in: Iterable[str | bytes], env: Mapping[str, str] | None = None, args: Iterable[str] = ()
    ) -> Iterator[str]:
        """Run the command (``args`` added to its words) with ``text_in`` (pieces of text) on
        its stdin; yield the lines it writes (without their newline) as they come. Its process
        group is killed when the generator ends, however it ends."""
        argv = (*_here(self.argv), *args)
        name = shlex.join(argv)
        env = dict(env or {})
        task = running_task()
        if task is not None:  # Hadoop's names for the task it is
            env |= {
                "mapreduce_task_ismap": str(task.phase == "map").lower(),
                "mapreduce_task_partition": str(task.index),
            }
        try:
            GUARDIAN.start()
            process = subprocess.Popen(
                argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env={**os.environ, **self.env, **env},
                process_group=0,
            )
        except OSError as exc:
            raise AppError(f"the {self.role} {name!r} cannot start: {exc.strerror or exc}") from None
        run = _Run(process, self.role, task and task.report_status)
        feeder = threading.Thread(target=contextvars.copy_context().run, args=(run.feed, text_in), daemon=True)
        reader = threading.Thread(target=run.read_stderr, daemon=True)
        # When it exits, what it left running goes too (it may hold the pipes open); so does it
        # all when its attempt is cancelled (it may be blocked, writing nothing, forever).
        watcher = threading.Thread(target=run.kill_group, args=(task and task.cancelled,), daemon=True)
        threads = (feeder, reader, watcher)
        try:
            GUARDIAN.watch(process.pid)  # from here on its group dies with this process, however it dies
            for thread in threads:
                thread.start()
            for raw in process.stdout:
                yield raw.decode("utf-8", "surrogateescape").removesuffix("\n")
            watcher.join()  # its group is killed, its leader not reaped: the group id is still its own
            GUARDIAN.forget(process.pid)
            status = process.wait()
            feeder.join()
            reader.join()
            if run.failure is not None:
                raise run.failure
            for (group, counter), amount in run.counts.items():
                counters.increment(group, counter, amount)
            if status != 0 and (self.exit_status_counts or status < 0):
                why = f"killed by signal {-status}" if status < 0 else f"exited with status {status}"
                tail = "".join(f"\n  {line}" for line in run.tail)
                raise AppError(f"the {self.role} {name!r} {why}" + (f"; its last stderr lines:{tail}" if tail else ""))
        finally:
            if process.returncode is None:  # not reaped: its group id is still its own
                _kill_group(process)
                if watcher.ident is not None:
                    watcher.join(timeout=5)  # it kills the group too: before the reap, never after
                GUARDIAN.forget(process.pid)
            process.wait()
            for thread in threads:
                if thread.ident is not None:  # started
                    thread.join(timeout=5)
            for pipe in (process.stdin, process.stdout, process.stderr):
                with contextlib.suppress(OSError):
                    pipe.close()


class _Run:
    """The two threads' side of a running command: its stdin and its stderr."""

    def __init__(self, process: subprocess.Popen, role: str, report_status: Callable[[str], None] | None):
        self.process, self.role, self.report_status = process, role, report_status
        self.failure: BaseException | None = None  # raised by the input (a cancelled attempt, say)
        self.counts: Counter[tuple[str, str]] = Counter()
        self.tail: deque[str] = deque(maxlen=STDERR_TAIL)

    def feed(self, text_in: Iterable[str | bytes]) -> None:
        try:
            for text in text_in:
                self.process.stdin.write(text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape"))
        except BrokenPipeError:
            pass  # it stopped reading: its exit status says whether that was wrong
        except BaseException as exc:
            self.failure = exc
            _kill_group(self.process)
        finally:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
            if isinstance(text_in, Iterator) and hasattr(text_in, "close"):
                text_in.close()  # a command before this one in a chain: its group goes now, not when collected

    def kill_group(self, cancelled: Flag | None) -> None:
        """Kill the group once the command exits or ``cancelled`` is set, whichever comes first.
        Exited but not reaped (only the generator reaps it, after this returns), its process
        group id cannot be reused while it is killed."""
        pid = self.process.pid
        try:
            if cancelled is None:
                os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            else:
                while os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                    if cancelled.wait(_CANCEL_POLL):
                        break
        except ChildProcessError:
            return  # reaped already: its group id may be another's by now
        _kill_group(self.process)

    def read_stderr(self) -> None:
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if line.startswith(_REPORTER_COUNTER):
                group, _, rest = line[len(_REPORTER_COUNTER) :].partition(",")
                counter, _, amount = rest.rpartition(",")
                with contextlib.suppress(ValueError):
                    self.counts[group, counter] += int(amount)
                    continue
            if line.startswith(_REPORTER_STATUS):
                status = line[len(_REPORTER_STATUS) :]
                log.info("%s status: %s", self.role, status)
                if self.report_status is not None:
                    self.report_status(status)
                continue
            self.tail.append(line)
            log.info("%s stderr: %s", self.role, line)


def _here(argv: tuple[str, ...]) -> tuple[str, ...]:
    """The command's words with PYTHON made this interpreter (quoted where it is inside a word)."""
    if not any(PYTHON in word for word in argv):
        return argv
    python = sys.executable
    return tuple(python if word == PYTHON else word.replace(PYTHON, shlex.quote(python)) for word in argv)


@dataclass(frozen=True)
class Chain:
    """Commands run one after another over a task's lines, each reading what the one before
    wrote (an mrjob job's map-only steps, fused into the task before them); no command: the
    lines as they are (the identity mapper, Hadoop's ``cat``)."""

    commands: tuple[Command, ...] = ()

    def lines(self, text_in: Iterable[str | bytes], env: Mapping[str, str] | None = None) -> Iterator[str]:
        if not self.commands:
            return _split_lines(text_in)
        return Chain(self.commands[1:]).through(self.commands[0].lines(text_in, env), env)

    def through(self, lines: Iterator[str], env: Mapping[str, str] | None = None) -> Iterator[str]:
        """``lines`` (without newlines) through every command."""
        for command in self.commands:
            lines = command.lines(_joined(line + "\n" for line in lines), env)
        return lines


def _split_lines(pieces: Iterable[str | bytes]) -> Iterator[str]:
    rest = ""
    for piece in pieces:
        text = piece.decode("utf-8", "surrogateescape") if isinstance(piece, bytes) else piece
        lines = (rest + text).split("\n")
        rest = lines.pop()
        yield from lines
    if rest:
        yield rest


def _joined(lines: Iterable[str]) -> Iterator[str]:
    """Lines gathered into pieces of about _PIECE characters: one pipe write each, not one a line."""
    piece: list[str] = []
    size = 0
    for line in lines:
        piece.append(line)
        size += len(line)
        if size >= _PIECE:
            yield "".join(piece)
            piece, size = [], 0
    if piece:
        yield "".join(piece)


def _kill_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def record(line: str) -> Any:
    """A line a mapper wrote as a record: split at its first tab; no tab, all key."""
    key, tab, value = line.partition("\t")
    return (key, value) if tab else Record(line)


def input_file_setting(path: str, as_uri: bool) -> dict[str, str]:
    """``mapreduce_map_input_file``: the input as named, or as a ``file://`` URI (what mrjob's
    jobs get from Hadoop and from mrjob's own local runner)."""
    return {"mapreduce_map_input_file": "file://" + os.path.abspath(path) if as_uri else path}


@dataclass(frozen=True)
class StreamingMap:
    """A first step's mapper: the split's lines on its stdin."""

    command: Command | Chain
    input_uri: bool = False  # mapreduce_map_input_file as a file:// URI

    def __call__(self, path: str, text: str) -> Iterator[Any]:
        return map(record, self.command.lines([text], input_file_setting(path, self.input_uri)))


@dataclass(frozen=True)
class RawStreamingMap:
    """mrjob's ``mapper_raw``: the command reads no stdin but gets two more words, the path of
    a local copy of its whole input file (decompressed: an app with input_format "bytes") and
    the file's URI, as mrjob's input manifest wrapper gives them; its lines go on through ``then``."""

    command: Command
    then: Chain = Chain()

    def __call__(self, path: str, data: bytes) -> Iterator[Any]:
        env = input_file_setting(path, True)
        name = os.path.basename(path)
        codec = codec_of(name)
        suffix = name.removesuffix(codec.suffix) if codec else name
        suffix = suffix[suffix.index(".") :] if "." in suffix else ""  # mrjob keeps the extension: .warc
        with tempfile.TemporaryDirectory(prefix="mapreduce-raw-") as folder:
            copy = os.path.join(folder, "input" + suffix)
            with open(copy, "wb") as f:
                f.write(data)
            yield from map(
                record, self.then.through(self.command.lines((), env, (copy, env["mapreduce_map_input_file"])), env)
            )


@dataclass(frozen=True)
class StreamingRecordMap(TaskMap):
    """A later pipeline step's mapper: the step before's records as ``key<TAB>value`` lines."""

    command: Chain

    def run(self, records: Iterable[tuple[str, Any]]) -> Iterator[Any]:
        return map(record, self.command.lines(_joined(format_line(key, value) for key, value in records)))


@dataclass(frozen=True)
class StreamingReduce(TaskReduce):
    command: Command | Chain

    def run(self, groups: Iterable[tuple[str, Iterator[Any]]]) -> Iterator[Record]:
        return map(Record, self.command.lines(_joined(_input_lines(groups))))


def _input_lines(groups: Iterable[tuple[str, Iterator[Any]]]) -> Iterator[str]:
    """A reducer's stdin, a key's lines at a time: ``key<TAB>value``, or the key alone."""
    for key, values in groups:
        yield "".join(format_line(key, NO_VALUE if value is None else value) for value in values)


@dataclass(frozen=True)
class StreamingCombine(TaskReduce):
    """A combiner command over a map's sorted run: ``key<TAB>value`` lines in, records out, in
    the same key order."""

    command: Command

    def run(self, groups: Iterable[tuple[str, Iterator[Any]]]) -> Iterator[Any]:
        return map(record, self.command.lines(_joined(_input_lines(groups))))


def streaming_app(
    mapper: str,
    reducer: str | None,
    defines: Iterable[str] = (),
    shipped: Iterable[str] = (),
    combiner: str | None = None,
) -> App:
    """The app of a streaming job; ``reducer`` None (or ``NONE``): a map-only job. A command
    must be found here, on the PATH or as a file shipped with --file (``shipped``: their
    names), before any work: a missing one would fail every attempt."""
    env = settings(defines)
    # As in Hadoop: -D stream.non.zero.exit.is.failure=false accepts any exit status (grep's 1).
    strict = env.get("stream_non_zero_exit_is_failure", "true").lower() != "false"
    map_argv = _found(parse_command(mapper, "the mapper"), "mapper", set(shipped))
    map_ = StreamingMap(Command(map_argv, "mapper", env, strict))
    if reducer is None or reducer == "NONE":
        if combiner is not None:
            raise UsageError("a combiner needs a reducer: a map-only job has no shuffle to combine")
        return App("streaming", map=map_, reduce=None)
    reduce_argv = _found(parse_command(reducer, "the reducer"), "reducer", set(shipped))
    combine = None
    if combiner is not None:
        combine_argv = _found(parse_command(combiner, "the combiner"), "combiner", set(shipped))
        combine = StreamingCombine(Command(combine_argv, "combiner", env, strict))
    reduce = StreamingReduce(Command(reduce_argv, "reducer", env, strict))
    return App("streaming", map=map_, reduce=reduce, combine=combine)


def _found(argv: tuple[str, ...], role: str, shipped: set[str]) -> tuple[str, ...]:
    program = argv[0]
    if program in shipped or ("/" in program and os.access(program, os.X_OK)) or shutil.which(program):
        return argv
    raise UsageError(f"the {role} {program!r} is not a command here (not on the PATH, not an executable file)")
