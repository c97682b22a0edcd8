"""mrjob jobs, unmodified: the examples that ship inside the mrjob package, run by `mapreduce
mrjob` on the embedded cluster, in one process and on separately started workers (one of them
killed), each compared with what mrjob's own local runner makes of the same input."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mrjob.examples
import pytest

from helpers import (
    FAST,
    TIMEOUT,
    assert_same_output,
    free_endpoint,
    kill_all,
    mapreduce_command,
    run_cli,
    running,
    wait_for_log,
)
from mapreduce.tools.corpus import write_corpus

EXAMPLES = Path(mrjob.examples.__file__).parent


@pytest.fixture(scope="module")
def texts(tmp_path_factory) -> list[str]:
    """Two generated files of words (with some Unicode and punctuation), 60 KB in all."""
    folder = tmp_path_factory.mktemp("texts")
    return [str(p) for p in write_corpus(folder, 60_000, 2, seed=11)]


def load_job_class(script: Path):
    name = f"job_{script.stem}"
    spec = importlib.util.spec_from_loader(name, importlib.machinery.SourceFileLoader(name, str(script)))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return next(
        v for v in vars(module).values() if isinstance(v, type) and v.__module__ == name and hasattr(v, "steps")
    )


def parsed(script: Path, job_args: list[str], output: bytes) -> list[str]:
    """The job's output read by its own OUTPUT_PROTOCOL (mrjob's parse_output), in a canonical
    order and form: a dict's keys sorted, and floats to 12 digits (a sum's last bits depend on
    the order its values come in, which is the job's business)."""
    job = load_job_class(script)(args=job_args)
    return sorted(json.dumps(canonical([key, value]), sort_keys=True) for key, value in job.parse_output([output]))


def canonical(value):
    if isinstance(value, float):
        return float(f"{value:.12g}")
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    return value


def start_local_runner(script: Path, job_args: list[str], inputs: list[str]) -> subprocess.Popen:
    """mrjob's own local runner on the job (the reference), started."""
    command = [sys.executable, str(script), "-r", "local", "--no-conf", *job_args, *inputs]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def output_of(runner: subprocess.Popen) -> bytes:
    out, err = runner.communicate(timeout=300)
    assert runner.returncode == 0, err.decode()
    return out


def local_runner(script: Path, job_args: list[str], inputs: list[str]) -> bytes:
    """What mrjob's own local runner writes for the job (reference output)."""
    return output_of(start_local_runner(script, job_args, inputs))


def part_files(out: Path) -> bytes:
    assert (out / "_SUCCESS").exists()
    return b"".join(p.read_bytes() for p in sorted(out.glob("part-*")))


# example script: its own options (what it shows)
EXAMPLE_JOBS = {
    "mr_word_freq_count.py": [],  # a combiner
    "mr_most_used_word.py": [],  # two steps, the second reducer-only; FILES; mapper_init
    "mr_grep.py": ["-e", "ri"],  # a map-only mapper_cmd with a passthrough option (raw lines out)
    "mr_words_containing_u_freq_count.py": [],  # mapper_pre_filter
    "mr_next_word_stats.py": [],  # SORT_VALUES, two steps
    "mr_wc.py": [],  # mapper_final
    "mr_count_lines_by_file.py": [],  # the input file's name from the environment
}


@pytest.fixture(scope="module")
def references(texts):
    """mrjob's local runner on every example at once (each mostly waits on its processes)."""
    runners = {script: start_local_runner(EXAMPLES / script, args, texts) for script, args in EXAMPLE_JOBS.items()}
    yield runners
    for runner in runners.values():
        if runner.poll() is None:
            runner.kill()
        runner.communicate()


@pytest.mark.parametrize("script", list(EXAMPLE_JOBS))
def test_mrjob_examples_give_what_mrjobs_local_runner_gives(script, references, texts, tmp_path):
    path, job_args = EXAMPLES / script, EXAMPLE_JOBS[script]
    run_cli("mrjob", "--output", str(tmp_path / "out"), "-w", "2", "--reduce", "2", "-q", str(path), *job_args, *texts)
    reference, ours = output_of(references[script]), part_files(tmp_path / "out")
    if script == "mr_grep.py":  # grep's lines, as grep writes them
        expected, got = sorted(reference.splitlines()), sorted(ours.splitlines())
    else:
        expected, got = parsed(path, job_args, reference), parsed(path, job_args, ours)
    assert expected, "the reference output is empty: the comparison would prove nothing"
    assert got == expected


