"""The standing cluster's service, piece by piece: its job queue (a pure state machine), its
check of submitted jobs, its addresses, its wire messages, and the fork server that starts
jobs' coordinators (driven in-process: real pipes, real forks, no sockets)."""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import signal
import tempfile
import zlib
from pathlib import Path

import msgpack
import pytest

from mapreduce.errors import ProtocolError, UsageError
from mapreduce.output import Compression
from mapreduce.service import addresses, forkserver, queue, server
from mapreduce.service.forkserver import serve_forks
from mapreduce.service.queue import Cancelling, JobQueue
from mapreduce.service.server import check_request
from mapreduce.wire import messages as p
from mapreduce.wire.messages import JobState

# ---- the job queue -----------------------------------------------------------------


def request(n: int = 0, **changes) -> p.SubmitJob:
    return dataclasses.replace(p.SubmitJob("wordcount", [f"/data/in-{n}.txt"], f"/data/out-{n}"), **changes)


def events_for(job_id: str) -> str:
    return f"/state/jobs/{job_id}/events.jsonl"


def queue_of(n: int, first_number: int = 1) -> tuple[JobQueue, list[str]]:
    q = JobQueue(first_number=first_number)
    ids = [q.submit(float(i), request(i), events_for).job_id for i in range(n)]
    return q, ids


def states(q: JobQueue) -> dict[str, JobState]:
    return {info.job_id: info.state for info in q.all()}


def test_submit_queues_a_job_with_what_the_request_said():
    q = JobQueue()
    info = q.submit(12.5, request(7), events_for)
    assert info == p.JobInfo(
        "job-00001", JobState.QUEUED, "wordcount", "/data/out-7", 12.5, events=events_for("job-00001")
    )
    assert q.get("job-00001") == info and q.all() == [info]
    assert q.get("job-00002") is None
    assert not q.idle


def test_job_ids_count_up_from_first_number():
    _, ids = queue_of(3)
    assert ids == ["job-00001", "job-00002", "job-00003"]
    _, ids = queue_of(2, first_number=41)
    assert ids == ["job-00041", "job-00042"]
    _, ids = queue_of(2, first_number=99_999)
    assert ids == ["job-99999", "job-100000"]  # more digits, never a reused id


def test_jobs_start_first_in_first_out_one_at_a_time():
    q, ids = queue_of(3)
    started = []
    for t, job_id in enumerate(ids, start=10):
        job = q.start_next(float(t))
        assert job is not None and job.info.job_id == job_id
        assert job.info.state is JobState.RUNNING and job.info.started == float(t)
        assert job.request == request(ids.index(job_id))
        assert q.running is job
        assert q.start_next(float(t) + 0.5) is None  # one runs: no other starts
        started.append(job.info.job_id)
        info = q.ended(float(t) + 0.9, job_id, ok=True, message="done")
        assert info.state is JobState.SUCCEEDED and info.finished == float(t) + 0.9 and info.message == "done"
        assert q.running is None
    assert started == ids
    assert q.start_next(20.0) is None  # nothing left
    assert q.idle


def test_a_job_submitted_while_one_runs_waits_for_it():
    q, (first,) = queue_of(1)
    q.start_next(1.0)
    second = q.submit(2.0, request(1), events_for).job_id
    assert q.start_next(3.0) is None
    assert states(q) == {first: JobState.RUNNING, second: JobState.QUEUED}
    q.ended(4.0, first, ok=False, message="boom")
    assert q.get(first).state is JobState.FAILED and q.get(first).message == "boom"
    assert q.start_next(5.0).info.job_id == second


def test_idle_only_when_nothing_runs_and_nothing_waits():
    q = JobQueue()
    assert q.idle
    job_id = q.submit(0.0, request(), events_for).job_id
    assert not q.idle
    q.start_next(1.0)
    assert not q.idle
    q.ended(2.0, job_id, ok=True, message="")
    assert q.idle


def test_cancelling_a_queued_job_dequeues_it_at_once_and_it_never_starts():
    q, (a, b, c) = queue_of(3)
    assert q.start_next(1.0).info.job_id == a
    assert q.cancel(2.0, b) is Cancelling.DEQUEUED
    cancelled = q.get(b)
    assert cancelled.state is JobState.CANCELLED and cancelled.finished == 2.0 and cancelled.started == 0.0
    q.ended(3.0, a, ok=True, message="")
    assert q.start_next(4.0).info.job_id == c  # b is skipped
    q.ended(5.0, c, ok=True, message="")
    assert q.start_next(6.0) is None
    assert q.get(b).state is JobState.CANCELLED and q.get(b).started == 0.0
    assert q.idle


def test_cancelling_the_running_job_asks_to_stop_it_and_it_ends_cancelled():
    q, (a,) = queue_of(1)
    job = q.start_next(1.0)
    assert q.cancel(2.0, a) is Cancelling.STOP_RUNNING
    assert job.cancel_asked
    assert q.get(a).state is JobState.RUNNING  # until its coordinator is gone
    assert q.start_next(2.5) is None
    info = q.ended(3.0, a, ok=False, message="cancelled")
    assert info.state is JobState.CANCELLED and info.finished == 3.0


def test_a_second_cancel_of_the_running_job_does_not_interrupt_it_again():
    q, (a,) = queue_of(1)
    q.start_next(1.0)
    assert q.cancel(2.0, a) is Cancelling.STOP_RUNNING
    assert q.cancel(2.5, a) is Cancelling.UNDER_WAY  # its coordinator's cleanup must not be cut short
    assert q.stop(3.0, cancel_running=True) == [Cancelling.UNDER_WAY]
    assert q.ended(4.0, a, ok=False, message="").state is JobState.CANCELLED


def test_a_running_job_that_commits_despite_a_cancel_request_succeeded():
    q, (a,) = queue_of(1)
    q.start_next(1.0)
    assert q.cancel(2.0, a) is Cancelling.STOP_RUNNING
    info = q.ended(3.0, a, ok=True, message="output committed to /data/out-0")
    assert info.state is JobState.SUCCEEDED  # the commit won the race


def test_a_failure_without_a_cancel_request_is_a_failure():
    q, (a,) = queue_of(1)
    q.start_next(1.0)
    assert q.ended(2.0, a, ok=False, message="a map kept failing").state is JobState.FAILED


@pytest.mark.parametrize("ok", [True, False])
def test_cancelling_a_finished_job_changes_nothing(ok):
    q, (a,) = queue_of(1)
    q.start_next(1.0)
    before = q.ended(2.0, a, ok=ok, message="over")
    assert q.cancel(3.0, a) is Cancelling.ALREADY_OVER
    assert q.get(a) == before


def test_cancelling_a_cancelled_queued_job_again_changes_nothing():
    q, (a,) = queue_of(1)
    assert q.cancel(1.0, a) is Cancelling.DEQUEUED
    before = q.get(a)
    assert q.cancel(2.0, a) is Cancelling.ALREADY_OVER
    assert q.get(a) == before


