"""Start, list and stop ``mapreduce worker`` processes on many hosts through a remote shell.

For each worker the launcher runs ``RSH... HOST COMMAND_STRING`` in the background,
where COMMAND_STRING first prints ``mapreduce-worker-pid $$`` and then execs the
worker command, so the worker's log (``LOGS/HOST-i.log``) names its remote pid.
``LOGS/launch-state.json`` remembers the workers; ``--status`` and ``--stop`` act on
them with short remote commands (``kill -0``, ``kill -TERM``, ``kill -KILL``).

Each worker's environment carries a token (MAPREDUCE_LAUNCH_ID); on hosts with /proc
a pid counts as ours only while its process still carries that token, so a pid the
system has since reused is never signalled.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import click

from mapreduce.errors import LaunchError

PID_TAG = "mapreduce-worker-pid"
STATE_FILE = "launch-state.json"
TOKEN_VAR = "MAPREDUCE_LAUNCH_ID"
_PID_LINE = re.compile(rf"^{PID_TAG} (\d+)$")
_PROBE_DONE = "mapreduce-probe-done"
# Remote: is process $1 alive and ours (carrying token $2)? Without /proc, trust kill -0.
# A zombie's environ reads empty, so it counts as gone.
_ALIVE = (
    'alive() { kill -0 "$1" 2>/dev/null || return 1; [ -d "/proc/$1" ] || return 0; '
    f'tr "\\0" "\\n" < "/proc/$1/environ" 2>/dev/null | grep -qx "{TOKEN_VAR}=$2"; }}'
)


@dataclass(frozen=True)
class HostEntry:
    host: str
    count: int
    line: int


@dataclass
class WorkerRecord:
    name: str  # HOST-i
    host: str
    index: int
    token: str  # the value of MAPREDUCE_LAUNCH_ID in the worker's environment
    log: str
    remote_pid: int | None = None
    local_pid: int | None = None  # the rsh process on this machine
    local_start: str | None = None  # its start time, so a reused local pid is never signalled


def parse_hosts(text: str) -> list[HostEntry]:
    """Lines of ``host [count]``; ``#`` starts a comment; count defaults to 1."""
    entries: list[HostEntry] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), 1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) > 2:
            raise LaunchError(f"line {number}: expected `host [count]`, got {raw.strip()!r}")
        host = fields[0]
        if host.startswith("-"):
            raise LaunchError(f"line {number}: host {host!r} may not start with '-'")
        if host in seen:
            raise LaunchError(f"line {number}: host {host!r} is already on line {seen[host]}")
        count = 1
        if len(fields) == 2:
            if not fields[1].isdigit() or int(fields[1]) < 1:
                raise LaunchError(f"line {number}: count {fields[1]!r} is not a positive whole number")
            count = int(fields[1])
        seen[host] = number
        entries.append(HostEntry(host, count, number))
    if not entries:
        raise LaunchError("the hosts file lists no hosts")
    return entries


def read_hosts(path: str | Path) -> list[HostEntry]:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise LaunchError(f"cannot read hosts file {str(path)!r}: {exc.strerror}") from None
    try:
        return parse_hosts(text)
    except LaunchError as exc:
        raise LaunchError(f"{path}: {exc}") from None


def remote_command(worker_command: str, coordinator: str, name: str, args: Sequence[str], token: str) -> str:
    """The one string the remote shell runs. worker_command is shell text (may use $VARS); the rest is quoted."""
    tail = shlex.join(["--connect", coordinator, "--name", name, *args])
    return f'{TOKEN_VAR}={token}; export {TOKEN_VAR}; echo "{PID_TAG} $$"; exec {worker_command} {tail}'


