"""Word count throughput: mapreduce next to the best plain-Python word counts and the peers.

Every system counts the same corpus; each answer is checked against `mapreduce seq`
(a fast wrong answer is a failure); runs are interleaved; the table gives the median
wall time, MB/s, the speedup against the best single-process Python, and the peak RSS
of the largest process. Results go to a JSON file for plotting.

Systems (peers are skipped with a note when not installed; `pip install .[bench]`):
  python-best      one process: bytes.translate + split + Counter (exact on ASCII only)
  python-regex     one process: the letters regex [^\\W\\d_]+ + Counter
  mp-pool          multiprocessing.Pool(W), bytes.translate, one task per file
  mapreduce        `mapreduce run wordcount --workers W`
  mapreduce-streaming  `mapreduce streaming` with a Python mapper and reducer script (same tokenizer)
  mapreduce-mrjob  `mapreduce mrjob` running an mrjob word count job (same tokenizer)
  dask-bag         dask.bag, processes scheduler, one partition per file
  dask-distributed dask.distributed LocalCluster(W workers x 1 thread)
  ray              ray, one task per file
  pyspark-rdd      PySpark RDD local[W]
  mrjob            mrjob's local runner, the same mrjob job
The peers use mapreduce's exact tokenizer (plain Python), so all answer the same question.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SYSTEMS = [
    "python-best",
    "python-regex",
    "mp-pool",
    "mapreduce",
    "mapreduce-streaming",
    "mapreduce-mrjob",
    "dask-bag",
    "dask-distributed",
    "ray",
    "pyspark-rdd",
]  # mrjob: add it by name (minutes per run)
NEEDS = {
    "dask-bag": "dask",
    "dask-distributed": "distributed",
    "ray": "ray",
    "pyspark-rdd": "pyspark",
    "mrjob": "mrjob",
    "mapreduce-mrjob": "mrjob",
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def installed(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True).returncode == 0


def make_corpus(folder: Path, size: int, files: int, books: Path | None) -> list[str]:
    """The Gutenberg books concatenated and copied (as in the issue's bar), or generated text."""
    folder.mkdir(parents=True, exist_ok=True)
    if books is not None and any(books.glob("*.txt")):
        whole = b"".join(p.read_bytes() for p in sorted(books.glob("*.txt")))
        per_file = size // files
        body = (whole * (per_file // len(whole) + 1))[:per_file]
        body = body[: body.rfind(b"\n") + 1]
        for i in range(files):
            (folder / f"book-{i:03d}.txt").write_bytes(body)
    else:
        from mapreduce.tools.corpus import write_corpus

        write_corpus(folder, size, files)
    return sorted(str(p) for p in folder.glob("*.txt"))


def run_system(system: str, inputs: list[str], workers: int, work: Path) -> dict:
    """Run one system in a fresh process (bench_systems.py); return its timing and counts file."""
    result_file = work / f"{system}.json"
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, str(HERE / "bench_systems.py"), system, str(workers), str(work), str(result_file), *inputs],
        capture_output=True,
        text=True,
        # Not the project's folder: peers' worker processes would import its source tree, not the installed package.
        cwd=work,
    )
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {
            "system": system,
            "ok": False,
            "error": proc.stderr.strip().splitlines()[-1:] or ["failed"],
            "wall": wall,
        }
    measured = json.loads(result_file.read_text())
    return {"system": system, "wall": wall, **measured}


def check(counts_file: str, oracle: dict) -> str:
    with open(counts_file) as f:
        counts = json.load(f)
    if counts == oracle:
        return "exact"
    wrong = sum(1 for w in set(counts) | set(oracle) if counts.get(w) != oracle.get(w))
    return f"wrong on {wrong} words"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=200, help="corpus size in MB (default 200)")
    parser.add_argument("--files", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument(
        "--books",
        type=Path,
        default=HERE.parent.parent / "shared" / "data" / "gutenberg",
        help="folder of .txt books to build the corpus from (generated text if absent)",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-wordcount.json"), help="where to write the results")
    args = parser.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    skipped = {s: NEEDS[s] for s in systems if s in NEEDS and not installed(NEEDS[s])}
    systems = [s for s in systems if s not in skipped]
    with tempfile.TemporaryDirectory(prefix="mapreduce-bench-") as tmp:
        work = Path(tmp)
        inputs = make_corpus(work / "corpus", args.size * 1_000_000, args.files, args.books)
        megabytes = sum(os.path.getsize(p) for p in inputs) / 1e6
        subprocess.run(
            [sys.executable, "-P", "-m", "mapreduce", "seq", "wordcount", *inputs, "--output", str(work / "oracle")],
            check=True,
        )
        oracle = {}
        for part in sorted((work / "oracle").glob("part-*")):
            for line in part.read_text(encoding="utf-8").splitlines():
                word, count = line.split("\t")
                oracle[word] = int(count)
        rows: dict[str, list[dict]] = {s: [] for s in systems}
        for _ in range(args.runs):
            for system in systems:
                result = run_system(system, inputs, args.workers, work)
                if result.get("counts"):
                    result["check"] = check(result.pop("counts"), oracle)
                rows[system].append(result)
    report(rows, skipped, args, megabytes)
    return 0 if all(r.get("check") == "exact" for s, rs in rows.items() for r in rs if s != "python-best") else 1


def report(rows: dict, skipped: dict, args, megabytes: float) -> None:
    print(f"machine: {os.cpu_count()} CPUs, {cpu_model()}, Python {platform.python_version()}")
    print(
        f"corpus: {megabytes:.0f} MB in {args.files} files; {args.workers} workers where a system has workers; "
        f"median of {args.runs} interleaved runs"
    )
    base = None
    if rows.get("python-best") and all("wall" in r and r.get("check") for r in rows["python-best"]):
        base = statistics.median(r["wall"] for r in rows["python-best"])
    print(f"{'system':<18} {'wall s':>8} {'MB/s':>7} {'speedup':>8} {'peak RSS MB':>12}  check")
    results = []
    for system, runs in rows.items():
        good = [r for r in runs if "check" in r]
        if not good:
            print(f"{system:<18} {'failed':>8}  {runs[0].get('error')}")
            continue
        wall = statistics.median(r["wall"] for r in good)
        rss = max(r.get("peak_rss_mb", 0) for r in good)
        speedup = f"{base / wall:.2f}x" if base else "-"
        checks = sorted({r["check"] for r in good})
        print(f"{system:<18} {wall:>8.2f} {megabytes / wall:>7.1f} {speedup:>8} {rss:>12.0f}  {', '.join(checks)}")
        results.append(
            {
                "system": system,
                "workers": args.workers,
                "wall_median": wall,
                "walls": [r["wall"] for r in good],
                "mb_per_s": megabytes / wall,
                "peak_rss_mb": rss,
                "check": checks,
            }
        )
    for system, module in skipped.items():
        print(f"{system:<18} skipped: {module} is not installed (pip install .[bench])")
    # Ratios pair the runs of one round (interleaved, so seconds apart): on a machine whose speed
    # drifts, their median is steadier than the ratio of two medians.
    ratios = {}
    for other in ("python-best", "mp-pool"):
        pairs = [
            mr["wall"] / o["wall"]
            for mr, o in zip(rows.get("mapreduce", []), rows.get(other, []))
            if "check" in mr and "check" in o
        ]
        if pairs:
            ratios[f"mapreduce / {other}"] = {"median": statistics.median(pairs), "min": min(pairs), "max": max(pairs)}
    for name, ratio in ratios.items():
        print(
            f"{name}: {ratio['median']:.2f} (median of {args.runs} rounds' ratios; range "
            f"{ratio['min']:.2f}-{ratio['max']:.2f})"
        )
    args.json.write_text(
        json.dumps(
            {
                "machine": {"cpus": os.cpu_count(), "cpu": cpu_model()},
                "megabytes": megabytes,
                "results": results,
                "ratios": ratios,
            },
            indent=2,
        )
    )
    print(f"results written to {args.json}")


if __name__ == "__main__":
    sys.exit(main())
