"""The coordinator crash test's pure parts: kill planning, kill triggers, journal states,
re-run accounting, output checks and the table, on fabricated journals and event logs."""

from __future__ import annotations

import json
import os
import random

import pytest

from mapreduce import journal
from mapreduce.errors import UsageError
from mapreduce.tools import coordcrash as cc
from mapreduce.wire import events as ev
from mapreduce.wire.events import TaskKind

MAP, REDUCE = TaskKind.MAP, TaskKind.REDUCE


def assigned(task: int, phase: TaskKind = MAP, step: int = 1, worker: int = 1, t: float = 1.0) -> ev.TaskAssigned:
    return ev.TaskAssigned(t=t, attempt=task + 100, task=task, phase=phase, worker=worker, step=step)


def finished(task: int, phase: TaskKind = MAP, step: int = 1) -> ev.TaskFinished:
    return ev.TaskFinished(
        t=2.0,
        attempt=task + 100,
        task=task,
        phase=phase,
        worker=1,
        step=step,
        records=1,
        seconds=0.1,
        backup=False,
        fetched=0,
        input_bytes=0,
        output_bytes=0,
    )


def joined(pid: int, worker: int = 1) -> ev.WorkerJoined:
    return ev.WorkerJoined(t=0.5, worker=worker, name=f"w{worker}", pid=pid, host="box")


def done(stage: int, task: int, pid: int = 11) -> dict:
    return journal.record("done", stage=stage, task=task, attempt=1, worker={"name": "w", "pid": pid, "host": "box"})


HEADER = {"format": journal.FORMAT, "version": journal.VERSION, "kind": "job", "identity": "x"}


# ---- kill points and plans ------------------------------------------------------------------


def test_kill_points_parse_in_order_and_unknown_ones_are_refused():
    assert cc.parse_kill_points("mid-map, zombie,after-commit:2") == ("mid-map", "zombie", "after-commit:2")
    assert cc.parse_kill_points("after-map:3,before-success") == ("after-map:3", "before-success")
    assert cc.parse_kill_points("queued") == ("queued",)
    for bad in ("", "mid-sort", "after-commit:0", "after-commit:x", "before-success:1"):
        with pytest.raises(UsageError):
            cc.parse_kill_points(bad)


def test_the_cli_default_rotation_is_the_modules():
    from mapreduce.cli import crashtest

    option = next(p for p in crashtest.params if p.name == "kill_points")
    assert cc.parse_kill_points(option.default) == cc.KILL_POINTS


def test_hooks_are_the_points_the_coordinator_reaches_itself():
    assert [cc.is_hook(p) for p in cc.KILL_POINTS] == [False, False, True, True, False, False]
    assert cc.is_hook("after-map:4")


def test_rounds_rotate_through_the_kill_points_and_a_seed_gives_the_same_plans():
    points = cc.KILL_POINTS
    plans = [cc.plan_round(n, points, random.Random(f"7:{n}")) for n in range(1, 2 * len(points) + 1)]
    assert [p.point for p in plans] == [*points, *points]
    assert plans == [cc.plan_round(n, points, random.Random(f"7:{n}")) for n in range(1, 2 * len(points) + 1)]
    for plan in plans:
        assert plan.kills == (0 if plan.point == cc.ZOMBIE else plan.kills)
        assert plan.point == cc.ZOMBIE or 1 <= plan.kills <= 2
        assert 0 <= plan.draw < 1 and cc.SECOND_KILL_TASKS[0] <= plan.second_tasks <= cc.SECOND_KILL_TASKS[1]
    assert {p.kills for p in plans if p.point != cc.ZOMBIE} == {1, 2}  # both happen with this seed
    assert [p.hook for p in plans[:5]] == [None, None, "after-commit:1", "before-success", None]


def test_max_kills_one_plans_one_kill_per_round():
    assert {cc.plan_round(n, ("mid-map",), random.Random(n), max_kills=1).kills for n in range(20)} == {1}


