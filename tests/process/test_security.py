"""Keys and CURVE: an unauthenticated peer gets nothing; clear text only where the user accepts it."""

from __future__ import annotations

import stat
import subprocess
import time

import pytest
import zmq
from zmq.utils import z85

from helpers import SLEEPY, assert_same_output, free_endpoint, mapreduce_command, of, run_cli, words_file
from mapreduce.errors import UsageError
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
