"""The status view: snapshots of a hand-driven scheduler, the web server, the CLI, a real browser."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest
from click.testing import CliRunner

from helpers import join, make, map_done, msgs, one, reduce_done
from mapreduce.coordinator.view import JobFacts
from mapreduce.tools.status import (
    StatusBoard,
    StatusServer,
    dump_dom,
    find_browser,
    render_main,
    render_page,
    screenshot,
    snapshot,
    status,
)
from mapreduce.wire import messages as p
from mapreduce.wire.events import MapRerun, TaskAssigned, TaskFailed, WorkerJoined

JOB = {
    "app": "wordcount",
    "job_id": "abc123",
    "n_map": 2,
    "n_reduce": 1,
    "inputs": 2,
    "input_bytes": 200,
    "output": "/out",
}


def wordcount(n_maps: int = 2, n_reduce: int = 1, now: float = 0.0, **settings):
    """A scheduler whose view has JOB's facts (for n_maps=2, n_reduce=1)."""
    return make(n_maps, n_reduce, now, job_id="abc123", app="wordcount", out="/out", **settings)


def two_workers_mid_job():
    """Two maps, one reduce: A finished map 0 at t=1 and runs the reduce; B still runs map 1."""
    s = wordcount()
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, actions = join(s, b"B")
    m1 = one(actions, b"B", p.AssignMap)
    actions = map_done(s, 1.0, b"A", a, m0, [5])
    r0 = one(actions, b"A", p.AssignReduce)
    return s, (a, b), (m0, m1, r0)


def by_id(items: list, key: int) -> dict:
    return next(item for item in items if item["id"] == key)


# ---- snapshot -----------------------------------------------------------------


def test_snapshot_of_a_job_that_has_not_started():
    s = wordcount(n_maps=3, n_reduce=2, now=10.0)
    snap = snapshot(s.view(12.5))
    assert snap["phase"] == "maps" and snap["elapsed"] == 2.5
    assert snap["maps"] == {"total": 3, "done": 0, "running": 0, "pending": 3}
    assert snap["reduces"] == {"total": 2, "done": 0, "running": 0, "pending": 2}
    assert snap["workers"] == [] and snap["attempts"] == [] and snap["events"] == []
    assert snap["job"] == dict(JOB, n_map=3, n_reduce=2, inputs=3, input_bytes=300) and snap["failure"] is None
    assert snap["throughput"] == {"input_bytes_done": 0, "bytes_per_second": 0.0}
    json.dumps(snap)


def test_snapshot_mid_job_progress_workers_attempts_and_throughput():
    s, (a, b), (m0, m1, r0) = two_workers_mid_job()
    snap = snapshot(s.view(2.0))
    json.dumps(snap)
    assert snap["job"] == JOB and snap["phase"] == "maps"
    assert snap["maps"] == {"total": 2, "done": 1, "running": 1, "pending": 0}
    assert snap["reduces"] == {"total": 1, "done": 0, "running": 1, "pending": 0}
    assert snap["throughput"] == {"input_bytes_done": 100, "bytes_per_second": 50.0}
    assert snap["counters"]["attempts"] == 3 and snap["counters"]["succeeded"] == 1
    assert snap["workers_live"] == snap["workers_total"] == 2
    wa, wb = by_id(snap["workers"], a), by_id(snap["workers"], b)
    assert (wa["name"], wa["host"], wa["pid"], wa["state"], wa["suspect"]) == ("A", "box", 4242, "busy", False)
    assert wa["heartbeat_age"] == 1.0 and wb["heartbeat_age"] == 2.0
    assert wa["attempt"] == {
        "id": r0.attempt,
        "phase": "reduce",
        "task": 0,
        "worker": a,
        "worker_name": "A",
        "state": "running",
        "backup": False,
        "seconds": 1.0,
    }
    assert wb["attempt"]["phase"] == "map" and wb["attempt"]["task"] == 1
    assert [x["id"] for x in snap["attempts"]] == [r0.attempt, m1.attempt, m0.attempt]  # newest first
    assert by_id(snap["attempts"], m0.attempt)["state"] == "succeeded"


def test_snapshot_phases_reduces_done_and_failed():
    s, (a, b), (m0, m1, r0) = two_workers_mid_job()
    map_done(s, 2.0, b"B", b, m1, [3])
    assert snapshot(s.view(2.0))["phase"] == "reduces"
    reduce_done(s, 3.0, b"A", a, r0)
    snap = snapshot(s.view(3.0))
    assert snap["phase"] == "done" and snap["reduces"]["done"] == 1

    s = wordcount(n_maps=1, n_reduce=1, max_attempts=1)
    w, actions = join(s, b"A")
    assign = one(actions, b"A", p.AssignMap)
    s.receive(1.0, b"A", p.TaskFailed(w, assign.attempt, "KeyError: 'x'"))
    snap = snapshot(s.view(1.0))
    assert snap["phase"] == "failed" and "KeyError: 'x'" in snap["failure"]


