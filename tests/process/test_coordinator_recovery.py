"""A coordinator killed (SIGKILL) and started again on its --state-dir resumes its job: the
output equals `mapreduce seq`'s, and what was journalled as finished does not run again."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import APPS, assert_no_temp_files, assert_same_output, mapreduce_command, of, run_cli, wait_for_log
from mapreduce import journal
from mapreduce.wire.events import read_records

SLEEPY = str(APPS / "sleepy.py")


class Job:
    """One job's command (the same at every start), its separately started workers, and its runs."""

    def __init__(self, tmp_path, app: str, inputs: list[str], *args: str, workers: int = 2):
        self.tmp = tmp_path
        self.out, self.state = tmp_path / "out", tmp_path / "state"
        self.endpoint = f"ipc://{tmp_path}/coordinator"
        self.args = [app, *inputs, "--output", str(self.out), "--bind", self.endpoint, "--state-dir", str(self.state)]
        self.args += [
            *args,
        ]
        self.runs = 0
        self.workers = [
            subprocess.Popen(
                mapreduce_command(
                    "worker",
                    "--connect",
                    self.endpoint,
                    "--coordinator-timeout",
                    "60",
                    "--scratch",
                    str(tmp_path / "scratch"),
                ),
                stdout=subprocess.DEVNULL,
                stderr=open(tmp_path / f"worker-{n}.log", "w"),
            )
            for n in range(workers)
        ]

    def start(self, env: dict | None = None) -> subprocess.Popen:
        self.runs += 1
        command = mapreduce_command("coordinator", *self.args, "--events", str(self.events(self.runs)))
        return subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env={**os.environ, **(env or {})}
        )

    def crash_at(self, point: str) -> None:
        """A run that kills itself at ``point`` (see MAPREDUCE_CRASH_COORDINATOR)."""
        run = self.start({"MAPREDUCE_CRASH_COORDINATOR": point})
        assert run.wait(timeout=120) == -signal.SIGKILL, run.stderr.read()

    def resume(self) -> None:
        """The same command again, which must finish the job."""
        run = self.start()
        assert run.wait(timeout=60) == 0, run.stderr.read()

    def events(self, run: int):
        return self.tmp / f"events-{run}.jsonl"

    def journalled(self) -> tuple[set[int], set[int]]:
        """The maps journalled as finished, and the partitions journalled as committed."""
        records, _ = journal.read_records(self.state / journal.JOURNAL)
        maps = {r["task"] for r in records if r.get("r") == "done" and r["stage"] == 0}
        return maps, {r["partition"] for r in records if r.get("r") == "committed"}

    def close(self) -> None:
        for w in self.workers:
            if w.poll() is None:
                w.kill()
            w.wait()


def finished(log, phase: str) -> set[int]:
    return {e["task"] for e in of(log, "task_finished", phase=phase)}


def test_a_coordinator_killed_mid_map_resumes_and_runs_only_what_was_unfinished(corpus, oracle, tmp_path):
    params = ["--param", "map_seconds=0.3", "--split-size", "128K", "--reduce", "3"]
    expected = oracle(SLEEPY, corpus, *params)
    job = Job(tmp_path, SLEEPY, corpus, *params)
    try:
        first = job.start()
        wait_for_log(job.events(1), lambda log: len(finished(log, "map")) >= 4, "4 maps done", first, first.stderr.read)
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        done_maps, _ = job.journalled()
        assert len(done_maps) >= 4 and not (job.out / "_SUCCESS").exists()
        second = job.start()
        assert second.wait(timeout=120) == 0, second.stderr.read()
    finally:
        job.close()
    assert_same_output(expected, job.out)
    assert_no_temp_files(job.out)
    again = list(read_records(job.events(2)))
    rerun = finished(again, "map") & done_maps
    lost = {e["task"] for e in of(again, "map_rerun")}
    assert rerun <= lost, f"maps journalled as finished ran again without losing their output: {rerun - lost}"
    (started,) = of(again, "job_started")
    recovered = {e["task"] for e in of(again, "output_recovered")}  # finished unjournalled, held by its worker
    assert done_maps | recovered | finished(again, "map") == set(range(started["maps"]))  # the rest ran again
    assert len(finished(again, "map")) < started["maps"]


def test_a_crash_between_the_last_commit_and_success_finishes_without_running_anything(corpus, oracle, tmp_path):
    expected = oracle("wordcount", corpus, "--reduce", "3")
    job = Job(tmp_path, "wordcount", corpus, "--reduce", "3")
    try:
        job.crash_at("before-success")
        assert job.journalled()[1] == {0, 1, 2} and not (job.out / "_SUCCESS").exists()
        job.resume()
    finally:
        job.close()
    assert_same_output(expected, job.out)
    assert of(list(read_records(job.events(2))), "task_assigned") == []
    # Once more: the journal says the job is done; nothing changes.
    stamps = {p.name: p.stat().st_mtime_ns for p in job.out.iterdir()}
    result = run_cli("coordinator", *job.args)
    assert "already finished" in result.stderr
    assert {p.name: p.stat().st_mtime_ns for p in job.out.iterdir()} == stamps


