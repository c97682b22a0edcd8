"""An mrjob job's steps read as streaming steps: which command each task runs, with what
settings and files (nothing is run here: tests/process/test_mrjob.py runs them)."""

from __future__ import annotations

import sys

import pytest

from mapreduce import mrjobs
from mapreduce.errors import UsageError
from mapreduce.job import InputFormat
from mapreduce.streaming import PYTHON, Chain, RawStreamingMap, StreamingMap, StreamingRecordMap

STEPS_JOB = """
from mrjob.job import MRJob
from mrjob.step import MRStep


class MRSteps(MRJob):
    FILES = ["data.txt#lookup.txt"]
    SORT_VALUES = True

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--level", default="1")
        self.add_file_arg("--table")

    def steps(self):
        return [
            MRStep(mapper=self.tokens, mapper_pre_filter="grep -v '^#'"),
            MRStep(mapper=self.tokens, combiner=self.total, reducer=self.total, jobconf={"mapreduce.job.reduces": "3"}),
            MRStep(mapper=self.tokens),
            MRStep(reducer=self.total),
        ]

    def tokens(self, key, value):
        yield key, value

    def total(self, key, values):
        yield key, sum(values)
"""


@pytest.fixture
def job_script(tmp_path):
    (tmp_path / "data.txt").write_text("x\n")
    (tmp_path / "table.csv").write_text("a,1\n")
    script = tmp_path / "mr_steps.py"
    script.write_text(STEPS_JOB)
    return script


def words(command) -> list[str]:
    return list(command.argv)


def test_steps_become_stages_at_each_reducer_with_map_only_steps_fused(job_script, tmp_path):
    run = mrjobs.load(str(job_script), ["--level", "2", "--table", str(tmp_path / "table.csv"), "in.txt"], 2)
    app = run.app
    assert len(app.steps) == 2 and app.step(0).map is app.map
    first, second = app.step(0), app.step(1)
    # Stage 1: step 0's mapper (behind its pre-filter) then step 1's mapper; step 1's combiner and reducer.
    assert isinstance(first.map, StreamingMap) and first.map.input_uri
    pre, step1 = first.map.command.commands
    assert pre.argv[:2] == ("sh", "-c") and pre.argv[2].startswith("grep -v '^#' | @PYTHON@ mr_steps.py --step-num=0")
    expected_args = ["--level", "2", "--table", "table.csv"]  # the file option by its name in the task folder
    assert words(step1) == [PYTHON, "mr_steps.py", "--step-num=1", "--mapper", *expected_args]
    assert words(first.combine.command)[2:4] == ["--step-num=1", "--combiner"]
    # Step 2 is map-only: it runs in the reduce task after step 1's reducer.
    reducer, fused = first.reduce.command.commands
    assert words(reducer)[2:4] == ["--step-num=1", "--reducer"] and words(fused)[2:4] == ["--step-num=2", "--mapper"]
    # Step 3 is reducer-only: the identity mapper over what the step before wrote.
    assert isinstance(second.map, StreamingRecordMap) and second.map.command == Chain()
    assert words(second.reduce.command.commands[0])[2:4] == ["--step-num=3", "--reducer"]
    assert run.n_reduce == 3 and second.n_reduce == 2  # a step's jobconf, else the count given
    assert first.sort_values and second.sort_values
    assert run.files == (
        f"{job_script.parent / 'data.txt'}#lookup.txt",
        f"{job_script}#mr_steps.py",
        f"{tmp_path / 'table.csv'}#table.csv",
    )


def test_jobconf_and_cmdenv_reach_each_command_under_every_hadoop_name(job_script):
    run = mrjobs.load(str(job_script), ["-D", "mapred.job.name=x", "--cmdenv", "TZ=UTC", "in.txt"])
    env = run.app.step(0).combine.command.env
    assert env["mapreduce_job_reduces"] == env["mapred_reduce_tasks"] == "3"  # step 1's own jobconf
    assert env["mapred_job_name"] == env["mapreduce_job_name"] == "x"
    assert env["stream_num_map_output_key_fields"] == "2"  # SORT_VALUES, as mrjob sets it
    assert env["TZ"] == "UTC"
    first_mapper = run.app.map.command.commands[0]
    assert "mapreduce_job_reduces" not in first_mapper.env  # step 0 has no such jobconf


def test_a_mapper_raw_job_reads_whole_files_as_bytes(tmp_path):
    script = tmp_path / "mr_raw.py"
    script.write_text(
        "from mrjob.job import MRJob\nfrom mrjob.step import MRStep\n"
        "class MRRaw(MRJob):\n"
        "    def steps(self):\n"
        "        return [MRStep(mapper_raw=self.whole, reducer=self.count), MRStep(mapper=self.again)]\n"
        "    def whole(self, path, uri):\n        yield uri, 1\n"
        "    def count(self, key, values):\n        yield key, sum(values)\n"
        "    def again(self, key, value):\n        yield key, value\n"
    )
    app = mrjobs.load(str(script), ["in.txt"]).app
    assert app.whole_files and app.input_format is InputFormat.BYTES and not app.steps
    assert isinstance(app.map, RawStreamingMap) and app.map.then == Chain()
    assert words(app.map.command)[2:4] == ["--step-num=0", "--mapper"]
    assert [words(c)[2:4] for c in app.reduce.command.commands] == [
        ["--step-num=0", "--reducer"],
        ["--step-num=1", "--mapper"],
    ]


def test_a_job_without_reducers_is_map_only(tmp_path):
    script = tmp_path / "mr_upper.py"
    script.write_text(
        "from mrjob.job import MRJob\nclass MRUpper(MRJob):\n    def mapper_cmd(self):\n        return 'tr a-z A-Z'\n"
    )
    run = mrjobs.load(str(script), ["in.txt"])
    assert run.app.reduce is None and run.n_reduce == 0
    assert run.app.map.command.commands[0].argv == ("tr", "a-z", "A-Z")


def test_a_missing_mrjob_package_is_a_plain_usage_error(job_script, monkeypatch):
    monkeypatch.setitem(sys.modules, "mrjob.job", None)  # import mrjob.job raises ImportError
    with pytest.raises(UsageError, match=r"needs the mrjob package .*mrjob\]"):
        mrjobs.load(str(job_script), ["in.txt"])


@pytest.mark.parametrize(
    "extra, says",
    [
        (["--jobconf", "mapreduce.job.reduces=none"], "jobconf reduces = 'none'"),
        (["-"], "does not read standard input"),
        (["--py-files", "x.zip"], "py_files option cannot be used here"),
    ],
)
def test_what_cannot_run_is_refused(job_script, extra, says):
    with pytest.raises(UsageError, match=says):
        mrjobs.load(str(job_script), [*extra, *([] if extra == ["-"] else ["in.txt"])])