def test_a_multi_step_sort_values_job_is_the_same_bytes_on_the_cluster_and_in_one_process(texts, tmp_path):
    path = str(EXAMPLES / "mr_next_word_stats.py")
    run_cli("mrjob", "--output", str(tmp_path / "seq"), "--sequential", "--reduce", "2", "-q", path, *texts)
    run_cli("mrjob", "--output", str(tmp_path / "out"), "-w", "2", "--reduce", "2", "-q", path, *texts)
    assert_same_output(tmp_path / "seq", tmp_path / "out")


def test_mapper_raw_gets_each_file_whole_through_four_steps(tmp_path):
    """mr_text_classifier: mapper_raw reads each document (named by its categories) by path,
    then three reducer-only steps; the documents ship inside the mrjob package."""
    path = EXAMPLES / "mr_text_classifier.py"
    docs = sorted(str(p) for p in (EXAMPLES / "docs-to-classify").glob("*.txt"))[:4]
    reference = start_local_runner(path, [], docs)
    out = run_cli("mrjob", "-w", "2", "--reduce", "1", "-q", str(path), *docs).stdout.encode()
    expected = parsed(path, [], output_of(reference))
    assert expected and parsed(path, [], out) == expected


def test_no_output_folder_writes_the_output_to_stdout_as_mrjob_does(references, texts):
    path = EXAMPLES / "mr_wc.py"
    expected = parsed(path, [], output_of(references["mr_wc.py"]))  # the same job with --output, above
    result = run_cli("mrjob", "-w", "2", "--reduce", "1", "-q", str(path), *texts)
    assert parsed(path, [], result.stdout.encode()) == expected


JOB_WITH_OPTIONS = '''
from mrjob.job import MRJob
from mrjob.protocol import TextProtocol


class MRWordsFromList(MRJob):
    """Counts words from a word list file (a file option), by a minimum length (a passthrough
    option), with counters and status lines; FILES ships a renamed data file."""

    FILES = ["data.txt#renamed.txt"]
    OUTPUT_PROTOCOL = TextProtocol

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--min-length", type=int, default=1)
        self.add_file_arg("--words")

    def mapper_init(self):
        self.wanted = set(open(self.options.words).read().split())
        self.suffix = open("renamed.txt").read().strip()

    def mapper(self, _, line):
        self.set_status("mapping")
        for word in line.split():
            if word in self.wanted and len(word) >= self.options.min_length:
                self.increment_counter("words", "wanted", 1)
                yield word + self.suffix, 1
            else:
                self.increment_counter("words", "other", 1)

    def reducer(self, word, counts):
        yield word, str(sum(counts))


if __name__ == "__main__":
    MRWordsFromList.run()
'''


@pytest.fixture
def options_job(tmp_path) -> tuple[Path, list[str]]:
    (tmp_path / "data.txt").write_text("!\n")
    script = tmp_path / "mr_words_from_list.py"
    script.write_text(JOB_WITH_OPTIONS)
    words = tmp_path / "list.txt"
    words.write_text("apple pear fig\n")
    text = tmp_path / "in.txt"
    text.write_text("apple fig kiwi\npear apple fig fig\n" * 50)
    return script, ["--min-length", "4", "--words", str(words), str(text)]


def test_file_and_passthrough_options_files_counters_and_status(options_job, tmp_path):
    script, job_args = options_job
    expected = local_runner(script, job_args, [])
    for where in (["-w", "2"], ["--sequential"]):
        out = tmp_path / f"out{len(where)}"
        result = run_cli("mrjob", "--output", str(out), "--reduce", "2", *where, str(script), *job_args)
        assert sorted(part_files(out).splitlines()) == sorted(expected.splitlines()) == [b"apple!\t100", b"pear!\t50"]
        assert "words.wanted = 150" in result.stderr and "words.other = 200" in result.stderr


def test_a_failing_job_fails_with_its_error_and_writes_no_output(texts, tmp_path):
    result = run_cli("mrjob", "--output", str(tmp_path / "out"), "-w", "1", "--max-attempts", "2", "-q",
                     str(EXAMPLES / "mr_boom.py"), *texts, check=False)  # fmt: skip
    assert result.returncode == 1
    assert "Exception: BOOM" in result.stderr
    assert not list((tmp_path / "out").glob("part-*"))