def test_mid_map_lands_between_the_first_and_the_last_map():
    assert [cc.mid_map_target(d, 10) for d in (0.0, 0.5, 0.999)] == [1, 5, 9]
    assert cc.mid_map_target(0.9, 1) == 1 and cc.mid_map_target(0.9, 2) == 1
    assert {cc.mid_map_target(random.random(), 7) for _ in range(500)} == set(range(1, 7))


def test_mid_reduce_lands_before_the_last_commit():
    assert [cc.mid_reduce_target(d, 4) for d in (0.0, 0.5, 0.999)] == [0, 1, 2]
    assert cc.mid_reduce_target(0.99, 1) == 0 and cc.mid_reduce_target(0.99, 2) == 0


# ---- triggers -----------------------------------------------------------------------------


def test_mid_map_trigger_counts_distinct_finished_maps_once_it_knows_their_number():
    trigger = cc.Trigger(cc.MID_MAP, draw=0.5)  # 5 maps: after 1 + int(0.5 * 4) = 3
    assert not trigger.update([finished(0), finished(1), finished(2)])  # no job_started yet: no target
    trigger = cc.Trigger(cc.MID_MAP, draw=0.5)
    assert not trigger.update([ev.JobStarted(t=0, job="wc", maps=5, reduces=2, input_bytes=9)])
    assert not trigger.update([finished(0), finished(0), finished(1)])  # a backup of map 0 counts once
    assert not trigger.update([finished(0, REDUCE)])
    assert trigger.update([finished(3)])
    assert trigger.describe() == "after 3 finished maps"


def test_mid_reduce_trigger_waits_for_the_first_reduce_then_its_commits():
    trigger = cc.Trigger(cc.MID_REDUCE, draw=0.7)  # 4 reduces: after int(0.7 * 3) = 2 commits
    assert not trigger.update([ev.JobStarted(t=0, job="wc", maps=5, reduces=4, input_bytes=9), finished(0)])
    assert not trigger.update([assigned(0, REDUCE), ev.OutputCommitted(t=3, partition=0)])
    assert trigger.update([ev.OutputCommitted(t=3, partition=2)])
    first = cc.Trigger(cc.MID_REDUCE, draw=0.0)
    assert not first.update([ev.JobStarted(t=0, job="wc", maps=5, reduces=4, input_bytes=9), assigned(1)])
    assert first.update([assigned(2, REDUCE)])  # at once: the first reduce is assigned


def test_a_second_kill_comes_after_so_many_finished_tasks_of_any_kind():
    trigger = cc.Trigger("tasks", tasks=2)
    assert not trigger.update([assigned(0), finished(0)])
    assert trigger.update([finished(1, REDUCE)])
    assert trigger.describe() == "after 2 finished tasks"


# ---- the journal --------------------------------------------------------------------------


def test_journal_state_reads_done_outputs_their_workers_commits_epochs_and_the_end():
    records = [
        HEADER,
        journal.record("job", job_id="j", output_token="t"),
        journal.record("epoch", epoch=1),
        done(0, 0, pid=11),
        done(0, 1, pid=12),
        journal.record("committed", partition=2, counters=[]),
        journal.record("epoch", epoch=2),
        done(0, 1, pid=13),  # done again: the later worker holds it
        journal.record("done", stage=1, task=0, attempt=9, worker="?"),  # a worker not read: pid unknown
    ]
    state = cc.JournalState.of(records)
    assert state.done == {(0, 0): 11, (0, 1): 13, (1, 0): None}
    assert state.committed == {2} and state.epochs == (1, 2) and state.finished is None
    assert cc.JournalState.of([*records, journal.record("finished", ok=True, message="")]).finished is True


