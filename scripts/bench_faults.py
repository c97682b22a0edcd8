"""Job time under faults, side by side with the fault-free time, in one run.

Scenarios (a coordinator and 4 worker processes, word count on a generated corpus):
  fault-free        nothing happens
  kill-mid-map      one worker is SIGKILLed once a quarter of the maps are done
  straggler         one worker runs 10x slower (stopped 90% of every 100 ms) with backups on
  straggler-nobackup  the same with --no-speculation
Every run's output is compared byte for byte with `mapreduce seq`. Runs are interleaved.
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
import threading
import time
from pathlib import Path

from benchlib import free_endpoint, mapreduce

SCENARIOS = ["fault-free", "kill-mid-map", "straggler", "straggler-nobackup"]




def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def throttle(pid: int, stop: threading.Event, duty: float = 0.9, period: float = 0.1) -> None:
    """Slow a process 1/(1-duty) times by keeping it stopped most of each period."""
    while not stop.is_set():
        try:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(period * duty)
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            return
        time.sleep(period * (1 - duty))


def run_once(scenario: str, inputs: list[str], work: Path, oracle: Path, workers: int, reduces: int, split: str) -> dict:
    out, log = work / "out", work / "events.jsonl"
    shutil.rmtree(out, ignore_errors=True)
    log.unlink(missing_ok=True)
    endpoint = free_endpoint()
    extra = ["--no-speculation"] if scenario == "straggler-nobackup" else []
    started = time.monotonic()
    coordinator = subprocess.Popen(
        mapreduce("coordinator", "wordcount", *inputs, "--output", str(out), "--bind", endpoint, "--reduce", str(reduces),
                  "--split-size", split, "--events", str(log), "--quiet", *extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    procs = [subprocess.Popen(mapreduce("worker", "--connect", endpoint, "--scratch", str(work / f"scratch-{i}")),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(workers)]
    stop = threading.Event()
    try:
        if scenario.startswith("straggler"):
            threading.Thread(target=throttle, args=(procs[0].pid, stop), daemon=True).start()
        if scenario == "kill-mid-map":
            kill_mid_map(log, procs, coordinator)
        code = coordinator.wait(timeout=1800)
        seconds = time.monotonic() - started
    finally:
        stop.set()
        for p in procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
                p.kill()
            p.wait()
        if coordinator.poll() is None:
            coordinator.kill()
    log_events = events(log)
    same = code == 0 and same_output(oracle, out)
    return {
        "scenario": scenario, "seconds": seconds, "ok": same,
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
    return sorted(os.listdir(actual)) == names and all(filecmp.cmp(expected / n, actual / n, shallow=False) for n in names)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="64M", help="corpus size (default 64M)")
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--split-size", default="2M", help="map task input size (default 2M)")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--reduce", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3, help="runs of each scenario, interleaved")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    args = parser.parse_args()
    scenarios = args.scenarios.split(",")
    with tempfile.TemporaryDirectory(prefix="mapreduce-bench-faults-") as tmp:
        work = Path(tmp)
        subprocess.run(mapreduce("corpus", str(work / "corpus"), "--size", args.size, "--files", str(args.files)), check=True, stdout=subprocess.DEVNULL)
        inputs = sorted(str(p) for p in (work / "corpus").glob("*.txt"))
        oracle = work / "oracle"
        subprocess.run(mapreduce("seq", "wordcount", *inputs, "--output", str(oracle), "--reduce", str(args.reduce)), check=True)
        results: dict[str, list[dict]] = {s: [] for s in scenarios}
        for _ in range(args.runs):
            for scenario in scenarios:
                results[scenario].append(run_once(scenario, inputs, work, oracle, args.workers, args.reduce, args.split_size))
    print(f"machine: {os.cpu_count()} CPUs, {platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"job: wordcount over {args.size} in {args.files} files, split {args.split_size}, {args.workers} workers, {args.reduce} reduces; "
          f"median of {args.runs} interleaved runs")
    base = statistics.median(r["seconds"] for r in results.get("fault-free", [])) if "fault-free" in results else None
    print(f"{'scenario':<20} {'median s':>9} {'vs fault-free':>14} {'maps re-run':>12} {'backups':>8} {'declared dead':>14} {'output':>7}")
    failed = False
    for scenario, rows in results.items():
        median = statistics.median(r["seconds"] for r in rows)
        ratio = f"{median / base:.2f}x" if base else "-"
        ok = all(r["ok"] for r in rows)
        failed |= not ok
        print(f"{scenario:<20} {median:>9.2f} {ratio:>14} {statistics.median(r['maps_rerun'] for r in rows):>12} "
              f"{statistics.median(r['backups'] for r in rows):>8} {statistics.median(r['dead'] for r in rows):>14} {'exact' if ok else 'DIFF':>7}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
