"""Scheduler recovery rules, driven by an injected clock: backups, fetch failures, supervision, commits."""

from __future__ import annotations

import dataclasses

from helpers import commits, events, join, kinds, make, map_done, msgs, one, reduce_done
from mapreduce.coordinator.scheduler import Commit, Discard, TaskState, WorkerState
from mapreduce.wire import messages as p
from mapreduce.wire.events import (
    AttemptState,
    BackupLaunched,
    CommitFailed,
    MapOutputMoved,
    MapOutputOrphaned,
    MapRerun,
    ResultDiscarded,
    TaskCancelled,
    TaskFailed,
    TaskFinished,
    WorkerDead,
    WorkerSuspect,
)


def three_maps_two_done(**settings):
    """Maps 0 and 1 finished in 1 s each; map 2 runs on A since t=0; B and C are idle."""
    s = make(n_maps=3, n_reduce=1, speculation=True, **settings)
    a, actions = join(s, b"A")
    m_a = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m_b = one(actions, b"B", p.AssignMap)
    c, actions = join(s, b"C")
    m_c = one(actions, b"C", p.AssignMap)
    map_done(s, 1.0, b"B", b, m_b, [5])
    map_done(s, 1.0, b"C", c, m_c, [5])
    return s, (a, b, c), m_a


def test_no_backup_for_ordinary_variation():
    s, _, m_a = three_maps_two_done()
    # The median finished map took 1 s: a backup needs 2x that and 0.5 s more, i.e. past t=2.
    assert msgs(s.tick(1.9), kind=p.AssignMap) == []
    assert BackupLaunched not in kinds(s)


def test_straggler_gets_one_backup_and_the_first_to_finish_wins():
    s, (a, b, c), m_a = three_maps_two_done()
    actions = s.tick(2.1)
    backups = msgs(actions, kind=p.AssignMap)
    assert len(backups) == 1 and backups[0].task == m_a.task  # one backup per task, not two
    backup = backups[0]
    assert [e.task for e in events(s, BackupLaunched)] == [m_a.task]
    assert msgs(s.tick(10.0), kind=p.AssignMap) == []  # still just one backup
    wid = next(w.id for w in s.workers.values() if w.attempt is not None and w.attempt.id == backup.attempt)
    runner = s.workers[wid].identity
    actions = map_done(s, 11.0, runner, wid, backup, [5])
    cancel = one(actions, b"A", p.Cancel)
    assert cancel.attempt == m_a.attempt
    assert s.attempts[m_a.attempt].state is AttemptState.SUPERSEDED
    assert s.workers[a].state is WorkerState.BUSY  # until it confirms
    finished = events(s, TaskFinished)[-1]
    assert finished.backup is True
    # The straggler's own late completion is discarded; its worker is free again.
    actions = map_done(s, 12.0, b"A", a, m_a, [5])
    assert ResultDiscarded in kinds(s)
    assert s.maps[m_a.task].result.attempt == backup.attempt
    assert s.workers[a].state is WorkerState.IDLE


def test_a_worker_that_straggled_runs_no_backups():
    s = make(n_maps=5, n_reduce=1, speculation=True)
    ids, first = {}, {}
    for name in (b"A", b"B", b"C", b"D"):
        ids[name], actions = join(s, name)
        first[name] = one(actions, name, p.AssignMap)
    m4 = one(map_done(s, 1.0, b"B", ids[b"B"], first[b"B"], [5]), b"B", p.AssignMap)
    one(map_done(s, 1.0, b"C", ids[b"C"], first[b"C"], [5]), b"C", p.AssignReduce)  # C waits for maps
    map_done(s, 1.0, b"D", ids[b"D"], first[b"D"], [5])  # the median map takes 1 s; D is idle
    backup = one(s.tick(2.1), b"D", p.AssignMap)  # A's map straggles: D backs it up
    assert backup.task == first[b"A"].task and s.workers[ids[b"A"]].slow
    one(map_done(s, 2.2, b"A", ids[b"A"], first[b"A"], [5]), b"D", p.Cancel)  # A wins, late
    # B's map straggles now; A is the only idle worker, and a slow one: no backup.
    assert s.workers[ids[b"A"]].slow and msgs(s.tick(3.5), kind=p.AssignMap) == []
    actions = s.receive(3.6, b"D", p.Cancelled(ids[b"D"], backup.attempt))  # D is free: it backs B up
    assert one(actions, b"D", p.AssignMap).task == m4.task


