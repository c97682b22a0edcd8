"""Crash testing the standing cluster's service: the ``queued`` rounds of
``mapreduce crashtest --kill-coordinator``.

A round starts a service (``mapreduce cluster start --bind ADDR --state-dir STATE``), submits
QUEUED_JOBS copies of the job (``mapreduce submit --detach``, each its own output folder), then
starts ``--workers`` workers apart that stay (``mapreduce worker --connect ADDR --stay``): the
first job runs, the others wait in the service's queue. The service is SIGKILLed
once a seeded random number of the first job's maps has finished (its fork server and the
job's coordinator die with it), then started again with the same command, maybe killed once
more (once a seeded number of tasks of any job has finished after the restart), until every
job is over; then ``cluster stop``.

A round passes when every job succeeded, each output equals the oracle's byte for byte,
``mapreduce jobs`` lists the submitted jobs and no other, and each job ran once (one event
log), but the job each kill interrupted, which runs again in its folder (``events-2.jsonl``...):
no more runs than the kills it was running through. The tasks run again after each restart are
counted from the interrupted job's journal at the kill and its next run's event log, as for a
single coordinator (a committed partition run again fails the round).

The pure parts (run numbers of event logs, the runs check) are functions of their inputs.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from mapreduce.tools.coordcrash import (
    MID_MAP,
    POLL,
    STARTUP_WAIT,
    WORKER_PATIENCE,
    CoordCrashOptions,
    JournalState,
    RoundFailed,
    RoundRun,
    Trigger,
    check_output,
    count_reruns,
    final_stage,
    kill,
    mapreduce_command,
    run_events,
)
from mapreduce.tools.crashtest import EventTail
from mapreduce.tools.faults import Fault, FaultKind
from mapreduce.wire.events import JobFinished

log = logging.getLogger(__name__)

QUEUED_JOBS = 3  # submitted at once: one runs, the rest wait in the queue through the kill
LISTING_POLL = 0.5  # seconds between `mapreduce jobs` while waiting for every job to be over
OVER = frozenset({"succeeded", "failed", "cancelled"})
_RUN_FILE = re.compile(r"^(events|coordinator)(?:-([1-9]\d*))?\.(?:jsonl|log)$")


def run_number(name: str, kind: str = "events") -> int | None:
    """The run of a job's coordinator a file of its folder belongs to (``kind``: events or
    coordinator): events.jsonl 1, events-2.jsonl 2, coordinator-3.log 3..."""
    m = _RUN_FILE.match(name)
    return None if m is None or m.group(1) != kind else int(m.group(2) or 1)


def event_logs(folder: Path) -> dict[int, Path]:
    """A job folder's event logs by run (a run killed before it opened its log has none)."""
    logs = {run_number(p.name): p for p in folder.glob("events*.jsonl")} if folder.is_dir() else {}
    return {n: logs[n] for n in sorted(n for n in logs if n is not None)}


def runs_started(folder: Path) -> int:
    """How many runs of its coordinator the service has started for a job: each has its log,
    made before the coordinator starts (coordinator.log, coordinator-2.log...)."""
    runs = [run_number(p.name, "coordinator") for p in folder.glob("coordinator*.log")] if folder.is_dir() else []
    return max((n for n in runs if n is not None), default=0)


def check_runs(submitted: Sequence[str], at_kills: Sequence[Mapping[str, int]], runs: Mapping[str, int]) -> str | None:
    """Whether each job ran as often as it may: once, and once more for each kill it was
    running through. ``at_kills``: the runs each job had started at each kill (the service
    runs one job at a time, the newest started, so only that one can have been interrupted);
    ``runs``: the runs each job had at the end."""
    for job in submitted:
        interrupted = sum(1 for started in at_kills if started and max(started) == job)
        allowed = 1 + interrupted
        if runs.get(job, 0) < 1:
            return f"{job} never ran"
        if runs[job] > allowed:
            return f"{job} ran {runs[job]} times, at most {allowed} allowed (interrupted by {interrupted} kill(s))"
    return None


# ---- a round ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Interrupted:
    """A job's coordinator at a kill: its run then, and its journal as the kill left it."""

    job: str
    run: int
    state: JournalState


