"""Keys and CURVE: an unauthenticated peer gets nothing; clear text only where the user accepts it."""

from __future__ import annotations

import stat
import subprocess
import time
from pathlib import Path

import pytest
import zmq
from zmq.utils import z85

from helpers import (
    SLEEPY,
    assert_same_output,
    coordinator_args,
    free_endpoint,
    kill_all,
    mapreduce_command,
    needs_unshare,
    of,
    run_cli,
    wait_for_log,
    words_file,
)
from mapreduce.errors import FetchError, UsageError
from mapreduce.net import security
from mapreduce.net.dataserver import DataServer, Fetcher, Unreachable
from mapreduce.wire import messages as p
from mapreduce.wire.events import read_records


@pytest.fixture
def keys(tmp_path):
    folder = tmp_path / "keys"
    result = run_cli("keygen", str(folder))
    assert "coordinator.key_secret" in result.stdout
    return folder


def test_keygen_writes_private_secrets_and_never_overwrites(keys):
    assert sorted(p.name for p in keys.iterdir()) == [
        "coordinator.key",
        "coordinator.key_secret",
        "worker.key",
        "worker.key_secret",
    ]
    for secret in keys.glob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    before = (keys / "worker.key_secret").read_bytes()
    again = run_cli("keygen", str(keys), check=False)
    assert again.returncode == 2 and "already holds keys" in again.stderr
    assert (keys / "worker.key_secret").read_bytes() == before


def test_the_gate_admits_only_allowed_curve_keys():
    allowed, other = zmq.curve_keypair()[0], zmq.curve_keypair()[0]
    allowed_raw, other_raw = z85.decode(allowed), z85.decode(other)
    context = zmq.Context()
    gate = security.CurveGate(context, {allowed_raw})
    try:

        def request(mechanism, *credentials):
            return [b"1.0", b"7", b"", b"127.0.0.1", b"", mechanism, *credentials]

        assert gate.answer(request(b"CURVE", allowed_raw))[1:5] == [b"7", b"200", b"OK", allowed]
        assert gate.answer(request(b"CURVE", other_raw))[2] == b"400"
        assert gate.answer(request(b"NULL"))[2] == b"400"
        assert gate.answer(request(b"PLAIN", b"user", allowed_raw))[2] == b"400"
        assert gate.answer([b"1.0", b"8"])[:3] == [b"1.0", b"8", b"500"]
        assert gate.answer([b"2.0", *request(b"CURVE", allowed_raw)[1:]])[2] == b"400"
    finally:
        gate.stop()  # never started: stop still closes its sockets, or term() would hang
        context.term()


def test_missing_key_file_is_a_clear_usage_error(keys):
    (keys / "worker.key").unlink()
    with pytest.raises(UsageError, match="worker.key"):
        security.load(keys, "coordinator")


