"""The command line: every bad input exits non-zero before any work, with one plain message."""

from __future__ import annotations

import os

import pytest
from click.testing import CliRunner

from mapreduce.cli import cli
from mapreduce.output import read_output


def invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text("the cat and the hat\nthe end\n")
    return str(path)


def assert_refused(result, *fragments: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


def test_seq_counts_words(text, tmp_path):
    out = tmp_path / "out"
    result = invoke("seq", "wordcount", text, "--output", str(out), "--reduce", "1")
    assert result.exit_code == 0, result.output
    assert list(read_output(out)) == ["and\t1\n", "cat\t1\n", "end\t1\n", "hat\t1\n", "the\t3\n"]
    assert (out / "_SUCCESS").exists()


def test_apps_lists_builtins():
    result = invoke("apps")
    assert result.output.split() == ["grep", "indexer", "join", "sort", "topwords", "wordcount"]


@pytest.mark.parametrize("command", ["seq", "run", "coordinator"])
def test_missing_input(command, tmp_path):
    out = tmp_path / "out"
    result = invoke(command, "wordcount", str(tmp_path / "nope.txt"), "--output", str(out))
    assert_refused(result, "nope.txt", "does not exist")
    assert not out.exists()  # nothing was created


@pytest.mark.parametrize("command", ["seq", "run", "coordinator"])
def test_input_folder_with_no_input_files(command, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "_SUCCESS").write_text("")
    (folder / "sub").mkdir()
    out = tmp_path / "o"
    result = invoke(command, "wordcount", str(folder), "--output", str(out))
    assert_refused(result, f"input folder '{folder}' holds no input files")
    assert not out.exists()


def test_input_folder_is_its_files(text, tmp_path):
    out = tmp_path / "out"
    result = invoke("seq", "wordcount", str(tmp_path), "--output", str(out), "--reduce", "1")
    assert result.exit_code == 0, result.output
    assert list(read_output(out)) == ["and\t1\n", "cat\t1\n", "end\t1\n", "hat\t1\n", "the\t3\n"]


def test_gz_input_that_is_not_gzip_is_refused_before_any_work(tmp_path):
    fake = tmp_path / "words.gz"
    fake.write_text("the cat\n")
    out = tmp_path / "o"
    assert_refused(invoke("seq", "wordcount", str(fake), "--output", str(out)), "words.gz", "not gzip-compressed")
    assert not out.exists()


def test_damaged_gz_input_fails_seq_naming_the_file(tmp_path):
    import gzip

    damaged = tmp_path / "words.gz"
    damaged.write_bytes(gzip.compress(b"the cat and the hat\n" * 5000)[:-100])
    result = invoke("seq", "wordcount", str(damaged), "--output", str(tmp_path / "o"))
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert f"input '{damaged}' is a damaged gzip file: reading failed after" in result.output


def test_compress_choices_are_the_compressions():
    from mapreduce.cli import COMPRESSIONS
    from mapreduce.output import Compression

    assert [c.value for c in Compression] == COMPRESSIONS


def test_seq_compress_gzip(text, tmp_path):
    out = tmp_path / "out"
    result = invoke("seq", "wordcount", text, "--output", str(out), "--reduce", "2", "--compress", "gzip")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000.gz", "part-00001.gz"]
    assert sorted(read_output(out)) == ["and\t1\n", "cat\t1\n", "end\t1\n", "hat\t1\n", "the\t3\n"]


def test_no_inputs(tmp_path):
    result = invoke("run", "wordcount", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "Missing argument" in result.output and "Traceback" not in result.output


def test_unknown_app(text, tmp_path):
    assert_refused(
        invoke("run", "nosuchapp", text, "--output", str(tmp_path / "o")), "unknown app 'nosuchapp'", "wordcount"
    )


def test_broken_app_file(text, tmp_path):
    app = tmp_path / "broken.py"
    app.write_text("def map(k, v):\n    return [\n")
    assert_refused(
        invoke("run", str(app), text, "--output", str(tmp_path / "o")), "broken.py", "failed to import", "SyntaxError"
    )


def test_app_without_reduce_is_map_only(text, tmp_path):
    app = tmp_path / "halfapp.py"
    app.write_text("def map(k, v):\n    yield k, 1\n")
    refused = invoke("seq", str(app), text, "--reduce", "2", "--output", str(tmp_path / "o"))
    assert_refused(refused, "has no reduce: it is map-only, so --reduce must be 0, got 2")
    assert invoke("seq", str(app), text, "--output", str(tmp_path / "o2")).exit_code == 0
    assert (tmp_path / "o2" / "part-00000").read_text() == f"{text}\t1\n"


def test_app_file_missing(text, tmp_path):
    assert_refused(
        invoke("seq", str(tmp_path / "gone.py"), text, "--output", str(tmp_path / "o")), "gone.py", "does not exist"
    )


def test_grep_needs_its_pattern(text, tmp_path):
    assert_refused(invoke("seq", "grep", text, "--output", str(tmp_path / "o")), "pattern=REGEX")
    assert_refused(
        invoke("seq", "grep", text, "--param", "pattern=(", "--output", str(tmp_path / "o2")), "rejected its parameters"
    )


def test_bad_param_syntax(text, tmp_path):
    result = invoke("seq", "grep", text, "--param", "pattern", "--output", str(tmp_path / "o"))
    assert result.exit_code == 2 and "NAME=VALUE" in result.output


def test_output_folder_with_files_is_refused_and_untouched(text, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    assert_refused(invoke("seq", "wordcount", text, "--output", str(out)), "already holds", "--overwrite")
    assert_refused(
        invoke("seq", "wordcount", text, "--output", str(out), "--overwrite"), "precious.txt", "not mapreduce output"
    )
    assert sorted(os.listdir(out)) == ["precious.txt"]
    assert (out / "precious.txt").read_text() == "keep me"


def test_overwrite_replaces_an_earlier_output(text, tmp_path):
    out = tmp_path / "out"
    assert invoke("seq", "wordcount", text, "--output", str(out), "--reduce", "4").exit_code == 0
    assert_refused(invoke("seq", "wordcount", text, "--output", str(out)), "already holds")
    other = tmp_path / "other.txt"
    other.write_text("zebra\n")
    result = invoke("seq", "wordcount", str(other), "--output", str(out), "--reduce", "2", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000", "part-00001"]  # the wider old job's parts are gone
    assert list(read_output(out)) == ["zebra\t1\n"]


def test_output_folder_cannot_be_created(text, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert_refused(invoke("seq", "wordcount", text, "--output", str(blocker / "out")), "cannot create output folder")
    assert_refused(invoke("seq", "wordcount", text, "--output", str(blocker)), "is a file")


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--reduce", "-1"], "must be 0 (a map-only job) or more"),
        (["--split-size", "lots"], "is not a size"),
        (["--max-attempts", "0"], "at least 1"),
        (["--worker-timeout", "0.5"], "must exceed"),
        (["--workers", "0"], "at least 1"),
    ],
)
def test_bad_numbers(args, fragment, text, tmp_path):
    result = invoke("run", "wordcount", text, "--output", str(tmp_path / "o"), *args)
    assert result.exit_code == 2 and fragment in result.output and "Traceback" not in result.output


def test_coordinator_cannot_bind(text, tmp_path):
    assert_refused(
        invoke(
            "coordinator",
            "wordcount",
            text,
            "--output",
            str(tmp_path / "o"),
            "--bind",
            "tcp://256.0.0.1:1",
            "--insecure",
        ),
        "cannot bind",
    )


def test_progress_is_a_bar_on_a_terminal_and_plain_lines_elsewhere():
    import io

    from helpers import join, make, map_done, one
    from mapreduce.cli import Progress
    from mapreduce.wire import messages as p

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    s = make(n_maps=2, n_reduce=1)
    a, actions = join(s, b"A")
    plain, terminal = io.StringIO(), Terminal()
    shows = [Progress(plain, every_plain=3600), Progress(terminal, every=0)]
    for show in shows:
        show(s.view(0.5))
    actions = map_done(s, 1.0, b"A", a, one(actions, b"A", p.AssignMap), [3])
    for show in shows:
        show(s.view(1.0))  # same phase: the plain one waits; the bar redraws
    map_done(s, 2.0, b"A", a, one(actions, b"A", p.AssignMap), [3])  # every map done: a new phase shows at once
    for show in shows:
        show(s.view(2.0))
        show.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("progress ") and "maps 0/2" in lines[0] and "maps 2/2" in lines[1]
    assert "MB/s" in lines[0] and "workers 1" in lines[0]
    drawn = terminal.getvalue().split("\r")[1:]
    assert len(drawn) == 3 and "[" + "#" * 10 + "." * 10 + "] 1/2" in drawn[1] and terminal.getvalue().endswith("\n")


def test_an_app_that_needs_a_number_of_reduces_refuses_another(text, tmp_path):
    app = tmp_path / "ranked.py"
    app.write_text("def map(k, v):\n    yield k, 1\ndef reduce(k, v):\n    return 0\nn_reduce = 1\n")
    refused = invoke("seq", str(app), text, "--reduce", "2", "--output", str(tmp_path / "o"))
    assert_refused(refused, "needs exactly 1 reduce task(s), got --reduce 2")


def test_seq_with_a_side_file_reads_inputs_relative_to_where_it_runs(text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "stopwords.txt").write_text("the\n")
    result = invoke("seq", "wordcount", "words.txt", "--output", "out", "--reduce", "1", "--file", "stopwords.txt")
    assert result.exit_code == 0, result.output
    assert list(read_output(tmp_path / "out"))[-1] == "the\t3\n"


def test_no_command_declares_an_option_twice():
    for name, command in cli.commands.items():
        flags = [flag for param in command.params for flag in (*param.opts, *param.secondary_opts)]
        assert sorted(flags) == sorted(set(flags)), f"mapreduce {name} declares an option twice"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["wordcount", "--mapper", "cat"], "--mapper makes the job a streaming job, which takes no APP or INPUTS"),
        (["--mapper", "cat", "words.txt"], "takes no APP or INPUTS (got 'words.txt'): give its inputs with --input"),
        (["--reducer", "cat"], "--reducer is for a streaming job: give its --mapper too"),
        (["wordcount", "--combiner", "cat", "-D", "a=b"], "--combiner, -D are for a streaming job"),
        (["--input", "words.txt"], "--input is for a streaming job"),
        (["--mapper", "cat", "--param", "n=3"], "--param is for an APP's init(params)"),
        (["--mapper", "no-such-command-here"], "the mapper 'no-such-command-here' is not a command here"),
        (["--mapper", "cat", "--reducer", "no-such-command-here"], "the reducer 'no-such-command-here' is not"),
        (["--mapper", "cat", "--reducer", "cat", "--combiner", "'"], 'the combiner "\'" is not a command line'),
        (["--mapper", "cat", "--combiner", "cat"], "a combiner needs a reducer"),
        (["--mapper", "cat", "--reduce", "2"], "without a reducer is map-only: --reduce must be 0, got 2"),
        (["--mapper", "cat", "-D", "no-equals"], "expected NAME=VALUE"),
        (["--mapper", "cat", "--file", "missing.py"], "--file 'missing.py' does not exist"),
        (["wordcount", "--file", "missing.py"], "--file 'missing.py' does not exist"),  # side files serve apps too
        (["wordcount", "--mrjob", "job.py in.txt"], "--mrjob names the job and its inputs: it takes no APP"),
        (["--mrjob", "job.py in.txt", "--mapper", "cat", "-D", "a=b"], "it takes no --mapper, -D"),
        (["--mrjob", "no_such_job.py in.txt"], "the job script 'no_such_job.py' does not exist"),
        (["--mrjob", "'"], '--mrjob "\'" is not a command line'),
    ],
)
def test_crashtest_refuses_streaming_options_that_do_not_fit_before_any_work(
    args, message, text, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))  # where the corpus, oracle and cluster would go
    result = invoke("crashtest", *args)
    assert_refused(result, message)
    assert len(result.output.splitlines()) == 1 and result.output.startswith("error: "), result.output
    assert list(scratch.iterdir()) == []
