"""A streaming command as a task runs it: streamed both ways, its process group always killed."""

from __future__ import annotations

import sys
import threading

import pytest

from helpers import gone
from mapreduce import counters
from mapreduce.errors import AppError, UsageError
from mapreduce.guardian import GUARDIAN
from mapreduce.job import Record, task_running
from mapreduce.streaming import PYTHON, Chain, Command, RawStreamingMap, parse_command, record, settings


def command(text: str, **more) -> Command:
    return Command(parse_command(text, "the mapper"), "mapper", **more)


def test_lines_in_lines_out_without_their_newlines():
    assert list(command("cat").lines(["a\tb\n", "c\n", "no newline at the end"])) == [
        "a\tb",
        "c",
        "no newline at the end",
    ]


def test_no_deadlock_when_the_command_writes_more_than_a_pipe_holds_before_reading():
    # 4 MB out before reading any of the 4 MB in: a pipe holds 64 KB.
    text = "sh -c 'head -c 4000000 /dev/zero | tr \"\\000\" x; echo; wc -c'"
    out = list(command(text).lines(["y" * 1_000_000] * 4))
    assert len(out[0]) == 4_000_000 and out[1].strip() == "4000000"


def test_what_it_leaves_running_is_killed_with_it(tmp_path):
    pid_file = tmp_path / "pid"
    text = f"sh -c 'sleep 300 & echo $! > {pid_file}; cat'"
    assert list(command(text).lines(["x\n"])) == ["x"]
    child = int(pid_file.read_text())
    assert gone(child)


def test_a_consumer_that_stops_early_kills_the_command(tmp_path):
    pid_file = tmp_path / "pid"
    lines = command(f"sh -c 'echo $$ > {pid_file}; yes'").lines([])
    assert next(lines) == "y"
    lines.close()
    assert gone(int(pid_file.read_text()))


def test_its_group_is_with_the_guardian_while_it_runs_and_only_then():
    lines = command("sh -c 'echo $$; cat'").lines(["x\n"])
    pid = int(next(lines))
    assert pid in GUARDIAN.watched
    assert list(lines) == ["x"]
    assert pid not in GUARDIAN.watched
    stopped = command("sh -c 'echo $$; sleep 600'").lines([])
    pid = int(next(stopped))
    assert pid in GUARDIAN.watched
    stopped.close()  # killed by the task's end, not by the guardian
    assert pid not in GUARDIAN.watched and gone(pid)


def test_an_input_that_raises_stops_the_command_and_the_error_comes_out():
    class Cancelled(Exception):
        pass

    def text_in():
        yield "a\n"
        raise Cancelled()

    with pytest.raises(Cancelled):
        list(command("cat").lines(text_in()))


def test_a_non_zero_exit_is_an_error_with_the_stderr_tail_unless_accepted():
    failing = "sh -c 'cat; for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo line$i >&2; done; exit 4'"
    with pytest.raises(AppError, match="exited with status 4") as info:
        list(command(failing).lines(["out\n"]))
    assert "line12" in str(info.value) and "line2\n" not in str(info.value)  # the last lines only
    assert list(command(failing, exit_status_counts=False).lines(["out\n"])) == ["out"]
    with pytest.raises(AppError, match="killed by signal 9"):  # a signal always fails it
        list(command("sh -c 'kill -9 $$'", exit_status_counts=False).lines([]))


def test_reporter_counters_count_into_the_task_and_other_stderr_is_logged(caplog):
    text = "sh -c 'echo reporter:counter:G,a b,2 >&2; echo reporter:counter:G,a b,3 >&2; echo hello >&2; cat'"
    counts = counters.Counters()
    with counters.counting(counts), caplog.at_level("INFO"):
        assert list(command(text).lines(["x\n"])) == ["x"]
    assert counts["G", "a b"] == 5
    assert "hello" in caplog.text


def test_settings_reach_the_environment_with_dots_as_underscores():
    env = settings(["mapreduce.job.name=words", "x=a=b"])
    assert env == {"mapreduce_job_name": "words", "x": "a=b"}
    assert list(command("sh -c 'echo $mapreduce_job_name'", env=env).lines([])) == ["words"]
    with pytest.raises(UsageError, match="NAME=VALUE"):
        settings(["=v"])


def test_a_line_is_a_record_split_at_its_first_tab():
    assert record("k\tv\tw") == ("k", "v\tw")
    assert record("no tab") == Record("no tab")
    assert record("k\t") == ("k", "")


def test_a_chain_pipes_each_commands_lines_into_the_next_and_none_is_the_identity():
    chain = Chain((command("tr a-z A-Z"), command("grep -v SKIP"), command("sed s/^/>/")))
    assert list(chain.lines(["ab\nskip me\n", "cd"])) == [">AB", ">CD"]
    assert list(Chain().lines(["a\tb\nc", "d\n", "e"])) == ["a\tb", "cd", "e"]


def test_a_chain_whose_last_command_stops_early_kills_the_ones_before(tmp_path):
    pid_file = tmp_path / "pid"
    first = command(f"sh -c 'echo $$ > {pid_file}; yes'")  # writes forever
    assert list(Chain((first, command("head -n 3"))).lines([])) == ["y", "y", "y"]
    assert gone(int(pid_file.read_text()))


def test_python_in_a_command_is_the_interpreter_running_it_even_inside_shell_text():
    plain = Command((PYTHON, "-c", "import sys; print(sys.executable)"), "mapper")
    assert list(plain.lines([])) == [sys.executable]
    shelled = Command(("sh", "-c", f"echo hi | {PYTHON} -c 'import sys; print(sys.stdin.read().strip())'"), "mapper")
    assert list(shelled.lines([])) == ["hi"]


def test_a_raw_mapper_gets_a_local_copy_of_its_whole_file_and_the_files_uri(tmp_path):
    script = (
        "import sys; path, uri = sys.argv[1:]; "
        "print(path.rsplit('.', 1)[-1], uri, open(path, 'rb').read().hex(), sep='\\t')"
    )
    raw = RawStreamingMap(Command((PYTHON, "-c", script), "mapper"), Chain((command("sed s/^/+/"),)))
    data = "é\n".encode() + b"\xff\x00 binary"
    path = str(tmp_path / "doc.warc.gz")  # decompressed already: the copy keeps .warc, as mrjob's wrapper does
    assert list(raw(path, data)) == [("+warc", f"file://{path}\t{data.hex()}")]


def test_a_cancelled_attempt_kills_a_command_that_writes_nothing(tmp_path):
    pid_file = tmp_path / "pid"
    cancelled = threading.Event()
    silent = command(f"sh -c 'echo $$ > {pid_file}; exec sleep 600'")
    with task_running("map", 0, cancelled):
        lines = silent.lines([])
        threading.Timer(0.3, cancelled.set).start()
        with pytest.raises(AppError, match="killed by signal 9"):
            list(lines)  # blocked reading until the cancel kills the group
    assert gone(int(pid_file.read_text()), within=1)
