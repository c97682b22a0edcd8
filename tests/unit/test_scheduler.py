"""The scheduler as a pure state machine: injected clock, fake identities, real messages."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import (
    commits,
    events,
    hello,
    join,
    kinds,
    make,
    map_done,
    msgs,
    one,
    reduce_done,
    report_unreadable,
    welcome,
)
from mapreduce import output
from mapreduce.coordinator.scheduler import Commit, Discard, Send, TaskState, WorkerState
from mapreduce.wire import messages as p
from mapreduce.wire.events import (
    AttemptState,
    MapOutputMoved,
    MapOutputOrphaned,
    MapRerun,
    MessageFenced,
    RecordSkipped,
    ResultDiscarded,
    TaskAssigned,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    TaskLost,
    WorkerDead,
    WorkerDraining,
    WorkerJoined,
    WorkerLeft,
)

# ---- registration and dispatch order ----------------------------------------


def test_register_gets_welcome_then_assign_map():
    s = make(n_maps=2, n_reduce=1)
    wid, actions = join(s, b"A", now=3.0)
    assert [type(a) for a in actions] == [Send, Send]
    assert actions[0] == Send(b"A", welcome(wid))
    assign = actions[1].message
    assert actions[1].identity == b"A"
    assert isinstance(assign, p.AssignMap)
    assert (assign.task, assign.key, assign.path, assign.start, assign.end) == (0, "in0.txt", "/data/in0.txt", 0, 100)
    assert kinds(s) == [WorkerJoined, TaskAssigned]
    assert s.workers[wid].state is WorkerState.BUSY
    assert s.maps[0].state is TaskState.RUNNING and s.maps[1].state is TaskState.PENDING

    wid_b, actions = join(s, b"B", now=4.0)
    assert wid_b != wid
    assign_b = one(actions, b"B", p.AssignMap)
    assert assign_b.task == 1 and assign_b.attempt != assign.attempt
    assert (assign_b.start, assign_b.end) == (100, 200)


def test_maps_first_and_reduces_only_once_no_map_is_pending():
    s = make(n_maps=3, n_reduce=2)
    a, actions = join(s, b"A")
    first = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    second = one(actions, b"B", p.AssignMap)
    assert {first.task, second.task} == {0, 1}

    # Map 2 is still pending, so a finishing worker gets it rather than a reduce.
    actions = map_done(s, 1.0, b"A", a, first, [1, 2])
    third = one(actions, b"A", p.AssignMap)
    assert third.task == 2
    assert msgs(actions, kind=p.AssignReduce) == []
    # A worker joining now: no map pending (all are running), so it may take a reduce.
    c, actions = join(s, b"C", now=1.5)
    r0 = one(actions, b"C", p.AssignReduce)
    assert r0.task == 0
    assert [o.map_task for o in r0.outputs] == [0]  # only the finished map so far
    # B finishes: no map pending, so it takes the other reduce.
    actions = map_done(s, 2.0, b"B", b, second, [3, 4])
    r1 = one(actions, b"B", p.AssignReduce)
    assert r1.task == 1
    assert sorted(o.map_task for o in r1.outputs) == [0, 1]
    # The reduce already running hears about map 1 through MapOutputs.
    update = one(actions, b"C", p.MapOutputs)
    assert update.attempt == r0.attempt and [o.map_task for o in update.outputs] == [1]


def test_single_worker_runs_every_map_before_any_reduce():
    s = make(n_maps=3, n_reduce=2)
    a, actions = join(s, b"A")
    seen = []
    assign = one(actions, b"A", p.AssignMap)
    now = 0.0
    while isinstance(assign, p.AssignMap):
        seen.append(("map", assign.task))
        now += 1
        actions = map_done(s, now, b"A", a, assign, [5, 6])
        (assign,) = msgs(actions, b"A")
    seen.append(("reduce", assign.task))
    assert seen == [("map", 0), ("map", 1), ("map", 2), ("reduce", 0)]
    assert isinstance(assign, p.AssignReduce)
    assert sorted(o.map_task for o in assign.outputs) == [0, 1, 2]
    assert s.maps_done == 3


def test_reduce_assigned_while_map_runs_gets_later_locations():
    s = make(n_maps=1, n_reduce=3)
    a, actions = join(s, b"A", data_address="tcp://a:1")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    r0 = one(actions, b"B", p.AssignReduce)
    assert r0.outputs == []  # the only map is still running
    c, actions = join(s, b"C")
    r1 = one(actions, b"C", p.AssignReduce)

    actions = map_done(s, 1.0, b"A", a, m, [3, 5, 7])
    # A is free again and takes reduce 2, whose AssignReduce already holds the location.
    r2 = one(actions, b"A", p.AssignReduce)
    assert r2.task == 2
    assert r2.outputs == [p.MapOutput(0, m.attempt, "host-1", f"/scratch/A/m{m.attempt}", "tcp://a:1", 8, 7)]
    assert msgs(actions, b"A", p.MapOutputs) == []  # not told twice
    u0 = one(actions, b"B", p.MapOutputs)
    u1 = one(actions, b"C", p.MapOutputs)
    assert u0 == p.MapOutputs(
        r0.attempt, [p.MapOutput(0, m.attempt, "host-1", f"/scratch/A/m{m.attempt}", "tcp://a:1", 0, 3)]
    )
    assert u1 == p.MapOutputs(
        r1.attempt, [p.MapOutput(0, m.attempt, "host-1", f"/scratch/A/m{m.attempt}", "tcp://a:1", 3, 5)]
    )


def test_map_done_with_wrong_partition_count_is_a_failure():
    s = make(n_maps=1, n_reduce=3)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m, [1, 2])  # 2 lengths for 3 partitions
    assert TaskFailed in kinds(s)
    assert TaskFinished not in kinds(s)
    failed = events(s, TaskFailed)[0]
    assert "2 partitions" in failed.error and "expected 3" in failed.error
    assert s.attempts[m.attempt].state is AttemptState.FAILED
    assert s.maps_done == 0 and s.maps[0].result is None
    # The map runs again (on the now idle worker), not a reduce.
    again = one(actions, b"A", p.AssignMap)
    assert again.task == 0 and again.attempt != m.attempt
    assert msgs(actions, kind=p.AssignReduce) == []
    assert s.failure is None


# ---- liveness: timeouts and heartbeats ---------------------------------------


def test_silent_worker_declared_dead_at_exactly_the_timeout_and_its_map_moves():
    s = make(n_maps=2, n_reduce=1, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0, host_id="host-a")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-b")
    m1 = one(actions, b"B", p.AssignMap)
    c, actions = join(s, b"C", now=0.0, host_id="host-c")
    one(actions, b"C", p.AssignReduce)
    actions = map_done(s, 1.0, b"B", b, m1, [4])
    assert one(actions, b"C", p.MapOutputs).outputs[0].map_task == 1
    assert msgs(actions, b"B") == []  # B is idle now: nothing pending
    for ident, wid in ((b"B", b), (b"C", c)):
        assert s.receive(4.0, ident, p.Heartbeat(wid)) == []

    assert s.tick(5.0) == []  # exactly worker_timeout of silence: still alive
    assert s.workers[a].state is WorkerState.BUSY
    assert WorkerDead not in kinds(s)

    actions = s.tick(5.000001)
    assert s.workers[a].state is WorkerState.DEAD
    dead = events(s, WorkerDead)
    assert [e.worker for e in dead] == [a]
    assert dead[0].t == 5.000001
    lost = events(s, TaskLost)
    assert [(e.attempt, e.task, e.phase) for e in lost] == [(m0.attempt, 0, "map")]
    assert s.attempts[m0.attempt].state is AttemptState.LOST
    again = one(actions, b"B", p.AssignMap)  # B is the idle one
    assert again.task == 0 and again.attempt not in (m0.attempt, m1.attempt)
    assert msgs(actions, b"A") == []
    assert s.tally.workers_dead == 1 and s.tally.lost_attempts == 1


def test_heartbeats_go_out_after_the_interval():
    s = make(n_maps=1, n_reduce=1, heartbeat_interval=1.0, worker_timeout=100.0)
    a, _ = join(s, b"A", now=0.0)
    s.sent(b"A", 0.0)
    assert s.tick(0.5) == []
    assert s.tick(0.999) == []
    assert s.tick(1.0) == [Send(b"A", p.Heartbeat(0))]
    # Not recorded as sent: the next tick still owes a heartbeat.
    assert s.tick(1.2) == [Send(b"A", p.Heartbeat(0))]
    s.sent(b"A", 1.2)
    assert s.tick(2.1) == []
    assert s.tick(2.2) == [Send(b"A", p.Heartbeat(0))]
    # Any message sent counts: an assignment at 3.0 resets the clock too.
    s.sent(b"A", 3.0)
    assert s.tick(3.5) == []


def test_dead_worker_gets_no_heartbeat():
    s = make(n_maps=1, n_reduce=1, heartbeat_interval=2.0, worker_timeout=3.0)
    a, _ = join(s, b"A", now=0.0)
    b, _ = join(s, b"B", now=0.0)
    assert s.receive(2.5, b"B", p.Heartbeat(b)) == []
    s.sent(b"B", 2.5)
    actions = s.tick(3.5)  # A silent for 3.5 s: dead. B was just sent something.
    assert s.workers[a].state is WorkerState.DEAD
    assert msgs(actions, b"A") == []
    assert msgs(actions, b"B", p.Heartbeat) == []


# ---- fencing ---------------------------------------------------------------


def _two_workers_one_dead():
    """A ran map 0 and was declared dead; B runs map 0 again now."""
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0)
    m_a = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0)
    one(actions, b"B", p.AssignReduce)
    # B's reduce is cancelled to make room for the map A lost, and B then runs the map.
    s.receive(4.0, b"B", p.Heartbeat(b))
    actions = s.tick(6.0)
    cancel = one(actions, b"B", p.Cancel)
    actions = s.receive(6.5, b"B", p.Cancelled(b, cancel.attempt))
    m_b = one(actions, b"B", p.AssignMap)
    assert m_b.task == 0
    return s, a, m_a, b, m_b


def test_late_task_done_from_dead_worker_is_fenced():
    s, a, m_a, b, m_b = _two_workers_one_dead()
    before = len(s.events)
    actions = s.receive(7.0, b"A", p.TaskDone(a, m_a.attempt, [10], "/scratch/A/m1", 3))
    assert len(actions) == 1 and isinstance(actions[0].message, p.Unknown)
    assert actions[0].identity == b"A"
    assert [type(e) for e in s.events[before:]] == [MessageFenced]
    fenced = s.events[-1]
    assert fenced.worker == a and fenced.message == "TaskDone" and fenced.attempt == m_a.attempt
    assert s.maps[0].state is TaskState.RUNNING and s.maps[0].result is None
    assert s.maps_done == 0
    assert s.workers[a].state is WorkerState.DEAD
    # B's result is the one that counts.
    actions = map_done(s, 8.0, b"B", b, m_b, [9])
    assert s.maps[0].state is TaskState.DONE
    assert s.maps[0].result.attempt == m_b.attempt
    one(actions, b"B", p.AssignReduce)


@pytest.mark.parametrize(
    "message",
    [
        lambda a, att: p.Heartbeat(a),
        lambda a, att: p.TaskFailed(a, att, "ValueError: x", "tb"),
        lambda a, att: p.Cancelled(a, att),
    ],
    ids=["Heartbeat", "TaskFailed", "Cancelled"],
)
def test_any_message_from_dead_incarnation_gets_unknown(message):
    s, a, m_a, b, m_b = _two_workers_one_dead()
    state = (s.maps[0].state, s.maps[0].failures, s.maps[0].lost, s.workers[a].last_seen, s.tally.failed_attempts)
    actions = s.receive(7.0, b"A", message(a, m_a.attempt))
    assert [type(x.message) for x in actions] == [p.Unknown]
    assert (
        s.maps[0].state,
        s.maps[0].failures,
        s.maps[0].lost,
        s.workers[a].last_seen,
        s.tally.failed_attempts,
    ) == state
    assert s.workers[a].state is WorkerState.DEAD
    assert s.attempts[m_b.attempt].state is AttemptState.RUNNING


def test_unknown_worker_id_gets_unknown():
    s = make()
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = s.receive(1.0, b"X", p.TaskDone(99, m.attempt, [1], "/x", 1))
    assert actions == [Send(b"X", p.Unknown("unknown worker", 99))]
    assert kinds(s)[-1] is MessageFenced
    assert s.maps[0].state is TaskState.RUNNING and s.maps_done == 0
    assert s.receive(1.0, b"X", p.Heartbeat(99)) == [Send(b"X", p.Unknown("unknown worker", 99))]
    # A Goodbye from a stranger needs no answer.
    assert s.receive(1.0, b"X", p.Goodbye(99)) == []


def test_mismatched_identity_gets_unknown_and_changes_nothing():
    s = make(worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, _ = join(s, b"B", now=0.0)
    # B claims to be A, reporting A's attempt.
    actions = s.receive(4.0, b"B", p.TaskDone(a, m.attempt, [1], "/fake", 1))
    assert [type(x.message) for x in actions] == [p.Unknown]
    assert actions[0].identity == b"B"
    assert kinds(s)[-1] is MessageFenced
    assert s.maps[0].state is TaskState.RUNNING
    assert s.attempts[m.attempt].state is AttemptState.RUNNING
    assert s.workers[a].last_seen == 0.0  # the impostor did not keep A alive
    assert s.workers[b].last_seen == 0.0
    # The real A is still accepted.
    actions = map_done(s, 4.5, b"A", a, m, [2])
    assert s.maps[0].state is TaskState.DONE
    assert s.maps[0].result.path == f"/scratch/A/m{m.attempt}"


def test_reregistering_identity_kills_the_old_incarnation():
    s = make(n_maps=1, n_reduce=1)
    a1, actions = join(s, b"A", now=0.0)
    m1 = one(actions, b"A", p.AssignMap)
    a2, actions = join(s, b"A", now=1.0)
    assert a2 != a1
    assert s.workers[a1].state is WorkerState.DEAD
    assert s.attempts[m1.attempt].state is AttemptState.LOST
    m2 = one(actions, b"A", p.AssignMap)
    assert m2.task == 0 and m2.attempt != m1.attempt
    # The old incarnation's result is fenced even though the identity is the same.
    actions = s.receive(2.0, b"A", p.TaskDone(a1, m1.attempt, [1], "/old", 1))
    assert [type(x.message) for x in actions] == [p.Unknown]
    assert s.maps[0].state is TaskState.RUNNING


def test_message_about_an_attempt_the_worker_is_not_running_is_ignored():
    s = make(n_maps=2)
    a, actions = join(s, b"A")
    ma = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    mb = one(actions, b"B", p.AssignMap)
    assert s.receive(1.0, b"A", p.TaskDone(a, mb.attempt, [1], "/x", 1)) == []
    assert s.receive(1.0, b"A", p.TaskDone(a, 12345, [1], "/x", 1)) == []
    assert s.maps[1].state is TaskState.RUNNING and s.maps_done == 0
    assert s.workers[a].state is WorkerState.BUSY and s.workers[a].attempt.id == ma.attempt


# ---- reduce commit and discard ------------------------------------------------


def _timed_out_reduce():
    """Reduce 0 timed out on B and runs again on A; B has not answered the Cancel yet."""
    s = make(n_maps=1, n_reduce=1, task_timeout=10.0)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0)
    r_b = one(actions, b"B", p.AssignReduce)
    actions = map_done(s, 1.0, b"A", a, m, [5])
    one(actions, b"B", p.MapOutputs)
    assert s.tick(11.0) == []  # the timeout counts from the last map's end: before it, r_b waited
    actions = s.tick(11.5)
    assert one(actions, b"B", p.Cancel) == p.Cancel(r_b.attempt)
    r_a = one(actions, b"A", p.AssignReduce)
    assert r_a.task == 0 and r_a.attempt != r_b.attempt
    assert [o.map_task for o in r_a.outputs] == [0]
    return s, a, b, r_a, r_b


def test_first_reduce_done_commits_and_a_second_attempt_is_discarded():
    s, a, b, r_a, r_b = _timed_out_reduce()
    actions = reduce_done(s, 12.0, b"A", a, r_a)
    assert commits(actions) == [(0, f".part-00000.a{r_a.attempt}.tmp")]
    assert s.succeeded and s.finished
    assert s.reduces_done == 1
    # B finished too, racing the Cancel: its output is thrown away.
    actions = reduce_done(s, 12.5, b"B", b, r_b)
    assert actions == [Discard(f".part-00000.a{r_b.attempt}.tmp")]
    assert kinds(s)[-1] is ResultDiscarded
    assert s.reduces_done == 1
    assert s.workers[b].state is WorkerState.IDLE


def test_reduce_done_of_timed_out_attempt_is_discarded_even_if_first():
    s, a, b, r_a, r_b = _timed_out_reduce()
    actions = reduce_done(s, 12.0, b"B", b, r_b)
    assert actions == [Discard(f".part-00000.a{r_b.attempt}.tmp")]
    assert not s.succeeded
    actions = reduce_done(s, 12.5, b"A", a, r_a)
    assert commits(actions) == [(0, f".part-00000.a{r_a.attempt}.tmp")]
    assert s.succeeded


def test_task_timeout_fails_overdue_attempt_and_worker_stays_busy_until_cancelled():
    s = make(n_maps=1, n_reduce=1, task_timeout=10.0, max_attempts=5)
    a, actions = join(s, b"A", now=2.0)
    m = one(actions, b"A", p.AssignMap)
    assert s.tick(12.0) == []  # exactly the timeout: not overdue yet
    actions = s.tick(12.01)
    assert actions == [Send(b"A", p.Cancel(m.attempt))]
    failed = events(s, TaskFailed)
    assert len(failed) == 1 and "timeout" in failed[0].error
    assert s.attempts[m.attempt].state is AttemptState.FAILED
    assert s.maps[0].state is TaskState.PENDING and s.maps[0].failures == 1
    assert s.workers[a].state is WorkerState.BUSY
    assert s.tick(13.0) == []  # not timed out twice, nothing assigned to a busy worker
    actions = s.receive(13.5, b"A", p.Cancelled(a, m.attempt))
    again = one(actions, b"A", p.AssignMap)
    assert again.task == 0 and again.attempt != m.attempt


def test_timed_out_attempt_reporting_failure_is_counted_once():
    s = make(n_maps=1, n_reduce=1, task_timeout=10.0, max_attempts=2)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    actions = s.tick(11.0)
    assert actions == [Send(b"A", p.Cancel(m.attempt))]
    # The user's code raised before the worker saw the Cancel.
    actions = s.receive(11.1, b"A", p.TaskFailed(a, m.attempt, "ValueError: late", "Traceback: late"))
    assert s.maps[0].failures == 1
    assert s.failure is None  # one attempt ran; max_attempts is 2
    assert one(actions, b"A", p.AssignMap).task == 0


# ---- failures --------------------------------------------------------------


def test_user_errors_count_to_max_attempts_then_the_job_fails_with_the_traceback():
    s = make(n_maps=2, n_reduce=1, max_attempts=3)
    a, actions = join(s, b"A")
    assign = one(actions, b"A", p.AssignMap)
    assert assign.task == 0
    tried = []
    for n in range(1, 4):
        tried.append(assign.attempt)
        tb = (
            'Traceback (most recent call last):\n  File "app.py", line 3, in map\nZeroDivisionError: '
            f"division by zero #{n}"
        )
        actions = s.receive(float(n), b"A", p.TaskFailed(a, assign.attempt, "ZeroDivisionError: division by zero", tb))
        assert s.maps[0].failures == n
        if n < 3:
            assert s.failure is None and not s.finished
            assign = one(actions, b"A", p.AssignMap)
            assert assign.task == 0  # retried first: pending maps are taken in order
            assert assign.attempt not in tried
    assert actions == []  # nothing more is handed out
    assert s.finished and not s.succeeded
    assert "map task 0" in s.failure and "in0.txt" in s.failure
    assert "failed 3 times" in s.failure
    assert "ZeroDivisionError: division by zero #3" in s.failure
    assert 'File "app.py", line 3, in map' in s.failure
    assert s.tally.failed_attempts == 3
    assert len(events(s, TaskFailed)) == 3
    assert s.tick(50.0) == []


def test_failure_without_details_uses_the_error_line():
    s = make(n_maps=1, n_reduce=1, max_attempts=1)
    a, actions = join(s, b"A")
    assign = one(actions, b"A", p.AssignMap)
    s.receive(1.0, b"A", p.TaskFailed(a, assign.attempt, "KeyError: 'x'"))
    assert s.failure is not None and s.failure.endswith("KeyError: 'x'")


def test_lost_attempts_do_not_count_toward_max_attempts_but_max_lost_fails_the_job():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0, max_attempts=2, max_lost=3)
    t = 0.0
    for n in range(1, 4):
        ident = f"W{n}".encode()
        _, actions = join(s, ident, now=t)
        assign = one(actions, ident, p.AssignMap)
        assert assign.task == 0
        s.tick(t + 6.0)  # the worker vanished with its attempt
        assert s.attempts[assign.attempt].state is AttemptState.LOST
        assert s.maps[0].lost == n and s.maps[0].failures == 0
        if n < 3:
            assert s.failure is None, "lost attempts must not count toward max_attempts"
        t += 10.0
    assert s.failure is not None
    assert "map task 0" in s.failure and "lost 3 workers" in s.failure
    assert s.tally.lost_attempts == 3 and s.tally.failed_attempts == 0
    assert len(events(s, TaskLost)) == 3
    # No more work is handed out.
    _, actions = join(s, b"late", now=t)
    assert msgs(actions, b"late", p.AssignMap) == []


def test_success_resets_the_lost_count():
    s = make(n_maps=2, n_reduce=1, worker_timeout=5.0, max_lost=2)
    _, actions = join(s, b"W1", now=0.0)
    one(actions, b"W1", p.AssignMap)
    s.tick(6.0)  # map 0 lost once
    assert s.maps[0].lost == 1
    w2, actions = join(s, b"W2", now=10.0)
    m = one(actions, b"W2", p.AssignMap)
    assert m.task == 0
    map_done(s, 11.0, b"W2", w2, m, [1])
    assert s.maps[0].lost == 0
    assert s.failure is None


def test_goodbye_releases_the_attempt_as_lost():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    r = one(actions, b"B", p.AssignReduce)
    actions = s.receive(1.0, b"A", p.Goodbye(a))
    actions += s.tick(1.05)  # the coordinator ticks at least every 0.1 s
    assert s.workers[a].state is WorkerState.LEFT
    assert WorkerLeft in kinds(s) and TaskLost in kinds(s)
    assert s.attempts[m.attempt].state is AttemptState.LOST
    # No idle worker for the map: B's reduce is cancelled to make room.
    assert one(actions, b"B", p.Cancel) == p.Cancel(r.attempt)


# ---- map outputs when their worker dies ----------------------------------------


def _finished_map_then_death(c_info: dict):
    """A ran map 0 on (host-1, /scratch/a); B runs reduce 0; C idles; then A dies."""
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0, host_id="host-1", scratch="/scratch/a", data_address="tcp://a:1")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-2", scratch="/scratch/b", data_address="tcp://b:1")
    r = one(actions, b"B", p.AssignReduce)
    c, actions = join(s, b"C", now=0.0, **c_info)
    assert msgs(actions, b"C", p.AssignMap) == msgs(actions, b"C", p.AssignReduce) == []
    actions = map_done(s, 1.0, b"A", a, m, [5])
    assert one(actions, b"B", p.MapOutputs).outputs[0].data_address == "tcp://a:1"
    for ident, wid in ((b"B", b), (b"C", c)):
        s.receive(4.0, ident, p.Heartbeat(wid))
    actions = s.tick(6.5)  # A was last heard at 1.0
    assert s.workers[a].state is WorkerState.DEAD
    return s, (a, b, c), m, r, actions


def test_dead_workers_map_output_moves_to_a_live_worker_on_the_same_host_and_scratch():
    s, (a, b, c), m, r, actions = _finished_map_then_death(
        dict(host_id="host-1", scratch="/scratch/a", data_address="tcp://c:1")
    )
    moved = events(s, MapOutputMoved)
    assert [(e.task, e.worker) for e in moved] == [(0, c)]
    assert MapRerun not in kinds(s)
    assert s.maps[0].state is TaskState.DONE and s.tally.maps_rerun == 0
    update = one(actions, b"B", p.MapOutputs)
    assert update == p.MapOutputs(
        r.attempt, [p.MapOutput(0, m.attempt, "host-1", f"/scratch/A/m{m.attempt}", "tcp://c:1", 0, 5)]
    )
    assert msgs(actions, b"C") == []  # nothing to run again


@pytest.mark.parametrize(
    "c_info",
    [
        dict(host_id="host-1", scratch="/scratch/other", data_address="tcp://c:1"),  # same host, other folder
        dict(host_id="host-9", scratch="/scratch/a", data_address="tcp://c:1"),  # same folder name, other host
    ],
    ids=["other-scratch", "other-host"],
)
def test_dead_workers_map_output_is_rerun_when_no_one_can_serve_it(c_info):
    s, (a, b, c), m, r, actions = _finished_map_then_death(c_info)
    assert MapOutputMoved not in kinds(s) and MapRerun not in kinds(s)
    # Orphaned, not lost yet: its files may outlive the process. A reader that fails says so.
    assert [e.task for e in events(s, MapOutputOrphaned)] == [0]
    actions = report_unreadable(s, 6.6, b"B", b, r.attempt)
    assert [e.task for e in events(s, MapRerun)] == [0]
    assert s.tally.maps_rerun == 1 and s.maps_done == 0
    rerun = one(actions, b"C", p.AssignMap)
    assert rerun.task == 0 and rerun.attempt != m.attempt
    assert msgs(actions, b"B", p.Cancel) == []  # C was idle: no need to preempt B
    # When the rerun finishes, the running reduce learns the new location.
    actions = map_done(s, 7.0, b"C", c, rerun, [6])
    update = one(actions, b"B", p.MapOutputs)
    assert update.attempt == r.attempt
    assert [(o.map_task, o.attempt, o.data_address, o.length) for o in update.outputs] == [
        (0, rerun.attempt, "tcp://c:1", 6)
    ]


def test_no_rerun_once_every_reduce_is_done():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-2")
    r = one(actions, b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m, [5])
    assert commits(reduce_done(s, 2.0, b"B", b, r)) == [(0, f".part-00000.a{r.attempt}.tmp")]
    s.receive(4.0, b"B", p.Heartbeat(b))
    s.tick(6.5)
    assert s.workers[a].state is WorkerState.DEAD
    assert MapRerun not in kinds(s) and MapOutputMoved not in kinds(s)
    assert s.maps[0].state is TaskState.DONE and s.succeeded


# ---- preemption ------------------------------------------------------------------


def test_pending_map_without_idle_worker_cancels_the_newest_reduce_attempt():
    s = make(n_maps=1, n_reduce=2, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-2")
    r_b = one(actions, b"B", p.AssignReduce)
    c, actions = join(s, b"C", now=0.0, host_id="host-3")
    r_c = one(actions, b"C", p.AssignReduce)
    assert r_c.attempt > r_b.attempt
    map_done(s, 1.0, b"A", a, m, [2, 3])
    for ident, wid in ((b"B", b), (b"C", c)):
        s.receive(4.0, ident, p.Heartbeat(wid))
    s.tick(6.5)  # A (last heard at 1.0) dies with the only copy of map 0's output
    actions = report_unreadable(s, 6.6, b"B", b, r_b.attempt)  # B, on another host, cannot read it
    assert MapRerun in kinds(s)
    assert msgs(actions, kind=p.Cancel) == [p.Cancel(r_c.attempt)]
    assert one(actions, b"C", p.Cancel) == p.Cancel(r_c.attempt)
    cancelled = events(s, TaskCancelled)
    assert [(e.attempt, e.task) for e in cancelled] == [(r_c.attempt, 1)]
    assert s.attempts[r_c.attempt].state is AttemptState.CANCELLED
    assert s.attempts[r_b.attempt].state is AttemptState.RUNNING
    assert s.reduces[1].state is TaskState.PENDING
    # C stays busy until it confirms; later ticks neither cancel more nor assign.
    assert s.workers[c].state is WorkerState.BUSY
    for t in (6.7, 7.0):
        actions = s.tick(t)
        assert msgs(actions, kind=p.Cancel) == [] and msgs(actions, kind=p.AssignMap) == []
    actions = s.receive(7.5, b"C", p.Cancelled(c, r_c.attempt))
    rerun = one(actions, b"C", p.AssignMap)
    assert rerun.task == 0
    # After the rerun, C picks up the cancelled reduce with the new location.
    actions = map_done(s, 8.0, b"C", c, rerun, [4, 1])
    assert one(actions, b"B", p.MapOutputs).outputs[0].attempt == rerun.attempt
    again = one(actions, b"C", p.AssignReduce)
    assert again.task == 1 and again.attempt != r_c.attempt
    assert [(o.attempt, o.offset, o.length) for o in again.outputs] == [(rerun.attempt, 4, 1)]


def test_cancelled_reduce_that_finishes_anyway_is_discarded():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-2")
    r = one(actions, b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m, [2])
    s.receive(4.0, b"B", p.Heartbeat(b))
    s.tick(6.5)
    actions = report_unreadable(s, 6.6, b"B", b, r.attempt)
    assert one(actions, b"B", p.Cancel) == p.Cancel(r.attempt)
    actions = reduce_done(s, 6.7, b"B", b, r)
    assert Discard(f".part-00000.a{r.attempt}.tmp") in actions
    assert not any(isinstance(x, Commit) for x in actions)
    assert one(actions, b"B", p.AssignMap).task == 0
    assert s.reduces[0].state is TaskState.PENDING


def test_cancelled_attempt_reporting_failure_is_not_counted():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0, max_lost=1)
    a, actions = join(s, b"A", now=0.0)
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", now=0.0, host_id="host-2")
    r = one(actions, b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m, [2])
    s.receive(4.0, b"B", p.Heartbeat(b))
    s.tick(6.5)  # A dies; B cannot read map 0: it must run again, B's reduce is cancelled
    actions = report_unreadable(s, 6.6, b"B", b, r.attempt)
    assert one(actions, b"B", p.Cancel) == p.Cancel(r.attempt)
    # B's fetch from the dead A failed before it saw the Cancel.
    actions = s.receive(6.7, b"B", p.TaskFailed(b, r.attempt, "FetchError: connection refused", "", user_error=False))
    assert (s.reduces[0].failures, s.reduces[0].lost) == (0, 0)
    assert s.failure is None
    assert one(actions, b"B", p.AssignMap).task == 0


# ---- leaving on request (drain) ----------------------------------------------


def test_draining_worker_finishes_its_map_gets_nothing_new_and_leaves_without_a_loss():
    s = make(n_maps=3, n_reduce=1)
    a, actions = join(s, b"A", scratch="/scratch/a")
    first = one(actions, b"A", p.AssignMap)
    assert s.receive(1.0, b"A", p.Draining(a)) == []
    assert s.workers[a].state is WorkerState.DRAINING and WorkerDraining in kinds(s)
    # Its map finishes and counts; no new task goes to it.
    actions = map_done(s, 2.0, b"A", a, first, [5])
    assert msgs(actions, b"A") == [] and s.maps[0].state is TaskState.DONE
    assert s.workers[a].state is WorkerState.DRAINING
    # A worker with another folder joins: its output cannot move there.
    b, actions = join(s, b"B", now=2.5, scratch="/scratch/b")
    assert one(actions, b"B", p.AssignMap).task == 1
    actions = s.receive(3.0, b"A", p.Goodbye(a))
    assert s.workers[a].state is WorkerState.LEFT
    assert s.tally.lost_attempts == 0 and s.tally.workers_dead == 0
    assert s.maps[0].result.orphaned  # kept on its host's disk for reducers there, re-run if unreadable


def test_draining_worker_is_not_a_new_home_for_orphaned_output():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A", scratch="/scratch/x")
    map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [5])
    b, actions = join(s, b"B", now=1.0, scratch="/scratch/x")
    s.receive(1.5, b"B", p.Draining(b))
    s.receive(2.0, b"A", p.Goodbye(a))
    assert s.maps[0].result.orphaned and s.maps[0].result.worker.id == a


def test_commit_names_the_reducer_host_and_a_scratch_path_is_accepted():
    s = make(n_maps=1, n_reduce=1)
    s.job_id = "job"
    a, actions = join(s, b"A", host_id="far", data_address="tcp://10.0.0.9:7000")
    r = one(map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [5]), b"A", p.AssignReduce)
    temp = f".part-00000.job-a{r.attempt}.tmp"
    bad = s.receive(2.0, b"A", p.TaskDone(a, r.attempt, [], f"/scratch/a/evil{temp}", 7, size=70))
    assert not [x for x in bad if isinstance(x, Commit)]
    r = one(bad, b"A", p.AssignReduce)  # run again
    temp = f".part-00000.job-a{r.attempt}.tmp"
    actions = s.receive(3.0, b"A", p.TaskDone(a, r.attempt, [], f"/scratch/a/{temp}", 7, size=70, fetched=123))
    (commit,) = [x for x in actions if isinstance(x, Commit)]
    assert (commit.temp, commit.attempt, commit.data_address, commit.size) == (
        f"/scratch/a/{temp}",
        r.attempt,
        "tcp://10.0.0.9:7000",
        70,
    )
    assert s.tally.shuffle_fetched == 123


def test_no_task_until_min_workers_have_joined_then_no_more_waiting():
    s = make(n_maps=4, n_reduce=1, min_workers=2)
    a, actions = join(s, b"A")
    assert msgs(actions, b"A", p.AssignMap) == []
    b, actions = join(s, b"B", now=1.0)
    first = one(actions, b"A", p.AssignMap)  # one each, at once
    one(actions, b"B", p.AssignMap)
    s.receive(2.0, b"B", p.Goodbye(b))  # below the minimum again: work goes on
    assert one(map_done(s, 3.0, b"A", a, first, [1]), b"A", p.AssignMap)


def test_goodbye_with_an_attempt_in_flight_hands_it_back_without_a_loss():
    """A worker that drained before its last assignment arrived leaves holding it."""
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    assign = one(actions, b"A", p.AssignMap)
    s.receive(1.0, b"A", p.Draining(a))
    s.receive(1.1, b"A", p.Goodbye(a))
    assert s.attempts[assign.attempt].state is AttemptState.CANCELLED
    assert s.tally.lost_attempts == 0 and s.maps[0].lost == 0 and s.maps[0].state is TaskState.PENDING
    b, actions = join(s, b"B", now=2.0)
    assert one(actions, b"B", p.AssignMap).task == 0


# ---- map-only jobs ---------------------------------------------------------------------


def map_output_done(s, now, ident, wid, assign, records=3):
    """A map of a map-only job finished: its output is a temporary file to commit."""
    temp = output.attempt_temp_name(assign.task, s.job_id, assign.attempt)
    return s.receive(now, ident, p.TaskDone(wid, assign.attempt, [], temp, records, size=10))


def test_map_only_job_commits_each_map_as_its_own_part():
    s = make(n_maps=3, n_reduce=0)
    a, actions = join(s, b"A")
    b, actions_b = join(s, b"B")
    m0, m1 = one(actions, b"A", p.AssignMap), one(actions_b, b"B", p.AssignMap)
    actions = map_output_done(s, 1.0, b"A", a, m0)
    m2 = one(actions, b"A", p.AssignMap)
    assert commits(actions) == [(0, output.attempt_temp_name(0, s.job_id, m0.attempt)), "Send"]
    assert not s.succeeded and not any(isinstance(m, p.AssignReduce) for m in msgs(actions))
    map_output_done(s, 2.0, b"B", b, m1)
    actions = map_output_done(s, 3.0, b"A", a, m2)
    assert [c[0] for c in commits(actions) if isinstance(c, tuple)] == [2]
    assert s.succeeded and s.view(3.0).phase.value == "done"


def test_map_only_output_with_a_wrong_name_fails_the_attempt_and_a_late_duplicate_is_discarded():
    s = make(n_maps=1, n_reduce=0, speculation=True)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = s.receive(1.0, b"A", p.TaskDone(a, m.attempt, [], "not-a-temp-name", 1, size=1))
    assert not commits(actions) or all(not isinstance(c, tuple) for c in commits(actions))
    again = one(actions, b"A", p.AssignMap)
    assert again.attempt != m.attempt
    map_output_done(s, 2.0, b"A", a, again)
    assert s.succeeded


def test_map_only_committed_output_needs_no_rerun_when_its_worker_dies():
    s = make(n_maps=2, n_reduce=0)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    actions = map_output_done(s, 1.0, b"A", a, m0)
    m1 = one(actions, b"A", p.AssignMap)
    b, _ = join(s, b"B", host_id="host-2")
    actions = s.process_exited(1.5, "host-1", 4242, -9)  # A dies holding map 1
    assert s.maps[0].state is TaskState.DONE and s.tally.maps_rerun == 0  # committed: nothing to redo
    assert m1.task == 1 and one(actions, b"B", p.AssignMap).task == 1


# ---- skipping bad records ------------------------------------------------------------------


def fail_on(s, now, ident, wid, assign, record):
    return s.receive(now, ident, p.TaskFailed(wid, assign.attempt, "ValueError: bad", "tb", bad_record=record))


def test_a_record_that_fails_twice_is_skipped_and_failures_on_it_do_not_use_up_attempts():
    s = make(n_maps=1, n_reduce=1, skip_bad_records=1, max_attempts=2)
    a, actions = join(s, b"A")
    m1 = one(actions, b"A", p.AssignMap)
    m2 = one(fail_on(s, 1.0, b"A", a, m1, "120"), b"A", p.AssignMap)
    assert m2.skip == [] and s.failure is None  # once: maybe bad luck, try again as it is
    m3 = one(fail_on(s, 2.0, b"A", a, m2, "120"), b"A", p.AssignMap)
    assert m3.skip == ["120"] and s.failure is None and s.maps[0].failures == 0
    (skipped,) = [e for e in s.events if isinstance(e, RecordSkipped)]
    assert (skipped.task, skipped.record, skipped.input) == (0, "120", "in0.txt")
    assert s.tally.records_skipped == 1
    m4 = one(fail_on(s, 3.0, b"A", a, m3, "999"), b"A", p.AssignMap)  # the budget (1) is spent: a failure
    assert m4.skip == ["120"] and s.maps[0].failures == 1
    fail_on(s, 4.0, b"A", a, m4, "999")
    assert s.failure is not None and "failed 2 times" in s.failure


def test_without_the_option_a_bad_record_is_an_ordinary_failure():
    s = make(n_maps=1, n_reduce=1, max_attempts=2)
    a, actions = join(s, b"A")
    m1 = one(actions, b"A", p.AssignMap)
    m2 = one(fail_on(s, 1.0, b"A", a, m1, "120"), b"A", p.AssignMap)
    fail_on(s, 2.0, b"A", a, m2, "120")
    assert m2.skip == [] and s.failure is not None


# ---- pipelines ---------------------------------------------------------------------------


def test_a_pipeline_runs_its_stages_in_order_and_commits_only_the_last_steps_output():
    s = make(n_maps=2, n_reduce=2, later_steps=(1,))
    assert [len(stage) for stage in s.stages] == [2, 2, 1] and s.outputs is s.stages[2]
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    m1 = one(map_done(s, 1.0, b"A", a, m0, [3, 4]), b"A", p.AssignMap)
    r0 = one(map_done(s, 2.0, b"A", a, m1, [5, 0]), b"A", p.AssignReduce)
    assert (r0.step, r0.partitions, r0.sources) == (0, 1, 2) and s.view(2.0).step == 1
    assert [o.map_task for o in r0.outputs] == [0, 1]
    actions = map_done(s, 3.0, b"A", a, r0, [6])  # step 1's reduce wrote map output for step 2
    assert commits(actions) == ["Remember", "Send"]  # journalled, nothing committed: the next task goes out
    r1 = one(actions, b"A", p.AssignReduce)
    assert (r1.task, r1.step, [o.map_task for o in r1.outputs], r1.empty) == (1, 0, [0], [1])  # map 1: nothing
    final = one(map_done(s, 4.0, b"A", a, r1, [0]), b"A", p.AssignReduce)
    assert (final.step, final.partitions, final.sources) == (1, 0, 2) and s.view(4.0).step == 2
    assert [o.map_task for o in final.outputs] == [0] and final.empty == [1]  # step 1's reduces
    actions = reduce_done(s, 5.0, b"A", a, final)
    assert commits(actions) == [(0, output.attempt_temp_name(0, s.job_id, final.attempt))] and s.succeeded
    finished = [e for e in s.events if isinstance(e, TaskFinished)]
    assert [(e.phase.value, e.step) for e in finished] == [("map", 1)] * 2 + [("reduce", 1)] * 2 + [("reduce", 2)]


def test_a_lost_output_of_step_one_is_made_again_when_step_two_cannot_read_it():
    s = make(n_maps=1, n_reduce=1, later_steps=(1,))
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    r0 = one(map_done(s, 1.0, b"A", a, m0, [4]), b"A", p.AssignReduce)
    one(map_done(s, 2.0, b"A", a, r0, [6]), b"A", p.AssignReduce)  # the final reduce, on A
    b, _ = join(s, b"B", now=2.5, host_id="host-2")
    actions = s.receive(3.0, b"A", p.Goodbye(a))  # A leaves mid-attempt: B takes the final reduce
    final = one(actions, b"B", p.AssignReduce)
    assert final.step == 1 and [o.map_task for o in final.outputs] == [0]  # from step 1's reduce, on A
    assert s.stages[1][0].state is TaskState.DONE  # its output still counts: the files likely outlive A
    loc = s._location(s.stages[1][0], 0)
    failed = p.FetchFailed(b, final.attempt, 0, loc.attempt, loc.data_address, "FetchError: gone")
    actions = s.receive(4.0, b"B", failed)
    rerun = [e for e in s.events if isinstance(e, MapRerun)]
    assert [(e.task, e.phase.value, e.step) for e in rerun] == [(0, "reduce", 1)]  # step 1's reduce, not a map
    assert one(actions, b"B", p.Cancel).attempt == final.attempt  # the waiting reduce makes way for it
    redo = one(s.receive(4.1, b"B", p.Cancelled(b, final.attempt)), b"B", p.AssignReduce)
    assert (redo.task, redo.step, redo.partitions) == (0, 0, 1)  # step 1's reduce again, on B


def test_a_running_attempts_status_line_is_in_the_view_and_a_strangers_is_ignored():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    b, _ = join(s, b"B")
    assign = one(actions, b"A", p.AssignMap)
    assert s.receive(1.0, b"A", p.TaskStatus(a, assign.attempt, "half way")) == []
    assert s.receive(1.0, b"B", p.TaskStatus(b, assign.attempt, "not mine")) == []  # not B's attempt
    running = [v for v in s.view(1.5).attempts if v.id == assign.attempt]
    assert [v.status for v in running] == ["half way"]
    worker = next(w for w in s.view(1.5).workers if w.id == a)
    assert worker.attempt is not None and worker.attempt.status == "half way"


def test_a_process_registering_on_a_new_connection_ends_its_old_registration_at_once():
    s = make(n_maps=2, n_reduce=1)
    old, actions = join(s, b"A", now=0.0)
    held = one(actions, b"A", p.AssignMap)
    again = hello(b"A")  # the same process (host and pid), reconnected: a new socket identity
    actions = s.register(1.0, b"A-again", again, welcome)
    assert s.workers[old].state is WorkerState.DEAD
    assert s.attempts[held.attempt].state is AttemptState.LOST  # handed out again, not held till a timeout
    assert {m.task for m in msgs(actions, b"A-again", p.AssignMap)} == {held.task}
    # Another process on the same host (another data server) is another worker.
    other = dataclasses.replace(hello(b"B"), host_id=again.host_id, pid=again.pid)
    s.register(2.0, b"B", other, welcome)
    assert sum(w.state in (WorkerState.IDLE, WorkerState.BUSY) for w in s.workers.values()) == 2
