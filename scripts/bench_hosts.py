"""Word count on several hosts with no shared filesystem, next to the same job on one host.

Builds a virtual network (mapreduce.tools.vnet: one network namespace per host, needs
root), runs the coordinator on h1, and compares, interleaved over several runs:

  N hosts   one worker on each of h2..h(N+1), each in a mount namespace where the
            input and output folders are hidden: input is served by the
            coordinator, map output moves worker to worker, reduce output is
            pulled back by the coordinator;
  1 host    the coordinator and N workers on h1, reading and writing directly.

Prints the median wall time of each (coordinator start to exit), and the bytes
that crossed the network through the coordinator and worker to worker (from the
job's event log). Every run's output is compared with `mapreduce seq`.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import mapreduce

from mapreduce.net import security
from mapreduce.tools import vnet
from mapreduce.tools.corpus import write_corpus

GUTENBERG = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "gutenberg"
PORT = 5555


def run_job(
    net: vnet.VirtualNetwork, inputs: list[str], out: Path, events: Path, spread: bool, workers: int, args: list[str]
) -> float:
    coordinator_host = net.hosts[0]
    endpoint = f"tcp://{coordinator_host.address}:{PORT}"
    hide = sorted({str(Path(f).resolve().parent) for f in inputs} | {str(out.parent)})
    keys = ["--key-dir", str(net.scratch_root / "keys")]
    started = time.monotonic()
    coordinator = subprocess.Popen(
        net.command(
            coordinator_host,
            mapreduce(
                "coordinator",
                "wordcount",
                *inputs,
                "--output",
                str(out),
                "--bind",
                endpoint,
                "--events",
                str(events),
                "-q",
                *keys,
                *args,
            ),
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    processes = []
    for i in range(workers):
        host = net.hosts[1 + i] if spread else coordinator_host
        worker = mapreduce(
            "worker", "--connect", endpoint, "--name", f"w{i}", "--scratch", str(host.scratch / f"scratch-{i}"), *keys
        )
        processes.append(
            subprocess.Popen(net.command(host, worker, hide=hide if spread else ()), stderr=subprocess.DEVNULL)
        )
    try:
        code = coordinator.wait(timeout=600)
        seconds = time.monotonic() - started
        if code != 0:
            raise SystemExit(f"the coordinator failed ({code}): {coordinator.stderr.read()}")
        for p in processes:
            p.wait(timeout=60)
    finally:
        for p in [coordinator, *processes]:
            if p.poll() is None:
                p.kill()
                p.wait()
    return seconds


def network_bytes(events: Path) -> dict[str, int]:
    with open(events) as f:
        finished = [e for e in map(json.loads, f) if e["event"] == "job_finished"][-1]
    return {k: finished[k] for k in ("input_fetched", "shuffle_fetched", "output_pulled")}


def same(expected: Path, actual: Path) -> bool:
    names = sorted(os.listdir(expected))
    return names == sorted(os.listdir(actual)) and all(
        filecmp.cmp(expected / n, actual / n, shallow=False) for n in names
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="*", help="input files (default: the Gutenberg books, else a generated corpus)")
    parser.add_argument("--hosts", type=int, default=3, help="worker hosts (and workers on the one host)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--reduce", type=int, default=8)
    parser.add_argument(
        "--corpus-size", type=int, default=50_000_000, help="bytes of generated text when no inputs are given"
    )
    options = parser.parse_args()
    reason = vnet.available()
    if reason is not None:
        raise SystemExit(f"cannot build a virtual network here: {reason}")

    with tempfile.TemporaryDirectory(prefix="bench-hosts-") as tmp_name:
        tmp = Path(tmp_name)
        inputs = options.inputs or [str(p) for p in sorted(GUTENBERG.glob("*.txt"))]
        if not inputs:
            inputs = [str(p) for p in write_corpus(tmp / "corpus", options.corpus_size, 8, seed=1)]
        data = tmp / "data"  # a copy the worker hosts cannot see (the originals' folder may hold more)
        data.mkdir()
        copies = []
        for i, path in enumerate(inputs):
            copy = data / f"{i:03d}-{Path(path).name}"
            copy.write_bytes(Path(path).read_bytes())
            copies.append(str(copy))
        size = sum(os.path.getsize(p) for p in copies)
        args = ["--reduce", str(options.reduce)]
        expected = tmp / "seq"
        subprocess.run(mapreduce("seq", "wordcount", *copies, "--output", str(expected), *args), check=True)

        print(
            f"machine: {os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python "
            f"{platform.python_version()}"
        )
        print(
            f"input: {len(copies)} files, {size / 1e6:.1f} MB; {options.reduce} reduces; {options.runs} runs, "
            "interleaved"
        )
        variants = {f"{options.hosts} hosts, 1 worker each": True, f"1 host, {options.hosts} workers": False}
        times: dict[str, list[float]] = {name: [] for name in variants}
        moved: dict[str, dict[str, int]] = {}
        with vnet.VirtualNetwork(options.hosts + 1, scratch_root=tmp / "hosts") as net:
            security.generate(net.scratch_root / "keys")  # every connection encrypted and authenticated
            for run in range(options.runs):
                for name, spread in variants.items():
                    out_parent = tmp / f"out-{run}-{spread}"
                    out_parent.mkdir()
                    out, events = out_parent / "out", out_parent / "events.jsonl"
                    times[name].append(run_job(net, copies, out, events, spread, options.hosts, args))
                    if not same(expected, out):
                        raise SystemExit(f"{name}: output differs from mapreduce seq")
                    moved[name] = network_bytes(events)
        base = statistics.median(times[f"1 host, {options.hosts} workers"])
        print(f"\n{'setup':<26}{'median':>9}{'min':>8}{'ratio':>7}{'via coordinator':>17}{'worker to worker':>18}")
        for name in variants:
            median = statistics.median(times[name])
            m = moved[name]
            via = (m["input_fetched"] + m["output_pulled"]) / 1e6
            print(
                f"{name:<26}{median:>8.2f}s{min(times[name]):>7.2f}s{median / base:>7.2f}{via:>14.1f} "
                f"MB{m['shuffle_fetched'] / 1e6:>15.1f} MB"
            )
        print(
            "\nvia coordinator: input the coordinator served plus reduce output it pulled; "
            "worker to worker: map output fetched by reducers. All outputs matched mapreduce seq."
        )


if __name__ == "__main__":
    sys.exit(main())
