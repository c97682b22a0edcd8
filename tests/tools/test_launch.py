"""The worker launcher: hosts files, and starting, listing and stopping workers through a
remote shell (a stand-in for ssh that runs the command string on this machine)."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner

from mapreduce.tools.launch import PID_TAG, STATE_FILE, LaunchError, launch, parse_hosts

TESTS = Path(__file__).parents[1]
RSH = f"sh {shlex.quote(str(TESTS / 'fake_rsh.sh'))}"
COORDINATOR = "tcp://127.0.0.1:5999"

# Stands in for `mapreduce worker`: says how it was called, and drains (exits 0) on SIGTERM.
_WORKER = """
import signal, sys
def drain(signum, frame):
    print("draining", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, {handler})
print("worker", *sys.argv[1:], flush=True)
while True:
    signal.pause()
"""
WORKER = f"{shlex.quote(sys.executable)} -c {shlex.quote(_WORKER.format(handler='drain'))}"
STUBBORN = f"{shlex.quote(sys.executable)} -c {shlex.quote(_WORKER.format(handler='signal.SIG_IGN'))}"


def alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return not re.search(r"^State:\s*Z", status, re.M)


def wait_for(condition, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def launcher(*args: str) -> SimpleNamespace:
    """The launcher, run in this process (quicker than a process of its own)."""
    result = CliRunner().invoke(launch, list(args), catch_exceptions=False)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def launcher_process(*args: str) -> subprocess.CompletedProcess:
    """The launcher in a process of its own, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "mapreduce.tools.launch", *args], capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def logs(tmp_path):
    """A logs folder; whatever workers it records are killed at the end, whatever the test did."""
    folder = tmp_path / "logs"
    yield folder
    for log in folder.glob("*.log"):
        for match in re.finditer(rf"^{PID_TAG} (\d+)$", log.read_text(errors="replace"), re.M):
            try:
                os.kill(int(match.group(1)), signal.SIGKILL)
            except ProcessLookupError:
                pass


def hosts_file(tmp_path, text: str) -> str:
    path = tmp_path / "hosts"
    path.write_text(text)
    return str(path)


def state(logs: Path) -> dict:
    return json.loads((logs / STATE_FILE).read_text())


# -- hosts files -------------------------------------------------------------------------------


def test_hosts_file_lines():
    text = "# the cluster\n\nnode1 4\n  node2   # one worker\n10.0.0.7 2 # two\n"
    assert [(h.host, h.count, h.line) for h in parse_hosts(text)] == [
        ("node1", 4, 3),
        ("node2", 1, 4),
        ("10.0.0.7", 2, 5),
    ]


@pytest.mark.parametrize(
    "text, message",
    [
        ("node1\nnode2 3 4\n", "line 2: expected `host [count]`"),
        ("node1 0\n", "line 1: count '0'"),
        ("\nnode1 two\n", "line 2: count 'two'"),
        ("node1 -2\n", "line 1: count '-2'"),
        ("node1\n# again\nnode1 2\n", "line 3: host 'node1' is already on line 1"),
        ("-oProxyCommand=x\n", "line 1: host '-oProxyCommand=x' may not start with '-'"),
        ("# nothing\n\n", "lists no hosts"),
    ],
)
def test_bad_hosts_file_lines(text, message):
    with pytest.raises(LaunchError, match=re.escape(message)):
        parse_hosts(text)


