"""Crash testing as a feature: `mapreduce crashtest`, the crash app, and the summary helpers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import APPS, CRASH, assert_same_output, crashtest_table, mapreduce_command, run_cli
from mapreduce.cluster import LocalCluster
from mapreduce.tools.crashtest import (
    CrashTestReport,
    Detection,
    EventTail,
    Fault,
    FaultKind,
    LiveIncarnations,
    RoundResult,
    compare_outputs,
    detection_latencies,
    format_row,
    format_totals,
    job_seconds,
)
from mapreduce.wire import events as ev
from mapreduce.wire.events import read_records

CHAOS = ["--kill-every", "0.7", "--pause-probability", "0.3", "--worker-timeout", "2", "--heartbeat-interval", "0.3"]


def test_crashtest_kills_and_pauses_workers_and_every_round_matches(tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        mapreduce_command(
            "crashtest",
            "wordcount",
            "--rounds",
            "2",
            "--workers",
            "3",
            "--corpus-size",
            "2M",
            "--split-size",
            "128k",
            "--reduce",
            "4",
            "--seed",
            "2",
            *CHAOS,
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = crashtest_table(result.stdout)
    assert [rows[r]["result"] for r in ("base", "1", "2")] == ["OK", "OK", "OK"]
    assert rows["all"]["result"] == "2/2 OK"
    assert int(rows["all"]["kills"]) > 0  # with seed 2, each round's first fault (at its first finished task) is a kill
    assert int(rows["all"]["dead"]) > 0  # the coordinator noticed
    assert "detection latency over" in result.stdout and "overhead" in result.stdout
    assert list(scratch.iterdir()) == []  # corpus, oracle, outputs, cluster scratch: all removed


def test_crash_app_on_a_local_cluster_matches_seq(corpus, oracle, tmp_path):
    # About 100 map tasks and 2 reduce tasks, each killing its worker with probability 0.1:
    # some crash is all but certain (0.9 ** 102 < 1e-4 that none happens), the cluster
    # replaces crashed workers, and a task losing the 8 workers in a row that fail the job
    # is out of reach (0.1 ** 8 per task).
    args = ["--reduce", "2", "--split-size", "20k"]
    expected = oracle(CRASH, corpus, *args)
    out, events = tmp_path / "out", tmp_path / "events.jsonl"
    run_cli(
        "run",
        CRASH,
        *corpus,
        *args,
        "--param",
        "crash=0.1",
        "--param",
        "delay_seconds=0.3",
        "--workers",
        "4",
        "--heartbeat-interval",
        "0.3",
        "--worker-timeout",
        "2",
        "--output",
        str(out),
        "--events",
        str(events),
        "--quiet",
        timeout=300,
    )
    assert_same_output(expected, out)
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []
    log = list(read_records(events))
    assert any(e["event"] == "task_lost" for e in log), "no worker crashed"
    assert sum(1 for e in log if e["event"] == "worker_joined") > 4  # crashed workers were replaced


def test_local_cluster_replaces_crashed_killed_and_paused_workers(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nobody = f"tcp://127.0.0.1:{s.getsockname()[1]}"  # workers keep trying to reach it
    cluster = LocalCluster(nobody, 1, ["--coordinator-timeout", "120"], max_replacements=1)
    try:
        cluster.start()
        first = cluster.processes[0]
        first.kill()  # a crash: replaced, using up the budget
        _wait_until(lambda: len(cluster.processes) == 2, "a replacement for a crashed worker")
        cluster.kill_worker(cluster.processes[1])  # on purpose: replaced beyond the budget
        _wait_until(lambda: len(cluster.processes) == 3, "a replacement for a killed worker")
        paused = cluster.processes[2]
        cluster.pause_worker(paused)
        _wait_until(lambda: len(cluster.processes) == 4, "a replacement for a paused worker")
        assert paused.poll() is None  # stopped, not dead, and not among the active workers:
        assert cluster.active_workers() == [cluster.processes[3]]
        cluster.resume_worker(paused)
        assert sorted(p.pid for p in cluster.active_workers()) == sorted([paused.pid, cluster.processes[3].pid])
        assert cluster.all_exited() is None
        for process in cluster.active_workers():
            process.kill()  # crashes beyond the budget: not replaced, and the cluster says so
        _wait_until(lambda: cluster.all_exited() is not None, "the cluster to report that every worker exited")
        assert len(cluster.processes) == 4 and cluster.replacements == 1
        assert "all 4 local workers exited" in cluster.all_exited()
    finally:
        cluster.kill()
        cluster.cleanup()
    assert not cluster.root.exists()


def _wait_until(condition, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout} s waiting for {what}"
        time.sleep(0.05)


def test_crashtest_interrupted_stops_everything(tmp_path):
    scratch, kept = tmp_path / "tmp", tmp_path / "events"
    scratch.mkdir()
    process = subprocess.Popen(
        mapreduce_command(
            "crashtest",
            "--rounds",
            "5",
            "--workers",
            "2",
            "--corpus-size",
            "4M",
            "--split-size",
            "64k",
            "--events-dir",
            str(kept),
            *CHAOS,
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    round_log = kept / "round-01.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (round_log.exists() and any(e["event"] == "task_finished" for e in read_records(round_log))):
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "round 1 never started"
            time.sleep(0.05)
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=60) == 130
    finally:
        if process.poll() is None:
            process.kill()
    assert "interrupted" in process.stderr.read()
    pids = [e["pid"] for e in read_records(round_log) if e["event"] == "worker_joined"]
    assert pids and not any(_running(pid) for pid in pids)
    assert list(scratch.iterdir()) == []


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


# ---- the pure helpers, on a synthetic event log ------------------------------------


def joined(t, worker, pid):
    return ev.WorkerJoined(t=t, worker=worker, name=f"local-{worker}", pid=pid, host="box")


def attempt(cls, t, worker, attempt, task, phase="map", **fields):
    return cls(t=t, worker=worker, attempt=attempt, task=task, phase=phase, **fields)


def dead(t, worker, attempt=None):
    return ev.WorkerDead(t=t, worker=worker, why="silent", silent=2.0, attempt=attempt)


SYNTHETIC = [
    joined(10.0, 1, 101),
    joined(10.1, 2, 102),
    joined(10.2, 3, 103),
    attempt(ev.TaskAssigned, 10.5, 1, 1, 0),
    # pid 101 killed at 11.0 while running a map: suspected, then dead and its task lost.
    ev.WorkerSuspect(t=12.5, worker=1, silent=1.5),
    dead(13.1, 1, attempt=1),
    attempt(ev.TaskLost, 13.1, 1, 1, 0),
    ev.MapOutputMoved(t=13.2, task=3, worker=2),
    # pid 102 paused at 11.5: declared dead, comes back as worker 5, fenced once, later killed at 16.0.
    dead(13.6, 2),
    joined(13.7, 4, 104),
    ev.MessageFenced(t=15.0, worker=2, message="TaskDone", attempt=7, why="worker 2 is dead"),
    joined(15.0, 5, 102),
    attempt(ev.BackupLaunched, 15.5, 3, 9, 1, "reduce"),
    attempt(ev.FetchFailed, 15.6, 3, 9, 1, "reduce", map_task=2, map_attempt=4, error="FetchError: gone"),
    ev.MapRerun(t=15.7, task=2),
    attempt(ev.TaskLost, 17.8, 5, 11, 1, "reduce"),
    dead(17.8, 5, attempt=11),
    ev.JobFinished(t=18.0, ok=True, message=""),
]
FAULTS = (
    Fault(FaultKind.KILL, 101, 11.0),
    Fault(FaultKind.PAUSE, 102, 11.5),
    Fault(FaultKind.KILL, 102, 16.0),  # its new incarnation (worker 5), not the old one
    Fault(FaultKind.KILL, 104, 17.9),  # the job finished without noticing
    Fault(FaultKind.KILL, 999, 12.0),  # never joined
)


def test_the_tally_counts_what_the_crash_test_reports():
    tally = ev.Tally.of(SYNTHETIC)
    counted = (tally.workers_dead, tally.lost_attempts, tally.maps_rerun, tally.backups, tally.fenced)
    assert (*counted, tally.fetch_failures) == (3, 2, 1, 1, 1, 1)


def test_detection_latencies_follow_each_killed_process_to_its_incarnation():
    detection = detection_latencies(SYNTHETIC, FAULTS)
    assert detection.latencies == pytest.approx((2.1, 1.8))
    assert detection.undetected == 2


def test_job_seconds_end_at_job_finished():
    assert job_seconds(SYNTHETIC, started=9.0, fallback=99.0) == pytest.approx(9.0)
    assert job_seconds(SYNTHETIC[:5], started=9.0, fallback=99.0) == 99.0


def test_live_incarnations_and_event_tail(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = EventTail(path)
    assert tail.read() == []  # not written yet
    path.write_text(
        '{"t": 1, "event": "worker_joined", "worker": 1, "pid": 7, "name": "a", "host": "h"}\n'
        '{"t": 2, "event": "worker_jo'
    )
    alive = LiveIncarnations()
    alive.update(tail.read())
    assert alive.pids() == {7}
    with open(path, "a") as f:  # the rest of a line being written
        f.write('ined", "worker": 2, "pid": 8, "name": "b", "host": "h"}\n')
        f.write('{"t": 3, "event": "worker_dead", "worker": 1, "why": "silent", "silent": 2.0}\n')
    alive.update(tail.read())
    assert alive.pids() == {8}


def test_report_rows_totals_and_overhead():
    counts = ev.Tally(workers_dead=2, lost_attempts=1)
    baseline = RoundResult(0, 2.0, (), ev.Tally(), Detection(), None)
    good = RoundResult(1, 5.0, FAULTS[:3], counts, Detection((2.0,), 0), None)
    bad = RoundResult(
        2,
        7.0,
        FAULTS[3:4],
        counts,
        Detection(),
        "part-00001 differs from the oracle: line 3 is b'a\\t1', expected b'a\\t2'",
    )
    report = CrashTestReport(baseline, (good, bad))
    assert (good.kills, good.pauses, bad.kills) == (2, 1, 1)
    assert format_row(baseline).split() == ["base", "2.00"] + ["0"] * 8 + ["OK"]
    assert format_row(good).split() == ["1", "5.00", "2", "1", "2", "1", "0", "0", "0", "0", "OK"]
    assert format_row(bad).split()[-1] == "DIFF"
    assert format_totals(report).split() == ["all", "12.00", "3", "1", "4", "2", "0", "0", "0", "0", "1/2", "OK"]
    assert report.overhead() == pytest.approx(3.0)  # median of 5 and 7, over 2
    assert not report.ok and report.first_problem().startswith("round 2: part-00001 differs")
    assert report.latencies() == [2.0]


def test_compare_outputs_names_the_first_difference(tmp_path):
    expected, actual = tmp_path / "expected", tmp_path / "actual"
    for folder in (expected, actual):
        folder.mkdir()
        (folder / "_SUCCESS").write_bytes(b"")
        (folder / "part-00000").write_text("a\t1\nb\t2\n")
    assert compare_outputs(expected, actual) is None
    (actual / "part-00000").write_text("a\t1\nb\t3\n")
    assert (
        compare_outputs(expected, actual) == "part-00000 differs from the oracle: line 2 is b'b\\t3', expected b'b\\t2'"
    )
    (actual / ".part-00001.a4.tmp").write_text("")
    assert compare_outputs(expected, actual) == ".part-00001.a4.tmp should not be there"
    (actual / "_SUCCESS").unlink()
    assert compare_outputs(expected, actual) == "_SUCCESS is missing"


@pytest.mark.parametrize(
    "argv, worker",
    [
        (["/venv/bin/mapreduce", "worker", "--connect", "tcp://x:1"], True),
        (["/src/mapreduce/__main__.py", "-v", "worker", "--connect", "tcp://x:1"], True),
        (["/venv/bin/mapreduce", "seq", "crash", "worker"], False),
        (["/venv/bin/mapreduce", "run", "crash", "in.txt"], False),
        (["/venv/bin/pytest", "worker"], False),
        ([], False),
    ],
)
def test_crash_app_arms_only_in_a_worker_process(argv, worker):
    assert crash_app().started_as_worker(argv) is worker


def crash_app():
    """The crash app's module, loaded from its file (test apps are not built in)."""
    from mapreduce.job import load_app

    return sys.modules[load_app(CRASH).map.__module__]  # loaded as an app is: by its path


@pytest.mark.parametrize(
    ("app", "args"),
    [
        ("sort", ["--reduce", "4"]),  # total order, key-only records: the shuffle carries every line
        ("grep", ["--param", "pattern=e", "--reduce", "0"]),  # map-only: each map commits its own part
        ("topwords", ["--param", "n=50"]),  # one reduce with a bounded heap and a tear-down
        (str(APPS / "counting.py"), ["--reduce", "3"]),  # user counters: equal to the run without faults
    ],
)
def test_crashtest_of_the_programming_model_is_exact_every_round(app, args, tmp_path):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    result = subprocess.run(
        mapreduce_command(
            "crashtest", app, "--rounds", "1", "--workers", "3", "--corpus-size", "1M", "--split-size", "64k",
            "--seed", "3", *args, *CHAOS,
        ),
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    rows = crashtest_table(result.stdout)
    assert [rows[r]["result"] for r in ("base", "1")] == ["OK", "OK"]  # output and counters exact
    assert int(rows["all"]["kills"]) + int(rows["all"]["pauses"]) > 0
