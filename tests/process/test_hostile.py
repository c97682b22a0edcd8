"""Hostile and broken input never crashes or wedges the coordinator or a data server.

Real processes on loopback: a coordinator, real workers, and raw ZeroMQ sockets that
send what a worker never would: pickles that would create a file if anything loaded
them, thousands of fuzzed frames (hypothesis) while a job runs, oversized frames,
and well-formed messages that lie. Every job must still finish with exactly the
output of `mapreduce seq`, every process must exit 0 without a traceback, and every
data server must keep answering valid requests with the right bytes.

Run with `pytest -s` to see how many frames each test sent.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pickle
import random
import subprocess
import time
from pathlib import Path

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from helpers import (
    APPS,
    assert_same_output,
    coordinator_args,
    event_log,
    free_endpoint,
    job_fixture,
    mapreduce_command,
    of,
    wait_for_log,
    words_file,
)
from mapreduce import output
from mapreduce.errors import ProtocolError
from mapreduce.net.dataserver import CHUNK, MAX_REQUEST_BYTES, PING, DataServer
from mapreduce.net.node import host_id
from mapreduce.wire import messages as p

SLEEPY = str(APPS / "sleepy.py")
GATE = str(APPS / "gate.py")
FAST = ["--heartbeat-interval", "0.3"]
ELSEWHERE = "a-host-id-of-no-machine"  # never this machine's: a Register with it is probed, not welcomed
UNREACHABLE = "tcp://127.0.0.1:1"  # a well-formed data server address where nothing answers
SENTINEL = 987_654_321  # a worker id that never exists: its heartbeat is answered Unknown(worker=SENTINEL)
LIE = 777_777  # the record count of every lying TaskDone: a task_finished with it means a lie was believed


def fuzzing(examples: int) -> settings:
    """Generation only: the systems under test keep state between examples, so shrinking would mislead."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )


# ---- pickles that would leave a trace ---------------------------------------------------


class _Trap:
    """Loading a pickle of this creates the file at ``path``: proof that something unpickled it."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return Path.touch, (Path(self.path),)


def armed_pickles(marker: Path) -> list[bytes]:
    """The trap in every pickle protocol; the caller checks they do go off when loaded."""
    return [pickle.dumps(_Trap(marker), protocol=n) for n in range(pickle.HIGHEST_PROTOCOL + 1)]


def assert_armed(tmp_path: Path) -> None:
    """The same pickles, built for another file, do create it when loaded: the test would see a load."""
    for n, blob in enumerate(armed_pickles(tmp_path / "armed")):
        (tmp_path / "armed").unlink(missing_ok=True)
        pickle.loads(blob)
        assert (tmp_path / "armed").exists(), f"the protocol {n} pickle did not go off"
    (tmp_path / "armed").unlink()


def packb(value) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def fields_of(message) -> dict:
    return msgpack.unpackb(p.encode(message), raw=False)[2]


def ext(code: int, data: bytes) -> bytes:
    """A msgpack ext object of any type code, negative (reserved) ones included."""
    return b"\xc9" + len(data).to_bytes(4, "big") + code.to_bytes(1, "big", signed=True) + data


def array(*packed: bytes) -> bytes:
    """A msgpack array of already packed items."""
    return bytes([0x90 + len(packed)]) + b"".join(packed)


# One well-formed message of each type a worker sends, from no registered worker.
BASES = [
    p.Register("hostile", 1, "nowhere", ELSEWHERE, UNREACHABLE, "/nowhere"),
    p.Heartbeat(4242),
    p.TaskDone(4242, 1, [1, 2], "/nowhere/m1", LIE),
    p.TaskFailed(4242, 1, "Boom: no", "Traceback", True),
    p.FetchFailed(4242, 1, 0, 1, UNREACHABLE, "gone"),
    p.Cancelled(4242, 1),
    p.Goodbye(4242),
    p.Draining(4242),
    p.TaskStatus(4242, 1, "a status from nobody"),
]
assert {type(m) for m in BASES} == set(p.WORKER_MESSAGES)


def pickle_frames(blobs: list[bytes]) -> list[list[bytes]]:
    """Pickles where a worker's message could carry them: raw, in every field, as ext types, as keys."""
    frames: list[list[bytes]] = []
    for blob in blobs:
        text = blob.decode("latin-1")  # the same bytes as a str: passes a str field's type check
        frames += [[blob], [blob, blob], [b"", blob], [packb(blob)], [packb(text)]]
        frames += [
            [packb([p.PROTOCOL_VERSION, text, {}])],
            [packb([blob, "Heartbeat", {"worker": 1}])],
            [packb([p.PROTOCOL_VERSION, "Heartbeat", blob])],
            [packb([p.PROTOCOL_VERSION, "Heartbeat", {"worker": 1, text: blob}])],
            [packb([p.PROTOCOL_VERSION, "Heartbeat", {blob: 1}])],
            [packb([p.PROTOCOL_VERSION, "Heartbeat", {"worker": 1}, blob])],
        ]
        for code in (0, 1, 42, 127, -1, -128):
            e = ext(code, blob)
            frames += [
                [e],
                [array(e, packb("Heartbeat"), packb({"worker": 1}))],
                [array(packb(1), e, packb({"worker": 1}))],
                [array(packb(1), packb("Heartbeat"), e)],
            ]
        for base in BASES:
            name = type(base).__name__
            for field in fields_of(base):
                for value in (blob, text, msgpack.ExtType(1, blob), [blob], [text], {text: blob}):
                    frames.append([packb([p.PROTOCOL_VERSION, name, {**fields_of(base), field: value}])])
            if isinstance(base, p.TaskDone):
                frames.append([packb([p.PROTOCOL_VERSION, name, {**fields_of(base), "partition_lengths": [1, blob]}])])
    return frames


# ---- processes ------------------------------------------------------------------------------