def test_stop_cancels_the_queue_refuses_new_jobs_and_lets_the_running_job_finish():
    q, (a, b, c) = queue_of(3)
    running = q.start_next(1.0)
    assert q.stop(2.0, cancel_running=False) == [Cancelling.DEQUEUED, Cancelling.DEQUEUED]
    assert q.stopping and not q.cancel_running
    assert states(q) == {a: JobState.RUNNING, b: JobState.CANCELLED, c: JobState.CANCELLED}
    assert not running.cancel_asked
    with pytest.raises(ValueError, match="stopping"):
        q.submit(3.0, request(9), events_for)
    assert len(q.all()) == 3
    assert not q.idle
    assert q.ended(4.0, a, ok=True, message="").state is JobState.SUCCEEDED
    assert q.idle


def test_stop_cancelling_the_running_job_asks_to_stop_it_too():
    q, (a, b) = queue_of(2)
    running = q.start_next(1.0)
    assert q.stop(2.0, cancel_running=True) == [Cancelling.STOP_RUNNING, Cancelling.DEQUEUED]  # in job order
    assert q.stopping and q.cancel_running and running.cancel_asked
    assert q.get(b).state is JobState.CANCELLED
    assert q.ended(3.0, a, ok=False, message="").state is JobState.CANCELLED


def test_a_later_stop_that_cancels_the_running_job_is_remembered():
    q, (a,) = queue_of(1)
    q.start_next(1.0)
    assert q.stop(2.0, cancel_running=False) == []
    assert q.stop(3.0, cancel_running=True) == [Cancelling.STOP_RUNNING]
    assert q.stop(4.0, cancel_running=False) == []
    assert q.cancel_running  # a later stop without it does not take it back


def test_nothing_starts_once_stopping():
    q, (a,) = queue_of(1)
    q.stop(1.0, cancel_running=False)
    assert q.start_next(2.0) is None
    assert q.get(a).state is JobState.CANCELLED
    empty = JobQueue()
    assert empty.stop(1.0, cancel_running=True) == []
    assert empty.start_next(2.0) is None and empty.idle


def run_to_end(q: JobQueue, now: float, ok: bool = True) -> str:
    job = q.start_next(now)
    assert job is not None
    q.ended(now + 0.5, job.info.job_id, ok=ok, message="")
    return job.info.job_id


def test_finished_jobs_beyond_the_limit_are_forgotten_oldest_first(monkeypatch):
    monkeypatch.setattr(queue, "KEEP_FINISHED", 2)
    q, ids = queue_of(6)
    for t in range(3):
        run_to_end(q, float(t), ok=t != 1)
    assert [info.job_id for info in q.all()] == ids[1:]  # job 1 forgotten: three finished, two kept
    assert q.get(ids[0]) is None
    running = q.start_next(10.0)
    assert running.info.job_id == ids[3]
    assert q.cancel(11.0, ids[5]) is Cancelling.DEQUEUED  # over: counts as finished
    q.ended(12.0, ids[3], ok=True, message="")
    # Finished, in submission order: 2, 3, 4, 6; queued: 5.
    assert [info.job_id for info in q.all()] == [ids[3], ids[4], ids[5]]
    assert states(q) == {ids[3]: JobState.SUCCEEDED, ids[4]: JobState.QUEUED, ids[5]: JobState.CANCELLED}


def test_queued_and_running_jobs_are_never_forgotten(monkeypatch):
    monkeypatch.setattr(queue, "KEEP_FINISHED", 0)
    q, ids = queue_of(4)
    first = run_to_end(q, 0.0)
    assert q.get(first) is None  # keeping none: gone at once...
    running = q.start_next(1.0)
    q.cancel(2.0, ids[3])
    assert q.ended(3.0, running.info.job_id, ok=True, message="").state is JobState.SUCCEEDED  # ...but reported
    assert [info.job_id for info in q.all()] == [ids[2]]  # the queued one stays
    q.start_next(4.0)
    q.submit(5.0, request(), events_for)
    assert states(q) == {ids[2]: JobState.RUNNING, "job-00005": JobState.QUEUED}


def test_forgetting_does_not_reuse_ids(monkeypatch):
    monkeypatch.setattr(queue, "KEEP_FINISHED", 0)
    q, _ = queue_of(2)
    run_to_end(q, 0.0)
    run_to_end(q, 1.0)
    assert q.all() == []
    assert q.submit(2.0, request(), events_for).job_id == "job-00003"


# ---- checking a submitted job --------------------------------------------------------


def valid(**changes) -> p.SubmitJob:
    return dataclasses.replace(
        p.SubmitJob(
            "wordcount",
            ["/data/a.txt", "/data/b.txt"],
            "/data/out",
            params=["top=10", "sep=a=b"],
            files=["/data/stop.txt", "/data/words.txt#words"],
        ),
        **changes,
    )


SOURCE = "def map(key, value):\n    yield value, 1\n"


@pytest.mark.parametrize(
    "submitted",
    [
        valid(),
        valid(app="my_app.py", app_source=SOURCE),
        valid(app="_A9.py", app_source=SOURCE),
        valid(app="a" * 100 + ".py", app_source=SOURCE),
        valid(app="mypkg.jobs.count"),  # a module
        valid(app="_private"),
        valid(n_reduce=0),
        valid(n_reduce=100_000),
        valid(n_reduce=None),
        valid(params=[], files=[]),
        valid(files=["/data/x#y#z"]),
        valid(inputs=["/"]),
        valid(split_size=0, max_attempts=0, skip_bad_records=0),
        valid(split_size=1, max_attempts=4, skip_bad_records=10, overwrite=True, compress=Compression.GZIP),
        valid(inputs=["/data/" + "x" * 4090]),  # 4096 characters
    ],
    ids=lambda r: r.app[:20],
)
def test_a_valid_request_passes(submitted):
    assert check_request(submitted) is None


@pytest.mark.parametrize(
    "app",
    [
        "app.txt",
        "app",
        "my-app.py",
        "9app.py",
        "dir/app.py",
        "../app.py",
        "/abs/app.py",
        ".py",
        "a" * 101 + ".py",
        "app.py\n",
        "app .py",
        "app.py\0",
    ],
)
def test_an_app_file_name_must_be_a_plain_python_file_name(app):
    why = check_request(valid(app=app, app_source=SOURCE))
    assert why is not None and why.startswith("app file name")


@pytest.mark.parametrize(
    "app", ["", "word-count", "9lives", "apps/wordcount", "wordcount.py/x", "a b", "a\0", "x" * 202, "wordcount\n"]
)
def test_a_built_in_app_must_be_a_name(app):
    why = check_request(valid(app=app))
    assert why is not None and "neither a built-in app's name nor a module's" in why


def test_a_long_module_name_is_allowed_up_to_201_characters():
    assert check_request(valid(app="x" * 201)) is None
    assert check_request(valid(app="x" * 202)) is not None


def test_no_inputs_is_refused():
    assert check_request(valid(inputs=[])) == "no inputs"


