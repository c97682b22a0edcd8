"""launch-workers over real OpenSSH: one sshd per virtual host, key-based logins.

The coordinator runs on this machine at the bridge address of the virtual network
(tests/hosts/conftest.py builds it); launch-workers logs into the hosts with ssh and
starts `mapreduce worker` there. The workers see neither the inputs nor the output
folder (both under the hosts' hidden folder), so everything crosses the network.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from helpers import (
    SLEEPY,
    assert_same_output,
    coordinator_args,
    event_log,
    gone,
    mapreduce_command,
    of,
    wait_for_log,
    words_file,
)
from mapreduce.net import security
from mapreduce.tools.launch import PID_TAG, STATE_FILE

FAST = ["--heartbeat-interval", "0.3"]
# ssh runs it with the login's PATH, where `mapreduce` is not: this environment's Python.
WORKER_COMMAND = f"{shlex.quote(sys.executable)} -P -m mapreduce worker"


def free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


class Cluster:
    """A coordinator at the bridge address, and launch-workers pointed at the sshd hosts."""

    def __init__(self, ssh_hosts, name: str, tmp_path: Path):
        self.ssh = ssh_hosts
        net = ssh_hosts.net
        self.files = ssh_hosts.private / name  # the hosts see an empty folder here
        self.files.mkdir()
        self.out, self.events = self.files / "out", self.files / "events.jsonl"
        self.endpoint = f"tcp://{net.bridge_ip}:{free_port(net.bridge_ip)}"
        self.keys = net.scratch_root / "keys"  # seen by every host
        if not self.keys.exists():
            security.generate(self.keys)
        self.logs = tmp_path / "logs"
        self.hosts_file = tmp_path / "hosts"
        self.coordinator: subprocess.Popen | None = None
        self.processes: list[subprocess.Popen] = []

    def inputs(self, sources: list[str]) -> list[str]:
        """Copies of the files, where only the coordinator sees them."""
        folder = self.files / "inputs"
        folder.mkdir(exist_ok=True)
        return [shutil.copy(source, folder) for source in sources]

    def start_coordinator(self, app: str, inputs: list[str], *args: str) -> None:
        command = mapreduce_command(
            *coordinator_args(app, inputs, self.out, self.endpoint, self.events),
            "--key-dir",
            str(self.keys),
            *FAST,
            "--worker-timeout",
            "5",
            *args,
        )
        self.coordinator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.processes.append(self.coordinator)

    def launch_command(self, *hosts, extra: tuple[str, ...] = ()) -> list[str]:
        """`mapreduce launch-workers` for one worker on each host, through ssh."""
        self.hosts_file.write_text("".join(f"{h.address}\n" for h in hosts))
        scratch = self.ssh.net.scratch_root / "workers"
        return mapreduce_command(
            "launch-workers",
            str(self.hosts_file),
            self.endpoint,
            "--rsh",
            self.ssh.rsh,
            "--worker-command",
            WORKER_COMMAND,
            "--worker-arg=--key-dir",
            f"--worker-arg={self.keys}",
            "--worker-arg=--scratch",
            f"--worker-arg={scratch}/{{host}}",
            "--worker-arg=--heartbeat-interval",
            "--worker-arg=0.3",
            "--logs",
            str(self.logs),
            "--settle",
            "0.3",
            *extra,
        )

    def launch(self, *hosts, extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
        return subprocess.run(self.launch_command(*hosts, extra=extra), capture_output=True, text=True, timeout=60)

    def launch_foreground(self, *hosts) -> subprocess.Popen:
        process = subprocess.Popen(
            self.launch_command(*hosts, extra=("--foreground",)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.processes.append(process)
        return process

    def launcher(self, *args: str) -> subprocess.CompletedProcess:
        """launch-workers --stop / --status on the launch recorded in the logs folder."""
        return subprocess.run(
            mapreduce_command("launch-workers", *args, "--logs", str(self.logs)),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def wait_for(self, predicate, what: str, timeout: float = 60) -> list[dict]:
        return wait_for_log(self.events, predicate, what, self.coordinator, self.coordinator.stderr.read, timeout)

    def finish(self, timeout: float = 60) -> list[dict]:
        code = self.coordinator.wait(timeout=timeout)
        assert code == 0, self.coordinator.stderr.read()
        return event_log(self.events)

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.wait()


def wait_until(condition, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def names(hosts) -> set[str]:
    return {f"{host.address}-1" for host in hosts}


def joined(log: list[dict]) -> dict[int, str]:
    """Worker id -> name, of every worker that joined."""
    return {e["worker"]: e["name"] for e in of(log, "worker_joined")}


def remote_pids(logs: Path) -> dict[str, int]:
    """The pid each worker's log names (its first line), by worker name."""
    pids = {}
    for log in logs.glob("*.log"):
        first = log.read_text(errors="replace").splitlines()[0]
        assert first.startswith(f"{PID_TAG} "), f"{log}: {first!r}"
        pids[log.stem] = int(first.split()[1])
    return pids


