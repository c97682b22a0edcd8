"""A job's state folder: replaying its journal, and a scheduler taking up the job from it."""

from __future__ import annotations

import dataclasses

import pytest

from helpers import commits, hello, join, make, map_done, msgs, one, reduce_done, welcome
from mapreduce import journal
from mapreduce.coordinator.recovery import FinishedOutput, JobState
from mapreduce.coordinator.scheduler import EPOCH_IDS, Remember, TaskState
from mapreduce.wire import messages as p
from mapreduce.wire.events import MapOutputMoved, OutputRecovered

ID = "wordcount -> /out [abc]"


def output_of(stage: int, task: int, ident: bytes = b"A", attempt: int = 1) -> FinishedOutput:
    worker = hello(ident, data_address="tcp://10.0.0.1:9000")
    return FinishedOutput(stage, task, attempt, worker, "", f"/scratch/m{attempt}", [5, 0], [0, 5], [["g", "c", 2]])


def test_a_new_state_folder_starts_at_epoch_one_with_nothing_done(tmp_path):
    state = JobState(tmp_path / "st", ID)
    r = state.recovered
    assert (r.epoch, r.outputs, r.committed, r.finished, r.resumed) == (1, {}, {}, None, False)
    state.close()


def test_the_journal_is_replayed_under_the_next_epoch_and_compacted(tmp_path):
    state = JobState(tmp_path, ID)
    job_id, token = state.recovered.job_id, state.recovered.output_token
    state.remember(output_of(0, 0).to_record(), output_of(0, 1, attempt=2).to_record())
    state.remember(output_of(0, 1, attempt=3).to_record())  # map 1 ran again: the last word counts
    state.remember(journal.record("committed", partition=1, counters=[["g", "r", 7]]))
    state.close()
    again = JobState(tmp_path, ID)
    r = again.recovered
    assert (r.job_id, r.output_token, r.epoch, r.resumed) == (job_id, token, 2, True)
    assert r.outputs == {(0, 0): output_of(0, 0), (0, 1): output_of(0, 1, attempt=3)}
    assert r.committed == {1: [["g", "r", 7]]}
    records, _ = journal.read_records(tmp_path / journal.JOURNAL)
    assert [x.get("r") for x in records[1:]] == ["job", "epoch", "done", "done", "committed"]  # one per fact
    again.remember(journal.record("finished", ok=True, message="done"))
    again.close()
    assert JobState(tmp_path, ID).recovered.finished == "done"


def test_the_folder_of_another_job_is_refused_and_left_alone(tmp_path):
    JobState(tmp_path, ID).close()
    before = (tmp_path / journal.JOURNAL).read_bytes()
    with pytest.raises(journal.JournalError, match="holds the state of another job"):
        JobState(tmp_path, "wordcount -> /elsewhere [def]")
    assert (tmp_path / journal.JOURNAL).read_bytes() == before


def test_an_unreadable_record_of_a_finished_task_is_refused(tmp_path):
    state = JobState(tmp_path, ID)
    bad = output_of(0, 0).to_record()
    bad["worker"]["pid"] = "not a pid"
    state.remember(bad)
    state.close()
    with pytest.raises(journal.JournalError, match="finished task does not read"):
        JobState(tmp_path, ID)


def test_an_older_coordinator_cannot_write_once_a_newer_one_took_over(tmp_path):
    old = JobState(tmp_path, ID)
    new = JobState(tmp_path, ID)
    with pytest.raises(journal.Superseded):
        old.remember(journal.record("committed", partition=0, counters=[]))
    acted = []
    with pytest.raises(journal.Superseded):
        old.act(lambda: acted.append("commit"))
    assert acted == []
    new.close()
    old.close()
    assert JobState(tmp_path, ID).recovered.committed == {}


# ---- the scheduler -----------------------------------------------------------------


def recovered(tmp_path, *records):
    """What a second coordinator finds after a first one journalled ``records`` and died."""
    first = JobState(tmp_path, ID)
    if records:
        first.remember(*records)
    first.close()
    second = JobState(tmp_path, ID)
    second.close()
    return second.recovered


def test_a_finished_map_is_journalled_before_reducers_hear_of_it():
    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m0, [5])
    remember = [x for x in actions if isinstance(x, Remember)]
    assert len(remember) == 1 and actions.index(remember[0]) == 0
    kept = remember[0].output
    assert (kept.stage, kept.task, kept.attempt, kept.lengths, kept.worker) == (0, 0, m0.attempt, [5], hello(b"A"))


def test_restored_maps_wait_for_their_worker_and_are_not_run_again(tmp_path):
    r = recovered(tmp_path, output_of(0, 0).to_record(), output_of(0, 2, attempt=4).to_record())
    s = make(n_maps=3, n_reduce=2)
    s.restore(r, 0.0)
    assert [t.state for t in s.maps] == [TaskState.DONE, TaskState.PENDING, TaskState.DONE]
    assert s.maps[0].result.orphaned
    assert s.tally.counters.get(("g", "c")) == 4  # the restored maps' counters count
    # A worker of another folder joins: it gets the one unfinished map, with ids of this epoch.
    b, actions = join(s, b"B", scratch="/scratch/b")
    assert r.epoch == 2 and b == EPOCH_IDS + 1
    assert [m.task for m in msgs(actions, b"B", p.AssignMap)] == [1]
    assert msgs(actions, b"B", p.AssignMap)[0].attempt > (r.epoch - 1) * EPOCH_IDS
    # The worker holding the journalled outputs comes back: it serves them, nothing reruns.
    a, actions = join(s, b"A")
    moved = [e for e in s.events if isinstance(e, MapOutputMoved)]
    assert sorted(e.task for e in moved) == [0, 2] and not s.maps[0].result.orphaned
    assert s.maps[0].result.worker.id == a