@pytest.mark.parametrize(
    "changes",
    [
        {"inputs": ["data/a.txt"]},
        {"inputs": ["/data/a.txt", "b.txt"]},
        {"inputs": [""]},
        {"inputs": ["~/a.txt"]},
        {"inputs": ["rel#/abs"]},
        {"output": "out"},
        {"output": ""},
        {"output": "./out"},
        {"files": ["stop.txt"]},
        {"files": ["/data/a.txt", "stop.txt#stop"]},  # PATH must be absolute, whatever NAME is
        {"files": ["#/data/stop.txt"]},
        {"inputs": ["/data/" + "x" * 4091]},  # 4097 characters
    ],
    ids=repr,
)
def test_a_path_that_is_not_absolute_is_refused(changes):
    why = check_request(valid(**changes))
    assert why is not None and "is not an absolute path on the cluster's host" in why


@pytest.mark.parametrize(
    "changes",
    [
        {"inputs": ["/data/a\0.txt"]},
        {"output": "/data/out\0"},
        {"files": ["/data/stop.txt#st\0p"]},
        {"params": ["a=\0"]},
        {"kind": p.JobKind.STREAMING, "app": "", "mapper": "cat\0", "params": []},
    ],
    ids=repr,
)
def test_a_nul_anywhere_in_the_request_is_refused(changes):
    why = check_request(valid(**changes))
    assert why is not None and "NUL" in why


def test_a_side_file_may_name_its_task_file_after_a_hash():
    assert check_request(valid(files=["/data/words.txt#words"])) is None
    assert check_request(valid(files=["/data/words.txt#"])) is None  # the coordinator checks NAME


@pytest.mark.parametrize("param", ["top", "", "top:10"])
def test_a_parameter_must_be_name_equals_value(param):
    why = check_request(valid(params=["ok=1", param]))
    assert why is not None and "is not NAME=VALUE" in why


@pytest.mark.parametrize("n_reduce", [-1, 100_001, -(2**63)])
def test_the_number_of_reduces_must_be_in_range(n_reduce):
    assert check_request(valid(n_reduce=n_reduce)) == f"--reduce {n_reduce}: 0 to 100000"


@pytest.mark.parametrize("field", ["split_size", "max_attempts", "skip_bad_records"])
def test_sizes_and_counts_cannot_be_negative(field):
    why = check_request(valid(**{field: -1}))
    assert why == "split size, attempts and bad records to skip cannot be negative"


def test_the_first_reason_is_reported_and_long_values_are_cut():
    why = check_request(valid(app="x" * 5000, inputs=[]))
    assert why.startswith("app ") and len(why) < 200
    why = check_request(valid(inputs=["r" * 5000]))
    assert len(why) < 300


# ---- addresses ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cluster, clients",
    [
        ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556"),
        ("tcp://box.example:1", "tcp://box.example:2"),
        ("tcp://[::1]:5555", "tcp://[::1]:5556"),
        ("tcp://[fe80::1%eth0]:7000", "tcp://[fe80::1%eth0]:7001"),
        ("tcp://*:5555", "tcp://*:5556"),
        ("tcp://host:65534", "tcp://host:65535"),
        ("tcp://host:05555", "tcp://host:5556"),
    ],
)
def test_clients_reach_the_cluster_on_the_next_port(cluster, clients):
    assert addresses.clients_endpoint(cluster) == clients


@pytest.mark.parametrize(
    "cluster",
    [
        "ipc:///tmp/cluster",
        "inproc://cluster",
        "tcp://host:65535",  # no next port
        "tcp://host:0",
        "tcp://host:99999",
        "tcp://host:123456",
        "tcp://host",
        "tcp://host:",
        "tcp://:5555",
        "tcp://host:port",
        "tcp://host:5555/",
        " tcp://host:5555",
        "tcp://host:-1",
        "host:5555",
        "garbage",
        "",
    ],
)
def test_an_address_that_is_not_tcp_host_port_is_a_usage_error(cluster):
    with pytest.raises(UsageError, match="must be tcp://HOST:PORT"):
        addresses.clients_endpoint(cluster)


def test_the_private_endpoint_is_a_socket_in_the_state_folder(tmp_path, monkeypatch):
    assert addresses.private_endpoint(tmp_path) == f"ipc://{tmp_path.resolve()}/control"
    monkeypatch.chdir(tmp_path)
    assert addresses.private_endpoint(Path("state")) == f"ipc://{tmp_path.resolve()}/state/control"


def test_a_state_folder_too_deep_for_a_socket_path_is_refused(tmp_path):
    with pytest.raises(UsageError, match="too deep"):
        addresses.private_endpoint(tmp_path / ("x" * 120))


def test_the_socket_path_limit_is_100_bytes_not_characters():
    folder = "/" + "a" * 91  # "/aaa.../control": 100 bytes
    assert addresses.private_endpoint(Path(folder)) == f"ipc://{folder}/control"
    with pytest.raises(UsageError):
        addresses.private_endpoint(Path(folder + "a"))
    with pytest.raises(UsageError):  # as many characters, one more byte
        addresses.private_endpoint(Path("/" + "a" * 90 + "é"))