def two_workers_mapping(n_maps):
    """Workers A and B, running maps 0 and 1 since t=0; one reduce."""
    s = make(n_maps=n_maps, n_reduce=1, speculation=True)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    return s, a, b, m0, one(actions, b"B", p.AssignMap)


def test_a_reduce_waiting_for_a_straggling_map_makes_way_for_its_backup():
    s, a, b, m0, m1 = two_workers_mapping(2)
    r0 = one(map_done(s, 1.0, b"B", b, m1, [5]), b"B", p.AssignReduce)  # B only waits for map 0 now
    assert msgs(s.tick(1.9)) == []  # map 0 is not late yet (2x the median)
    assert one(s.tick(2.1), b"B", p.Cancel).attempt == r0.attempt
    assert events(s, TaskCancelled)[-1].why == "a straggling map needs a backup"
    backup = one(s.receive(2.2, b"B", p.Cancelled(b, r0.attempt)), b"B", p.AssignMap)
    assert backup.task == m0.task and events(s, BackupLaunched)
    # The backup wins; the reduce runs again on the first free worker.
    actions = map_done(s, 3.2, b"B", b, backup, [5])
    assert one(actions, b"A", p.Cancel).attempt == m0.attempt
    assert one(actions, b"B", p.AssignReduce).task == r0.task


def test_a_task_on_a_worker_that_straggled_is_backed_up_as_soon_as_a_worker_is_free():
    s, a, b, m0, m1 = two_workers_mapping(5)
    m2 = one(map_done(s, 1.0, b"B", b, m1, [5]), b"B", p.AssignMap)
    m3 = one(map_done(s, 2.0, b"B", b, m2, [5]), b"B", p.AssignMap)
    m4 = one(map_done(s, 2.5, b"A", a, m0, [5]), b"A", p.AssignMap)  # 2.5 s: A straggled
    assert s.workers[a].slow
    # B is free at t=3 with nothing pending: A's new map has run 0.5 s only, but A is slow.
    backup = one(map_done(s, 3.0, b"B", b, m3, [5]), b"B", p.AssignMap)
    assert backup.task == m4.task and backup.attempt != m4.attempt


def test_a_map_with_more_input_is_given_proportionally_longer():
    s = make(n_maps=3, n_reduce=1, speculation=True)
    s.maps[0].split = dataclasses.replace(s.maps[0].split, end=400)  # 4x the input of the others
    a, actions = join(s, b"A")
    big = one(actions, b"A", p.AssignMap)
    ids, assigned = {}, {}
    for name in (b"B", b"C"):
        ids[name], actions = join(s, name)
        assigned[name] = one(actions, name, p.AssignMap)
    for name in (b"B", b"C"):
        map_done(s, 1.0, name, ids[name], assigned[name], [5])
    # The typical map took 1 s for 100 bytes: 400 bytes may take 4 s, and 8 s before a backup.
    assert msgs(s.tick(7.9), kind=p.AssignMap) == []
    assert one(s.tick(8.1), None, p.AssignMap).task == big.task


def test_no_backups_without_speculation():
    s, _, _ = three_maps_two_done()
    s.settings = type(s.settings)(**{**s.settings.__dict__, "speculation": False})
    assert msgs(s.tick(100.0), kind=p.AssignMap) == []


def test_reduce_not_counted_slow_while_it_waits_for_maps():
    s = make(n_maps=2, n_reduce=2, speculation=True)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    actions = map_done(s, 1.0, b"B", b, m1, [1, 1])
    r0 = one(actions, b"B", p.AssignReduce)
    actions = map_done(s, 50.0, b"A", a, m0, [1, 1])  # r0 waited 49 s for this map
    r1 = one(actions, b"A", p.AssignReduce)
    reduce_done(s, 51.0, b"A", a, r1)  # reduces take 1 s
    assert msgs(s.tick(52.0), kind=p.AssignReduce) == []  # r0 has worked for 2 s, not 51
    backup = one(s.tick(53.5), b"A", p.AssignReduce)  # 3.5 s: now it is a straggler
    assert backup.task == r0.task


