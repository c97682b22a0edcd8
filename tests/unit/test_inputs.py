"""Splits: byte ranges moved to line boundaries cover every file exactly once."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import random

import pytest

from mapreduce.errors import InputError, UsageError
from mapreduce.inputs import Split, check_inputs, expand_inputs, fingerprint, make_splits, read_range, read_split

ALPHABET = "abcxyz XYZ\t,.-0123" + "éüñß" + "€☃" + "日本語" + "😀🎉" + "\r"


def random_text(rng: random.Random, long_line: int = 0) -> str:
    lines = []
    for _ in range(rng.randrange(0, 12)):
        length = rng.choice([0, 0, 1, 2, 5, 10, 30, long_line or 3])
        lines.append("".join(rng.choice(ALPHABET) for _ in range(length)))
    text = "\n".join(lines)
    if lines and rng.random() < 0.5:
        text += "\n"
    if rng.random() < 0.1:
        text = "\n" * rng.randrange(1, 4) + text  # leading empty lines
    return text


def write(tmp_path, name: str, data: bytes | str) -> str:
    path = tmp_path / name
    path.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return str(path)


def check_cover(path: str, data: bytes, split_size: int) -> list[Split]:
    splits = make_splits([path], split_size)
    # The splits tile the file: contiguous, from 0 to its size, none empty unless the file is.
    assert splits[0].start == 0 and splits[-1].end == len(data)
    for a, b in zip(splits, splits[1:]):
        assert a.end == b.start
    assert all(s.end - s.start <= max(split_size, 0) or len(splits) == 1 for s in splits)
    assert all(s.key == path and s.path == os.path.abspath(path) for s in splits)
    # Reading every split and concatenating gives the file back, each piece whole lines.
    pieces = []
    with open(path, "rb") as f:
        for split in splits:
            pieces.append(read_range(f, split.start, split.end))
    assert b"".join(pieces) == data
    position = 0
    for piece in pieces:
        if piece:
            assert position == 0 or data[position - 1 : position] == b"\n", f"split starts mid-line at {position}"
            position += len(piece)
            assert position == len(data) or piece.endswith(b"\n"), f"split ends mid-line at {position}"
    texts = [read_split(split) for split in splits]
    assert "".join(texts) == data.decode("utf-8")
    return splits


def test_random_texts_and_split_sizes(tmp_path):
    rng = random.Random(12345)
    checked = 0
    for i in range(150):
        text = random_text(rng, long_line=rng.choice([0, 40, 200]))
        data = text.encode("utf-8")
        path = write(tmp_path, f"f{i}.txt", data)
        sizes = {1, 2, 3, 4, 5, 7, 11, 16, 64, max(1, len(data) - 1), max(1, len(data)), len(data) + 1, 1 << 20}
        sizes.add(rng.randrange(1, max(2, len(data) + 2)))
        for size in sorted(sizes):
            check_cover(path, data, size)
            checked += 1
    assert checked > 1500


@pytest.mark.parametrize(
    "text",
    [
        "",
        "\n",
        "\n\n\n",
        "one line without newline",
        "one line with newline\n",
        "a\nb\nc",
        "a\nb\nc\n",
        "x" * 100 + "\n" + "y" * 3 + "\n" + "z" * 57,
        "日本語のテキスト\n😀😀😀😀😀😀\néé\n",
        "crlf\r\nlines\r\nhere\r\n",
    ],
    ids=repr,
)
@pytest.mark.parametrize("size", [1, 2, 3, 5, 8, 13, 1000])
def test_edge_texts(tmp_path, text, size):
    data = text.encode("utf-8")
    check_cover(write(tmp_path, "t.txt", data), data, size)


def test_lines_longer_than_the_split_go_to_the_split_they_start_in(tmp_path):
    text = "short\n" + "L" * 50 + "\nend\n"
    path = write(tmp_path, "long.txt", text)
    splits = make_splits([path], 8)
    texts = [read_split(s) for s in splits]
    assert len(splits) == (len(text) + 7) // 8
    # Split 0 (bytes 0-8) finishes the long line that starts in it; the splits
    # inside the long line are empty; the one holding "end"'s first byte reads it.
    assert texts[0] == "short\n" + "L" * 50 + "\n"
    assert [t for t in texts[1:] if t] == ["end\n"]


def test_multibyte_characters_are_never_cut(tmp_path):
    text = "😀" * 40 + "\n" + "é" * 33 + "\n" + "日" * 9
    path = write(tmp_path, "mb.txt", text)
    for size in range(1, 20):
        texts = [read_split(s) for s in make_splits([path], size)]
        assert "".join(texts) == text
        assert all("\ufffd" not in t for t in texts)


def test_empty_file_has_one_empty_split(tmp_path):
    path = write(tmp_path, "empty.txt", b"")
    splits = make_splits([path], 4)
    assert splits == [Split(path, os.path.abspath(path), 0, 0, fingerprint(path))]
    assert read_split(splits[0]) == ""


def test_several_files_each_split_separately(tmp_path):
    a = write(tmp_path, "a.txt", "1\n2\n3\n4\n")
    b = write(tmp_path, "b.txt", "x\n")
    splits = make_splits([a, b, a], 3)
    assert [s.key for s in splits] == [a, a, a, b, a, a, a]
    assert "".join(read_split(s) for s in splits if s.key == b) == "x\n"
    assert "".join(read_split(s) for s in splits[:3]) == "1\n2\n3\n4\n"


def test_key_is_the_path_as_given(tmp_path, monkeypatch):
    write(tmp_path, "rel.txt", "hello\n")
    monkeypatch.chdir(tmp_path)
    (split,) = make_splits(["rel.txt"])
    assert split.key == "rel.txt"
    assert split.path == str(tmp_path / "rel.txt")
    assert read_split(split) == "hello\n"


def test_invalid_utf8_is_decoded_with_replacement_characters(tmp_path):
    data = b"ok\n" + b"bad \xff\xfe here\n" + b"cut \xe6\x97\n" + b"\xc3\xa9 fine\n"
    path = write(tmp_path, "bad.bin", data)
    (split,) = make_splits([path])
    text = read_split(split)
    assert text == data.decode("utf-8", "replace")
    assert text.startswith("ok\nbad \ufffd\ufffd here\ncut \ufffd")
    assert text.endswith("\né fine\n")
    # Split finely, the lines still come back whole (the split points are bytes, not characters).
    assert "".join(read_split(s) for s in make_splits([path], 3)) == text


# ---- errors ------------------------------------------------------------------------


def test_missing_file_is_a_usage_error_naming_it(tmp_path):
    missing = str(tmp_path / "nope.txt")
    with pytest.raises(UsageError, match="does not exist") as info:
        make_splits([write(tmp_path, "ok.txt", "x\n"), missing])
    assert missing in str(info.value)


@pytest.mark.parametrize("inside", [[], ["_SUCCESS", ".part-00000.a1.tmp", ".hidden"], ["sub/"]], ids=repr)
def test_folder_with_no_input_files_is_a_usage_error_naming_it(tmp_path, inside):
    folder = tmp_path / "adir"
    folder.mkdir()
    for name in inside:
        if name.endswith("/"):
            (folder / name).mkdir()
            (folder / name / "deeper.txt").write_text("not read\n")
        else:
            (folder / name).write_text("not input\n")
    with pytest.raises(UsageError, match="holds no input files") as info:
        make_splits([write(tmp_path, "ok.txt", "x\n"), str(folder)])
    assert str(folder) in str(info.value)


def test_something_neither_file_nor_folder_is_a_usage_error_naming_it(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(UsageError, match="not a regular file") as info:
        make_splits([str(fifo)])
    assert str(fifo) in str(info.value)


def test_no_inputs_is_a_usage_error():
    with pytest.raises(UsageError, match="no input"):
        make_splits([])
    with pytest.raises(UsageError):
        check_inputs([])


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read anything")
def test_unreadable_file_is_a_usage_error(tmp_path):
    path = write(tmp_path, "secret.txt", "x\n")
    os.chmod(path, 0)
    with pytest.raises(UsageError, match="not readable") as info:
        make_splits([path])
    assert path in str(info.value)


@pytest.mark.parametrize("size", [0, -1])
def test_split_size_must_be_positive(tmp_path, size):
    with pytest.raises(UsageError, match="positive"):
        make_splits([write(tmp_path, "a.txt", "x\n")], size)


def test_check_inputs_reports_sizes(tmp_path):
    path = write(tmp_path, "s.txt", "héllo\n")
    assert check_inputs([path]) == [(path, os.path.abspath(path), 7)]


def test_fingerprint_changes_with_the_file_and_is_empty_when_unseen(tmp_path):

    path = tmp_path / "a.txt"
    path.write_text("one\n")
    first = fingerprint(str(path))
    assert first.startswith("4:") and make_splits([str(path)])[0].fingerprint == first
    os.utime(path, ns=(1, 2))
    assert fingerprint(str(path)) == "4:2"
    assert fingerprint(str(tmp_path / "missing")) == ""


def test_line_records_carry_the_byte_offset_of_each_line(tmp_path):
    from mapreduce.inputs import Position, line_records

    path = tmp_path / "t.txt"
    data = "héllo\nworld\r\n\nlast".encode()
    path.write_bytes(data)
    whole = list(line_records(Split("t.txt", str(path), 0, len(data))))
    assert whole == [
        (Position("t.txt", 0), "héllo"),
        (Position("t.txt", 7), "world\r"),  # split at \n only: the line as it is
        (Position("t.txt", 14), ""),
        (Position("t.txt", 15), "last"),
    ]
    for cut in range(1, len(data)):  # any two splits: every line once, with the same position
        halves = [
            *line_records(Split("t.txt", str(path), 0, cut)),
            *line_records(Split("t.txt", str(path), cut, len(data))),
        ]
        assert halves == whole


# ---- folders -----------------------------------------------------------------------


def make_folder(tmp_path) -> tuple[str, dict[str, str]]:
    """A folder as an earlier job leaves it, plus things that are not input: returns the
    folder and the input files in it (name -> text)."""
    folder = tmp_path / "books"
    folder.mkdir()
    texts = {"b.txt": "bee\nbuzz\n", "a.txt": "ant\n", "c": "cat\ncow\ncrow\n", "part-00000": "x\t1\n"}
    for name, text in texts.items():
        (folder / name).write_text(text)
    for skipped in ("_SUCCESS", "_logs", ".part-00001.a3.tmp", ".DS_Store"):
        (folder / skipped).write_text("never read\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "inner.txt").write_text("not recursive\n")
    return str(folder), texts


def test_a_folder_is_its_files_in_name_order_skipping_hidden_underscored_and_sub_folders(tmp_path):
    folder, texts = make_folder(tmp_path)
    names = sorted(texts)
    assert expand_inputs([folder]) == [os.path.join(folder, n) for n in names]
    splits = make_splits([folder])
    assert [s.key for s in splits] == [os.path.join(folder, n) for n in names]
    assert [read_split(s) for s in splits] == [texts[n] for n in names]


def test_a_folder_gives_the_same_splits_as_its_files_one_by_one(tmp_path):
    folder, texts = make_folder(tmp_path)
    files = [os.path.join(folder, n) for n in sorted(texts)]
    other = write(tmp_path, "other.txt", "o\n" * 10)
    for size in (1, 3, 7, 1000):
        assert make_splits([other, folder, other], size) == make_splits([other, *files, other], size)


def test_a_folder_given_with_a_trailing_slash_or_relatively_keys_its_files_as_joined(tmp_path, monkeypatch):
    folder, texts = make_folder(tmp_path)
    monkeypatch.chdir(tmp_path)
    assert [s.key for s in make_splits(["books/"])] == [f"books/{n}" for n in sorted(texts)]
    assert [s.key for s in make_splits(["books"])] == [f"books/{n}" for n in sorted(texts)]
    assert make_splits(["books"])[0].path == os.path.join(folder, "a.txt")


def test_files_given_by_name_are_read_even_with_a_skipped_name(tmp_path):
    path = write(tmp_path, "_underscored", "read\n")
    assert [read_split(s) for s in make_splits([path])] == ["read\n"]


def test_a_broken_link_in_a_folder_is_a_usage_error_naming_it(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "gone.txt").symlink_to(tmp_path / "missing")
    with pytest.raises(UsageError, match="does not exist") as info:
        make_splits([str(folder)])
    assert os.path.join(str(folder), "gone.txt") in str(info.value)


# ---- compressed inputs ---------------------------------------------------------------

COMPRESSORS = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
TEXT = "".join(f"line {i} {'é' * (i % 5)} {'日本' * (i % 3)}\n" for i in range(20000)) + "no newline at the end"


@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_a_compressed_file_is_one_split_read_decompressed(tmp_path, suffix):
    data = COMPRESSORS[suffix](TEXT.encode())
    path = write(tmp_path, f"t.txt{suffix}", data)
    for size in (1, 100, len(data) - 1, 1 << 30):
        splits = make_splits([path], size)
        assert splits == [Split(path, os.path.abspath(path), 0, len(data), fingerprint(path))]
    assert read_split(splits[0]) == TEXT


@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_concatenated_streams_read_as_one_file(tmp_path, suffix):
    compress = COMPRESSORS[suffix]
    path = write(tmp_path, f"two{suffix}", compress(b"first\n") + compress(b"second\n"))
    assert read_split(make_splits([path])[0]) == "first\nsecond\n"


@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_an_empty_compressed_file_has_no_records(tmp_path, suffix):
    path = write(tmp_path, f"empty{suffix}", b"")
    assert [read_split(s) for s in make_splits([path])] == [""]


class Remote:
    """Only what RemoteFile offers (read, seek from the start, tell): no fileno, no path."""

    def __init__(self, data: bytes):
        self._f = io.BytesIO(data)
        self.read, self.seek, self.tell = self._f.read, self._f.seek, self._f.tell


@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_a_compressed_file_seen_remotely_reads_the_same(tmp_path, suffix):
    data = COMPRESSORS[suffix](TEXT.encode())
    path = write(tmp_path, f"t{suffix}", data)
    (split,) = make_splits([path])
    elsewhere = Split(split.key, "/not/on/this/host" + suffix, split.start, split.end)
    assert read_split(elsewhere, Remote(data)) == TEXT


def damaged(data: bytes, how: str) -> bytes:
    if how == "truncated":
        return data[: len(data) * 2 // 3]
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0x5A for b in data[middle : middle + 64]) + data[middle + 64 :]


@pytest.mark.parametrize("how", ["truncated", "corrupt"])
@pytest.mark.parametrize("suffix", COMPRESSORS)
def test_a_damaged_archive_fails_naming_the_file_and_where(tmp_path, suffix, how):
    bad = damaged(COMPRESSORS[suffix](TEXT.encode()), how)
    path = write(tmp_path, f"bad{suffix}", bad)
    (split,) = make_splits([path])  # its start is fine: found only when read
    for source in (None, Remote(bad)):
        with pytest.raises(InputError, match=r"reading failed after \d+ uncompressed bytes") as info:
            read_split(split, source)
        assert f"input {path!r} is a damaged" in str(info.value)
        assert "compressed bytes" in str(info.value)


@pytest.mark.parametrize("suffix, codec", [(".gz", "gzip"), (".bz2", "bzip2"), (".xz", "xz")])
def test_a_compressed_name_on_a_plain_file_is_refused_before_any_work(tmp_path, suffix, codec):
    path = write(tmp_path, f"plain{suffix}", "just text\n")
    with pytest.raises(UsageError, match=f"not {codec}-compressed") as info:
        make_splits([path])
    assert path in str(info.value)


def test_the_wrong_compression_is_refused_too(tmp_path):
    path = write(tmp_path, "really-bzip2.gz", bz2.compress(b"x\n"))
    with pytest.raises(UsageError, match="not gzip-compressed"):
        make_splits([path])
