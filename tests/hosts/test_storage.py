"""Storage failures: a full or unwritable scratch disk fails the attempt as the worker's
fault (retried on another worker, never counted against the user's code, no partial
output visible); an output folder that cannot take the output fails the job at once.

The first tests run anywhere: /dev/full gives a real "no space left on device". The
last two mount small tmpfs folders, so they need root and a working ``mount``.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from helpers import SLEEPY, assert_same_output, iter_run_file, of, words_file
from mapreduce import shuffle
from mapreduce.errors import OutputFolderError, StorageError, storage_errors
from mapreduce.inputs import fingerprint
from mapreduce.job import load_app
from mapreduce.wire import messages as p
from mapreduce.worker.loop import Worker
from mapreduce.worker.tasks import AttemptContext, JobContext, ReduceInputs, run_map, run_reduce

FULL = "/dev/full"


# ---- the framework's own writes, and only those, are storage errors -------------


def app_file(tmp_path: Path, body: str) -> str:
    path = tmp_path / "app.py"
    path.write_text("from collections import Counter\n\n" + body)
    return str(path)


def job_context(tmp_path: Path, app, sees_output: bool = True) -> JobContext:
    workdir = tmp_path / "scratch" / "job-j" / "w-1"
    workdir.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return JobContext(app, "j", 1, 2, "this-host", workdir, out, sees_output, "")


def one_map_output(tmp_path: Path, app, partition: int) -> p.MapOutput:
    """A finished map's output on this host, as a reducer of ``partition`` is told of it."""
    buffer = shuffle.MapOutputBuffer(2, app.partition, app.combine, tmp_path)
    buffer.add_all([(f"w{i}", 1) for i in range(40)], "test")
    lengths = buffer.finish(tmp_path / "map-0.out")
    return p.MapOutput(
        0,
        1,
        "this-host",
        str(tmp_path / "map-0.out"),
        "tcp://127.0.0.1:9",
        sum(lengths[:partition]),
        lengths[partition],
    )


def assign_map(tmp_path: Path, attempt: int, words: str = "a b a c b a") -> p.AssignMap:
    path = tmp_path / f"in{attempt}.txt"
    path.write_text(words + "\n")
    return p.AssignMap(attempt, 0, path.name, str(path), 0, path.stat().st_size, fingerprint(str(path)))


