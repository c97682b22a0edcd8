"""Coordinator recovery benchmarks: what the job journal costs, and how fast a restarted
coordinator gets back to work.

A coordinator (`mapreduce coordinator`) and 2 workers started apart (`mapreduce worker
--connect ... --coordinator-timeout 60`), separate processes on this machine, word count;
every output is checked against `mapreduce seq`.

  journal   the same job with and without --state-dir (the journal fsyncs each finished map
            and each commit): a small job (64 KB) and a large one (the Gutenberg books,
            concatenated --copies times); median of --runs interleaved runs, the ratio
            with/without. Time: the coordinator process from start to exit.
  restart   the large job with --state-dir, its coordinator SIGKILLed once half its maps have
            finished (seen in its event log) and started again with the same command: from
            the restart's process start to the new run's first task_assigned (its event log)
            and to its exit; side by side, a fresh start's time to its first task_assigned and
            to its exit. Also the maps the restarted run ran again (map_rerun events and maps
            assigned again).
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import mapreduce

WORKERS = 2


def has_state_dir() -> bool:
    result = subprocess.run(mapreduce("coordinator", "--help"), capture_output=True, text=True)
    return "--state-dir" in result.stdout


def events(path: Path) -> list[dict]:
    """An event log's whole lines (a SIGKILL may cut the last one)."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def same(expected: Path, actual: Path) -> bool:
    names = sorted(os.listdir(expected))
    return sorted(os.listdir(actual)) == names and all(
        filecmp.cmp(expected / n, actual / n, shallow=False) for n in names
    )


class Job:
    """One job's processes: a coordinator (started again as asked) and its workers."""

    def __init__(self, work: Path, name: str, inputs: list[str], split: str, journal: bool):
        self.folder = work / name
        self.folder.mkdir(parents=True)
        self.out, self.state = self.folder / "out", self.folder / "state"
        self.address = f"ipc://{self.folder / 'c.ipc'}"
        self.command = mapreduce(
            "coordinator", "wordcount", *inputs, "--output", str(self.out), "--bind", self.address,
            "--split-size", split, "--quiet",
            *(["--state-dir", str(self.state)] if journal else []),
        )  # fmt: skip
        self.workers: list[subprocess.Popen] = []
        self.runs = 0

    def start(self) -> tuple[subprocess.Popen, float, Path]:
        """Start (again) the coordinator, and the workers the first time: the process, its
        start (unix time, as event logs' "wall") and its event log."""
        self.runs += 1
        log = self.folder / f"events-{self.runs}.jsonl"
        started = time.time()
        process = subprocess.Popen(
            [*self.command, "--events", str(log)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        if not self.workers:
            self.workers = [
                subprocess.Popen(
                    mapreduce(
                        "worker",
                        "--connect",
                        self.address,
                        "--coordinator-timeout",
                        "60",
                        "--scratch",
                        str(self.folder / f"scratch-{i}"),
                    ),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )  # fmt: skip
                for i in range(WORKERS)
            ]
        return process, started, log

    def stop(self) -> None:
        for p in self.workers:
            try:
                p.wait(timeout=10)  # told to leave at the job's end
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def run_job(work: Path, name: str, inputs: list[str], split: str, journal: bool, oracle: Path) -> float:
    job = Job(work, name, inputs, split, journal)
    try:
        process, started, _ = job.start()
        if process.wait(timeout=1800) != 0:
            raise SystemExit(f"{name}: the coordinator exited {process.returncode}")
        seconds = time.time() - started
    finally:
        job.stop()
    if not same(oracle, job.out):
        raise SystemExit(f"{name}: the output differs from mapreduce seq")
    return seconds


def first_assigned(log: Path, started: float) -> float:
    return min(e["wall"] for e in events(log) if e["event"] == "task_assigned") - started


def restart_once(work: Path, name: str, inputs: list[str], split: str, oracle: Path) -> dict:
    """Kill the coordinator once half the maps have finished, start it again: the timings."""
    job = Job(work, name, inputs, split, journal=True)
    try:
        first, started, log = job.start()
        fresh_first = None
        while first.poll() is None:
            log_events = events(log)
            maps = next((e["maps"] for e in log_events if e["event"] == "job_started"), None)
            done = {e["task"] for e in log_events if e["event"] == "task_finished" and e["phase"] == "map"}
            if maps and len(done) >= max(1, maps // 2):
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.01)
        if first.wait() != -signal.SIGKILL:
            raise SystemExit(f"{name}: the job ended ({first.returncode}) before its kill: give a larger job")
        fresh_first = first_assigned(log, started)
        second, restarted, log2 = job.start()
        if second.wait(timeout=1800) != 0:
            raise SystemExit(f"{name}: the restarted coordinator exited {second.returncode}")
        ended = time.time()
    finally:
        job.stop()
    if not same(oracle, job.out):
        raise SystemExit(f"{name}: the output differs from mapreduce seq")
    new = events(log2)
    assigned = {e["task"] for e in new if e["event"] == "task_assigned" and e["phase"] == "map"}
    return {
        "fresh_first": fresh_first,
        "first": first_assigned(log2, restarted),
        "end": ended - restarted,
        "maps": maps,
        "done_at_kill": len(done),
        "maps_assigned": len(assigned),
        "map_rerun": sum(e["event"] == "map_rerun" for e in new),
    }


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):>8.3f} {min(values):>8.3f} {max(values):>8.3f}"


