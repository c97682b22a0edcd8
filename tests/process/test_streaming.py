"""Hadoop Streaming jobs: real executables as mapper and reducer, on the embedded cluster and
in one process (--sequential, the oracle), compared byte for byte and with the built-in apps."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import (
    FAST,
    TIMEOUT,
    assert_same_output,
    event_log,
    free_endpoint,
    gone,
    kill_all,
    mapreduce_command,
    of,
    run_cli,
    serve_on_workers,
    wait_for_log,
)
from mapreduce.output import read_output

AWK_MAPPER = 'awk \'{ gsub(/[^A-Za-z]+/, " "); for (i = 1; i <= NF; i++) print $i "\\t1" }\''
# A reducer must notice key changes itself: its input is sorted, a key's lines together.
AWK_REDUCER = (
    "awk -F '\\t' '$1 != word { if (NR > 1) print word \"\\t\" n; word = $1; n = 0 } { n += $2 } "
    'END { if (NR > 0) print word "\\t" n }\''
)


@pytest.fixture
def ascii_books(gutenberg, tmp_path) -> list[str]:
    """The books' ASCII lines: awk's letters are ASCII ones, the built-in app's all of Unicode."""
    paths = []
    for book in gutenberg:
        lines = [line for line in Path(book).read_bytes().splitlines(keepends=True) if line.isascii()]
        path = tmp_path / Path(book).name
        path.write_bytes(b"".join(lines))
        paths.append(str(path))
    return paths


