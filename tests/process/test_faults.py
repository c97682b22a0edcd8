"""Fault tests with real processes and real signals: kills, pauses, stragglers, CPU-bound tasks.

The coordinator and workers run as separate processes; the tests watch the event
log and wait on conditions with generous bounds, never on sleeps of just-enough
length. Every case compares the output with `mapreduce seq`.
"""

from __future__ import annotations

import collections
import os
import shutil
import signal
import subprocess

from helpers import (
    APPS,
    FAST,
    SLEEPY,
    TIMEOUT,
    assert_no_temp_files,
    assert_same_output,
    mapreduce_command,
    of,
    running,
    words_file,
)


def test_kill_a_worker_mid_map(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(6)]
    params = ["--param", "map_seconds=1.5", "--reduce", "3"]
    expected = oracle(SLEEPY, inputs, "--reduce", "3")
    job = make_job(SLEEPY, inputs, *params)
    for _ in range(3):
        job.worker()
    log = job.wait_for(lambda log: len(running(log, "map")) == 3, "three maps running")
    victim = running(log, "map")[0]
    os.kill(job.pid(victim["worker"]), signal.SIGKILL)
    log = job.finish()
    assert_same_output(expected, job.out)
    dead = of(log, "worker_dead", worker=victim["worker"])
    assert len(dead) == 1 and dead[0]["attempt"] == victim["attempt"]
    assert of(log, "task_lost", attempt=victim["attempt"])
    again = [e for e in of(log, "task_finished", phase="map", task=victim["task"])]
    assert len(again) == 1 and again[0]["worker"] != victim["worker"]


def test_kill_a_worker_after_its_maps_finished(tmp_path, oracle, make_job):
    """Each worker has its own scratch folder, lost with it: its finished map output is gone."""
    inputs = [words_file(tmp_path, "slow.txt"), words_file(tmp_path, "fast.txt")]
    params = ["--param", "map_seconds=4", "--param", "only_inputs=slow", "--reduce", "6"]
    expected = oracle(SLEEPY, inputs, "--reduce", "6")
    job = make_job(SLEEPY, inputs, *params)
    job.worker(scratch=str(tmp_path / "s-slow"))
    job.wait_for(lambda log: of(log, "task_assigned", phase="map", task=0), "the slow map to start")
    fast = job.worker(scratch=str(tmp_path / "s-fast"))
    log = job.wait_for(lambda log: of(log, "task_finished", phase="map", task=1), "the fast map to finish")
    mapper = of(log, "task_finished", phase="map", task=1)[0]["worker"]
    # Its maps are done, reducers wait for the slow map: the mapper dies and its disk is lost.
    os.kill(job.pid(mapper), signal.SIGKILL)
    fast.wait()
    shutil.rmtree(tmp_path / "s-fast")
    job.wait_for(lambda log: of(log, "worker_dead", worker=mapper), "the mapper to be declared dead", timeout=30)
    for name in ("a", "b"):
        job.worker(scratch=str(tmp_path / f"s-{name}"))
    log = job.finish()
    assert_same_output(expected, job.out)
    assert of(log, "map_rerun", task=1)
    assert len(of(log, "task_finished", phase="map", task=1)) == 2


def test_kill_a_worker_mid_reduce(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(2)]
    params = ["--param", "reduce_seconds=0.2", "--reduce", "2"]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, *params)
    for _ in range(2):
        job.worker()
    log = job.wait_for(
        lambda log: running(log, "reduce") and len(of(log, "task_finished", phase="map")) == 2, "a reduce to run"
    )
    victim = running(log, "reduce")[0]
    os.kill(job.pid(victim["worker"]), signal.SIGKILL)
    job.worker()  # a replacement
    log = job.finish()
    assert_same_output(expected, job.out)
    assert_no_temp_files(job.out)  # the killed reducer's half-written file is gone
    assert of(log, "task_lost", attempt=victim["attempt"])
    committed = collections.Counter(e["partition"] for e in of(log, "output_committed"))
    assert committed == {0: 1, 1: 1}


def test_paused_worker_is_declared_dead_then_fenced(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(4)]
    params = ["--param", "map_seconds=1", "--reduce", "2"]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, *params)
    for _ in range(2):
        job.worker()
    log = job.wait_for(lambda log: len(running(log, "map")) == 2, "two maps running")
    victim = running(log, "map")[0]
    pid = job.pid(victim["worker"])
    os.kill(pid, signal.SIGSTOP)
    try:
        job.wait_for(
            lambda log: of(log, "worker_dead", worker=victim["worker"]),
            "the paused worker to be declared dead",
            timeout=30,
        )
    finally:
        os.kill(pid, signal.SIGCONT)
    log = job.finish()
    assert_same_output(expected, job.out)
    death = of(log, "worker_dead", worker=victim["worker"])[0]
    assert of(log, "worker_suspect", worker=victim["worker"])  # suspected before being declared dead
    # The zombie's attempt never counts, and the process comes back as a new incarnation.
    assert not of(log, "task_finished", attempt=victim["attempt"])
    rejoined = [e for e in of(log, "worker_joined", pid=pid) if e["t"] > death["t"]]
    assert rejoined and rejoined[0]["worker"] != victim["worker"]
    late = [
        e
        for e in log
        if e["t"] > death["t"] and e.get("worker") == victim["worker"] and e["event"] not in ("message_fenced",)
    ]
    assert late == []  # after its death, the old incarnation is only ever fenced


