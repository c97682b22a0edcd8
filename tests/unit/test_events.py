"""The event schema: every kind round-trips through the log, bad records are refused, one tally."""

from __future__ import annotations

import json

import pytest

from helpers import join, make, map_done, msgs, one, reduce_done
from mapreduce.errors import MapReduceError
from mapreduce.wire import messages as p
from mapreduce.wire.events import (
    EVENT_TYPES,
    AttemptState,
    BackupLaunched,
    CommitFailed,
    Event,
    EventError,
    EventKind,
    EventLog,
    FetchFailed,
    JobFailing,
    JobFinished,
    JobStarted,
    MapOutputMoved,
    MapOutputOrphaned,
    MapRerun,
    MessageFenced,
    OutputCommitted,
    OutputRecovered,
    RecordSkipped,
    ResultDiscarded,
    Tally,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskKind,
    TaskLost,
    WorkerDead,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
    WorkerSuspect,
    parse,
    read_events,
    read_records,
    to_record,
)

IDS = {"attempt": 7, "task": 2, "phase": TaskKind.REDUCE, "worker": 3}

ONE_OF_EACH: list[Event] = [
    WorkerJoined(t=0.5, worker=1, name="w1", pid=4242, host="box"),
    WorkerSuspect(t=1.25, worker=1, silent=2.5),
    WorkerDead(t=2.0, worker=1, why="silent for 5.0 s", silent=5.0, attempt=7),
    WorkerDead(t=2.0, worker=2, why="it registered again", silent=0.0),
    WorkerDraining(t=2.5, worker=3, attempt=None),
    WorkerLeft(t=3.0, worker=3),
    MessageFenced(t=3.5, worker=None, message="TaskDone", attempt=None, why="unknown worker"),
    TaskAssigned(t=4.0, **IDS),
    BackupLaunched(t=4.0, **IDS),
    TaskFinished(t=4.5, **IDS, records=10, seconds=0.5, backup=True, fetched=100, input_bytes=0, output_bytes=2048),
    TaskFailed(t=5.0, **IDS, error="ZeroDivisionError: division by zero", user_error=True),
    TaskLost(t=5.5, **IDS),
    TaskCancelled(t=6.0, **IDS, why="a map must run first"),
    TaskCancelled(t=6.0, **IDS, why="attempt 9 finished first", superseded_by=9),
    ResultDiscarded(t=6.5, **IDS, was=AttemptState.SUPERSEDED),
    FetchFailed(t=7.0, **IDS, map_task=0, map_attempt=1, error="FetchError: gone"),
    MapOutputMoved(t=7.5, task=0, worker=4),
    OutputRecovered(t=7.6, task=1, worker=1000001, attempt=3),
    MapOutputOrphaned(t=8.0, task=1),
    MapRerun(t=8.5, task=1),
    CommitFailed(t=9.0, task=0, why="vanished"),
    OutputCommitted(t=9.5, partition=0, pulled=4096),
    RecordSkipped(t=9.6, task=3, phase=TaskKind.MAP, record="1024", input="in.txt", error="ValueError: bad"),
    JobStarted(t=0.0, job="abc123", maps=2, reduces=1, input_bytes=200),
    JobFailing(t=10.0, why="map task 0 failed 4 times"),
    JobFinished(t=10.5, ok=False, message="map task 0 failed 4 times", input_fetched=1, rejected=2),
]


def through_the_log(event: Event, wall_offset: float = 1000.0) -> Event:
    return parse(json.loads(json.dumps(to_record(event, wall_offset))))


# ---- the schema ---------------------------------------------------------------------


def test_every_kind_has_a_sample_here():
    assert {e.kind for e in ONE_OF_EACH} == set(EventKind)
    assert all(EVENT_TYPES[e.kind] is type(e) for e in ONE_OF_EACH)


@pytest.mark.parametrize("event", ONE_OF_EACH, ids=lambda e: type(e).__name__)
def test_every_kind_round_trips_through_a_log_line(event):
    back = through_the_log(event)
    assert back == event and type(back) is type(event)
    assert back.wall == event.t + 1000.0  # known once read back


def test_the_log_line_is_the_envelope_then_the_fields_as_plain_json():
    finished = ONE_OF_EACH[9]
    record = to_record(finished, wall_offset=1000.0)
    assert list(record)[:3] == ["t", "wall", "event"]
    assert record == {
        "t": 4.5,
        "wall": 1004.5,
        "event": "task_finished",
        "attempt": 7,
        "task": 2,
        "phase": "reduce",
        "worker": 3,
        "records": 10,
        "seconds": 0.5,
        "backup": True,
        "fetched": 100,
        "input_bytes": 0,
        "output_bytes": 2048,
        "counters": [],
        "step": 1,
    }
    assert json.loads(json.dumps(record)) == record


def test_enums_read_back_as_enums_and_still_equal_their_values():
    back = through_the_log(ResultDiscarded(t=1.0, **IDS, was=AttemptState.CANCELLED))
    assert back.phase is TaskKind.REDUCE and back.was is AttemptState.CANCELLED
    assert back.phase == "reduce"  # a str enum: code holding raw records compares the same


