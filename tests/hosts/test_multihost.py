"""Several hosts with no shared filesystem, and network partitions, on a virtual network.

Each "host" is a network namespace with its own address (mapreduce.tools.vnet). The
coordinator runs on h1 and sees the inputs and the output folder; workers run on
h2..h4, each in a mount namespace of its own where the test's folders and the
input folder are hidden under empty tmpfs mounts, so everything they read or
write elsewhere crosses the network. Partitions are made by setting a host's
link down. Tests wait on the event log with generous bounds.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    APPS,
    GUTENBERG,
    SLEEPY,
    assert_same_output,
    coordinator_args,
    event_log,
    mapreduce_command,
    of,
    wait_for_log,
    words_file,
)
from mapreduce.net import security
from mapreduce.tools import vnet

REASON = vnet.available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no virtual network here: {REASON}")

PORT = 5555
FAST = ["--heartbeat-interval", "0.3"]


class Hosts:
    """A coordinator on the first host, workers on the others, and the job's event log."""

    def __init__(self, net: vnet.VirtualNetwork, tmp_path: Path, hide: list[Path]):
        self.net, self.tmp = net, tmp_path
        self.hide = [tmp_path, *hide]
        self.out, self.events = tmp_path / "out", tmp_path / "events.jsonl"
        self.endpoint = f"tcp://{net.hosts[0].address}:{PORT}"
        self.keys = net.scratch_root / "keys"  # seen by every host; the hidden folders are not
        if not self.keys.exists():
            security.generate(self.keys)
        self.processes: list[subprocess.Popen] = []
        self.coordinator: subprocess.Popen | None = None

    def _start(self, argv: list[str]) -> subprocess.Popen:
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def start_coordinator(self, app: str, inputs: list[str], *args: str) -> None:
        command = mapreduce_command(
            *coordinator_args(app, inputs, self.out, self.endpoint, self.events),
            "--key-dir",
            str(self.keys),
            *FAST,
            "--worker-timeout",
            "2",
            *args,
        )
        self.coordinator = self._start(self.net.command(self.net.hosts[0], command))

    def start_worker(self, host: vnet.Host, *args: str) -> subprocess.Popen:
        command = mapreduce_command(
            "worker",
            "--connect",
            self.endpoint,
            "--name",
            host.name,
            "--scratch",
            str(host.scratch / "scratch"),
            "--key-dir",
            str(self.keys),
            *FAST,
            "--coordinator-timeout",
            "30",
            *args,
        )
        return self._start(self.net.command(host, command, hide=self.hide))

    def log(self) -> list[dict]:
        return event_log(self.events)

    def wait_for(self, predicate, what: str, timeout: float = 90) -> list[dict]:
        return wait_for_log(self.events, predicate, what, self.coordinator, self.coordinator.stderr.read, timeout)

    def finish(self, timeout: float = 120) -> tuple[list[dict], str]:
        code = self.coordinator.wait(timeout=timeout)
        stderr = self.coordinator.stderr.read()
        assert code == 0, stderr
        return self.log(), stderr

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


def worker_ids(log: list[dict], name: str) -> list[int]:
    """Every incarnation of the worker named ``name``, oldest first."""
    return [e["worker"] for e in log if e["event"] == "worker_joined" and e["name"] == name]


@pytest.fixture
def hosts(tmp_path):
    net = vnet.VirtualNetwork(4, scratch_root=Path("/tmp") / f"mapreduce-vnet-test-{os.getpid()}-{time.monotonic_ns()}")
    made: list[Hosts] = []

    def make(hide: list[Path] = ()) -> Hosts:
        h = Hosts(net, tmp_path, list(hide))
        made.append(h)
        return h

    with net:
        try:
            yield make
        finally:
            for h in made:
                h.stop_all()


def test_three_worker_hosts_without_the_coordinators_files_match_seq(hosts, gutenberg, oracle):
    expected = oracle("wordcount", gutenberg, "--reduce", "6", "--split-size", "1M")
    cluster = hosts(hide=[GUTENBERG.resolve()])
    cluster.start_coordinator("wordcount", gutenberg, "--reduce", "6", "--split-size", "1M", "--min-workers", "3")
    workers = [cluster.start_worker(host) for host in cluster.net.hosts[1:]]
    log, stderr = cluster.finish()
    assert_same_output(expected, cluster.out)
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    finished = of(log, "task_finished")
    names = {e["worker"]: e["name"] for e in of(log, "worker_joined")}
    assert {names[e["worker"]] for e in finished} == {"h2", "h3", "h4"}  # every host took part
    assert sum(e["fetched"] for e in finished if e["phase"] == "map") >= sum(os.path.getsize(f) for f in gutenberg)
    assert sum(e["fetched"] for e in finished if e["phase"] == "reduce") > 0
    assert "through the coordinator" in stderr and "worker to worker" in stderr


