"""Job time under faults, side by side with the fault-free time, in one run.

A coordinator and 4 worker processes; every run's output is compared byte for byte
with `mapreduce seq`; runs are interleaved. Two workloads, each with its own
fault-free baseline:

  word count (CPU-bound, over a generated corpus)
    fault-free          nothing happens
    kill-mid-map        one worker is SIGKILLed once a quarter of the maps are done
  sleep (map tasks that wait 0.2 s: like tasks on 4 machines, since waiting tasks do
  not compete for this machine's 2 cores)
    sleep-fault-free    nothing happens
    straggler           one worker is 10x slower (MAPREDUCE_SLEEP_FACTOR=10), backups on
    straggler-nobackup  the same with --no-speculation
    one-worker-fewer    fault-free with 3 workers: the best a job can do without the slow
                        worker's share, since with backups it still does a little of the work

(A CPU-bound straggler says little here: with 4 workers on 2 cores, a slowed worker's
share of the CPU goes to the others.)
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import SLEEP_APP, free_endpoint, mapreduce

SCENARIOS = ["fault-free", "kill-mid-map", "sleep-fault-free", "straggler", "straggler-nobackup", "one-worker-fewer"]
BASELINE = {
    "fault-free": "fault-free",
    "kill-mid-map": "fault-free",
    "sleep-fault-free": "sleep-fault-free",
    "straggler": "sleep-fault-free",
    "straggler-nobackup": "sleep-fault-free",
    "one-worker-fewer": "sleep-fault-free",
}
SLEEP_SECONDS = "0.2"


@dataclass(frozen=True)
class Workload:
    app: list[str]  # the app and its parameters
    split: str
    oracle: Path


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def run_once(scenario: str, inputs: list[str], work: Path, job: Workload, workers: int, reduces: int) -> dict:
    out, log = work / "out", work / "events.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    endpoint = free_endpoint()
    extra = ["--no-speculation"] if scenario == "straggler-nobackup" else []
    started = time.monotonic()
    coordinator = subprocess.Popen(
        mapreduce(
            "coordinator",
            *job.app,
            *inputs,
            "--output",
            str(out),
            "--bind",
            endpoint,
            "--reduce",
            str(reduces),
            "--split-size",
            job.split,
            "--events",
            str(log),
            "--quiet",
            *extra,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    slow = {**os.environ, "MAPREDUCE_SLEEP_FACTOR": "10"}
    procs = [
        subprocess.Popen(
            mapreduce("worker", "--connect", endpoint, "--scratch", str(work / f"scratch-{i}")),
            env=slow if scenario.startswith("straggler") and i == 0 else None,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for i in range(workers - 1 if scenario == "one-worker-fewer" else workers)
    ]
    try:
        if scenario == "kill-mid-map":
            kill_mid_map(log, procs, coordinator)
        code = coordinator.wait(timeout=1800)
        seconds = time.monotonic() - started
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        if coordinator.poll() is None:
            coordinator.kill()
    log_events = events(log)
    same = code == 0 and same_output(job.oracle, out)
    return {
        "scenario": scenario,
        "seconds": seconds,
        "ok": same,
        "maps_rerun": sum(e["event"] == "map_rerun" for e in log_events),
        "backups": sum(e["event"] == "backup_launched" for e in log_events),
        "dead": sum(e["event"] == "worker_dead" for e in log_events),
    }


def kill_mid_map(log: Path, procs: list[subprocess.Popen], coordinator: subprocess.Popen) -> None:
    while coordinator.poll() is None:
        log_events = events(log)
        n_maps = len({e["task"] for e in log_events if e["event"] == "task_assigned" and e["phase"] == "map"})
        done = sum(e["event"] == "task_finished" and e["phase"] == "map" for e in log_events)
        running = {e["worker"] for e in log_events if e["event"] == "task_assigned" and e["phase"] == "map"}
        if n_maps and done >= max(1, n_maps // 4) and running:
            pids = {e["worker"]: e["pid"] for e in log_events if e["event"] == "worker_joined"}
            victim = pids[max(running)]
            os.kill(victim, signal.SIGKILL)
            return
        time.sleep(0.02)


def same_output(expected: Path, actual: Path) -> bool:
    names = sorted(os.listdir(expected))
    return sorted(os.listdir(actual)) == names and all(
        filecmp.cmp(expected / n, actual / n, shallow=False) for n in names
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64M", help="corpus size (default 64M)")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--split-size", default="2M", help="word count's map task input size (default 2M)")
    parser.add_argument("--sleep-split-size", default="1M", help="the sleep job's map task input size (default 1M)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reduce", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario, interleaved")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(prefix="mapreduce-bench-faults-") as tmp:
        work = Path(tmp)
        subprocess.run(
            mapreduce("corpus", str(work / "corpus"), "--size", args.size, "--files", str(args.files)),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        inputs = sorted(str(p) for p in (work / "corpus").glob("*.txt"))
        jobs = {}
        for name, app, split in (
            ("wordcount", ["wordcount"], args.split_size),
            ("sleep", [SLEEP_APP, "--param", f"seconds={SLEEP_SECONDS}"], args.sleep_split_size),
        ):
            oracle = work / f"oracle-{name}"
            subprocess.run(
                mapreduce(
                    "seq", *app, *inputs, "--output", str(oracle), "--reduce", str(args.reduce), "--split-size", split
                ),
                check=True,
            )
            jobs[name] = Workload(app, split, oracle)
        results: dict[str, list[dict]] = {s: [] for s in scenarios}
        for _ in range(args.runs):
            for scenario in scenarios:
                job = jobs["wordcount" if BASELINE[scenario] == "fault-free" else "sleep"]
                results[scenario].append(run_once(scenario, inputs, work, job, args.workers, args.reduce))
    print(
        f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python "
        f"{platform.python_version()}"
    )
    print(
        f"jobs: wordcount over {args.size} in {args.files} files, split {args.split_size}; sleep "
        f"{SLEEP_SECONDS} s a map, "
        f"split {args.sleep_split_size}; {args.workers} workers, {args.reduce} reduces; median of {args.runs} "
        "interleaved runs"
    )
    medians = {scenario: statistics.median(r["seconds"] for r in rows) for scenario, rows in results.items()}
    print(
        f"{'scenario':<20} {'median s':>9} {'vs fault-free':>14} {'maps re-run':>12} {'backups':>8} "
        f"{'declared dead':>14} {'output':>7}"
    )
    failed = False
    for scenario, rows in results.items():
        base = medians.get(BASELINE[scenario])
        ratio = f"{medians[scenario] / base:.2f}x" if base else "-"
        ok = all(r["ok"] for r in rows)
        failed |= not ok
        print(
            f"{scenario:<20} {medians[scenario]:>9.2f} {ratio:>14} "
            f"{statistics.median(r['maps_rerun'] for r in rows):>12} "
            f"{statistics.median(r['backups'] for r in rows):>8} "
            f"{statistics.median(r['dead'] for r in rows):>14} {'exact' if ok else 'DIFF':>7}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