def test_fetch_failure_reruns_the_map_once_and_announces_the_new_output():
    s = make(n_maps=1, n_reduce=2)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m, [3, 4])
    r0 = one(actions, b"A", p.AssignReduce)
    b, actions = join(s, b"B", now=1.0)
    r1 = one(actions, b"B", p.AssignReduce)
    loc = r1.outputs[0]
    failed = p.FetchFailed(b, r1.attempt, 0, loc.attempt, loc.data_address, "FetchError: gone")
    actions = s.receive(2.0, b"B", failed)
    assert s.maps[0].state is TaskState.PENDING and MapRerun in kinds(s)
    # The map must run again and every worker is busy in a reduce: the newest reduce makes room.
    assert one(actions, b"B", p.Cancel).attempt == r1.attempt
    assert s.attempts[r0.attempt].state is AttemptState.RUNNING  # the other reduce keeps waiting
    s.receive(2.1, b"A", p.FetchFailed(a, r0.attempt, 0, loc.attempt, loc.data_address, "gone"))
    assert s.tally.maps_rerun == 1  # a second report of the same lost output changes nothing
    actions = s.receive(2.2, b"B", p.Cancelled(b, r1.attempt))
    rerun = one(actions, b"B", p.AssignMap)
    actions = map_done(s, 3.0, b"B", b, rerun, [3, 4])
    update = one(actions, b"A", p.MapOutputs)
    assert update.attempt == r0.attempt and update.outputs[0].attempt == rerun.attempt


def test_fetch_failure_for_an_output_that_moved_gets_the_new_place():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A", scratch="/shared")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", scratch="/shared")
    r = one(actions, b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m, [3])
    s.receive(1.5, b"A", p.Goodbye(a))  # A leaves; B shares its folder and serves its output
    assert MapOutputMoved in kinds(s) and s.maps[0].result.worker.id == b
    actions = s.receive(2.0, b"B", p.FetchFailed(b, r.attempt, 0, m.attempt, "tcp://A:9000", "gone"))
    moved = one(actions, b"B", p.MapOutputs)
    assert moved.outputs[0].data_address == "tcp://B:9000"
    assert s.maps[0].state is TaskState.DONE and s.tally.maps_rerun == 0


def test_supervisor_reported_exit_declares_the_worker_dead_at_once():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    b, _ = join(s, b"B")
    actions = s.process_exited(0.5, "other-host", 4242, -9)
    assert s.workers[a].state is WorkerState.BUSY  # same pid on another host: not ours
    pids = {wid: s.workers[wid].info.pid for wid in (a, b)}
    assert pids[a] == pids[b]  # the test helper gives both pid 4242: both are this host's
    actions = s.process_exited(0.5, "host-1", 4242, -9)
    assert s.workers[a].state is WorkerState.DEAD and s.workers[b].state is WorkerState.DEAD
    dead = events(s, WorkerDead)[0]
    assert "exited with code -9" in dead.why and dead.attempt == m.attempt


def test_commit_failure_runs_the_reduce_again():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m, [3])
    r = one(actions, b"A", p.AssignReduce)
    actions = reduce_done(s, 2.0, b"A", a, r)
    assert (0, f".part-00000.a{r.attempt}.tmp") in commits(actions) and s.succeeded
    actions = s.commit_failed(2.1, 0, "gone")
    assert not s.succeeded and CommitFailed in kinds(s)
    again = one(actions, b"A", p.AssignReduce)
    assert again.attempt != r.attempt


def test_a_partition_that_never_commits_fails_the_job_though_each_reduce_succeeds():
    s = make(n_maps=1, n_reduce=1, max_lost=3)
    a, actions = join(s, b"A")
    r = one(map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [3]), b"A", p.AssignReduce)
    for i in range(3):
        assert s.failure is None
        reduce_done(s, 2.0 + i, b"A", a, r)
        actions = s.commit_failed(2.5 + i, 0, "the reducer's data server refused the file")
        r = msgs(actions, b"A", p.AssignReduce)[0] if i < 2 else r
    assert s.failure and "could not be committed 3 times" in s.failure and "refused the file" in s.failure


