"""End to end: `mapreduce run` on real local clusters, compared byte for byte with `mapreduce seq`."""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from helpers import APPS, assert_same_output, mapreduce_command, run_cli
from mapreduce.wire.events import read_records


@pytest.mark.parametrize("app", ["wordcount", "indexer"])
def test_generated_corpus_matches_seq(app, corpus, oracle, tmp_path):
    # A small split size: each file becomes several map tasks cut at line boundaries.
    expected = oracle(app, corpus, "--reduce", "10", "--split-size", "100k")
    out = tmp_path / "out"
    run_cli(
        "run", app, *corpus, "--workers", "3", "--reduce", "10", "--split-size", "100k", "--output", str(out), "--quiet"
    )
    assert_same_output(expected, out)


def test_grep_is_map_only_and_matches_seq(corpus, oracle, tmp_path):
    args = ["--param", r"pattern=\bcafé\b|42"]
    expected = oracle("grep", corpus, *args)
    out = tmp_path / "out"
    run_cli("run", "grep", *corpus, *args, "--workers", "2", "--output", str(out), "--quiet")
    assert_same_output(expected, out)
    parts = sorted(out.glob("part-*"))
    assert len(parts) == len(corpus)  # a part file per map task: grep reads each file whole
    for path, part in zip(corpus, parts):
        numbers = [int(line.split("\t")[0].rsplit(":", 1)[1]) for line in part.read_text().splitlines()]
        assert numbers == sorted(numbers) and numbers  # the matches of one file, in order
        assert all(line.startswith(path + ":") for line in part.read_text().splitlines())


@pytest.mark.parametrize("app", ["wordcount", "indexer"])
def test_gutenberg_three_workers_ten_reducers(app, gutenberg, oracle, tmp_path):
    expected = oracle(app, gutenberg, "--reduce", "10")
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    run_cli(
        "run",
        app,
        *gutenberg,
        "--workers",
        "3",
        "--reduce",
        "10",
        "--output",
        str(out),
        "--events",
        str(events),
        "--quiet",
    )
    assert_same_output(expected, out)
    # With no faults every task runs exactly once.
    assigned = collections.Counter(
        (e["phase"], e["task"]) for e in read_records(events) if e["event"] == "task_assigned"
    )
    assert sorted(assigned) == sorted([("map", i) for i in range(len(gutenberg))] + [("reduce", r) for r in range(10)])
    assert set(assigned.values()) == {1}


def test_maps_and_reduces_run_at_the_same_time(corpus, oracle, tmp_path):
    slow = tmp_path / "slow-input.txt"
    slow.write_text("a slow file of words\n" * 100)
    inputs = [*corpus, str(slow)]
    expected = oracle(str(APPS / "slowmap.py"), inputs, "--reduce", "4")
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    run_cli(
        "run",
        str(APPS / "slowmap.py"),
        *inputs,
        "--workers",
        "2",
        "--reduce",
        "4",
        "--output",
        str(out),
        "--events",
        str(events),
        "--quiet",
    )
    assert_same_output(expected, out)
    log = list(read_records(events))
    last_map_done = max(e["t"] for e in log if e["event"] == "task_finished" and e["phase"] == "map")
    reduce_starts = [e["t"] for e in log if e["event"] == "task_assigned" and e["phase"] == "reduce"]
    # The slow map holds one worker for seconds; the other works through reduces meanwhile.
    assert min(reduce_starts) < last_map_done
    reduces_done_during_maps = [e for e in log if e["event"] == "output_committed" and e["t"] < last_map_done]
    assert reduces_done_during_maps == []  # no reduce can finish before every map has


def test_user_error_fails_the_job_after_max_attempts(tmp_path):
    good = tmp_path / "good.txt"
    good.write_text("fine words here\n")
    bad = tmp_path / "bad.txt"
    bad.write_text("ok\nthis line is POISON\n")
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    result = run_cli(
        "run",
        str(APPS / "failing.py"),
        str(good),
        str(bad),
        "--workers",
        "2",
        "--max-attempts",
        "3",
        "--output",
        str(out),
        "--events",
        str(events),
        check=False,
    )
    assert result.returncode == 1
    assert "job failed" in result.stderr
    assert f"input {str(bad)!r}" in result.stderr  # names the task's input
    assert "ValueError: poisoned line: 'this line is POISON'" in result.stderr  # the user's exception
    assert "failed 3 times" in result.stderr
    message = result.stderr[result.stderr.index("job failed") :]
    assert "Traceback" in message and ", in map\n" in message  # the user's own traceback...
    assert "mapreduce/" not in message  # ...without the framework's frames
    failures = [e for e in read_records(events) if e["event"] == "task_failed"]
    assert len(failures) == 3 and all(e["user_error"] for e in failures)
    assert not (out / "_SUCCESS").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # no temporary files left


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def _worker_pids(events) -> list[int]:
    if not events.exists():
        return []
    return [e["pid"] for e in read_records(events) if e["event"] == "worker_joined"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopping_run_stops_every_worker(sig, tmp_path):
    slow = tmp_path / "slow.txt"
    slow.write_text("words " * 1000)
    out = tmp_path / "out"
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen(
        mapreduce_command(
            "run",
            str(APPS / "slowmap.py"),
            str(slow),
            "--workers",
            "2",
            "--output",
            str(out),
            "--events",
            str(events),
            "--quiet",
        ),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLOWMAP_SECONDS": "60", "TMPDIR": str(tmp_path)},  # a killed run leaves its folder here
    )
    try:
        _wait_for(lambda: len(_worker_pids(events)) == 2, 60, "both workers to join")
        pids = _worker_pids(events)
        process.send_signal(sig)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    if sig == signal.SIGINT:
        assert process.returncode == 130
        assert "interrupted" in process.stderr.read()
    _wait_for(lambda: not any(_alive(pid) for pid in pids), 20, f"worker processes {pids} to exit")
    assert not (out / "_SUCCESS").exists()


def test_readme_example_app(gutenberg, oracle, tmp_path):
    """The app in the README runs as documented, distributed and sequentially alike."""
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    app = tmp_path / "longest.py"
    app.write_text(code)
    args = ["--param", "min_length=3", "--reduce", "3"]
    expected = oracle(str(app), gutenberg, *args)
    out = tmp_path / "out"
    run_cli("run", str(app), *gutenberg, *args, "--workers", "2", "--output", str(out), "--quiet")
    assert_same_output(expected, out)
    lines = dict(line.rstrip("\n").split("\t") for line in (out / "part-00000").open())
    assert lines and all(len(word) >= 3 and word.startswith(letter) for letter, word in lines.items())


def test_the_coordinators_socket_is_a_file_in_the_runs_folder_or_an_abstract_one():
    from mapreduce.runner import private_endpoint

    assert private_endpoint("/tmp/mapreduce-run-abc") == "ipc:///tmp/mapreduce-run-abc/coordinator"
    deep = "/tmp/" + "d" * 120 + "/mapreduce-run-abc"
    assert private_endpoint(deep) == "ipc://@mapreduce-run-abc"  # longer than a socket path may be
