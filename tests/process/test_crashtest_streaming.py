"""`mapreduce crashtest` of a Hadoop Streaming job: Python scripts as mapper and reducer,
shipped with --file, killed with their workers, every round equal to the sequential run."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys

from helpers import crashtest_table, mapreduce_command
from mapreduce.tools.corpus import write_corpus

# The -D setting reaches the commands as wordcount_min_length: without it the mapper fails,
# and so would the oracle and every round.
MAPPER = """\
import os
import re
import sys

shortest = int(os.environ["wordcount_min_length"])
for line in sys.stdin:
    for word in re.findall(r"\\w+", line.lower()):
        if len(word) >= shortest:
            print(f"{word}\\t1")
"""

REDUCER = """\
import sys

word, count = None, 0
for line in sys.stdin:
    key, _, value = line.rstrip("\\n").partition("\\t")
    if key != word:
        if word is not None:
            print(f"{word}\\t{count}")
        word, count = key, 0
    count += int(value)
if word is not None:
    print(f"{word}\\t{count}")
"""


def test_crashtest_of_a_streaming_word_count_kills_workers_and_every_round_matches(tmp_path):
    scripts, scratch = tmp_path / "job", tmp_path / "tmp"
    scripts.mkdir()
    scratch.mkdir()
    (scripts / "mapper.py").write_text(MAPPER)
    (scripts / "reducer.py").write_text(REDUCER)
    write_corpus(tmp_path / "in", 200_000, 2, seed=11)  # 2 files: 4 maps of 48k or so
    python = shlex.quote(sys.executable)  # starts faster than a system python3 with many packages
    result = subprocess.run(
        mapreduce_command(
            "crashtest",
            "--mapper", f"{python} mapper.py",  # run in the task's folder, where --files are
            "--reducer", f"{python} reducer.py",
            "--file", "job/mapper.py",
            "--file", "job/reducer.py",
            "-D", "wordcount.min.length=2",
            "--input", "in",  # relative, as the --files: the oracle reads them from here too
            "--rounds", "1",
            "--workers", "2",
            "--split-size", "48k",
            "--reduce", "2",
            "--kill-every", "0.7",
            "--pause-probability", "0",  # kills only: a pause costs the worker timeout
            "--worker-timeout", "2",
            "--heartbeat-interval", "0.3",
            "--seed", "1",
        ),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(scratch)},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oracle: mapreduce seq streaming over 1 input(s)" in result.stderr
    rows = crashtest_table(result.stdout)
    assert [rows[r]["result"] for r in ("base", "1")] == ["OK", "OK"]  # output (and counters) equal the oracle's
    assert rows["all"]["result"] == "1/1 OK"
    assert int(rows["all"]["kills"]) > 0  # the first fault strikes when the first task finishes
    assert int(rows["all"]["dead"]) > 0  # and the coordinator noticed
    assert list(scratch.iterdir()) == []  # oracle, outputs, cluster scratch and task folders: all removed


def test_crashtest_of_an_mrjob_job_kills_workers_and_every_round_matches(tmp_path):
    """mr_word_freq_count (a combiner; mrjob's own example) under kills, its tasks run as
    mrjob runs them: every round equal to its sequential run."""
    import mrjob.examples

    script = os.path.join(os.path.dirname(mrjob.examples.__file__), "mr_word_freq_count.py")
    inputs = [str(p) for p in write_corpus(tmp_path / "in", 60_000, 2, seed=5)]
    result = subprocess.run(
        mapreduce_command(
            "crashtest", "--mrjob", shlex.join([script, *inputs]), "--rounds", "1", "--workers", "2",
            "--reduce", "2", "--kill-every", "0.7", "--pause-probability", "0", "--worker-timeout", "2",
            "--heartbeat-interval", "0.3", "--seed", "2",
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "oracle: mapreduce seq mrjob mr_word_freq_count.py over 2 input(s)" in result.stderr
    rows = crashtest_table(result.stdout)
    assert [rows[r]["result"] for r in ("base", "1", "all")] == ["OK", "OK", "1/1 OK"]
    assert int(rows["all"]["kills"]) > 0