def test_reduce_output_with_a_foreign_name_is_refused():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    r = one(map_done(s, 1.0, b"A", a, m, [3]), b"A", p.AssignReduce)
    actions = s.receive(2.0, b"A", p.TaskDone(a, r.attempt, [], "../../etc/passwd", 1))
    assert not [x for x in actions if isinstance(x, (Commit, Discard))]
    assert s.reduces[0].state is not TaskState.DONE
    assert "expected" in events(s, TaskFailed)[0].error


def test_zombie_reduce_output_is_discarded_when_fenced():
    s = make(n_maps=1, n_reduce=1, worker_timeout=5.0, heartbeat_interval=1.0)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    r = one(map_done(s, 1.0, b"A", a, m, [3]), b"A", p.AssignReduce)
    s.tick(3.6)  # 2.6 s of silence: suspect (2.5 heartbeat intervals), not dead
    assert WorkerSuspect in kinds(s) and s.workers[a].state is WorkerState.BUSY
    s.tick(6.1)
    assert s.workers[a].state is WorkerState.DEAD
    temp = f".part-00000.a{r.attempt}.tmp"
    actions = s.receive(7.0, b"A", p.TaskDone(a, r.attempt, [], temp, 1))
    assert Discard(temp) in actions and one(actions, b"A", p.Unknown)
    assert not any(isinstance(x, Commit) for x in actions)
    assert s.tally.fenced == 1


def test_empty_map_outputs_travel_as_indices_not_locations():
    s = make(n_maps=2, n_reduce=2)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m0, [0, 5])  # nothing for partition 0
    r0 = one(actions, b"A", p.AssignReduce)
    assert r0.task == 0 and r0.outputs == [] and r0.empty == [0]
    actions = map_done(s, 2.0, b"B", b, m1, [3, 0])
    update = one(actions, b"A", p.MapOutputs)
    assert [o.map_task for o in update.outputs] == [1] and update.empty == []
    r1 = one(actions, b"B", p.AssignReduce)
    assert [o.map_task for o in r1.outputs] == [0] and r1.empty == [1]


def test_map_output_index_that_overflows_the_wire_is_refused():
    s = make(n_maps=1, n_reduce=3)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    big = 2**63 - 1
    s.receive(1.0, b"A", p.TaskDone(a, m.attempt, [big, big, 5], "/scratch/log", 1, big))
    assert s.maps[0].state is not TaskState.DONE and TaskFailed in kinds(s)


def test_endless_fetch_failures_fail_the_job_instead_of_rerunning_forever():
    s = make(n_maps=1, n_reduce=1, max_lost=3)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    b, _ = join(s, b"B")  # takes the reduce at once: no map is pending
    for round_ in range(10):
        map_done(s, 1.0 + round_, b"A", a, m, [3])
        loc = s._location(s.maps[0], 0)
        reduce_attempt = s.workers[b].attempt.id
        actions = s.receive(
            1.5 + round_, b"B", p.FetchFailed(b, reduce_attempt, 0, loc.attempt, loc.data_address, "OSError: EMFILE")
        )
        if s.failure:
            break
        m = one(actions, b"A", p.AssignMap)  # the map runs again on A
    assert s.maps[0].fetch_reruns == 4  # max_lost re-runs allowed, the next report fails the job
    assert "failed to read the output of map task 0" in s.failure and "EMFILE" in s.failure


def test_dead_workers_maps_rerun_only_if_an_unfinished_reduce_needs_them():
    s = make(n_maps=1, n_reduce=2)
    a, actions = join(s, b"A", host_id="host-a", scratch="/a")
    m = one(actions, b"A", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m, [5, 0])  # nothing for partition 1
    r0 = one(actions, b"A", p.AssignReduce)
    b, actions = join(s, b"B", host_id="host-b", scratch="/b")
    one(actions, b"B", p.AssignReduce)
    reduce_done(s, 2.0, b"A", a, r0)
    s.receive(2.5, b"A", p.Goodbye(a))  # partition 0 is committed; partition 1 needs nothing of A
    assert MapRerun not in kinds(s) and s.maps[0].state is TaskState.DONE


