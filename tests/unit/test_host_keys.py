"""Per-host keys: keygen's two layouts, loading them, the re-read allow-list, the key that
travels with a data server's address, and revocation in the scheduler."""

from __future__ import annotations

import stat

import pytest
import zmq
from click.testing import CliRunner
from zmq.utils import z85

from helpers import hello, make, map_done, one, reduce_done, welcome
from mapreduce.cli import cli
from mapreduce.coordinator.scheduler import Commit, TaskState, WorkerState
from mapreduce.errors import ProtocolError, UsageError
from mapreduce.net import security
from mapreduce.wire import messages as p
from mapreduce.wire.events import WorkerDead


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def names(folder):
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def public(path) -> bytes:
    return zmq.auth.load_certificate(str(path))[0]


# ---- keygen -------------------------------------------------------------------


def test_keygen_without_names_keeps_the_shared_layout(tmp_path):
    security.generate(tmp_path / "k")
    assert names(tmp_path / "k") == ["coordinator.key", "coordinator.key_secret", "worker.key", "worker.key_secret"]


def test_keygen_writes_a_pair_per_worker_and_client_and_adds_hosts_later(tmp_path):
    keys = tmp_path / "k"
    result = invoke("keygen", str(keys), "--worker", "a", "--worker", "b", "--client", "ci")
    assert result.exit_code == 0, result.output
    assert "workers/a.key_secret" in result.output and "clients/ci.key" in result.output
    assert names(keys) == [
        "clients/ci.key",
        "clients/ci.key_secret",
        "coordinator.key",
        "coordinator.key_secret",
        "workers/a.key",
        "workers/a.key_secret",
        "workers/b.key",
        "workers/b.key_secret",
    ]
    for secret in keys.rglob("*.key_secret"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    coordinator = (keys / "coordinator.key_secret").read_bytes()
    # A host added later: the coordinator's pair and the other hosts' pairs stay as they were.
    assert invoke("keygen", str(keys), "--worker", "c").exit_code == 0
    assert (keys / "coordinator.key_secret").read_bytes() == coordinator
    assert (keys / "workers" / "c.key_secret").exists()
    # Never over an existing pair, and nothing written when one name is taken.
    a = (keys / "workers" / "a.key_secret").read_bytes()
    again = invoke("keygen", str(keys), "--worker", "d", "--worker", "a")
    assert again.exit_code == 2 and "a.key" in again.output and "never overwritten" in again.output
    assert (keys / "workers" / "a.key_secret").read_bytes() == a and not (keys / "workers" / "d.key").exists()
    # Without names, a folder with keys is refused as before.
    plain = invoke("keygen", str(keys))
    assert plain.exit_code == 2 and "already holds" in plain.output


def test_keygen_refuses_bad_names_and_mixing_layouts(tmp_path):
    for bad in ("../x", "a/b", "", ".hidden", "x" * 65):
        result = invoke("keygen", str(tmp_path / "k"), "--worker", bad)
        assert result.exit_code == 2 and "worker name" in result.output and "Traceback" not in result.output
    assert invoke("keygen", str(tmp_path / "k"), "--worker", "a", "--worker", "a").exit_code == 2
    security.generate(tmp_path / "shared")
    mixed = invoke("keygen", str(tmp_path / "shared"), "--worker", "a")
    assert mixed.exit_code == 2 and "shared worker key pair" in mixed.output
    assert not (tmp_path / "shared" / "workers").exists()


# ---- loading --------------------------------------------------------------------


@pytest.fixture
def per_host(tmp_path):
    folder = tmp_path / "keys"
    security.generate(folder, workers=["a", "b"], clients=["ci"])
    return folder


def test_a_worker_loads_its_own_pair_by_name(per_host):
    a = security.load(per_host, "worker", "a")
    assert a.per_host and a.name == "a" and a.worker == b""
    assert a.public == public(per_host / "workers" / "a.key")
    assert a.coordinator == public(per_host / "coordinator.key")
    assert security.load(per_host, "worker", "b").public != a.public


def test_a_worker_host_with_one_secret_needs_no_name(per_host, tmp_path):
    host = tmp_path / "host-b"  # what the README says to copy to host b
    (host / "workers").mkdir(parents=True)
    for path in ("coordinator.key", "workers/a.key", "workers/b.key", "workers/b.key_secret"):
        (host / path).write_bytes((per_host / path).read_bytes())
    keys = security.load(host, "worker")
    assert keys.name == "b" and keys.public == public(per_host / "workers" / "b.key")


def test_several_secrets_and_no_name_is_a_clear_error(per_host):
    with pytest.raises(UsageError, match="2 worker secret keys .a, b.*--key-name"):
        security.load(per_host, "worker")
    with pytest.raises(UsageError, match="workers/zz.key_secret"):
        security.load(per_host, "worker", "zz")
    with pytest.raises(UsageError, match="key name"):
        security.load(per_host, "worker", "../a")


def test_a_name_needs_the_per_host_layout_and_one_layout_only(tmp_path, per_host):
    security.generate(tmp_path / "shared")
    with pytest.raises(UsageError, match="no workers/ folder"):
        security.load(tmp_path / "shared", "worker", "a")
    (per_host / "worker.key").write_bytes((tmp_path / "shared" / "worker.key").read_bytes())
    with pytest.raises(UsageError, match="keep one layout"):
        security.load(per_host, "coordinator")


def test_the_coordinator_of_a_per_host_folder(per_host):
    keys = security.load(per_host, "coordinator")
    assert keys.per_host and keys.public == public(per_host / "coordinator.key") and keys.worker == b""


def test_allowed_keys_are_read_again_and_exclude_clients(per_host):
    keys = security.load(per_host, "coordinator")
    a, b = public(per_host / "workers" / "a.key"), public(per_host / "workers" / "b.key")
    coordinator, client = public(per_host / "coordinator.key"), public(per_host / "clients" / "ci.key")
    assert keys.allowed() == {coordinator, a, b}
    assert client not in keys.allowed()
    (per_host / "workers" / "b.key").unlink()  # revoked
    assert keys.allowed() == {coordinator, a}
    (per_host / "workers" / "junk.key").write_text("not a key file")
    assert keys.allowed() == {coordinator, a}  # an unreadable file admits nobody and breaks nothing


def test_the_shared_layout_allows_every_key_file_in_the_folder(tmp_path):
    security.generate(tmp_path / "k")
    keys = security.load(tmp_path / "k", "worker")
    assert not keys.per_host and keys.allowed() == {keys.coordinator, keys.worker}


def test_the_gate_asks_again_at_every_handshake():
    key = zmq.curve_keypair()[0]
    allowed = {z85.decode(key)}
    context = zmq.Context()
    gate = security.CurveGate(context, lambda: allowed)
    request = [b"1.0", b"1", b"", b"127.0.0.1", b"", b"CURVE", z85.decode(key)]
    try:
        assert gate.answer(request)[2:5] == [b"200", b"OK", key]
        allowed.clear()
        assert gate.answer(request)[2] == b"400"
    finally:
        gate.stop()
        context.term()


# ---- the server key on the wire ---------------------------------------------------


def location(server_key: str) -> bytes:
    message = p.MapOutput(0, 1, "h", "/s/m", "tcp://10.0.0.1:5000", 0, 10, server_key)
    return p.encode(p.MapOutputs(3, [message]))


def test_a_server_key_travels_with_each_map_output():
    key = zmq.curve_keypair()[0].decode()
    (decoded,) = p.decode(location(key), p.COORDINATOR_MESSAGES).outputs
    assert decoded.server_key == key
    assert p.decode(location(""), p.COORDINATOR_MESSAGES).outputs[0].server_key == ""  # no keys


@pytest.mark.parametrize(
    "bad",
    [
        "x" * 39,  # too short
        "x" * 41,
        "x" * 39 + "~",  # not a z85 character
        "x" * 39 + "\0",
        "#" * 40,  # z85 characters, but more than 32 bits a group
    ],
)
def test_a_malformed_server_key_is_rejected(bad):
    with pytest.raises(ProtocolError, match="outputs.*not a public key"):
        p.decode(location(bad), p.COORDINATOR_MESSAGES)


def test_a_non_text_server_key_is_rejected():
    frame = p.encode(p.MapOutputs(3, [p.MapOutput(0, 1, "h", "/s/m", "tcp://10.0.0.1:5000", 0, 10)]))
    frame = frame.replace(b"\xaaserver_key\xa0", b"\xaaserver_key\xc4\x00")  # "" -> b""
    with pytest.raises(ProtocolError, match="server_key"):
        p.decode(frame, p.COORDINATOR_MESSAGES)


# ---- the scheduler hands each worker's key to whoever fetches from it ---------------


KEY_A, KEY_B = (zmq.curve_keypair()[0].decode() for _ in range(2))


def test_locations_and_commits_carry_the_key_their_worker_proved():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join_keyed(s, b"A", KEY_A)
    map_a = one(actions, b"A", p.AssignMap)
    b, actions = join_keyed(s, b"B", KEY_B)
    map_b = one(actions, b"B", p.AssignMap)
    reduce = one(map_done(s, 1.0, b"A", a, map_a, [5]), b"A", p.AssignReduce)
    assert [(o.map_task, o.server_key) for o in reduce.outputs] == [(map_a.task, KEY_A)]
    update = one(map_done(s, 2.0, b"B", b, map_b, [6]), b"A", p.MapOutputs)
    assert [(o.map_task, o.server_key) for o in update.outputs] == [(map_b.task, KEY_B)]
    (commit,) = [x for x in reduce_done(s, 3.0, b"A", a, reduce) if isinstance(x, Commit)]
    assert commit.server_key == KEY_A  # the coordinator pulls the output from A's data server


def test_a_revoked_worker_is_gone_and_its_task_runs_again():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join_keyed(s, b"A", KEY_A)
    map_a = one(actions, b"A", p.AssignMap)
    join_keyed(s, b"B", KEY_B)
    s.revoke(1.0, a, "its key was revoked")
    assert s.workers[a].state is WorkerState.DEAD
    assert [e.why for e in s.events if isinstance(e, WorkerDead)] == ["its key was revoked"]
    assert s.maps[map_a.task].state is TaskState.PENDING  # B is busy: it waits for a free worker
    assert s.revoke(1.0, a, "again") == []  # once only


def join_keyed(s, ident: bytes, key: str):
    actions = s.register(0.0, ident, hello(ident), welcome, key)
    wid = next(x.message.worker for x in actions if isinstance(x.message, p.Welcome))
    return wid, actions


# ---- the command line -----------------------------------------------------------------


def test_worker_key_errors_are_one_line_with_exit_2(per_host):
    several = invoke("worker", "--connect", "tcp://127.0.0.1:9", "--key-dir", str(per_host))
    missing = invoke("worker", "--connect", "tcp://127.0.0.1:9", "--key-dir", str(per_host), "--key-name", "zz")
    no_dir = invoke("worker", "--connect", "tcp://127.0.0.1:9", "--key-name", "a")
    (per_host / "coordinator.key").unlink()
    broken = invoke("worker", "--connect", "tcp://127.0.0.1:9", "--key-dir", str(per_host), "--key-name", "a")
    for result, fragment in (
        (several, "--key-name"),
        (missing, "zz.key_secret"),
        (no_dir, "--key-name needs --key-dir"),
        (broken, "coordinator.key"),
    ):
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output
        assert fragment in result.output