def corpus(work: Path, name: str, size: str) -> list[str]:
    folder = work / name
    subprocess.run(mapreduce("corpus", str(folder), "--size", size, "--files", "2"), check=True, capture_output=True)
    return [str(p) for p in sorted(folder.iterdir())]


def books_copies(work: Path, books: list[str], copies: int) -> list[str]:
    """The books concatenated ``copies`` times, in up to 4 files."""
    folder = work / "large"
    folder.mkdir()
    text = b"".join(Path(b).read_bytes() for b in books)
    paths = []
    for i in range(min(4, max(1, copies))):
        path = folder / f"books-{i}.txt"
        with open(path, "wb") as f:
            for _ in range(max(1, copies // 4 + (1 if i < copies % 4 else 0))):
                f.write(text)
        paths.append(str(path))
    return paths


def oracle(work: Path, inputs: list[str], name: str, split: str) -> Path:
    out = work / f"oracle-{name}"
    subprocess.run(
        mapreduce("seq", "wordcount", *inputs, "--output", str(out), "--split-size", split, "--quiet"), check=True
    )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/gutenberg")
    parser.add_argument("--copies", type=int, default=2, help="the large job: the books this many times (10: 33 MB)")
    parser.add_argument("--split-size", default="1M", help="the large job's map input size")
    parser.add_argument("--runs", type=int, default=3, help="runs of each row, interleaved")
    parser.add_argument("--only", choices=["journal", "restart"])
    args = parser.parse_args()
    books = [str(p) for p in sorted(args.books.glob("*.txt"))]
    if not books:
        sys.exit(f"no *.txt books in {args.books} (give --books FOLDER)")
    if not has_state_dir():
        sys.exit("this mapreduce's coordinator has no --state-dir (coordinator recovery): nothing to measure")
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
          f"{platform.python_version()}")  # fmt: skip
    print(f"processes: a coordinator and {WORKERS} workers started apart, word count; every output checked")
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as folder:
        work = Path(folder)
        small = corpus(work, "small", "64K")
        large = books_copies(work, books, args.copies)
        size = sum(Path(p).stat().st_size for p in large)
        jobs = {
            "small": (small, "1M", oracle(work, small, "small", "1M")),
            "large": (large, args.split_size, oracle(work, large, "large", args.split_size)),
        }
        label = {"small": "small (64 KB)", "large": f"large ({size / 1e6:.0f} MB, split {args.split_size})"}
        if args.only in (None, "journal"):
            seconds: dict[tuple[str, bool], list[float]] = {(j, w): [] for j in jobs for w in (False, True)}
            for i in range(args.runs):
                for name, (inputs, split, expected) in jobs.items():
                    for journal in (False, True):
                        tag = f"{name}-{'journal' if journal else 'plain'}-{i}"
                        seconds[(name, journal)].append(run_job(work, tag, inputs, split, journal, expected))
            print(f"\njournal: the same job without and with --state-dir; median of {args.runs} interleaved runs (s)")
            print(f"{'':34} {'without':>8} {'with':>8} {'ratio':>6}   min/max with")
            for name in jobs:
                without, with_ = (statistics.median(seconds[(name, w)]) for w in (False, True))
                spread = f"{min(seconds[(name, True)]):.3f}/{max(seconds[(name, True)]):.3f}"
                print(f"{label[name]:34} {without:>8.3f} {with_:>8.3f} {with_ / without:>6.2f}   {spread}")
        if args.only in (None, "restart"):
            inputs, split, expected = jobs["large"]
            rows = [restart_once(work, f"restart-{i}", inputs, split, expected) for i in range(args.runs)]
            print(f"\nrestart: {label['large']}, coordinator SIGKILLed once half the maps finished, started again")
            print(f"{'seconds':44} {'median':>8} {'min':>8} {'max':>8}")
            for name, key in (
                ("fresh start -> first task_assigned", "fresh_first"),
                ("restart -> first task_assigned", "first"),
                ("restart -> exit (job done)", "end"),
            ):
                print(f"{name:44} {stats([r[key] for r in rows])}")
            r0 = rows[0]
            print(
                f"maps: {r0['maps']}; finished at the kill (median) "
                f"{statistics.median(r['done_at_kill'] for r in rows)}, assigned again after the restart "
                f"{statistics.median(r['maps_assigned'] for r in rows)}, map_rerun events "
                f"{statistics.median(r['map_rerun'] for r in rows)}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