def test_committed_partitions_are_done_and_a_fully_committed_job_is_over(tmp_path):
    c = [journal.record("committed", partition=n, counters=[["g", "r", n]]) for n in (0, 1)]
    s = make(n_maps=2, n_reduce=2)
    s.restore(recovered(tmp_path, *c), 0.0)
    assert s.succeeded and s.finished
    assert s.tally.counters.get(("g", "r")) == 1  # their counters count


def test_only_unfinished_reduces_run_after_a_restart(tmp_path):
    r = recovered(
        tmp_path,
        output_of(0, 0).to_record(),
        output_of(0, 1, attempt=2).to_record(),
        journal.record("committed", partition=0, counters=[]),
    )
    s = make(n_maps=2, n_reduce=2)
    s.restore(r, 0.0)
    a, actions = join(s, b"A")
    (reduce,) = msgs(actions, b"A", p.AssignReduce)
    assert reduce.task == 1 and not msgs(actions, b"A", p.AssignMap)
    assert commits(reduce_done(s, 1.0, b"A", a, reduce))[-1][0] == 1 and s.succeeded


def test_a_journalled_output_of_another_shape_runs_again(tmp_path):
    wrong = dataclasses.replace(output_of(0, 0), lengths=[5, 0, 1], offsets=[0, 5, 5])  # 3 partitions, not 2
    s = make(n_maps=1, n_reduce=2)
    s.restore(recovered(tmp_path, wrong.to_record()), 0.0)
    assert s.maps[0].state is TaskState.PENDING


def test_a_job_is_named_by_what_places_its_data_so_a_changed_command_is_another_job():
    from mapreduce import runner
    from mapreduce.streaming import streaming_app

    options = runner.JobOptions()
    counted, plain = streaming_app("cat", "uniq -c"), streaming_app("cat", "uniq")
    assert runner._what_places_data(counted, options) == runner._what_places_data(
        streaming_app("cat", "uniq -c"), options
    )
    assert runner._what_places_data(counted, options) != runner._what_places_data(plain, options)
    gzip = runner.JobOptions(compress=runner.output.Compression.GZIP)
    assert runner._what_places_data(counted, options) != runner._what_places_data(counted, gzip)


def held(task: int, attempt: int = 5, path: str = "/scratch/a/m5", lengths=(5, 0), stage: int = 0) -> p.HeldOutput:
    return p.HeldOutput(stage, task, attempt, path, list(lengths), 0, 3, [p.CounterValue("g", "c", 1)])


def test_outputs_a_worker_held_through_the_restart_are_checked_and_taken_instead_of_rerun(tmp_path):
    s = make(n_maps=4, n_reduce=2)
    s.restore(recovered(tmp_path), 0.0)
    bad = [
        held(9),  # no such map
        held(1, attempt=EPOCH_IDS + 5),  # an attempt of this epoch: not one it can hold from before
        held(1, path="/etc/passwd"),  # not in its scratch folder
        held(1, path="/scratch/a/../b/m5"),
        held(1, lengths=(5,)),  # not this job's partitions
        held(0, stage=1),  # the last stage's output is committed, never held
    ]
    again = dataclasses.replace(hello(b"A"), job_id=s.job_id, held=[*bad, held(2)])  # its scratch: /scratch/a
    actions = s.register(1.0, b"A", again, welcome)
    a = one(actions, b"A", p.Welcome).worker
    assert [t.state for t in s.maps].count(TaskState.DONE) == 1 and s.maps[2].state is TaskState.DONE
    remembered = [x.output for x in actions if isinstance(x, Remember)]
    assert [(o.stage, o.task, o.attempt) for o in remembered] == [(0, 2, 5)]
    first_assign = next(i for i, x in enumerate(actions) if msgs([x], b"A", p.AssignMap))
    assert actions.index(next(x for x in actions if isinstance(x, Remember))) < first_assign  # journalled first
    assert s.workers[a].info.held == []  # what it held is not kept with who it is
    assert [e.task for e in s.events if isinstance(e, OutputRecovered)] == [2]
    assert s.tally.counters.get(("g", "c")) == 1
    assert s.maps[2].result.worker.id == a and s.maps[2].result.path == "/scratch/a/m5"


def test_a_held_output_already_journalled_or_of_another_job_is_not_taken_twice(tmp_path):
    journalled = dataclasses.replace(output_of(0, 0, attempt=4), path="/scratch/a/m4", lengths=[5], offsets=[0])
    s = make(n_maps=2, n_reduce=1, job_id="job1")
    s.restore(recovered(tmp_path, journalled.to_record()), 0.0)
    again = dataclasses.replace(hello(b"A"), job_id="job1", held=[held(0, 4, "/scratch/a/m4", (5,))])
    actions = s.register(1.0, b"A", again, welcome)
    assert not [x for x in actions if isinstance(x, Remember)] and not s.maps[0].result.orphaned  # adopted
    assert [m.task for m in msgs(actions, b"A", p.AssignMap)] == [1]
    other_job = dataclasses.replace(
        hello(b"B", scratch="/scratch/b"), job_id="job0", held=[held(1, 3, "/scratch/b/m3", (5,))]
    )
    actions = s.register(2.0, b"B", other_job, welcome)
    assert s.maps[1].result is None and not [x for x in actions if isinstance(x, Remember)]
