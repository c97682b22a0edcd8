"""The Sort Benchmark's records (gensort -a) and valsort's checks."""

from __future__ import annotations

import zlib

import pytest
from click.testing import CliRunner

from mapreduce.errors import UsageError
from mapreduce.tools.gensort import (
    RECORD,
    gensort,
    gensort_command,
    record_files,
    records,
    skip_ahead,
    valsort,
    valsort_command,
)

# The reference tool's first record (gensort -a): the published algorithm's fixed point.
RECORD_0 = b"AsfAGHM5om  " + b"0" * 32 + b"  " + b"0000222200002222000022220000222200002222000000001111\r\n"


def test_record_zero_is_the_reference_tools_and_every_record_has_the_format():
    first = list(records(0, 50))
    assert first[0] == RECORD_0
    for number, record in enumerate(first):
        assert len(record) == RECORD and record.endswith(b"\r\n")
        assert all(32 <= b < 127 for b in record[:10])  # a printable key
        assert record[10:12] == b"  " and record[12:44] == f"{number:032X}".encode() and record[44:46] == b"  "
        filler = record[46:98]
        assert all(filler[i : i + 4] == filler[i : i + 1] * 4 for i in range(0, 52, 4))


def test_skipping_ahead_equals_stepping_and_any_range_is_the_same_records():
    state, mask = 0, (1 << 128) - 1
    for steps in range(200):
        assert skip_ahead(steps) == state
        state = (0x2360ED051FC65DA44385DF649FCCF645 * state + 0x4A696D47726179524950202020202001) & mask
    assert list(records(137, 20)) == list(records(0, 157))[137:]


def test_gensort_spreads_records_over_files_in_order(tmp_path):
    paths = gensort(1001, tmp_path / "in", files=3, workers=2)
    assert [p.name for p in paths] == ["gensort-00000.txt", "gensort-00001.txt", "gensort-00002.txt"]
    assert b"".join(p.read_bytes() for p in paths) == b"".join(records(0, 1001))
    assert [p.stat().st_size // RECORD for p in paths] == [333, 334, 334]
    with pytest.raises(UsageError):
        gensort(10, tmp_path / "x", files=0)


def test_valsort_counts_checks_the_order_and_sums_the_crc32s(tmp_path):
    data = list(records(0, 300))
    unsorted = tmp_path / "unsorted"
    unsorted.mkdir()
    (unsorted / "a.txt").write_bytes(b"".join(data))
    summary = valsort(record_files(unsorted))
    assert summary.records == 300 and summary.checksum == sum(zlib.crc32(r) for r in data)
    assert summary.unordered is not None and "record " in summary.unordered
    ordered = tmp_path / "sorted"
    ordered.mkdir()
    by_key = sorted(data + data[:5])  # five keys twice
    (ordered / "part-00000").write_bytes(b"".join(by_key[:150]))
    (ordered / "part-00001").write_bytes(b"".join(by_key[150:]))
    (ordered / "_SUCCESS").write_bytes(b"")
    summary = valsort(record_files(ordered))
    assert (summary.records, summary.duplicate_keys, summary.unordered) == (305, 5, None)
    (ordered / "part-00002").write_bytes(by_key[0])  # a smaller key after the last file: out of order
    assert "part-00002" in valsort(record_files(ordered)).unordered
    (ordered / "part-00002").write_bytes(b"short")
    with pytest.raises(UsageError, match="not whole 100-byte records"):
        valsort(record_files(ordered))


def test_the_commands(tmp_path):
    runner = CliRunner()
    assert runner.invoke(gensort_command, ["120", str(tmp_path / "in"), "--files", "2"]).exit_code == 0
    out = tmp_path / "out"
    out.mkdir()
    (out / "part-00000").write_bytes(b"".join(sorted(records(0, 120))))
    ok = runner.invoke(valsort_command, [str(out), "--input", str(tmp_path / "in")])
    assert ok.exit_code == 0 and ok.output.strip().endswith("OK") and "records 120" in ok.output
    (out / "part-00000").write_bytes(b"".join(sorted(records(0, 119))))  # a record lost
    lost = runner.invoke(valsort_command, [str(out), "--input", str(tmp_path / "in")])
    assert lost.exit_code == 1 and "not the input's" in lost.output
    assert runner.invoke(valsort_command, [str(tmp_path / "empty")]).exit_code == 2
