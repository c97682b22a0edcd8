"""A standing cluster (`mapreduce cluster start`): jobs submitted to it queue and run one after
another on workers that stay, each exact, each alone: a failing, crashing or cancelled job
harms neither the service nor the next job; clients need keys over the network; `cluster
stop` drains the workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from helpers import (
    APPS,
    FAST,
    GUTENBERG,
    assert_same_output,
    event_log,
    free_endpoint,
    gone,
    kill_all,
    mapreduce_command,
)
from mapreduce.service.client import ClusterClient
from mapreduce.wire.messages import JobState, WatchJob

WAIT = 120  # generous bound on any one job


class Cluster:
    """A service started with `cluster start` and workers that stay, all real processes."""

    def __init__(
        self, tmp_path: Path, workers: int = 2, local_workers: int = 0, key_dir: Path | None = None, *extra: str
    ):
        self.tmp = tmp_path
        self.state = tmp_path / "state"
        self.endpoint = free_endpoint()
        self.scratch = tmp_path / "scratch"
        keys = ["--key-dir", str(key_dir)] if key_dir else []
        self.service = subprocess.Popen(
            mapreduce_command(
                "cluster", "start", "--bind", self.endpoint, "--state-dir", str(self.state), "--workers",
                str(local_workers), *FAST, *keys, *extra,
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        worker_keys = [*keys, "--key-name", "w1"] if key_dir else []
        self.workers = [
            subprocess.Popen(
                mapreduce_command(
                    "worker", "--connect", self.endpoint, "--scratch", str(self.scratch), "--stay", *FAST, *worker_keys
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(workers)
        ]
        deadline = time.monotonic() + 60
        while not (self.state / "control").exists():
            assert self.service.poll() is None, f"the service exited: {self.service.stderr.read()}"
            assert time.monotonic() < deadline, "the service never listened"
            time.sleep(0.02)

    def cli(self, *args: str, timeout: float = WAIT) -> subprocess.CompletedProcess:
        command = mapreduce_command(*args, "--state-dir", str(self.state))
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout)

    def submit(self, app: str, inputs: list[str], out: Path, *args: str) -> str:
        result = self.cli("submit", "--detach", app, *inputs, "--output", str(out), *args)
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    def wait(self, job_id: str, until=lambda info: info.state.over):
        with ClusterClient(state_dir=self.state) as client:
            deadline = time.monotonic() + WAIT
            while time.monotonic() < deadline:
                assert self.service.poll() is None, f"the service exited: {self.service.stderr.read()}"
                info = client.ask(WatchJob(job_id))
                if until(info):
                    return info
                time.sleep(0.02)
        raise AssertionError(f"{job_id} never got there: {info}")

    def kill_service(self) -> None:
        """SIGKILL the service; the fork server and jobs' coordinators must go with it."""
        forks = _children(self.service.pid)
        coordinators = [pid for fork in forks for pid in _children(fork)]
        self.service.send_signal(signal.SIGKILL)
        self.service.wait(timeout=WAIT)
        for pid in forks + coordinators:
            assert gone(pid, within=30), f"process {pid} outlived its service"

    def restart(self, *extra: str) -> None:
        """A new service on the same folder and address, once it answers."""
        self.service = subprocess.Popen(
            mapreduce_command(
                "cluster", "start", "--bind", self.endpoint, "--state-dir", str(self.state), *FAST, *extra
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        deadline = time.monotonic() + WAIT
        while True:
            listing = self.cli("jobs", "--timeout", "1")
            if listing.returncode == 0:
                return
            assert time.monotonic() < deadline and self.service.poll() is None, listing.stderr

    def listed(self) -> list[list[str]]:
        """`mapreduce jobs`: [job id, state] per line."""
        listing = self.cli("jobs")
        assert listing.returncode == 0, listing.stderr
        return [line.split()[:2] for line in listing.stdout.splitlines()[1:]]

    def stop(self) -> None:
        kill_all([self.service, *self.workers])


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(child) for child in found.stdout.split()]


@pytest.fixture
def books():
    return [str(p) for p in sorted(GUTENBERG.glob("*.txt"))[:3]]


def test_jobs_submitted_together_run_in_order_one_at_a_time_each_exact_and_none_leaves_traces(tmp_path, oracle, books):
    cluster = Cluster(tmp_path)
    try:
        # leaky.py leaves a module global, an environment variable and a thread in its worker;
        # checker.py fails if it finds any of them.
        apps = ["leaky.py", "checker.py", "leaky.py", "checker.py"]
        jobs = [
            cluster.submit(str(APPS / app), books, tmp_path / f"out{i}", "--reduce", "3") for i, app in enumerate(apps)
        ]
        assert jobs == [f"job-{n:05d}" for n in range(1, 5)]
        infos = [cluster.wait(job) for job in jobs]
        assert [i.state for i in infos] == [JobState.SUCCEEDED] * 4, [i.message for i in infos]
        for before, after in zip(infos, infos[1:]):
            assert before.finished <= after.started, "two jobs ran at once, or out of order"
        for i, app in enumerate(apps):
            assert_same_output(oracle(str(APPS / app), books, "--reduce", "3"), tmp_path / f"out{i}")
        # Each job's event log is kept in the state folder, readable by `report`.
        log = event_log(Path(infos[0].events))
        assert [e["event"] for e in log if e["event"] == "job_finished"] == ["job_finished"]
        report = subprocess.run(
            mapreduce_command("report", infos[0].events, "--output", str(tmp_path / "report")),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert report.returncode == 0 and (tmp_path / "report" / "index.html").exists(), report.stderr
        listing = cluster.cli("jobs")
        assert listing.returncode == 0
        assert [line.split()[:2] for line in listing.stdout.splitlines()[1:]] == [[j, "succeeded"] for j in jobs]
        assert all(w.poll() is None for w in cluster.workers), "a worker that stays left between jobs"
    finally:
        cluster.stop()


def test_a_poisoned_job_and_a_job_that_kills_its_coordinator_fail_alone(tmp_path, oracle, books):
    poisoned = tmp_path / "poisoned.txt"
    poisoned.write_text("fine words\nPOISON here\n")
    suicidal = tmp_path / "suicidal.py"
    suicidal.write_text("import os\nos._exit(7)\n")
    cluster = Cluster(tmp_path)
    try:
        first = cluster.submit(str(APPS / "failing.py"), [str(poisoned)], tmp_path / "out1", "--max-attempts", "2")
        second = cluster.submit(str(suicidal), books, tmp_path / "out2")
        third = cluster.submit("wordcount", books, tmp_path / "out3", "--reduce", "2")
        failed, crashed, fine = (cluster.wait(job) for job in (first, second, third))
        assert failed.state is JobState.FAILED and "poisoned line" in failed.message, failed
        assert crashed.state is JobState.FAILED and "7" in crashed.message, crashed
        assert fine.state is JobState.SUCCEEDED, fine
        assert_same_output(oracle("wordcount", books, "--reduce", "2"), tmp_path / "out3")
        assert cluster.service.poll() is None
    finally:
        cluster.stop()


def test_submit_follows_the_job_and_exits_with_its_status(tmp_path, books):
    cluster = Cluster(tmp_path, workers=0, local_workers=1)
    try:
        ok = cluster.cli("submit", "wordcount", *books, "--output", str(tmp_path / "out"))
        assert ok.returncode == 0, ok.stderr
        assert "succeeded" in ok.stderr.splitlines()[-1]
        again = cluster.cli("submit", "wordcount", *books, "--output", str(tmp_path / "out"))
        assert again.returncode == 1 and "already holds" in again.stderr, again.stderr
        assert (tmp_path / "out" / "_SUCCESS").exists(), "a refused job touched the earlier output"
        missing = cluster.cli("submit", "wordcount", str(tmp_path / "nothing-here"), "--output", str(tmp_path / "o2"))
        assert missing.returncode == 1 and "nothing-here" in missing.stderr, missing.stderr
    finally:
        cluster.stop()


def test_cancelling_a_running_job_leaves_no_output_and_no_scratch_and_the_next_job_runs(tmp_path, oracle, books):
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    cluster = Cluster(tmp_path)
    try:
        held = cluster.submit(
            str(APPS / "gate.py"), [*books, str(gated)], tmp_path / "held", "--param", f"gate={tmp_path / 'never'}"
        )
        after = cluster.submit("wordcount", books, tmp_path / "after", "--reduce", "2")
        info = cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        # Some of its work is done and on the workers' disks: a map's output at least.
        deadline = time.monotonic() + WAIT
        while not any(e["event"] == "task_finished" and e["phase"] == "map" for e in event_log(Path(info.events))):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert list(cluster.scratch.glob("*/job-*")) or list(cluster.scratch.glob("job-*"))
        cancelled = cluster.cli("cancel", held)
        assert cancelled.returncode == 0 and "cancelled" in cancelled.stdout, cancelled.stderr
        assert not (tmp_path / "held").exists(), "the cancelled job's output folder (which it made) is still there"
        assert cluster.wait(after).state is JobState.SUCCEEDED
        assert_same_output(oracle("wordcount", books, "--reduce", "2"), tmp_path / "after")
        deadline = time.monotonic() + WAIT
        while list(cluster.scratch.glob("*/job-*")) + list(cluster.scratch.glob("job-*")):
            assert time.monotonic() < deadline, f"jobs' files left in scratch: {list(cluster.scratch.rglob('*'))}"
            time.sleep(0.05)
        too_late = cluster.cli("cancel", after)
        assert too_late.returncode == 1 and "succeeded" in too_late.stdout
    finally:
        cluster.stop()


def test_a_worker_killed_mid_job_costs_only_its_tasks_and_the_next_job_runs(tmp_path, oracle, books):
    cluster = Cluster(tmp_path, workers=3)
    try:
        slow = cluster.submit(
            str(APPS / "gate.py"), books, tmp_path / "slow", "--param", "map_seconds=0.5", "--split-size", "100000"
        )
        info = cluster.wait(slow, until=lambda i: i.state is JobState.RUNNING)
        deadline = time.monotonic() + WAIT
        while not any(e["event"] == "task_finished" and e["phase"] == "map" for e in event_log(Path(info.events))):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cluster.workers[0].send_signal(signal.SIGKILL)
        assert cluster.wait(slow).state is JobState.SUCCEEDED
        assert_same_output(oracle(str(APPS / "gate.py"), books, "--split-size", "100000"), tmp_path / "slow")
        nxt = cluster.submit("wordcount", books, tmp_path / "next")
        assert cluster.wait(nxt).state is JobState.SUCCEEDED
        assert all(w.poll() is None for w in cluster.workers[1:])
    finally:
        cluster.stop()


def test_cluster_stop_cancels_the_queue_lets_the_running_job_finish_and_drains_every_worker(tmp_path, oracle, books):
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    gate = tmp_path / "go"
    cluster = Cluster(tmp_path, workers=1, local_workers=2)
    try:
        running = cluster.submit(
            str(APPS / "gate.py"), [*books, str(gated)], tmp_path / "run", "--param", f"gate={gate}"
        )
        queued = cluster.submit("wordcount", books, tmp_path / "queued")
        cluster.wait(running, until=lambda i: i.state is JobState.RUNNING)
        stop = cluster.cli("cluster", "stop")
        assert stop.returncode == 0, stop.stderr
        assert cluster.wait(queued).state is JobState.CANCELLED
        refused = cluster.cli("submit", "wordcount", *books, "--output", str(tmp_path / "late"))
        assert refused.returncode == 2 and "stopping" in refused.stderr
        gate.write_text("")  # the running job may finish now; then the service stops
        assert cluster.service.wait(timeout=WAIT) == 0, cluster.service.stderr.read()
        assert_same_output(oracle(str(APPS / "gate.py"), [*books, str(gated)]), tmp_path / "run")
        assert cluster.workers[0].wait(timeout=WAIT) == 0, "a worker that stays was not told to leave"
        assert not (tmp_path / "queued").exists()
    finally:
        cluster.stop()


def test_clients_over_the_network_need_an_admitted_key(tmp_path, books):
    keys = tmp_path / "keys"
    made = subprocess.run(
        mapreduce_command("keygen", str(keys), "--worker", "w1", "--client", "alice", "--client", "mallory"),
        capture_output=True,
        text=True,
    )
    assert made.returncode == 0, made.stderr
    (keys / "clients" / "mallory.key").unlink()  # revoked: its public key is gone from the cluster's folder
    cluster = Cluster(tmp_path, workers=1, key_dir=keys)
    try:
        remote = ["--cluster", cluster.endpoint, "--key-dir", str(keys)]
        out = tmp_path / "out"
        ok = subprocess.run(
            mapreduce_command("submit", *remote, "--key-name", "alice", "wordcount", *books, "--output", str(out)),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert ok.returncode == 0 and (out / "_SUCCESS").exists(), ok.stderr
        no_key = subprocess.run(
            mapreduce_command("jobs", "--cluster", cluster.endpoint), capture_output=True, text=True, timeout=WAIT
        )
        assert no_key.returncode == 2 and "needs a client key" in no_key.stderr
        refused = subprocess.run(
            mapreduce_command("jobs", *remote, "--key-name", "mallory", "--timeout", "2"),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert refused.returncode == 2 and "no answer" in refused.stderr, refused.stderr
    finally:
        cluster.stop()


def test_a_second_service_on_the_same_state_folder_is_refused_and_a_killed_one_takes_its_jobs_processes_along(
    tmp_path, books
):
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    cluster = Cluster(tmp_path, workers=1)
    try:
        second = subprocess.run(
            mapreduce_command("cluster", "start", "--bind", free_endpoint(), "--state-dir", str(cluster.state)),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert second.returncode == 2 and "already runs" in second.stderr, second.stderr
        held = cluster.submit(
            str(APPS / "gate.py"), [*books, str(gated)], tmp_path / "held", "--param", f"gate={tmp_path / 'open'}"
        )
        cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        assert [pid for fork in _children(cluster.service.pid) for pid in _children(fork)], (
            "the running job's coordinator process was not found"
        )
        cluster.kill_service()
        # A new service on the same folder: the state folder is free again, the job that ran runs
        # again (held at its gate until it opens), and job numbers go on.
        cluster.restart()
        cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        (tmp_path / "open").write_text("")
        assert cluster.wait(held).state is JobState.SUCCEEDED
        after = cluster.submit("wordcount", books, tmp_path / "after")
        assert after == "job-00002"
        assert cluster.wait(after).state is JobState.SUCCEEDED
    finally:
        cluster.stop()


def test_streaming_and_mrjob_jobs_are_submitted_too_and_match_the_sequential_run(tmp_path, books):
    cluster = Cluster(tmp_path)
    try:
        streaming = ["streaming", "--input", books[0], "--mapper", "tr -s ' ' '\\n'", "--reducer", "uniq -c"]
        submitted = cluster.cli(*streaming, "--output", str(tmp_path / "streamed"), "--reduce", "3", "--submit")
        assert submitted.returncode == 0 and "succeeded" in submitted.stderr, submitted.stderr
        alone = subprocess.run(
            mapreduce_command(*streaming, "--output", str(tmp_path / "alone"), "--reduce", "3", "--sequential"),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert alone.returncode == 0, alone.stderr
        assert_same_output(tmp_path / "alone", tmp_path / "streamed")

        import mrjob.examples

        script = str(Path(mrjob.examples.__file__).parent / "mr_word_freq_count.py")
        mrjob = ["mrjob", "--output", str(tmp_path / "counted"), "--submit", "--state-dir", str(cluster.state)]
        counted = subprocess.run(
            mapreduce_command(*mrjob, script, books[0]), capture_output=True, text=True, timeout=WAIT
        )
        assert counted.returncode == 0 and "succeeded" in counted.stderr, counted.stderr
        reference = subprocess.run(
            mapreduce_command("mrjob", "--output", str(tmp_path / "reference"), "--sequential", script, books[0]),
            capture_output=True,
            text=True,
            timeout=WAIT,
        )
        assert reference.returncode == 0, reference.stderr
        assert_same_output(tmp_path / "reference", tmp_path / "counted")
        # A bad combination is refused before anything is sent.
        both = cluster.cli(*streaming, "--output", str(tmp_path / "x"), "--submit", "--sequential")
        assert both.returncode == 2 and "standing cluster" in both.stderr
    finally:
        cluster.stop()


def test_the_cluster_page_lists_the_jobs_and_the_running_jobs_live_page_is_on_the_next_port(tmp_path, books):
    port = int(free_endpoint().rsplit(":", 1)[1])
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    gate = tmp_path / "go"
    cluster = Cluster(tmp_path, 1, 0, None, "--status-port", str(port))
    try:

        def fetch(port: int, path: str) -> bytes:
            deadline = time.monotonic() + WAIT
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
                        return answer.read()
                except OSError:
                    assert time.monotonic() < deadline, f"nothing answered on port {port}"
                    time.sleep(0.05)

        done = cluster.submit("wordcount", books, tmp_path / "done")
        assert cluster.wait(done).state is JobState.SUCCEEDED
        held = cluster.submit(str(APPS / "gate.py"), [str(gated)], tmp_path / "held", "--param", f"gate={gate}")
        cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        deadline = time.monotonic() + WAIT
        while True:
            listed = {j["job_id"]: j["state"] for j in json.loads(fetch(port, "/cluster.json"))["jobs"]}
            if listed == {done: "succeeded", held: "running"}:
                break
            assert time.monotonic() < deadline, listed
            time.sleep(0.05)
        assert held.encode() in fetch(port, "/")
        live = json.loads(fetch(port + 1, "/status.json"))  # the running job's own page
        assert live["job"]["app"].endswith(f"{held}/gate.py"), live
        gate.write_text("")
        assert cluster.wait(held).state is JobState.SUCCEEDED
    finally:
        cluster.stop()


def test_ctrl_c_at_the_services_terminal_lets_the_running_job_finish_and_a_second_cancels_it(tmp_path, oracle, books):
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    state, endpoint = tmp_path / "state", free_endpoint()
    service = subprocess.Popen(  # its own process group, as a terminal gives a foreground job
        mapreduce_command("cluster", "start", "--bind", endpoint, "--state-dir", str(state), "--workers", "2", *FAST),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    cluster = Cluster.__new__(Cluster)
    cluster.service, cluster.workers, cluster.state = service, [], state
    try:
        deadline = time.monotonic() + WAIT
        while not (state / "control").exists():
            assert service.poll() is None and time.monotonic() < deadline, service.stderr.read()
            time.sleep(0.02)
        held = cluster.submit(
            str(APPS / "gate.py"), [*books, str(gated)], tmp_path / "held", "--param", f"gate={tmp_path / 'go'}"
        )
        cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        os.killpg(service.pid, signal.SIGINT)  # Ctrl-C: the whole foreground group
        (tmp_path / "go").write_text("")
        assert service.wait(timeout=WAIT) == 0, service.stderr.read()
        assert_same_output(oracle(str(APPS / "gate.py"), [*books, str(gated)]), tmp_path / "held")

        service = cluster.service = subprocess.Popen(
            mapreduce_command("cluster", "start", "--bind", endpoint, "--state-dir", str(state), "--workers", "1"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        deadline = time.monotonic() + WAIT
        while cluster.cli("jobs", "--timeout", "1").returncode != 0:
            assert service.poll() is None and time.monotonic() < deadline, service.stderr.read()
        never = cluster.submit(
            str(APPS / "gate.py"), [str(gated)], tmp_path / "never", "--param", f"gate={tmp_path / 'no-go'}"
        )
        cluster.wait(never, until=lambda i: i.state is JobState.RUNNING)
        os.killpg(service.pid, signal.SIGINT)  # Ctrl-C; once the service is stopping (two signals sent
        deadline = time.monotonic() + WAIT  # at once are one to the kernel), Ctrl-C again
        while "stopping" not in cluster.cli("jobs").stderr:
            assert time.monotonic() < deadline
        os.killpg(service.pid, signal.SIGINT)
        assert service.wait(timeout=WAIT) == 0, service.stderr.read()
        assert not (tmp_path / "never").exists(), "the cancelled job left its output folder"
    finally:
        kill_all([service])


def test_queued_jobs_outlive_a_killed_service_and_each_runs_exactly_once(tmp_path, oracle, books):
    cluster = Cluster(tmp_path, workers=0)  # no worker: the first job's coordinator waits, the others queue
    try:
        jobs = [cluster.submit("wordcount", books, tmp_path / f"out{i}", "--reduce", str(i + 1)) for i in range(3)]
        cluster.wait(jobs[0], until=lambda i: i.state is JobState.RUNNING)
        assert cluster.listed() == [[jobs[0], "running"], [jobs[1], "queued"], [jobs[2], "queued"]]
        cluster.kill_service()
        cluster.restart("--workers", "2")
        infos = [cluster.wait(job) for job in jobs]
        assert [i.state for i in infos] == [JobState.SUCCEEDED] * 3, [i.message for i in infos]
        for i in range(3):
            assert_same_output(oracle("wordcount", books, "--reduce", str(i + 1)), tmp_path / f"out{i}")
        assert cluster.listed() == [[job, "succeeded"] for job in jobs]
        # The job that was running ran again, with an event log of its own; the others ran once.
        runs = {job: sorted(f.name for f in (cluster.state / "jobs" / job).glob("events*.jsonl")) for job in jobs}
        assert runs == {
            jobs[0]: ["events-2.jsonl", "events.jsonl"],
            jobs[1]: ["events.jsonl"],
            jobs[2]: ["events.jsonl"],
        }
        assert infos[0].events.endswith("events-2.jsonl")
        for info in infos:
            finished = [e for e in event_log(Path(info.events)) if e["event"] == "job_finished"]
            assert len(finished) == 1, info
    finally:
        cluster.stop()


def killed_mid_job(tmp_path: Path, oracle, books: list[str]) -> tuple[list[dict], list[dict]]:
    """Kill the service while a job runs, some of its maps done; start it again: the job runs
    again in its folder and commits the exact output, the job queued behind it runs after.
    Returns the two runs' event logs."""
    gated = tmp_path / "gated.txt"
    gated.write_text("held open words\n" * 50)
    gate = tmp_path / "go"
    cluster = Cluster(tmp_path, workers=2)
    try:
        held = cluster.submit(
            str(APPS / "gate.py"), [*books, str(gated)], tmp_path / "held", "--param", f"gate={gate}", "--reduce", "3"
        )
        queued = cluster.submit("wordcount", books, tmp_path / "queued")
        first = cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        deadline = time.monotonic() + WAIT  # some maps are done, their output on the workers' disks
        while not any(e["event"] == "task_finished" and e["phase"] == "map" for e in event_log(Path(first.events))):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        cluster.kill_service()
        cluster.restart()
        second = cluster.wait(held, until=lambda i: i.state is JobState.RUNNING)
        assert second.events == str(cluster.state / "jobs" / held / "events-2.jsonl")
        gate.write_text("")
        assert cluster.wait(held).state is JobState.SUCCEEDED
        assert cluster.wait(queued).state is JobState.SUCCEEDED
        assert_same_output(oracle(str(APPS / "gate.py"), [*books, str(gated)], "--reduce", "3"), tmp_path / "held")
        assert_same_output(oracle("wordcount", books), tmp_path / "queued")
        assert cluster.listed() == [[held, "succeeded"], [queued, "succeeded"]]
        return event_log(Path(first.events)), event_log(Path(second.events))
    finally:
        cluster.stop()


def test_the_job_a_killed_service_was_running_runs_again_and_commits_the_exact_output(tmp_path, oracle, books):
    first, second = killed_mid_job(tmp_path, oracle, books)
    assert [e["event"] for e in first if e["event"] == "job_finished"] == []
    assert [e["event"] for e in second if e["event"] == "job_finished"] == ["job_finished"]


def test_the_job_a_killed_service_was_running_resumes_without_redoing_its_finished_maps(tmp_path, oracle, books):
    first, second = killed_mid_job(tmp_path, oracle, books)

    def maps_done(log: list[dict]) -> set[int]:
        return {e["task"] for e in log if e["event"] == "task_finished" and e["phase"] == "map"}

    assert maps_done(first), "no map was done before the service was killed"
    assert not maps_done(first) & maps_done(second), "the rerun did maps again that its first run had done"