def _local_start(pid: int) -> str | None:
    """The process's start time (Linux), or None if it is gone or this is not Linux."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return None if fields[0] == "Z" else fields[19]


class Launcher:
    """Runs remote commands through ``rsh`` and keeps the state file in ``logs``."""

    def __init__(self, rsh: Sequence[str], logs: str | Path, timeout: float = 20.0, out=None):
        if not rsh:
            raise LaunchError("--rsh is empty")
        self.rsh = list(rsh)
        self.logs = Path(logs)
        self.timeout = timeout
        self.say = out or (lambda line: click.echo(line, err=True))

    @property
    def state_path(self) -> Path:
        return self.logs / STATE_FILE

    # -- state -------------------------------------------------------------------------

    def load(self) -> list[WorkerRecord]:
        try:
            state = json.loads(self.state_path.read_text())
            return [WorkerRecord(**w) for w in state["workers"]]
        except FileNotFoundError:
            raise LaunchError(f"no launch recorded in {self.logs} (no {STATE_FILE})") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise LaunchError(f"{self.state_path} is damaged: {exc}") from None

    def save(self, workers: Sequence[WorkerRecord], coordinator: str = "") -> None:
        state = {"rsh": self.rsh, "coordinator": coordinator, "workers": [asdict(w) for w in workers]}
        temp = self.state_path.with_suffix(".tmp")
        temp.write_text(json.dumps(state, indent=1))
        temp.replace(self.state_path)

    # -- starting ------------------------------------------------------------------------

    def start(
        self,
        hosts: Sequence[HostEntry],
        coordinator: str,
        worker_command: str,
        worker_args: Sequence[str] = (),
        settle: float = 1.0,
    ) -> tuple[list[WorkerRecord], list[str], dict]:
        """Start every worker; returns (started, failures, Popen of each started worker by name)."""
        self.logs.mkdir(parents=True, exist_ok=True)
        launch_id = secrets.token_hex(4)
        pending: dict[str, tuple[WorkerRecord, subprocess.Popen]] = {}
        for entry in hosts:
            for index in range(1, entry.count + 1):
                name = f"{entry.host}-{index}"
                record = WorkerRecord(
                    name, entry.host, index, f"{launch_id}-{len(pending) + 1}", str(self.logs / f"{name}.log")
                )
                args = [
                    a.replace("{host}", entry.host).replace("{name}", name).replace("{index}", str(index))
                    for a in worker_args
                ]
                command = remote_command(worker_command, coordinator, name, args, record.token)
                with open(record.log, "wb") as log:
                    try:
                        proc = subprocess.Popen(
                            [*self.rsh, entry.host, command],
                            stdin=subprocess.DEVNULL,
                            stdout=log,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    except OSError as exc:
                        for _, other in pending.values():
                            _terminate(other)
                        raise LaunchError(f"cannot run {self.rsh[0]!r}: {exc.strerror}") from None
                record.local_pid, record.local_start = proc.pid, _local_start(proc.pid)
                pending[name] = (record, proc)

        order = list(pending)
        started: dict[str, tuple[WorkerRecord, subprocess.Popen]] = {}
        failures: list[str] = []
        deadline = time.monotonic() + self.timeout
        while pending:
            for name, (record, proc) in list(pending.items()):
                pid = _pid_from_log(record.log)
                if pid is not None:
                    record.remote_pid = pid
                    started[name] = pending.pop(name)
                elif proc.poll() is not None:
                    failures.append(
                        f"{name}: {self.rsh[0]} exited with status {proc.returncode} before the worker "
                        f"started{_tail(record.log)}"
                    )
                    pending.pop(name)
            if pending and time.monotonic() > deadline:
                for name, (record, proc) in pending.items():
                    _terminate(proc)
                    failures.append(f"{name}: no word from {record.host} within {self.timeout:g} s{_tail(record.log)}")
                break
            time.sleep(0.05)

        # A worker command that cannot run (not installed, bad option) fails at once: watch a moment.
        settle_end = time.monotonic() + settle
        while time.monotonic() < settle_end and any(p.poll() is None for _, p in started.values()):
            time.sleep(0.05)
        for name, (record, proc) in list(started.items()):
            if proc.poll() == 0:
                self.say(f"{name} already finished (exit status 0)")
            elif proc.poll() is not None:
                failures.append(f"{name}: exited with status {proc.returncode} right after starting{_tail(record.log)}")
                del started[name]
        records = [started[name][0] for name in order if name in started]  # in hosts-file order
        self.save(records, coordinator)
        return records, failures, {name: proc for name, (_, proc) in started.items()}

    # -- probing and stopping -------------------------------------------------------------

    def _remote(self, host: str, script: str) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(
            [*self.rsh, host, script],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: a helper holding the pipes must not hang us
            proc.communicate()
            raise
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def _signal_host(self, host: str, workers: Sequence[WorkerRecord], sig: str) -> set[int] | str:
        """Send sig ("" for none) to the host's workers still alive; the pids alive before, or an error."""
        specs = " ".join(shlex.quote(f"{w.remote_pid}={w.token}") for w in workers)
        send = f'kill -{sig} "$p" 2>/dev/null; ' if sig else ""
        script = (
            f"{_ALIVE}; for w in {specs}; do p=${{w%%=*}}; t=${{w#*=}}; "
            f'if alive "$p" "$t"; then {send}echo "alive $p"; fi; done; echo {_PROBE_DONE}'
        )
        try:
            result = self._remote(host, script)
        except subprocess.TimeoutExpired:
            return f"no answer within {self.timeout:g} s"
        except OSError as exc:
            return f"cannot run {self.rsh[0]!r}: {exc.strerror}"
        lines = result.stdout.splitlines()
        if _PROBE_DONE not in lines:
            detail = (result.stderr.strip().splitlines() or [f"exit status {result.returncode}"])[-1]
            return f"{self.rsh[0]} failed: {detail}"
        return {int(line.split()[1]) for line in lines if line.startswith("alive ")}

    def probe(self, workers: Sequence[WorkerRecord], sig: str = "") -> tuple[set[str], dict[str, str]]:
        """(names of workers alive, {host: why it could not be asked}); one remote command per
        host, in parallel. Workers on a host that could not be asked count as alive."""
        by_host: dict[str, list[WorkerRecord]] = {}
        for w in workers:
            if w.remote_pid is not None:
                by_host.setdefault(w.host, []).append(w)
        alive: set[str] = set()
        unreachable: dict[str, str] = {}
        if not by_host:
            return alive, unreachable
        with ThreadPoolExecutor(max_workers=min(32, len(by_host))) as pool:
            answers = pool.map(
                lambda item: (item[0], item[1], self._signal_host(item[0], item[1], sig)), by_host.items()
            )
            for host, host_workers, answer in answers:
                if isinstance(answer, str):
                    unreachable[host] = answer
                    alive.update(w.name for w in host_workers)
                else:
                    alive.update(w.name for w in host_workers if w.remote_pid in answer)
        return alive, unreachable

    def stop(self, workers: Sequence[WorkerRecord], grace: float) -> tuple[set[str], dict[str, str]]:
        """SIGTERM every worker (they drain and leave), SIGKILL what is left after grace seconds.

        Returns (names still alive or unknown, {host: why it could not be asked})."""
        alive, unreachable = self.probe(workers, "TERM")
        if alive:
            self.say(f"sent SIGTERM to {len(alive)} worker(s); waiting up to {grace:g} s for them to leave")
        deadline = time.monotonic() + grace
        while alive and time.monotonic() < deadline:
            time.sleep(min(0.2 + 0.01 * len(alive), 1.0))
            alive, unreachable = self.probe([w for w in workers if w.name in alive])
        if alive:
            self.say(f"{len(alive)} worker(s) still running after {grace:g} s: SIGKILL")
            self.probe([w for w in workers if w.name in alive], "KILL")
            deadline = time.monotonic() + 5
            while alive and time.monotonic() < deadline:
                time.sleep(0.1)
                alive, unreachable = self.probe([w for w in workers if w.name in alive])
        for w in workers:  # a local rsh ends with its remote command; make sure (never a reused pid)
            if w.name not in alive and w.local_pid and w.local_start and _local_start(w.local_pid) == w.local_start:
                try:
                    os.killpg(w.local_pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        return alive, unreachable


def _recorded_rsh(logs: Path) -> list[str]:
    """The remote shell the launch into logs used (ssh if unknown)."""
    try:
        return json.loads((logs / STATE_FILE).read_text()).get("rsh") or ["ssh"]
    except (OSError, ValueError):
        return ["ssh"]


def _pid_from_log(path: str) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(4096).decode(errors="replace")
    except OSError:
        return None
    for line in head.splitlines(keepends=True):  # a line counts only once its newline is written
        m = _PID_LINE.match(line.rstrip("\r\n"))
        if m and line.endswith("\n"):
            return int(m.group(1))
    return None


def _tail(path: str) -> str:
    try:
        lines = [line for line in Path(path).read_text(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return f" ({lines[-1].strip()})" if lines else ""


def _terminate(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# -- the command -------------------------------------------------------------------------------


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.argument("hosts_file", required=False, type=click.Path(dir_okay=False))
@click.argument("coordinator", required=False)
@click.option(
    "--rsh",
    default=None,
    help="Remote shell, run as RSH HOST COMMAND_STRING.  [default: ssh; --stop/--status: the launch's]",
)
@click.option(
    "--worker-command",
    default="mapreduce worker",
    show_default=True,
    help="Shell text run on each host; --connect URL --name HOST-i and the --worker-arg values are appended.",
)
@click.option(
    "--worker-arg",
    "worker_args",
    multiple=True,
    metavar="ARG",
    help="An extra worker argument; {host}, {name} and {index} are filled in; repeatable.",
)
@click.option(
    "--logs",
    default="worker-logs",
    show_default=True,
    type=click.Path(file_okay=False),
    help="Folder for HOST-i.log and the state file.",
)
@click.option(
    "--stop", is_flag=True, help="Stop the workers launched into --logs: SIGTERM, then SIGKILL after --grace."
)
@click.option("--status", is_flag=True, help="Show which workers launched into --logs are alive.")
@click.option(
    "--grace", default=30.0, show_default=True, help="Seconds stopping workers may take to drain before SIGKILL."
)
@click.option(
    "--timeout",
    default=20.0,
    show_default=True,
    help="Seconds to wait for each remote command and for each worker to start.",
)
@click.option("--settle", default=1.0, show_default=True, help="Seconds to watch new workers for an immediate exit.")
@click.option(
    "--foreground", is_flag=True, help="Stay, report workers that exit, and stop them all on Ctrl-C or SIGTERM."
)
def launch(
    hosts_file, coordinator, rsh, worker_command, worker_args, logs, stop, status, grace, timeout, settle, foreground
):
    """Start workers for COORDINATOR (e.g. tcp://10.0.0.1:5555) on the hosts in HOSTS_FILE
    (lines of `host [count]`), or with --status / --stop act on the ones started before."""
    try:
        if stop and status:
            raise LaunchError("--stop and --status do not go together")
        if stop or status:
            if hosts_file or coordinator:
                raise LaunchError(f"--{'stop' if stop else 'status'} takes no HOSTS_FILE or COORDINATOR (only --logs)")
            launcher = Launcher(shlex.split(rsh) if rsh else _recorded_rsh(Path(logs)), logs, timeout)
            sys.exit(_stop(launcher, grace) if stop else _status(launcher))
        if not hosts_file or not coordinator:
            raise LaunchError("give HOSTS_FILE and COORDINATOR (or --stop / --status)")
        hosts = read_hosts(hosts_file)
        launcher = Launcher(shlex.split(rsh or "ssh"), logs, timeout)
        sys.exit(_start(launcher, hosts, coordinator, worker_command, worker_args, settle, grace, foreground))
    except LaunchError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except ValueError as exc:  # shlex on an unbalanced quote
        click.echo(f"error: --rsh: {exc}", err=True)
        sys.exit(2)


def _start(launcher: Launcher, hosts, coordinator, worker_command, worker_args, settle, grace, foreground) -> int:
    if launcher.state_path.exists():
        alive, unreachable = launcher.probe(launcher.load())
        if alive:
            hint = "".join(f" ({host}: {why})" for host, why in list(unreachable.items())[:1])
            raise LaunchError(
                f"{len(alive)} worker(s) of an earlier launch into {launcher.logs} may still run{hint}: "
                f"--stop them first, or remove {launcher.state_path}"
            )
    total = sum(h.count for h in hosts)
    records, failures, procs = launcher.start(hosts, coordinator, worker_command, worker_args, settle)
    for failure in failures:
        launcher.say(f"failed: {failure}")
    launcher.say(
        f"started {len(records)} of {total} worker(s) on {len({r.host for r in records})} host(s); logs in "
        f"{launcher.logs}"
    )
    if not foreground:
        if records:
            launcher.say(f"stop them with: --stop --logs {shlex.quote(str(launcher.logs))}")
        return 1 if failures else 0
    return _watch(launcher, records, procs, grace) or (1 if failures else 0)


def _watch(launcher: Launcher, records: list[WorkerRecord], procs: dict, grace: float) -> int:
    """Foreground: report exits; on Ctrl-C or SIGTERM stop everyone."""

    def on_term(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    codes = {name: proc.returncode for name, proc in procs.items() if proc.poll() is not None}  # start() told of these
    try:
        while len(codes) < len(procs):
            for name, proc in procs.items():
                if name not in codes and proc.poll() is not None:
                    codes[name] = proc.returncode
                    launcher.say(f"{name} exited with status {proc.returncode}")
            time.sleep(0.1)
    except KeyboardInterrupt:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second signal must not cut the stop short
        running = [r for r in records if r.name not in codes]
        launcher.say(f"\nstopping {len(running)} worker(s)")
        left, unreachable = launcher.stop(running, grace)
        for proc in procs.values():
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        return _report_stop(launcher, left, unreachable) or 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    launcher.state_path.unlink(missing_ok=True)
    return 0 if all(code == 0 for code in codes.values()) else 1


def _report_stop(launcher: Launcher, left: set[str], unreachable: dict[str, str]) -> int:
    for host, why in unreachable.items():
        launcher.say(f"problem: {host}: {why}")
    if left:
        launcher.say(f"could not stop: {', '.join(sorted(left))}; state kept in {launcher.state_path}")
        return 1
    launcher.state_path.unlink(missing_ok=True)
    launcher.say("all workers stopped")
    return 0


def _stop(launcher: Launcher, grace: float) -> int:
    left, unreachable = launcher.stop(launcher.load(), grace)
    return _report_stop(launcher, left, unreachable)


def _status(launcher: Launcher) -> int:
    workers = launcher.load()
    alive, unreachable = launcher.probe(workers)
    for w in workers:
        state = "unknown" if w.host in unreachable else "alive" if w.name in alive else "gone"
        click.echo(f"{w.name:<24} {state:<8} pid {w.remote_pid} on {w.host}  log {w.log}")
    for host, why in unreachable.items():
        click.echo(f"problem: {host}: {why}", err=True)
    return 0 if workers and not unreachable and len(alive) == len(workers) else 1


if __name__ == "__main__":
    launch(prog_name="launch-workers")