def test_compressed_inputs_in_a_folder_and_gzip_output_cross_the_network(hosts, gutenberg, oracle, tmp_path):
    """The workers see neither the inputs nor the output folder: they fetch archives through
    the coordinator and decompress them, and their gzip parts are pulled back, byte for byte seq's."""
    import bz2
    import gzip
    import lzma

    folder = tmp_path / "books"
    folder.mkdir()
    for book, (suffix, compress) in zip(gutenberg, [(".gz", gzip.compress), (".bz2", bz2.compress),
                                                    (".xz", lzma.compress), ("", bytes)]):  # fmt: skip
        (folder / (Path(book).name + suffix)).write_bytes(compress(Path(book).read_bytes()))
    (folder / "_SUCCESS").write_text("")
    args = ["--reduce", "4", "--split-size", "200k", "--compress", "gzip"]
    expected = oracle("wordcount", [str(folder)], *args)
    cluster = hosts()
    cluster.start_coordinator("wordcount", [str(folder)], *args, "--min-workers", "3")
    workers = [cluster.start_worker(host) for host in cluster.net.hosts[1:]]
    log, _ = cluster.finish()
    assert_same_output(expected, cluster.out)
    assert sorted(os.listdir(cluster.out)) == ["_SUCCESS", *(f"part-0000{p}.gz" for p in range(4))]
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    finished = of(log, "task_finished")
    inputs = sum(p.stat().st_size for p in folder.iterdir())
    assert sum(e["fetched"] for e in finished if e["phase"] == "map") >= inputs  # every archive crossed


def test_side_files_reach_workers_that_cannot_see_them(hosts, gutenberg, oracle, tmp_path):
    """--file from a folder the worker hosts cannot see: each worker fetches it once from the
    coordinator's data server into its task folder, and every task opens it by name."""
    app = str(APPS / "sidefile.py")
    keep = tmp_path / "keep.txt"
    keep.write_text("whale holmes gregor the\n")
    args = ["--reduce", "2", "--split-size", "1M", "--file", str(keep)]
    expected = oracle(app, gutenberg, *args)
    cluster = hosts(hide=[GUTENBERG.resolve()])
    cluster.start_coordinator(app, gutenberg, *args, "--min-workers", "3")
    workers = [cluster.start_worker(host) for host in cluster.net.hosts[1:]]
    cluster.finish()
    assert_same_output(expected, cluster.out)
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]


def sleepy_job_on_the_worker_hosts(hosts, tmp_path, oracle, n_inputs: int, *params: str):
    """A SLEEPY job with a worker on every host but the coordinator's; no speculation, since
    these tests time their cuts. Returns the cluster, the inputs and the expected output."""
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(n_inputs)]
    expected = oracle(SLEEPY, inputs, *params)
    cluster = hosts()
    cluster.start_coordinator(SLEEPY, inputs, *params, "--no-speculation")
    for host in cluster.net.hosts[1:]:
        cluster.start_worker(host)
    return cluster, inputs, expected


def test_worker_host_cut_off_mid_map_is_declared_dead_and_fenced_when_back(hosts, tmp_path, oracle):
    cluster, _, expected = sleepy_job_on_the_worker_hosts(
        hosts, tmp_path, oracle, 5, "--reduce", "3", "--param", "map_seconds=2"
    )
    h2 = cluster.net.hosts[1]
    log = cluster.wait_for(
        lambda log: worker_ids(log, "h2") and of(log, "task_assigned", worker=worker_ids(log, "h2")[0], phase="map"),
        "a map on h2",
    )
    old = worker_ids(log, "h2")[0]
    cut_attempt = of(log, "task_assigned", worker=old, phase="map")[0]
    cluster.net.cut(h2)
    cluster.wait_for(lambda log: of(log, "worker_dead", worker=old), "h2 declared dead")
    cluster.net.heal(h2)
    cluster.wait_for(lambda log: len(worker_ids(log, "h2")) >= 2, "h2 registered again")
    log, _ = cluster.finish()
    assert_same_output(expected, cluster.out)
    assert of(log, "task_lost", attempt=cut_attempt["attempt"])
    died = of(log, "worker_dead", worker=old)[0]["t"]
    after = [e["event"] for e in log if e.get("worker") == old and e["t"] > died]
    assert set(after) <= {"message_fenced"}, f"the dead incarnation's messages were used: {after}"
    assert not of(log, "task_finished", attempt=cut_attempt["attempt"])  # its late result never counts
    assert of(log, "task_finished", task=cut_attempt["task"], phase="map")  # the map ran again elsewhere


