"""The Sort Benchmark's data: ``gensort -a`` records, and ``valsort``'s checks of a sort.

A record is 100 bytes of ASCII: a 10-byte key, two spaces, the record number in 32 hex
digits, two spaces, 52 bytes of filler, CR LF. Record ``n`` comes from the benchmark's 128-bit
linear congruential generator advanced ``n + 1`` steps from 0 (the published algorithm, so the
bytes equal the reference tool's: record 0 begins ``AsfAGHM5om``). The key is the generator's
high 64 bits as 8 base-95 printable digits, then 2 from its low 64 bits; the filler repeats
each of the low 52 bits' 13 hex digits four times.

``valsort`` reads records in file-name order and checks they are in key order within and
across files, and counts records, duplicate keys and a checksum (the sum of every record's
CRC32): a sort keeps the count and the checksum of its input.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import click

from mapreduce.errors import UsageError

RECORD = 100
KEY = 10
_A = 0x2360ED051FC65DA44385DF649FCCF645  # the generator's multiplier
_C = 0x4A696D47726179524950202020202001  # and its increment
_MASK = (1 << 128) - 1
_LOW64 = (1 << 64) - 1


def skip_ahead(steps: int) -> int:
    """The generator's state after ``steps`` steps from 0, in O(log steps): the affine maps
    x -> a x + c composed by squaring."""
    mul, add = 1, 0  # the identity
    step_mul, step_add = _A, _C
    while steps:
        if steps & 1:
            mul, add = (mul * step_mul) & _MASK, (add * step_mul + step_add) & _MASK
        step_mul, step_add = (step_mul * step_mul) & _MASK, (step_add * step_mul + step_add) & _MASK
        steps >>= 1
    return add  # from a state of 0: a^n * 0 + (the sum of the increments)


def records(first: int, count: int) -> Iterator[bytes]:
    """Records ``first`` to ``first + count - 1``."""
    state = skip_ahead(first)
    for number in range(first, first + count):
        state = (_A * state + _C) & _MASK
        high, low = state >> 64, state & _LOW64
        key = []
        for _ in range(8):
            high, digit = divmod(high, 95)
            key.append(32 + digit)
        rest = low
        for _ in range(2):
            rest, digit = divmod(rest, 95)
            key.append(32 + digit)
        filler = "".join(c * 4 for c in f"{low & 0xFFFFFFFFFFFFF:013X}")
        yield bytes(key) + f"  {number:032X}  {filler}\r\n".encode("ascii")


def _write_file(path: str, first: int, count: int) -> int:
    with open(path, "wb") as f:
        batch = []
        for record in records(first, count):
            batch.append(record)
            if len(batch) == 10_000:
                f.write(b"".join(batch))
                batch.clear()
        f.write(b"".join(batch))
    return count


def gensort(total: int, folder: Path, files: int = 1, workers: int | None = None) -> list[Path]:
    """Write records 0 to ``total - 1`` into ``files`` files of ``folder`` (as even as can be),
    the files generated in parallel; return their paths."""
    if total < 0 or files < 1:
        raise UsageError(f"gensort needs records >= 0 and files >= 1, got {total} and {files}")
    folder.mkdir(parents=True, exist_ok=True)
    bounds = [total * i // files for i in range(files + 1)]
    paths = [folder / f"gensort-{i:05d}.txt" for i in range(files)]
    jobs = [(str(p), bounds[i], bounds[i + 1] - bounds[i]) for i, p in enumerate(paths)]
    with ProcessPoolExecutor(max_workers=min(files, workers or os.cpu_count() or 1)) as pool:
        list(pool.map(_write_file, *zip(*jobs)))
    return paths


@dataclass(frozen=True)
class Summary:
    """What valsort says of a set of record files."""

    records: int
    checksum: int  # the sum of every record's CRC32
    duplicate_keys: int  # records whose key equals the previous record's
    unordered: str | None  # None: in key order; else where the order breaks first

    def describe(self) -> str:
        order = "in order" if self.unordered is None else f"NOT in order: {self.unordered}"
        return f"records {self.records}, checksum {self.checksum:x}, duplicate keys {self.duplicate_keys}, {order}"


def valsort(paths: Sequence[Path]) -> Summary:
    """Check and summarize record files read in the given order."""
    count = checksum = duplicates = 0
    unordered = None
    previous = b""
    for path in paths:
        with open(path, "rb") as f:
            while block := f.read(RECORD * 10_000):
                if len(block) % RECORD:
                    raise UsageError(f"{path}: {len(block) % RECORD} bytes left over: not whole 100-byte records")
                for start in range(0, len(block), RECORD):
                    record = block[start : start + RECORD]
                    key = record[:KEY]
                    if key < previous and unordered is None:
                        unordered = f"record {count} ({path.name}) has a smaller key than the one before it"
                    elif key == previous and count:
                        duplicates += 1
                    previous = key
                    checksum += zlib.crc32(record)
                    count += 1
    return Summary(count, checksum, duplicates, unordered)


def record_files(folder: Path) -> list[Path]:
    """A folder's record files in name order (a job's part files; not ``_`` or ``.`` names)."""
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a folder")
    found = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(("_", ".")))
    if not found:
        raise UsageError(f"{folder} holds no record files")
    return found


@click.command("gensort")
@click.argument("total", type=int)
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--files", default=1, show_default=True, help="Number of files (generated in parallel).")
def gensort_command(total: int, folder: Path, files: int) -> None:
    """Write TOTAL records of the Sort Benchmark's ``gensort -a`` format into FOLDER."""
    try:
        paths = gensort(total, folder, files)
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(f"wrote {total} records ({total * RECORD} bytes) into {len(paths)} file(s) in {folder}")


@click.command("valsort")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--input",
    "input_folder",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="The folder that was sorted: its record count and checksum must be kept.",
)
def valsort_command(folder: Path, input_folder: Path | None) -> None:
    """Check that FOLDER's records (a sort's part files, in name order) are in key order, and
    print their count, checksum and duplicate keys; exit 1 if not in order or if they are not
    the records of --input."""
    try:
        sorted_summary = valsort(record_files(folder))
        click.echo(f"output: {sorted_summary.describe()}")
        problems = [] if sorted_summary.unordered is None else ["the output is not in order"]
        if input_folder is not None:
            given = valsort(record_files(input_folder))
            click.echo(f"input:  records {given.records}, checksum {given.checksum:x}")
            if (given.records, given.checksum) != (sorted_summary.records, sorted_summary.checksum):
                problems.append("the output's records are not the input's (count or checksum differ)")
    except UsageError as exc:
        raise click.UsageError(str(exc)) from None
    if problems:
        raise click.ClickException("; ".join(problems))
    click.echo("OK")