def test_suspect_and_dead_workers_and_a_lost_attempt():
    s = wordcount(n_maps=2, n_reduce=1, heartbeat_interval=1.0, worker_timeout=5.0)
    a, actions = join(s, b"A")
    m0 = one(actions, b"A", p.AssignMap)
    b, _ = join(s, b"B")
    board = StatusBoard(every=0)
    s.receive(2.9, b"B", p.Heartbeat(b))
    s.tick(3.0)  # A silent 3 s > 2.5 intervals: suspect
    snap = board.update(s.view(3.0), s.take_events())
    assert by_id(snap["workers"], a)["suspect"] and by_id(snap["workers"], a)["state"] == "busy"
    assert not by_id(snap["workers"], b)["suspect"]
    s.receive(5.5, b"B", p.Heartbeat(b))
    s.tick(6.0)
    snap = board.update(s.view(6.0), s.take_events())
    wa = by_id(snap["workers"], a)
    assert wa["state"] == "dead" and wa["attempt"] is None and wa["heartbeat_age"] == 6.0
    assert snap["workers_live"] == 1 and snap["counters"]["workers_dead"] == 1
    lost = by_id(snap["attempts"], m0.attempt)
    assert lost["state"] == "lost" and lost["seconds"] == 6.0 and lost["why"] == "silent for 6.0 s"
    names = [e["event"] for e in snap["events"]]
    assert names[:2] == ["task_lost", "worker_dead"]  # newest first
    assert "worker_suspect" in names


def test_board_keeps_the_recent_events_and_the_view_why_attempts_ended():
    s = wordcount(n_maps=1, n_reduce=1, max_attempts=3)
    a, actions = join(s, b"A")
    assign = one(actions, b"A", p.AssignMap)
    board = StatusBoard(every=0)
    board.update(s.view(0.5), s.take_events())
    board.update(s.view(0.6), s.take_events())  # nothing new
    assert [type(e) for e in board.events] == [WorkerJoined, TaskAssigned]
    tb = 'Traceback (most recent call last):\n  File "app.py", line 3\nZeroDivisionError: division by zero'
    s.receive(2.0, b"A", p.TaskFailed(a, assign.attempt, "ZeroDivisionError: division by zero", tb))
    snap = board.update(s.view(2.5), s.take_events())
    failed = by_id(snap["attempts"], assign.attempt)
    assert failed["state"] == "failed" and failed["error"] == "ZeroDivisionError: division by zero"
    assert failed["seconds"] == 2.0
    assert snapshot(s.view(2.5))["attempts"][-1]["error"] == failed["error"]  # the view knows it: no board needed
    assert [type(e) for e in board.events] == [WorkerJoined, TaskAssigned, TaskFailed, TaskAssigned]
    snap = board.update(s.view(3.0), s.take_events())
    assert len(snap["events"]) == 4 and snap["events"][0]["event"] == "task_assigned"
    assert snap["events"][1] == {
        "t": 2.0,
        "event": "task_failed",
        "attempt": assign.attempt,
        "task": 0,
        "phase": "map",
        "worker": a,
        "step": 1,
        "error": "ZeroDivisionError: division by zero",
        "user_error": True,
    }


def test_a_race_loser_shows_which_attempt_won():
    s = wordcount(n_maps=3, n_reduce=1, speculation=True)
    assigned = {}
    for ident in (b"A", b"B", b"C"):
        w, actions = join(s, ident)
        assigned[ident] = (w, one(actions, ident, p.AssignMap))
    straggler = assigned[b"A"][1]
    for ident in (b"B", b"C"):
        map_done(s, 1.0, ident, *assigned[ident], [5])
    backup = msgs(s.tick(2.1), kind=p.AssignMap)[0]  # A's map is past 2x the median: a backup
    runner = next(w for w in s.workers.values() if w.attempt is not None and w.attempt.id == backup.attempt)
    map_done(s, 3.0, runner.identity, runner.id, backup, [5])
    snap = snapshot(s.view(3.0))
    lost_race = by_id(snap["attempts"], straggler.attempt)
    assert lost_race["state"] == "superseded" and lost_race["why"] == f"attempt {backup.attempt} finished first"
    assert (snap["counters"]["backups"], snap["counters"]["superseded"], snap["counters"]["cancelled"]) == (1, 1, 0)