class QueuedRound:
    """One ``queued`` round (see the module's doc): fills ``r`` (kills, faults, restarts) or
    raises RoundFailed."""

    def __init__(self, options: CoordCrashOptions, inputs: Sequence[str], oracle: Path, r: RoundRun):
        self.options, self.inputs, self.oracle, self.r = options, inputs, oracle, r
        self.address = r.files.address("cluster")
        self.state = r.files.short("state", room=len("/control"))  # the service's socket for clients is in it
        self.jobs_dir = self.state / "jobs"
        self.submitted: list[str] = []
        self.at_kills: list[dict[str, int]] = []
        self.interrupted: list[Interrupted] = []
        self.listed: dict[str, str] = {}  # `mapreduce jobs` once every job was over

    def run(self) -> None:
        try:
            self._run()
        finally:
            self._keep_logs()

    def _run(self) -> None:
        plan, r = self.r.plan, self.r
        service = self._start_service(1)
        self._wait_for_control(service)
        self.submitted = [self._submit(n) for n in range(1, QUEUED_JOBS + 1)]
        self._start_workers()  # only now: the first job cannot end before the rest are queued
        if not self._first_kill_due(service, Trigger(MID_MAP, plan.draw)):
            raise RoundFailed("MISS", f"{self.submitted[0]} finished before its kill point")
        while True:
            self._kill(service)
            service = self._start_service(len(self.at_kills) + 1)
            again = Trigger("tasks", tasks=plan.second_tasks) if len(self.at_kills) < plan.kills else None
            if not self._wait_until_over(service, again):
                break
        r.ended = time.monotonic()
        self._stop(service)
        self._check()

    # -- watching

    def _first_kill_due(self, service: subprocess.Popen, trigger: Trigger) -> bool:
        """Wait for the trigger on the first job's event log: True when due, False if the job finished first."""
        tail = EventTail(self.jobs_dir / self.submitted[0] / "events.jsonl")
        deadline = time.monotonic() + self.options.run_timeout
        while time.monotonic() < deadline:
            self._check_alive(service)
            for event in tail.read():
                if isinstance(event, JobFinished):
                    return False
                if trigger.update([event]):
                    return True
            time.sleep(POLL)
        raise RoundFailed("FAIL", f"{self.submitted[0]} did not reach its kill point in time")

    def _wait_until_over(self, service: subprocess.Popen, trigger: Trigger | None) -> bool:
        """Until every job is over (False) or, with a trigger, a kill is due (True). The
        trigger hears the tasks of every job's run started from now on."""
        tails = NewRuns(self.jobs_dir)
        limit = self.options.run_timeout * QUEUED_JOBS
        deadline = time.monotonic() + limit
        listed = 0.0
        while time.monotonic() < deadline:
            self._check_alive(service)
            if trigger is not None and trigger.update(tails.read()):
                return True
            if time.monotonic() - listed > LISTING_POLL:
                listed = time.monotonic()
                states = self._listing()
                if states is not None and all(states.get(job) in OVER for job in self.submitted):
                    self.listed = states
                    return False
            time.sleep(POLL)
        raise RoundFailed("FAIL", f"the jobs were not over {limit:.0f} s after a restart")

    def _check_alive(self, service: subprocess.Popen) -> None:
        if service.poll() is not None:
            raise RoundFailed("FAIL", f"the service exited {service.returncode}: {self._tail(service)}")

    # -- killing

    def _kill(self, service: subprocess.Popen) -> None:
        """SIGKILL the service; wait until its fork server and job coordinator are gone too, so
        the journal read is the one the next service finds."""
        family = descendants(service.pid)
        sent = kill(service)
        service.wait()
        if sent is not None:
            self.r.faults.append((len(self.at_kills) + 1, Fault(FaultKind.KILL, service.pid, sent)))
            self.r.kills += 1
        for pid in family:
            if not gone(pid, STARTUP_WAIT):
                raise RoundFailed("FAIL", f"process {pid} outlived its killed service")
        started = {job: runs_started(self.jobs_dir / job) for job in self.submitted}
        self.at_kills.append({job: n for job, n in started.items() if n})
        for job, n in started.items():
            if n:
                self.interrupted.append(Interrupted(job, n, JournalState.read(self.jobs_dir / job)))
        log.info("round: killed the service pid %d (jobs started: %s)", service.pid, self.at_kills[-1])

    # -- checking

    def _check(self) -> None:
        states = self.listed
        if sorted(states) != sorted(self.submitted):
            raise RoundFailed("FAIL", f"`mapreduce jobs` listed {states}, submitted {self.submitted}")
        failed = [job for job in self.submitted if states[job] != "succeeded"]
        if failed:
            raise RoundFailed("FAIL", f"{failed[0]} {states[failed[0]]}: {self._job_message(failed[0])}")
        runs = {job: runs_started(self.jobs_dir / job) for job in self.submitted}
        problem = check_runs(self.submitted, self.at_kills, runs)
        if problem is not None:
            raise RoundFailed("TWICE", problem)
        for n, job in enumerate(self.submitted, 1):
            problem = check_output(self.oracle, self._out(n))
            if problem is not None:
                raise RoundFailed("DIFF", f"{job}: {problem}")
        events = {job: {n: run_events(p) for n, p in event_logs(self.jobs_dir / job).items()} for job in runs}
        for x in self.interrupted:  # the next run that logged anything ran what the kill left
            later = [n for n in events[x.job] if n > x.run]
            if later:
                last = final_stage(events[x.job].values())
                self.r.restarts.append(count_reruns(x.state, events[x.job][min(later)], last))
        redone = sum(x.needless_committed for x in self.r.restarts)
        if redone:
            raise RoundFailed("REDONE", f"{redone} committed partition(s) ran again after a restart")

    def _listing(self) -> dict[str, str] | None:
        """`mapreduce jobs`: each job's state, or None while the service does not answer."""
        result = subprocess.run(
            mapreduce_command("jobs", "--state-dir", str(self.state), "--timeout", "2"),
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            return None
        return {cells[0]: cells[1] for cells in (line.split() for line in result.stdout.splitlines()[1:]) if cells}

    def _job_message(self, job: str) -> str:
        logs = sorted((self.jobs_dir / job).glob("coordinator*.log"))
        lines = logs[-1].read_text(errors="replace").strip().splitlines() if logs else []
        return lines[-1] if lines else "(no coordinator log)"

    # -- processes

    def _start_service(self, run: int) -> subprocess.Popen:
        command = mapreduce_command(
            "cluster", "start", "--bind", self.address, "--state-dir", str(self.state),
            "--heartbeat-interval", str(self.options.heartbeat_interval),
        )  # fmt: skip
        service = self.r.processes.start(command, self.r.files.logs / f"service-{run}.log")
        self.r.coordinators[run] = service
        return service

    def _start_workers(self) -> None:
        opts = self.options
        for i in range(1, opts.workers + 1):
            command = mapreduce_command(
                "worker", "--connect", self.address, "--stay", "--coordinator-timeout", str(WORKER_PATIENCE),
                "--heartbeat-interval", str(opts.heartbeat_interval),
                "--scratch", str(self.r.files.folder / f"scratch-w{i}"), "--name", f"w{i}",
            )  # fmt: skip
            self.r.processes.start(command, self.r.files.logs / f"worker-w{i}.log")

    def _wait_for_control(self, service: subprocess.Popen) -> None:
        deadline = time.monotonic() + STARTUP_WAIT
        while self._listing() is None:
            self._check_alive(service)
            if time.monotonic() > deadline:
                raise RoundFailed("FAIL", f"the service did not answer within {STARTUP_WAIT:.0f} s")
            time.sleep(POLL)

    def _out(self, n: int) -> Path:
        return self.r.files.folder / f"out-{n}"

    def _submit(self, n: int) -> str:
        opts = self.options
        args = ["submit", "--detach", "--state-dir", str(self.state), opts.app, *self.inputs]
        args += ["--output", str(self._out(n)), "--split-size", str(opts.split_size), *opts.job_args()]
        result = subprocess.run(mapreduce_command(*args), capture_output=True, text=True)
        if result.returncode != 0:
            raise RoundFailed("FAIL", f"submitting job {n} failed: {result.stderr.strip()}")
        return result.stdout.strip()

    def _stop(self, service: subprocess.Popen) -> None:
        """`cluster stop`: the service dismisses the workers and exits 0."""
        stop = subprocess.run(
            mapreduce_command("cluster", "stop", "--state-dir", str(self.state)), capture_output=True, text=True
        )
        try:
            code = service.wait(timeout=STARTUP_WAIT)
        except subprocess.TimeoutExpired:
            raise RoundFailed("FAIL", f"the service still ran {STARTUP_WAIT:.0f} s after `cluster stop`") from None
        if stop.returncode != 0 or code != 0:
            raise RoundFailed("FAIL", f"`cluster stop` exited {stop.returncode}, the service {code}: {stop.stderr}")

    def _tail(self, service: subprocess.Popen) -> str:
        runs = [n for n, p in self.r.coordinators.items() if p is service]
        path = self.r.files.logs / f"service-{runs[0] if runs else 1}.log"
        lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
        return " | ".join(lines[-3:]) or "(nothing)"

    def _keep_logs(self) -> None:
        """Each job's event logs and coordinator logs beside the round's (--events-dir keeps them)."""
        for job in self.submitted:
            folder = self.jobs_dir / job
            for path in [*event_logs(folder).values(), *folder.glob("coordinator*.log")]:
                target = self.r.files.logs / job / path.name
                target.parent.mkdir(exist_ok=True)
                shutil.copyfile(path, target)


class NewRuns:
    """The events written to a jobs folder's event logs from now on (runs started later included)."""

    def __init__(self, jobs_dir: Path):
        self.jobs_dir = jobs_dir
        self.tails: dict[Path, EventTail] = {}
        for path in self._logs():
            tail = self.tails[path] = EventTail(path)
            tail.read()  # what is there already is not news

    def _logs(self) -> list[Path]:
        return [p for folder in sorted(self.jobs_dir.glob("job-*")) for p in event_logs(folder).values()]

    def read(self) -> list:
        news = []
        for path in self._logs():
            news += self.tails.setdefault(path, EventTail(path)).read()
        return news


def descendants(pid: int) -> list[int]:
    """The process's children, theirs, and so on (from /proc)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def gone(pid: int, within: float) -> bool:
    """Whether the process has exited within the time (a zombie has: only its parent's wait is left)."""
    deadline = time.monotonic() + within
    while True:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(") ", 1)[-1].startswith("Z"):
                    return True
        except FileNotFoundError:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(POLL)
