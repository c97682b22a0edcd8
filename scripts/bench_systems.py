"""One benchmark run of one word-count system, in a process of its own (see bench_wordcount.py).

Usage: bench_systems.py SYSTEM WORKERS WORKDIR RESULT.json FILE...
Writes {"counts": path of a JSON word -> count file, "peak_rss_mb": largest process}.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
from collections import Counter
from operator import add
from pathlib import Path

from mapreduce.apps.wordcount import count_words

ASCII_LETTERS = bytes(b if (65 <= b <= 90 or 97 <= b <= 122) else 32 for b in range(256))


def count_file(path: str) -> dict:
    """The exact tokenizer mapreduce uses, for the systems that run Python functions."""
    with open(path, "rb") as f:
        return count_words(f.read().decode("utf-8", "replace"))


def merge(counts) -> Counter:
    total: Counter = Counter()
    for c in counts:
        total.update(c)
    return total


def python_best(files, workers, work):
    total: Counter = Counter()
    for path in files:
        with open(path, "rb") as f:
            total.update(f.read().translate(ASCII_LETTERS).split())
    return {k.decode("ascii"): v for k, v in total.items()}


def python_regex(files, workers, work):
    letters = re.compile(r"[^\W\d_]+")
    total: Counter = Counter()
    for path in files:
        with open(path, encoding="utf-8", errors="replace") as f:
            total.update(letters.findall(f.read()))
    return total


def mp_pool(files, workers, work):
    import multiprocessing

    with multiprocessing.Pool(workers) as pool:
        return merge(pool.imap_unordered(count_file, files))


def mapreduce(files, workers, work):
    out = Path(work) / "mapreduce-out"
    job = ["run", "wordcount", *files, "--workers", str(workers), "--output", str(out), "--overwrite", "--quiet"]
    subprocess.run([sys.executable, "-P", "-m", "mapreduce", *job], check=True)
    return read_counts(out)


# A streaming word count in Python scripts, with the same tokenizer (in-mapper combining).
STREAMING_MAPPER = """import sys
from mapreduce.apps.wordcount import count_words
for word, n in count_words(sys.stdin.read()).items():
    print(word, n, sep="\\t")
"""
STREAMING_REDUCER = """import sys
from itertools import groupby
pairs = (line.rstrip("\\n").split("\\t") for line in sys.stdin)
for word, group in groupby(pairs, key=lambda pair: pair[0]):
    print(word, sum(int(n) for _, n in group), sep="\\t")
"""


def mapreduce_streaming(files, workers, work):
    out = Path(work) / "streaming-out"
    scripts = []
    for name, text in (("wc_mapper.py", STREAMING_MAPPER), ("wc_reducer.py", STREAMING_REDUCER)):
        (Path(work) / name).write_text(text)
        scripts += ["--file", str(Path(work) / name)]
    job = [
        "streaming",
        *(arg for path in files for arg in ("--input", path)),
        *("--mapper", f"{sys.executable} wc_mapper.py", "--reducer", f"{sys.executable} wc_reducer.py"),
        *scripts,
        *("--workers", str(workers), "--output", str(out), "--overwrite", "--quiet"),
    ]
    subprocess.run([sys.executable, "-P", "-m", "mapreduce", *job], check=True)
    return read_counts(out)


def read_counts(out: Path) -> dict:
    counts = {}
    for part in sorted(out.glob("part-*")):
        with open(part, encoding="utf-8") as f:
            for line in f:
                word, n = line.rstrip("\n").split("\t")
                counts[word] = int(n)
    return counts


def dask_bag(files, workers, work):
    import dask.bag as db

    bag = db.from_sequence(files, npartitions=len(files)).map(count_file)
    return merge(bag.compute(scheduler="processes", num_workers=workers))


def dask_distributed(files, workers, work):
    from distributed import Client, LocalCluster

    with (
        LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None, host="127.0.0.1"
        ) as cluster,
        Client(cluster) as client,
    ):
        return merge(client.gather(client.map(count_file, files)))


def ray_tasks(files, workers, work):
    import ray

    ray.init(num_cpus=workers, include_dashboard=False, logging_level="ERROR", _node_ip_address="127.0.0.1")
    try:
        task = ray.remote(count_file)
        return merge(ray.get([task.remote(f) for f in files]))
    finally:
        ray.shutdown()


def pyspark_rdd(files, workers, work):
    import os

    os.environ["PYSPARK_PYTHON"] = sys.executable  # its Python workers must find mapreduce's tokenizer
    os.environ["SPARK_LOCAL_IP"] = "127.0.0.1"  # loopback only
    from pyspark import SparkConf, SparkContext

    conf = SparkConf().setMaster(f"local[{workers}]").setAppName("wordcount").set("spark.ui.enabled", "false")
    sc = SparkContext(conf=conf)
    sc.setLogLevel("ERROR")
    try:
        pairs = sc.parallelize(files, len(files)).flatMap(lambda f: count_file(f).items()).reduceByKey(add)
        return dict(pairs.collect())
    finally:
        sc.stop()


# An mrjob word count with the same tokenizer, in-mapper combining (mrjob's idiom for it).
MRJOB_WORDCOUNT = """from collections import Counter

from mrjob.job import MRJob
from mrjob.protocol import TextProtocol

from mapreduce.apps.wordcount import count_words


class MRWordCount(MRJob):
    OUTPUT_PROTOCOL = TextProtocol

    def mapper_init(self):
        self.counts = Counter()

    def mapper(self, _, line):
        self.counts.update(count_words(line))

    def mapper_final(self):
        yield from self.counts.items()

    def combiner(self, word, counts):
        yield word, sum(counts)

    def reducer(self, word, counts):
        yield word, str(sum(counts))


if __name__ == "__main__":
    MRWordCount.run()
"""


def mrjob_script(work) -> Path:
    script = Path(work) / "mr_bench_wordcount.py"
    script.write_text(MRJOB_WORDCOUNT)
    return script


def mrjob_local(files, workers, work):
    out = Path(work) / "mrjob-local-out"
    command = [sys.executable, str(mrjob_script(work)), "-r", "local", "--no-conf", "--num-cores", str(workers)]
    subprocess.run([*command, "--output-dir", str(out), "--no-output", *files], check=True, stderr=subprocess.DEVNULL)
    return read_counts(out)


def mapreduce_mrjob(files, workers, work):
    out = Path(work) / "mapreduce-mrjob-out"
    job = ["mrjob", "--workers", str(workers), "--output", str(out), "--overwrite", "--quiet", str(mrjob_script(work))]
    subprocess.run([sys.executable, "-P", "-m", "mapreduce", *job, *files], check=True)
    return read_counts(out)


SYSTEMS = {
    "python-best": python_best,
    "python-regex": python_regex,
    "mp-pool": mp_pool,
    "mapreduce": mapreduce,
    "mapreduce-streaming": mapreduce_streaming,
    "mapreduce-mrjob": mapreduce_mrjob,
    "dask-bag": dask_bag,
    "dask-distributed": dask_distributed,
    "ray": ray_tasks,
    "pyspark-rdd": pyspark_rdd,
    "mrjob": mrjob_local,
}


def main() -> None:
    system, workers, work, result, *files = sys.argv[1:]
    counts = SYSTEMS[system](files, int(workers), work)
    counts_file = Path(work) / f"{system}-counts.json"
    counts_file.write_text(json.dumps(dict(counts)))
    peak_kb = max(
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    )
    Path(result).write_text(json.dumps({"counts": str(counts_file), "peak_rss_mb": peak_kb / 1024}))


if __name__ == "__main__":
    main()
