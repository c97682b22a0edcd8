"""A standing cluster (`mapreduce cluster start`) across virtual hosts, with real processes.

The first test builds its own virtual network (mapreduce.tools.vnet): the service runs on
h1, workers that stay on h2 and h3, and a client on h4 that submits over the network with
a key of its own. The worker and client hosts each hold only their own key files (in their
scratch folders) and see neither the cluster's key folder, nor its state, inputs or output.

The second test uses the sshd hosts of tests/hosts/conftest.py: the service runs on this
machine at the bridge address, and `launch-workers --worker-arg=--stay` starts a worker on
each of three hosts through ssh; they serve job after job until `cluster stop` dismisses
them. Tests wait on conditions (event logs, job states, exits) with generous bounds.
"""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    APPS,
    FAST,
    assert_same_output,
    event_log,
    gone,
    kill_all,
    mapreduce_command,
    of,
    words_file,
)
from mapreduce.service.client import ClusterClient
from mapreduce.tools import vnet
from mapreduce.tools.launch import PID_TAG, STATE_FILE
from mapreduce.wire.messages import JobInfo, JobState, WatchJob

WAIT = 120  # generous bound on any one job or process exit
PORT = 5555  # each virtual host has its own ports: workers connect here, clients to PORT + 1
# ssh runs it with the login's PATH, where `mapreduce` is not: this environment's Python.
WORKER_COMMAND = f"{shlex.quote(sys.executable)} -P -m mapreduce worker"
ARGS = ["--reduce", "3", "--split-size", "300000"]  # submit's --split-size is a plain number of bytes
# The client's environment names no key folder, key or state folder of this machine's user.
CLEAN_ENV = {
    k: v for k, v in os.environ.items() if k not in ("MAPREDUCE_KEY_DIR", "MAPREDUCE_KEY_NAME", "MAPREDUCE_STATE_DIR")
}


def run(argv: list[str], timeout: float = WAIT) -> subprocess.CompletedProcess:
    return subprocess.run(
        argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout, env=CLEAN_ENV
    )


def start(argv: list[str], processes: list[subprocess.Popen]) -> subprocess.Popen:
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=CLEAN_ENV
    )
    processes.append(process)
    return process


def keygen(folder: Path, *names: str) -> None:
    made = run(mapreduce_command("keygen", str(folder), *names))
    assert made.returncode == 0, made.stderr


def key_files(keys: Path, folder: Path, *names: str) -> Path:
    """A key folder for one host: the given files of the cluster's key folder, and no others."""
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(keys / name, folder / name)
    return folder


def wait_until(condition, what: str, timeout: float = WAIT, interval: float = 0.05):
    """Poll ``condition()`` until it returns something true (which is returned)."""
    deadline = time.monotonic() + timeout
    while True:
        if value := condition():
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_for_service(service: subprocess.Popen, state: Path) -> None:
    def listening() -> bool:
        assert service.poll() is None, f"the service exited ({service.returncode}): {service.stderr.read()}"
        return (state / "control").exists()

    wait_until(listening, "the service to listen", timeout=60)


def watch(state: Path, job_id: str, service: subprocess.Popen, until=lambda info: info.state.over) -> JobInfo:
    """Ask the service (through its private socket) about the job until ``until(info)`` holds."""
    with ClusterClient(state_dir=state) as client:

        def there() -> JobInfo | None:
            assert service.poll() is None, f"the service exited ({service.returncode}): {service.stderr.read()}"
            info = client.ask(WatchJob(job_id))
            return info if until(info) else None

        return wait_until(there, f"{job_id} to get there", interval=0.02)


def joined_names(log: list[dict]) -> dict[int, str]:
    """Worker id -> name, of every worker that joined."""
    return {e["worker"]: e["name"] for e in of(log, "worker_joined")}


# ---- a client on one virtual host, the service on another, workers on two more ---------


REASON = vnet.available()


@pytest.fixture
def net():
    folder = Path("/tmp") / f"mapreduce-vnet-test-{os.getpid()}-{time.monotonic_ns()}"
    with vnet.VirtualNetwork(4, scratch_root=folder) as network:
        yield network


