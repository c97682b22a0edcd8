"""Reports from event logs: reading hand-written logs through the schema, and pictures of a real job
with a kill and a pause."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from helpers import SLEEPY, of, running, words_file
from mapreduce.tools import report
from mapreduce.tools.faults import Fault, FaultKind, faults_beside, write_faults
from mapreduce.tools.report import MarkerKind, Outcome
from mapreduce.wire import events as wire

try:
    import matplotlib
except ImportError:
    matplotlib = None
draws = pytest.mark.skipif(matplotlib is None, reason="matplotlib is not installed (pip install .[report])")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk, after checking the signature."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def ev(t: float, event: str, **fields) -> dict:
    return {"t": t, "wall": 1_700_000_000 + t, "event": event, **fields}


def a(t, event, attempt, task, phase, worker, **fields) -> dict:
    return ev(t, event, attempt=attempt, task=task, phase=phase, worker=worker, **fields)


# A small job, by hand: 2 workers then a third; worker 1 is paused, declared dead and fenced,
# its map is lost and re-run; a straggling reduce gets a backup that wins; a map fails once.
LOG = [
    ev(100.0, "worker_joined", worker=1, name="w-a", pid=11, host="h"),
    ev(100.1, "worker_joined", worker=2, name="w-b", pid=12, host="h"),
    a(100.2, "task_assigned", 1, 0, "map", 1),
    a(100.2, "task_assigned", 2, 1, "map", 2),
    a(
        101.2,
        "task_finished",
        1,
        0,
        "map",
        1,
        records=10,
        seconds=1.0,
        backup=False,
        fetched=100,
        input_bytes=1000,
        output_bytes=50,
    ),
    a(101.2, "task_assigned", 3, 2, "map", 1),
    a(101.3, "task_failed", 2, 1, "map", 2, error="boom", user_error=True),
    a(101.3, "task_assigned", 4, 1, "map", 2),
    ev(101.8, "worker_suspect", worker=1, silent=1.3),
    ev(102.5, "worker_dead", worker=1, why="silent for 2.0 s", silent=2.0, attempt=3),
    a(102.5, "task_lost", 3, 2, "map", 1),
    ev(102.5, "map_output_orphaned", task=0),
    ev(102.6, "worker_joined", worker=3, name="w-c", pid=13, host="h"),
    a(102.6, "task_assigned", 5, 2, "map", 3),
    a(
        102.9,
        "task_finished",
        4,
        1,
        "map",
        2,
        records=10,
        seconds=1.6,
        backup=False,
        fetched=100,
        input_bytes=1000,
        output_bytes=50,
    ),
    ev(103.0, "message_fenced", worker=1, message="Heartbeat", attempt=None, why="worker 1 is dead"),
    ev(103.1, "worker_joined", worker=4, name="w-a", pid=11, host="h"),
    ev(103.2, "map_rerun", task=0),
    a(103.2, "task_assigned", 6, 0, "map", 4),
    a(
        103.6,
        "task_finished",
        5,
        2,
        "map",
        3,
        records=10,
        seconds=1.0,
        backup=False,
        fetched=50,
        input_bytes=500,
        output_bytes=50,
    ),
    a(103.6, "task_assigned", 7, 0, "reduce", 3),
    a(
        103.9,
        "task_finished",
        6,
        0,
        "map",
        4,
        records=10,
        seconds=0.7,
        backup=False,
        fetched=50,
        input_bytes=1000,
        output_bytes=50,
    ),
    a(103.9, "task_assigned", 8, 1, "reduce", 2),
    a(
        104.2,
        "task_finished",
        8,
        1,
        "reduce",
        2,
        records=5,
        seconds=0.3,
        backup=False,
        fetched=10,
        input_bytes=0,
        output_bytes=40,
    ),
    ev(104.2, "output_committed", partition=1),
    a(106.5, "backup_launched", 9, 0, "reduce", 2),
    a(
        106.9,
        "task_finished",
        9,
        0,
        "reduce",
        2,
        records=5,
        seconds=0.4,
        backup=True,
        fetched=5,
        input_bytes=0,
        output_bytes=40,
    ),
    a(106.9, "task_cancelled", 7, 0, "reduce", 3, why="attempt 9 finished first", superseded_by=9),
    ev(106.9, "output_committed", partition=0, pulled=5),
    a(107.0, "result_discarded", 7, 0, "reduce", 3, was="superseded"),
    ev(107.1, "job_finished", ok=True, message="", input_fetched=300, shuffle_fetched=15, output_pulled=5, rejected=0),
    ev(107.2, "worker_left", worker=2),
]
EVENTS = [wire.parse(record) for record in LOG]


def faults(*faults: tuple[float, str, int]) -> list[Fault]:
    return [Fault(FaultKind(kind), pid, t) for t, kind, pid in faults]


def test_attempts_and_their_outcomes():
    log = report.run_log(EVENTS)
    by_id = {x.id: x for x in log.attempts}
    assert [x.id for x in log.attempts] == list(range(1, 10))
    done = Outcome.SUCCEEDED
    assert {i: x.outcome for i, x in by_id.items()} == {
        1: done,
        2: Outcome.FAILED,
        3: Outcome.LOST,
        4: done,
        5: done,
        6: done,
        7: Outcome.SUPERSEDED,
        8: done,
        9: done,
    }
    assert by_id[7].end == 106.9  # the later result_discarded does not move its end
    assert by_id[9].backup and not by_id[7].backup
    assert by_id[1].start == 100.2 and by_id[1].seconds == pytest.approx(1.0)
    assert by_id[1].input_bytes == 1000 and by_id[8].output_bytes == 40 and by_id[2].why == "boom"


def test_superseded_is_read_from_the_field_never_from_the_message():
    def cancelled(**fields) -> Outcome:
        cancel = a(106.9, "task_cancelled", 7, 0, "reduce", 3, **fields)
        events = [wire.parse(record) for record in LOG[:26]] + [wire.parse(cancel)]
        return {x.id: x.outcome for x in report.run_log(events).attempts}[7]

    assert cancelled(why="attempt 9 finished first") is Outcome.CANCELLED  # no superseded_by: not superseded
    assert cancelled(why="stopped", superseded_by=9) is Outcome.SUPERSEDED
    # A running attempt whose result comes after its task is done was superseded too.
    discarded = a(107.0, "result_discarded", 7, 0, "reduce", 3, was="running")
    events = [wire.parse(record) for record in LOG[:26]] + [wire.parse(discarded)]
    assert {x.id: x.outcome for x in report.run_log(events).attempts}[7] is Outcome.SUPERSEDED


def test_workers_markers_and_job():
    log = report.run_log(EVENTS)
    assert [w.label for w in log.workers] == ["w-a#1", "w-b#2", "w-c#3", "w-a#4"]
    first = log.worker(1)
    assert (first.pid, first.dead, first.suspects, first.fenced) == (11, 102.5, [101.8], [103.0])
    assert log.worker(2).left == 107.2 and log.worker(2).dead is None
    kinds = sorted((m.kind.value, m.worker) for m in log.markers)
    # The re-run map's output was served by worker 1, the incarnation that made it.
    assert kinds == [("backup", 2), ("dead", 1), ("fenced", 1), ("rerun", 1), ("suspect", 1)]
    job = log.job
    assert (job.start, job.finished, job.ok) == (100.0, 107.1, True)
    assert (job.n_maps, job.n_reduces) == (3, 2)
    assert job.commits == [(104.2, 1), (106.9, 0)]
    # Bytes moved, from the tally of the events: maps' and reduces' fetches and the pulled output.
    assert (log.tally.input_fetched, log.tally.shuffle_fetched, log.tally.output_pulled) == (300, 15, 5)
    assert log.bytes_moved == 320 and log.rel(101.0) == pytest.approx(1.0)


def test_a_fenced_message_of_no_known_worker_and_a_failing_job():
    events = EVENTS[:3] + [
        wire.parse(ev(100.5, "message_fenced", worker=None, message="TaskDone", attempt=77, why="unknown")),
        wire.parse(ev(100.6, "job_failing", why="map task 0 failed 4 times")),
        wire.parse(ev(100.7, "job_finished", ok=False, message="")),
    ]
    log = report.run_log(events)
    assert [(m.kind, m.worker) for m in log.markers] == [(MarkerKind.FENCED, None)]
    assert log.job.failing == "map task 0 failed 4 times" and log.job.ok is False
    assert report.summarize(log).fenced == 1


def test_faults_land_on_the_incarnation_the_process_had():
    given = faults((101.5, "pause", 11), (102.8, "resume", 11), (103.5, "kill", 11), (104.0, "kill", 99))
    log = report.run_log(EVENTS, given)
    placed = [(m.kind.value, m.worker) for m in log.markers if m.kind.value in ("kill", "pause", "resume")]
    assert placed == [("pause", 1), ("resume", 1), ("kill", 4), ("kill", None)]  # pid 99 never joined


def test_summary():
    s = report.summarize(report.run_log(EVENTS, faults((103.5, "kill", 11))))
    assert (s.maps, s.reduces, s.attempts, s.succeeded, s.failed, s.lost, s.cancelled) == (3, 2, 9, 6, 1, 1, 1)
    assert (s.backups, s.workers, s.workers_dead, s.fenced, s.maps_rerun, s.kills, s.pauses) == (1, 4, 1, 1, 1, 1, 0)
    assert s.seconds == pytest.approx(7.1) and s.bytes_moved == 320 and s.ok is True
    tally = wire.Tally.of(EVENTS)  # the same counts as the schema's one tally
    assert (s.attempts, s.backups, s.failed, s.lost, s.workers_dead, s.fenced, s.maps_rerun, s.fetch_failures) == (
        tally.attempts,
        tally.backups,
        tally.failed_attempts,
        tally.lost_attempts,
        tally.workers_dead,
        tally.fenced,
        tally.maps_rerun,
        tally.fetch_failures,
    )


def test_a_log_cut_short_still_parses():
    log = report.run_log(EVENTS[:13])  # no job_finished: the job ends at the last event
    assert log.job.ok is None and log.job.finished == 102.6
    assert {x.id: x.outcome for x in log.attempts}[4] is Outcome.RUNNING


def test_an_empty_log_is_an_error():
    with pytest.raises(report.ReportError, match="empty"):
        report.run_log([])


def test_a_log_line_that_fails_the_schema_is_named(tmp_path):
    path = tmp_path / "run.jsonl"
    good = "".join(json.dumps(record) + "\n" for record in LOG[:3])
    path.write_text(good + "\n" + json.dumps(ev(100.3, "task_assigned", attempt=9, task=0, phase="map")) + "\n")
    with pytest.raises(report.ReportError, match=r"run\.jsonl, line 5: .*task_assigned.*'worker'"):
        report.load(path)
    path.write_text(good + "{not json\n")
    with pytest.raises(report.ReportError, match=r"run\.jsonl, line 4: not an event"):
        report.load(path)
    path.write_text(good + json.dumps(ev(100.3, "a_kind_nobody_records")) + "\n")
    with pytest.raises(report.ReportError, match=r"run\.jsonl, line 4: not an event"):
        report.load(path)
    path.write_text(good)
    faults_beside(path).write_text('{"t": 1.0, "kind": "nap", "pid": 3}\n')
    with pytest.raises(report.ReportError, match=r"run\.faults\.jsonl: not a fault"):
        report.load(path)
    with pytest.raises(report.ReportError, match="cannot read event log"):
        report.load(tmp_path / "missing.jsonl")


def test_load_reads_the_faults_beside_the_log(tmp_path):
    path = tmp_path / "run.jsonl"
    path.write_text("".join(json.dumps(record) + "\n" for record in LOG))
    assert report.load(path).faults == []
    write_faults(faults_beside(path), faults((103.5, "kill", 11)))
    log = report.load(path)
    assert log.faults == [Fault(FaultKind.KILL, 11, 103.5)]
    assert (MarkerKind.KILL, 4) in {(m.kind, m.worker) for m in log.markers}


def test_rate_series_spreads_amounts_over_their_spans():
    edges, rates = report.rate_series([(0.0, 2.0, 4.0), (1.5, 1.5, 3.0)], 0.0, 3.0, 1.0)
    assert edges == [0.0, 1.0, 2.0]
    assert rates == pytest.approx([2.0, 5.0, 0.0])  # 2/s for two seconds; an instant counts in its bin
    _, halves = report.rate_series([(0.25, 0.75, 1.0)], 0.0, 1.0, 0.5)
    assert halves == pytest.approx([1.0, 1.0])


def test_progress_uses_input_bytes_when_the_log_has_them():
    data = report.progress_data(report.run_log(EVENTS))
    assert isinstance(data, report.ProgressSeries) and data.input_unit == "input MB/s"
    total = sum(r * data.width for r in data.input_rate)
    assert total == pytest.approx(3500 / 1e6)  # the successful maps' inputs, re-run included
    assert data.reduce_unit == "reduce out MB/s"  # reduces carry no input size here
    assert data.committed_fraction[-1] == 1.0

    def unsized():
        log = report.run_log(EVENTS)
        for x in log.attempts:
            x.input_bytes = x.output_bytes = None
        return log

    assert report.progress_data(unsized()).input_unit == "maps done/s"
    given = report.progress_data(unsized(), {0: 2000, 1: 2000, 2: 2000})
    assert given.input_unit == "input MB/s"


def test_speedup_series_from_both_schemas():
    simple = report.speedup_series(
        [{"workers": 1, "seconds": 8.0}, {"workers": 4, "seconds": 2.5}, {"workers": 2, "seconds": 4.0}]
    )
    assert simple[0].workers == [1, 2, 4] and simple[0].speedups() == pytest.approx([1.0, 2.0, 3.2])
    bench = {
        "machine": {},
        "results": [
            {"system": "mapreduce", "workers": 2, "wall_median": 4.0},
            {"system": "mapreduce", "workers": 4, "wall_median": 2.5},
        ],
    }
    (series,) = report.speedup_series(bench)
    assert series.label == "mapreduce" and series.speedups() == pytest.approx([2.0, 3.2])
    with pytest.raises(report.ReportError):
        report.speedup_series([{"seconds": 3}])


def test_import_needs_no_matplotlib():
    code = "import sys, mapreduce.tools.report; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_missing_matplotlib_is_one_clear_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(report.ReportError, match=r"pip install 'mapreduce\[report\]'"):
        report.timeline(EVENTS, tmp_path / "t.png")


@draws
def test_pictures_of_a_hand_written_log(tmp_path):
    given = faults((101.5, "pause", 11), (102.8, "resume", 11), (103.5, "kill", 11))
    assert report.timeline(EVENTS, tmp_path / "t.png", faults=given) == 4
    assert report.progress_compare([("a", EVENTS), ("b", EVENTS[:20])], tmp_path / "c.png") == 2
    (tmp_path / "s.json").write_text(json.dumps([{"workers": n, "seconds": 8 / n**0.9} for n in (1, 2, 4, 8)]))
    assert report.speedup(tmp_path / "s.json", tmp_path / "s.png") == 1
    for name in ("t.png", "c.png", "s.png"):
        width, height = png_size(tmp_path / name)
        assert width > 300 and height > 200


@draws
def test_report_of_a_real_job_with_a_kill_and_a_pause(tmp_path, make_job):
    # Enough maps that the job outlasts the paused worker's return by seconds: it must be
    # fenced and register again before the job ends.
    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(24)]
    job = make_job(SLEEPY, inputs, "--param", "map_seconds=0.6", "--reduce", "2")
    for _ in range(3):
        job.worker()
    log = job.wait_for(lambda log: len(running(log, "map")) == 3, "three maps running")
    killed, paused = running(log, "map")[:2]
    kill_pid, pause_pid = job.pid(killed["worker"]), job.pid(paused["worker"])
    sent = [Fault(FaultKind.KILL, kill_pid, time.monotonic())]
    os.kill(kill_pid, signal.SIGKILL)
    sent.append(Fault(FaultKind.PAUSE, pause_pid, time.monotonic()))
    os.kill(pause_pid, signal.SIGSTOP)
    try:
        job.wait_for(
            lambda log: of(log, "worker_dead", worker=paused["worker"]),
            "the paused worker to be declared dead",
            timeout=30,
        )
    finally:
        sent.append(Fault(FaultKind.RESUME, pause_pid, time.monotonic()))
        os.kill(pause_pid, signal.SIGCONT)
    job.worker()  # the killed one's replacement
    # Back from its pause, the worker registers again. Whether a message of its old incarnation
    # reaches the coordinator first (and is fenced) depends on timing: it reconnects at once,
    # having heard nothing for longer than its liveness allows.
    job.wait_for(
        lambda log: len(of(log, "worker_joined", pid=pause_pid)) == 2,
        "the paused worker to register again",
        timeout=30,
    )
    events = job.finish()
    assert of(events, "worker_dead", worker=killed["worker"]) and of(events, "task_lost")
    incarnations = {e["worker"] for e in of(events, "worker_joined")}
    assert len(incarnations) >= 5  # three, the replacement, and the paused process again

    parsed = report.run_log(report.read_log(job.events), sent)
    assert len(parsed.workers) == len(incarnations)
    placed = {(m.kind, m.worker) for m in parsed.markers}
    assert {
        (MarkerKind.KILL, killed["worker"]),
        (MarkerKind.PAUSE, paused["worker"]),
        (MarkerKind.DEAD, paused["worker"]),
    } <= placed
    fenced = {e["worker"] for e in of(events, "message_fenced")}
    assert {(MarkerKind.FENCED, w) for w in fenced} <= placed  # each fenced message on its incarnation's row
    assert report.summarize(parsed).lost == len(of(events, "task_lost"))
    assert report.timeline(parsed, tmp_path / "timeline.png") == len(incarnations)

    # The command, with the faults beside the log as crashtest could write them.
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "faulty.jsonl").write_text(job.events.read_text())
    write_faults(faults_beside(logs / "faulty.jsonl"), sent)
    (logs / "again.jsonl").write_text(job.events.read_text())
    (tmp_path / "speed.json").write_text(json.dumps([{"workers": 1, "seconds": 4.0}, {"workers": 2, "seconds": 2.2}]))
    out = tmp_path / "report"
    result = CliRunner().invoke(
        report.report,
        [
            str(logs / "faulty.jsonl"),
            str(logs / "again.jsonl"),
            "--output",
            str(out),
            "--speedup",
            str(tmp_path / "speed.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    written = [Path(line) for line in result.output.splitlines()]
    assert written[-1] == out / "index.html"
    pictures = {p.name for p in written if p.suffix == ".png"}
    assert pictures == {
        "progress-compare.png",
        "timeline-faulty.png",
        "progress-faulty.png",
        "timeline-again.png",
        "progress-again.png",
        "speedup.png",
    }
    for name in pictures:
        width, height = png_size(out / name)
        assert width >= 400 and height >= 250
    page = (out / "index.html").read_text()
    assert all(f'src="{name}"' in page for name in pictures)
    assert "<td>faulty</td>" in page and "<td>again</td>" in page  # a summary row per log


@draws
def test_the_command_reports_bad_input_in_one_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(LOG[0]) + "\n" + json.dumps(ev(100.1, "worker_joined", worker="two")) + "\n")
    result = CliRunner().invoke(report.report, [str(bad), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1
    assert f"{bad}, line 2: not an event:" in result.output and "worker_joined" in result.output
    result = CliRunner().invoke(report.report, ["--output", str(tmp_path / "out")])
    assert result.exit_code == 2


def test_job_counters_are_tabled_per_run_from_each_tasks_successful_attempt():
    finished = {}  # each task's last finished attempt (an earlier one of the same task is replaced)
    for i, e in enumerate(LOG):
        if e["event"] == "task_finished":
            finished[e["phase"], e["task"]] = i
    first, *_, last = finished.values()
    records = [dict(e) for e in LOG]
    records[first]["counters"] = [["app", "words", 4], ["mapreduce", "MAP_INPUT_RECORDS", 3]]
    records[last]["counters"] = [["app", "words", 1]]
    log = report.run_log([wire.parse(r) for r in records])
    counters = {f"{g}.{c}": v for (g, c), v in log.tally.counters.items()}
    assert counters == {"app.words": 5, "mapreduce.MAP_INPUT_RECORDS": 3}
    table = report._counters_table([("one", None, log), ("two", None, report.run_log(EVENTS))])
    assert "<td style='text-align:left'>app.words</td><td>5</td><td></td>" in table
    assert report._counters_table([("two", None, report.run_log(EVENTS))]) == ""  # no counters: no table
