"""The data plane: serving byte ranges of scratch files, and reducers fetching from other hosts."""

from __future__ import annotations

import io

import pytest
import zmq

from mapreduce import shuffle
from mapreduce.job import load_app
from mapreduce.net.dataserver import CHUNK, DataServer, Fetcher, FetchError
from mapreduce.wire import messages as p
from mapreduce.worker.tasks import AttemptCancelled, AttemptContext, JobContext, ReduceInputs, run_reduce


@pytest.fixture
def served(tmp_path):
    context = zmq.Context()
    root = tmp_path / "scratch"
    root.mkdir()
    server = DataServer(context, root).start()
    fetcher = Fetcher(context, timeout=5)
    yield root, server, fetcher
    fetcher.close()
    server.stop()
    context.term()


def test_copies_exact_ranges_across_chunks(served):
    root, server, fetcher = served
    data = bytes(range(256)) * (CHUNK // 256 * 2 + 3)  # more than two chunks
    (root / "file").write_bytes(data)
    for offset, length in [(0, len(data)), (5, 1), (CHUNK - 3, CHUNK + 10), (len(data) - 7, 7), (0, 0)]:
        out = io.BytesIO()
        fetcher.copy(server.address, str(root / "file"), offset, length, out)
        assert out.getvalue() == data[offset : offset + length]


def test_refuses_files_outside_its_folder(served, tmp_path):
    root, server, fetcher = served
    secret = tmp_path / "secret"
    secret.write_text("no")
    for path in [str(secret), str(root / ".." / "secret"), "/etc/passwd", str(root)]:
        with pytest.raises(FetchError, match="refused"):
            fetcher.copy(server.address, path, 0, 2, io.BytesIO())


def test_short_file_is_an_error(served):
    root, server, fetcher = served
    (root / "short").write_bytes(b"abc")
    with pytest.raises(FetchError, match="served 3 of 10"):
        fetcher.copy(server.address, str(root / "short"), 0, 10, io.BytesIO())


def test_silent_server_times_out():
    context = zmq.Context()
    sink = context.socket(zmq.ROUTER)
    sink.bind("tcp://127.0.0.1:*")
    fetcher = Fetcher(context, timeout=0.3)
    try:
        with pytest.raises(FetchError, match="did not answer"):
            fetcher.copy(sink.getsockopt_string(zmq.LAST_ENDPOINT), "/x", 0, 1, io.BytesIO())
    finally:
        fetcher.close()
        sink.close(0)
        context.term()


def test_reducer_on_another_host_fetches_and_reduces(served, tmp_path):
    """Map outputs on 'mapper-host' reach a reducer on 'reducer-host' only through the data server."""
    root, server, fetcher = served
    app = load_app("wordcount")
    locations = []
    for m, words in enumerate([["b", "a", "b"], ["c", "a"]]):
        buffer = shuffle.MapOutputBuffer(1, app.partition, app.combine, root)
        buffer.add_all([(w, 1) for w in words], "test")
        path = root / f"map-{m}.out"
        (length,) = buffer.finish(path)
        locations.append(p.MapOutput(m, m + 1, "mapper-host", str(path), server.address, 0, length))
    out = tmp_path / "out"
    out.mkdir()
    workdir = tmp_path / "reducer"
    workdir.mkdir()
    job = JobContext(app, "job", 2, 1, "reducer-host", workdir, out, True, "")
    ctx = AttemptContext(7)
    ctx.inbox.put(([locations[1]], []))  # the second location arrives while the reduce runs
    reports = []
    done = run_reduce(job, p.AssignReduce(7, 0, [locations[0]]), ctx, fetcher, reports.append)
    assert reports == []
    assert (out / done.path).read_text() == "a\t2\nb\t2\nc\t1\n"
    assert done.records == 3
    assert list(workdir.iterdir()) == []  # fetched copies are removed


def test_cancelled_reduce_stops_waiting(served, tmp_path):
    root, server, fetcher = served
    app = load_app("wordcount")
    job = JobContext(app, "job", 3, 1, "h", tmp_path, tmp_path, True, "")
    ctx = AttemptContext(1)
    ctx.cancelled.set()
    inputs = ReduceInputs(job, ctx, fetcher, tmp_path, lambda message: None)
    with pytest.raises(AttemptCancelled):
        inputs.gather([], [])


def test_unreadable_run_is_reported_and_replaced(served, tmp_path):
    """A run whose file and server are gone is reported; a new location then completes the reduce."""
    root, server, fetcher = served
    app = load_app("wordcount")
    buffer = shuffle.MapOutputBuffer(1, app.partition, app.combine, root)
    buffer.add_all([("x", 1)], "test")
    (length,) = buffer.finish(root / "map-0.out")
    gone = p.MapOutput(0, 1, "this-host", str(tmp_path / "deleted.out"), "tcp://127.0.0.1:9", 0, length)
    good = p.MapOutput(0, 2, "other-host", str(root / "map-0.out"), server.address, 0, length)
    out = tmp_path / "out"
    out.mkdir()
    job = JobContext(app, "job", 1, 1, "this-host", tmp_path, out, True, "")
    short_fetcher = Fetcher(zmq.Context.instance(), timeout=0.3)
    ctx = AttemptContext(3)
    reports = []

    def report(message):
        reports.append(message)
        ctx.inbox.put(([gone, good], []))  # the coordinator re-announces (the failed one is ignored)

    try:
        done = run_reduce(job, p.AssignReduce(3, 0, [gone]), ctx, short_fetcher, report)
    finally:
        short_fetcher.close()
    assert [(r.map_task, r.map_attempt, r.data_address) for r in reports] == [(0, 1, "tcp://127.0.0.1:9")]
    assert "did not answer" in reports[0].error
    assert (out / done.path).read_text() == "x\t1\n"


def test_large_partitions_take_the_streaming_merge(served, tmp_path, monkeypatch):
    import mapreduce.worker.tasks as tasks

    monkeypatch.setattr(tasks, "IN_MEMORY_REDUCE_BYTES", 0)
    test_reducer_on_another_host_fetches_and_reduces(served, tmp_path)


def test_input_server_serves_only_the_listed_files_and_remote_splits_read_like_local_ones(tmp_path):
    import random

    from mapreduce.inputs import Split, read_split
    from mapreduce.net.dataserver import RemoteFile

    text = "".join(f"line {i} {'é' * (i % 7)} {'x' * (i % 300)}\n" for i in range(3000)) + "no newline at the end"
    listed, secret = tmp_path / "in.txt", tmp_path / "secret.txt"
    listed.write_text(text)
    secret.write_text("not for the network\n")
    context = zmq.Context()
    server = DataServer(context, None, files=[str(listed)]).start()
    fetcher = Fetcher(context, timeout=5)
    try:
        fetcher.ping(server.address)
        with pytest.raises(FetchError, match="not a file this server serves"):
            fetcher.read(server.address, str(secret), 0, 10)
        with pytest.raises(FetchError, match="not a file this server serves"):
            fetcher.read(server.address, str(tmp_path / "x" / ".." / "secret.txt"), 0, 10)
        size = listed.stat().st_size
        rng = random.Random(3)
        cuts = sorted({0, size, *(rng.randrange(size) for _ in range(12))})
        local = [read_split(Split("k", str(listed), a, b)) for a, b in zip(cuts, cuts[1:])]
        remote = [
            read_split(Split("k", str(listed), a, b), RemoteFile(fetcher, server.address, str(listed)))
            for a, b in zip(cuts, cuts[1:])
        ]
        assert remote == local and "".join(local) == text
        assert server.bytes_served >= size and fetcher.received == server.bytes_served
    finally:
        fetcher.close()
        server.stop()
        context.term()


def test_a_compressed_input_larger_than_a_chunk_reads_remotely_like_locally(tmp_path):
    import gzip
    import random

    from mapreduce.errors import InputError
    from mapreduce.inputs import make_splits, read_split
    from mapreduce.net.dataserver import RemoteFile

    rng = random.Random(5)
    text = "".join(f"{rng.getrandbits(64):x} {rng.getrandbits(32):x}\n" for _ in range(400_000))
    packed, broken = tmp_path / "in.txt.gz", tmp_path / "broken.gz"
    packed.write_bytes(gzip.compress(text.encode(), mtime=0))
    assert packed.stat().st_size > CHUNK  # fetched in several ranges
    broken.write_bytes(packed.read_bytes()[: CHUNK + 1000])
    context = zmq.Context()
    server = DataServer(context, None, files=[str(packed), str(broken)]).start()
    fetcher = Fetcher(context, timeout=5)
    try:
        (split,) = make_splits([str(packed)], 1024)
        assert read_split(split, RemoteFile(fetcher, server.address, split.path)) == text == read_split(split)
        (split,) = make_splits([str(broken)])
        with pytest.raises(InputError, match=f"input '{broken}' is a damaged gzip file"):
            read_split(split, RemoteFile(fetcher, server.address, split.path))
    finally:
        fetcher.close()
        server.stop()
        context.term()


def test_transfers_pull_a_file_and_report_a_pull_or_probe_that_fails(tmp_path):
    from helpers import free_endpoint
    from mapreduce.coordinator.scheduler import Commit
    from mapreduce.coordinator.transfers import Probe, Pull, Transfers

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    made = scratch / ".part-00000.job-a3.tmp"
    made.write_bytes(b"word\t3\n" * 1000)
    out = tmp_path / "out"
    out.mkdir()
    context = zmq.Context()
    server = DataServer(context, scratch).start()
    transfers = Transfers(context)
    dead = free_endpoint()
    try:
        register = p.Register("w", 1, "h", "other", server.address, str(scratch))
        transfers.submit(Pull(Commit(0, str(made), 3, server.address, made.stat().st_size), out / "a.tmp"))
        transfers.submit(Pull(Commit(1, str(scratch / "gone.tmp"), 4, server.address, 10), out / "b.tmp"))
        transfers.submit(Probe(b"id", register))
        transfers.submit(Probe(b"id2", p.Register("w", 1, "h", "other", dead, str(scratch))))
        done = []
        while len(done) < 4:
            assert transfers.wakeup.poll(30_000), "transfers never finished"
            done += transfers.collect()
        assert transfers.pending == 0
        good, bad, reachable, unreachable = done
        assert good.error is None and (out / "a.tmp").read_bytes() == made.read_bytes()
        assert bad.error and not (out / "b.tmp").exists()
        assert reachable.error is None and unreachable.error and dead in unreachable.error
        assert transfers.pulled_bytes == made.stat().st_size
    finally:
        transfers.close()
        server.stop()
        context.term()


@pytest.mark.parametrize("identity", [False, True], ids=["reduce", "identity"])
def test_more_runs_than_the_merge_factor_are_merged_in_passes(served, tmp_path, monkeypatch, identity):
    """Ten maps' runs merged three at a time, then again: the same stable order, each record
    counted once, and the pass files gone with the attempt."""
    import mapreduce.worker.tasks as tasks
    from mapreduce.job import App
    from mapreduce.job import identity as identity_reduce

    monkeypatch.setattr(tasks, "IN_MEMORY_REDUCE_BYTES", 0)
    monkeypatch.setattr(tasks, "MERGE_FACTOR", 3)
    root, server, fetcher = served
    app = App("t", map=None, reduce=identity_reduce if identity else (lambda key, values: ",".join(values)))
    locations, records = [], []
    for m in range(10):
        pairs = [(f"k{(m * 7 + i) % 5}", f"m{m}-{i}") for i in range(6)]
        records += pairs
        buffer = shuffle.MapOutputBuffer(1, app.partition, None, root)
        buffer.add_all(pairs, "test")
        (length,) = buffer.finish(root / f"map-{m}.out")
        locations.append(p.MapOutput(m, m + 1, "host", str(root / f"map-{m}.out"), server.address, 0, length))
    out, workdir = tmp_path / "out", tmp_path / "reducer"
    out.mkdir()
    workdir.mkdir()
    job = JobContext(app, "job", 10, 1, "host", workdir, out, True, "")
    done = run_reduce(job, p.AssignReduce(4, 0, locations), AttemptContext(4), fetcher, lambda message: None)
    ordered = sorted(records, key=lambda pair: pair[0])  # stable: map order within a key
    if identity:
        expected = "".join(f"{k}\t{v}\n" for k, v in ordered)
    else:
        expected = "".join(
            f"{k}\t{','.join(v for kk, v in ordered if kk == k)}\n" for k in sorted({k for k, _ in records})
        )
    assert (out / done.path).read_text() == expected
    counted = {(c.group, c.counter): c.value for c in done.counters}
    assert counted["mapreduce", "REDUCE_INPUT_RECORDS"] == 60 and counted["mapreduce", "REDUCE_INPUT_GROUPS"] == 5
    assert list(workdir.iterdir()) == []
