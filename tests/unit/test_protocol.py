"""Wire messages: round trips, and rejection of everything malformed with ProtocolError only."""

from __future__ import annotations

import dataclasses
import random

import msgpack
import pytest

from mapreduce.errors import ProtocolError
from mapreduce.output import Compression
from mapreduce.wire import messages as p

ALL = p.WORKER_MESSAGES + p.COORDINATOR_MESSAGES

OUT_A = p.MapOutput(0, 7, "host-1", "/scratch/a/m7", "tcp://10.0.0.1:5001", 0, 123)
OUT_B = p.MapOutput(3, 12, "host-2", "/scratch/b/m12 ünïcode", "tcp://10.0.0.2:5002", 2**40, 0)

WORKER_SAMPLES = [
    p.Register("worker-1", 4242, "box.example", "host-1", "tcp://10.0.0.1:5001", "/tmp/scratch"),
    p.Heartbeat(5),
    p.Heartbeat(0),
    p.TaskDone(5, 9, [10, 0, 2**63 - 1], "/scratch/a/m9", 1234),
    p.TaskDone(5, 9),
    p.TaskFailed(5, 9, "ZeroDivisionError: division by zero", "Traceback (most recent call last):\n  ...", True),
    p.TaskFailed(5, 9, "FetchError: gone", "", user_error=False),
    p.FetchFailed(5, 9, 3, 7, "tcp://127.0.0.1:5002", "data server did not answer"),
    p.Cancelled(5, 9),
    p.Goodbye(5),
    p.Draining(5),
    p.TaskStatus(5, 9, "parsed 1,000 records"),
    p.Register(
        "w",
        9,
        "box",
        "boot-1",
        "tcp://10.0.0.2:6000",
        "/scratch",
        "job1",
        [p.HeldOutput(0, 2, 3, "/scratch/m3", [4, 0], 16, 2, [p.CounterValue("g", "c", 1)])],
    ),
]

COORDINATOR_SAMPLES = [
    p.Welcome(5, "abc123", b"\x80\x05\x00\xff pickled", 3, 2, 0.25, "/out/dir", 7000, "token", Compression.GZIP),
    p.Heartbeat(0),
    p.AssignMap(9, 2, "input file é.txt", "/abs/input file é.txt", 0, 32 * 1024 * 1024),
    p.AssignReduce(10, 1, [OUT_A, OUT_B]),
    p.AssignReduce(11, 0, []),
    p.MapOutputs(10, [OUT_B]),
    p.MapOutputs(10, [OUT_A, OUT_B, OUT_A]),
    p.Cancel(10),
    p.Unknown("worker 5 is dead"),
    p.JobDone(True, "output committed"),
    p.JobDone(False),
    p.Refused("the data server at tcp://10.0.0.2:4000 does not answer"),
    p.TaskDone(-1, -(2**63), [], "", 0),
]


def frame(version, name, fields) -> bytes:
    return msgpack.packb([version, name, fields], use_bin_type=True)


def fields_of(message) -> dict:
    return msgpack.unpackb(p.encode(message), raw=False)[2]


def rejects(data: bytes, allowed=ALL, match: str | None = None) -> ProtocolError:
    with pytest.raises(ProtocolError, match=match) as info:
        p.decode(data, allowed)
    return info.value


# ---- round trips -----------------------------------------------------------------


@pytest.mark.parametrize("message", WORKER_SAMPLES, ids=lambda m: type(m).__name__)
def test_worker_messages_round_trip(message):
    decoded = p.decode(p.encode(message), p.WORKER_MESSAGES)
    assert type(decoded) is type(message)
    assert decoded == message


@pytest.mark.parametrize("message", COORDINATOR_SAMPLES[:-1], ids=lambda m: type(m).__name__)
def test_coordinator_messages_round_trip(message):
    decoded = p.decode(p.encode(message), p.COORDINATOR_MESSAGES)
    assert type(decoded) is type(message)
    assert decoded == message


def test_every_message_type_is_covered_by_the_samples():
    covered = {type(m) for m in WORKER_SAMPLES + COORDINATOR_SAMPLES}
    assert covered == set(ALL)


def test_nested_map_outputs_decode_to_dataclasses():
    decoded = p.decode(p.encode(p.AssignReduce(10, 1, [OUT_A, OUT_B])), p.COORDINATOR_MESSAGES)
    assert [type(o) for o in decoded.outputs] == [p.MapOutput, p.MapOutput]
    assert decoded.outputs[1].offset == 2**40 and decoded.outputs[1].path.endswith("ünïcode")
    decoded = p.decode(p.encode(p.MapOutputs(4, [OUT_A])), p.COORDINATOR_MESSAGES)
    assert decoded.outputs == [OUT_A] and isinstance(decoded.outputs[0], p.MapOutput)


