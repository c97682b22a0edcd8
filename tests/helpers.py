"""Helpers shared by the tests: running the CLI and clusters, reading event logs,
comparing outputs, and driving the scheduler by hand. Fixtures live in conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TypeVar

import pytest

from mapreduce.coordinator.scheduler import Commit, Scheduler, Send, Settings
from mapreduce.inputs import Split
from mapreduce.output import attempt_temp_name
from mapreduce.shuffle import iter_run
from mapreduce.tools import clustercrash
from mapreduce.tools.crashtest import COLUMNS
from mapreduce.wire import messages as p
from mapreduce.wire.events import Event, parse, read_records, to_record

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
CRASH = str(APPS / "crash.py")  # word count that kills, hangs or slows its worker on purpose
GUTENBERG = Path(os.environ.get("MAPREDUCE_GUTENBERG", TESTS.parent.parent / "shared" / "data" / "gutenberg"))


# ---- processes and the command line ----------------------------------------


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def mapreduce_command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "mapreduce", *args]


def run_cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the mapreduce command in a process of its own, as a user would."""
    result = subprocess.run(mapreduce_command(*args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"mapreduce {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def gone(pid: int, within: float = 10.0) -> bool:
    """Whether the process exits within the time (polled; a zombie is gone but for its parent's wait)."""
    return clustercrash.gone(pid, within)


def crashtest_table(stdout: str) -> dict[str, dict[str, str]]:
    """`mapreduce crashtest`'s table by round label ("base", "1", ..., "all")."""
    lines = stdout.splitlines()
    assert lines[0].split() == list(COLUMNS), stdout
    rows = [
        dict(zip(COLUMNS, line.split(maxsplit=len(COLUMNS) - 1)))
        for line in lines[1:]
        if line.split()[0] in ("base", "all") or line.split()[0].isdigit()
    ]
    return {row["round"]: row for row in rows}


def _unshare_unavailable() -> str | None:
    """Why a worker cannot be put in a mount namespace of its own here (another "host"), or None."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
        return "cannot make a mount namespace here (needs root)"
    return None


_NO_UNSHARE = _unshare_unavailable()
needs_unshare = pytest.mark.skipif(_NO_UNSHARE is not None, reason=str(_NO_UNSHARE))


def event_log(path: Path) -> list[dict]:
    """A job's event log so far (empty before the coordinator writes it)."""
    return list(read_records(path)) if path.exists() else []


def of(log, kind, **fields) -> list[dict]:
    """The events of one kind whose fields have the given values."""
    return [e for e in log if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]


def wait_for_log(
    path: Path, predicate, what: str, coordinator: subprocess.Popen, coordinator_stderr, timeout: float = 60
) -> list[dict]:
    """Poll the event log until ``predicate(log)`` holds; fail at once if the coordinator exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = event_log(path)
        if predicate(log):
            return log
        if coordinator.poll() is not None:
            raise AssertionError(
                f"the coordinator exited ({coordinator.returncode}) while waiting for {what}:\n{coordinator_stderr()}"
            )
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def assert_same_output(expected: Path, actual: Path) -> None:
    """Byte-for-byte equality of two committed output folders."""
    names = sorted(os.listdir(expected))
    assert sorted(os.listdir(actual)) == names, f"{actual} holds {sorted(os.listdir(actual))}, expected {names}"
    assert "_SUCCESS" in names
    for name in names:
        a, b = (expected / name).read_bytes(), (actual / name).read_bytes()
        assert a == b, f"{name} differs ({len(a)} vs {len(b)} bytes)"


def job_fixture(job_class):
    """A ``make_job`` fixture: it starts jobs of ``job_class`` (tmp_path, app, inputs, *args)
    in the test's folder, and stops every one of them when the test ends."""

    @pytest.fixture
    def make_job(tmp_path):
        jobs = []

        def make(app, inputs, *args):
            jobs.append(job_class(tmp_path, app, inputs, *args))
            return jobs[-1]

        yield make
        for job in jobs:
            job.stop_all()

    return make_job


# ---- a coordinator and workers as separate processes -------------------------


SLEEPY = str(APPS / "sleepy.py")
FAST = ["--heartbeat-interval", "0.3"]  # both sides: quick detection keeps the suite short
TIMEOUT = ["--worker-timeout", "2"]


def words_file(folder: Path, name: str, words: int = 40) -> str:
    path = folder / name
    path.write_text(" ".join(f"w{(i * 7) % 23} {name[0]}x{i % 5}" for i in range(words)) + "\n")
    return str(path)


def coordinator_args(app: str, inputs: list[str], out: Path, endpoint: str, events: Path) -> list[str]:
    """``mapreduce coordinator`` arguments for a job with its output folder, address and event log."""
    return ["coordinator", app, *inputs, "--output", str(out), "--bind", endpoint, "--events", str(events)]


class Job:
    """A coordinator process, the workers started for it, and its event log."""

    def __init__(self, tmp_path: Path, app: str, inputs: list[str], *args: str):
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.events = tmp_path / "events.jsonl"
        self.endpoint = free_endpoint()
        self.processes: list[subprocess.Popen] = []
        self.coordinator = self._start(
            *coordinator_args(app, inputs, self.out, self.endpoint, self.events), *FAST, *TIMEOUT, *args
        )

    def _start(self, *args: str, env: dict | None = None, wrap: tuple[str, ...] = ()) -> subprocess.Popen:
        process = subprocess.Popen(
            [*wrap, *mapreduce_command(*args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        self.processes.append(process)
        return process

    def worker(
        self,
        scratch: str | None = None,
        env: dict | None = None,
        wrap: tuple[str, ...] = (),
        args: tuple[str, ...] = (),
    ) -> subprocess.Popen:
        """A worker process; ``wrap`` prefixes its command (e.g. ``unshare -m``: another "host")."""
        scratch = scratch or str(self.tmp / "scratch")
        return self._start(
            "worker",
            "--connect",
            self.endpoint,
            "--scratch",
            scratch,
            *FAST,
            "--coordinator-timeout",
            "30",
            *args,
            env=env,
            wrap=wrap,
        )

    def log(self) -> list[dict]:
        return event_log(self.events)

    def wait_for(self, predicate, what: str, timeout: float = 60) -> list[dict]:
        return wait_for_log(self.events, predicate, what, self.coordinator, self.coordinator.stderr.read, timeout)

    def pid(self, worker_id: int) -> int:
        return next(e["pid"] for e in self.log() if e["event"] == "worker_joined" and e["worker"] == worker_id)

    def finish(self, timeout: float = 120) -> list[dict]:
        code = self.coordinator.wait(timeout=timeout)
        assert code == 0, self.coordinator.stderr.read()
        return self.log()

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    process.send_signal(signal.SIGCONT)
                except ProcessLookupError:
                    pass
                process.kill()
            process.wait()


def running(log, phase: str) -> list[dict]:
    """Attempts of a phase assigned and not yet ended."""
    ended = {e["attempt"] for e in log if e["event"] in ("task_finished", "task_failed", "task_lost", "task_cancelled")}
    return [
        e
        for e in log
        if e["event"] in ("task_assigned", "backup_launched") and e["phase"] == phase and e["attempt"] not in ended
    ]


def assert_no_temp_files(out: Path) -> None:
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []


# ---- the scheduler, driven by hand ----------------------------------------


QUIET = 1_000_000.0  # a heartbeat interval / worker timeout that never fires


def make(
    n_maps: int = 1, n_reduce: int = 1, now: float = 0.0, job_id: str = "", app: str = "", out: str = "", **settings
) -> Scheduler:
    """A scheduler of ``n_maps`` 100-byte splits, each of its own file (``job_id``, ``app``
    and ``out``: the job's facts in its view)."""
    settings.setdefault("heartbeat_interval", QUIET)
    settings.setdefault("worker_timeout", QUIET)
    splits = [Split(f"in{i}.txt", f"/data/in{i}.txt", 100 * i, 100 * i + 100) for i in range(n_maps)]
    settings.setdefault("speculation", False)  # tests of backups turn it on
    s = Scheduler(splits, Settings(n_reduce=n_reduce, **settings), now, job_id, app=app, output=out)
    s.record = _schema_checked(s.record)
    return s


def _schema_checked(record):
    """``record``, checking first that the event survives the log's round trip: so every
    event a scheduler records in any test is checked against the schema."""

    def checked(event: Event) -> None:
        line = json.dumps(to_record(event, wall_offset=0.0))
        assert parse(json.loads(line)) == event, f"{event!r} was read back from {line} as {parse(json.loads(line))!r}"
        record(event)

    return checked


def commits(actions: list) -> list[tuple[int, str]]:
    """The (partition, temporary output) of each Commit action, or a marker for any other action."""
    return [(a.partition, a.temp) if isinstance(a, Commit) else type(a).__name__ for a in actions]


def hello(
    ident: bytes, host_id: str = "host-1", scratch: str = "/scratch/a", data_address: str | None = None
) -> p.Register:
    name = ident.decode()
    return p.Register(name, 4242, "box", host_id, data_address or f"tcp://{name}:9000", scratch)


def welcome(worker_id: int) -> p.Welcome:
    return p.Welcome(worker_id, "job", b"app", 1, 1, 1.0, "/out")


def join(s: Scheduler, ident: bytes, now: float = 0.0, **info) -> tuple[int, list]:
    actions = s.register(now, ident, hello(ident, **info), welcome)
    welcomes = [a for a in actions if isinstance(a, Send) and isinstance(a.message, p.Welcome)]
    assert len(welcomes) == 1 and welcomes[0].identity == ident
    return welcomes[0].message.worker, actions


def msgs(actions: list, ident: bytes | None = None, kind: type | None = None) -> list:
    return [
        a.message
        for a in actions
        if isinstance(a, Send)
        and (ident is None or a.identity == ident)
        and (kind is None or isinstance(a.message, kind))
    ]


def one(actions: list, ident: bytes, kind: type):
    found = msgs(actions, ident, kind)
    assert len(found) == 1, f"expected one {kind.__name__} to {ident!r} in {actions!r}"
    return found[0]


def kinds(s: Scheduler) -> list[type[Event]]:
    """The classes of the events the scheduler recorded (since the coordinator last took them)."""
    return [type(e) for e in s.events]


E = TypeVar("E", bound=Event)


def events(s: Scheduler, kind: type[E]) -> list[E]:
    """The recorded events of one class, typed."""
    return [e for e in s.events if isinstance(e, kind)]


def map_done(s, now, ident, wid, assign, lengths, records=3):
    return s.receive(
        now,
        ident,
        p.TaskDone(wid, assign.attempt, list(lengths), f"/scratch/{ident.decode()}/m{assign.attempt}", records),
    )


def report_unreadable(s, now, ident, wid, attempt, map_task=0):
    """The reduce attempt reports it cannot read map_task's current output."""
    loc = s._location(s.maps[map_task], 0)
    return s.receive(
        now, ident, p.FetchFailed(wid, attempt, map_task, loc.attempt, loc.data_address, "FetchError: gone")
    )


def reduce_done(s, now, ident, wid, assign):
    return s.receive(
        now, ident, p.TaskDone(wid, assign.attempt, [], attempt_temp_name(assign.task, s.job_id, assign.attempt), 7)
    )


def iter_run_file(path: str, offset: int, length: int):
    """The records of one run, read from its byte range of a file (as a reducer reads them)."""
    if length == 0:
        return
    with open(path, "rb") as f:
        yield from iter_run(f, offset, length)


def run_external(app: str, inputs: list[str], out: Path, *args: str, workers: int = 2, timeout: float = 120) -> None:
    """A job on a coordinator and ``workers`` worker processes started separately (as on
    several machines, here on loopback); fail with their stderr if it does not succeed."""
    serve_on_workers(["coordinator", app, *inputs, *args], out, workers, timeout)


def serve_on_workers(serve: list[str], out: Path, workers: int = 2, timeout: float = 120) -> None:
    """Run ``mapreduce SERVE... --output OUT --bind ENDPOINT`` (a coordinator, or a streaming job)
    with ``workers`` worker processes started separately; fail with their stderr if it fails."""
    endpoint = free_endpoint()
    scratch = out.parent / f"{out.name}-scratch"
    # Every worker joins before any work starts, so every one is told when the job is over
    # (a tiny job could end before a slow starter registers, which would then wait for nothing).
    command = mapreduce_command(*serve, "--output", str(out), "--bind", endpoint, "--min-workers", str(workers))
    coordinator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    started = [
        subprocess.Popen(
            mapreduce_command("worker", "--connect", endpoint, "--scratch", str(scratch)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(workers)
    ]
    try:
        code = coordinator.wait(timeout=timeout)
        assert code == 0, f"the coordinator exited {code}:\n{coordinator.stderr.read()}"
        for worker in started:
            assert worker.wait(timeout=30) == 0, worker.stderr.read()
    finally:
        kill_all([coordinator, *started])


def kill_all(processes: list[subprocess.Popen]) -> None:
    """Kill and reap whatever of ``processes`` still runs (a test's cleanup, pass or fail)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()
