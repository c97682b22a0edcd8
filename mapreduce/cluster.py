"""The embedded local cluster: a coordinator in this process plus N worker processes.

Workers are real processes running ``mapreduce worker``, exactly as a user would
start them by hand. They die with this process (PR_SET_PDEATHSIG on Linux) and
are stopped, then killed, when the job ends, fails or is interrupted. Their
shared scratch folder is removed at the end.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: workers still exit once the coordinator is unreachable


def worker_command(connect: str, scratch: Path, name: str, extra: Sequence[str] = ()) -> list[str]:
    # -P: never import a `mapreduce` folder that happens to be the current directory.
    return [sys.executable, "-P", "-m", "mapreduce", "worker", "--connect", connect, "--scratch", str(scratch), "--name", name, *extra]


class LocalCluster:
    """Starts and stops worker processes for one coordinator on this machine."""

    def __init__(self, connect: str, workers: int, extra_args: Sequence[str] = (), keep_logs: bool = False):
        self.connect = connect
        self.count = workers
        self.extra_args = list(extra_args)
        self.root = Path(tempfile.mkdtemp(prefix="mapreduce-cluster-"))
        self.scratch = self.root / "scratch"
        self.logs = self.root / "logs"
        self.logs.mkdir()
        self.keep_logs = keep_logs
        self.processes: list[subprocess.Popen] = []

    def start(self) -> "LocalCluster":
        for _ in range(self.count):
            self.add_worker()
        return self

    def add_worker(self) -> subprocess.Popen:
        name = f"local-{len(self.processes)}"
        with open(self.logs / f"{name}.log", "wb") as log_file:
            process = subprocess.Popen(
                worker_command(self.connect, self.scratch, name, self.extra_args),
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent, env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.processes.append(process)
        return process

    def all_exited(self) -> str | None:
        """A failure message once every worker process has exited, else None."""
        if not self.processes or any(process.poll() is None for process in self.processes):
            return None
        codes = sorted({process.returncode for process in self.processes})
        return f"all {len(self.processes)} local workers exited (exit codes {codes}); their last log lines:\n{self.log_tail(5)}"

    def stop(self, grace: float = 3.0) -> None:
        """Wait briefly for workers to exit on their own, then terminate, then kill."""
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

    def kill(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
        for process in self.processes:
            process.wait()

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

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop(grace=3.0 if exc[0] is None else 0.5)
        self.cleanup()