def test_cancelled_unasked_gives_the_task_back():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    actions = s.receive(1.0, b"A", p.Cancelled(a, m.attempt))
    again = one(actions, b"A", p.AssignMap)
    assert again.task == 0 and again.attempt != m.attempt


def test_orphaned_output_is_served_by_a_worker_joining_with_the_same_folder():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A", scratch="/shared")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B", host_id="host-2")
    one(actions, b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m, [3])
    s.process_exited(1.5, "host-1", 4242, -9)  # A crashed (B is on another host: pid 4242 there is not it)
    assert s.workers[a].state is WorkerState.DEAD and MapOutputOrphaned in kinds(s)
    assert s.maps[0].state is TaskState.DONE and s.tally.maps_rerun == 0
    c, actions = join(s, b"C", now=2.0, scratch="/shared", data_address="tcp://C:1")  # its replacement
    update = one(actions, b"B", p.MapOutputs)
    assert update.outputs[0].data_address == "tcp://C:1" and s.maps[0].result.worker.id == c


def test_one_unreadable_orphan_reruns_every_needed_orphan_of_that_worker():
    """A reducer elsewhere could not reach a dead worker's output: its other outputs are no
    more reachable, so they run again at once instead of one fetch timeout each."""
    s = make(n_maps=3, n_reduce=1)
    a, actions = join(s, b"A", scratch="/a")
    actions = map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [3])
    last = one(map_done(s, 1.1, b"A", a, one(actions, b"A", p.AssignMap), [3]), b"A", p.AssignMap)
    b, actions = join(s, b"B", now=1.2, host_id="host-2", scratch="/b")
    r = one(actions, b"B", p.AssignReduce)
    map_done(s, 1.3, b"A", a, last, [0])  # nothing for the reduce: not needed
    s.process_exited(1.5, "host-1", 4242, -9)  # A is gone; nobody shares its folder
    assert [m.result.orphaned for m in s.maps] == [True, True, False]
    loc = s._location(s.maps[0], 0)
    s.receive(2.0, b"B", p.FetchFailed(b, r.attempt, 0, loc.attempt, loc.data_address, "Unreachable: no answer"))
    assert [m.state for m in s.maps] == [TaskState.PENDING, TaskState.PENDING, TaskState.DONE]
    assert s.tally.maps_rerun == 2


# ---- failures of a worker's environment: retried elsewhere (per-task exclusion) ----

FULL = "no space left in scratch folder /scratch/a (map output of attempt 1)"


def storage_failure(s, now, ident, wid, attempt, error=FULL, kind="storage"):
    return s.receive(now, ident, p.TaskFailed(wid, attempt, error, kind, user_error=False))


def test_task_that_failed_for_its_worker_waits_for_another_worker():
    s = make(n_maps=2, n_reduce=1, max_attempts=1)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    actions = storage_failure(s, 1.0, b"A", a, m0.attempt)
    assert msgs(actions, b"A") == []  # B could take it once free: A stays idle
    assert s.workers[a].state is WorkerState.IDLE and s.maps[0].state is TaskState.PENDING
    # Not the user's fault: it does not count toward max_attempts (1 here).
    assert s.failure is None and (s.maps[0].failures, s.maps[0].lost) == (0, 1)
    failed = events(s, TaskFailed)[0]
    assert (failed.worker, failed.user_error, failed.error) == (a, False, FULL)
    actions = map_done(s, 2.0, b"B", b, m1, [3])
    assert one(actions, b"B", p.AssignMap).task == 0
    assert msgs(actions, b"A", p.AssignMap) == []
    # With no map pending, A takes a reduce: the exclusion is per task, not per worker.
    assert one(s.tick(2.1), b"A", p.AssignReduce).task == 0


def test_an_excluded_worker_first_in_line_does_not_stop_the_next_idle_worker():
    s = make(n_maps=1, n_reduce=1, speculation=True)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    one(actions, b"B", p.AssignReduce)
    c, actions = join(s, b"C")
    assert msgs(actions, b"C", p.AssignMap) == msgs(actions, b"C", p.AssignReduce) == []  # idle
    actions = storage_failure(s, 1.0, b"A", a, m.attempt)
    assert one(actions, b"C", p.AssignMap).task == 0 and msgs(actions, b"A") == []
    assert msgs(actions, b"B") == []  # no reduce cancelled: an idle worker took the map


