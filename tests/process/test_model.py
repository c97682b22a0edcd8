"""The programming model on both kinds of cluster, each run compared byte for byte with
`mapreduce seq`: the embedded one (`mapreduce run`) and separately started workers."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import shutil
from pathlib import Path

import pytest

from helpers import APPS, assert_same_output, run_cli, run_external
from mapreduce.output import read_output

EMITTERS = str(APPS / "emitters.py")


def run_on(cluster: str, app: str, inputs: list[str], out, *args: str) -> None:
    if cluster == "embedded":
        run_cli("run", app, *inputs, "--output", str(out), "--workers", "2", "--quiet", *args)
    else:
        run_external(app, inputs, out, *args)


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_reduce_emitting_none_one_many_and_other_keys(cluster, gutenberg, oracle, tmp_path):
    args = ["--reduce", "3", "--split-size", "300k"]
    expected = oracle(EMITTERS, gutenberg, *args)
    out = tmp_path / "out"
    run_on(cluster, EMITTERS, gutenberg, out, *args)
    assert_same_output(expected, out)
    lines = [line for part in sorted(out.glob("part-*")) for line in part.read_text().splitlines()]
    assert any(line.startswith("len:") and "\t" not in line for line in lines)  # key-only lines
    assert any(line.startswith("frequent:") for line in lines)  # records under other keys
    counts = {k: v for k, _, v in (line.partition("\t") for line in lines if "\t" in line)}
    assert "1" not in counts.values()  # keys seen once emitted nothing


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_map_only_job_writes_a_part_per_map_task_in_emitted_order(cluster, gutenberg, oracle, tmp_path):
    args = ["--reduce", "0", "--split-size", "256k"]  # wordcount's map, no reduce: its records as they come
    expected = oracle("wordcount", gutenberg, *args)
    out = tmp_path / "out"
    run_on(cluster, "wordcount", gutenberg, out, *args)
    assert_same_output(expected, out)
    parts = sorted(out.glob("part-*"))
    assert len(parts) > len(gutenberg)  # more map tasks than files: a part per map task


# ---- inputs as users give them --------------------------------------------------------


def books_folder(gutenberg: list[str], folder: Path) -> list[str]:
    """A folder of some books, plus what is not input (an earlier job's marker, temp and
    hidden files, a sub-folder); returns the books' paths as a folder input names them."""
    folder.mkdir()
    for book in gutenberg[:4]:
        shutil.copy(book, folder / Path(book).name)
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000.a1.tmp").write_text("partial output\n")
    (folder / "sub").mkdir()
    shutil.copy(gutenberg[4], folder / "sub" / "not-read.txt")
    return [os.path.join(str(folder), Path(book).name) for book in sorted(gutenberg[:4])]


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_a_folder_input_equals_its_files_given_one_by_one(cluster, gutenberg, oracle, tmp_path):
    files = books_folder(gutenberg, tmp_path / "books")
    args = ["--reduce", "3", "--split-size", "200k"]
    expected = oracle("indexer", files, *args)  # its values name the files: keys must match too
    assert_same_output(expected, oracle("indexer", [str(tmp_path / "books")], *args))
    out = tmp_path / "out"
    run_on(cluster, "indexer", [str(tmp_path / "books") + "/"], out, *args)
    assert_same_output(expected, out)
    assert "not-read.txt" not in "".join(read_output(out))


@pytest.mark.parametrize("compress", ["none", "gzip"])
@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_a_jobs_output_folder_is_the_next_jobs_input(cluster, compress, gutenberg, oracle, tmp_path):
    first = tmp_path / "counts"
    run_on(cluster, "wordcount", gutenberg, first, "--reduce", "3", "--compress", compress)
    parts = sorted(str(p) for p in first.glob("part-*"))
    assert len(parts) == 3 and (first / "_SUCCESS").exists()
    # grep is map-only with a map task per file: a part more if _SUCCESS were read
    grep = ["--param", "pattern=^the\t"]
    expected = oracle("grep", parts, *grep)
    out = tmp_path / "out"
    run_on(cluster, "grep", [str(first)], out, *grep)
    assert_same_output(expected, out)
    assert sorted(os.listdir(out)) == ["_SUCCESS", "part-00000", "part-00001", "part-00002"]
    (match,) = read_output(out)  # decompressed: the line of "the" and its count
    the = dict(line.rstrip("\n").split("\t") for line in read_output(first))["the"]
    assert match.endswith(f"\tthe\t{the}\n")


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_compressed_inputs_give_the_output_of_the_plain_files(cluster, gutenberg, oracle, tmp_path):
    compressors = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}
    inputs = []
    for book, suffix in zip(gutenberg, [*compressors, *compressors]):
        packed = tmp_path / (Path(book).name + suffix)
        packed.write_bytes(compressors[suffix](Path(book).read_bytes()))
        inputs.append(str(packed))
    inputs += gutenberg[len(inputs) :]
    args = ["--reduce", "3", "--split-size", "100k"]  # the plain ones are cut, the compressed ones cannot be
    expected = oracle("wordcount", gutenberg, *args)
    assert_same_output(expected, oracle("wordcount", inputs, *args))
    out = tmp_path / "out"
    run_on(cluster, "wordcount", inputs, out, *args)
    assert_same_output(expected, out)


def test_a_damaged_gz_input_fails_the_job_naming_the_file(gutenberg, tmp_path):
    damaged = tmp_path / "book.txt.gz"
    damaged.write_bytes(gzip.compress(Path(gutenberg[0]).read_bytes())[:-5000])
    inputs = [gutenberg[1], str(damaged)]
    for command, extra in [("seq", []), ("run", ["--workers", "2", "--quiet", "--max-attempts", "2"])]:
        result = run_cli(command, "wordcount", *inputs, "--output", str(tmp_path / command), *extra, check=False)
        assert result.returncode == 1, result.stderr
        assert f"input '{damaged}' is a damaged gzip file: reading failed after" in result.stderr, result.stderr
        assert "uncompressed bytes" in result.stderr and "Traceback" not in result.stderr
        assert not (tmp_path / command / "_SUCCESS").exists()


# ---- compressed output ---------------------------------------------------------------


@pytest.mark.parametrize("reduces", ["3", "0"])
@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_gzip_output_equals_seqs_byte_for_byte_and_decompresses_to_the_plain_output(
    cluster, reduces, gutenberg, oracle, tmp_path
):
    args = ["--reduce", reduces, "--split-size", "300k"]
    plain = oracle("wordcount", gutenberg, *args)
    expected = oracle("wordcount", gutenberg, *args, "--compress", "gzip")
    out = tmp_path / "out"
    run_on(cluster, "wordcount", gutenberg, out, *args, "--compress", "gzip")
    assert_same_output(expected, out)
    names = sorted(os.listdir(plain))
    assert sorted(os.listdir(out)) == [n if n == "_SUCCESS" else n + ".gz" for n in names]
    for name in names:
        if name != "_SUCCESS":
            assert gzip.decompress((out / f"{name}.gz").read_bytes()) == (plain / name).read_bytes()


@pytest.mark.parametrize("first, then", [("gzip", "none"), ("none", "gzip")])
def test_overwrite_replaces_an_earlier_jobs_parts_compressed_or_not(first, then, gutenberg, oracle, tmp_path):
    out = tmp_path / "out"
    run_on("embedded", "wordcount", gutenberg[:2], out, "--reduce", "4", "--compress", first)
    args = ["--reduce", "2", "--compress", then]
    run_on("embedded", "wordcount", gutenberg[2:4], out, *args, "--overwrite")
    assert_same_output(oracle("wordcount", gutenberg[2:4], *args), out)
