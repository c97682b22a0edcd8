"""`mapreduce crashtest --kill-coordinator`: a coordinator with a state folder and workers
started apart; the coordinator SIGKILLed at each kill point and started again (or paused and
superseded), every round's output equal to `mapreduce seq`, no process of a round left."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from helpers import mapreduce_command
from mapreduce.tools import coordcrash as cc


def _coordinator_has_state_dir() -> bool:
    from mapreduce.cli import coordinator

    return any(p.name == "state_dir" for p in coordinator.params)


needs_state_dir = pytest.mark.skipif(not _coordinator_has_state_dir(), reason="needs coordinator --state-dir")

SMALL = ["--corpus-size", "400k", "--split-size", "40k", "--reduce", "3", "--workers", "2"]


def processes_mentioning(text: str) -> list[str]:
    """The command lines of live processes that name ``text`` (a round's folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline}")
    return found


def table(stdout: str) -> dict[str, list[str]]:
    """The rounds' table by round label ("1", "2", ..., "all")."""
    lines = stdout.splitlines()
    assert lines[0].split() == list(cc.COLUMNS), stdout
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        if cells and (cells[0].isdigit() or cells[0] == "all"):
            rows[cells[0]] = cells
    return rows


def crashtest(tmp_path: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    scratch = tmp_path / "tmp"
    scratch.mkdir(exist_ok=True)
    result = subprocess.run(
        mapreduce_command("crashtest", "--kill-coordinator", *args),
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "TMPDIR": str(scratch)},
    )
    assert processes_mentioning(str(scratch)) == []  # every coordinator and worker of every round is gone
    return result


def assert_every_round_ok(result: subprocess.CompletedProcess, rounds: int) -> dict[str, list[str]]:
    assert result.returncode == 0, result.stdout + result.stderr
    rows = table(result.stdout)
    assert [rows[str(n)][-1] for n in range(1, rounds + 1)] == ["OK"] * rounds, result.stdout
    assert rows["all"][-2:] == [f"{rounds}/{rounds}", "OK"]
    assert "(0 of them committed partitions, which must be 0)" in result.stdout
    return rows


@needs_state_dir
def test_killed_mid_map_and_mid_reduce_the_restarted_coordinator_finishes_the_job_exactly(tmp_path):
    result = crashtest(tmp_path, "--kill-points", "mid-map,mid-reduce", "--rounds", "2", "--seed", "1", *SMALL)
    rows = assert_every_round_ok(result, 2)
    assert [rows[n][1] for n in ("1", "2")] == ["mid-map", "mid-reduce"]
    assert all(int(rows[n][2]) >= 1 for n in ("1", "2"))  # each round killed its coordinator at least once
    assert int(rows["1"][7]) >= 1  # maps finished before the kill were kept, not run again
    assert list((tmp_path / "tmp").iterdir()) == []  # corpus, oracle, outputs, state, scratch: all removed


@needs_state_dir
def test_the_coordinator_killing_itself_after_a_commit_and_before_success_resumes_exactly(tmp_path):
    result = crashtest(tmp_path, "--kill-points", "after-commit:1,before-success", "--seed", "2", *SMALL)
    rows = assert_every_round_ok(result, 2)  # --rounds: one per kill point
    assert [rows[n][1] for n in ("1", "2")] == ["after-commit:1", "before-success"]
    assert int(rows["2"][4]) == 0  # before _SUCCESS every partition was committed: nothing unfinished


@needs_state_dir
def test_a_paused_coordinator_superseded_by_a_new_one_changes_nothing_when_it_wakes(tmp_path):
    events = tmp_path / "kept"
    result = crashtest(tmp_path, "--kill-points", "zombie", "--seed", "3", "--events-dir", str(events), *SMALL)
    rows = assert_every_round_ok(result, 1)
    assert rows["1"][1:3] == ["zombie", "0+1p"]
    assert int(rows["1"][5]) + int(rows["1"][7]) >= 1  # maps journalled before the pause: kept or run again
    said = (events / "round-01" / "coordinator-1.log").read_text()
    successor = (events / "round-01" / "coordinator-2.log").read_text()
    # Woken, it saw the newer epoch; or, paused in the middle of a commit or journal write (so
    # holding the state folder's lock), its successor fenced it off by killing it.
    assert "supersede" in said.lower() or "killing it, so that it can do nothing more" in successor, said
    assert (events / "round-01" / "events-1.faults.jsonl").exists()  # the pause and the resume, for `report`


def test_kill_coordinator_takes_a_python_app_only():
    result = subprocess.run(
        mapreduce_command("crashtest", "--kill-coordinator", "--mapper", "cat", "--input", "x"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "takes no --mapper" in result.stderr
    result = subprocess.run(
        mapreduce_command("crashtest", "--kill-coordinator", "--kill-points", "mid-sort"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "unknown kill point 'mid-sort'" in result.stderr


def test_the_harness_on_a_coordinator_without_journal_restarts_the_job_and_leaves_nothing(tmp_path, monkeypatch):
    # A check of the harness itself, true with or without coordinator recovery: without
    # --state-dir each restart starts over (every task unfinished, nothing kept), the output
    # is still exact, and every process of the rounds is gone at the end.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    options = cc.CoordCrashOptions(
        kill_points=(cc.MID_MAP, cc.MID_REDUCE),
        rounds=2,
        workers=2,
        seed=1,
        corpus_size=300_000,
        split_size=40_000,
        n_reduce=3,
        journal=False,
    )
    report = cc.CoordinatorCrashTest(options).run()
    assert processes_mentioning(str(scratch)) == []
    assert report.ok, report.first_problem()
    assert [r.point for r in report.rounds] == [cc.MID_MAP, cc.MID_REDUCE]
    assert all(r.kills >= 1 and len(r.restarts) == r.kills for r in report.rounds)
    total = report.reruns
    assert total.unfinished > 0 and total.lost == total.needless == total.reused == 0
    assert list(scratch.iterdir()) == []


@needs_state_dir
def test_a_killed_standing_cluster_runs_each_queued_job_once_and_the_interrupted_one_exactly(tmp_path):
    events = tmp_path / "kept"
    result = crashtest(
        tmp_path, "--kill-points", "queued", "--rounds", "2", "--seed", "4", "--events-dir", str(events), *SMALL
    )
    rows = assert_every_round_ok(result, 2)
    assert all(rows[n][1] == "queued" and int(rows[n][2]) >= 1 for n in ("1", "2"))  # the service was killed
    assert int(rows["all"][7]) >= 1  # maps the interrupted job had journalled were kept, not run again
    for n in ("01", "02"):
        kept = events / f"round-{n}"
        assert (kept / "job-00001" / "events-2.jsonl").exists()  # killed mid-map, it ran again in its folder
        assert sorted(p.name for p in kept.glob("job-*")) == ["job-00001", "job-00002", "job-00003"]
        assert (kept / "service-2.log").exists()
    assert list((tmp_path / "tmp").iterdir()) == []  # state, outputs, scratch: all removed
