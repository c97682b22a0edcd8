"""Cluster benchmarks: task overhead, scale-out past the cores, many tiny tasks, bounded memory.

Each runs a coordinator and its workers as separate processes (`mapreduce coordinator`,
`mapreduce worker`), reads every process's CPU time and peak RSS from the kernel
(wait4), and checks the output against `mapreduce seq`.

  tasks    N no-op map tasks with W workers: tasks per second, coordinator CPU per task
  scale    tasks that sleep 0.2 s on 1..32 workers: speedup against the ideal
  tiny     20,000 tiny map tasks and 64 reduces: time and coordinator CPU
  memory   word count over 100 MB and 1 GB with 2 workers: peak RSS of each process
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import SLEEP_APP, free_endpoint, mapreduce


@dataclass
class Usage:
    seconds: float  # wall time of the coordinator, from start to exit
    coordinator_cpu: float
    coordinator_rss_mb: float
    worker_rss_mb: float  # the largest worker
    workers_cpu: float


def wait(process: subprocess.Popen) -> tuple[int, object]:
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage


def run_job(
    work: Path, app: str, inputs: list[str], workers: int, *args: str, start_workers_first: bool = True
) -> Usage:
    """Run one job on a coordinator and `workers` worker processes; return what it used."""
    out = work / "out"
    endpoint = free_endpoint()
    command = mapreduce(
        "coordinator", app, *inputs, "--output", str(out), "--overwrite", "--bind", endpoint, "--quiet", *args
    )
    procs = []
    if start_workers_first:  # workers wait for their coordinator: time the job, not their start-up
        procs = [
            subprocess.Popen(
                mapreduce("worker", "--connect", endpoint, "--scratch", str(work / "scratch")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        time.sleep(1.0 + workers * 0.05)
    started = time.monotonic()
    coordinator = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if not start_workers_first:
        procs = [
            subprocess.Popen(
                mapreduce("worker", "--connect", endpoint, "--scratch", str(work / "scratch")),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
    code, usage = wait(coordinator)
    seconds = time.monotonic() - started
    if code != 0:
        raise RuntimeError(f"the coordinator failed: {coordinator.stderr.read().decode()[-2000:]}")
    worker_usage = [wait(p)[1] for p in procs]
    return Usage(
        seconds,
        usage.ru_utime + usage.ru_stime,
        usage.ru_maxrss / 1024,
        max(u.ru_maxrss for u in worker_usage) / 1024,
        sum(u.ru_utime + u.ru_stime for u in worker_usage),
    )


def check(work: Path, app: str, inputs: list[str], *args: str) -> str:
    oracle = work / "oracle"
    subprocess.run(mapreduce("seq", app, *inputs, "--output", str(oracle), "--overwrite", *args), check=True)
    names = sorted(os.listdir(oracle))
    same = sorted(os.listdir(work / "out")) == names and all(
        filecmp.cmp(oracle / n, work / "out" / n, shallow=False) for n in names
    )
    return "exact" if same else "DIFF"


def lines_file(work: Path, n: int) -> tuple[str, str]:
    """A file of n lines of 16 bytes and the split size that makes one map task per line."""
    path = work / f"lines-{n}.txt"
    path.write_text("".join(f"line {i:010d}\n" for i in range(n)))
    return str(path), "16"


def bench_tasks(work: Path, args) -> None:
    path, split = lines_file(work, args.tasks)
    print(
        f"{'tasks':>7} {'workers':>8} {'seconds':>8} {'tasks/s':>8} {'coord CPU/task':>15} "
        f"{'workers CPU/task':>17} {'output':>7}"
    )
    usage = run_job(work, SLEEP_APP, [path], args.workers, "--split-size", split, "--reduce", "2")
    result = check(work, SLEEP_APP, [path], "--split-size", split, "--reduce", "2")
    print(
        f"{args.tasks:>7} {args.workers:>8} {usage.seconds:>8.2f} {args.tasks / usage.seconds:>8.0f} "
        f"{usage.coordinator_cpu / args.tasks * 1e6:>12.0f} us {usage.workers_cpu / args.tasks * 1e6:>14.0f} us "
        f"{result:>7}"
    )


def bench_scale(work: Path, args) -> None:
    path, split = lines_file(work, args.tasks)
    ideal_one = args.tasks * args.sleep
    print(
        f"{args.tasks} tasks sleeping {args.sleep} s each ({ideal_one:.0f} s of work); workers started before the job"
    )
    print(f"{'workers':>8} {'seconds':>8} {'ideal s':>8} {'speedup':>8} {'of ideal':>9} {'output':>7}")
    for workers in [int(w) for w in args.workers_list.split(",")]:
        usage = run_job(
            work, SLEEP_APP, [path], workers, "--split-size", split, "--reduce", "4", "--param", f"seconds={args.sleep}"
        )
        result = check(work, SLEEP_APP, [path], "--split-size", split, "--reduce", "4")
        speedup = ideal_one / usage.seconds
        print(
            f"{workers:>8} {usage.seconds:>8.2f} {ideal_one / workers:>8.2f} {speedup:>7.1f}x "
            f"{speedup / workers:>8.0%} {result:>7}"
        )


def bench_tiny(work: Path, args) -> None:
    path, split = lines_file(work, args.tasks)
    usage = run_job(work, SLEEP_APP, [path], args.workers, "--split-size", split, "--reduce", "64")
    result = check(work, SLEEP_APP, [path], "--split-size", split, "--reduce", "64")
    print(
        f"{args.tasks} map tasks, 64 reduces, {args.workers} workers: {usage.seconds:.2f} s, "
        f"{args.tasks / usage.seconds:.0f} maps/s; coordinator CPU {usage.coordinator_cpu:.2f} s "
        f"({usage.coordinator_cpu / usage.seconds:.0%} of one core), peak RSS {usage.coordinator_rss_mb:.0f} MB; "
        f"workers' CPU {usage.workers_cpu:.2f} s; output {result}"
    )


def bench_memory(work: Path, args) -> None:
    print(f"{'input':>8} {'seconds':>8} {'coordinator RSS':>16} {'largest worker RSS':>19} {'output':>7}")
    for megabytes in [int(m) for m in args.sizes.split(",")]:
        corpus = work / f"corpus-{megabytes}"
        files = str(max(1, megabytes // 25))  # 25 MB files: every size has splits of the default size
        subprocess.run(
            mapreduce("corpus", str(corpus), "--size", f"{megabytes}M", "--files", files),
            check=True,
            stdout=subprocess.DEVNULL,
        )
        inputs = sorted(str(p) for p in corpus.glob("*.txt"))
        usage = run_job(work, "wordcount", inputs, 2, start_workers_first=False)
        result = check(work, "wordcount", inputs) if megabytes <= args.check_up_to else "unchecked"
        print(
            f"{megabytes:>6}MB {usage.seconds:>8.1f} {usage.coordinator_rss_mb:>13.0f} MB "
            f"{usage.worker_rss_mb:>16.0f} MB {result:>7}"
        )
        for p in corpus.glob("*"):
            p.unlink()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    tasks = sub.add_parser("tasks")
    tasks.add_argument("--tasks", type=int, default=5000)
    tasks.add_argument("--workers", type=int, default=2)
    scale = sub.add_parser("scale")
    scale.add_argument("--tasks", type=int, default=640)
    scale.add_argument("--sleep", type=float, default=0.2)
    scale.add_argument("--workers-list", default="1,8,32")
    tiny = sub.add_parser("tiny")
    tiny.add_argument("--tasks", type=int, default=20000)
    tiny.add_argument("--workers", type=int, default=4)
    memory = sub.add_parser("memory")
    memory.add_argument("--sizes", default="100,1000")
    memory.add_argument("--check-up-to", type=int, default=1000, help="compare with seq up to this many MB")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory(prefix="mapreduce-bench-") as tmp:
        {"tasks": bench_tasks, "scale": bench_scale, "tiny": bench_tiny, "memory": bench_memory}[args.bench](
            Path(tmp), args
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