def test_board_throttles_keeps_the_last_events_and_publishes_when_the_job_ends():
    s = wordcount(n_maps=1, n_reduce=1)
    published = []

    class Sink:
        def publish(self, snap):
            published.append(snap)

    board = StatusBoard(server=Sink(), every=1.0, keep_events=5)
    assert board.update(s.view(0.0)) is not None
    reruns = [MapRerun(t=0.1 + i / 100, task=i) for i in range(20)]
    assert board.update(s.view(0.5), reruns) is None  # too soon: events taken, nothing built
    assert [e.task for e in board.events] == [15, 16, 17, 18, 19]
    s.job_finished(0.6)
    snap = board.update(s.view(0.6), s.take_events())
    assert snap is not None and published[-1] is snap and len(published) == 2
    assert [e["event"] for e in snap["events"]][:2] == ["job_finished", "map_rerun"]
    assert isinstance(snap["updated"], float)


def test_the_view_has_the_jobs_facts_and_is_frozen():
    s = make(n_maps=3, n_reduce=4, job_id="j1", app="wordcount", out="/out")
    view = s.view(0.0)
    assert view.job == JobFacts("wordcount", "j1", 3, 4, 3, 300, "/out")
    with pytest.raises(AttributeError):
        view.phase = None
    view.tally.attempts += 1  # a copy: the scheduler's own tally is not touched
    assert s.tally.attempts == 0


# ---- the server ------------------------------------------------------------------


def get(url: str, method: str = "GET") -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


@pytest.fixture
def server():
    with StatusServer() as srv:
        yield srv


@pytest.fixture
def mid_job():
    s, ids, attempts = two_workers_mid_job()
    return snapshot(s.view(2.0), s.events)


def test_server_routes(server, mid_job):
    assert server.url.startswith("http://127.0.0.1:") and server.port > 0
    code, _, body = get(server.url + "status.json")
    assert code == 503 and b"no status" in body
    code, _, body = get(server.url)
    assert code == 200 and b"starting" in body
    code, _, body = get(server.url + "fragment")
    assert code == 200 and body.decode() == render_main(None) and "starting" in body.decode()

    server.publish(mid_job)
    code, headers, body = get(server.url + "status.json")
    assert code == 200 and headers["Content-Type"] == "application/json"
    assert json.loads(body) == mid_job
    code, headers, body = get(server.url + "?x=1")
    page = body.decode()
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert "script-src 'sha256-" in headers["Content-Security-Policy"]
    assert '<table id="workers">' in page and '<tr id="worker-1">' in page and '<tr id="worker-2">' in page
    assert '<span class="state ok">busy</span>' in page and "reduce 0 (attempt 3)" in page
    assert '<progress max="2" value="1">' in page and 'http-equiv="refresh"' in page
    assert "task_assigned" in page and 'fetch("fragment"' in page

    # The fragment is the page's <main>, rendered by the same function: one renderer.
    code, headers, body = get(server.url + "fragment?t=1")
    fragment = body.decode()
    assert code == 200 and headers["Content-Type"] == "text/html; charset=utf-8"
    assert fragment == render_main(mid_job) and f'<main id="main">{fragment}</main>' in page
    assert "script-src" not in headers["Content-Security-Policy"]  # the fragment alone runs nothing
    assert fragment.startswith("<h1>mapreduce: wordcount</h1>") and "<html" not in fragment

    for path in ("status", "index.html", "status.json/x", "fragment/x", "../etc/passwd"):
        assert get(server.url + path)[0] == 404
    for path in ("", "status.json", "fragment"):
        for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "BREW"):
            code, headers, _ = get(server.url + path, method)
            assert code == 405 and headers["Allow"] == "GET, HEAD", (path, method)
        code, headers, body = get(server.url + path, "HEAD")
        assert code == 200 and body == b"" and int(headers["Content-Length"]) == len(get(server.url + path)[2])


def test_the_page_script_only_swaps_in_the_fragment_and_its_hash_is_allowed(server, mid_job):
    server.publish(mid_job)
    _, headers, body = get(server.url)
    (script,) = re.findall(r"<script>(.*?)</script>", body.decode(), re.S)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    csp = headers["Content-Security-Policy"]
    assert f"script-src 'sha256-{digest}';" in csp and "connect-src 'self'" in csp
    assert "default-src 'none'" in csp and "unsafe-inline" not in csp
    # No HTML is built in JavaScript: the script fetches the fragment, not the JSON.
    assert 'fetch("fragment"' in script and "status.json" not in script and "<td" not in script
    assert '<noscript><meta http-equiv="refresh" content="2"></noscript>' in body.decode()


