"""The output folder: refusing what is not ours, committing by rename, _SUCCESS last."""

from __future__ import annotations

import gzip
import os
import pathlib

import pytest

from mapreduce import output
from mapreduce.errors import JobFailed, UsageError
from mapreduce.output import SUCCESS, Compression, commit, finish, part_name, prepare_output, temp_name


def snapshot(folder) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_creates_a_missing_folder(tmp_path):
    target = tmp_path / "a" / "b" / "out"
    assert prepare_output(target, overwrite=False) == target
    assert target.is_dir() and list(target.iterdir()) == []


def test_accepts_an_empty_folder(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    prepare_output(str(target), overwrite=False)
    assert list(target.iterdir()) == []  # the write probe is gone


def test_refuses_a_file_as_the_folder(tmp_path):
    target = tmp_path / "out"
    target.write_text("x")
    with pytest.raises(UsageError, match="not a folder") as info:
        prepare_output(target, overwrite=True)
    assert str(target) in str(info.value)
    assert target.read_text() == "x"


@pytest.mark.parametrize("contents", [{"part-00000": b"a\t1\n"}, {"notes.txt": b"mine"}, {SUCCESS: b""}])
def test_refuses_non_empty_folder_without_overwrite(tmp_path, contents):
    target = tmp_path / "out"
    target.mkdir()
    for name, data in contents.items():
        (target / name).write_bytes(data)
    before = snapshot(target)
    with pytest.raises(UsageError, match="overwrite") as info:
        prepare_output(target, overwrite=False)
    assert str(target) in str(info.value)
    assert snapshot(target) == before  # not even the stale _SUCCESS is touched


@pytest.mark.parametrize(
    "foreign",
    ["notes.txt", "part-1", "part-000001", "PART-00000", "_SUCCESS.bak", ".hidden", "subdir", "part-00000.bz2"],
)
def test_refuses_foreign_files_even_with_overwrite_and_leaves_everything(tmp_path, foreign):
    target = tmp_path / "out"
    target.mkdir()
    (target / "part-00000").write_bytes(b"old\t1\n")
    (target / SUCCESS).write_bytes(b"")
    if foreign == "subdir":
        (target / foreign).mkdir()
    else:
        (target / foreign).write_bytes(b"precious")
    before = snapshot(target) if foreign != "subdir" else None
    with pytest.raises(UsageError, match="not mapreduce output") as info:
        prepare_output(target, overwrite=True)
    assert str(target) in str(info.value) and foreign in str(info.value)
    assert (target / SUCCESS).exists()  # untouched, including the old success marker
    if before is not None:
        assert snapshot(target) == before
    assert (target / foreign).exists()


def test_overwrite_accepts_old_output_and_removes_only_the_stale_success(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    old = {"part-00000": b"a\t1\n", "part-00001": b"b\t2\n", SUCCESS: b"", ".part-00002.a7.tmp": b"partial"}
    for name, data in old.items():
        (target / name).write_bytes(data)
    assert prepare_output(target, overwrite=True) == target
    after = snapshot(target)
    assert SUCCESS not in after
    assert after == {k: v for k, v in old.items() if k != SUCCESS}


def test_finish_removes_stale_wider_parts_and_temps_then_writes_success(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    for p in range(5):  # an older job with 5 partitions
        (folder / part_name(p)).write_bytes(f"old {p}\n".encode())
    (folder / ".part-00001.a3.tmp").write_bytes(b"loser")
    prepare_output(folder, overwrite=True)
    for p in range(2):  # the new job has 2
        temp = temp_name(p, f"a{p + 10}")
        (folder / temp).write_bytes(f"new {p}\n".encode())
        commit(folder, temp, p)
    finish(folder, 2)
    assert snapshot(folder) == {"part-00000": b"new 0\n", "part-00001": b"new 1\n", SUCCESS: b""}
    assert list(output.read_output(folder)) == ["new 0\n", "new 1\n"]


def test_finish_writes_success_after_everything_else(tmp_path, monkeypatch):
    folder = tmp_path / "out"
    folder.mkdir()
    for p in range(4):
        (folder / part_name(p)).write_bytes(b"x")
    log = []
    real_unlink = pathlib.Path.unlink
    real_open = open

    def unlink(self, *args, **kwargs):
        log.append(("unlink", self.name, (folder / SUCCESS).exists()))
        return real_unlink(self, *args, **kwargs)

    def tracking_open(path, *args, **kwargs):
        log.append(("open", os.path.basename(path), (folder / SUCCESS).exists()))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    monkeypatch.setattr(output, "open", tracking_open, raising=False)
    finish(folder, 2)
    assert sorted(name for kind, name, _ in log if kind == "unlink") == ["part-00002", "part-00003"]
    assert log[-1] == ("open", SUCCESS, False)  # created last, after every removal
    assert all(existed is False for _, _, existed in log)
    assert sorted(os.listdir(folder)) == sorted(["part-00000", "part-00001", SUCCESS])


def test_finish_refuses_when_a_partition_is_missing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / part_name(0)).write_bytes(b"x")
    (folder / part_name(2)).write_bytes(b"x")
    with pytest.raises(JobFailed, match="part-00001"):
        finish(folder, 3)
    assert not (folder / SUCCESS).exists()


def test_commit_is_a_rename(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    temp = temp_name(3, "a42")
    assert temp == ".part-00003.a42.tmp"
    lines = output.write_lines(folder / temp, [("k", 1), ("é", "v"), ("t", [1, 2])])
    assert lines == 3
    inode = (folder / temp).stat().st_ino
    commit(folder, temp, 3)
    assert not (folder / temp).exists()
    part = folder / "part-00003"
    assert part.read_text(encoding="utf-8") == "k\t1\né\tv\nt\t[1, 2]\n"
    assert part.stat().st_ino == inode  # the same file, renamed, not a copy
    assert sorted(os.listdir(folder)) == ["part-00003"]


def test_commit_replaces_an_old_part(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "part-00000").write_bytes(b"old\n")
    (folder / temp_name(0, "a1")).write_bytes(b"new\n")
    commit(folder, temp_name(0, "a1"), 0)
    assert snapshot(folder) == {"part-00000": b"new\n"}


def test_commit_of_a_missing_temp_raises_and_changes_nothing(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / "part-00000").write_bytes(b"old\n")
    with pytest.raises(OSError):
        commit(folder, temp_name(0, "a9"), 0)
    assert snapshot(folder) == {"part-00000": b"old\n"}


def test_temp_names_are_recognised_as_ours(tmp_path):
    folder = tmp_path / "out"
    folder.mkdir()
    (folder / temp_name(7, "seq")).write_bytes(b"")
    (folder / temp_name(7, "a123")).write_bytes(b"")
    prepare_output(folder, overwrite=True)  # no foreign file
    output.remove_temps(folder)
    assert list(folder.iterdir()) == []


def test_visibility_token_tells_who_sees_the_output_folder(tmp_path):
    from mapreduce.output import sees_folder, show_visibility, visibility_name

    folder = prepare_output(tmp_path / "out", overwrite=False)
    token = show_visibility(folder, "abc123")
    assert sees_folder(folder, "abc123", token)
    assert not sees_folder(folder, "abc123", "another token")  # a folder of the same name elsewhere
    assert not sees_folder(folder, "abc123", "")
    assert not sees_folder(tmp_path / "missing", "abc123", token)
    # A crashed job's token file is ours: --overwrite accepts it and finish() removes it.
    prepare_output(folder, overwrite=True)
    assert (folder / visibility_name("abc123")).exists()


# ---- compressed output -------------------------------------------------------------

RECORDS = [(f"key{i:05d}", i * i) for i in range(20000)] + [("é", "ü\t日本"), ("line alone", output.NO_VALUE)]


def test_part_names_follow_the_compression():
    assert part_name(12) == part_name(12, Compression.NONE) == "part-00012"
    assert part_name(12, Compression.GZIP) == "part-00012.gz"
    assert temp_name(12, "a1") == ".part-00012.a1.tmp"  # the same whatever the compression


def test_gzip_output_decompresses_to_the_plain_bytes_and_is_deterministic(tmp_path):
    plain, packed, again = tmp_path / "plain", tmp_path / "packed", tmp_path / "again"
    assert output.write_lines(plain, RECORDS) == len(RECORDS)
    assert output.write_lines(packed, iter(RECORDS), compression=Compression.GZIP) == len(RECORDS)
    output.write_lines(again, RECORDS, compression=Compression.GZIP)
    data = packed.read_bytes()
    assert gzip.decompress(data) == plain.read_bytes()
    assert again.read_bytes() == data  # a later write, under another name: the same bytes
    assert data[3] == 0 and data[4:8] == b"\0\0\0\0"  # no file name, no time in the header
    assert len(data) < plain.stat().st_size // 2


def test_gzip_of_no_records_is_an_empty_stream(tmp_path):
    output.write_lines(tmp_path / "empty", [], compression=Compression.GZIP)
    assert gzip.decompress((tmp_path / "empty").read_bytes()) == b""


def test_compressed_job_commits_gz_parts_and_reads_back(tmp_path):
    folder = prepare_output(tmp_path / "out", overwrite=False)
    for p in range(2):
        temp = temp_name(p, "seq")
        output.write_lines(folder / temp, [(f"k{p}", p)], compression=Compression.GZIP)
        commit(folder, temp, p, Compression.GZIP)
    finish(folder, 2, Compression.GZIP)
    assert sorted(os.listdir(folder)) == ["_SUCCESS", "part-00000.gz", "part-00001.gz"]
    assert list(output.read_output(folder)) == ["k0\t0\n", "k1\t1\n"]


@pytest.mark.parametrize("before, after", [(Compression.NONE, Compression.GZIP), (Compression.GZIP, Compression.NONE)])
def test_overwrite_replaces_an_earlier_job_compressed_either_way(tmp_path, before, after):
    folder = prepare_output(tmp_path / "out", overwrite=False)
    for p in range(3):  # an earlier job, wider
        output.write_lines(folder / part_name(p, before), [("old", p)], compression=before)
    (folder / SUCCESS).write_bytes(b"")
    prepare_output(folder, overwrite=True)
    assert SUCCESS not in os.listdir(folder)
    for p in range(2):
        temp = temp_name(p, "a1")
        output.write_lines(folder / temp, [("new", p)], compression=after)
        commit(folder, temp, p, after)
    finish(folder, 2, after)
    assert sorted(os.listdir(folder)) == sorted([part_name(0, after), part_name(1, after), SUCCESS])
    assert list(output.read_output(folder)) == ["new\t0\n", "new\t1\n"]


def test_a_gz_part_missing_at_finish_is_named(tmp_path):
    folder = prepare_output(tmp_path / "out", overwrite=False)
    (folder / "part-00000").write_bytes(b"x\n")  # the uncompressed name does not count
    with pytest.raises(JobFailed, match=r"part-00000\.gz was never committed"):
        finish(folder, 1, Compression.GZIP)