def streaming(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return run_cli("streaming", *args, "--quiet", check=check)


def inputs_of(paths: list[str]) -> list[str]:
    return [arg for path in paths for arg in ("--input", path)]


def test_awk_word_count_equals_the_built_in_and_its_sequential_run(ascii_books, tmp_path):
    args = [*inputs_of(ascii_books), "--mapper", AWK_MAPPER, "--reducer", AWK_REDUCER, "--reduce", "3"]
    streaming(*args, "--output", str(tmp_path / "out"), "--workers", "2", "--split-size", "300k")
    streaming(*args, "--output", str(tmp_path / "seq"), "--split-size", "300k", "--sequential")
    assert_same_output(tmp_path / "seq", tmp_path / "out")
    run_cli("seq", "wordcount", *ascii_books, "--output", str(tmp_path / "builtin"), "--quiet")
    counts = dict(line.split("\t") for line in read_output(tmp_path / "out"))
    assert counts == dict(line.split("\t") for line in read_output(tmp_path / "builtin"))
    assert len(counts) > 10_000


def test_a_streaming_job_on_separately_started_workers_equals_its_sequential_run(ascii_books, tmp_path):
    args = [*inputs_of(ascii_books[:4]), "--mapper", AWK_MAPPER, "--reducer", AWK_REDUCER, "--reduce", "2"]
    serve_on_workers(["streaming", *args, "--split-size", "200k", "--quiet"], tmp_path / "out")
    streaming(*args, "--output", str(tmp_path / "seq"), "--split-size", "200k", "--sequential")
    assert_same_output(tmp_path / "seq", tmp_path / "out")


def test_a_combiner_command_shrinks_the_shuffle_and_keeps_the_answer(ascii_books, tmp_path):
    args = [*inputs_of(ascii_books[:4]), "--mapper", AWK_MAPPER, "--reducer", AWK_REDUCER, "--reduce", "2"]
    streaming(*args, "--output", str(tmp_path / "seq"), "--sequential")
    result = run_cli("streaming", *args, "--combiner", AWK_REDUCER, "--output", str(tmp_path / "out"), "-w", "2")
    assert_same_output(tmp_path / "seq", tmp_path / "out")
    counted = dict(line.strip().split(" = ") for line in result.stderr.splitlines() if " = " in line)
    records_in, records_out = (int(counted[f"mapreduce.COMBINE_{s}_RECORDS"]) for s in ("INPUT", "OUTPUT"))
    assert records_out < records_in / 3


def test_a_combiner_that_changes_keys_fails_the_job(ascii_books, tmp_path):
    args = [*inputs_of(ascii_books[:1]), "--mapper", AWK_MAPPER, "--reducer", AWK_REDUCER, "-w", "1"]
    result = streaming(*args, "--combiner", "sed s/^/x/", "--output", str(tmp_path / "out"), check=False)
    assert result.returncode == 1 and "must keep its input's keys" in result.stderr, result.stderr[-2000:]


def test_a_map_only_grep_gives_the_lines_grep_gives(gutenberg, tmp_path):
    out = tmp_path / "out"
    args = ["--mapper", "grep -i whale", "--reduce", "0", "-D", "stream.non.zero.exit.is.failure=false"]
    streaming(*inputs_of(gutenberg), *args, "--output", str(out), "-w", "2")  # grep exits 1 on a split with no match
    expected = b"".join(subprocess.run(["grep", "-i", "whale", book], capture_output=True).stdout for book in gutenberg)
    assert b"".join(part.read_bytes() for part in sorted(out.glob("part-*"))) == expected
    assert expected.count(b"\n") > 3


def test_shipped_python_scripts_with_settings_and_counters_from_stderr(gutenberg, tmp_path):
    mapper = tmp_path / "mapper.py"
    mapper.write_text(
        "import os, sys\n"
        "n = 0\n"
        "for line in sys.stdin:\n"
        "    n += 1\n"
        "    print(os.environ['my_prefix'] + str(len(line) % 7), 1, sep='\\t')\n"
        "print(f'reporter:counter:Lines,seen,{n}', file=sys.stderr)\n"
        "print('reporter:status:done', file=sys.stderr)\n"
    )
    reducer = tmp_path / "reducer.py"
    reducer.write_text(
        "import sys\n"
        "from itertools import groupby\n"
        "pairs = (line.rstrip('\\n').split('\\t') for line in sys.stdin)\n"
        "for key, group in groupby(pairs, key=lambda p: p[0]):\n"
        "    print(key, sum(int(v) for _, v in group), sep='\\t')\n"
    )
    args = [
        *inputs_of(gutenberg[:3]),
        *("--mapper", f"{sys.executable} mapper.py", "--reducer", f"{sys.executable} reducer.py"),
        *("--file", str(mapper), "--file", str(reducer), "-D", "my.prefix=len", "--reduce", "2"),
    ]
    result = run_cli("streaming", *args, "--output", str(tmp_path / "out"), "-w", "2", "--split-size", "200k")
    run_cli("streaming", *args, "--output", str(tmp_path / "seq"), "--split-size", "200k", "--sequential")
    assert_same_output(tmp_path / "seq", tmp_path / "out")
    lines = sum(len(Path(book).read_bytes().splitlines()) for book in gutenberg[:3])
    assert f"Lines.seen = {lines}" in result.stderr
    counts = dict(line.split("\t") for line in read_output(tmp_path / "out"))
    assert sorted(counts) == [f"len{i}" for i in range(7)] and sum(map(int, counts.values())) == lines


def test_commands_know_their_task_on_the_cluster_and_in_one_process(gutenberg, tmp_path):
    says = "sh -c 'cat > /dev/null; echo \"$mapreduce_task_ismap $mapreduce_task_partition\"'"
    args = [*inputs_of(gutenberg[:3]), "--mapper", says, "--reducer", says, "--reduce", "3"]
    streaming(*args, "--output", str(tmp_path / "out"), "-w", "2")
    streaming(*args, "--output", str(tmp_path / "seq"), "--sequential")
    assert_same_output(tmp_path / "seq", tmp_path / "out")
    parts = sorted((tmp_path / "out").glob("part-*"))
    assert [part.read_text() for part in parts] == [f"false {i}\n" for i in range(3)]
    maps = tmp_path / "maps"
    streaming(*inputs_of(gutenberg[:3]), "--mapper", says, "--reduce", "0", "--output", str(maps))
    assert [part.read_text() for part in sorted(maps.glob("part-*"))] == [f"true {i}\n" for i in range(3)]


def test_a_failing_command_fails_the_job_with_its_exit_status_and_stderr(gutenberg, tmp_path):
    mapper = "sh -c 'cat > /dev/null; echo something broke >&2; exit 3'"
    result = streaming(
        *inputs_of(gutenberg[:1]), "--mapper", mapper, "--reducer", "cat", "--output", str(tmp_path / "out"),
        "-w", "1", check=False,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "exited with status 3" in result.stderr and "something broke" in result.stderr
    assert not (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.parametrize(
    "args, says",
    [
        (["--mapper", "no-such-command-here"], "'no-such-command-here' is not a command here"),
        (["--mapper", "cat", "--reducer", "'unclosed"], "is not a command line"),
        (["--mapper", "cat", "-D", "novalue"], "expected NAME=VALUE"),
        (["--mapper", "cat", "--reduce", "2"], "map-only"),
        (["--mapper", "cat", "--combiner", "cat"], "a combiner needs a reducer"),
    ],
)
def test_bad_streaming_options_exit_2_before_any_work(gutenberg, tmp_path, args, says):
    out = tmp_path / "out"
    result = streaming(*inputs_of(gutenberg[:1]), *args, "--output", str(out), check=False)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not out.exists()


def test_a_worker_killed_outright_leaves_no_command_running(tmp_path):
    # A mapper that reads no stdin, writes nothing and ignores the polite signals: only its
    # worker's guardian can end it, and what it started, once the worker is SIGKILLed.
    pids = tmp_path / "pids"
    mapper = f"sh -c 'trap \"\" INT TERM HUP; sleep 600 & echo $$ $! > {pids}.tmp; mv {pids}.tmp {pids}; wait'"
    text = tmp_path / "in.txt"
    text.write_text("one line\n")
    endpoint = free_endpoint()
    serve = ["streaming", "--input", str(text), "--mapper", mapper, "--reduce", "0", "--quiet"]
    serve += ["--output", str(tmp_path / "out"), "--bind", endpoint, "--min-workers", "1"]
    worker_args = ["worker", "--connect", endpoint, "--scratch", str(tmp_path / "scratch")]
    started = [
        subprocess.Popen(mapreduce_command(*args), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for args in (serve, worker_args)
    ]
    worker = started[1]
    shell = None
    try:
        deadline = time.monotonic() + 60
        while not pids.exists():
            for process in started:
                assert process.poll() is None, f"exited {process.returncode}: {process.stderr.read().decode()}"
            assert time.monotonic() < deadline, "the mapper never started"
            time.sleep(0.05)
        shell, child = map(int, pids.read_text().split())
        assert os.getpgid(child) == shell != os.getpgid(worker.pid)  # a group of its own
        worker.send_signal(signal.SIGKILL)
        worker.wait()
        assert gone(shell) and gone(child), "the mapper outlived its worker"
    finally:
        for process in started:
            process.kill()
            process.wait()
        if shell is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(shell, signal.SIGKILL)


SLOW_WORKER_MAPPER = """import os, sys, time
if os.environ.get("SLOW_WORKER"):  # this worker's attempts hang until they are cancelled
    task = os.environ["mapreduce_task_partition"]
    with open(os.path.join(os.environ["PIDS"], f"{task}-{os.getpid()}"), "w"):
        pass
    time.sleep(600)
for line in sys.stdin:
    for word in line.split():
        print(word, 1, sep="\\t")
"""
# On the cluster the reducers wait for the test's go-ahead (a file), so the job, and with it the
# slow worker, is still there while the test looks at the cancelled attempt.
HELD_REDUCER = 'sh -c \'while [ -n "$HOLD" ] && [ ! -e "$HOLD" ]; do sleep 0.05; done; exec uniq -c\''


def test_a_cancelled_attempt_of_a_straggler_takes_its_command_with_it(tmp_path):
    """A worker whose mapper hangs gets its maps backed up; when a backup wins, the hung
    attempt is cancelled and its command killed, while that worker still runs."""
    pids, hold = tmp_path / "pids", tmp_path / "go"
    pids.mkdir()
    (tmp_path / "mapper.py").write_text(SLOW_WORKER_MAPPER)
    inputs = []
    for i in range(12):
        inputs.append(tmp_path / f"in{i:02d}.txt")
        inputs[-1].write_text(f"w{i % 5} common\n" * 200)
    args = [*inputs_of([str(p) for p in inputs]), "--mapper", f"{sys.executable} mapper.py"]
    args += ["--reducer", HELD_REDUCER, "--reduce", "2", "--file", str(tmp_path / "mapper.py")]
    streaming(*args, "--output", str(tmp_path / "seq"), "--sequential")
    out, events, endpoint = tmp_path / "out", tmp_path / "events.jsonl", free_endpoint()
    serve = ["streaming", *args, "--output", str(out), "--bind", endpoint, "--events", str(events), "--quiet"]
    coordinator = subprocess.Popen(mapreduce_command(*serve, *FAST, *TIMEOUT), stderr=subprocess.PIPE, text=True)
    worker = mapreduce_command("worker", "--connect", endpoint, "--scratch", str(tmp_path / "scratch"), *FAST)
    env = {**os.environ, "PIDS": str(pids), "HOLD": str(hold)}
    slow = subprocess.Popen(worker, env={**env, "SLOW_WORKER": "1"}, stderr=subprocess.DEVNULL)
    started = [slow]
    try:
        wait_for_log(events, lambda log: of(log, "task_assigned", worker=1), "the slow worker's first map",
                     coordinator, coordinator.stderr.read)  # fmt: skip
        started += [subprocess.Popen(worker, env=env, stderr=subprocess.DEVNULL) for _ in range(2)]
        cancelled = "a cancelled map attempt of the slow worker"
        log = wait_for_log(events, lambda log: of(log, "task_cancelled", worker=1, phase="map"), cancelled,
                           coordinator, coordinator.stderr.read)  # fmt: skip
        task = of(log, "task_cancelled", worker=1, phase="map")[0]["task"]
        (hung,) = [int(p.name.split("-")[1]) for p in pids.iterdir() if p.name.startswith(f"{task}-")]
        assert gone(hung), "the cancelled attempt's mapper is still running"
        # The reducers wait for the go-ahead: the job, and its slow worker, are not over yet.
        assert slow.poll() is None and not of(event_log(events), "worker_left", worker=1)
        hold.touch()
        assert coordinator.wait(timeout=120) == 0, coordinator.stderr.read()
    finally:
        hold.touch()
        kill_all([coordinator, *started])
    assert_same_output(tmp_path / "seq", out)
    assert all(gone(int(p.name.split("-")[1])) for p in pids.iterdir())