def distinct_words(n: int) -> str:
    return " ".join("w" + chr(97 + i // 26) + chr(97 + i % 26) for i in range(n))


def attempt(job: JobContext, assign) -> object:
    """What the worker's executor sends for this attempt (TaskDone or TaskFailed)."""
    fetcher = SimpleNamespace(received=0)
    worker = SimpleNamespace(fetcher=fetcher, input_fetcher=fetcher, _post=lambda *args, **kw: None)
    return Worker._run_attempt(worker, job, assign, AttemptContext(assign.attempt))


def test_full_disk_under_the_map_output_log_is_a_storage_failure(tmp_path):
    job = job_context(tmp_path, load_app("wordcount"))
    (job.workdir / "map-output.log").symlink_to(FULL)
    failed = attempt(job, assign_map(tmp_path, 5))
    assert isinstance(failed, p.TaskFailed) and failed.user_error is False
    assert failed.error == f"no space left in scratch folder {job.workdir} (map output of attempt 5)"
    assert failed.details == StorageError.kind
    job.close()


def test_failed_map_output_is_cut_from_the_log_and_the_next_map_appends_cleanly(tmp_path, monkeypatch):
    job = job_context(tmp_path, load_app("wordcount"))
    first = attempt(job, assign_map(tmp_path, 1))
    log_path = Path(first.path)
    size = log_path.stat().st_size
    assert isinstance(first, p.TaskDone) and size == sum(first.partition_lengths) > 0
    real_write = shuffle.GuardedWriter.write

    def write_then_fill_up(self, data):  # some bytes reach the file, then the disk is full
        real_write(self, data[: len(data) // 2])
        with storage_errors(self.folder, self.what):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(shuffle.GuardedWriter, "write", write_then_fill_up)
    failed = attempt(job, assign_map(tmp_path, 2, "x y z x"))
    assert failed.user_error is False and failed.error.startswith("no space left in scratch folder")
    assert log_path.stat().st_size == size  # the partial record is gone
    monkeypatch.undo()
    third = attempt(job, assign_map(tmp_path, 3, "x y z x"))
    assert isinstance(third, p.TaskDone) and third.offset == size
    assert log_path.stat().st_size == size + sum(third.partition_lengths)
    records = [
        r
        for n, length in enumerate(third.partition_lengths)
        for r in iter_run_file(str(log_path), third.offset + sum(third.partition_lengths[:n]), length)
    ]
    assert sorted(records) == [("x", 2), ("y", 1), ("z", 1)]
    job.close()


def test_full_disk_while_spilling_is_a_storage_failure_and_spills_are_removed(tmp_path):
    job = job_context(tmp_path, load_app("wordcount"))
    (job.workdir / "a4-spill-1.run").symlink_to(FULL)  # the second spill cannot be written
    assign = assign_map(tmp_path, 4, distinct_words(50))
    with pytest.raises(
        StorageError, match=r"^no space left in scratch folder .* \(spill of map output of attempt 4\)$"
    ):
        run_map(job, assign, AttemptContext(4), SimpleNamespace(received=0), buffer_records=10)
    assert [f.name for f in job.workdir.iterdir()] == []  # the first spill is gone, and so is the link
    job.close()


def test_oserror_raised_by_the_users_map_or_combine_stays_the_users(tmp_path):
    app = load_app(
        app_file(
            tmp_path,
            "def map(key, text):\n    raise OSError(28, 'No space left on device')\n\n"
            "def reduce(key, values):\n    return sum(values)\n",
        )
    )
    failed = attempt(job_context(tmp_path, app), assign_map(tmp_path, 6))
    assert failed.user_error is True and failed.error == "OSError: [Errno 28] No space left on device"
    assert "raise OSError" in failed.details  # the user's traceback

    # A combine runs while the framework merges its spills: its OSError is still the user's.
    app = load_app(
        app_file(
            tmp_path,
            "def map(key, text):\n    return Counter(text.split()).items()\n\n"
            "def combine(key, values):\n    raise PermissionError(13, 'Permission denied')\n\n"
            "def reduce(key, values):\n    return sum(values)\n",
        )
    )
    job = job_context(tmp_path / "two", app)
    words = distinct_words(40)  # combine runs only when the spills merge
    with pytest.raises(PermissionError):
        run_map(job, assign_map(tmp_path, 7, words), AttemptContext(7), SimpleNamespace(received=0), buffer_records=8)
    assert list(job.workdir.iterdir()) == [job.workdir / "map-output.log"]  # no spill left behind
    assert (job.workdir / "map-output.log").stat().st_size == 0
    job.close()


def test_reduce_output_that_the_output_folder_cannot_take_is_an_output_folder_error(tmp_path):
    app = load_app("wordcount")
    job = job_context(tmp_path, app)
    (job.output_dir / ".part-00000.j-a9.tmp").symlink_to(FULL)
    failed = attempt(job, p.AssignReduce(9, 0, [one_map_output(tmp_path, app, 0)]))
    assert failed.user_error is False and failed.details == OutputFolderError.kind
    assert failed.error == f"no space left in output folder {job.output_dir} (output of reduce task 0, attempt 9)"
    assert list(job.output_dir.iterdir()) == []  # nothing left behind
    assert list(job.workdir.iterdir()) == []


def test_reduce_output_in_scratch_is_a_storage_error(tmp_path):
    app = load_app("wordcount")
    job = job_context(tmp_path, app, sees_output=False)
    (job.workdir / ".part-00001.j-a3.tmp").symlink_to(FULL)
    with pytest.raises(StorageError) as caught:
        run_reduce(
            job,
            p.AssignReduce(3, 1, [one_map_output(tmp_path, app, 1)]),
            AttemptContext(3),
            SimpleNamespace(received=0),
            lambda m: None,
        )
    assert type(caught.value) is StorageError
    assert str(caught.value) == f"no space left in scratch folder {job.workdir} (output of reduce task 1, attempt 3)"


def test_a_fetched_run_that_cannot_be_written_fails_the_attempt_instead_of_blaming_the_map(tmp_path):
    job = job_context(tmp_path, load_app("wordcount"))
    folder = job.workdir / "a2"
    folder.mkdir()
    (folder / "fetched-000000.run").symlink_to(FULL)

    class Fetcher:
        received = 0

        def copy(self, address, path, offset, length, out, server_key=None):
            out.write(b"x" * length)  # buffered: the full disk shows when the copy is closed

    reports = []
    inputs = ReduceInputs(job, AttemptContext(2), Fetcher(), folder, reports.append)
    there = p.MapOutput(0, 1, "other-host", "/far/map-output.log", "tcp://127.0.0.1:9", 0, 100)
    with pytest.raises(
        StorageError,
        match=r"^no space left in scratch folder .*/a2 \(output of map task 0 fetched by reduce attempt 2\)$",
    ):
        inputs.gather([there], [])
    assert reports == []  # no FetchFailed: the map's output is fine, this disk is not


def test_storage_error_messages_name_the_folder_and_the_cause():
    def message(code, role="scratch"):
        with pytest.raises(StorageError) as caught, storage_errors("/x", "map output of attempt 12", role):
            raise OSError(code, os.strerror(code))
        return type(caught.value), str(caught.value)

    assert message(errno.ENOSPC) == (StorageError, "no space left in scratch folder /x (map output of attempt 12)")
    assert message(errno.EDQUOT) == (
        StorageError,
        "disk quota exceeded in scratch folder /x (map output of attempt 12)",
    )
    assert message(errno.EROFS) == (
        StorageError,
        "scratch folder /x is not writable: read-only file system (map output of attempt 12)",
    )
    assert message(errno.EACCES) == (
        StorageError,
        "scratch folder /x is not writable: permission denied (map output of attempt 12)",
    )
    assert message(errno.EIO) == (StorageError, "I/O error in scratch folder /x (map output of attempt 12)")
    assert message(errno.EROFS, "output")[0] is OutputFolderError
    assert message(errno.EIO, "output")[0] is StorageError  # perhaps passing: retried, not fatal
    assert not issubclass(StorageError, OSError)  # no `except OSError` can take it for another error


# ---- with real small disks (root only) -------------------------------------------


@pytest.fixture
def tmpfs():
    """mount(folder, size) -> folder, a fresh tmpfs; unmounted at teardown, always."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    mounted: list[Path] = []

    def mount(folder: Path, size: str) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if result.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        deadline = time.monotonic() + 10
        while subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            if time.monotonic() > deadline:  # still busy: detach it now, gone once released
                subprocess.run(["umount", "-l", str(folder)], check=True)
                break
            time.sleep(0.1)


def remount(folder: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(folder)], check=True, capture_output=True)


def joined(log, process: subprocess.Popen) -> int:
    return next(e["worker"] for e in of(log, "worker_joined") if e["pid"] == process.pid)


def test_full_scratch_fails_its_attempts_which_finish_on_the_other_worker(tmp_path, corpus, oracle, tmpfs, make_job):
    """One worker's scratch is a 64 KB tmpfs: each of its maps (about 90 KB of output) fails
    there as a storage failure, and runs again on the other worker; the output matches seq."""
    full = tmpfs(tmp_path / "s-full", "64k")
    expected = oracle(SLEEPY, corpus, "--reduce", "2")
    # Maps of 0.5 s: alone, the healthy worker needs 4 s for the eight; the other joins well before.
    job = make_job(SLEEPY, corpus, "--reduce", "2", "--param", "map_seconds=0.5")
    healthy = job.worker(scratch=str(tmp_path / "s-ok"))
    job.wait_for(lambda log: of(log, "task_assigned"), "the healthy worker's first map")
    crippled = job.worker(scratch=str(full))
    log = job.finish()
    assert_same_output(expected, job.out)
    assert [p.name for p in job.out.iterdir() if not (p.name.startswith("part-") or p.name == "_SUCCESS")] == []
    ok, bad = joined(log, healthy), joined(log, crippled)
    failed = of(log, "task_failed", worker=bad)
    assert failed, "no attempt failed on the worker with the full scratch folder"
    assert all(e["user_error"] is False and e["phase"] == "map" for e in failed)
    assert all(e["error"].startswith(f"no space left in scratch folder {full}/") for e in failed)
    assert all(e["error"].endswith(f"(map output of attempt {e['attempt']})") for e in failed)
    assert of(log, "task_failed", user_error=True) == [] and of(log, "task_failed", worker=ok) == []
    for e in failed:  # retried elsewhere, never on the full worker again
        finished = of(log, "task_finished", phase="map", task=e["task"])
        assert [f["worker"] for f in finished] == [ok]
        again = [a for a in of(log, "task_assigned", phase="map", task=e["task"]) if a["t"] > e["t"]]
        assert again and all(a["worker"] == ok for a in again)
    assert of(log, "job_finished")[0]["ok"] is True


def test_output_folder_turned_read_only_fails_the_job_at_once_with_a_clear_message(tmp_path, tmpfs, make_job):
    """The output folder (a tmpfs) is remounted read-only while the maps run: the first reduce
    that cannot create its output there fails the job, naming the folder and the cause."""
    out = tmpfs(tmp_path / "out", "16m")  # the folder Job uses as --output
    inputs = [words_file(tmp_path, "a.txt"), words_file(tmp_path, "b.txt")]
    job = make_job(SLEEPY, inputs, "--reduce", "2", "--param", "map_seconds=1.5")
    job.worker(scratch=str(tmp_path / "s1"))
    job.worker(scratch=str(tmp_path / "s2"))
    # Once the job runs, the output folder is prepared (probed writable): now it turns read-only.
    job.wait_for(lambda log: of(log, "task_assigned"), "the first map to start")
    remount(out, "ro")
    assert of(job.log(), "task_finished", phase="map") == [], "a map finished before the folder turned read-only"
    started = time.monotonic()
    code = job.coordinator.wait(timeout=60)
    stderr = job.coordinator.stderr.read()
    log = job.log()
    assert code == 1, stderr
    assert not (out / "_SUCCESS").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(("part-", ".part-"))] == []
    assert time.monotonic() - started < 30
    assert f"output folder {out.resolve()} is not writable: read-only file system (output of reduce task " in stderr
    assert "Traceback" not in stderr
    failed = of(log, "task_failed", phase="reduce")
    assert len(failed) == 1, f"the job must fail at the first reduce that cannot write, not retry:\n{stderr}"
    expected = (
        f"output folder {out.resolve()} is not writable: read-only file system (output of reduce task "
        f"{failed[0]['task']}, attempt {failed[0]['attempt']})"
    )
    assert failed[0]["error"] == expected and failed[0]["user_error"] is False
    finished = of(log, "job_finished")
    assert finished and finished[0]["ok"] is False and finished[0]["message"].startswith(expected)
    assert f"job failed: {expected}, on worker " in stderr
