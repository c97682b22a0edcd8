"""Workers that stay (`mapreduce worker --stay`): started once, they serve one coordinator's
job after another on the same endpoint, each job in a fresh process forked for it, so nothing
of one job's code reaches the next, a crash of that process costs only its own work, and each
job's files go when it ends."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import (
    APPS,
    FAST,
    TIMEOUT,
    assert_same_output,
    coordinator_args,
    free_endpoint,
    kill_all,
    mapreduce_command,
    of,
)
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
        # Each job was served by two processes of its own, forked by the two that stay.
        served_by = [pid for pids in seen_pids for pid in pids]
        assert len(set(served_by)) == 6 and not {w.pid for w in workers} & set(served_by), seen_pids
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


def test_a_crash_of_a_jobs_worker_process_costs_its_work_only_and_a_fresh_one_takes_over(tmp_path, oracle):
    inputs = []
    for i in range(3):
        inputs.append(str(tmp_path / f"in{i}.txt"))
        (tmp_path / f"in{i}.txt").write_text(f"w{i} words to count\n" * 200)
    endpoint, out, events = free_endpoint(), tmp_path / "out", tmp_path / "events.jsonl"
    app = str(APPS / "segfault_once.py")
    worker = subprocess.Popen(
        mapreduce_command("worker", "--connect", endpoint, "--scratch", str(tmp_path / "scratch"), "--stay", *FAST),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    args = coordinator_args(app, inputs, out, endpoint, events)
    coordinator = subprocess.Popen(
        mapreduce_command(*args, "--reduce", "2", "--param", f"marker={tmp_path / 'crashed'}", *FAST, *TIMEOUT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert coordinator.wait(timeout=120) == 0, coordinator.stderr.read()
        assert (tmp_path / "crashed").exists(), "no worker process crashed: the test proves nothing"
        assert_same_output(oracle(app, inputs, "--reduce", "2"), out)
        log = list(read_records(events))
        joined = [e["pid"] for e in of(log, "worker_joined")]
        assert len(set(joined)) == 2 and worker.pid not in joined, joined  # the crashed one, then a fresh one
        assert of(log, "worker_dead") or of(log, "task_lost"), "the crash went unnoticed"
        assert worker.poll() is None, "the worker that stays died with the process it forked"
    finally:
        kill_all([coordinator, worker])


def test_files_a_crashed_worker_process_left_for_an_ended_job_go_when_the_next_job_is_joined(tmp_path):
    from mapreduce.worker.loop import remove_dead_workers_files

    scratch = tmp_path / "scratch"
    dead = subprocess.Popen(["true"])
    dead.wait()
    left = scratch / "job-old" / f"w-{dead.pid}-abcd1234"  # a process that is gone
    live = scratch / "job-old2" / f"w-{os.getpid()}-abcd1234"  # this one: alive
    running = scratch / "job-now" / f"w-{dead.pid}-ffff0000"  # the joined job's orphans may be served
    for folder in (left, live, running):
        folder.mkdir(parents=True)
        (folder / "m1.run").write_bytes(b"x")
    remove_dead_workers_files(scratch, keep_job="now")
    assert not (scratch / "job-old").exists()
    assert (live / "m1.run").exists() and (running / "m1.run").exists()