class Job:
    """A coordinator process and its workers; stderr goes to files (thousands of warnings must not block)."""

    def __init__(self, tmp_path: Path, app: str, inputs: list[str], *args: str):
        self.tmp = tmp_path
        self.out = tmp_path / "out"
        self.events = tmp_path / "events.jsonl"
        self.endpoint = free_endpoint()
        self.processes: list[tuple[subprocess.Popen, Path]] = []
        self.coordinator = self._start(
            *coordinator_args(app, inputs, self.out, self.endpoint, self.events), *FAST, *args
        )

    def _start(self, *args: str) -> subprocess.Popen:
        err = self.tmp / f"{args[0]}-{len(self.processes)}.stderr"
        with open(err, "w") as f:
            process = subprocess.Popen(mapreduce_command(*args), stdout=subprocess.DEVNULL, stderr=f)
        self.processes.append((process, err))
        return process

    def worker(self) -> subprocess.Popen:
        return self._start(
            "worker",
            "--connect",
            self.endpoint,
            "--scratch",
            str(self.tmp / "scratch"),
            *FAST,
            "--coordinator-timeout",
            "30",
        )

    def log(self) -> list[dict]:
        return event_log(self.events)

    def stderr(self, process: subprocess.Popen) -> str:
        return next(err for proc, err in self.processes if proc is process).read_text(errors="replace")

    def wait_for(self, predicate, what: str, timeout: float = 60) -> list[dict]:
        return wait_for_log(
            self.events, predicate, what, self.coordinator, lambda: self.stderr(self.coordinator)[-3000:], timeout
        )

    def finish(self, timeout: float = 60, check: bool = True) -> list[dict]:
        """Wait for every process; with ``check``, each must have exited 0 with no traceback and no dead thread."""
        try:
            self.coordinator.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the coordinator did not exit within {timeout} s (wedged?):\n{self.stderr(self.coordinator)[-3000:]}"
            ) from None
        for process, _ in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"{' '.join(process.args[3:5])} (pid {process.pid}) did not exit") from None
        if check:
            self.assert_clean()
        return self.log()

    def assert_clean(self) -> None:
        for process, err in self.processes:
            name = " ".join(process.args[3:5])
            text = err.read_text(errors="replace")
            assert process.returncode == 0, f"{name} exited {process.returncode}:\n{text[-3000:]}"
            for sign in ("Traceback", "Exception in thread", "coordinator failed"):
                assert sign not in text, f"{name} logged {sign!r}:\n{text[max(0, text.index(sign) - 200) :][:3000]}"

    def stop_all(self) -> None:
        for process, _ in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait()


make_job = job_fixture(Job)


def finished_record(log: list[dict]) -> dict:
    (record,) = of(log, "job_finished")
    return record


def check_rejected(log: list[dict], expected: int) -> str:
    """The coordinator's count of rejected messages (when its job_finished record has one) is ours."""
    record = finished_record(log)
    if "rejected" not in record:
        return "rejected: not in job_finished"
    assert record["rejected"] > 0 and record["rejected"] == expected, (
        f"the coordinator counted {record['rejected']} rejected messages; {expected} of the frames sent fail "
        "validation (or are not one frame)"
    )
    return f"rejected: {record['rejected']}"


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on (its ZeroMQ binds), from /proc."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A" and cols[9] in inodes:  # 0A: LISTEN
                ports.add(int(cols[1].rsplit(":", 1)[1], 16))
    return ports


def data_server_of(process: subprocess.Popen, not_port: int | None = None, timeout: float = 30) -> str:
    """The address of the data server a real process binds (the coordinator: its port other than --bind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ports = listening_ports(process.pid) - {not_port}
        if len(ports) == 1:
            return f"tcp://127.0.0.1:{ports.pop()}"
        time.sleep(0.05)
    raise AssertionError(f"cannot find the data server port of pid {process.pid}: {listening_ports(process.pid)}")


# ---- raw sockets ----------------------------------------------------------------------------


def raw_dealer(context: zmq.Context, address: str) -> zmq.Socket:
    """A plain DEALER connected to ``address``, queueing without limit: a fuzzer's socket."""
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(address)
    return sock


class Swarm:
    """Raw DEALER sockets throwing frames at a coordinator; they tally what they sent and what came back.

    Every reply is decoded as a coordinator message (the protocol never unpickles)."""

    def __init__(self, context: zmq.Context, endpoint: str, n: int):
        self.context, self.endpoint = context, endpoint
        self.sockets = [self._socket() for _ in range(n)]
        self.sent = 0
        self.multipart = 0  # messages of other than one frame: the coordinator rejects them unread
        self.invalid = 0  # single frames the protocol rejects
        self.oversized = 0
        self.replies: collections.Counter = collections.Counter()

    def _socket(self) -> zmq.Socket:
        return raw_dealer(self.context, self.endpoint)

    def send(self, index: int, frames: list[bytes]) -> None:
        self.sockets[index % len(self.sockets)].send_multipart(frames)
        self.sent += 1
        if len(frames) != 1:
            self.multipart += 1
            return
        try:
            p.decode(frames[0], p.WORKER_MESSAGES)
        except ProtocolError:
            self.invalid += 1

    @property
    def rejected(self) -> int:
        return self.multipart + self.invalid

    def _take(self, frame: bytes) -> p.Unknown | None:
        try:
            message = p.decode(frame, p.COORDINATOR_MESSAGES)
        except ProtocolError:
            self.replies["undecodable"] += 1
            return None
        self.replies[type(message).__name__] += 1
        return message if isinstance(message, p.Unknown) and message.worker == SENTINEL else None

    def drain(self) -> None:
        for sock in self.sockets:
            while sock.poll(0):
                self._take(sock.recv())

    def sync(self, timeout: float = 30) -> None:
        """Wait until the coordinator has handled everything sent so far: on each socket, the
        answer to a sentinel heartbeat comes after the answers to everything before it."""
        for sock in self.sockets:
            self._sync_one(sock, timeout)

    def _sync_one(self, sock: zmq.Socket, timeout: float) -> None:
        sentinel = p.encode(p.Heartbeat(SENTINEL))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sock.send(sentinel)
            resend = time.monotonic() + 2
            while time.monotonic() < min(resend, deadline):
                if sock.poll(100) and self._take(sock.recv()) is not None:
                    return
        raise AssertionError(f"the coordinator stopped answering (no answer to a heartbeat within {timeout} s)")

    def send_oversized(self, payload: bytes) -> None:
        """A frame above the coordinator's limit drops the connection; a new socket is answered."""
        sock = self._socket()
        sock.setsockopt(zmq.LINGER, 3000)
        sock.send(payload, copy=False)
        self.oversized += 1
        self._sync_one(sock, 30)  # the connection reconnects after the drop, then the sentinel is answered
        sock.close()

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(0)