def test_the_state_folder_is_mapreduce_state_dir_when_set(monkeypatch, tmp_path):
    monkeypatch.setenv("MAPREDUCE_STATE_DIR", str(tmp_path / "mine"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert addresses.default_state_dir() == tmp_path / "mine"


def test_the_state_folder_is_under_xdg_state_home_otherwise(monkeypatch, tmp_path):
    monkeypatch.setenv("MAPREDUCE_STATE_DIR", "")  # empty: not set
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert addresses.default_state_dir() == tmp_path / "xdg" / "mapreduce" / "cluster"


def test_the_state_folder_defaults_to_the_home_folder(monkeypatch, tmp_path):
    monkeypatch.delenv("MAPREDUCE_STATE_DIR", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert addresses.default_state_dir() == tmp_path / ".local" / "state" / "mapreduce" / "cluster"
    monkeypatch.setenv("XDG_STATE_HOME", "")
    assert addresses.default_state_dir() == tmp_path / ".local" / "state" / "mapreduce" / "cluster"


# ---- the client and service messages ------------------------------------------------


INFO_QUEUED = p.JobInfo("job-00001", JobState.QUEUED, "wordcount", "/data/out", 1700000000.25)
INFO_DONE = p.JobInfo(
    "job-00002",
    JobState.SUCCEEDED,
    "my_app.py",
    "/data/out ünïcode",
    1700000000.0,
    started=1700000001.5,
    finished=1700000009.75,
    message="output committed to /data/out ünïcode",
    events="/state/jobs/job-00002/events.jsonl",
)

CLIENT_SAMPLES = [
    p.SubmitJob("wordcount", ["/data/a.txt"], "/data/out"),
    p.SubmitJob(
        "my_app.py",
        ["/data/a.txt", "/data/b é.txt"],
        "/data/out",
        app_source=SOURCE,
        n_reduce=7,
        params=["top=10"],
        split_size=2**40,
        overwrite=True,
        files=["/data/stop.txt#stop"],
        compress=Compression.GZIP,
        max_attempts=3,
        skip_bad_records=5,
    ),
    p.SubmitJob("wordcount", [], "", n_reduce=0),  # the service, not the wire, refuses what makes no sense
    p.ListJobs(),
    p.WatchJob("job-00001"),
    p.CancelJob("job-00002"),
    p.StopCluster(),
    p.StopCluster(cancel_running=True),
]

SERVICE_SAMPLES = [
    INFO_QUEUED,
    INFO_DONE,
    *(dataclasses.replace(INFO_QUEUED, state=state) for state in JobState),
    p.JobList([]),
    p.JobList([INFO_QUEUED, INFO_DONE], stopping=True),
    p.Declined("no job 'job-09999' on this cluster"),
]


def test_every_client_and_service_message_type_is_covered_by_the_samples():
    assert {type(m) for m in CLIENT_SAMPLES} == set(p.CLIENT_MESSAGES)
    assert {type(m) for m in SERVICE_SAMPLES} == set(p.SERVICE_MESSAGES)
    assert {m.state for m in SERVICE_SAMPLES if isinstance(m, p.JobInfo)} == set(JobState)


@pytest.mark.parametrize("message", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_client_messages_round_trip(message):
    decoded = p.decode(p.encode(message), p.CLIENT_MESSAGES)
    assert type(decoded) is type(message) and decoded == message


@pytest.mark.parametrize("message", SERVICE_SAMPLES, ids=lambda m: type(m).__name__)
def test_service_messages_round_trip(message):
    decoded = p.decode(p.encode(message), p.SERVICE_MESSAGES)
    assert type(decoded) is type(message) and decoded == message


def test_job_states_travel_as_their_values_and_decode_to_the_enum():
    assert msgpack.unpackb(p.encode(INFO_DONE), raw=False)[2]["state"] == "succeeded"
    decoded = p.decode(p.encode(p.JobList([INFO_QUEUED, INFO_DONE])), p.SERVICE_MESSAGES)
    assert [type(info) for info in decoded.jobs] == [p.JobInfo, p.JobInfo]
    assert [type(info.state) for info in decoded.jobs] == [JobState, JobState]
    assert [info.state for info in decoded.jobs] == [JobState.QUEUED, JobState.SUCCEEDED]


def test_job_states_have_fixed_names_on_the_wire():
    assert [s.value for s in JobState] == ["queued", "running", "succeeded", "failed", "cancelled"]


def test_over_means_finished():
    assert {s for s in JobState if s.over} == {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}


def test_submit_defaults_fill_missing_optional_fields():
    data = msgpack.packb([p.PROTOCOL_VERSION, "SubmitJob", {"app": "wc", "inputs": ["/a"], "output": "/o"}])
    assert p.decode(data, p.CLIENT_MESSAGES) == p.SubmitJob("wc", ["/a"], "/o")


def test_an_int_time_decodes_as_a_float():
    fields = msgpack.unpackb(p.encode(INFO_QUEUED), raw=False)[2]
    fields["submitted"] = 1700000000
    decoded = p.decode(msgpack.packb([p.PROTOCOL_VERSION, "JobInfo", fields]), p.SERVICE_MESSAGES)
    assert decoded.submitted == 1700000000.0 and type(decoded.submitted) is float


@pytest.mark.parametrize("message", CLIENT_SAMPLES, ids=lambda m: type(m).__name__)
def test_a_client_message_is_refused_where_the_service_answers(message):
    with pytest.raises(ProtocolError, match="unexpected message type"):
        p.decode(p.encode(message), p.SERVICE_MESSAGES)
    for allowed in (p.WORKER_MESSAGES, p.COORDINATOR_MESSAGES):
        with pytest.raises(ProtocolError, match="unexpected message type"):
            p.decode(p.encode(message), allowed)


@pytest.mark.parametrize("message", SERVICE_SAMPLES, ids=lambda m: type(m).__name__)
def test_a_service_message_is_refused_where_clients_ask(message):
    with pytest.raises(ProtocolError, match="unexpected message type"):
        p.decode(p.encode(message), p.CLIENT_MESSAGES)
    with pytest.raises(ProtocolError, match="unexpected message type"):
        p.decode(p.encode(message), p.WORKER_MESSAGES)


def test_worker_and_coordinator_messages_are_refused_by_the_service_and_its_clients():
    for message in (p.Heartbeat(0), p.Goodbye(3), p.JobDone(True), p.Cancel(1)):
        for allowed in (p.CLIENT_MESSAGES, p.SERVICE_MESSAGES):
            with pytest.raises(ProtocolError):
                p.decode(p.encode(message), allowed)


def test_job_done_telling_a_staying_worker_to_leave_round_trips():
    message = p.JobDone(True, "the cluster is stopping", leave=True)
    decoded = p.decode(p.encode(message), p.COORDINATOR_MESSAGES)
    assert decoded == message and decoded.leave is True
    assert p.decode(p.encode(p.JobDone(False, "x")), p.COORDINATOR_MESSAGES).leave is False


def with_fields(message, changes: dict) -> bytes:
    fields = msgpack.unpackb(p.encode(message), raw=False)[2]
    for name, value in changes.items():
        if value is DROP:
            del fields[name]
        else:
            fields[name] = value
    return msgpack.packb([p.PROTOCOL_VERSION, type(message).__name__, fields], use_bin_type=True)


DROP = object()
SUBMIT = CLIENT_SAMPLES[1]
INFO_FIELDS = msgpack.unpackb(p.encode(INFO_QUEUED), raw=False)[2]


@pytest.mark.parametrize(
    "message, changes, allowed, where",
    [
        (SUBMIT, {"app": b"wordcount"}, p.CLIENT_MESSAGES, "SubmitJob.app"),
        (SUBMIT, {"app": None}, p.CLIENT_MESSAGES, "SubmitJob.app"),
        (SUBMIT, {"inputs": "/data/a.txt"}, p.CLIENT_MESSAGES, "SubmitJob.inputs"),
        (SUBMIT, {"inputs": ["/data/a.txt", 3]}, p.CLIENT_MESSAGES, "SubmitJob.inputs"),
        (SUBMIT, {"inputs": [b"/data/a.txt"]}, p.CLIENT_MESSAGES, "SubmitJob.inputs"),
        (SUBMIT, {"output": ["/data/out"]}, p.CLIENT_MESSAGES, "SubmitJob.output"),
        (SUBMIT, {"n_reduce": "7"}, p.CLIENT_MESSAGES, "SubmitJob.n_reduce"),
        (SUBMIT, {"n_reduce": 7.0}, p.CLIENT_MESSAGES, "SubmitJob.n_reduce"),
        (SUBMIT, {"n_reduce": True}, p.CLIENT_MESSAGES, "SubmitJob.n_reduce"),
        (SUBMIT, {"n_reduce": 2**64 - 1}, p.CLIENT_MESSAGES, "SubmitJob.n_reduce"),
        (SUBMIT, {"params": [["top", "10"]]}, p.CLIENT_MESSAGES, "SubmitJob.params"),
        (SUBMIT, {"split_size": -1.5}, p.CLIENT_MESSAGES, "SubmitJob.split_size"),
        (SUBMIT, {"overwrite": 1}, p.CLIENT_MESSAGES, "SubmitJob.overwrite"),
        (SUBMIT, {"overwrite": "yes"}, p.CLIENT_MESSAGES, "SubmitJob.overwrite"),
        (SUBMIT, {"files": None}, p.CLIENT_MESSAGES, "SubmitJob.files"),
        (SUBMIT, {"compress": "zip"}, p.CLIENT_MESSAGES, "SubmitJob.compress"),
        (SUBMIT, {"max_attempts": None}, p.CLIENT_MESSAGES, "SubmitJob.max_attempts"),
        (SUBMIT, {"app_source": b"print(1)"}, p.CLIENT_MESSAGES, "SubmitJob.app_source"),
        (SUBMIT, {"pickle": b"\x80\x05"}, p.CLIENT_MESSAGES, "unknown field"),
        (SUBMIT, {"inputs": DROP}, p.CLIENT_MESSAGES, "missing field 'inputs'"),
        (p.ListJobs(), {"all": True}, p.CLIENT_MESSAGES, "unknown field"),
        (p.WatchJob("job-00001"), {"job_id": 1}, p.CLIENT_MESSAGES, "WatchJob.job_id"),
        (p.WatchJob("job-00001"), {"job_id": DROP}, p.CLIENT_MESSAGES, "missing field"),
        (p.CancelJob("job-00001"), {"job_id": None}, p.CLIENT_MESSAGES, "CancelJob.job_id"),
        (p.CancelJob("job-00001"), {"force": True}, p.CLIENT_MESSAGES, "unknown field"),
        (p.StopCluster(), {"cancel_running": 1}, p.CLIENT_MESSAGES, "StopCluster.cancel_running"),
        (p.StopCluster(), {"cancel_running": "true"}, p.CLIENT_MESSAGES, "StopCluster.cancel_running"),
        (INFO_DONE, {"state": "done"}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"state": "SUCCEEDED"}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"state": ""}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"state": 1}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"state": None}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"state": ["queued"]}, p.SERVICE_MESSAGES, "JobInfo.state"),
        (INFO_DONE, {"submitted": "now"}, p.SERVICE_MESSAGES, "JobInfo.submitted"),
        (INFO_DONE, {"started": None}, p.SERVICE_MESSAGES, "JobInfo.started"),
        (INFO_DONE, {"message": 5}, p.SERVICE_MESSAGES, "JobInfo.message"),
        (INFO_DONE, {"state": DROP}, p.SERVICE_MESSAGES, "missing field 'state'"),
        (INFO_DONE, {"pid": 42}, p.SERVICE_MESSAGES, "unknown field"),
        (p.JobList([INFO_QUEUED]), {"jobs": INFO_FIELDS}, p.SERVICE_MESSAGES, "JobList.jobs"),
        (p.JobList([INFO_QUEUED]), {"jobs": ["job-00001"]}, p.SERVICE_MESSAGES, "JobList.jobs"),
        (p.JobList([]), {"stopping": 0}, p.SERVICE_MESSAGES, "JobList.stopping"),
        (p.Declined("no"), {"reason": b"no"}, p.SERVICE_MESSAGES, "Declined.reason"),
        (p.Declined("no"), {"reason": DROP}, p.SERVICE_MESSAGES, "missing field"),
    ],
    ids=lambda v: repr(v)[:40] if isinstance(v, dict) else None,
)
def test_malformed_fields_are_rejected(message, changes, allowed, where):
    with pytest.raises(ProtocolError, match=where):
        p.decode(with_fields(message, changes), allowed)