@pytest.mark.skipif(REASON is not None, reason=f"no virtual network here: {REASON}")
def test_a_client_on_another_host_needs_an_admitted_key_and_its_job_is_exact(net, corpus, oracle, tmp_path):
    """alice's submission from h4 runs on the workers of h2 and h3, byte for byte seq's output;
    the same submission without a key is refused at once (exit 2), and mallory, admitted a
    moment before, gets no answer once her public key is deleted from the cluster's clients/."""
    expected = oracle("wordcount", corpus, *ARGS)
    cluster, client, *workers = net.hosts[0], net.hosts[3], *net.hosts[1:3]
    keys, state, out = tmp_path / "keys", tmp_path / "state", tmp_path / "out"
    keygen(keys, *(f"--worker={h.name}" for h in workers), "--client=alice", "--client=mallory")
    hide = [tmp_path, Path(corpus[0]).parent]  # the cluster's keys, state, output; the inputs
    endpoint = f"tcp://{cluster.address}:{PORT}"
    processes: list[subprocess.Popen] = []
    try:
        service = start(
            net.command(
                cluster,
                mapreduce_command(
                    "cluster", "start", "--bind", endpoint, "--key-dir", str(keys), "--state-dir", str(state),
                    "--workers", "0", *FAST,
                ),
            ),
            processes,
        )  # fmt: skip
        for host in workers:
            own = key_files(
                keys, host.scratch / "keys", "coordinator.key", *(f"workers/{h.name}.key" for h in workers),
                f"workers/{host.name}.key_secret",
            )  # fmt: skip
            start(
                net.command(
                    host,
                    mapreduce_command(
                        "worker", "--connect", endpoint, "--stay", "--key-dir", str(own), "--name", host.name,
                        "--scratch", str(host.scratch / "scratch"), *FAST,
                    ),
                    hide=hide,
                ),
                processes,
            )  # fmt: skip
        client_keys = key_files(
            keys, client.scratch / "keys", "coordinator.key", "clients/alice.key_secret", "clients/mallory.key_secret"
        )
        wait_for_service(service, state)

        def from_client(*args: str, key: str | None, timeout: str = "10") -> subprocess.CompletedProcess:
            who = ["--key-dir", str(client_keys), "--key-name", key] if key else []
            command = mapreduce_command(*args, "--cluster", endpoint, *who, "--timeout", timeout)
            return run(net.command(client, command, hide=hide))

        def submit(output: Path, key: str | None, timeout: str = "10") -> subprocess.CompletedProcess:
            return from_client("submit", "wordcount", *corpus, "--output", str(output), *ARGS, key=key, timeout=timeout)

        ok = submit(out, "alice")
        assert ok.returncode == 0, ok.stderr
        assert "job-00001 succeeded" in ok.stderr.splitlines()[-1], ok.stderr
        assert_same_output(expected, out)
        log = event_log(state / "jobs" / "job-00001" / "events.jsonl")
        names = joined_names(log)
        assert names and set(names.values()) <= {h.name for h in workers}, names
        assert {names[e["worker"]] for e in of(log, "task_finished")} <= {h.name for h in workers}
        (done,) = of(log, "job_finished")
        assert done["ok"] and done["input_fetched"] > 0 and done["output_pulled"] > 0  # the hosts saw no file

        no_key = submit(tmp_path / "out-no-key", None)
        assert no_key.returncode == 2 and "needs a client key" in no_key.stderr, no_key.stderr

        admitted = from_client("jobs", key="mallory")
        assert admitted.returncode == 0, admitted.stderr
        assert [line.split()[:2] for line in admitted.stdout.splitlines()[1:]] == [["job-00001", "succeeded"]]
        (keys / "clients" / "mallory.key").unlink()  # revoked, on the cluster's host only
        started = time.monotonic()
        revoked = submit(tmp_path / "out-revoked", "mallory", timeout="2")
        assert revoked.returncode == 2 and "no answer" in revoked.stderr, revoked.stderr
        assert time.monotonic() - started < 60

        assert not (tmp_path / "out-no-key").exists() and not (tmp_path / "out-revoked").exists()
        listing = from_client("jobs", key="alice")  # alice is still admitted; nothing of mallory's was queued
        assert listing.returncode == 0, listing.stderr
        assert [line.split()[:2] for line in listing.stdout.splitlines()[1:]] == [["job-00001", "succeeded"]]
        assert service.poll() is None

        stop = from_client("cluster", "stop", key="alice")
        assert stop.returncode == 0, stop.stderr
        assert service.wait(timeout=WAIT) == 0, service.stderr.read()
        for worker in processes[1:]:
            assert worker.wait(timeout=WAIT) == 0, worker.stderr.read()
    finally:
        kill_all(processes)


# ---- launch-workers over sshd: workers that stay, two jobs, then cluster stop ------------


def free_port_pair(address: str) -> int:
    """A port that is free on the address, and the next one too (the clients' port)."""
    for _ in range(100):
        with socket.socket() as first:
            first.bind((address, 0))
            port = first.getsockname()[1]
            if port >= 65535:
                continue
            with socket.socket() as second:
                try:
                    second.bind((address, port + 1))
                except OSError:
                    continue
        return port
    raise AssertionError(f"no two free ports in a row on {address}")