class DataClient:
    """Raw requests to one data server, and checks that it still serves the right bytes."""

    def __init__(self, context: zmq.Context, address: str):
        self.context, self.address = context, address
        self.junk = self._socket()
        self.check = self._socket()
        self.sent = 0
        self.oversized = 0
        self.refused = 0
        self._owed = 0  # answers to single-frame requests not yet received

    def _socket(self) -> zmq.Socket:
        return raw_dealer(self.context, self.address)

    def send(self, frames: list[bytes]) -> None:
        self.junk.send_multipart(frames)
        self.sent += 1
        self._owed += len(frames) == 1  # a request of other than one frame is dropped unanswered

    def settle(self, timeout: float = 3) -> None:
        """Every request sent has been answered (so the checks that follow come after them)."""
        deadline = time.monotonic() + timeout
        while self._owed:
            if not self.junk.poll(max(0.0, deadline - time.monotonic()) * 1000):
                raise AssertionError(
                    f"the data server at {self.address} left {self._owed} requests unanswered "
                    f"for {timeout} s (its thread died?)"
                )
            ok, _ = msgpack.unpackb(self.junk.recv(), raw=False)
            self.refused += not ok
            self._owed -= 1

    def ask(self, path: str, offset: int, length: int, timeout: float = 3) -> tuple[bool, object]:
        self.check.send(packb([path, offset, length]))
        if not self.check.poll(timeout * 1000):
            # A dead server never answers: a new socket for the next check, not a stale reply.
            self.check.close(0)
            self.check = self._socket()
            raise AssertionError(f"the data server at {self.address} did not answer a valid request within {timeout} s")
        ok, payload = msgpack.unpackb(self.check.recv(), raw=False)
        return ok, payload

    def assert_serves(self, path: str | None = None, data: bytes = b"", offset: int = 0, length: int = 0) -> None:
        """After every request sent so far: PING is answered, and ``path`` gives the right bytes."""
        self.settle()
        assert self.ask(PING, 0, 0) == (True, b""), f"the data server at {self.address} answered PING wrongly"
        if path is not None:
            got = self.ask(path, offset, length)
            assert got == (True, data[offset : offset + length]), (
                f"{self.address} served {got!r} for {path}+{offset}:{length}"
            )

    def oversize(self) -> None:
        """A request above the server's limit drops the connection; the server still answers others."""
        sock = self._socket()
        sock.send(bytes(MAX_REQUEST_BYTES + 1))
        self.oversized += 1
        sock.close(500)

    def close(self) -> None:
        self.junk.close(0)
        self.check.close(0)


# Requests at the edges of what a data server checks; {file} is a file it serves.
EDGE_REQUESTS = [
    ("{file}\x00", 0, 5),  # a NUL in the path
    ("\x00", 0, 5),
    ("{file}", 2**63, 5),  # offsets no file has
    ("{file}", 2**64 - 1, 5),
    ("{file}", 2**63 - 1, 5),
    ("{file}", -(2**63), 5),
    ("{file}", 0, 2**64 - 1),
    ("{file}/../../../etc/passwd", 0, 5),
]
EDGE_IDS = [
    "nul-in-path",
    "nul",
    "offset-2**63",
    "offset-2**64-1",
    "offset-2**63-1",
    "offset--2**63",
    "length-2**64-1",
    "dotdot",
]


def edge(request_: tuple, served: Path | str) -> bytes:
    path, offset, length = request_
    return packb([path.format(file=served), offset, length])


# ---- hypothesis: frames ---------------------------------------------------------------------

INT64 = st.one_of(st.integers(-3, 40), st.sampled_from([2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
NASTY_TEXT = [
    "",
    "..",
    "/",
    "/etc/passwd",
    "../../etc/passwd",
    "\x00",
    "a\x00b",
    ".part-00000.x-a1.tmp",
    ".part-00001.0123456789ab-a7.tmp",
    "part-00000",
    "_SUCCESS",
    "é" * 40,
    "\u202e",
    "x" * 5000,
]
TEXT = st.one_of(st.text(max_size=30), st.sampled_from(NASTY_TEXT))
ADDRESSES = st.one_of(
    st.text(max_size=30),
    st.sampled_from(
        [
            "",
            "foo",
            "tcp://",
            "tcp://*:1",
            "ipc:///tmp/x",
            "inproc://x",
            "udp://127.0.0.1:9",
            "tcp://localhost:1",
            "tcp://[::1:1",
            "tcp://1.2.3.4:5;6.7.8.9:1",
            UNREACHABLE,
        ]
    ),
)
MSGPACK = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=8), children, max_size=4)
        | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=12))
    ),
    max_leaves=6,
)
WORKER_IDS = st.one_of(st.integers(-2, 12), INT64)


def worker_messages() -> st.SearchStrategy:
    """Well-typed messages of every kind a worker sends, with ids no sender of them owns."""
    here = host_id()
    return st.one_of(
        st.builds(p.Register, TEXT, INT64, TEXT, TEXT.filter(lambda h: h != here), ADDRESSES, TEXT),
        st.builds(p.Heartbeat, WORKER_IDS),
        st.builds(p.TaskDone, WORKER_IDS, INT64, st.lists(INT64, max_size=6), TEXT, st.just(LIE), INT64, INT64, INT64),
        st.builds(p.TaskFailed, WORKER_IDS, INT64, TEXT, TEXT, st.booleans()),
        st.builds(p.FetchFailed, WORKER_IDS, INT64, INT64, INT64, ADDRESSES, TEXT),
        st.builds(p.Cancelled, WORKER_IDS, INT64),
        st.builds(p.Goodbye, WORKER_IDS),
        st.builds(p.Draining, WORKER_IDS),
    )


