"""Splits: byte ranges moved to line boundaries cover every file exactly once."""

from __future__ import annotations

import os
import random

import pytest

from mapreduce.errors import UsageError
from mapreduce.inputs import Split, check_inputs, fingerprint, make_splits, read_range, read_split

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


def test_directory_is_a_usage_error_naming_it(tmp_path):
    folder = tmp_path / "adir"
    folder.mkdir()
    with pytest.raises(UsageError, match="not a regular file") as info:
        make_splits([str(folder)])
    assert str(folder) in str(info.value)


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
