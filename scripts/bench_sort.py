"""Sorting the Sort Benchmark's records: mapreduce next to GNU sort, plain Python and the peers.

Input: `mapreduce gensort` records (100-byte ASCII lines, the reference tool's bytes), made
once per size in the work folder. Every system's output is checked with valsort: in key
order, and the input's record count and checksum (a fast wrong answer is a failure). Runs
are interleaved; the table gives the median wall time, the time per GB, the peak RSS of the
largest process, and ratios against GNU sort and the single-process Python sort.

Systems (peers are skipped with a note when not installed: `scripts/bench --install-peers`):
  gnu-sort         LC_ALL=C sort -S 2G --parallel=W (C, in memory)
  python-sort      one process: read every line, list.sort(), write
  mapreduce        `mapreduce run sort --workers W` (total order, the part files concatenated)
  pyspark          PySpark RDD sortByKey, local[W], saved as text
  dask             dask.dataframe sort_values on W worker processes (dask.distributed)

  scripts/bench sort --gigabytes 1 --runs 3          one size, every system
  scripts/bench sort --scale 0.25,1,4 --runs 1       mapreduce alone at several sizes
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import mapreduce

from mapreduce.tools.gensort import RECORD, gensort, record_files, valsort

SYSTEMS = ["gnu-sort", "python-sort", "mapreduce", "pyspark", "dask"]
NEEDS = {"pyspark": "pyspark", "dask": "distributed"}

PYTHON_SORT = """
import sys
from pathlib import Path
lines = []
for path in sorted(Path(sys.argv[1]).iterdir()):
    with open(path, "rb") as f:
        lines.extend(f.read().splitlines(keepends=True))
lines.sort()
with open(Path(sys.argv[2]) / "part-00000", "wb") as f:
    f.writelines(lines)
"""

PYSPARK_SORT = """
import sys
from pyspark import SparkConf, SparkContext
workers, src, out = sys.argv[1], sys.argv[2], sys.argv[3]
conf = SparkConf().setMaster(f"local[{workers}]").setAppName("sort").set("spark.ui.enabled", "false")
sc = SparkContext(conf=conf)
sc.setLogLevel("ERROR")
lines = sc.textFile(src)  # lines without their newline; each record ends in a CR that stays
lines.map(lambda line: (line, None)).sortByKey().keys().saveAsTextFile(out)
sc.stop()
"""

DASK_SORT = """
import sys
import dask.dataframe as dd
from dask.distributed import Client, LocalCluster
workers, src, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
if __name__ == "__main__":
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, Client(cluster):
        frame = dd.read_csv(src + "/*", header=None, names=["line"], sep="\\x01", dtype=str,
                            lineterminator="\\n", blocksize="64MB", quoting=3, keep_default_na=False)
        ordered = frame.sort_values("line")
        ordered.to_csv(out + "/part-*.txt", index=False, header=False, quoting=3, lineterminator="\\n",
                       sep="\\x01", name_function=lambda i: f"{i:05d}")
"""


def have(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def command(system: str, workers: int, src: Path, out: Path, work: Path) -> list[str]:
    if system == "gnu-sort":
        return ["sh", "-c", f'LC_ALL=C exec sort -S 2G --parallel={workers} "{src}"/* > "{out}/part-00000"']
    if system == "python-sort":
        return [sys.executable, "-c", PYTHON_SORT, str(src), str(out)]
    if system == "mapreduce":
        args = ["run", "sort", str(src), "--output", str(out), "--workers", str(workers), "--reduce", "8"]
        return mapreduce(*args, "--overwrite", "--quiet")
    script = work / f"sort_with_{system}.py"  # not {system}.py: it would shadow the package
    script.write_text(PYSPARK_SORT if system == "pyspark" else DASK_SORT)
    return [sys.executable, str(script), str(workers), str(src), str(out)]


def run_once(system: str, workers: int, src: Path, work: Path) -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of the largest process; the output checked by valsort."""
    out = work / f"out-{system}"
    shutil.rmtree(out, ignore_errors=True)
    if system != "pyspark":  # Spark makes its output folder itself
        out.mkdir()
    started = time.monotonic()
    process = subprocess.Popen(command(system, workers, src, out, work), cwd=work, stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{system} failed (exit {os.waitstatus_to_exitcode(status)})")
    check(system, out, src)
    shutil.rmtree(out, ignore_errors=True)
    return wall, usage.ru_maxrss / 1024


def check(system: str, out: Path, src: Path) -> None:
    """valsort: the output in order, and the input's records. Spark reads a CR LF line end as
    one and writes LF: its lines get their CR back (outside the timed run) before the check."""
    outputs = sorted_outputs(out)
    if system == "pyspark":
        restored = out / "restored.records"
        with open(restored, "wb") as f:
            for path in outputs:
                f.writelines(line.rstrip(b"\r\n") + b"\r\n" for line in open(path, "rb"))
        outputs = [restored]
    sorted_ = valsort(outputs)
    given = valsort(record_files(src))
    if sorted_.unordered is not None or (sorted_.records, sorted_.checksum) != (given.records, given.checksum):
        raise SystemExit(f"{system}: valsort says no: {sorted_.describe()} (input: {given.describe()})")


def sorted_outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if p.is_file() and not p.name.startswith(("_", ".")) and p.stat().st_size)