def test_journal_state_reads_a_real_journal_file_and_an_absent_one(tmp_path):
    assert cc.JournalState.read(tmp_path) == cc.JournalState()
    j = journal.Journal.open(tmp_path, "job", "x")
    j.append(journal.record("epoch", epoch=1), done(0, 4, pid=77), journal.record("committed", partition=0))
    j.close()
    with open(tmp_path / journal.JOURNAL, "ab") as f:
        f.write(b"0000 torn")  # a write the kill cut short
    state = cc.JournalState.read(tmp_path)
    assert state.done == {(0, 4): 77} and state.committed == {0}


# ---- re-run accounting ------------------------------------------------------------------------


def test_reruns_split_into_unfinished_lost_and_needless():
    # At the kill: maps 0-3 journalled done (map 2's worker pid 12 never comes back, map 3's
    # output is announced lost), partition 0 committed; 2 reduces, no pipeline.
    state = cc.JournalState({(0, 0): 11, (0, 1): 11, (0, 2): 12, (0, 3): 11}, frozenset({0}))
    new_run = [
        joined(11),
        joined(14, worker=2),
        assigned(2),  # its worker is gone: lost
        ev.MapRerun(t=1.5, task=3),
        assigned(3),  # lost (map_rerun)
        assigned(3, worker=2),  # a backup of it: one task
        assigned(4),  # never finished: unfinished
        assigned(1),  # done, its worker back, no map_rerun: needless
        assigned(1, REDUCE),  # not committed: unfinished
        assigned(0, REDUCE),  # committed: needless, and a committed partition
    ]
    reruns = cc.count_reruns(state, new_run, last=1)
    assert reruns == cc.Reruns(unfinished=2, lost=2, needless=2, needless_committed=1, reused=1)  # map 0 kept


def test_a_pipelines_earlier_reduces_are_journalled_stages_and_the_last_steps_commit():
    state = cc.JournalState({(0, 0): 11, (1, 0): 11, (1, 1): 11}, frozenset({0}))
    new_run = [joined(11), assigned(1, REDUCE, step=1), assigned(0, REDUCE, step=2), assigned(1, REDUCE, step=2)]
    last = cc.final_stage([new_run])
    assert last == 2
    assert cc.count_reruns(state, new_run, last) == cc.Reruns(
        unfinished=1, lost=0, needless=2, needless_committed=1, reused=2
    )


def test_a_map_only_jobs_maps_commit_partitions():
    state = cc.JournalState({}, frozenset({0, 1}))
    new_run = [assigned(1), assigned(2)]
    assert cc.final_stage([new_run]) == 0
    assert cc.count_reruns(state, new_run, 0) == cc.Reruns(
        unfinished=1, lost=0, needless=1, needless_committed=1, reused=1
    )


def test_the_final_stage_is_seen_in_any_run_and_reruns_add_up():
    runs = [[assigned(0), assigned(0, REDUCE)], [assigned(1)]]
    assert cc.final_stage(runs) == 1 and cc.final_stage([[]]) == 0
    assert cc.Reruns(1, 2, 3, 1, 4) + cc.Reruns(1, 0, 0, 0, 1) == cc.Reruns(2, 2, 3, 1, 5)


def test_a_worker_of_unknown_pid_loses_nothing_without_a_map_rerun():
    state = cc.JournalState({(0, 0): None}, frozenset())
    assert cc.count_reruns(state, [assigned(0)], 1).needless == 1


# ---- outputs ---------------------------------------------------------------------------------


def test_the_output_must_equal_the_oracle_with_success_and_no_temp_file(tmp_path):
    oracle, out = tmp_path / "oracle", tmp_path / "out"
    for folder in (oracle, out):
        folder.mkdir()
        (folder / "part-00000").write_text("a\t1\n")
        (folder / "_SUCCESS").write_text("")
    assert cc.check_output(oracle, out) is None
    (out / ".part-00001.j-a3.tmp").write_text("")
    assert cc.check_output(oracle, out) == "temp files left in the output: .part-00001.j-a3.tmp"
    (out / ".part-00001.j-a3.tmp").unlink()
    (out / "part-00000").write_text("a\t2\n")
    assert "part-00000 differs from the oracle" in cc.check_output(oracle, out)
    (out / "_SUCCESS").unlink()
    assert cc.check_output(oracle, out) == "_SUCCESS is missing"
    assert cc.check_output(oracle, tmp_path / "none").startswith("no output folder")