def test_encoding_is_version_type_fields():
    version, name, fields = msgpack.unpackb(p.encode(p.Cancel(3)), raw=False)
    assert (version, name, fields) == (p.PROTOCOL_VERSION, "Cancel", {"attempt": 3})


def test_defaults_fill_missing_optional_fields():
    decoded = p.decode(frame(p.PROTOCOL_VERSION, "TaskDone", {"worker": 1, "attempt": 2}), p.WORKER_MESSAGES)
    assert decoded == p.TaskDone(1, 2, [], "", 0)
    decoded = p.decode(
        frame(p.PROTOCOL_VERSION, "TaskFailed", {"worker": 1, "attempt": 2, "error": "E"}), p.WORKER_MESSAGES
    )
    assert decoded.user_error is True and decoded.details == ""


def test_compression_travels_as_its_name_and_decodes_to_the_enum():
    fields = fields_of(COORDINATOR_SAMPLES[0])
    assert fields["compression"] == "gzip"
    decoded = p.decode(frame(p.PROTOCOL_VERSION, "Welcome", fields), p.COORDINATOR_MESSAGES)
    assert type(decoded.compression) is Compression and decoded.compression is Compression.GZIP
    del fields["compression"]  # not given: none
    assert (
        p.decode(frame(p.PROTOCOL_VERSION, "Welcome", fields), p.COORDINATOR_MESSAGES).compression is Compression.NONE
    )


@pytest.mark.parametrize("value", ["zip", "GZIP", "", 1, None, ["gzip"], b"gzip"])
def test_unknown_compression_is_rejected(value):
    rejects(_with(COORDINATOR_SAMPLES[0], compression=value), match="Welcome.compression")


def test_int_is_accepted_for_a_float_field_and_becomes_float():
    fields = fields_of(COORDINATOR_SAMPLES[0])
    fields["heartbeat_interval"] = 2
    decoded = p.decode(frame(p.PROTOCOL_VERSION, "Welcome", fields), p.COORDINATOR_MESSAGES)
    assert decoded.heartbeat_interval == 2.0 and type(decoded.heartbeat_interval) is float


# ---- rejections -------------------------------------------------------------------


V = p.PROTOCOL_VERSION


@pytest.mark.parametrize("version", [0, V - 1, V + 1, -1, str(V), None, [V], bytes([V])])
def test_wrong_version_is_rejected(version):
    rejects(frame(version, "Heartbeat", {"worker": 1}), match="version")


@pytest.mark.parametrize("version", [float(V)])
def test_version_of_another_type_equal_to_the_version_is_rejected(version):
    rejects(frame(version, "Heartbeat", {"worker": 1}), match="version")


@pytest.mark.parametrize("name", ["Nope", "heartbeat", "", "MapOutput", 7, None, b"Heartbeat", ["Heartbeat"]])
def test_unknown_type_is_rejected(name):
    rejects(frame(p.PROTOCOL_VERSION, name, {"worker": 1}), match="unexpected message type")


@pytest.mark.parametrize(
    "message", [m for m in COORDINATOR_SAMPLES if type(m) not in p.WORKER_MESSAGES], ids=lambda m: type(m).__name__
)
def test_coordinator_only_type_is_rejected_from_workers(message):
    data = p.encode(message)
    assert p.decode(data, p.COORDINATOR_MESSAGES) == message
    rejects(data, p.WORKER_MESSAGES, match=type(message).__name__)


@pytest.mark.parametrize(
    "message", [m for m in WORKER_SAMPLES if type(m) not in p.COORDINATOR_MESSAGES], ids=lambda m: type(m).__name__
)
def test_worker_only_type_is_rejected_from_the_coordinator(message):
    rejects(p.encode(message), p.COORDINATOR_MESSAGES, match=type(message).__name__)


@pytest.mark.parametrize(
    "message, missing",
    [
        (WORKER_SAMPLES[0], "scratch"),
        (WORKER_SAMPLES[0], "name"),
        (WORKER_SAMPLES[3], "attempt"),
        (WORKER_SAMPLES[5], "error"),
        (COORDINATOR_SAMPLES[0], "app"),
        (COORDINATOR_SAMPLES[3], "outputs"),
        (COORDINATOR_SAMPLES[9], "ok"),
    ],
)
def test_missing_field_is_rejected(message, missing):
    fields = fields_of(message)
    del fields[missing]
    rejects(frame(p.PROTOCOL_VERSION, type(message).__name__, fields), match=f"missing field '{missing}'")


def test_missing_field_inside_a_nested_map_output_is_rejected():
    fields = fields_of(p.MapOutputs(1, [OUT_A, OUT_B]))
    del fields["outputs"][1]["length"]
    rejects(frame(p.PROTOCOL_VERSION, "MapOutputs", fields), match="missing field 'length'")


