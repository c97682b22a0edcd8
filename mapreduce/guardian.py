"""The guardian: a tiny process that kills a process's commands once that process is gone,
however it went, SIGKILL included (no code of the process itself runs then).

A streaming command runs in a process group of its own, which the task kills when it ends;
but a worker killed outright kills nothing, and a command that reads no stdin (or what it
started) would live on. So the first command a process starts also starts a guardian whose
stdin is a pipe only that process writes to: ``+PGID`` when a command's group starts, ``-PGID``
once it is killed (before its leader is reaped, so the id cannot name another group yet). The
kernel closes the pipe when the process exits, whatever killed it, and when it execs (the end
is close-on-exec); reading end of file, the guardian SIGKILLs every group still registered and
exits. A group a command leaves of its own will (setsid, setpgid) is out of its reach.

The guardian runs this file as a script (``python -I -S guardian.py``): the standard library
alone, nothing of the parent's path, environment or site packages. It lives in a session of
its own and ignores SIGINT, SIGTERM and SIGHUP: a Ctrl-C or a SIGTERM to the worker's group
must not end it before its cleanup. It holds nothing open but its end of the pipe (/dev/null
for its output, / as its folder).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Have the kernel SIGKILL this process when the thread that started it ends (Linux); run
    in a child between fork and exec, or at the start of a forked child."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: a worker still exits once its coordinator is unreachable


class Guardian:
    """The parent's side: registers process groups with the guardian, which it starts before
    the first command (and again should it have died, telling the new one every group).
    Thread-safe: several commands may start and end at once (a combiner during a map, a
    backup attempt)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: set[int] = set()  # registered: what a guardian started now must be told
        self._process: subprocess.Popen | None = None
        self._pipe: int | None = None  # the write end of its stdin
        # A forked child must not keep the pipe open (the guardian would wait for it too), nor
        # register its own commands as the parent's.
        os.register_at_fork(after_in_child=self._forget_in_child)

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def watched(self) -> frozenset[int]:
        with self._lock:
            return frozenset(self._groups)

    def start(self) -> None:
        """Start the guardian unless it runs; OSError if it cannot. Called before a command
        starts, so that registering the command is one write, not a process start: a SIGKILL
        in between is all that could leave it unguarded."""
        with self._lock:
            if self._process is not None and self._process.poll() is not None:
                self._died()
            if self._process is None:
                self._start()

    def watch(self, pgid: int) -> None:
        """Register a process group just started; OSError if no guardian can be started."""
        with self._lock:
            self._groups.add(pgid)
            self._tell(b"+%d\n" % pgid)

    def forget(self, pgid: int) -> None:
        """Unregister a process group once it is killed, before its leader is reaped."""
        with self._lock:
            if pgid not in self._groups:
                return
            self._groups.discard(pgid)
            try:
                self._tell(b"-%d\n" % pgid)
            except OSError as exc:  # the next watch tries again; this runs in cleanups, it must not raise
                log.error("no guardian for the running commands' process groups: %s", exc)

    def close(self) -> None:
        """Close the pipe as this process's exit would; return once the guardian has killed
        the groups still registered and exited."""
        with self._lock:
            self._groups.clear()
            self._stop()

    def _tell(self, line: bytes) -> None:
        # One write of a few bytes: a pipe takes it whole (under PIPE_BUF), never interleaved.
        if self._pipe is not None:
            try:
                os.write(self._pipe, line)
                return
            except OSError:
                self._died()
        if self._groups:
            self._start()

    def _died(self) -> None:
        # Killed by hand, say: a new one takes over every group.
        log.warning("the guardian of this process's commands (pid %d) is gone: starting another", self.pid)
        self._stop()

    def _start(self) -> None:
        read, write = os.pipe()  # both ends close-on-exec: no command inherits them
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-I", "-S", os.path.abspath(__file__)],
                stdin=read,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd="/",
                start_new_session=True,
            )
        except BaseException:
            os.close(write)
            raise
        finally:
            os.close(read)
        self._pipe = write
        os.write(write, b"".join(b"+%d\n" % pgid for pgid in self._groups))

    def _stop(self) -> None:
        if self._pipe is not None:
            os.close(self._pipe)
            self._pipe = None
        if self._process is not None:
            self._process.wait()
            self._process = None

    def _forget_in_child(self) -> None:
        # Not under the lock: another thread of the parent may have held it at the fork.
        self._lock = threading.Lock()
        self._groups = set()
        self._process = None
        if self._pipe is not None:
            with contextlib.suppress(OSError):
                os.close(self._pipe)
            self._pipe = None


# The one of this process: streaming commands register with it.
GUARDIAN = Guardian()


def main() -> None:
    """The guardian process: read registrations until end of file, then kill what is left."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    groups: set[int] = set()
    for line in sys.stdin.buffer:
        number = line[1:].rstrip(b"\n")
        if not line.endswith(b"\n") or not number.isdigit() or int(number) <= 1:
            continue  # cut short (its writer killed mid-write) or garbage: it names no group
        if line.startswith(b"+"):
            groups.add(int(number))
        elif line.startswith(b"-"):
            groups.discard(int(number))
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":
    main()