def test_optional_fields_may_be_left_out_and_take_their_defaults():
    back = parse({"t": 1, "event": "task_cancelled", "attempt": 1, "task": 0, "phase": "map", "worker": 1, "why": "x"})
    assert back == TaskCancelled(t=1.0, attempt=1, task=0, phase=TaskKind.MAP, worker=1, why="x")
    assert back.superseded_by is None and back.wall is None
    assert parse({"t": 2.0, "event": "job_finished", "ok": False, "message": "interrupted"}).output_pulled == 0


GOOD = {"t": 1.0, "wall": 2.0, "event": "worker_joined", "worker": 1, "name": "w", "pid": 9, "host": "h"}


@pytest.mark.parametrize(
    "record, says",
    [
        ([1, 2], "not an event record"),
        ({"t": 1.0, "worker": 1}, "no known 'event' name"),
        (dict(GOOD, event="worker_exploded"), "no known 'event' name"),
        ({k: v for k, v in GOOD.items() if k != "pid"}, "a worker_joined event lacks its field 'pid'"),
        ({k: v for k, v in GOOD.items() if k != "t"}, "lacks its field 't'"),
        (dict(GOOD, pid="9"), "field 'pid' is '9', not int"),
        (dict(GOOD, pid=9.0), "field 'pid' is 9.0"),
        (dict(GOOD, pid=True), "field 'pid' is True"),
        (dict(GOOD, name=None), "field 'name' is None"),
        (dict(GOOD, t="soon"), "field 't' is 'soon'"),
        (dict(GOOD, wall="noon"), "'wall' is 'noon'"),
        (dict(GOOD, colour="red"), "unknown field(s) colour"),
        (
            {"t": 1.0, "event": "task_lost", "attempt": 1, "task": 0, "phase": "shuffle", "worker": 1},
            "field 'phase' is 'shuffle', not 'map' or 'reduce'",
        ),
        ({"t": 1.0, "event": "job_finished", "ok": 1, "message": ""}, "field 'ok' is 1, not bool"),
    ],
)
def test_a_bad_record_is_refused_with_what_is_wrong(record, says):
    with pytest.raises(EventError) as caught:
        parse(record)
    assert says in str(caught.value)
    assert isinstance(caught.value, MapReduceError) and isinstance(caught.value, ValueError)


def test_a_float_field_takes_an_int_as_json_writes_it():
    assert parse(dict(GOOD, t=3)).t == 3


def test_the_log_file_is_read_raw_or_typed(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write(ONE_OF_EACH[:3])
    log.write([])
    log.write(ONE_OF_EACH[3:])
    log.close()
    raw = list(read_records(path))
    assert [r["event"] for r in raw] == [e.kind.value for e in ONE_OF_EACH]
    assert raw[0] == {"t": 0.5, "wall": raw[0]["wall"], "event": "worker_joined", **ONE_OF_EACH[0].fields()}
    assert list(read_events(path)) == ONE_OF_EACH
    EventLog(None).write(ONE_OF_EACH)  # no path: nothing written, no error


def test_reading_a_bad_log_says_which_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(dict(GOOD, pid="x")) + "\n")
    events = read_events(path)
    assert next(events) == parse(GOOD)
    with pytest.raises(EventError, match=r"events\.jsonl, line 2: a worker_joined event's field 'pid'"):
        next(events)


# ---- the tally ----------------------------------------------------------------------


def test_the_tally_counts_events_by_class_and_their_bytes():
    map_ids = dict(IDS, phase=TaskKind.MAP)
    a_map = TaskFinished(t=1, **map_ids, records=1, seconds=1, backup=False, fetched=7, input_bytes=100, output_bytes=5)
    tally = Tally.of([*ONE_OF_EACH, a_map])
    assert (
        tally.as_dict()
        == Tally(
            attempts=2,
            backups=1,
            succeeded=2,
            failed_attempts=1,
            lost_attempts=1,
            cancelled=1,
            superseded=1,
            workers_joined=1,
            workers_dead=2,
            maps_rerun=1,
            fenced=1,
            fetch_failures=1,
            commits=1,
            records_skipped=1,
            input_fetched=7,
            shuffle_fetched=100,
            output_pulled=4096,
            input_done=100,
            output_written=2048,
        ).as_dict()
    )
    assert len(tally.task_counters) == 2  # the reduce's and the map's (no counts in either)
    copy = tally.copy()
    copy.attempts += 1
    assert tally.attempts == 2 and tally.as_dict()["output_pulled"] == 4096


# ---- the scheduler's events --------------------------------------------------------------


