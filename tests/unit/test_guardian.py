"""The guardian kills the process groups registered with it once its parent's pipe closes,
and those alone: closed by hand, by the parent's death (SIGKILL), whatever signals it got."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import gone
from mapreduce import guardian
from mapreduce.guardian import Guardian


@pytest.fixture
def groups():
    """start() -> a `sleep` in a process group of its own; all killed at the test's end."""
    started: list[subprocess.Popen] = []

    def start(command: tuple[str, ...] = ("sleep", "600")) -> subprocess.Popen:
        started.append(subprocess.Popen(command, process_group=0))
        return started[-1]

    yield start
    for process in started:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def killed(process: subprocess.Popen) -> bool:
    try:
        return process.wait(timeout=10) == -signal.SIGKILL
    except subprocess.TimeoutExpired:
        return False


def test_registered_groups_are_killed_at_end_of_file_and_unregistered_ones_left_alone(groups):
    g = Guardian()
    kept, doomed, also_doomed = groups(), groups(), groups()
    for process in (kept, doomed, also_doomed):
        g.watch(process.pid)
    g.forget(kept.pid)
    assert g.watched == {doomed.pid, also_doomed.pid}
    g.close()  # returns once the guardian has exited
    assert killed(doomed) and killed(also_doomed)
    assert kept.poll() is None


def test_it_ignores_the_signals_a_ctrl_c_or_a_stop_sends_and_has_a_session_of_its_own(groups):
    g = Guardian()
    doomed = groups()
    g.watch(doomed.pid)
    assert os.getsid(g.pid) == g.pid  # a signal to the parent's group or terminal does not reach it
    deadline = time.monotonic() + 10
    while not _ignores(g.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.01)  # until it has set its signals up (it has just started)
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        os.kill(g.pid, signum)
    g.close()
    assert killed(doomed)


def test_a_dead_guardian_is_replaced_and_told_every_group(groups):
    g = Guardian()
    first, second = groups(), groups()
    g.watch(first.pid)
    old = g.pid
    os.kill(old, signal.SIGKILL)
    assert gone(old)  # its end of the pipe closed
    g.watch(second.pid)  # the write fails: another guardian takes over both groups
    assert g.pid != old
    g.close()
    assert killed(first) and killed(second)


def test_a_line_cut_short_or_garbage_names_no_group(groups):
    kept, doomed = groups(), groups()
    script = subprocess.Popen([sys.executable, "-I", "-S", guardian.__file__], stdin=subprocess.PIPE)
    script.communicate(f"+x\n+0\n+1\n-\n+{doomed.pid}\n+{kept.pid}".encode(), timeout=10)
    assert script.returncode == 0
    assert killed(doomed)
    assert kept.poll() is None


def test_the_groups_of_a_parent_killed_outright_are_killed(tmp_path):
    # A parent registers a shell that starts a child, then is SIGKILLed: no code of its runs.
    pids = tmp_path / "pids"
    parent_code = textwrap.dedent(f"""
        import subprocess, sys, time
        from mapreduce.guardian import GUARDIAN
        shell = subprocess.Popen(["sh", "-c", "sleep 600 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait"],
                                 process_group=0, stdout=subprocess.DEVNULL)
        GUARDIAN.watch(shell.pid)
        print("watched", flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", parent_code], stdout=subprocess.PIPE, text=True)
    shell = child = None
    try:
        assert parent.stdout.readline() == "watched\n"  # the shell may have written its pids before
        deadline = time.monotonic() + 20
        while not pids.exists():
            assert parent.poll() is None, f"the parent exited {parent.returncode}"
            assert time.monotonic() < deadline, "the shell never wrote its pids"
            time.sleep(0.02)
        shell, child = map(int, pids.read_text().split())
        assert os.getpgid(child) == shell
        parent.kill()
        parent.wait()
        assert gone(shell) and gone(child)
    finally:
        parent.kill()
        parent.wait()
        if shell is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell, signal.SIGKILL)


def _ignores(pid: int, signum: int) -> bool:
    with open(f"/proc/{pid}/status") as f:
        ignored = next(int(line.split()[1], 16) for line in f if line.startswith("SigIgn:"))
    return bool(ignored & (1 << (signum - 1)))