def test_a_busy_worker_that_could_take_it_makes_room_as_for_any_pending_map():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    r = one(actions, b"B", p.AssignReduce)
    actions = storage_failure(s, 1.0, b"A", a, m.attempt)
    assert msgs(actions, b"A") == [] and one(actions, b"B", p.Cancel).attempt == r.attempt
    actions = s.receive(1.1, b"B", p.Cancelled(b, r.attempt))
    assert one(actions, b"B", p.AssignMap).task == 0
    assert one(s.tick(1.2), b"A", p.AssignReduce).task == 0


def test_excluded_tasks_are_passed_over_not_lost():
    s = make(n_maps=4, n_reduce=1)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    actions = storage_failure(s, 1.0, b"A", a, m0.attempt)
    m2 = one(actions, b"A", p.AssignMap)  # map 0 passed over, the next one taken
    assert m2.task == 2
    actions = storage_failure(s, 2.0, b"A", a, m2.attempt)
    assert one(actions, b"A", p.AssignMap).task == 3
    assert [t.index for t in s.maps if t.state is TaskState.PENDING] == [0, 2]
    actions = map_done(s, 3.0, b"B", b, m1, [3])
    assert one(actions, b"B", p.AssignMap).task == 0  # lowest first, as always


def test_when_every_live_worker_is_excluded_the_task_runs_anywhere():
    s = make(n_maps=1, n_reduce=1, max_attempts=1, max_lost=3)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    for n in range(1, 4):
        assert s.failure is None
        actions = storage_failure(s, float(n), b"A", a, m.attempt)
        if n < 3:
            m = one(actions, b"A", p.AssignMap)  # A is the only worker: no deadlock
            assert m.task == 0
    assert "map task 0" in s.failure and "failed 3 times in a row for reasons not in the app's code" in s.failure
    assert FULL in s.failure and "worker 1 (A" in s.failure


def test_excluded_worker_gets_the_task_when_the_others_leave_or_drain():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    one(actions, b"B", p.AssignMap)
    s.receive(0.5, b"B", p.Draining(b))  # B will take nothing new
    actions = storage_failure(s, 1.0, b"A", a, m0.attempt)
    assert one(actions, b"A", p.AssignMap).task == 0

    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    one(actions, b"B", p.AssignMap)
    assert msgs(storage_failure(s, 1.0, b"A", a, m0.attempt), b"A") == []
    actions = s.receive(2.0, b"B", p.Goodbye(b))  # the only other worker leaves
    assert one(actions, b"A", p.AssignMap).task == 0


def test_no_backup_on_a_worker_excluded_from_the_task():
    s = make(n_maps=3, n_reduce=1, speculation=True)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    m2 = one(storage_failure(s, 0.0, b"A", a, m0.attempt), b"A", p.AssignMap)
    c, actions = join(s, b"C")
    slow = one(actions, b"C", p.AssignMap)
    assert slow.task == 0
    one(map_done(s, 1.0, b"B", b, m1, [3]), b"B", p.AssignReduce)
    map_done(s, 1.0, b"A", a, m2, [3])
    d, _ = join(s, b"D", now=1.0)
    # Map 0 on C is a straggler at t=10. A, first in line, is excluded from it: D backs it up.
    actions = s.tick(10.0)
    backups = msgs(actions, kind=p.AssignMap)
    assert len(backups) == 1 and msgs(actions, b"D", p.AssignMap) == backups and backups[0].task == 0
    assert events(s, BackupLaunched)[0].worker == d


def test_an_output_folder_that_cannot_take_output_fails_the_job_at_once():
    s = make(n_maps=1, n_reduce=2)
    a, actions = join(s, b"A")
    actions = map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [3, 3])
    r = one(actions, b"A", p.AssignReduce)
    error = f"output folder /out is not writable: read-only file system (output of reduce task 0, attempt {r.attempt})"
    actions = s.receive(2.0, b"A", p.TaskFailed(a, r.attempt, error, "output-folder", user_error=False))
    assert s.finished and not s.succeeded
    assert s.failure == f"{error}, on worker {a} (A, pid 4242 on box)"
    assert msgs(actions, kind=p.AssignReduce) == []  # nothing more is started
