"""Shared fixtures: generated corpora, the Gutenberg books, running the CLI, comparing outputs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapreduce.corpus import write_corpus
from mapreduce.events import read_events

TESTS = Path(__file__).parent
APPS = TESTS / "apps"
GUTENBERG = Path(os.environ.get("MAPREDUCE_GUTENBERG", TESTS.parent.parent / "shared" / "data" / "gutenberg"))


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[str]:
    """Eight generated files, about 2 MB in all, with Unicode, digits and punctuation."""
    folder = tmp_path_factory.mktemp("corpus")
    return [str(p) for p in write_corpus(folder, 2_000_000, 8, seed=7)]


@pytest.fixture(scope="session")
def gutenberg() -> list[str]:
    books = sorted(GUTENBERG.glob("*.txt"))
    if not books:
        pytest.skip(f"the Gutenberg books are not at {GUTENBERG} (set MAPREDUCE_GUTENBERG to their folder)")
    return [str(b) for b in books]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


def mapreduce_command(*args: str) -> list[str]:
    return [sys.executable, "-P", "-m", "mapreduce", *args]


def run_cli(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    """Run the mapreduce command in a process of its own, as a user would."""
    result = subprocess.run(mapreduce_command(*args), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"mapreduce {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


def event_log(path: Path) -> list[dict]:
    """A job's event log so far (empty before the coordinator writes it)."""
    return list(read_events(path)) if path.exists() else []


def of(log, kind, **fields) -> list[dict]:
    """The events of one kind whose fields have the given values."""
    return [e for e in log if e["event"] == kind and all(e.get(k) == v for k, v in fields.items())]


def wait_for_log(path: Path, predicate, what: str, coordinator: subprocess.Popen, coordinator_stderr, timeout: float = 60) -> list[dict]:
    """Poll the event log until ``predicate(log)`` holds; fail at once if the coordinator exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = event_log(path)
        if predicate(log):
            return log
        if coordinator.poll() is not None:
            raise AssertionError(f"the coordinator exited ({coordinator.returncode}) while waiting for {what}:\n{coordinator_stderr()}")
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def assert_same_output(expected: Path, actual: Path) -> None:
    """Byte-for-byte equality of two committed output folders."""
    names = sorted(os.listdir(expected))
    assert sorted(os.listdir(actual)) == names, f"{actual} holds {sorted(os.listdir(actual))}, expected {names}"
    assert "_SUCCESS" in names
    for name in names:
        a, b = (expected / name).read_bytes(), (actual / name).read_bytes()
        assert a == b, f"{name} differs ({len(a)} vs {len(b)} bytes)"


@pytest.fixture
def oracle(tmp_path):
    """oracle(app, inputs, *args) -> folder of `mapreduce seq` output."""
    count = [0]

    def make(app: str, inputs: list[str], *args: str) -> Path:
        count[0] += 1
        out = tmp_path / f"seq-{count[0]}"
        run_cli("seq", app, *inputs, "--output", str(out), *args)
        return out

    return make


def job_fixture(job_class):
    """A ``make_job`` fixture: it starts jobs of ``job_class`` (tmp_path, app, inputs, *args)
    in the test's folder, and stops every one of them when the test ends."""

    @pytest.fixture
    def make_job(tmp_path):
        jobs = []

        def make(app, inputs, *args):
            jobs.append(job_class(tmp_path, app, inputs, *args))
            return jobs[-1]

        yield make
        for job in jobs:
            job.stop_all()

    return make_job