@pytest.mark.parametrize(
    "job", [{**INFO_FIELDS, "state": "finished"}, {**INFO_FIELDS, "extra": 1}, {"job_id": "j"}, "job"]
)
def test_a_malformed_job_inside_a_job_list_is_rejected(job):
    data = msgpack.packb([p.PROTOCOL_VERSION, "JobList", {"jobs": [job]}])
    with pytest.raises(ProtocolError):
        p.decode(data, p.SERVICE_MESSAGES)


def test_a_stale_protocol_version_is_refused_by_the_service():
    data = msgpack.packb([p.PROTOCOL_VERSION - 1, "ListJobs", {}])
    with pytest.raises(ProtocolError, match="protocol version"):
        p.decode(data, p.CLIENT_MESSAGES)


# ---- the fork server ----------------------------------------------------------------


def order(job: str, argv: list[str], cwd: Path, log: Path) -> bytes:
    return json.dumps({"job": job, "argv": argv, "cwd": str(cwd), "log": str(log)}).encode() + b"\n"


class Orders:
    """A pipe's reading end, as serve_forks reads it (by its fd)."""

    def __init__(self, fd: int):
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


def noting_end_of(fd: int, at_end, monkeypatch) -> None:
    """Call ``at_end`` when the fork server reads end of input from ``fd``."""
    real_read = os.read

    def read(source: int, size: int) -> bytes:
        data = real_read(source, size)
        if source == fd and not data:
            at_end()
        return data

    monkeypatch.setattr(forkserver.os, "read", read)


class Answers:
    """Where serve_forks writes: each answer parsed, in order, among the test's own notes."""

    def __init__(self, log: list):
        self.log = log
        self.pending = b""

    def write(self, data: bytes) -> None:
        self.pending += data
        *lines, self.pending = self.pending.split(b"\n")
        self.log.extend(json.loads(line) for line in lines)

    def flush(self) -> None:
        pass


def fork_serving(run, orders: Orders, answers: Answers) -> int:
    """serve_forks in this process; a forked child that ever got back here ends at once."""
    me = os.getpid()
    try:
        return serve_forks(run, orders, answers)
    finally:
        if os.getpid() != me:
            os._exit(99)


def test_the_fork_server_runs_each_order_in_a_process_of_its_own(tmp_path, capfd, monkeypatch):
    monkeypatch.chdir(tmp_path)  # (a process that did not change folder would write here)
    folders = {job: tmp_path / job for job in "abc"}
    for folder in folders.values():
        folder.mkdir()
    logs = {job: tmp_path / f"{job}.log" for job in "abc"}
    gate_read, gate_write = os.pipe()  # job a ends only once the server has read the end of its orders
    notes: list = []

    def at_end():
        notes.append("end of orders")
        os.write(gate_write, b"go")

    def run(argv: list[str]) -> int:
        Path("ran-here").write_text(f"{argv} in {os.getcwd()} as {os.getpid()}")
        print(f"job {argv[0]} says hello")
        if argv[0] == "a":
            ready, _, _ = select.select([gate_read], [], [], 10.0)
            if not ready:
                return 70  # (not released: the test fails, it does not hang)
            return int(argv[1])
        if argv[0] == "b":
            raise SystemExit(int(argv[1]))
        raise RuntimeError(f"job {argv[0]} blew up")

    argvs = {"a": ["a", "3"], "b": ["b", "4"], "c": ["c", "5"]}
    orders_read, orders_write = os.pipe()
    os.write(orders_write, b"".join(order(job, argvs[job], folders[job], logs[job]) for job in "abc"))
    os.close(orders_write)  # (before forking: no child holds it open)
    here = os.getcwd()
    try:
        with capfd.disabled():  # as in `mapreduce coordinators`: sys.stdout and sys.stderr write to fds 1 and 2
            noting_end_of(orders_read, at_end, monkeypatch)
            code = fork_serving(run, Orders(orders_read), Answers(notes))
    finally:
        os.close(gate_read)
        os.close(gate_write)
    notes.append("returned")

    assert code == 0
    assert os.getcwd() == here
    answers = [note for note in notes if isinstance(note, dict)]
    assert len(answers) == 6
    pids = {a["job"]: a["pid"] for a in answers if set(a) == {"job", "pid"}}
    exits = {a["job"]: a["exit"] for a in answers if set(a) == {"job", "exit"}}
    assert sorted(pids) == sorted(exits) == ["a", "b", "c"]
    assert exits == {"a": 3, "b": 4, "c": 1}  # returned, exited, raised
    assert len(set(pids.values())) == 3 and os.getpid() not in pids.values()
    for job in "abc":
        assert notes.index({"job": job, "pid": pids[job]}) < notes.index({"job": job, "exit": exits[job]})
    # It kept serving after the end of its orders, until its last process had ended:
    assert notes.index("end of orders") < notes.index({"job": "a", "exit": 3}) < notes.index("returned")
    for pid in pids.values():  # every process reaped
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
    for job, folder in folders.items():  # each ran in its folder, as its own process
        assert (folder / "ran-here").read_text() == f"{argvs[job]} in {folder} as {pids[job]}"
        assert f"job {job} says hello" in logs[job].read_text()
    assert not (tmp_path / "ran-here").exists()
    assert "RuntimeError: job c blew up" in logs["c"].read_text()  # its traceback, in its log
    assert "Traceback" not in logs["a"].read_text() + logs["b"].read_text()