def test_launched_workers_that_stay_serve_two_jobs_and_leave_when_the_cluster_stops(
    ssh_hosts, corpus, oracle, tmp_path
):
    """`launch-workers --worker-arg=--stay` starts one worker per host through sshd (each with its
    own key pair, chosen by {host}). Two gated jobs, one after the other, are each held open
    until all three hosts' workers have joined: both are exact. `cluster stop` then makes the
    service exit 0, every worker exit 0, and launch-workers exit 0 with nothing left on the hosts."""
    net = ssh_hosts.net
    hosts = ssh_hosts.accepting
    names = {f"{h.address}-1" for h in hosts}  # launch-workers names each worker HOST-1
    files = ssh_hosts.private / "cluster"  # inputs and outputs: the hosts see none of them
    (files / "inputs").mkdir(parents=True)
    inputs = [shutil.copy(source, files / "inputs") for source in corpus]
    inputs.append(words_file(files / "inputs", "gated.txt", words=400))  # gate.py holds this one's map
    app = str(APPS / "gate.py")
    expected = oracle(app, inputs, *ARGS)
    keys = net.scratch_root / "cluster-keys"  # seen by every host
    keygen(keys, *(f"--worker={h.address}" for h in hosts))
    state, logs = tmp_path / "state", tmp_path / "logs"
    endpoint = f"tcp://{net.bridge_ip}:{free_port_pair(net.bridge_ip)}"
    (tmp_path / "hosts").write_text("".join(f"{h.address}\n" for h in hosts))
    scratch = net.scratch_root / "workers"
    processes: list[subprocess.Popen] = []
    try:
        service = start(
            mapreduce_command(
                "cluster", "start", "--bind", endpoint, "--key-dir", str(keys), "--state-dir", str(state),
                "--workers", "0", *FAST,
            ),
            processes,
        )  # fmt: skip
        wait_for_service(service, state)
        launcher = subprocess.Popen(
            mapreduce_command(
                "launch-workers", str(tmp_path / "hosts"), endpoint, "--rsh", ssh_hosts.rsh,
                "--worker-command", WORKER_COMMAND, "--worker-arg=--stay", "--worker-arg=--key-dir",
                f"--worker-arg={keys}", "--worker-arg=--key-name", "--worker-arg={host}", "--worker-arg=--scratch",
                f"--worker-arg={scratch}/{{host}}", "--worker-arg=--heartbeat-interval", "--worker-arg=0.3",
                "--logs", str(logs), "--settle", "0.3", "--foreground",
            ),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        processes.append(launcher)

        infos = []
        for n in (1, 2):
            gate = net.scratch_root / f"gate-{n}"  # the workers look for it: on a path every host sees
            submitted = run(
                mapreduce_command(
                    "submit", "--detach", "--state-dir", str(state), app, *inputs, "--output", str(files / f"out{n}"),
                    *ARGS, "--param", f"gate={gate}",
                )
            )  # fmt: skip
            assert submitted.returncode == 0, submitted.stderr
            job_id = submitted.stdout.strip()
            assert job_id == f"job-{n:05d}"
            info = watch(state, job_id, service, until=lambda info: info.state is not JobState.QUEUED)
            assert info.events == str(state / "jobs" / job_id / "events.jsonl")

            def all_joined(events=Path(info.events)) -> bool:
                assert launcher.poll() is None, f"launch-workers exited: {launcher.communicate()[1]}"
                return set(joined_names(event_log(events)).values()) == names

            wait_until(all_joined, f"the three hosts' workers to join {job_id}")
            gate.write_text("")
            infos.append(watch(state, job_id, service))
        for n, info in enumerate(infos, 1):
            assert info.state is JobState.SUCCEEDED, info
            assert_same_output(expected, files / f"out{n}")
            log = event_log(Path(info.events))
            workers = joined_names(log)
            assert set(workers.values()) == names, workers
            assert {workers[e["worker"]] for e in of(log, "task_finished")} <= names
            (done,) = of(log, "job_finished")
            assert done["ok"] and done["input_fetched"] > 0 and done["output_pulled"] > 0
        assert infos[0].finished <= infos[1].started

        stop = run(mapreduce_command("cluster", "stop", "--state-dir", str(state)))
        assert stop.returncode == 0, stop.stderr
        assert service.wait(timeout=WAIT) == 0, service.stderr.read()
        _, err = launcher.communicate(timeout=WAIT)
        assert launcher.returncode == 0, err
        assert "started 3 of 3 worker(s) on 3 host(s)" in err
        for name in names:
            assert f"{name} exited with status 0" in err, err
        assert not (logs / STATE_FILE).exists()

        launched = {}  # the pid each worker's log names: the process launch-workers started
        for log_file in logs.glob("*.log"):
            first = log_file.read_text(errors="replace").splitlines()[0]
            assert first.startswith(f"{PID_TAG} "), f"{log_file}: {first!r}"
            launched[log_file.stem] = int(first.split()[1])
        assert set(launched) == names
        assert all(gone(pid, within=60) for pid in launched.values())
        servers = {server.pid for server in ssh_hosts.servers.values()}
        for host in hosts:  # nothing but its sshd runs on any host: no worker, no job's process, no login
            wait_until(lambda host=host: set(net.pids(host)) <= servers, f"{host.name} to be left with its sshd")
    finally:
        kill_all(processes)