@pytest.mark.parametrize(
    "job_args, says",
    [
        ([str(EXAMPLES / "mr_jar_step_example.py")], "step 1 is a jar step"),
        ([str(EXAMPLES / "mr_spark_wordcount.py")], "step 1 is a spark step"),
        ([str(EXAMPLES / "mr_nick_nack_input_format.py")], "HADOOP_INPUT_FORMAT"),
        ([str(EXAMPLES / "__init__.py")], "must define one MRJob class"),
        ([str(EXAMPLES / "no_such_job.py")], "does not exist"),
        ([str(EXAMPLES / "mr_wc.py"), "--no-such-option"], "unrecognized arguments: --no-such-option"),
        ([str(EXAMPLES / "mr_wc.py"), "--setup", "true"], "setup option cannot be used here"),
        (["--reduce", "0", str(EXAMPLES / "mr_wc.py")], "--reduce must be at least 1"),
    ],
)
def test_what_cannot_run_here_exits_2_before_any_work(job_args, says, texts, tmp_path):
    inputs = [] if "--reduce" in job_args else texts
    result = run_cli("mrjob", "--output", str(tmp_path / "out"), *job_args, *inputs, check=False)
    assert result.returncode == 2, result.stderr
    assert says in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "out").exists()


def test_no_input_exits_2(tmp_path):
    result = run_cli("mrjob", "--output", str(tmp_path / "out"), str(EXAMPLES / "mr_wc.py"), check=False)
    assert result.returncode == 2 and "give input files or folders" in result.stderr


def test_an_example_on_separately_started_workers_survives_a_killed_worker(tmp_path):
    """mr_word_freq_count served to three workers; one is killed while it runs a map."""
    inputs = [str(p) for p in write_corpus(tmp_path / "in", 300_000, 4, seed=3)]
    script = EXAMPLES / "mr_word_freq_count.py"
    expected = parsed(script, [], local_runner(script, [], inputs))
    out, events, endpoint = tmp_path / "out", tmp_path / "events.jsonl", free_endpoint()
    serve = mapreduce_command(
        "mrjob", "--output", str(out), "--bind", endpoint, "--events", str(events), "--min-workers", "3",
        "--reduce", "2", "-q", *FAST, *TIMEOUT, str(script), *inputs,
    )  # fmt: skip
    coordinator = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    worker_command = mapreduce_command(
        "worker", "--connect", endpoint, "--scratch", str(tmp_path / "scratch"), *FAST, "--coordinator-timeout", "30"
    )
    workers = [subprocess.Popen(worker_command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(3)]
    try:
        log = wait_for_log(
            events, lambda log: running(log, "map"), "a map running", coordinator, coordinator.stderr.read
        )
        victim = running(log, "map")[0]["worker"]
        pid = next(e["pid"] for e in log if e["event"] == "worker_joined" and e["worker"] == victim)
        os.kill(pid, signal.SIGKILL)
        assert coordinator.wait(timeout=180) == 0, coordinator.stderr.read()
    finally:
        kill_all([coordinator, *workers])
    log = [json.loads(line) for line in events.read_text().splitlines()]
    assert any(e["event"] == "worker_dead" and e["worker"] == victim for e in log), (
        "the killed worker was not declared dead"
    )
    assert parsed(script, [], part_files(out)) == expected


STATUS_JOB = '''
import os
import time

from mrjob.job import MRJob


class MRStatus(MRJob):
    """Says what it does with set_status, then waits for the test's go-ahead (a file)."""

    def configure_args(self):
        super().configure_args()
        self.add_passthru_arg("--go")

    def mapper_init(self):
        self.set_status("waiting for the go-ahead")
        deadline = time.monotonic() + 120
        while not os.path.exists(self.options.go) and time.monotonic() < deadline:
            time.sleep(0.05)

    def mapper(self, _, line):
        yield "lines", 1

    def reducer(self, key, ones):
        yield key, sum(ones)


if __name__ == "__main__":
    MRStatus.run()
'''


def test_a_tasks_status_line_shows_on_the_status_page(tmp_path):
    script, go, text = tmp_path / "mr_status.py", tmp_path / "go", tmp_path / "in.txt"
    script.write_text(STATUS_JOB)
    text.write_text("a\nb\nc\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = mapreduce_command(
        "mrjob", "--output", str(tmp_path / "out"), "-w", "1", "--reduce", "1", "-q", "--status-port", str(port),
        str(script), "--go", str(go), str(text),
    )  # fmt: skip
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, seen = time.monotonic() + 60, []
        while time.monotonic() < deadline and not seen:
            assert job.poll() is None, job.stderr.read()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/status.json", timeout=5) as page:
                    snapshot = json.loads(page.read())
            except (OSError, ValueError):
                snapshot = {}
            seen = [a for a in snapshot.get("attempts", []) if a.get("status") == "waiting for the go-ahead"]
            time.sleep(0.05)
        assert seen and seen[0]["phase"] == "map" and seen[0]["state"] == "running"
        worker = snapshot["workers"][0]["attempt"]
        assert worker["status"] == "waiting for the go-ahead"
    finally:
        go.touch()
        assert job.wait(timeout=120) == 0, job.stderr.read()
    assert part_files(tmp_path / "out") == b'"lines"\t3\n'