def test_the_fork_server_passes_exit_statuses_through(tmp_path):
    cases = {
        "return-0": 0,
        "return-7": 7,
        "exit-None": 0,
        "exit-2": 2,
        "exit-text": 1,
        "interrupted": 1,
        "killed": -signal.SIGKILL,
    }

    def run(argv: list[str]) -> int:
        kind, _, value = argv[0].partition("-")
        if kind == "return":
            return int(value)
        if kind == "exit":
            raise SystemExit(None if value == "None" else int(value) if value.isdigit() else value)
        if kind == "interrupted":
            raise KeyboardInterrupt
        os.kill(os.getpid(), signal.SIGKILL)
        return 0

    orders_read, orders_write = os.pipe()
    os.write(orders_write, b"".join(order(job, [job], tmp_path, tmp_path / f"{job}.log") for job in cases))
    os.close(orders_write)
    notes: list = []
    assert fork_serving(run, Orders(orders_read), Answers(notes)) == 0
    assert {a["job"]: a["exit"] for a in notes if "exit" in a} == cases
    assert len([a for a in notes if "pid" in a]) == len(cases)


def test_the_fork_server_ends_at_once_without_orders(tmp_path):
    orders_read, orders_write = os.pipe()
    os.close(orders_write)
    notes: list = []
    assert fork_serving(lambda argv: 0, Orders(orders_read), Answers(notes)) == 0
    assert notes == []


def test_the_forked_process_reads_nothing_from_the_servers_input(tmp_path):
    def run(argv: list[str]) -> int:
        return 0 if os.read(0, 100) == b"" else 1  # fd 0: /dev/null, at its end at once

    orders_read, orders_write = os.pipe()
    os.write(orders_write, order("a", [], tmp_path, tmp_path / "a.log"))
    os.close(orders_write)
    stdin_read, stdin_write = os.pipe()  # the server's own fd 0, for the time of the test: not for its jobs
    os.write(stdin_write, b"not for the job")
    saved_stdin = os.dup(0)
    notes: list = []
    try:
        os.dup2(stdin_read, 0)
        assert fork_serving(run, Orders(orders_read), Answers(notes)) == 0
    finally:
        os.dup2(saved_stdin, 0)
        for fd in (saved_stdin, stdin_read, stdin_write):
            os.close(fd)
    assert notes[-1] == {"job": "a", "exit": 0}


def test_orders_that_arrive_together_all_start_without_waiting_for_more_input(tmp_path):
    orders_read, orders_write = os.pipe()
    notes: list = []
    closed = []

    def end_orders(*_):
        if not closed:
            closed.append(True)
            notes.append("orders closed")
            os.close(orders_write)

    class Answers2(Answers):
        def write(self, data: bytes) -> None:
            super().write(data)
            if sum("exit" in a for a in self.log if isinstance(a, dict)) == 2:
                end_orders()

    os.write(
        orders_write, order("a", ["0"], tmp_path, tmp_path / "a.log") + order("b", ["0"], tmp_path, tmp_path / "b.log")
    )
    previous = signal.signal(signal.SIGALRM, end_orders)  # a bound: end the orders after 0.2 s
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    try:
        assert fork_serving(lambda argv: int(argv[0]), Orders(orders_read), Answers2(notes)) == 0
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
        end_orders()
    assert {"job": "b", "exit": 0} in notes
    assert notes[-1] == "orders closed"  # both jobs ran before the orders ended


def test_client_and_service_messages_survive_as_plain_data():
    for message in CLIENT_SAMPLES + SERVICE_SAMPLES:
        plain = json.loads(json.dumps(p.to_plain(message)))
        assert p.from_plain(type(message), plain) == message
    with pytest.raises(ProtocolError, match="SubmitJob.inputs"):
        p.from_plain(p.SubmitJob, {"app": "wordcount", "inputs": "/data/a.txt", "output": "/o"})


# ---- the queue rebuilt from its journal's records ------------------------------------


class Journaled:
    """A queue driven as the service drives it, keeping the records the service journals."""

    def __init__(self, q: JobQueue | None = None):
        self.q = q or JobQueue()
        self.records: list[dict] = []

    def submit(self, n: int, **changes) -> str:
        info = self.q.submit(float(n), request(n, **changes), events_for)
        self.records.append(queue.submitted(self.q.job(info.job_id)))
        return info.job_id

    def start(self, now: float, output_created: bool = True) -> str:
        job = self.q.start_next(now)
        job.output_created = job.output_created if job.runs > 1 else output_created
        self.records.append(queue.started(job))
        return job.info.job_id

    def end(self, now: float, job_id: str, ok: bool = True) -> None:
        self.q.ended(now, job_id, ok, "done" if ok else "broke")
        self.records.append(queue.ended(self.q.job(job_id)))

    def cancel(self, now: float, job_id: str) -> Cancelling:
        outcome = self.q.cancel(now, job_id)
        job = self.q.job(job_id)
        self.records.append(queue.ended(job) if outcome is Cancelling.DEQUEUED else queue.cancel_asked(job))
        return outcome


def killed_with_one_running() -> tuple[Journaled, list[str]]:
    """Four jobs: the first succeeded, the second ran when the service died, the fourth was
    cancelled while queued, the third waits."""
    j = Journaled()
    ids = [j.submit(n) for n in range(4)]
    j.end(11.0, j.start(10.0))
    j.start(12.0, output_created=False)
    assert j.cancel(13.0, ids[3]) is Cancelling.DEQUEUED
    return j, ids