def coordinator_messages() -> st.SearchStrategy:
    """Messages only a coordinator sends: the wrong direction."""
    location = st.builds(p.MapOutput, INT64, INT64, TEXT, TEXT, st.just(UNREACHABLE), INT64, INT64)
    return st.one_of(
        st.builds(p.Welcome, INT64, TEXT, st.binary(max_size=20), INT64, INT64, st.floats(allow_nan=False), TEXT, TEXT),
        st.builds(p.AssignMap, INT64, INT64, TEXT, TEXT, INT64, INT64),
        st.builds(p.AssignReduce, INT64, INT64, st.lists(location, max_size=2)),
        st.builds(p.MapOutputs, INT64, st.lists(location, max_size=2), st.lists(INT64, max_size=3)),
        st.builds(p.Cancel, INT64),
        st.builds(p.Unknown, TEXT, INT64),
        st.builds(p.Refused, TEXT),
        st.builds(p.JobDone, st.booleans(), TEXT),
    )


def mutate(frame: bytes, how: str, at: int, noise: bytes) -> bytes:
    at %= len(frame) + 1
    if how == "truncate":
        return frame[:at]
    if how == "flip" and frame:
        at = min(at, len(frame) - 1)
        return frame[:at] + bytes([frame[at] ^ (noise[0] or 1)]) + frame[at + 1 :]
    if how == "insert":
        return frame[:at] + noise + frame[at:]
    if how == "delete":
        return frame[:at] + frame[at + len(noise) :]
    return frame + noise


MUTATIONS = ["truncate", "flip", "insert", "delete", "append"]


def with_mutants(n: int):
    """A drawn message, ``n`` mutants of its first frame, and that frame cut into several frames,
    all derived from a drawn seed: hypothesis draws are the expensive part, so each yields several."""

    def expand(drawn: tuple[list[bytes], int]) -> list[list[bytes]]:
        frames, seed = drawn
        rng = random.Random(seed)
        first = frames[0]
        mutants = [
            [mutate(first, rng.choice(MUTATIONS), rng.randrange(1 << 16), rng.randbytes(rng.randint(1, 6)))]
            for _ in range(n)
        ]
        cuts = sorted(rng.sample(range(len(first) + 1), min(len(first) + 1, rng.randint(1, 3))))
        pieces = [first[i:j] for i, j in zip([0] + cuts, cuts + [len(first)])]
        return [frames] + mutants + [pieces if len(pieces) > 1 else pieces + [b""]]

    return expand


def worker_frames(pickles: list[bytes]) -> st.SearchStrategy:
    """What a hostile or broken peer might send a coordinator, as the frames of one ZeroMQ message."""
    samples = [p.encode(m) for m in BASES] + [
        p.encode(p.TaskDone(1, 1, [0, 2**63 - 1], "/s/m", 5)),
        p.encode(p.Heartbeat(1)),
        p.encode(p.FetchFailed(2, 3, 1, 1, UNREACHABLE, "x")),
    ]
    names = [cls.__name__ for cls in p.WORKER_MESSAGES + p.COORDINATOR_MESSAGES] + ["MapOutput", "Nope", ""]
    wrong_fields = st.sampled_from(p.WORKER_MESSAGES).flatmap(
        lambda cls: st.fixed_dictionaries(
            {f.name: MSGPACK for f in dataclasses.fields(cls)}, optional={"extra": MSGPACK}
        ).map(lambda fields: [1, cls.__name__, fields])
    )
    envelopes = st.one_of(
        wrong_fields,
        st.tuples(st.one_of(st.just(1), MSGPACK), st.one_of(st.sampled_from(names), MSGPACK), MSGPACK).map(list),
        st.lists(MSGPACK, max_size=5),
        MSGPACK,
    )
    single = st.one_of(
        st.binary(max_size=300),
        worker_messages().map(p.encode),
        coordinator_messages().map(p.encode),
        envelopes.map(packb),
        st.builds(
            mutate,
            st.sampled_from(samples),
            st.sampled_from(MUTATIONS),
            st.integers(0, 400),
            st.binary(min_size=1, max_size=6),
        ),
        st.sampled_from(pickles),
    ).map(lambda frame: [frame])
    multipart = st.lists(st.one_of(st.binary(max_size=40), st.sampled_from(samples)), min_size=2, max_size=5)
    return st.tuples(st.one_of(single, single, single, multipart), st.integers(0, 2**32 - 1)).map(with_mutants(3))


def data_requests(paths: list[str], pickles: list[bytes]) -> st.SearchStrategy:
    """What a hostile or broken peer might send a data server."""
    path = st.one_of(
        st.sampled_from(
            paths
            + [
                PING,
                "..",
                "/",
                "/etc/passwd",
                "/dev/zero",
                "/proc/self/environ",
                "/proc/self/mem",
                "relative",
                "\x00",
                "a" * 5000,
            ]
        ),
        st.sampled_from(paths).map(lambda s: s + "\x00"),
        st.sampled_from(paths).map(lambda s: s + "/../../etc/passwd"),
        st.text(max_size=30),
        st.binary(max_size=20),
        st.sampled_from(pickles),
        MSGPACK,
    )
    number = st.one_of(
        st.integers(-3, 64),
        st.sampled_from([-1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), CHUNK, CHUNK + 1]),
        st.integers(-(2**63), 2**64 - 1),
        MSGPACK,
    )
    request = st.tuples(path, number, number).map(lambda t: packb(list(t)))
    single = st.one_of(
        request,
        request,
        st.binary(max_size=200),
        st.sampled_from(pickles),
        st.lists(MSGPACK, max_size=5).map(packb),
        MSGPACK.map(packb),
    ).map(lambda frame: [frame])
    multipart = st.lists(st.binary(max_size=30), min_size=2, max_size=4)
    return st.tuples(st.one_of(single, single, single, multipart), st.integers(0, 2**32 - 1)).map(with_mutants(2))


