"""Workers that stay (`mapreduce worker --stay`): started once, they serve one coordinator's
job after another on the same endpoint, each job in a fresh process, so nothing of one job's
code reaches the next, and each job's files go when it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import APPS, FAST, assert_same_output, coordinator_args, free_endpoint, kill_all, mapreduce_command, of
from mapreduce.wire.events import read_records


def test_staying_workers_serve_job_after_job_each_afresh(tmp_path, oracle):
    inputs = []
    for i in range(4):
        inputs.append(str(tmp_path / f"in{i}.txt"))
        (tmp_path / f"in{i}.txt").write_text(f"w{i} shared words here\n" * 300)
    endpoint, scratch = free_endpoint(), tmp_path / "scratch"
    worker = mapreduce_command("worker", "--connect", endpoint, "--scratch", str(scratch), "--stay", *FAST)
    workers = [subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    started = list(workers)
    try:
        seen_pids = []
        for number, app in enumerate(["leaky.py", "checker.py", "leaky.py"]):
            out, events = tmp_path / f"out{number}", tmp_path / f"events{number}.jsonl"
            args = coordinator_args(str(APPS / app), inputs, out, endpoint, events)
            coordinator = subprocess.Popen(
                mapreduce_command(*args, "--reduce", "2", "--min-workers", "2", *FAST),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            started.append(coordinator)
            assert coordinator.wait(timeout=120) == 0, coordinator.stderr.read()
            assert_same_output(oracle(str(APPS / app), inputs, "--reduce", "2"), out)
            log = list(read_records(events))
            seen_pids.append(sorted(e["pid"] for e in of(log, "worker_joined")))
            assert all(w.poll() is None for w in workers), "a worker that stays exited after a job"
        # The same two processes (exec keeps the pid) served every job.
        assert seen_pids == [sorted(w.pid for w in workers)] * 3
        deadline = time.monotonic() + 30
        while list(scratch.glob("job-*")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(scratch.glob("job-*")) == [], "a finished job's files are still in scratch"
        for w in workers:
            w.send_signal(signal.SIGTERM)  # drains: leaves for good, exit 0
        assert [w.wait(timeout=30) for w in workers] == [0, 0]
    finally:
        kill_all(started)
    assert not os.environ.get("LEFT_BEHIND")


def test_a_sigterm_that_comes_while_the_worker_is_replaced_still_drains_it():
    """exec_afresh holds SIGTERM blocked across exec (the mask and pending signals survive it),
    so a SIGTERM that arrives before the fresh interpreter has its handler drains the worker
    instead of killing it. Here the signal is pending before the worker's first line runs."""
    held = lambda: signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # noqa: E731
    worker = mapreduce_command("worker", "--connect", free_endpoint(), "--stay", *FAST)
    process = subprocess.Popen(worker, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=held)
    try:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0, process.stderr.read()
    finally:
        kill_all([process])


def test_exec_afresh_blocks_sigterm_and_sigint_before_replacing_the_process(monkeypatch):
    from mapreduce.worker import loop

    seen = {}

    def execve(*args):
        seen["mask"] = signal.pthread_sigmask(signal.SIG_BLOCK, [])
        raise OSError("stopped before exec")

    before = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    monkeypatch.setattr(loop.os, "execve", execve)
    try:
        try:
            loop.exec_afresh()
        except OSError:
            pass
        assert {signal.SIGTERM, signal.SIGINT} <= seen["mask"]
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)