def test_every_worker_killed_then_new_ones_finish(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(6)]
    params = ["--param", "map_seconds=0.5", "--reduce", "3"]
    expected = oracle(SLEEPY, inputs, "--reduce", "3")
    job = make_job(SLEEPY, inputs, *params)
    first = [job.worker(), job.worker()]
    job.wait_for(lambda log: len(of(log, "task_finished", phase="map")) >= 2, "two maps to finish")
    for process in first:
        process.kill()
    job.wait_for(lambda log: len(of(log, "worker_dead")) == 2, "both workers to be declared dead", timeout=30)
    job.worker()
    job.worker()
    log = job.finish()
    assert_same_output(expected, job.out)
    # Their finished maps lost every server, but not their files: the new workers share the
    # scratch folder and serve them, so nothing runs again.
    assert of(log, "map_output_orphaned") and of(log, "map_output_moved")
    assert of(log, "map_rerun") == []


def test_cpu_bound_map_longer_than_the_timeout_is_not_dead(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, "a.txt"), words_file(tmp_path, "b.txt")]
    params = ["--param", "map_seconds=6", "--param", "burn=1", "--reduce", "1"]
    expected = oracle(SLEEPY, inputs, "--reduce", "1")  # the same counts, without the wait
    job = make_job(SLEEPY, inputs, *params)  # worker timeout 2 s, heartbeats every 0.3 s
    job.worker()
    job.worker()
    log = job.finish()
    assert of(log, "worker_dead") == [] and of(log, "worker_suspect") == []
    assigned = collections.Counter(e["task"] for e in of(log, "task_assigned", phase="map"))
    assert assigned == {0: 1, 1: 1} and of(log, "backup_launched") == []
    assert min(e["seconds"] for e in of(log, "task_finished", phase="map")) >= 6
    assert_same_output(expected, job.out)


def test_straggler_gets_a_backup_that_wins(tmp_path, oracle, make_job):
    inputs = [words_file(tmp_path, f"in{i:02d}.txt") for i in range(12)]
    params = ["--param", "map_seconds=0.3", "--reduce", "2"]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, *params)
    job.worker(env={"SLEEPY_FACTOR": "10"})  # 3 s per map instead of 0.3 s
    job.wait_for(lambda log: of(log, "task_assigned", worker=1), "the slow worker to start")
    for _ in range(3):
        job.worker()
    log = job.finish()
    assert_same_output(expected, job.out)
    backups = of(log, "backup_launched")
    assert backups, "no backup was launched for the straggler"
    won = [e for e in of(log, "task_finished") if e["backup"]]
    assert won, "no backup attempt won"
    assert of(log, "task_cancelled", worker=1)  # the straggler's attempt was stopped
    # Speculation never runs a task that was not slow twice: only the straggler's tasks got backups.
    slow_attempts = {e["attempt"] for e in of(log, "task_assigned", worker=1)}
    slow_tasks = {
        (e["phase"], e["task"]) for e in log if e.get("attempt") in slow_attempts and e["event"] == "task_assigned"
    }
    assert {(e["phase"], e["task"]) for e in backups} <= slow_tasks


def test_poison_task_fails_the_job_naming_it(tmp_path):
    good = words_file(tmp_path, "good.txt")
    poison = tmp_path / "poison.txt"
    poison.write_text("EXIT\n")
    out = tmp_path / "out"
    result = subprocess.run(
        mapreduce_command(
            "run",
            str(APPS / "exiter.py"),
            good,
            str(poison),
            "--workers",
            "4",
            "--max-worker-losses",
            "3",
            "--output",
            str(out),
            *FAST,
            *TIMEOUT,
        ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    message = result.stderr[result.stderr.index("job failed") :]
    assert "lost 3 workers in a row" in message and f"input {str(poison)!r}" in message
    assert not (out / "_SUCCESS").exists()


def test_attempt_stuck_in_user_code_after_its_timeout_restarts_the_worker(tmp_path, make_job):
    """A timed-out map that never returns cannot be stopped in its thread: the worker restarts
    itself (same pid, new incarnation), so the retries still get workers and the job ends."""
    inputs = [words_file(tmp_path, "stuck.txt")]
    job = make_job(SLEEPY, inputs, "--param", "map_seconds=1000", "--task-timeout", "1", "--max-attempts", "3")
    first, second = job.worker(), job.worker()
    code = job.coordinator.wait(timeout=90)
    log = job.log()
    assert code == 1 and "ran longer than the task timeout" in job.coordinator.stderr.read()
    assert len(of(log, "task_failed", phase="map")) == 3
    pids = [e["pid"] for e in of(log, "worker_joined")]
    assert len(pids) > len(set(pids))  # a worker came back as itself after restarting
    assert {first.pid, second.pid} >= set(pids)