# ---- (a) nothing from the network is unpickled -------------------------------------------------


def test_the_coordinator_never_unpickles_what_it_receives(tmp_path, oracle, make_job):
    assert_armed(tmp_path)
    marker = tmp_path / "unpickled"
    frames = pickle_frames(armed_pickles(marker))
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(3)]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, "--reduce", "2")
    context = zmq.Context()
    swarm = Swarm(context, job.endpoint, 1)
    started = time.monotonic()
    try:
        for message in frames:
            swarm.send(0, message)
        swarm.sync()  # every frame handled before the job's worker starts
        job.worker()
        log = job.finish()
    finally:
        swarm.drain()
        swarm.close()
        context.term()
    assert not marker.exists(), "something unpickled a frame from the network"
    assert_same_output(expected, job.out)
    assert not of(log, "worker_dead") and len(of(log, "worker_joined")) == 1
    assert not [e for e in of(log, "task_finished") if e["records"] == LIE]
    seen = check_rejected(log, swarm.rejected)
    print(
        f"\npickles at the coordinator: {swarm.sent} messages ({swarm.rejected} invalid), replies "
        f"{dict(swarm.replies)}, "
        f"{seen}, {time.monotonic() - started:.1f} s"
    )
    assert swarm.replies["Unknown"] > 0 and swarm.replies["undecodable"] == 0


def test_a_data_server_never_unpickles_and_keeps_serving(tmp_path):
    assert_armed(tmp_path)
    marker = tmp_path / "unpickled"
    blobs = armed_pickles(marker)
    root = tmp_path / "scratch"
    root.mkdir()
    data = os.urandom(10_000)
    (root / "f").write_bytes(data)
    target = str(root / "f")
    requests = []
    for blob in blobs:
        text = blob.decode("latin-1")
        requests += [
            [blob],
            [blob, blob],
            [packb(blob)],
            [packb(msgpack.ExtType(1, blob))],
            [packb([blob, 0, 5])],
            [packb([text, 0, 5])],
            [packb([target, blob, 5])],
            [packb([target, 0, blob])],
            [packb([target, 0, 5, blob])],
            [packb([msgpack.ExtType(1, blob), 0, 5])],
            [packb({"path": blob, "offset": 0, "length": 5})],
            [packb([target + "/" + text, 0, 5])],
        ]
    context = zmq.Context()
    server = DataServer(context, root).start()
    client = DataClient(context, server.address)
    try:
        client.assert_serves(target, data, 0, 100)
        for n, frames in enumerate(requests):
            client.send(frames)
            client.assert_serves(target, data, n, 100 + n)
    finally:
        client.close()
        server.stop()
        context.term()
    assert not marker.exists(), "the data server unpickled a request"
    print(f"\npickles at a data server: {client.sent} requests, each followed by a valid one that was served")


# ---- (b) fuzzing a running job, and a data server --------------------------------------------------