def test_launch_workers_over_ssh_to_three_hosts_runs_a_job_to_the_end(ssh_hosts, corpus, oracle, tmp_path):
    """Three workers started through sshd, one per host, run the whole job; its output is
    seq's byte for byte, and every worker exits 0 (ssh hands back its exit status)."""
    args = ["--reduce", "3", "--split-size", "300k"]
    expected = oracle("wordcount", corpus, *args)
    cluster = Cluster(ssh_hosts, "job", tmp_path)
    try:
        cluster.start_coordinator("wordcount", cluster.inputs(corpus), *args, "--min-workers", "3")
        launcher = cluster.launch_foreground(*ssh_hosts.accepting)
        log = cluster.finish()
        _, err = launcher.communicate(timeout=30)
    finally:
        cluster.stop_all()
    assert launcher.returncode == 0, err
    assert "started 3 of 3 worker(s) on 3 host(s)" in err
    for name in names(ssh_hosts.accepting):  # (a worker whose job ended within the launcher's settle time
        # is reported as already finished: the same exit status)
        assert f"{name} exited with status 0" in err or f"{name} already finished (exit status 0)" in err, err
    assert not (cluster.logs / STATE_FILE).exists()
    assert_same_output(expected, cluster.out)

    pids = remote_pids(cluster.logs)  # what the launcher recorded is what joined
    assert {(e["name"], e["pid"]) for e in of(log, "worker_joined")} == set(pids.items())
    assert all(gone(pid) for pid in pids.values())
    finished = of(log, "task_finished")
    assert {joined(log)[e["worker"]] for e in finished} == names(ssh_hosts.accepting)  # every host took part
    (done,) = of(log, "job_finished")
    assert done["input_fetched"] > 0 and done["output_pulled"] > 0  # the hosts could not see the files


def test_launch_workers_over_ssh_then_stop_drains_them(ssh_hosts, tmp_path):
    """`launch-workers --stop` reaches each worker through sshd with SIGTERM: each one drains
    (finishes the map it runs, or hands back a reduce), says goodbye and exits, failing nothing."""
    sources = [words_file(tmp_path, f"in{i}.txt") for i in range(3)]  # a map for each worker
    cluster = Cluster(ssh_hosts, "drain", tmp_path)
    try:
        cluster.start_coordinator(
            SLEEPY, cluster.inputs(sources), "--reduce", "3", "--param", "map_seconds=2", "--min-workers", "3",
            "--no-speculation",
        )  # fmt: skip
        result = cluster.launch(*ssh_hosts.accepting)
        assert result.returncode == 0, result.stderr
        assert "started 3 of 3 worker(s) on 3 host(s)" in result.stderr
        log = cluster.wait_for(
            lambda log: len({e["worker"] for e in of(log, "task_assigned", phase="map")}) == 3, "a map on every worker"
        )
        workers = joined(log)

        stop = cluster.launcher("--stop")
        assert stop.returncode == 0, stop.stderr
        assert "sent SIGTERM to 3 worker(s)" in stop.stderr and "all workers stopped" in stop.stderr
        assert not (cluster.logs / STATE_FILE).exists()
        pids = remote_pids(cluster.logs)
        assert set(pids.items()) == {(e["name"], e["pid"]) for e in of(log, "worker_joined")}
        assert all(gone(pid) for pid in pids.values())
        log = cluster.wait_for(lambda log: len(of(log, "worker_left")) == 3, "three goodbyes")
    finally:
        cluster.stop_all()
    assert {e["worker"] for e in of(log, "worker_draining")} == set(workers)
    assert {e["worker"] for e in of(log, "worker_left")} == set(workers)
    ended = {e["attempt"] for e in of(log, "task_finished") + of(log, "task_cancelled")}
    for draining in of(log, "worker_draining"):
        assert draining.get("attempt") in ended | {None}, f"{workers[draining['worker']]} left its attempt behind"
    for name in pids:  # ssh carries the worker's last words home a moment after it exits
        path = cluster.logs / f"{name}.log"
        wait_until(lambda path=path: path.read_text().endswith("drained: leaving\n"), f"{name}'s log to end")
    assert not of(log, "task_failed") and not of(log, "task_lost") and not of(log, "worker_dead")


def test_a_host_whose_sshd_refuses_the_key_is_reported(ssh_hosts, tmp_path):
    """The fourth host's sshd authorizes another key: ssh fails there, and launch-workers says
    which host and why (ssh's own last line), at once, with no worker recorded."""
    refusing = ssh_hosts.refusing
    accepting = ssh_hosts.accepting[0]
    login = ssh_hosts.run(accepting, 'echo "$SSH_CONNECTION"')  # the same key, another host: welcome
    assert login.returncode == 0, login.stderr
    client, _, server, port = login.stdout.split()
    assert (client, server, port) == (ssh_hosts.net.bridge_ip, accepting.address, "22")

    cluster = Cluster(ssh_hosts, "refused", tmp_path)
    started = time.monotonic()
    result = cluster.launch(refusing, extra=("--timeout", "20"))
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert re.search(
        rf"^failed: {re.escape(refusing.address)}-1: ssh exited with status 255 before the worker started "
        rf"\(root@{re.escape(refusing.address)}: Permission denied \(publickey\)\.\)$",
        result.stderr,
        re.M,
    ), result.stderr
    assert "started 0 of 1 worker(s) on 0 host(s)" in result.stderr
    assert json.loads((cluster.logs / STATE_FILE).read_text())["workers"] == []
    assert ssh_hosts.run(refusing, "true").returncode == 255