@pytest.mark.parametrize(
    "name, fields",
    [
        ("Heartbeat", {"worker": 1, "extra": 2}),
        ("Cancel", {"attempt": 1, "worker": 1}),
        ("TaskDone", {"worker": 1, "attempt": 2, "records": 3, "Records": 3}),
        ("Goodbye", {"worker": 1, b"worker": 1}),  # a bytes key is not the field name
    ],
)
def test_unknown_extra_field_is_rejected(name, fields):
    rejects(frame(p.PROTOCOL_VERSION, name, fields), match="unknown field")


def test_unknown_extra_field_in_nested_map_output_is_rejected():
    fields = fields_of(p.AssignReduce(1, 0, [OUT_A]))
    fields["outputs"][0]["checksum"] = 5
    rejects(frame(p.PROTOCOL_VERSION, "AssignReduce", fields), match="unknown field")


def _with(message, **changes) -> bytes:
    fields = fields_of(message)
    fields.update(changes)
    return frame(p.PROTOCOL_VERSION, type(message).__name__, fields)


@pytest.mark.parametrize(
    "data",
    [
        _with(p.Heartbeat(1), worker="1"),  # str for int
        _with(p.Heartbeat(1), worker=True),  # bool for int
        _with(p.Heartbeat(1), worker=1.0),  # float for int
        _with(p.Heartbeat(1), worker=None),
        _with(p.Heartbeat(1), worker=[1]),
        _with(p.Heartbeat(1), worker=2**64 - 1),  # out of the int64 range
        _with(p.Cancelled(1, 2), attempt=False),
        _with(p.TaskDone(1, 2), partition_lengths=["1", "2"]),  # list of the wrong item type
        _with(p.TaskDone(1, 2), partition_lengths=[1, True]),
        _with(p.TaskDone(1, 2), partition_lengths=[1, 2.5]),
        _with(p.TaskDone(1, 2), partition_lengths=[[1]]),
        _with(p.TaskDone(1, 2), partition_lengths=5),  # not a list
        _with(p.TaskDone(1, 2), partition_lengths={"a": 1}),
        _with(p.TaskDone(1, 2), path=b"/bytes/path"),  # bytes for str
        _with(p.TaskFailed(1, 2, "e"), user_error=1),  # int for bool
        _with(p.TaskFailed(1, 2, "e"), user_error="yes"),
        _with(COORDINATOR_SAMPLES[0], app="a str, not bytes"),
        _with(COORDINATOR_SAMPLES[0], heartbeat_interval=True),  # bool for float
        _with(COORDINATOR_SAMPLES[0], heartbeat_interval="1.0"),
        _with(p.AssignReduce(1, 0, []), outputs=[1, 2]),  # list of non-maps
        _with(p.AssignReduce(1, 0, []), outputs=[[0, 7, "h", "p", "a", 0, 1]]),
        _with(p.AssignReduce(1, 0, []), outputs=[{**fields_of(OUT_A), "offset": "0"}]),
        _with(p.MapOutputs(1, []), outputs=None),
        _with(p.JobDone(True), ok=1),
        _with(p.Unknown("x"), reason=None),
    ],
)
def test_wrong_field_types_are_rejected(data):
    err = rejects(data)
    assert str(err)  # says what is wrong


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # a byte msgpack never uses
        b"\x93\x01",  # an array of 3 that ends early
        p.encode(p.Heartbeat(1))[:-1],  # truncated
        p.encode(p.Heartbeat(1)) + b"\x00",  # trailing bytes
        p.encode(p.Heartbeat(1)) * 2,
        b"\xdb\xff\xff\xff\xff",  # a 4 GiB str header with no body
        b"GET / HTTP/1.1\r\n\r\n",
        msgpack.packb({"version": 1}),  # not an array
        msgpack.packb([p.PROTOCOL_VERSION, "Heartbeat"]),  # too short
        msgpack.packb([p.PROTOCOL_VERSION, "Heartbeat", {"worker": 1}, None]),  # too long
        msgpack.packb([p.PROTOCOL_VERSION, "Heartbeat", [1]]),  # fields not a map
        msgpack.packb(42),
        msgpack.packb([p.PROTOCOL_VERSION, "Heartbeat", {1: 1}]),  # non-str map key
    ],
)
def test_garbage_is_rejected(data):
    rejects(data)


def test_oversized_frame_is_rejected_before_parsing():
    rejects(b"\x00" * (p.MAX_MESSAGE_BYTES + 1), match="exceeds the limit")