def test_thousands_of_fuzzed_frames_at_a_running_job(tmp_path, oracle, make_job):
    """Three raw sockets fire hypothesis-made frames at the coordinator (and at the data servers of the
    coordinator and both workers) while a real job runs; the job is held open by one map that waits for
    a gate file, so the frames all land while it runs however fast or slow this machine is."""
    marker = tmp_path / "unpickled"
    pickles = armed_pickles(marker)
    inputs = [words_file(tmp_path, f"in{i}.txt", 400) for i in range(7)] + [words_file(tmp_path, "gated.txt", 400)]
    expected = oracle(GATE, inputs, "--reduce", "3")
    gate = tmp_path / "gate-open"
    job = make_job(GATE, inputs, "--reduce", "3", "--param", f"gate={gate}", "--param", "map_seconds=0.4")
    workers = [job.worker(), job.worker()]
    job.wait_for(lambda log: len(of(log, "worker_joined")) == 2, "both workers to join")
    port = int(job.endpoint.rsplit(":", 1)[1])
    servers = [data_server_of(job.coordinator, port)] + [data_server_of(w) for w in workers]
    context = zmq.Context()
    swarm = Swarm(context, job.endpoint, 3)
    clients = [DataClient(context, address) for address in servers]
    dead: dict[str, str] = {}  # data server -> what it was sent last before it stopped answering
    big = bytes(p.MAX_MESSAGE_BYTES + 1)
    started = time.monotonic()
    examples = [0]

    def check(client: DataClient, last: list) -> None:
        try:
            if client is clients[0]:  # the coordinator serves the job's inputs
                client.assert_serves(inputs[0], Path(inputs[0]).read_bytes(), 3, 50)
            else:
                client.assert_serves()
        except AssertionError as exc:
            dead[client.address] = f"{exc}; the last requests: {last!r}"[:3000]

    @fuzzing(120)
    @given(
        batch=st.lists(worker_frames(pickles), min_size=12, max_size=20),
        which=st.integers(0, 2),
        requests=st.lists(data_requests(inputs, pickles), min_size=1, max_size=6),
        server=st.integers(0, 2),
    )
    def fuzz(batch, which, requests, server):
        assert job.coordinator.poll() is None, "the coordinator exited while the job was held open"
        for group in batch:
            for frames in group:
                swarm.send(which, frames)
        swarm.drain()
        client = clients[server]
        if client.address not in dead:
            for group in requests:
                for frames in group:
                    client.send(frames)
            check(client, requests)
        examples[0] += 1
        if examples[0] % 40 == 0:
            swarm.send_oversized(big)
            clients[examples[0] // 40 % 3].oversize()

    try:
        fuzz()
        swarm.sync()  # everything sent has been handled, while the job still runs
        # Then the edge requests, at files each server does serve: the inputs, and map output.
        map_output = next(f for f in (tmp_path / "scratch").rglob("*") if f.is_file() and "job-" in str(f))
        for client in clients:
            if client.address not in dead:
                for request_ in EDGE_REQUESTS:
                    client.send([edge(request_, inputs[0] if client is clients[0] else map_output)])
                check(client, ["(the edge requests)"] + EDGE_IDS)
        fuzzed = time.monotonic() - started
        assert job.coordinator.poll() is None and not of(job.log(), "job_finished"), (
            "the job ended before the gate opened"
        )
        gate.touch()
        log = job.finish(check=False)
    finally:
        gate.touch()
        swarm.drain()
        swarm.close()
        for client in clients:
            client.close()
        context.term()
    to_servers = sum(c.sent for c in clients)
    print(
        f"\nfuzz: {swarm.sent} messages to the coordinator ({swarm.multipart} multipart, {swarm.invalid} invalid, "
        f"{swarm.oversized} oversized), replies {dict(swarm.replies)}, "
        f"rejected: {finished_record(log).get('rejected', 'not in job_finished')}; {to_servers} requests to 3 "
        "data servers "
        f"({sum(c.oversized for c in clients)} oversized, {sum(c.refused for c in clients)} refused); "
        f"{fuzzed:.1f} s of fuzzing, {time.monotonic() - started:.1f} s in all; coordinator exit "
        f"{job.coordinator.returncode}; data servers that stopped answering: {len(dead)}"
    )
    assert not marker.exists()
    assert_same_output(expected, job.out)
    assert not of(log, "worker_dead") and len(of(log, "worker_joined")) == 2
    assert not [e for e in of(log, "task_finished") if e["records"] == LIE]
    check_rejected(log, swarm.rejected)
    assert swarm.sent >= 5000
    assert not dead, "data servers stopped answering:\n" + "\n".join(f"{a}: {why}" for a, why in dead.items())
    assert to_servers >= 300
    job.assert_clean()


def test_thousands_of_fuzzed_requests_at_a_data_server(tmp_path):
    """After every batch of hypothesis-made requests, valid ones still get exactly the right bytes."""
    marker = tmp_path / "unpickled"
    root = tmp_path / "scratch"
    (root / "sub").mkdir(parents=True)
    data = os.urandom(3 * 65536 + 17)
    (root / "f").write_bytes(data)
    (root / "sub" / "g").write_bytes(b"inside")
    (tmp_path / "secret").write_bytes(b"outside")
    paths = [
        str(root / "f"),
        str(root / "sub" / "g"),
        str(root / "sub" / ".." / "f"),
        str(root / ".." / "secret"),
        str(root),
        str(root / "missing"),
    ]
    context = zmq.Context()
    server = DataServer(context, root).start()
    client = DataClient(context, server.address)
    count = [0]

    @fuzzing(200)
    @given(
        batch=st.lists(data_requests(paths, armed_pickles(marker)), min_size=4, max_size=10),
        offset=st.integers(0, len(data)),
        length=st.integers(0, 70_000),
    )
    def fuzz(batch, offset, length):
        for group in batch:
            for frames in group:
                client.send(frames)
        count[0] += 1
        if count[0] % 60 == 0:
            client.oversize()
        try:
            client.assert_serves(str(root / "f"), data, offset, length)
        except AssertionError as exc:
            raise AssertionError(f"{exc}, after {client.sent} requests; the last batch: {batch!r}"[:4000]) from None

    started = time.monotonic()
    try:
        fuzz()
        assert client.ask(str(root / ".." / "secret"), 0, 7)[0] is False
        assert client.ask(str(root / "sub" / "g"), 0, 6) == (True, b"inside")
    finally:
        client.close()
        server.stop()
        context.term()
    print(
        f"\nfuzz: {client.sent} requests to a data server ({client.oversized} oversized, {client.refused} refused), "
        f"{count[0]} checks of the right bytes, {time.monotonic() - started:.1f} s"
    )
    assert not marker.exists() and client.sent >= 2000


@pytest.mark.parametrize("request_", EDGE_REQUESTS, ids=EDGE_IDS)
def test_a_data_server_survives_edge_requests(tmp_path, request_):
    root = tmp_path / "scratch"
    root.mkdir()
    (root / "f").write_bytes(b"0123456789")
    context = zmq.Context()
    server = DataServer(context, root).start()
    client = DataClient(context, server.address)
    try:
        client.send([edge(request_, root / "f")])
        client.assert_serves(str(root / "f"), b"0123456789", 2, 5)
        assert client.refused == 1
    finally:
        client.close()
        server.stop()
        context.term()


def test_every_data_server_address_the_protocol_accepts_can_be_connected_to():
    """The coordinator connects to the address a Register names: the protocol lets through none that
    ZeroMQ would refuse (which would end the coordinator's transfers thread)."""
    context = zmq.Context()
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)

    @fuzzing(300)
    @given(address=st.from_regex(p._ENDPOINT, fullmatch=True) | ADDRESSES)
    def connect(address):
        try:
            p.decode(p.encode(dataclasses.replace(BASES[0], data_address=address)), p.WORKER_MESSAGES)
        except ProtocolError:
            return
        sock.connect(address)  # must not raise
        sock.disconnect(address)

    try:
        connect()
    finally:
        sock.close(0)
        context.term()