def test_non_loopback_address_without_keys_is_refused_unless_insecure(tmp_path):
    inputs = [words_file(tmp_path, "in.txt")]
    refused = run_cli(
        "coordinator", "wordcount", *inputs, "-o", str(tmp_path / "out"), "--bind", "tcp://0.0.0.0:0", check=False
    )
    assert refused.returncode == 2 and "not a loopback address" in refused.stderr and "--insecure" in refused.stderr
    assert not (tmp_path / "out").exists()  # refused before anything was touched
    worker = run_cli("worker", "--connect", "tcp://127.0.0.1:9", "--advertise", "0.0.0.0", check=False)
    assert worker.returncode == 2 and "data server address 0.0.0.0" in worker.stderr
    # --insecure: it runs, with a warning.
    endpoint = free_endpoint().replace("127.0.0.1", "0.0.0.0")
    coordinator = subprocess.Popen(
        mapreduce_command(
            "coordinator", "wordcount", *inputs, "-o", str(tmp_path / "out"), "--bind", endpoint, "--insecure"
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        worker = run_cli("worker", "--connect", endpoint.replace("0.0.0.0", "127.0.0.1"), "--insecure", timeout=60)
        assert coordinator.wait(timeout=60) == 0
        assert "WITHOUT authentication" in coordinator.stderr.read()
    finally:
        if coordinator.poll() is None:
            coordinator.kill()


def test_with_keys_only_allowed_workers_get_anything(keys, tmp_path, oracle):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(3)]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    other = tmp_path / "other"
    run_cli("keygen", str(other))
    endpoint, events, out = free_endpoint(), tmp_path / "events.jsonl", tmp_path / "out"
    coordinator = subprocess.Popen(
        mapreduce_command(
            "coordinator",
            SLEEPY,
            *inputs,
            "--reduce",
            "2",
            "-o",
            str(out),
            "--bind",
            endpoint,
            "--key-dir",
            str(keys),
            "--events",
            str(events),
        ),
        stderr=subprocess.PIPE,
        text=True,
    )
    context = zmq.Context()
    try:
        # A worker without keys, and one with another cluster's keys: refused in the handshake.
        plain = run_cli("worker", "--connect", endpoint, check=False, timeout=60)
        assert plain.returncode == 2 and "requires keys" in plain.stderr
        stranger = run_cli("worker", "--connect", endpoint, "--key-dir", str(other), check=False, timeout=60)
        assert stranger.returncode == 2 and "authentication" in stranger.stderr
        # Raw sockets: a plain one and one with an unknown key send a valid Register; nothing comes back.
        register = p.encode(p.Register("intruder", 1, "h", "x", "tcp://127.0.0.1:9", "/s"))
        intruders = []
        for secret in (None, other / "worker.key_secret"):
            sock = context.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if secret is not None:
                public, private = zmq.auth.load_certificate(str(secret))
                sock.curve_publickey, sock.curve_secretkey = public, private
                sock.curve_serverkey = security.load(keys, "worker").coordinator
            sock.connect(endpoint)
            sock.send(register)
            intruders.append(sock)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert not any(s.poll(100) for s in intruders), "an unauthenticated peer got an answer"
        assert not events.exists() or not of(list(read_records(events)), "worker_joined")
        # The job's own worker: the output is exact.
        good = run_cli("worker", "--connect", endpoint, "--key-dir", str(keys), timeout=120)
        assert good.returncode == 0
        assert coordinator.wait(timeout=60) == 0, coordinator.stderr.read()
    finally:
        for sock in locals().get("intruders", []):
            sock.close(0)
        context.term()
        if coordinator.poll() is None:
            coordinator.kill()
    assert_same_output(expected, out)
    assert [e["name"] for e in of(list(read_records(events)), "worker_joined")] != ["intruder"]


def test_data_server_with_keys_answers_only_allowed_clients(keys, tmp_path):
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "run").write_bytes(b"map output bytes")
    worker_keys = security.load(keys, "worker")
    other = tmp_path / "other"
    security.generate(other)
    stranger = security.load(other, "worker")
    context = zmq.Context()
    auth = security.authenticator(context, worker_keys)
    server = DataServer(context, root, keys=worker_keys).start()
    fetchers = [
        Fetcher(context, 1.0, worker_keys, worker_keys.worker),  # a fellow worker
        Fetcher(context, 1.0, security.load(keys, "coordinator"), worker_keys.worker),  # the coordinator
        Fetcher(context, 1.0),  # no keys
        Fetcher(context, 1.0, stranger, worker_keys.worker),  # a key not in the folder
    ]
    try:
        assert [f.read(server.address, str(root / "run"), 0, 100) for f in fetchers[:2]] == [b"map output bytes"] * 2
        for fetcher in fetchers[2:]:
            with pytest.raises(Unreachable):
                fetcher.read(server.address, str(root / "run"), 0, 100)
        assert server.bytes_served == 2 * len(b"map output bytes")
    finally:
        for fetcher in fetchers:
            fetcher.close()
        server.stop()
        auth.stop()
        context.term()


# ---- per-host keys ------------------------------------------------------------------


@pytest.fixture
def host_keys(tmp_path):
    folder = tmp_path / "host-keys"
    run_cli("keygen", str(folder), "--worker", "a", "--worker", "b", "--worker", "c")
    return folder


def test_a_fetcher_expects_the_key_each_data_server_proves(host_keys, tmp_path):
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "run").write_bytes(b"map output bytes")
    a, b = security.load(host_keys, "worker", "a"), security.load(host_keys, "worker", "b")
    context = zmq.Context()
    auth = security.authenticator(context, a)
    server = DataServer(context, root, keys=a).start()  # worker a's data server, under a's key
    fetcher = Fetcher(context, 1.0, b)  # worker b: no default key, one per server
    coordinator = Fetcher(context, 1.0, security.load(host_keys, "coordinator"))
    path = str(root / "run")
    try:
        assert fetcher.read(server.address, path, 0, 100, a.public) == b"map output bytes"
        assert coordinator.read(server.address, path, 0, 100, a.public) == b"map output bytes"
        with pytest.raises(Unreachable):  # expecting b's key: a's server cannot prove it
            fetcher.read(server.address, path, 0, 100, b.public)
        with pytest.raises(FetchError, match="no public key"):
            fetcher.read(server.address, path, 0, 100)
        (host_keys / "workers" / "b.key").unlink()  # b revoked: a's server refuses it from now on
        with pytest.raises(Unreachable):
            Fetcher(context, 1.0, b).read(server.address, path, 0, 100, a.public)
    finally:
        fetcher.close()
        coordinator.close()
        server.stop()
        auth.stop()
        context.term()


