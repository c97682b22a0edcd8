"""Jobs' coordinator processes, forked from one warm process (`mapreduce coordinators`).

Starting an interpreter and importing the coordinator takes a quarter of a second of CPU; a
fork of a process that has done so takes a millisecond. The fork server stays single-threaded
and opens no socket, so forking it is safe; each job still gets a process of its own, where
its code (the app module, a total order's sample) runs, apart from the service.

Talk is JSON lines. The service writes an order, ``{"job", "argv", "cwd", "log"}``; the server
answers ``{"job", "pid"}`` once the job's process runs and ``{"job", "exit"}`` (its status, negative
for a signal) once it has ended. End of input: the server exits once its processes have.
"""

from __future__ import annotations

import ctypes  # noqa: F401  (loaded before any fork: a job's process sets its parent-death signal at once)
import json
import os
import select
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable

from mapreduce.guardian import die_with_parent

REAP_EVERY = 0.01  # seconds between checks for ended processes while orders may come


def serve_forks(run: Callable[[list[str]], int], orders=sys.stdin.buffer, answers=sys.stdout.buffer) -> int:
    """Fork a process per order running ``run(argv)``; report its pid and exit status."""
    running: dict[int, str] = {}  # pid -> job id
    server = os.getpid()
    source = orders.fileno()
    open_input = True

    def tell(message: dict) -> None:
        answers.write(json.dumps(message).encode() + b"\n")
        answers.flush()

    partial = b""
    while open_input or running:
        ready, _, _ = select.select([source] if open_input else [], [], [], REAP_EVERY)
        if ready:  # read the fd itself: a buffered reader could hold an order select() cannot see
            data = os.read(source, 1 << 16)
            open_input = bool(data)
            orders_read, partial = _json_lines(partial, data)
            for order in orders_read:
                pid = os.fork()
                if pid == 0:
                    _run_order(run, order, server)
                running[pid] = order["job"]
                tell({"job": order["job"], "pid": pid})
        while running:
            pid, status = os.waitpid(-1, os.WNOHANG)
            if pid == 0:
                break
            tell({"job": running.pop(pid), "exit": os.waitstatus_to_exitcode(status)})
    return 0


def _run_order(run: Callable[[list[str]], int], order: dict, server: int) -> None:
    """In the forked process: never returns."""
    code = 1
    try:
        die_with_parent()
        if os.getppid() != server:  # the server died before the signal was set: no job runs on alone
            os._exit(1)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a cancel: the coordinator's cleanup
        log_fd = os.open(order["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.close(log_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.chdir(order["cwd"])
        code = _status(run(order["argv"]))
    except SystemExit as exc:
        code = _status(exc.code)
    except BaseException:
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _json_lines(partial: bytes, data: bytes) -> tuple[list[dict], bytes]:
    """The whole JSON lines in what was left over plus ``data``, and what is left over now."""
    *lines, rest = (partial + data).split(b"\n")
    return [json.loads(line) for line in lines if line], rest


def _status(value) -> int:
    """An exit status as sys.exit reads one: None is 0, an int itself, anything else 1."""
    if value is None:
        return 0
    return value if isinstance(value, int) and 0 <= value <= 255 else 1


class ForkServer:
    """The service's side: starts the fork server and passes orders and answers."""

    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-P", "-m", "mapreduce", "coordinators"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,  # a Ctrl-C at the service's terminal is the service's to handle
            preexec_fn=die_with_parent,  # no job runs on without its service
        )
        self.fd = self.process.stdout.fileno()
        os.set_blocking(self.fd, False)
        self._partial = b""

    def order(self, job: str, argv: list[str], cwd: str, log: str) -> None:
        self.process.stdin.write(json.dumps({"job": job, "argv": argv, "cwd": cwd, "log": log}).encode() + b"\n")
        self.process.stdin.flush()

    def answers(self) -> list[dict] | None:
        """The answers that have come (the fd was readable); None once the server is gone."""
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        if not data:
            return None
        answers, self._partial = _json_lines(self._partial, data)
        return answers

    def close(self, grace: float) -> None:
        """End of orders: it exits once its processes have; killed (with them) after ``grace``."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout=grace)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        self.process.stdout.close()
