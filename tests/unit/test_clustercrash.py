"""The pure parts of the standing cluster's crash rounds (``crashtest --kill-coordinator
--kill-points queued``): which run a job's file belongs to, and how often each job may run."""

from __future__ import annotations

from mapreduce.tools import clustercrash as qc


def test_run_numbers_come_from_the_services_file_names():
    assert qc.run_number("events.jsonl") == 1
    assert qc.run_number("events-2.jsonl") == 2
    assert qc.run_number("coordinator-3.log", "coordinator") == 3
    assert qc.run_number("coordinator.log", "coordinator") == 1
    for name in ("events-0.jsonl", "events-x.jsonl", "events.jsonl.tmp", "coordinator.log", "app.py"):
        assert qc.run_number(name) is None, name


def test_a_job_folders_runs_are_its_coordinator_logs_and_a_run_may_lack_an_event_log(tmp_path):
    assert qc.runs_started(tmp_path / "absent") == 0 and qc.event_logs(tmp_path / "absent") == {}
    for name in ("coordinator.log", "coordinator-2.log", "coordinator-3.log", "events.jsonl", "events-3.jsonl"):
        (tmp_path / name).write_text("")
    assert qc.runs_started(tmp_path) == 3  # run 2 was killed before it opened its event log
    assert qc.event_logs(tmp_path) == {1: tmp_path / "events.jsonl", 3: tmp_path / "events-3.jsonl"}


def test_each_job_runs_once_but_the_one_a_kill_interrupted():
    jobs = ["job-00001", "job-00002", "job-00003"]
    killed_in_first = [{"job-00001": 1}]
    assert qc.check_runs(jobs, killed_in_first, {"job-00001": 2, "job-00002": 1, "job-00003": 1}) is None
    assert qc.check_runs(jobs, killed_in_first, {"job-00001": 1, "job-00002": 1, "job-00003": 1}) is None
    problem = qc.check_runs(jobs, killed_in_first, {"job-00001": 2, "job-00002": 2, "job-00003": 1})
    assert problem == "job-00002 ran 2 times, at most 1 allowed (interrupted by 0 kill(s))"
    assert qc.check_runs(jobs, killed_in_first, {"job-00001": 2, "job-00002": 1}) == "job-00003 never ran"


def test_only_the_newest_started_job_can_have_been_interrupted_by_a_kill():
    jobs = ["job-00001", "job-00002"]
    twice = [{"job-00001": 1}, {"job-00001": 2, "job-00002": 1}]  # the second kill: job 2 running
    assert qc.check_runs(jobs, twice, {"job-00001": 2, "job-00002": 2}) is None
    assert qc.check_runs(jobs, twice, {"job-00001": 3, "job-00002": 1}).startswith("job-00001 ran 3 times")
    assert qc.check_runs(jobs, [{}], {"job-00001": 2, "job-00002": 1}).startswith("job-00001 ran 2 times")


def test_new_runs_hear_only_what_is_written_after_they_start_in_any_jobs_log(tmp_path):
    first = tmp_path / "job-00001"
    first.mkdir()
    started = '{"t": 1.0, "wall": 1.0, "event": "job_started", "job": "j", "maps": 2, "reduces": 1, "input_bytes": 9}\n'
    (first / "events.jsonl").write_text(started)
    news = qc.NewRuns(tmp_path)
    assert news.read() == []
    second = tmp_path / "job-00002"
    second.mkdir()
    (second / "events.jsonl").write_text(started)
    with open(first / "events.jsonl", "a") as log:
        log.write(started)
    assert [e.maps for e in news.read()] == [2, 2]
    assert news.read() == []