def test_a_snapshot_sees_files_appear_go_and_change(tmp_path):
    (tmp_path / "part-00000").write_text("a")
    before = cc.folder_snapshot(tmp_path)
    assert cc.snapshot_change(before, cc.folder_snapshot(tmp_path)) is None
    (tmp_path / "x").write_text("")
    assert cc.snapshot_change(before, cc.folder_snapshot(tmp_path)) == "x appeared"
    (tmp_path / "x").unlink()
    stat = (tmp_path / "part-00000").stat()
    os.utime(tmp_path / "part-00000", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert (
        cc.snapshot_change(before, cc.folder_snapshot(tmp_path)) == "part-00000 changed (1 -> 1 bytes, mtime changed)"
    )
    (tmp_path / "part-00000").unlink()
    assert cc.snapshot_change(before, cc.folder_snapshot(tmp_path)) == "part-00000 was removed"


def test_run_events_skips_the_line_a_kill_cut(tmp_path):
    path = tmp_path / "events-1.jsonl"
    record = ev.to_record(assigned(3), 0.0)
    path.write_text(json.dumps(record) + "\n" + json.dumps(record)[:20])
    assert cc.run_events(path) == [assigned(3)]
    assert cc.run_events(tmp_path / "none.jsonl") == []


# ---- the table --------------------------------------------------------------------------------


def result(number: int, point: str, verdict: str = "OK", **kw) -> cc.CoordRound:
    fields = dict(kills=2, pauses=0, seconds=3.5, restarts=(cc.Reruns(3, 1, 0, 0, 5), cc.Reruns(2, 0, 1, 0, 7)))
    fields.update(kw)
    return cc.CoordRound(number, point, problem=None if verdict == "OK" else "it broke", verdict=verdict, **fields)


def test_rows_and_totals_line_up_under_the_header():
    report = cc.CoordCrashReport(
        (result(1, "mid-map"), result(2, "zombie", "ZOMBIE", kills=0, pauses=1, restarts=(cc.Reruns(4, 2, 0, 0, 3),)))
    )
    header, row1, row2, total = (
        cc.format_header(),
        cc.format_row(report.rounds[0]),
        cc.format_row(report.rounds[1]),
        cc.format_totals(report),
    )
    assert header.split() == list(cc.COLUMNS)
    assert row1.split() == ["1", "mid-map", "2", "3.50", "5", "1", "1", "12", "OK"]
    assert row2.split() == ["2", "zombie", "0+1p", "3.50", "4", "2", "0", "3", "ZOMBIE"]
    assert total.split() == ["all", "-", "2+1p", "7.00", "9", "3", "1", "15", "1/2", "OK"]
    for line in (row1, row2, total):  # the result column starts where the header's does
        assert line.index(line.split()[-1 if line is not total else -2]) == header.index("result")
    assert not report.ok and report.first_problem() == "round 2 (zombie): it broke"
    assert cc.format_needless(report) == (
        "after 3 restart(s): 9 unfinished task(s) run again, 3 whose output was lost, 1 needless "
        "(0 of them committed partitions, which must be 0); 15 journalled task(s) kept"
    )


def test_options_are_checked_before_any_work():
    for bad in (
        cc.CoordCrashOptions(workers=0),
        cc.CoordCrashOptions(rounds=0),
        cc.CoordCrashOptions(max_kills=0),
        cc.CoordCrashOptions(worker_timeout=0.5, heartbeat_interval=0.5),
        cc.CoordCrashOptions(kill_points=("nowhere",)),
    ):
        with pytest.raises(UsageError):
            bad.check()
    cc.CoordCrashOptions().check()