def _other_host(argv: list[str], hide: Path | None = None) -> list[str]:
    """Run argv in a mount namespace of its own: another host_id, so this worker's data server
    serves its map output (no reducer reads another worker's files directly); with ``hide``,
    that folder (the job's output) looks empty to it, so the coordinator pulls its reduce output."""
    if hide is None:
        return ["unshare", "--mount", *argv]
    return ["unshare", "--mount", "sh", "-c", 'mount -t tmpfs none "$0" && exec "$@"', str(hide), *argv]


@needs_unshare
def test_per_host_keys_job_equals_seq_and_a_deleted_key_is_refused(host_keys, tmp_path, oracle):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(4)]
    args = ["--reduce", "2", "--param", "map_seconds=0.3"]
    expected = oracle(SLEEPY, inputs, *args)
    (host_keys / "workers" / "c.key").unlink()  # host c revoked before the job
    # Host b is given what the README says: coordinator.key, the workers' public keys, its own secret.
    host_b = tmp_path / "host-b-keys"
    (host_b / "workers").mkdir(parents=True)
    for name in ("coordinator.key", "workers/a.key", "workers/b.key", "workers/b.key_secret"):
        (host_b / name).write_bytes((host_keys / name).read_bytes())
    endpoint, events, out = free_endpoint(), tmp_path / "events.jsonl", tmp_path / "out"
    out.mkdir()  # empty: the coordinator takes it; the workers see an empty tmpfs there

    def worker(key_dir, *extra):
        return mapreduce_command(
            "worker", "--connect", endpoint, "--key-dir", str(key_dir), "--scratch", str(tmp_path / extra[-1]), *extra
        )

    workers = [
        subprocess.Popen(_other_host(worker(host_keys, "--key-name", "a", "--name", "a"), out), stderr=subprocess.PIPE),
        subprocess.Popen(_other_host(worker(host_b, "--name", "b"), out), stderr=subprocess.PIPE),
    ]
    coordinator = subprocess.Popen(
        mapreduce_command(*coordinator_args(SLEEPY, inputs, out, endpoint, events), *args, "--key-dir", str(host_keys)),
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        revoked = run_cli(
            "worker", "--connect", endpoint, "--key-dir", str(host_keys), "--key-name", "c", check=False, timeout=60
        )
        assert revoked.returncode == 2, revoked.stderr
        assert "does not accept this worker's key" in revoked.stderr
        assert coordinator.wait(timeout=60) == 0, coordinator.stderr.read()
        assert [w.wait(timeout=30) for w in workers] == [0, 0], [w.stderr.read() for w in workers]
    finally:
        kill_all([coordinator, *workers])
    assert_same_output(expected, out)
    log = list(read_records(events))
    assert sorted(e["name"] for e in of(log, "worker_joined")) == ["a", "b"]
    # Every byte crossed a data server under a host's own key: reduce output pulled by the
    # coordinator, map output fetched by reducers from the other worker.
    assert all(e["pulled"] > 0 for e in of(log, "output_committed"))
    maps_by = {e["worker"] for e in of(log, "task_finished", phase="map")}
    assert len(maps_by) == 2, "one worker ran every map: nothing was fetched across hosts"
    assert sum(e["fetched"] for e in of(log, "task_finished", phase="reduce")) > 0


def test_deleting_a_registered_workers_key_cuts_it_off(host_keys, tmp_path, oracle):
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(4)]
    args = ["--reduce", "2", "--param", "map_seconds=0.5"]
    expected = oracle(SLEEPY, inputs, *args)
    endpoint, events, out = free_endpoint(), tmp_path / "events.jsonl", tmp_path / "out"
    coordinator = subprocess.Popen(
        mapreduce_command(*coordinator_args(SLEEPY, inputs, out, endpoint, events), *args, "--key-dir", str(host_keys)),
        stderr=subprocess.PIPE,
        text=True,
    )

    def worker(name):
        argv = ["worker", "--connect", endpoint, "--key-dir", str(host_keys), "--key-name", name, "--name", name]
        return subprocess.Popen(mapreduce_command(*argv), stderr=subprocess.PIPE, text=True)

    c = worker("c")
    try:
        wait_for_log(events, lambda log: of(log, "worker_joined", name="c"), "c to join", coordinator, lambda: "")
        (host_keys / "workers" / "c.key").unlink()
        assert c.wait(timeout=30) == 2
        assert "key was revoked" in c.stderr.read()
        a = worker("a")  # the job goes on without c
        assert a.wait(timeout=60) == 0, a.stderr.read()
        assert coordinator.wait(timeout=30) == 0, coordinator.stderr.read()
    finally:
        for process in (coordinator, c, locals().get("a")):
            if process is not None and process.poll() is None:
                process.kill()
    assert_same_output(expected, out)
    log = list(read_records(events))
    assert [
        e["why"] for e in of(log, "worker_dead") if e["worker"] == of(log, "worker_joined", name="c")[0]["worker"]
    ] == ["its key was revoked"]