def test_registrations_naming_bad_data_server_addresses_do_not_wedge_the_coordinator(tmp_path, oracle, make_job):
    """Before the protocol checked addresses, one Register naming 'foo' ended the coordinator's transfers
    thread and the coordinator never exited, its output committed."""
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(2)]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, "--reduce", "2")
    context = zmq.Context()
    swarm = Swarm(context, job.endpoint, 1)
    try:
        for address in [
            "foo",
            "tcp://",
            "tcp://*:1",
            "tcp://a b:1",
            "udp://127.0.0.1:9",
            "pgm://x",
            "ipc:///tmp/mapreduce-x",
            "inproc://x",
            "tcp://h\x00st:1",
            "tcp://localhost:1",
            "tcp://1.2.3.4:5;6.7.8.9:1",
            "tcp://127.0.0.1:0",
        ]:
            swarm.send(0, [p.encode(dataclasses.replace(BASES[0], data_address=address))])
        swarm.sync()
        job.worker()
        log = job.finish(timeout=30)
    finally:
        swarm.close()
        context.term()
    assert_same_output(expected, job.out)
    check_rejected(log, swarm.rejected)


def test_registrations_from_many_connections_do_not_hold_up_the_end_of_the_job(tmp_path, oracle, make_job):
    """Each Register from another host costs a 2 s check of its data server, one at a time; a job that
    is done must not wait for those checks (or for more of them) before it exits."""
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(2)]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, "--reduce", "2")
    context = zmq.Context()
    swarm = Swarm(context, job.endpoint, 8)
    try:
        for i in range(len(swarm.sockets)):
            swarm.send(i, [p.encode(BASES[0])])  # a well-formed address where nothing answers
        swarm.sync()
        started = time.monotonic()
        job.worker()
        try:
            job.coordinator.wait(timeout=10)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the coordinator did not exit within 10 s of its worker's start (a job of about a second): it waits "
                f"for the data server checks of {len(swarm.sockets)} registrations from other hosts, 2 s each, one "
                "at a time"
            ) from None
        job.finish()
        took = time.monotonic() - started
    finally:
        swarm.close()
        context.term()
    assert_same_output(expected, job.out)
    print(f"\n{len(swarm.sockets)} registrations probed; the job ended {took:.1f} s after its worker started")


# ---- (c) well-formed lies from a registered worker ------------------------------------------------