def test_bad_hosts_file_exits_2(tmp_path):
    result = CliRunner().invoke(launch, [hosts_file(tmp_path, "a\nb c d\n"), COORDINATOR])
    assert result.exit_code == 2
    assert "line 2" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "give HOSTS_FILE and COORDINATOR"),
        (["--stop", "--status"], "do not go together"),
        (["hosts", "--stop"], "takes no HOSTS_FILE"),
        (["--status"], "no launch recorded"),
        (["/no/such/hosts", COORDINATOR], "cannot read hosts file"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    result = CliRunner().invoke(launch, [*args, "--logs", str(tmp_path / "logs")])
    assert result.exit_code == 2, result.output
    assert message in result.output


# -- launching and stopping ---------------------------------------------------------------------


def test_launch_status_stop(tmp_path, logs):
    hosts = hosts_file(tmp_path, "alpha 2\nbeta\n")
    result = launcher_process(
        hosts,
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        WORKER,
        "--logs",
        str(logs),
        "--worker-arg",
        "--scratch=/tmp/{host}/{index}",
        "--settle",
        "0.2",
    )
    assert result.returncode == 0, result.stderr
    assert "started 3 of 3 worker(s) on 2 host(s)" in result.stderr

    workers = state(logs)["workers"]
    assert [w["name"] for w in workers] == ["alpha-1", "alpha-2", "beta-1"]
    for w in workers:
        log = logs / f"{w['name']}.log"
        assert w["log"] == str(log)
        wait_for(lambda log=log: "worker" in log.read_text(), what=f"{log} to show the worker")
        lines = log.read_text().splitlines()
        assert lines[0] == f"{PID_TAG} {w['remote_pid']}"
        host, index = w["name"].rsplit("-", 1)
        assert lines[1] == f"worker --connect {COORDINATOR} --name {w['name']} --scratch=/tmp/{host}/{index}"
        assert alive(w["remote_pid"])

    status = launcher("--status", "--logs", str(logs))
    assert status.returncode == 0, status.stderr
    assert status.stdout.count(" alive ") == 3

    again = launcher(hosts, COORDINATOR, "--rsh", RSH, "--worker-command", WORKER, "--logs", str(logs))
    assert again.returncode == 2 and "may still run" in again.stderr

    stop = launcher_process("--stop", "--logs", str(logs))  # the rsh comes from the state file
    assert stop.returncode == 0, stop.stderr
    assert "all workers stopped" in stop.stderr
    for w in workers:
        assert not alive(w["remote_pid"])
        assert (logs / f"{w['name']}.log").read_text().splitlines()[-1] == "draining"
    assert not (logs / STATE_FILE).exists()
    assert launcher("--status", "--logs", str(logs)).returncode == 2


def test_status_tells_gone_workers(tmp_path, logs):
    result = launcher(
        hosts_file(tmp_path, "a 2\n"),
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        WORKER,
        "--logs",
        str(logs),
        "--settle",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    first = state(logs)["workers"][0]["remote_pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: not alive(first), what="the worker to die")
    status = launcher("--status", "--logs", str(logs))
    assert status.returncode == 1
    assert re.search(r"^a-1 +gone", status.stdout, re.M) and re.search(r"^a-2 +alive", status.stdout, re.M)
    assert launcher("--stop", "--logs", str(logs)).returncode == 0


def test_a_reused_pid_is_never_signalled(tmp_path, logs):
    result = launcher(
        hosts_file(tmp_path, "a\n"),
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        WORKER,
        "--logs",
        str(logs),
        "--settle",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    bystander = subprocess.Popen(["sleep", "60"])
    try:
        recorded = state(logs)
        recorded["workers"][0]["remote_pid"] = bystander.pid  # as if the worker died and its pid was reused
        (logs / STATE_FILE).write_text(json.dumps(recorded))
        assert re.search(r"^a-1 +gone", launcher("--status", "--logs", str(logs)).stdout, re.M)
        assert launcher("--stop", "--logs", str(logs)).returncode == 0
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait()


def test_failed_starts_are_reported(tmp_path, logs):
    hosts = hosts_file(tmp_path, "ok\nunreachable\nsilent\n")
    started = time.monotonic()
    result = launcher(
        hosts,
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        WORKER,
        "--logs",
        str(logs),
        "--timeout",
        "1",
        "--settle",
        "0.1",
    )
    assert time.monotonic() - started < 15
    assert result.returncode == 1
    assert (
        "unreachable-1: sh exited with status 255 before the worker started (ssh: connect to host unreachable"
        in result.stderr
    )
    assert "silent-1: no word from silent within 1 s" in result.stderr
    assert "started 1 of 3 worker(s)" in result.stderr
    assert [w["name"] for w in state(logs)["workers"]] == ["ok-1"]
    assert launcher("--stop", "--logs", str(logs), "--rsh", RSH).returncode == 0


def test_worker_that_cannot_run_is_reported(tmp_path, logs):
    result = launcher(
        hosts_file(tmp_path, "a\n"),
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        "no-such-program-here worker",
        "--logs",
        str(logs),
    )
    assert result.returncode == 1
    assert "a-1: exited with status 127 right after starting" in result.stderr
    assert "not found" in result.stderr


def test_worker_that_finishes_at_once_is_no_failure(tmp_path, logs):
    result = launcher(
        hosts_file(tmp_path, "a\n"), COORDINATOR, "--rsh", RSH, "--worker-command", "true", "--logs", str(logs)
    )
    assert result.returncode == 0, result.stderr
    assert "a-1 already finished (exit status 0)" in result.stderr


def test_stop_kills_workers_that_ignore_sigterm(tmp_path, logs):
    result = launcher(
        hosts_file(tmp_path, "a 2\n"),
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        STUBBORN,
        "--logs",
        str(logs),
        "--settle",
        "0.1",
    )
    assert result.returncode == 0, result.stderr
    pids = [w["remote_pid"] for w in state(logs)["workers"]]
    stop = launcher("--stop", "--logs", str(logs), "--grace", "0.5")
    assert stop.returncode == 0, stop.stderr
    assert "SIGKILL" in stop.stderr
    assert not any(alive(pid) for pid in pids)


def test_foreground_stops_workers_on_sigterm(tmp_path, logs):
    command = [
        sys.executable,
        "-m",
        "mapreduce.tools.launch",
        hosts_file(tmp_path, "a 2\n"),
        COORDINATOR,
        "--rsh",
        RSH,
        "--worker-command",
        WORKER,
        "--logs",
        str(logs),
        "--settle",
        "0.1",
        "--foreground",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (logs / STATE_FILE).exists(), what="the state file")
        pids = [w["remote_pid"] for w in state(logs)["workers"]]
        wait_for(lambda: all("worker" in (logs / f"a-{i}.log").read_text() for i in (1, 2)), what="both workers")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopping 2 worker(s)" in err and "all workers stopped" in err
    assert not any(alive(pid) for pid in pids)
    assert all((logs / f"a-{i}.log").read_text().splitlines()[-1] == "draining" for i in (1, 2))


def test_wrapper_script_runs_the_launcher():
    script = TESTS.parent / "scripts" / "launch-workers"
    venv = sys.prefix  # the environment running these tests
    result = subprocess.run(
        [str(script), "--help"], capture_output=True, text=True, timeout=60, env={**os.environ, "MAPREDUCE_VENV": venv}
    )
    assert result.returncode == 0, result.stderr
    assert "HOSTS_FILE" in result.stdout and "--worker-command" in result.stdout