def test_worker_host_cut_off_after_its_maps_while_reducers_need_them(hosts, tmp_path, oracle):
    cluster, inputs, expected = sleepy_job_on_the_worker_hosts(
        hosts, tmp_path, oracle, 6, "--reduce", "6", "--param", "reduce_seconds=0.3"
    )
    log = cluster.wait_for(lambda log: len(of(log, "task_finished", phase="map")) == len(inputs), "every map done")
    names = {e["worker"]: e["name"] for e in of(log, "worker_joined")}
    mapper = names[of(log, "task_finished", phase="map")[0]["worker"]]
    victim = cluster.net.host(mapper)
    cluster.net.cut(victim)
    log, _ = cluster.finish()
    assert_same_output(expected, cluster.out)
    names = {e["worker"]: e["name"] for e in of(log, "worker_joined")}
    dead = [names[e["worker"]] for e in of(log, "worker_dead")]
    assert mapper in dead
    assert of(log, "map_rerun"), "a reducer needed the cut-off host's map output, so that map ran again"
    cluster.net.heal(victim)


def test_coordinator_host_cut_off_workers_exit_nonzero_nothing_half_written(hosts, tmp_path):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(3)]
    cluster = hosts()
    cluster.start_coordinator(SLEEPY, inputs, "--reduce", "2", "--param", "map_seconds=60")
    workers = [cluster.start_worker(host, "--coordinator-timeout", "3") for host in cluster.net.hosts[1:]]
    cluster.wait_for(lambda log: len(of(log, "task_assigned")) == 3, "a map on every worker")
    cluster.net.cut(cluster.net.hosts[0])
    for worker in workers:
        assert worker.wait(timeout=60) == 3
        assert "unreachable" in worker.stderr.read()
    cluster.coordinator.send_signal(signal.SIGINT)
    assert cluster.coordinator.wait(timeout=30) != 0
    assert sorted(p.name for p in cluster.out.iterdir()) == []  # no part, no temp, no _SUCCESS


def test_an_mrjob_job_runs_on_hosts_that_see_neither_its_script_nor_its_files_nor_its_inputs(hosts, tmp_path):
    """mr_most_used_word (two steps; FILES; a file option) from a folder the worker hosts
    cannot see: the script and its files reach each task folder, the inputs cross the network."""
    import mrjob.examples

    from mapreduce.tools.corpus import write_corpus

    examples = Path(mrjob.examples.__file__).parent
    job = tmp_path / "job"
    job.mkdir()
    for name in ("mr_most_used_word.py", "stop_words.txt"):
        (job / name).write_bytes((examples / name).read_bytes())
    (job / "more_stop_words.txt").write_text("the\nand\nof\n")
    inputs = [str(p) for p in write_corpus(tmp_path / "in", 150_000, 3, seed=5)]
    job_args = [str(job / "mr_most_used_word.py"), "--stop-words-file", str(job / "more_stop_words.txt"), *inputs]
    local = subprocess.run([sys.executable, *job_args[:1], "-r", "local", "--no-conf", *job_args[1:]],
                           capture_output=True, check=True, timeout=300)  # fmt: skip
    cluster = hosts()
    command = mapreduce_command(
        "mrjob", "--output", str(cluster.out), "--bind", cluster.endpoint, "--key-dir", str(cluster.keys),
        "--events", str(cluster.events), "--min-workers", "3", "--reduce", "2", "-q", *FAST, *job_args,
    )  # fmt: skip
    cluster.coordinator = cluster._start(cluster.net.command(cluster.net.hosts[0], command))
    workers = [cluster.start_worker(host) for host in cluster.net.hosts[1:]]
    cluster.finish()
    assert [w.wait(timeout=30) for w in workers] == [0, 0, 0]
    ours = b"".join(p.read_bytes() for p in sorted(cluster.out.glob("part-*")))
    assert ours == local.stdout and ours.count(b"\n") == 1  # JSONValueProtocol: the one most used word