class FakeWorker:
    """A raw socket that registers as a worker on this host and then says what a real one never would."""

    def __init__(self, context: zmq.Context, endpoint: str, name: str):
        self.sock = context.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.attempt: int | None = None
        self.task: int | None = None
        self.id: int | None = None
        self.send(p.Register(name, os.getpid(), "localhost", host_id(), UNREACHABLE, "/nowhere"))
        self.welcome = self.expect(p.Welcome)
        self.id = self.welcome.worker

    def send(self, message) -> None:
        self.sock.send(p.encode(message))

    def send_raw(self, frame: bytes) -> None:
        self.sock.send(frame)

    def expect(self, kind: type, timeout: float = 20):
        """The next message of ``kind`` (heartbeating meanwhile); a new assignment is remembered."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.id is not None:
                self.send(p.Heartbeat(self.id))
            if not self.sock.poll(100):
                continue
            message = p.decode(self.sock.recv(), p.COORDINATOR_MESSAGES)
            if isinstance(message, (p.AssignMap, p.AssignReduce)):
                self.attempt, self.task = message.attempt, message.task
            if isinstance(message, kind):
                return message
        raise AssertionError(f"no {kind.__name__} from the coordinator within {timeout} s")

    def sync(self) -> None:
        """Everything sent so far has been handled."""
        self.sock.send(p.encode(p.Heartbeat(SENTINEL)))
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.sock.poll(100):
                message = p.decode(self.sock.recv(), p.COORDINATOR_MESSAGES)
                if isinstance(message, (p.AssignMap, p.AssignReduce)):
                    self.attempt, self.task = message.attempt, message.task
                if isinstance(message, p.Unknown) and message.worker == SENTINEL:
                    return
        raise AssertionError("the coordinator stopped answering")

    def lie(self, done: p.TaskDone) -> None:
        """Report a lie about the current attempt: the coordinator fails that attempt, and may hand
        this worker another task (one it was not excluded from) before it answers the sync."""
        old = self.attempt
        self.send(done)
        self.sync()
        if self.attempt == old:
            self.attempt = self.task = None

    def leave(self) -> None:
        self.send(p.Draining(self.id))
        if self.attempt is not None:
            self.send(p.Cancelled(self.id, self.attempt))  # hands the attempt back
        self.send(p.Goodbye(self.id))
        self.sync()

    def close(self) -> None:
        self.sock.close(0)


def wrong_direction(attempt: int) -> list[bytes]:
    location = p.MapOutput(0, attempt, host_id(), "/nowhere/m", UNREACHABLE, 0, 10)
    return [
        p.encode(m)
        for m in (
            p.MapOutputs(attempt, [location]),
            p.AssignMap(attempt, 0, "k", "/etc/passwd", 0, 10),
            p.AssignReduce(attempt, 0, [location]),
            p.Cancel(attempt),
            p.Welcome(1, "job", b"\x80\x05N.", 1, 1, 1.0, "/"),
            p.JobDone(True, "done"),
            p.Unknown("you"),
            p.Refused("no"),
            p.MapOutput(0, attempt, "h", "/p", UNREACHABLE, 0, 1),
        )
    ]


def test_well_formed_lies_from_registered_workers_change_nothing(tmp_path, oracle, make_job):
    """A registered worker reports attempts it never had, maps out of range, impossible offsets and
    lengths, foreign output names, coordinator messages; the coordinator ignores or fails each one and
    the job's real worker produces exactly the seq output."""
    n_reduce = 6
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(3)]
    expected = oracle(SLEEPY, inputs, "--reduce", str(n_reduce))
    job = make_job(SLEEPY, inputs, "--reduce", str(n_reduce), "--param", "reduce_seconds=0.1")
    context = zmq.Context()
    fakes: list[FakeWorker] = []
    try:
        # Phase 1: a liar joins first and is given map 0 (again and again: no other worker could run it).
        liar = FakeWorker(context, job.endpoint, "liar-1")
        fakes.append(liar)
        liar.expect(p.AssignMap)
        w, a = liar.id, liar.attempt
        liar.send(p.TaskDone(w, a + 100_000, [1] * n_reduce, "/nowhere/m", LIE))  # attempts it never had
        liar.send(p.TaskDone(w, 0, [1] * n_reduce, "/nowhere/m", LIE))
        liar.send(p.TaskFailed(w, -5, "not mine"))
        liar.send(p.Cancelled(w, 2**63 - 1))
        liar.send(p.FetchFailed(w, a, 10**9, 1, UNREACHABLE, "a map out of range"))
        liar.send(p.FetchFailed(w, a, -1, 1, UNREACHABLE, "a negative map"))
        for frame in wrong_direction(a):
            liar.send_raw(frame)
        liar.sync()
        assert liar.attempt == a
        lies = [
            p.TaskDone(w, 0, [1] * n_reduce, "/nowhere/m", LIE, offset=-5),
            p.TaskDone(w, 0, [1] * n_reduce, "/nowhere/m", LIE, offset=2**63 - 1),
            p.TaskDone(w, 0, [-1] + [1] * (n_reduce - 1), "/nowhere/m", LIE),
            p.TaskDone(w, 0, [1] * (n_reduce + 1), "/nowhere/m", LIE),
        ]
        for done in lies:
            assert liar.attempt is not None, "the coordinator gave the only worker nothing to do"
            liar.lie(dataclasses.replace(done, attempt=liar.attempt))
        liar.leave()
        log = job.wait_for(lambda log: of(log, "worker_left", worker=w), "the first liar to leave")
        assert len(of(log, "task_failed", worker=w, user_error=False)) == 4
        assert len(of(log, "fetch_failed", worker=w)) == 2
        assert not of(log, "task_finished")

        # Phase 2: the real worker runs the maps and a (slow) reduce; a second liar gets the other reduces.
        job.worker()
        log = job.wait_for(lambda log: of(log, "task_assigned", phase="reduce"), "a reduce to start")
        real = of(log, "task_assigned", phase="reduce")[0]
        liar2 = FakeWorker(context, job.endpoint, "liar-2")
        fakes.append(liar2)
        liar2.expect(p.AssignReduce)
        w2, job_id = liar2.id, liar2.welcome.job_id
        # The real worker's attempt, claimed with the very name that attempt writes: not the sender's.
        theirs = output.attempt_temp_name(real["task"], job_id, real["attempt"])
        liar2.send(p.TaskDone(w2, real["attempt"], [], theirs, LIE, size=10))
        liar2.send(p.FetchFailed(w2, liar2.attempt, 10**9, 1, UNREACHABLE, "a map out of range"))
        liar2.send(p.FetchFailed(w2, liar2.attempt, -7, 1, UNREACHABLE, "a negative map"))
        liar2.send(p.FetchFailed(w2, liar2.attempt, 0, 999_999, UNREACHABLE, "an attempt of map 0 that never was"))
        for frame in wrong_direction(liar2.attempt):
            liar2.send_raw(frame)
        liar2.sync()

        def name(attempt: int, task: int | None = None) -> str:
            return output.attempt_temp_name(liar2.task if task is None else task, job_id, attempt)

        # Each lie fails the attempt; the liar is then excluded from that task and gets another.
        lies = [
            lambda a: p.TaskDone(w2, a, [], "../../etc/passwd", LIE, size=5),
            lambda a: p.TaskDone(w2, a, [], name(a), LIE, size=-1),
            lambda a: p.TaskDone(w2, a, [], name(a + 1), LIE),
            lambda a: p.TaskDone(w2, a, [], name(a, real["task"]), LIE),
            lambda a: p.TaskDone(w2, a, [], name(a), LIE, offset=-(2**63), size=2**63 - 1),
        ]
        for make_lie in lies:
            assert liar2.attempt is not None, "no reduce was left for the second liar"
            liar2.lie(make_lie(liar2.attempt))
        liar2.leave()
        log = job.finish()
    finally:
        for fake in fakes:
            fake.close()
        context.term()
    assert_same_output(expected, job.out)
    assert not [e for e in of(log, "task_finished") if e["records"] == LIE], "a lie was taken for a result"
    assert len(of(log, "task_failed", worker=w2, user_error=False)) == len(lies)
    assert len(of(log, "fetch_failed", worker=w2)) == 3
    assert of(log, "worker_left", worker=w2) and not of(log, "worker_dead")
    for partition in range(n_reduce):
        assert len(of(log, "output_committed", partition=partition)) == 1
    check_rejected(log, 2 * len(wrong_direction(0)))


def test_a_message_from_a_worker_that_never_existed_deletes_nothing(tmp_path, oracle, make_job):
    """A TaskDone from an unknown worker is answered Unknown and its content ignored: the reduce
    output it names (here, files that look like any job's temporary output) stays where it is."""
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(2)]
    expected = oracle(SLEEPY, inputs, "--reduce", "2")
    job = make_job(SLEEPY, inputs, "--reduce", "2")
    job.wait_for(
        lambda log: job.out.exists() and any(e.name.startswith(".mapreduce-visible-") for e in job.out.iterdir()),
        "the coordinator to start",
    )
    decoys = [job.out / ".part-00000.0123456789ab-a1.tmp", job.out / ".part-00001.decoy-a7.tmp"]
    for decoy in decoys:
        decoy.write_text("someone else's output\n")
    context = zmq.Context()
    swarm = Swarm(context, job.endpoint, 1)
    try:
        for decoy in decoys:
            for worker in (SENTINEL + 1, 1, 0, -1):
                swarm.send(0, [p.encode(p.TaskDone(worker, 1, [], decoy.name, LIE, size=22))])
        swarm.sync()
        survivors = [d.name for d in decoys if d.exists()]
        job.worker()
        log = job.finish()
    finally:
        swarm.close()
        context.term()
    assert survivors == [d.name for d in decoys], (
        f"fenced messages deleted {sorted({d.name for d in decoys} - set(survivors))}"
    )
    assert_same_output(expected, job.out)  # the job's end removed the leftovers, as it does any temp file
    assert not [e for e in of(log, "task_finished") if e["records"] == LIE]
