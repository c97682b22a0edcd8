"""The journal file (records, torn tails, damage, compaction) and the state folder's epoch fence."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading

import pytest

from mapreduce import journal
from mapreduce.journal import Epochs, Journal, JournalError, Superseded


def written(folder, *records, identity="job-a"):
    j = Journal.open(folder, "job", identity)
    j.append(*records)
    j.close()
    return folder / journal.JOURNAL


def test_records_come_back_in_order_after_a_reopening(tmp_path):
    written(tmp_path, {"r": "a", "n": 1}, {"r": "b", "n": [1, 2]})
    j = Journal.open(tmp_path, "job", "job-a")
    assert j.records == [{"r": "a", "n": 1}, {"r": "b", "n": [1, 2]}]
    j.append({"r": "c"})
    j.close()
    assert Journal.open(tmp_path, "job", "job-a").records[-1] == {"r": "c"}


@pytest.mark.parametrize("tail", [b'1234abcd {"r":', b'00000000 {"r":"x"}\n', b"garbage"])
def test_a_torn_last_write_is_cut_and_the_file_truncated(tmp_path, tail):
    path = written(tmp_path, {"r": "a"})
    good = path.read_bytes()
    path.write_bytes(good + tail)
    assert Journal.open(tmp_path, "job", "job-a").records == [{"r": "a"}]
    assert path.read_bytes() == good


def test_damage_before_the_last_line_is_refused_never_skipped(tmp_path):
    path = written(tmp_path, {"r": "a"}, {"r": "b"}, {"r": "c"})
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b'"b"', b'"B"')  # the CRC no longer matches
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(JournalError, match="damaged at line 3 of 4, with good records after it"):
        Journal.open(tmp_path, "job", "job-a")
    assert path.read_bytes() == b"\n".join(lines)  # left as it was


@pytest.mark.parametrize(
    ("kind", "identity", "problem"),
    [
        ("cluster", "job-a", "holds the state of a job, not of a cluster"),
        ("job", "job-b", "holds the state of another job"),
    ],
)
def test_a_journal_of_something_else_is_refused(tmp_path, kind, identity, problem):
    written(tmp_path, {"r": "a"})
    with pytest.raises(JournalError, match=problem):
        Journal.open(tmp_path, kind, identity)


def test_another_version_or_another_format_is_refused_saying_what_to_do(tmp_path):
    path = written(tmp_path)
    path.write_bytes(journal._line({"format": journal.FORMAT, "version": 99, "kind": "job", "identity": "job-a"}))
    with pytest.raises(JournalError, match="another version of mapreduce .* finish its work with that version"):
        Journal.open(tmp_path, "job", "job-a")
    path.write_bytes(journal._line({"something": "else"}))
    with pytest.raises(JournalError, match="not a mapreduce journal"):
        Journal.open(tmp_path, "job", "job-a")


def test_rewrite_compacts_to_the_header_and_the_given_records(tmp_path):
    written(tmp_path, *({"r": "x", "n": n} for n in range(100)))
    j = Journal.open(tmp_path, "job", "job-a")
    j.rewrite([{"r": "summary", "n": 100}])
    j.append({"r": "after"})
    j.close()
    assert Journal.open(tmp_path, "job", "job-a").records == [{"r": "summary", "n": 100}, {"r": "after"}]
    assert not (tmp_path / "journal.new").exists()


def test_a_newer_epoch_fences_the_older_coordinator_out(tmp_path):
    old, new = Epochs(tmp_path), Epochs(tmp_path)
    assert old.take_over() == 1
    with old.fenced():
        pass
    assert new.take_over() == 2
    acted = []
    with pytest.raises(Superseded, match="epoch 2"), old.fenced():
        acted.append("old")
    with new.fenced():
        acted.append("new")
    assert acted == ["new"]
    assert Epochs(tmp_path).take_over() == 3  # epochs survive the processes


def test_a_take_over_waits_for_an_act_under_the_fence_to_end(tmp_path):
    old, new = Epochs(tmp_path), Epochs(tmp_path)
    old.take_over()
    in_act, took_over = threading.Event(), threading.Event()
    with old.fenced():
        thread = threading.Thread(target=lambda: (new.take_over(), took_over.set()))
        in_act.set()
        thread.start()
        assert not took_over.wait(0.2)  # the old coordinator's act completes before the epoch moves
    assert took_over.wait(10)
    thread.join()
    assert new.epoch == 2


def test_a_damaged_epoch_file_is_refused(tmp_path):
    (tmp_path / journal.EPOCH).write_text("hello")
    with pytest.raises(JournalError, match="not an epoch"):
        Epochs(tmp_path).take_over()


HOLD_AND_STOP = """
import os, signal, sys, time
from pathlib import Path
from mapreduce.journal import Epochs
epochs = Epochs(Path(sys.argv[1]))
epochs.take_over()
with epochs.fenced():
    print("in the act", flush=True)
    os.kill(os.getpid(), signal.SIGSTOP)  # paused in the middle of a commit
    time.sleep(60)
"""


def test_a_coordinator_stopped_in_the_middle_of_an_act_is_fenced_off_by_killing_it(tmp_path):
    old = subprocess.Popen([sys.executable, "-c", HOLD_AND_STOP, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert old.stdout.readline() == "in the act\n"
        new = Epochs(tmp_path)
        assert new.take_over(stopped_grace=0.1, patience=60) == 2
        assert old.wait(timeout=30) == -signal.SIGKILL
    finally:
        if old.poll() is None:
            old.kill()
            old.wait()


def test_a_running_holder_is_waited_for_then_named(tmp_path):
    holder = Epochs(tmp_path)
    holder.take_over()
    # (Held by this process: waited for, never killed.)
    with holder.fenced(), pytest.raises(JournalError, match="has held the state folder's lock for"):
        Epochs(tmp_path).take_over(stopped_grace=0.0, patience=0.2)
