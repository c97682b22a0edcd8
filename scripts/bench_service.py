"""Standing-cluster benchmarks: how fast a warm cluster takes small jobs, and that it stays lean.

A service (`mapreduce cluster start`) and two workers that stay (`mapreduce worker --stay`)
run as separate processes, as on a real cluster; every job's output is checked against
`mapreduce seq`.

  latency     word count over the books, one job at a time: the `mapreduce submit` process
              from start to exit, and submission to the last commit in the job's event log;
              side by side with `mapreduce run -w 2` (a cluster per job) and a hand-written
              multiprocessing.Pool(2) word count
  throughput  N small jobs submitted back to back: jobs per second
  soak        N jobs in a row: the service's memory and the workers' scratch before and after
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import free_endpoint, mapreduce

POOL_WORDCOUNT = """
import collections, multiprocessing, re, sys
from pathlib import Path
WORD = re.compile(r"[A-Za-z]+")
def count(path):
    return collections.Counter(WORD.findall(Path(path).read_text(errors="replace")))
if __name__ == "__main__":
    out = Path(sys.argv[1]); out.mkdir(parents=True, exist_ok=True)
    with multiprocessing.Pool(2) as pool:
        total = collections.Counter()
        for counts in pool.map(count, sys.argv[2:]):
            total.update(counts)
    (out / "part-00000").write_text("".join(f"{w}\\t{n}\\n" for w, n in sorted(total.items())))