def test_a_restored_queue_keeps_its_jobs_and_runs_the_interrupted_one_first_in_its_own_folder():
    j, (a, b, c, d) = killed_with_one_running()
    q = JobQueue.restore(j.records)
    assert [info.job_id for info in q.all()] == [a, b, c, d]
    assert states(q) == {a: JobState.SUCCEEDED, b: JobState.QUEUED, c: JobState.QUEUED, d: JobState.CANCELLED}
    assert q.get(a) == j.q.get(a) and q.get(d) == j.q.get(d)  # finished: as they were
    rerun = q.start_next(20.0)
    assert rerun.info.job_id == b and rerun.runs == 2 and rerun.request == request(1)
    assert not rerun.output_created  # what its first run found, not what the rerun finds
    assert rerun.info.events == "/state/jobs/job-00002/events-2.jsonl"  # the first run's log stays
    assert rerun.info.submitted == 1.0 and rerun.info.started == 20.0
    q.ended(21.0, b, ok=True, message="")
    assert q.start_next(22.0).info.job_id == c
    assert q.submit(23.0, request(), events_for).job_id == "job-00005"


def test_a_queue_restored_from_its_compacted_records_is_the_same():
    j, ids = killed_with_one_running()
    restored = JobQueue.restore(j.records)
    again = JobQueue.restore(restored.compacted())
    assert again.all() == restored.all()
    waiting = [i for i in ids if not restored.get(i).state.over]  # (a finished job's runs matter no more)
    assert [(again.job(i).runs, again.job(i).output_created) for i in waiting] == [
        (restored.job(i).runs, restored.job(i).output_created) for i in waiting
    ]
    assert again.submit(1.0, request(), events_for).job_id == "job-00005"
    # A job run a third time after two deaths, the journal compacted or not.
    j.records.append(queue.started(restored.start_next(30.0)))
    for records in (j.records, JobQueue.restore(j.records).compacted()):
        third = JobQueue.restore(records).start_next(40.0)
        assert third.info.job_id == ids[1] and third.runs == 3
        assert third.info.events.endswith("/events-3.jsonl")


def test_restoring_forgets_all_but_the_last_finished_and_numbering_goes_on_after_compaction(monkeypatch):
    monkeypatch.setattr(queue, "KEEP_FINISHED", 2)
    j = Journaled()
    ids = [j.submit(n) for n in range(6)]
    for t in range(5):
        j.end(t + 0.5, j.start(float(t)), ok=t != 3)
    q = JobQueue.restore(j.records)
    assert states(q) == {ids[3]: JobState.FAILED, ids[4]: JobState.SUCCEEDED, ids[5]: JobState.QUEUED}
    compacted = q.compacted()
    assert [r["r"] for r in compacted] == ["next", "finished", "finished", "submitted"]
    assert q.submit(9.0, request(), events_for).job_id == "job-00007"
    # Only the compacted records, and no job folder to count from: still no id reused.
    assert JobQueue.restore(compacted).submit(9.0, request(), events_for).job_id == "job-00007"
    assert JobQueue.restore([queue.record("next", number=41)]).submit(0.0, request(), events_for).job_id == "job-00041"
    assert JobQueue.restore([], first_number=8).submit(0.0, request(), events_for).job_id == "job-00008"


def test_a_finished_job_is_compacted_without_its_apps_source():
    j = Journaled()
    job_id = j.submit(0, app="mine.py", app_source=SOURCE)
    assert j.records[0]["request"]["app_source"] == SOURCE  # queued: it still has to run
    j.end(1.0, j.start(0.5))
    (finished,) = [r for r in j.q.compacted() if r["r"] == "finished"]
    assert finished["request"]["app_source"] == ""
    assert JobQueue.restore([finished]).get(job_id) == j.q.get(job_id)


def test_a_cancel_begun_when_the_service_died_is_left_to_finish():
    j = Journaled()
    a, b = j.submit(0), j.submit(1)
    j.start(1.0)
    assert j.cancel(2.0, a) is Cancelling.STOP_RUNNING
    q = JobQueue.restore(j.records)
    assert q.cancels_left_undone() == [a]
    assert JobQueue.restore(q.compacted()).cancels_left_undone() == [a]
    assert q.cancel(3.0, a) is Cancelling.DEQUEUED
    assert q.get(a).state is JobState.CANCELLED and q.get(a).message == "cancelled"  # it had run
    assert q.cancels_left_undone() == []
    assert q.start_next(4.0).info.job_id == b


@pytest.mark.parametrize(
    "bad",
    [
        {"r": "reshuffled", "job": "job-00001"},
        {"r": "started", "job": "job-00009", "at": 1.0, "run": 1, "events": "", "output_created": True},
        {"r": "ended", "job": "job-00001", "at": 1.0, "state": "running", "message": ""},
        {"r": "submitted", "job": "job-00002", "at": 1.0, "events": "", "request": {"app": 7}},
        {"r": "submitted", "job": "../etc", "at": 1.0, "events": "", "request": p.to_plain(request())},
        {"r": "submitted", "job": "job-00001", "at": 1.0, "events": "", "request": p.to_plain(request())},
        {"r": "next"},
        {
            "r": "finished",
            "info": p.to_plain(dataclasses.replace(INFO_QUEUED, job_id="job-00002", state=JobState.RUNNING)),
            "request": p.to_plain(request()),
        },
    ],
    ids=[
        "unknown kind",
        "unknown job",
        "ended running",
        "bad request",
        "bad id",
        "id twice",
        "no number",
        "finished running",
    ],
)
def test_a_record_that_does_not_fit_the_queue_is_refused(bad):
    j = Journaled()
    j.submit(0)
    with pytest.raises(queue.BadRecord, match="record"):
        JobQueue.restore([*j.records, bad])


@pytest.mark.parametrize(
    "path, run, named",
    [
        ("/s/jobs/job-00001/events.jsonl", 1, "/s/jobs/job-00001/events.jsonl"),
        ("/s/jobs/job-00001/events.jsonl", 2, "/s/jobs/job-00001/events-2.jsonl"),
        ("/s/jobs/job-00001/events-2.jsonl", 3, "/s/jobs/job-00001/events-3.jsonl"),
        ("/s/jobs/job-00001/coordinator.log", 12, "/s/jobs/job-00001/coordinator-12.log"),
    ],
)
def test_each_run_of_a_job_has_files_of_its_own(path, run, named):
    assert queue.rerun_file(path, run) == named


# ---- the service's journal, on disk ----------------------------------------------------