def test_a_crash_after_a_commit_keeps_that_partition(corpus, oracle, tmp_path):
    expected = oracle("wordcount", corpus, "--reduce", "4")
    job = Job(tmp_path, "wordcount", corpus, "--reduce", "4")
    try:
        job.crash_at("after-commit:1")
        (committed,) = job.journalled()[1]
        stamp = (job.out / f"part-{committed:05d}").stat().st_mtime_ns
        job.resume()
    finally:
        job.close()
    assert_same_output(expected, job.out)
    assert (job.out / f"part-{committed:05d}").stat().st_mtime_ns == stamp  # never redone
    assert committed not in finished(list(read_records(job.events(2))), "reduce")


def test_a_state_folder_of_another_job_or_damaged_is_refused_and_nothing_changes(corpus, tmp_path):
    job = Job(tmp_path, "wordcount", corpus)
    try:
        job.crash_at("after-map:1")
    finally:
        job.close()
    journal_file = job.state / journal.JOURNAL
    before = journal_file.read_bytes()
    other = run_cli("coordinator", "wordcount", corpus[0], *job.args[len(corpus) + 1 :], check=False)
    assert other.returncode == 2 and "holds the state of another job" in other.stderr
    lines = before.split(b"\n")
    lines[1] = lines[1][:-3] + b"xx}"  # damage before the last record
    journal_file.write_bytes(b"\n".join(lines))
    damaged = run_cli("coordinator", *job.args, check=False)
    assert damaged.returncode == 2 and "is damaged at line 2" in damaged.stderr
    assert journal_file.read_bytes() == b"\n".join(lines)


def test_the_embedded_cluster_resumes_from_its_state_folder_too(corpus, oracle, tmp_path):
    expected = oracle("wordcount", corpus, "--reduce", "4")
    out, state = tmp_path / "out", tmp_path / "state"
    command = ["run", "wordcount", *corpus, "--reduce", "4", "-w", "2", "--output", str(out), "--state-dir", str(state)]
    crashed = subprocess.run(
        mapreduce_command(*command),
        env={**os.environ, "MAPREDUCE_CRASH_COORDINATOR": "after-commit:2"},
        capture_output=True,
        timeout=120,
    )
    assert crashed.returncode == -signal.SIGKILL
    committed = {r["partition"] for r in journal.read_records(state / journal.JOURNAL)[0] if r.get("r") == "committed"}
    assert len(committed) == 2
    stamps = {n: (out / f"part-{n:05d}").stat().st_mtime_ns for n in committed}
    run_cli(*command)
    assert_same_output(expected, out)
    assert {n: (out / f"part-{n:05d}").stat().st_mtime_ns for n in committed} == stamps


def files_in(folder) -> dict:
    """Every file under ``folder`` and its size (a worker appends each map's output to one file)."""
    return {p: p.stat().st_size for p in folder.rglob("*") if p.is_file()} if folder.exists() else {}


def test_a_map_that_finished_while_no_coordinator_heard_is_taken_from_its_worker_not_rerun(corpus, oracle, tmp_path):
    gated = tmp_path / "gated.txt"
    gated.write_text("words held through a restart\n" * 20)
    inputs, gate = [*corpus[:3], str(gated)], tmp_path / "gate"
    expected = oracle(str(APPS / "gate.py"), inputs, "--reduce", "2")
    job = Job(tmp_path, str(APPS / "gate.py"), inputs, "--reduce", "2", "--param", f"gate={gate}", workers=1)
    scratch = tmp_path / "scratch"
    try:
        first = job.start()
        wait_for_log(
            job.events(1), lambda log: len(finished(log, "map")) == 3, "the 3 ungated maps", first, first.stderr.read
        )
        before = files_in(scratch)
        first.send_signal(signal.SIGSTOP)  # it hears nothing more
        gate.touch()
        deadline = time.monotonic() + 30
        while files_in(scratch) == before and time.monotonic() < deadline:  # the gated map's output
            time.sleep(0.02)
        assert files_in(scratch) != before
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=30)
        assert job.journalled()[0] == {0, 1, 2}  # the gated map (3) was never journalled
        second = job.start()
        assert second.wait(timeout=60) == 0, second.stderr.read()
    finally:
        job.close()
    assert_same_output(expected, job.out)
    again = list(read_records(job.events(2)))
    assert [e["task"] for e in of(again, "output_recovered")] == [3], second.stderr.read()
    assert finished(again, "map") == set()  # no map ran again