def test_size_limit_boundary(monkeypatch):
    message = p.Unknown("x" * 500)
    data = p.encode(message)
    monkeypatch.setattr(p, "MAX_MESSAGE_BYTES", len(data))
    assert p.decode(data, p.COORDINATOR_MESSAGES) == message
    monkeypatch.setattr(p, "MAX_MESSAGE_BYTES", len(data) - 1)
    rejects(data, p.COORDINATOR_MESSAGES, match="exceeds the limit")


# ---- fuzzing: decode raises ProtocolError and nothing else -----------------------------


def _random_value(rng: random.Random, depth: int = 0):
    choice = rng.randrange(12 if depth < 3 else 8)
    if choice == 0:
        return rng.choice([0, 1, -1, 2**63 - 1, -(2**63), 2**64 - 1, rng.randrange(-1000, 1000)])
    if choice == 1:
        return rng.choice([True, False, None])
    if choice == 2:
        return rng.choice([0.0, -1.5, float("inf"), float("nan"), rng.random()])
    if choice == 3:
        return "".join(rng.choice("ab é\x00😀") for _ in range(rng.randrange(6)))
    if choice == 4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(6)))
    if choice == 5:
        if rng.random() < 0.3:
            return msgpack.Timestamp(rng.randrange(2**34), rng.randrange(10**9))  # ext type -1
        return msgpack.ExtType(rng.randrange(128), bytes(rng.randrange(256) for _ in range(rng.randrange(13))))
    if choice == 6:
        return rng.choice(["worker", "attempt", "outputs", "Heartbeat", "TaskDone", "MapOutput"])
    if choice == 7:
        return rng.choice([1, 1, 2, "1"])
    if choice in (8, 9):
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [f.name for cls in ALL + (p.MapOutput,) for f in dataclasses.fields(cls)] + ["x"]
    return {
        (rng.choice(keys) if rng.random() < 0.8 else rng.choice([b"worker", b"\xff"])): _random_value(rng, depth + 1)
        for _ in range(rng.randrange(5))
    }


def _mutate_structure(rng: random.Random, message) -> bytes:
    version, name, fields = msgpack.unpackb(p.encode(message), raw=False)
    roll = rng.random()
    if roll < 0.1:
        version = _random_value(rng)
    elif roll < 0.2:
        name = rng.choice([cls.__name__ for cls in ALL] + ["MapOutput", "Nope"])
    elif fields:
        key = rng.choice(sorted(fields))
        action = rng.randrange(4)
        if action == 0:
            del fields[key]
        elif action == 1:
            fields[key] = _random_value(rng)
        elif action == 2:
            fields[rng.choice([key + "_", "extra"])] = _random_value(rng)
        elif isinstance(fields[key], list) and fields[key]:
            i = rng.randrange(len(fields[key]))
            item = fields[key][i]
            if isinstance(item, dict) and item:
                item[rng.choice(sorted(item))] = _random_value(rng)
            else:
                fields[key][i] = _random_value(rng)
    return msgpack.packb([version, name, fields], use_bin_type=True)


def _mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randrange(1, 4)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b.insert(rng.randrange(len(b) + 1), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif b:
            b = b[: rng.randrange(len(b))]
    return bytes(b)


def test_fuzzed_frames_only_ever_raise_protocol_error():
    rng = random.Random(20240611)
    samples = WORKER_SAMPLES + COORDINATOR_SAMPLES
    decoded_count = rejected = 0
    for i in range(4000):
        kind = i % 4
        if kind == 0:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
        elif kind == 1:
            data = _mutate_bytes(rng, p.encode(rng.choice(samples)))
        elif kind == 2:
            data = _mutate_structure(rng, rng.choice(samples))
        else:
            data = msgpack.packb(
                [rng.choice([1, 1, 1, _random_value(rng)]), rng.choice([c.__name__ for c in ALL]), _random_value(rng)],
                use_bin_type=True,
            )
        allowed = rng.choice([ALL, p.WORKER_MESSAGES, p.COORDINATOR_MESSAGES])
        try:
            message = p.decode(data, allowed)
        except ProtocolError:
            rejected += 1
            continue
        except Exception as exc:  # pragma: no cover - what this test exists to catch
            pytest.fail(f"decode({data!r}) raised {type(exc).__name__}: {exc}")
        decoded_count += 1
        assert type(message) in allowed
        # Whatever passes validation is a well-typed message: it re-encodes stably.
        again = p.encode(message)
        assert p.encode(p.decode(again, allowed)) == again
    # The corpus exercised both outcomes.
    assert rejected > 1000 and decoded_count > 50


def test_a_status_line_longer_than_the_limit_is_rejected():
    assert p.decode(p.encode(p.TaskStatus(1, 2, "x" * p.MAX_STATUS)), ALL).status == "x" * p.MAX_STATUS
    rejects(p.encode(p.TaskStatus(1, 2, "x" * (p.MAX_STATUS + 1))), match="at most 200")