def make_input(work: Path, gigabytes: float, files: int) -> Path:
    total = int(gigabytes * 1e9 / RECORD)
    src = work / f"gensort-{total}"
    if not src.exists():
        print(f"generating {total} records ({total * RECORD / 1e9:.2f} GB) in {files} files", flush=True)
        gensort(total, src, files)
    return src


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def compare(args: argparse.Namespace, work: Path) -> None:
    src = make_input(work, args.gigabytes, args.files)
    systems = [s for s in args.systems.split(",") if s]
    for system in list(systems):
        if system in NEEDS and not have(NEEDS[system]):
            print(f"skipped {system}: not installed (scripts/bench --install-peers)")
            systems.remove(system)
    results: dict[str, list[tuple[float, float]]] = {s: [] for s in systems}
    for _ in range(args.runs):  # interleaved: a drift of the machine's speed hits every system
        for system in systems:
            results[system].append(run_once(system, args.workers, src, work))
    size = sum(p.stat().st_size for p in record_files(src)) / 1e9
    print(f"machine: {machine()}")
    print(f"input: {size:.2f} GB of gensort records in {args.files} files; {args.workers} workers; "
          f"median of {args.runs} interleaved runs; every output passed valsort")  # fmt: skip
    medians = {s: statistics.median(w for w, _ in runs) for s, runs in results.items()}
    print(f"{'system':<12} {'wall s':>8} {'s per GB':>9} {'peak MB':>8} {'vs gnu-sort':>12} {'vs python':>10}")
    for system, runs in results.items():
        wall, peak = medians[system], max(m for _, m in runs)
        vs_gnu = f"{wall / medians['gnu-sort']:.2f}x" if "gnu-sort" in medians else "-"
        vs_py = f"{wall / medians['python-sort']:.2f}x" if "python-sort" in medians else "-"
        print(f"{system:<12} {wall:>8.2f} {wall / size:>9.2f} {peak:>8.0f} {vs_gnu:>12} {vs_py:>10}")


def scale(args: argparse.Namespace, work: Path) -> None:
    print(f"machine: {machine()}")
    print(f"mapreduce run sort, {args.workers} workers; median of {args.runs}; every output passed valsort")
    print(f"{'GB':>6} {'wall s':>8} {'s per GB':>9} {'peak MB':>8}")
    for gigabytes in (float(g) for g in args.scale.split(",")):
        src = make_input(work, gigabytes, args.files)
        runs = [run_once("mapreduce", args.workers, src, work) for _ in range(args.runs)]
        wall = statistics.median(w for w, _ in runs)
        size = sum(p.stat().st_size for p in record_files(src)) / 1e9
        print(f"{size:>6.2f} {wall:>8.2f} {wall / size:>9.2f} {max(m for _, m in runs):>8.0f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=1.0, help="input size (default 1: 10^7 records)")
    parser.add_argument("--files", type=int, default=16, help="input files (default 16)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--scale", default="", help="sizes in GB, e.g. 0.25,1,4: mapreduce alone at each")
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mapreduce-bench-sort-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.scale:
            scale(args, work)
        else:
            compare(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