@pytest.fixture
def state():
    """A state folder short enough for the service's socket path."""
    folder = Path(tempfile.mkdtemp(prefix="svc-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


BIND = "tcp://127.0.0.1:5555"


class Forks:
    """Stands for the fork server: notes the orders, starts nothing."""

    def __init__(self):
        self.orders: list[tuple[str, list[str], str, str]] = []

    def order(self, job: str, argv: list[str], cwd: str, log: str) -> None:
        self.orders.append((job, argv, cwd, log))


def service_on(state: Path, bind: str = BIND) -> server.Service:
    service = server.Service(server.ServiceOptions(bind, state))
    service.forks = Forks()
    return service


def died(service: server.Service) -> None:
    """The service is gone without a word (what it wrote is all there is)."""
    service._close()


def submit_to(service: server.Service, n: int, out: Path | None = None, **changes) -> str:
    answer = service.handle(request(n, **changes) if out is None else request(n, output=str(out), **changes))
    assert isinstance(answer, p.JobInfo), answer
    return answer.job_id


def test_a_new_service_takes_up_the_queue_a_killed_one_journaled(state):
    first = service_on(state)
    a, b, c = (submit_to(first, n) for n in range(3))
    assert first.handle(p.CancelJob(b)).state is JobState.CANCELLED
    before = first.queue.all()
    died(first)
    second = service_on(state)
    try:
        assert second.queue.all() == before
        assert submit_to(second, 3) == "job-00004"
        second._start_next()
        assert [order[0] for order in second.forks.orders] == [a]
    finally:
        died(second)


def test_the_running_job_runs_again_first_in_its_folder_with_its_own_logs(state, monkeypatch):
    first = service_on(state)
    a, b = submit_to(first, 0), submit_to(first, 1)
    first._start_next()
    died(first)
    second = service_on(state)
    try:
        assert states(second.queue) == {a: JobState.QUEUED, b: JobState.QUEUED}
        second._start_next()
        ((job, argv, cwd, log),) = second.forks.orders
        folder = state / "jobs" / a
        assert job == a and cwd == str(folder) and log == str(folder / "coordinator-2.log")
        assert argv[argv.index("--state-dir") + 1] == str(folder)
        assert argv[argv.index("--events") + 1] == str(folder / "events-2.jsonl")
        assert second.queue.get(a).events == str(folder / "events-2.jsonl")
    finally:
        died(second)


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"app": "mine.py", "app_source": SOURCE},
        {"kind": p.JobKind.STREAMING, "app": "", "mapper": "cat"},
        {"kind": p.JobKind.MRJOB, "app": "job.py", "app_source": SOURCE, "inputs": [], "job_args": ["/d/in"]},
    ],
    ids=["app", "app source", "streaming", "mrjob"],
)
def test_every_jobs_coordinator_is_given_its_folder_to_resume_from(state, monkeypatch, changes):
    service = service_on(state)
    try:
        job_id = submit_to(service, 0, **changes)
        service._start_next()
        ((_, argv, _, _),) = service.forks.orders
        assert argv[argv.index("--state-dir") + 1] == str(state / "jobs" / job_id)
        assert argv.index("--state-dir") < argv.index("--quiet")  # the service's options, not the job's
    finally:
        died(service)


def test_cancelling_a_job_that_ran_when_the_service_died_removes_what_it_wrote(state, tmp_path):
    out = tmp_path / "out"
    first = service_on(state)
    job_id = submit_to(first, 0, out)
    first._start_next()
    out.mkdir()  # its first run's coordinator made the folder and committed a partition
    (out / "part-00000").write_text("half\n")
    died(first)
    second = service_on(state)
    try:
        info = second.handle(p.CancelJob(job_id))
        assert info.state is JobState.CANCELLED and info.message == "cancelled"
        assert not out.exists()
    finally:
        died(second)
    third = service_on(state)  # the cancel was journaled: nothing runs again
    try:
        assert third.queue.get(job_id) == info and third.queue.idle
    finally:
        died(third)


def test_a_cancel_under_way_when_the_service_died_is_finished_on_start(state, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's\n")
    first = service_on(state)
    job_id = submit_to(first, 0, out)
    first._start_next()
    (out / "part-00000").write_text("half\n")
    first.handle(p.CancelJob(job_id))  # (its coordinator had no pid yet: nothing to signal)
    died(first)
    second = service_on(state)
    try:
        assert second.queue.get(job_id).state is JobState.CANCELLED
        assert sorted(os.listdir(out)) == ["notes.txt"]  # the folder was not the job's: it stays
    finally:
        died(second)


def test_the_journal_stays_small_over_many_jobs_and_numbering_goes_on(state, monkeypatch):
    monkeypatch.setattr(queue, "KEEP_FINISHED", 3)
    service = service_on(state)
    try:
        for n in range(40):
            job_id = submit_to(service, n, app="mine.py", app_source=SOURCE)
            service._start_next()
            service._ended(service.running, 0)
            assert len((state / "journal").read_bytes().splitlines()) <= 30
        assert len(service.queue.all()) == 3
    finally:
        died(service)
    again = service_on(state)
    try:
        assert [info.job_id for info in again.queue.all()] == ["job-00038", "job-00039", job_id]
        assert len((state / "journal").read_bytes().splitlines()) == 5  # header, next id, three finished
    finally:
        died(again)
    shutil.rmtree(state / "jobs")  # numbering comes from the journal, not from the folders
    last = service_on(state)
    try:
        assert submit_to(last, 0) == "job-00041"
    finally:
        died(last)


def test_a_state_folder_of_another_cluster_is_refused_and_left_as_it_is(state):
    died(service_on(state, "tcp://127.0.0.1:6000"))
    journal = (state / "journal").read_bytes()
    with pytest.raises(UsageError, match=r"another cluster \(tcp://127.0.0.1:6000, this is tcp://127.0.0.1:5555\)"):
        service_on(state)
    assert (state / "journal").read_bytes() == journal
    died(service_on(state, "tcp://127.0.0.1:6000"))  # the lock was let go


def test_a_damaged_journal_is_refused_and_left_as_it_is(state):
    first = service_on(state)
    for n in range(3):
        submit_to(first, n)
    died(first)
    lines = (state / "journal").read_bytes().splitlines(keepends=True)
    assert len(lines) == 5 and b"in-1" in lines[3]  # header, next id, three jobs
    lines[3] = lines[3].replace(b"in-1", b"in-X")  # a middle record's CRC no longer matches
    (state / "journal").write_bytes(b"".join(lines))
    with pytest.raises(UsageError, match="damaged at line 4 of 5"):
        service_on(state)
    assert (state / "journal").read_bytes() == b"".join(lines)


def test_a_journal_of_another_version_is_refused(state):
    died(service_on(state))
    header = json.dumps({"format": "mapreduce-journal", "version": 99, "kind": "cluster", "identity": BIND})
    body = header.replace(" ", "").encode()
    (state / "journal").write_bytes(b"%08x %s\n" % (zlib.crc32(body), body))
    with pytest.raises(UsageError, match="another version of mapreduce"):
        service_on(state)


def test_a_torn_last_record_is_cut_and_the_rest_taken_up(state):
    first = service_on(state)
    a = submit_to(first, 0)
    died(first)
    with open(state / "journal", "ab") as f:
        f.write(b'0badc0de {"r":"submitted","job":"job-0')  # a write a crash cut short
    second = service_on(state)
    try:
        assert [info.job_id for info in second.queue.all()] == [a]
        assert b"0badc0de" not in (state / "journal").read_bytes()
    finally:
        died(second)


def test_a_state_folder_of_the_previous_version_starts_and_numbering_goes_on(state):
    (state / "jobs" / "job-00007").mkdir(parents=True)
    service = service_on(state)
    try:
        assert service.queue.all() == []
        assert submit_to(service, 0) == "job-00008"
    finally:
        died(service)