def race_with_a_backup():
    """Maps 0 and 1 finish on B and C in 1 s; map 2 straggles on A, its backup wins at t=3."""
    s = make(n_maps=3, n_reduce=1, speculation=True)
    s.job_started(0.0)
    assigned = {}
    for ident in (b"A", b"B", b"C"):
        w, actions = join(s, ident)
        assigned[ident] = (w, one(actions, ident, p.AssignMap))
    for ident in (b"B", b"C"):
        map_done(s, 1.0, ident, *assigned[ident], [5])
    backup = msgs(s.tick(2.1), kind=p.AssignMap)[0]
    runner = next(w for w in s.workers.values() if w.attempt is not None and w.attempt.id == backup.attempt)
    actions = map_done(s, 3.0, runner.identity, runner.id, backup, [5])
    return s, assigned[b"A"], backup, actions


def test_a_race_loser_is_cancelled_naming_the_winner():
    s, (a, straggler), backup, _ = race_with_a_backup()
    [cancelled] = [e for e in s.events if isinstance(e, TaskCancelled)]
    assert (cancelled.attempt, cancelled.superseded_by) == (straggler.attempt, backup.attempt)
    assert cancelled.worker == a and cancelled.phase is TaskKind.MAP
    assert (s.tally.superseded, s.tally.cancelled, s.tally.backups) == (1, 0, 1)
    # The loser's late result is discarded, and says what the attempt was by then.
    s.receive(3.5, b"A", p.TaskDone(a, straggler.attempt, [5], "/scratch/A/late", 3))
    discarded = s.events[-1]
    assert isinstance(discarded, ResultDiscarded) and discarded.was is AttemptState.SUPERSEDED


def test_a_cancellation_to_make_room_names_no_winner():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0)
    join(s, b"A")
    b, actions = join(s, b"B")
    one(actions, b"B", p.AssignReduce)
    s.receive(4.0, b"B", p.Heartbeat(b))
    s.tick(6.0)  # A dies: its map must run again, and B's reduce makes way
    [cancelled] = [e for e in s.events if isinstance(e, TaskCancelled)]
    assert cancelled.superseded_by is None and cancelled.why == "a map must run first"
    assert (s.tally.cancelled, s.tally.superseded, s.tally.lost_attempts, s.tally.workers_dead) == (1, 0, 1, 1)


def test_the_schedulers_events_survive_the_log_and_tally_the_same(tmp_path):
    s, *_ = race_with_a_backup()
    [reduce] = [e for e in s.events if isinstance(e, TaskAssigned) and e.phase is TaskKind.REDUCE]
    reduce_done(s, 4.0, s.workers[reduce.worker].identity, reduce.worker, reduce)
    s.committed(4.5, 0, pulled=123)
    s.fail(5.0, "a watchdog said so")
    s.fail(5.1, "said twice")  # the first reason stands: recorded once
    s.job_finished(5.5, rejected=2)
    s.job_finished(5.6)  # recorded once
    recorded = s.take_events()
    assert s.events == [] and s.take_events() == []
    kinds = {type(e) for e in recorded}
    assert {JobStarted, WorkerJoined, TaskAssigned, BackupLaunched, TaskFinished, TaskCancelled} <= kinds
    assert {OutputCommitted, JobFailing, JobFinished} <= kinds
    assert [e.why for e in recorded if isinstance(e, JobFailing)] == ["a watchdog said so"]
    [finished] = [e for e in recorded if isinstance(e, JobFinished)]
    assert (finished.ok, finished.message, finished.output_pulled, finished.rejected) == (
        False,
        "a watchdog said so",
        123,
        2,
    )

    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    log.write(recorded)
    log.close()
    back = list(read_events(path))
    assert back == recorded
    assert Tally.of(back) == s.tally
    assert s.view(6.0).tally == s.tally


def test_job_finished_says_why_it_stopped():
    s = make()
    s.job_finished(1.0, stopped="the coordinator was interrupted")
    [finished] = s.take_events()
    assert finished == JobFinished(t=1.0, ok=False, message="the coordinator was interrupted")


def test_job_counters_are_each_tasks_latest_successful_attempt_summed():
    def finished(t, task, phase, counts):
        return TaskFinished(t=t, attempt=int(t), task=task, phase=phase, worker=1, records=1, seconds=0.1,
                            backup=False, fetched=0, input_bytes=1, output_bytes=1, counters=counts)  # fmt: skip

    events = [
        finished(1, 0, "map", [["app", "words", 5], ["mapreduce", "MAP_INPUT_RECORDS", 2]]),
        finished(2, 1, "map", [["app", "words", 7]]),
        finished(3, 0, "map", [["app", "words", 5], ["mapreduce", "MAP_INPUT_RECORDS", 2]]),  # map 0 run again
        finished(4, 0, "reduce", [["app", "keys", 3]]),
    ]
    tally = Tally.of(events)
    assert dict(tally.counters) == {("app", "words"): 12, ("mapreduce", "MAP_INPUT_RECORDS"): 2, ("app", "keys"): 3}
    assert dict((tally + tally).counters)[("app", "words")] == 24
    record = to_record(events[0], 0.0)
    assert parse(record).counters == events[0].counters
    with pytest.raises(EventError, match="is not \\[group, counter, int\\]"):
        parse({**record, "counters": [["app", "words", "5"]]})