def test_server_swaps_snapshots_and_closes(mid_job):
    srv = StatusServer()
    srv.publish(mid_job)
    later = copy.deepcopy(mid_job)
    later["phase"] = "done"
    srv.publish(later)
    later["phase"] = "changed after publishing"  # the server keeps what it was given then
    assert json.loads(get(srv.url + "status.json")[2])["phase"] == "done"
    started = time.monotonic()
    srv.close(linger=0.3)  # a client asked just now: serve a little longer
    assert time.monotonic() - started >= 0.3
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(srv.url + "status.json", timeout=2)


def test_page_and_fragment_escape_what_workers_send(server, mid_job):
    evil = copy.deepcopy(mid_job)
    evil["workers"][0]["name"] = "<script>alert(1)</script>"
    evil["workers"][1]["host"] = '"><img src=x onerror=alert(2)>'
    evil["attempts"][0]["state"] = "failed"
    evil["attempts"][0]["error"] = "ValueError: <b>bad</b> & worse"
    evil["events"].append({"t": 1.0, "event": "worker_joined", "name": "<i>x</i>"})
    server.publish(evil)
    for served in (get(server.url)[2].decode(), get(server.url + "fragment")[2].decode(), render_page(evil)):
        assert "<script>alert(1)" not in served and "&lt;script&gt;alert(1)&lt;/script&gt;" in served
        assert "<img" not in served and "&quot;&gt;&lt;img src=x onerror=alert(2)&gt;" in served
        assert "ValueError: &lt;b&gt;bad&lt;/b&gt; &amp; worse" in served
        assert "name=&lt;i&gt;x&lt;/i&gt;" in served and "<i>x" not in served


# ---- the command -----------------------------------------------------------------


def test_status_command(server, mid_job):
    server.publish(mid_job)
    runner = CliRunner()
    address = server.url.removeprefix("http://").rstrip("/")
    for url in (server.url, address):
        result = runner.invoke(status, [url])
        assert result.exit_code == 0, result.output
    out = result.output
    assert "wordcount (job abc123): maps" in out
    assert "maps     1/2 done, 1 running, 0 pending" in out and "reduces  0/1 done, 1 running" in out
    assert re.search(r"1\s+A\s+box\s+4242\s+busy\s+1\.0 s ago\s+reduce 0 \(attempt 3\)", out), out
    assert "workers  2 live of 2" in out and "attempts 3" in out

    result = runner.invoke(status, [server.url, "--json"])
    assert result.exit_code == 0 and json.loads(result.output) == mid_job

    done = dict(mid_job, phase="done")
    server.publish(done)
    result = runner.invoke(status, [server.url, "--watch"])
    assert result.exit_code == 0 and "): done," in result.output
    server.publish(dict(mid_job, phase="failed", failure="map task 0 failed 4 times"))
    result = runner.invoke(status, [server.url, "--watch"])
    assert result.exit_code == 1 and "failure: map task 0 failed 4 times" in result.output


def test_status_command_unreachable():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = CliRunner().invoke(status, [f"127.0.0.1:{port}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f"error: cannot reach the status server at http://127.0.0.1:{port}/status.json"
    )


# ---- a real browser ---------------------------------------------------------------

BROWSER = find_browser()
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no Chromium (apt-get install chromium, or set MAPREDUCE_BROWSER)"
)


def worker_row(dom: str, worker: int) -> str:
    match = re.search(rf'<tr id="worker-{worker}">(.*?)</tr>', dom, re.S)
    assert match, f"no row for worker {worker} in:\n{dom[:3000]}"
    return match.group(1)


@needs_browser
def test_browser_page_follows_the_job():
    """The page is rendered with a live worker; the fragment it then fetches says that worker died."""
    s = make(n_maps=2, n_reduce=1, heartbeat_interval=1.0, worker_timeout=5.0)
    a, _ = join(s, b"A")
    b, _ = join(s, b"B")
    board = StatusBoard(every=0)
    alive = board.update(s.view(1.0), s.take_events())
    s.receive(5.5, b"B", p.Heartbeat(b))
    s.tick(6.0)
    dead = board.update(s.view(6.0), s.take_events())
    assert by_id(dead["workers"], a)["state"] == "dead"

    with StatusServer() as srv:
        srv.publish(alive)
        page = get(srv.url)[2].decode()
        assert '<span class="state ok">busy</span>' in worker_row(page, a)
        srv.publish(dead)
        later = srv.current()
        srv.publish(alive)
        answers = iter([srv.current()])
        srv.current = lambda: next(answers, later)  # the first request (the page) as of `alive`, then `dead`
        dom = dump_dom(srv.url, wait_ms=3000, browser=BROWSER)
    row = worker_row(dom, a)
    assert '<span class="state dead">dead</span>' in row, row  # only the page's script can have put it there
    assert "<td>A</td><td>box</td>" in row
    assert '<span class="state ok">busy</span>' in worker_row(dom, b)
    refreshed = re.search(r'<body[^>]*data-refreshed="(\d+)"', dom)
    assert refreshed and int(refreshed.group(1)) >= 1
    assert 'id="phase" class="phase maps"' in dom and "worker_dead" in dom