"""


class Cluster:
    def __init__(self, work: Path, workers: int):
        self.work, self.state = work, work / "state"
        self.endpoint = free_endpoint()
        self.scratch = work / "scratch"
        self.service = subprocess.Popen(
            mapreduce("cluster", "start", "--bind", self.endpoint, "--state-dir", str(self.state)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers = [
            subprocess.Popen(
                mapreduce("worker", "--connect", self.endpoint, "--stay", "--scratch", str(self.scratch)),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(workers)
        ]
        deadline = time.monotonic() + 60
        while not (self.state / "control").exists():
            if time.monotonic() > deadline or self.service.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.02)
        from mapreduce.service.client import ClusterClient

        self.client = ClusterClient(state_dir=self.state, timeout=60)

    def submit(self, inputs: list[str], out: Path):
        from mapreduce.service.client import submission

        return self.client.ask(submission("wordcount", inputs, str(out)))

    def wait(self, job_id: str):
        from mapreduce.wire.messages import WatchJob

        info = self.client.ask(WatchJob(job_id))
        while not info.state.over:  # answered as soon as the state changes
            info = self.client.ask(WatchJob(job_id, info.state, 5.0))
        return info

    def stop(self) -> None:
        self.client.close()
        subprocess.run(mapreduce("cluster", "stop", "--state-dir", str(self.state)), capture_output=True)
        for p in [self.service, *self.workers]:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def same(a: Path, b: Path) -> bool:
    names = sorted(os.listdir(a))
    return sorted(os.listdir(b)) == names and all(filecmp.cmp(a / n, b / n, shallow=False) for n in names)


def oracle(work: Path, inputs: list[str], name: str) -> Path:
    out = work / f"oracle-{name}"
    if not out.exists():
        subprocess.run(mapreduce("seq", "wordcount", *inputs, "--output", str(out), "--quiet"), check=True)
    return out


def timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.monotonic() - started


def commit_delay(info) -> float:
    """Seconds from submission to the last partition's commit, in the job's event log."""
    with open(info.events) as log:
        events = [json.loads(line) for line in log]
    return max(e["wall"] for e in events if e["event"] == "output_committed") - info.submitted


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):>8.3f} {min(values):>8.3f} {max(values):>8.3f}"


def bench_latency(work: Path, cluster: Cluster, books: list[str], rounds: int) -> None:
    from mapreduce.wire.messages import ListJobs

    expected = oracle(work, books, "books")
    small = small_inputs(work)
    submit_seconds, commit_seconds, run_seconds, pool_seconds = [], [], [], []
    small_submit, small_commit = [], []
    for i in range(rounds):
        out = work / f"latency-small-{i}"
        command = mapreduce("submit", "wordcount", *small, "--output", str(out), "--state-dir", str(cluster.state))
        small_submit.append(timed(command))
        small_commit.append(commit_delay(cluster.client.ask(ListJobs()).jobs[-1]))
        out = work / f"latency-{i}"
        command = mapreduce("submit", "wordcount", *books, "--output", str(out), "--state-dir", str(cluster.state))
        submit_seconds.append(timed(command))
        info = cluster.client.ask(ListJobs()).jobs[-1]
        commit_seconds.append(commit_delay(info))
        assert same(expected, out), f"{out} differs from mapreduce seq"
        run_out = work / f"run-{i}"
        run_seconds.append(timed(mapreduce("run", "wordcount", *books, "-w", "2", "-o", str(run_out), "-q")))
        assert same(expected, run_out)
        pool_seconds.append(timed([sys.executable, "-c", POOL_WORDCOUNT, str(work / f"pool-{i}"), *books]))
    pool = statistics.median(pool_seconds)
    print(f"\nlatency: word count over {len(books)} books, {rounds} rounds (seconds; ratio: median / Pool's)")
    print(f"{'':46} {'median':>8} {'min':>8} {'max':>8} {'ratio':>6}")
    for name, values in (
        ("small job (64 KB): submit to last commit", small_commit),
        ("small job (64 KB): `mapreduce submit` process", small_submit),
        ("submit to last commit (event log)", commit_seconds),
        ("`mapreduce submit` process, warm cluster", submit_seconds),
        ("`mapreduce run -w 2` process (cold)", run_seconds),
        ("multiprocessing.Pool(2) script", pool_seconds),
    ):
        print(f"{name:46} {stats(values)} {statistics.median(values) / pool:>6.2f}")


def small_inputs(work: Path) -> list[str]:
    folder = work / "small"
    if not folder.exists():
        subprocess.run(
            mapreduce("corpus", str(folder), "--size", "64K", "--files", "2"), check=True, capture_output=True
        )
    return [str(p) for p in sorted(folder.iterdir())]


def bench_throughput(work: Path, cluster: Cluster, jobs: int) -> None:
    inputs = small_inputs(work)
    expected = oracle(work, inputs, "small")
    started = time.monotonic()
    ids = [cluster.submit(inputs, work / f"many-{i}").job_id for i in range(jobs)]
    infos = [cluster.wait(job_id) for job_id in ids]
    seconds = time.monotonic() - started
    ok = sum(i.state.value == "succeeded" for i in infos)
    exact = sum(same(expected, work / f"many-{i}") for i in range(jobs))
    print(f"\nthroughput: {jobs} small jobs (64 KB of text each) submitted back to back")
    print(f"{seconds:.2f} s, {jobs / seconds:.1f} jobs/s; {ok} succeeded, {exact} exact")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def disk_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.exists() else 0


def bench_soak(work: Path, cluster: Cluster, jobs: int) -> None:
    inputs = small_inputs(work)
    before = rss_mb(cluster.service.pid), disk_bytes(cluster.scratch), disk_bytes(cluster.state)
    for _ in range(jobs):
        out = work / "soak"
        shutil.rmtree(out, ignore_errors=True)
        info = cluster.wait(cluster.submit(inputs, out).job_id)
        assert info.state.value == "succeeded", info.message
    deadline = time.monotonic() + 30
    while disk_bytes(cluster.scratch) > before[1] and time.monotonic() < deadline:
        time.sleep(0.1)  # the last job's files go once its workers have left it
    after = rss_mb(cluster.service.pid), disk_bytes(cluster.scratch), disk_bytes(cluster.state)
    print(f"\nsoak: {jobs} jobs in a row")
    print(f"{'':36} {'before':>10} {'after':>10} {'growth':>10}")
    print(f"{'service RSS (MB)':36} {before[0]:>10.1f} {after[0]:>10.1f} {after[0] - before[0]:>10.1f}")
    print(f"{'workers scratch (bytes)':36} {before[1]:>10} {after[1]:>10} {after[1] - before[1]:>10}")
    per_job = (after[2] - before[2]) / jobs
    print(f"{'state folder (bytes; logs are kept)':36} {before[2]:>10} {after[2]:>10} {per_job:>9.0f}/job")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--books", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/gutenberg")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=100, help="small jobs for the throughput benchmark")
    parser.add_argument("--soak", type=int, default=200, help="jobs for the soak benchmark")
    parser.add_argument("--only", choices=["latency", "throughput", "soak"])
    args = parser.parse_args()
    books = [str(p) for p in sorted(args.books.glob("*.txt"))]
    if not books and args.only in (None, "latency"):
        sys.exit(f"no *.txt books in {args.books} (give --books FOLDER)")
    print(f"machine: {os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}")
    print("cluster: a service and 2 workers that stay, separate processes on this machine")
    with tempfile.TemporaryDirectory(prefix="bench-service-") as folder:
        work = Path(folder)
        cluster = Cluster(work, workers=2)
        try:
            cluster.wait(cluster.submit(books or small_inputs(work), work / "warm-up").job_id)
            if args.only in (None, "latency"):
                bench_latency(work, cluster, books, args.rounds)
            if args.only in (None, "throughput"):
                bench_throughput(work, cluster, args.jobs)
            if args.only in (None, "soak"):
                bench_soak(work, cluster, args.soak)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
