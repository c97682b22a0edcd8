"""The programming model on both kinds of cluster, each run compared byte for byte with
`mapreduce seq`: the embedded one (`mapreduce run`) and separately started workers."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers import APPS, assert_same_output, run_cli, run_external
from mapreduce.output import read_output
from mapreduce.wire.events import RecordSkipped, Tally, read_events

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


LINESTATS = str(APPS / "linestats.py")


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_line_input_with_setup_and_teardown(cluster, gutenberg, oracle, tmp_path):
    args = ["--reduce", "2", "--split-size", "200k"]
    expected = oracle(LINESTATS, gutenberg, *args)
    out = tmp_path / "out"
    run_on(cluster, LINESTATS, gutenberg, out, *args)
    assert_same_output(expected, out)
    lines = [line for part in sorted(out.glob("part-*")) for line in part.read_text().splitlines()]
    assert sum(line.startswith("~summary ") for line in lines) == 2  # one per reduce task
    first = {line.split("\t")[0]: line.rsplit(" ", 1)[1] for line in lines if line.startswith("line-start:")}
    for book in gutenberg:  # the byte offset of each book's first line that is not blank
        data = Path(book).read_bytes()
        offset = next(i for i, line in enumerate(data.split(b"\n")) if line.strip())
        expected_offset = sum(len(line) + 1 for line in data.split(b"\n")[:offset])
        assert first[f"line-start:{Path(book).name}"] == str(expected_offset)


COUNTING = str(APPS / "counting.py")


def printed_counters(stderr: str) -> dict[str, int]:
    """The counters a command printed at its end (``counters:`` then ``  group.name = value``)."""
    lines = stderr.split("counters:\n", 1)[1].splitlines()
    return {name: int(value) for name, _, value in (line.strip().partition(" = ") for line in lines if " = " in line)}


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_counters_of_successful_attempts_match_seq(cluster, gutenberg, tmp_path):
    args = ["--reduce", "3", "--split-size", "400k"]
    seq = run_cli("seq", COUNTING, *gutenberg, "--output", str(tmp_path / "seq"), *args)
    expected = printed_counters(seq.stderr)
    events = tmp_path / "events.jsonl"
    run_on(cluster, COUNTING, gutenberg, tmp_path / "out", *args, "--events", str(events))
    counted = {f"{g}.{c}": v for (g, c), v in Tally.of(read_events(events)).counters.items()}
    assert expected["words.seen"] == counted["words.seen"] > 600_000
    combined = {"mapreduce.COMBINE_INPUT_RECORDS", "mapreduce.COMBINE_OUTPUT_RECORDS", "mapreduce.REDUCE_INPUT_RECORDS"}
    assert {k: v for k, v in counted.items() if k not in combined} == {
        k: v for k, v in expected.items() if k not in combined
    }  # seq never combines: the rest is the same
    assert counted["mapreduce.COMBINE_INPUT_RECORDS"] == counted["mapreduce.MAP_OUTPUT_RECORDS"]
    assert counted["mapreduce.COMBINE_OUTPUT_RECORDS"] == counted["mapreduce.REDUCE_INPUT_RECORDS"]
    assert counted["mapreduce.REDUCE_INPUT_RECORDS"] < expected["mapreduce.REDUCE_INPUT_RECORDS"]


def awkward_lines(tmp_path) -> list[str]:
    """Inputs with duplicates, empty lines, CRLF, Unicode, and a last line without newline."""
    rng = random.Random(5)
    words = ["apple", "Apple", "b", "", "zebra\r", "é", "naïve", "a b", "10", "9", "~", "apple"]
    paths = []
    for n in range(3):
        lines = [rng.choice(words) + (str(rng.randrange(50)) if rng.random() < 0.5 else "") for _ in range(3000)]
        path = tmp_path / f"in{n}.txt"
        path.write_text("\n".join(lines) + ("\n" if n else ""), encoding="utf-8")  # in0 ends mid-line
        paths.append(str(path))
    return paths


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_sort_is_lc_all_c_sort_across_part_files(cluster, oracle, tmp_path):
    inputs = awkward_lines(tmp_path)
    args = ["--reduce", "4", "--split-size", "8k"]
    expected = oracle("sort", inputs, *args)
    out = tmp_path / "out"
    run_on(cluster, "sort", inputs, out, *args)
    assert_same_output(expected, out)
    together = b"".join(part.read_bytes() for part in sorted(out.glob("part-*")))
    sort = subprocess.run(["sort", *inputs], capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=True)
    assert together == sort.stdout
    sizes = [len(part.read_bytes().splitlines()) for part in sorted(out.glob("part-*"))]
    assert len(sizes) == 4 and max(sizes) < 0.6 * sum(sizes)  # ranges, not one partition holding all


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_secondary_sort_gives_each_keys_values_in_order(cluster, gutenberg, oracle, tmp_path):
    app = str(APPS / "secondary.py")
    args = ["--reduce", "3", "--split-size", "300k"]
    expected = oracle(app, gutenberg, *args)  # the app's reduce asserts the order itself
    out = tmp_path / "out"
    run_on(cluster, app, gutenberg, out, *args)
    assert_same_output(expected, out)


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_join_is_an_inner_equi_join_in_input_order(cluster, oracle, tmp_path):
    people = tmp_path / "people.tsv"
    people.write_text("1\tada\n2\tbob\n3\tcy\n2\tbo\n")  # id 2 twice on the left
    orders = tmp_path / "orders"
    orders.mkdir()
    (orders / "a.tsv").write_text("2\to1\tpen\n9\to2\tcup\n1\to3\tink\n")
    (orders / "b.tsv").write_text("2\to4\tpad\n")
    inputs = [str(people), str(orders / "a.tsv"), str(orders / "b.tsv")]
    args = ["--param", f"left={people}", "--reduce", "2"]
    expected = oracle("join", inputs, *args)
    out = tmp_path / "out"
    run_on(cluster, "join", inputs, out, *args)
    assert_same_output(expected, out)
    by_key = {}
    for part in out.glob("part-*"):
        for line in part.read_text().splitlines():
            key, rest = line.split("\t", 1)
            by_key.setdefault(key, []).append(rest)
    assert by_key == {
        "1": ["ada\to3\tink"],
        "2": ["bob\to1\tpen", "bo\to1\tpen", "bob\to4\tpad", "bo\to4\tpad"],  # each right line, each left line
    }
    out2 = tmp_path / "out2"
    with pytest.raises(AssertionError, match="key is a 1-based column"):
        run_cli("seq", "join", *inputs, "--param", f"left={people}", "--param", "key=0", "--output", str(out2))


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_bad_records_are_skipped_and_reported_the_same_as_seq(cluster, oracle, tmp_path):
    app = str(APPS / "badrecords.py")
    path = tmp_path / "in.txt"
    lines = [f"w{i % 7} venom x" if i == 40 else f"w{i % 7} y{i % 3}" for i in range(200)]
    lines[77] = "a POISON line"
    path.write_text("\n".join(lines) + "\n")
    offset = sum(len(line) + 1 for line in lines[:77])
    args = ["--reduce", "2", "--skip-bad-records", "1", "--max-attempts", "2"]
    expected = oracle(app, [str(path)], *args[:4])
    events = tmp_path / "events.jsonl"
    run_on(cluster, app, [str(path)], tmp_path / "out", *args, "--events", str(events))
    assert_same_output(expected, tmp_path / "out")
    skipped = [e for e in read_events(events) if isinstance(e, RecordSkipped)]
    assert sorted((e.phase.value, e.record) for e in skipped) == [("map", str(offset)), ("reduce", "venom")]
    assert all("ValueError" in e.error for e in skipped) and str(path) in [e.input for e in skipped]
    text = "".join(p.read_text() for p in sorted((tmp_path / "out").glob("part-*")))
    assert "venom" not in text and "POISON" not in text and "w0\t" in text


def test_without_skipping_a_bad_record_fails_the_job(oracle, tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("fine line\na POISON line\n")
    failed = run_cli("seq", str(APPS / "badrecords.py"), str(path), "--output", str(tmp_path / "o"), check=False)
    assert failed.returncode != 0 and "poisoned line at 10" in failed.stderr


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


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_side_files_are_opened_by_name_in_every_task(cluster, gutenberg, oracle, tmp_path):
    app = str(APPS / "sidefile.py")
    keep = tmp_path / "lists" / "keep.txt"
    keep.parent.mkdir()
    keep.write_text("whale holmes gregor the\n")
    args = ["--reduce", "2", "--file", str(keep)]
    expected = oracle(app, gutenberg, *args)
    out = tmp_path / "out"
    run_on(cluster, app, gutenberg, out, *args)
    assert_same_output(expected, out)
    words = {line.split("\t")[0] for part in out.glob("part-*") for line in part.read_text().splitlines()}
    assert words == {"whale", "holmes", "gregor", "the"}


def test_a_missing_side_file_is_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    refused = run_cli(
        "seq", "wordcount", __file__, "--file", str(tmp_path / "nope.txt"), "--output", str(out), check=False
    )
    assert refused.returncode == 2 and "--file" in refused.stderr and "does not exist" in refused.stderr
    assert not out.exists()


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_topwords_a_two_step_pipeline_is_the_n_most_frequent_words_ties_by_word(cluster, gutenberg, oracle, tmp_path):
    args = ["--param", "n=300", "--split-size", "300k"]
    expected = oracle("topwords", gutenberg, *args)
    out = tmp_path / "out"
    run_on(cluster, "topwords", gutenberg, out, *args)
    assert_same_output(expected, out)
    assert sorted(p.name for p in out.iterdir()) == ["_SUCCESS", "part-00000"]  # the app needs one reduce
    counts = tmp_path / "counts"
    run_cli("seq", "wordcount", *gutenberg, "--output", str(counts), "--quiet")
    every = [line.split("\t") for part in sorted(counts.glob("part-*")) for line in part.read_text().splitlines()]
    ranked = sorted(((int(n), w) for w, n in every), key=lambda e: (-e[0], e[1]))[:300]
    assert (out / "part-00000").read_text() == "".join(f"{w}\t{n}\n" for n, w in ranked)
    assert len({n for n, _ in ranked}) < 300  # ties were there to break
    wider = tmp_path / "wider"  # --reduce sets the first step's reduces; the ranking step keeps its one
    run_cli("seq", "topwords", *gutenberg, *args, "--reduce", "5", "--output", str(wider), "--quiet")
    assert_same_output(out, wider)


def test_sort_of_gensort_records_passes_valsort(oracle, tmp_path):
    from mapreduce.tools.gensort import gensort, record_files, valsort

    inputs = [str(p) for p in gensort(20_000, tmp_path / "in", files=4, workers=2)]
    args = ["--reduce", "4", "--split-size", "300k"]
    expected = oracle("sort", inputs, *args)
    out = tmp_path / "out"
    run_on("embedded", "sort", inputs, out, *args)
    assert_same_output(expected, out)
    result, given = valsort(record_files(out)), valsort(record_files(tmp_path / "in"))
    assert result.unordered is None and (result.records, result.checksum) == (given.records, given.checksum)


@pytest.mark.parametrize("cluster", ["embedded", "external"])
def test_the_identity_reduce_writes_every_record_as_seq_does(cluster, gutenberg, oracle, tmp_path):
    app = str(APPS / "passthrough.py")
    args = ["--reduce", "2", "--split-size", "300k"]
    expected = oracle(app, gutenberg[:3], *args)
    out = tmp_path / "out"
    run_on(cluster, app, gutenberg[:3], out, *args)
    assert_same_output(expected, out)
    lines = list(read_output(out))
    assert any("\t" not in line for line in lines) and any("'a\\ttab']" in line for line in lines)


def test_sort_merging_runs_of_many_blocks_passes_valsort(oracle, tmp_path):
    """Runs of thousands of records per partition: the reduce merges many blocks per run."""
    from mapreduce.tools.gensort import gensort, record_files, valsort

    inputs = [str(p) for p in gensort(60_000, tmp_path / "in", files=2, workers=2)]
    args = ["--reduce", "2", "--split-size", "2m"]
    out = tmp_path / "out"
    run_on("embedded", "sort", inputs, out, *args)
    result, given = valsort(record_files(out)), valsort(record_files(tmp_path / "in"))
    assert result.unordered is None and (result.records, result.checksum) == (given.records, given.checksum)
    assert_same_output(oracle("sort", inputs, *args), out)