@needs_browser
def test_browser_screenshot(tmp_path, mid_job):
    with StatusServer() as srv:
        srv.publish(mid_job)
        path = screenshot(srv.url, tmp_path / "status.png", browser=BROWSER)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    if os.environ.get("MAPREDUCE_KEEP_SCREENSHOT"):
        (tmp_path / "status.png").replace(os.environ["MAPREDUCE_KEEP_SCREENSHOT"])


# ---- a real job: the coordinator publishes, a browser watches, a worker is killed -----------


def test_live_job_status_in_a_browser_and_against_the_event_log(tmp_path, oracle):
    import signal

    from helpers import SLEEPY, Job, assert_same_output, of, words_file

    inputs = [words_file(tmp_path, f"in{i}.txt") for i in range(6)]
    params = ["--reduce", "2", "--param", "map_seconds=1"]
    expected = oracle(SLEEPY, inputs, *params)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    job = Job(tmp_path, SLEEPY, inputs, *params, "--status-port", str(port))
    try:
        for i in range(2):
            job.worker(scratch=str(tmp_path / f"s{i}"))
        deadline = time.monotonic() + 60
        snap = {}
        while time.monotonic() < deadline:
            try:
                snap = json.loads(get(url + "status.json")[2])
            except (OSError, ValueError):
                snap = {}
            if [w["state"] for w in snap.get("workers", [])].count("busy") == 2:
                break
            time.sleep(0.05)
        assert [w["state"] for w in snap["workers"]] == ["busy", "busy"], snap
        assert snap["phase"] == "maps" and snap["maps"]["total"] == 6
        browser = find_browser()
        if browser is not None:
            page = dump_dom(url, wait_ms=1500, browser=browser)
            assert page.count(">busy</span>") == 2 and "maps" in page
        victim = by_id(snap["workers"], 1)
        os.kill(victim["pid"], signal.SIGKILL)
        job.wait_for(lambda log: of(log, "worker_dead", worker=1), "the killed worker declared dead")
        deadline = time.monotonic() + 30
        while (
            time.monotonic() < deadline
            and by_id(json.loads(get(url + "status.json")[2])["workers"], 1)["state"] != "dead"
        ):
            time.sleep(0.05)
        snap = json.loads(get(url + "status.json")[2])
        assert by_id(snap["workers"], 1)["state"] == "dead" and snap["counters"]["workers_dead"] == 1
        if browser is not None:
            assert '<span class="state dead">dead</span>' in dump_dom(url, wait_ms=1500, browser=browser)
        # Watch to the end (a watcher keeps the page up a moment after the job): the last
        # snapshot agrees with the event log.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            final = json.loads(get(url + "status.json")[2])
            if final["phase"] in ("done", "failed"):
                break
            time.sleep(0.1)
        log = job.finish()
    finally:
        job.stop_all()
    assert_same_output(expected, job.out)
    assert final["phase"] == "done" and final["maps"]["done"] == 6 and final["reduces"]["done"] == 2
    c = final["counters"]
    assert c["attempts"] == len(of(log, "task_assigned")) + len(of(log, "backup_launched"))
    assert c["workers_dead"] == len(of(log, "worker_dead")) == 1
    assert c["lost_attempts"] == len(of(log, "task_lost"))


def test_job_counters_of_finished_attempts_are_in_the_snapshot_and_on_the_page():
    s = make(n_maps=1, n_reduce=1)
    a, actions = join(s, b"A")
    m = one(actions, b"A", p.AssignMap)
    counted = [p.CounterValue("app", "words", 7), p.CounterValue("mapreduce", "MAP_INPUT_RECORDS", 2)]
    s.receive(1.0, b"A", p.TaskDone(a, m.attempt, [5], "/scratch/A/m", 3, counters=counted))
    snap = snapshot(s.view(2.0))
    assert snap["job_counters"] == {"mapreduce.MAP_INPUT_RECORDS": 2, "app.words": 7}  # the framework's first
    page = render_main(snap)
    assert '<table id="job-counters">' in page and "<td>app.words</td><td class=num>7</td>" in page
