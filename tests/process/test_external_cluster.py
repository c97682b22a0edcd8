"""The coordinator and workers started separately, as on several machines."""

from __future__ import annotations

import subprocess
import time

from helpers import APPS, assert_same_output, free_endpoint, mapreduce_command, run_cli
from mapreduce.wire.events import read_records


def start(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen(
        mapreduce_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs
    )


def wait_for_event(events, kind: str, timeout: float = 60, count: int = 1) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if events.exists() and sum(1 for e in read_records(events) if e["event"] == kind) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {kind} event within {timeout} s")


def test_coordinator_and_separate_workers_match_seq(gutenberg, oracle, tmp_path):
    expected = oracle("wordcount", gutenberg, "--reduce", "10")
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    endpoint = free_endpoint()
    coordinator = start(
        "coordinator",
        "wordcount",
        *gutenberg,
        "--reduce",
        "10",
        "--output",
        str(out),
        "--bind",
        endpoint,
        "--events",
        str(events),
    )
    workers = [start("worker", "--connect", endpoint, "--scratch", str(tmp_path / "scratch")) for _ in range(3)]
    try:
        assert coordinator.wait(timeout=120) == 0, coordinator.stderr.read()
        # The first process to exit does so only when the output is complete.
        assert (out / "_SUCCESS").exists()
        for worker in workers:
            assert worker.wait(timeout=30) == 0, worker.stderr.read()
    finally:
        for process in [coordinator, *workers]:
            if process.poll() is None:
                process.kill()
    assert_same_output(expected, out)
    assert sum(1 for e in read_records(events) if e["event"] == "worker_left") == 3
    assert list((tmp_path / "scratch").glob("job-*/*")) == []  # workers removed their map output


def test_worker_joining_late_gets_work(corpus, oracle, tmp_path):
    slow = tmp_path / "slow-input.txt"
    slow.write_text("late words\n" * 50)
    inputs = [*corpus, str(slow)]
    app = str(APPS / "slowmap.py")
    expected = oracle(app, inputs, "--reduce", "4")
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    endpoint = free_endpoint()
    # No speculation: a backup of the slow map would be the late worker's first task, and lose.
    coordinator = start(
        "coordinator",
        app,
        *inputs,
        "--reduce",
        "4",
        "--output",
        str(out),
        "--bind",
        endpoint,
        "--events",
        str(events),
        "--split-size",
        "200k",
        "--no-speculation",
    )
    first = start("worker", "--connect", endpoint)
    late = None
    try:
        wait_for_event(events, "task_finished")  # the job is under way
        late = start("worker", "--connect", endpoint)
        assert coordinator.wait(timeout=120) == 0, coordinator.stderr.read()
        assert first.wait(timeout=30) == 0 and late.wait(timeout=30) == 0
    finally:
        for process in [coordinator, first, late]:
            if process is not None and process.poll() is None:
                process.kill()
    assert_same_output(expected, out)
    log = list(read_records(events))
    late_id = max(e["worker"] for e in log if e["event"] == "worker_joined")
    assert late_id == 2
    assert any(e["event"] == "task_finished" and e["worker"] == late_id for e in log)


def test_worker_without_coordinator_exits_nonzero(tmp_path):
    started = time.monotonic()
    result = run_cli(
        "worker",
        "--connect",
        free_endpoint(),
        "--coordinator-timeout",
        "2",
        "--heartbeat-interval",
        "0.2",
        "--scratch",
        str(tmp_path / "scratch"),
        check=False,
        timeout=60,
    )
    assert result.returncode == 3
    assert "unreachable" in result.stderr
    assert time.monotonic() - started < 30


def test_workers_exit_when_coordinator_is_killed(tmp_path):
    slow = tmp_path / "slow.txt"
    slow.write_text("words\n")
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    endpoint = free_endpoint()
    coordinator = start(
        "coordinator",
        str(APPS / "slowmap.py"),
        str(slow),
        "--output",
        str(out),
        "--bind",
        endpoint,
        "--events",
        str(events),
        env={"SLOWMAP_SECONDS": "60", "PATH": "/usr/bin:/bin"},
    )
    worker = start("worker", "--connect", endpoint, "--coordinator-timeout", "3", "--heartbeat-interval", "0.3")
    try:
        wait_for_event(events, "task_assigned")
        coordinator.kill()
        coordinator.wait()
        assert worker.wait(timeout=60) == 3
        assert "unreachable" in worker.stderr.read()
    finally:
        for process in (coordinator, worker):
            if process.poll() is None:
                process.kill()
    assert not (out / "_SUCCESS").exists()
