"""The embedded local cluster: a coordinator in this process plus N worker processes.

Workers are real processes running ``mapreduce worker``, exactly as a user would
start them by hand. They die with this process (PR_SET_PDEATHSIG on Linux) and
are stopped, then killed, when the job ends, fails or is interrupted. Their
shared scratch folder is removed at the end.

The cluster keeps its size: a supervisor thread replaces a worker process that
crashed (killed by a signal, or exited with a status other than done, coordinator
unreachable or interrupted) with a new one, up to ``max_replacements`` times, so
a job survives crashing workers the way a real cluster manager would restart
them. Workers killed or paused on purpose (``kill_worker``, ``pause_worker``, as
``mapreduce crashtest`` does) are replaced too, without using up that budget.
A worker that can never start still ends the job: once the budget is spent and
every worker has exited, ``all_exited`` reports it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from mapreduce.guardian import die_with_parent

log = logging.getLogger(__name__)

REPLACEMENTS_PER_WORKER = 8

# Exit statuses that are not crashes: done (0), coordinator unreachable (3: a replacement
# would fail the same way), interrupted or terminated on purpose.
_NOT_CRASHES = frozenset({0, 3, 130, -signal.SIGINT, -signal.SIGTERM})


def worker_command(connect: str, scratch: Path, name: str, extra: Sequence[str] = ()) -> list[str]:
    # -P: never import a `mapreduce` folder that happens to be the current directory.
    return [
        sys.executable,
        "-P",
        "-m",
        "mapreduce",
        "worker",
        "--connect",
        connect,
        "--scratch",
        str(scratch),
        "--name",
        name,
        *extra,
    ]


class LocalCluster:
    """Starts, supervises and stops worker processes for one coordinator on this machine."""

    def __init__(
        self,
        connect: str,
        workers: int,
        extra_args: Sequence[str] = (),
        keep_logs: bool = False,
        max_replacements: int | None = None,
        supervise_every: float = 0.1,
        own_session: bool = False,
    ):
        self.connect = connect
        self.count = workers
        self.extra_args = list(extra_args)
        self.root = Path(tempfile.mkdtemp(prefix="mapreduce-cluster-"))
        self.scratch = self.root / "scratch"
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.keep_logs = keep_logs
        self.processes: list[subprocess.Popen] = []
        self.max_replacements = REPLACEMENTS_PER_WORKER * workers if max_replacements is None else max_replacements
        self.replacements = 0  # crashed workers replaced, counted against max_replacements
        self.supervise_every = supervise_every
        self.own_session = own_session  # workers a Ctrl-C at this process's terminal does not reach
        # Children are started by whichever thread calls add_worker; on Linux a child's
        # parent-death signal fires when that *thread* ends, so the supervisor thread
        # outlives every process it started (it ends only after they are reaped).
        self._lock = threading.RLock()
        # Sets of processes (by identity, not pid: pids are reused).
        self._paused: set[subprocess.Popen] = set()
        self._on_purpose: set[subprocess.Popen] = set()  # killed by kill_worker
        self._answered_exit: set[subprocess.Popen] = set()
        self._answered_pause: set[subprocess.Popen] = set()
        self._reported_exit: set[subprocess.Popen] = set()
        self._stopping = False
        self._budget_warned = False
        self._supervisor_exit = threading.Event()
        self._supervisor: threading.Thread | None = None

    def start(self) -> LocalCluster:
        for _ in range(self.count):
            self.add_worker()
        self._supervisor = threading.Thread(target=self._supervise, name="cluster-supervisor", daemon=True)
        self._supervisor.start()
        return self

    def add_worker(self) -> subprocess.Popen:
        with self._lock:
            name = f"local-{len(self.processes)}"
            with open(self.logs / f"{name}.log", "wb") as log_file:
                process = subprocess.Popen(
                    worker_command(self.connect, self.scratch, name, self.extra_args),
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    start_new_session=self.own_session,
                )
            self.processes.append(process)
            return process

    # ---- faults on purpose (crash testing) --------------------------------

    def active_workers(self) -> list[subprocess.Popen]:
        """Worker processes that are running and not paused."""
        with self._lock:
            return [p for p in self.processes if p.poll() is None and p not in self._paused]

    def kill_worker(self, process: subprocess.Popen) -> float:
        """SIGKILL one worker (it is replaced); return the monotonic time of the signal."""
        with self._lock:
            self._on_purpose.add(process)
            sent = time.monotonic()
            process.send_signal(signal.SIGKILL)
            return sent

    def pause_worker(self, process: subprocess.Popen) -> float:
        """SIGSTOP one worker (it is replaced); return the monotonic time of the signal."""
        with self._lock:
            self._paused.add(process)
            sent = time.monotonic()
            process.send_signal(signal.SIGSTOP)
            return sent  # the supervisor starts its replacement

    def resume_worker(self, process: subprocess.Popen) -> None:
        """SIGCONT a paused worker; it carries on (or re-registers, if declared dead meanwhile)."""
        with self._lock:
            if process in self._paused and process.poll() is None:
                process.send_signal(signal.SIGCONT)
            self._paused.discard(process)
            self._answered_pause.discard(process)

    # ---- supervision -------------------------------------------------------

    def replace_failed(self) -> list[subprocess.Popen]:
        """Start a new worker for each worker that crashed or was paused since the last call."""
        started = []
        with self._lock:
            if self._stopping:
                return []
            for process in list(self.processes):
                if process in self._paused and process not in self._answered_pause:
                    self._answered_pause.add(process)
                    started.append(self._replace(process, "was paused"))
                    continue
                code = process.poll()
                if code is None or process in self._answered_exit or not self._replaceable(process):
                    continue
                self._answered_exit.add(process)
                if process not in self._on_purpose:
                    self.replacements += 1
                started.append(self._replace(process, f"exited with status {code}"))
        return started

    def _replaceable(self, process: subprocess.Popen) -> bool:
        """Whether an exited worker is one to replace now: a crash, within the budget."""
        if process in self._on_purpose:
            return True
        if process.returncode in _NOT_CRASHES:
            return False
        if self.replacements < self.max_replacements:
            return True
        if not self._budget_warned:
            self._budget_warned = True
            log.warning("%d crashed local workers replaced already: replacing no more", self.replacements)
        return False

    def _replace(self, process: subprocess.Popen, why: str) -> subprocess.Popen:
        replacement = self.add_worker()
        log.info("local worker pid %d %s: started pid %d in its place", process.pid, why, replacement.pid)
        return replacement

    def _supervise(self) -> None:
        while not self._supervisor_exit.wait(self.supervise_every):
            self.replace_failed()

    def attach(self, coordinator) -> None:
        """Let the coordinator see this cluster: fail the job if no worker is left, and
        learn of a worker process's exit at once instead of after its heartbeat timeout."""
        coordinator.watchdog = self.all_exited
        coordinator.exited = self.exited_since_last

    def exited_since_last(self) -> list[tuple[int, int]]:
        """(pid, exit status) of worker processes that exited since the last call."""
        with self._lock:
            ended = [p for p in self.processes if p not in self._reported_exit and p.poll() is not None]
            self._reported_exit.update(ended)
            return [(p.pid, p.returncode) for p in ended]

    def all_exited(self) -> str | None:
        """A failure message once every worker process has exited and none will be replaced, else None."""
        with self._lock:
            if not self.processes or any(process.poll() is None for process in self.processes):
                return None
            if not self._stopping and any(
                p not in self._answered_exit and self._replaceable(p) for p in self.processes
            ):
                return None  # the supervisor is about to start a replacement
            codes = sorted({process.returncode for process in self.processes})
            replaced = f", {self.replacements} crashed ones replaced" if self.replacements else ""
            return (
                f"all {len(self.processes)} local workers exited (exit codes {codes}{replaced}); their last "
                f"log lines:\n{self.log_tail(5)}"
            )

    # ---- the end -----------------------------------------------------------

    def _begin_stopping(self) -> None:
        with self._lock:
            self._stopping = True
            for process in self.processes:  # a stopped process can never exit on its own
                if process in self._paused and process.poll() is None:
                    process.kill()
            self._paused.clear()

    def _end_supervision(self) -> None:
        self._supervisor_exit.set()
        if self._supervisor is not None and self._supervisor is not threading.current_thread():
            self._supervisor.join()

    def release_others(self, told: set[int]) -> None:
        """SIGTERM every running worker but those told that the job is over: one that
        joined too late (or never) would otherwise wait out its coordinator timeout."""
        self._begin_stopping()
        with self._lock:
            for process in self.processes:
                if process.pid not in told and process.poll() is None:
                    process.terminate()

    def stop(self, grace: float = 3.0) -> None:
        """Wait briefly for workers to exit on their own, then terminate, then kill."""
        self._begin_stopping()
        for process in self.processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._end_supervision()

    def kill(self) -> None:
        self._begin_stopping()
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()
        self._end_supervision()

    def log_tail(self, lines: int = 20) -> str:
        tails = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            if text:
                tails.append(f"--- {path.name} ---\n" + "\n".join(text))
        return "\n".join(tails)

    def cleanup(self) -> None:
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not self.keep_logs:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=3.0 if exc[0] is None else 0.5)
        self.cleanup()
