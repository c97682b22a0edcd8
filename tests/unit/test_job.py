"""Loading apps, the app contract, shipping apps by value, and wordcount's notion of a word."""

from __future__ import annotations

import collections
import dataclasses
import json
import random
import subprocess
import sys
import textwrap
import uuid
from collections import Counter

import pytest

from mapreduce.apps import wordcount
from mapreduce.errors import AppError, UsageError
from mapreduce.job import NO_VALUE, App, Record, emitted, load_app, stable_partition
from mapreduce.shuffle import MapOutputBuffer


def write_app(tmp_path, body: str, stem: str | None = None) -> str:
    """Write an app file with a unique name (loaded modules are keyed by file stem)."""
    stem = stem or f"app_{uuid.uuid4().hex[:10]}"
    path = tmp_path / f"{stem}.py"
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return str(path)


GREP_LIKE = """
    import re

    _pattern = None

    def init(params):
        global _pattern
        _pattern = re.compile(params["pattern"])

    def map(path, text):
        for number, line in enumerate(text.splitlines(), 1):
            if _pattern.search(line):
                yield f"{path}:{number}", line

    def reduce(key, values):
        return next(values)
"""


# ---- loading ------------------------------------------------------------------------


def test_load_builtin_by_short_name():
    app = load_app("wordcount")
    assert app.name == "wordcount"
    assert app.map is wordcount.map and app.reduce is wordcount.reduce and app.combine is wordcount.combine
    assert app.partition is stable_partition
    assert app.init is None and app.params == {} and app.whole_files is False
    assert sorted(app.map("f", "a b a")) == [("a", 2), ("b", 1)]


def test_load_builtin_by_apps_module_name():
    app = load_app("apps.wordcount")
    assert app.name == "apps.wordcount"
    assert dict(app.map("f", "x y x")) == {"x": 2, "y": 1}
    assert app.reduce("x", iter([2, 3])) == 5
    assert app.combine is not None


def test_load_by_module_path():
    app = load_app("mapreduce.apps.grep", {"pattern": "^b"})
    assert app.whole_files is True
    assert list(app.map("f.txt", "abc\nbcd\nxb\nb\n")) == [("f.txt:2", "bcd"), ("f.txt:4", "b")]


def test_load_user_package_module_by_dotted_path(tmp_path, monkeypatch):
    package = f"mrpkg_{uuid.uuid4().hex[:8]}"
    (tmp_path / package).mkdir()
    (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / package / "job.py").write_text(
        "def map(k, v):\n    yield v.upper(), 1\n\ndef reduce(k, vs):\n    return sum(vs)\n\nwhole_files = True\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    app = load_app(f"{package}.job")
    assert list(app.map("k", "abc")) == [("ABC", 1)]
    assert app.whole_files is True and app.combine is None


def test_load_by_py_file_path(tmp_path):
    path = write_app(
        tmp_path,
        """
        def map(key, value):
            for word in value.split():
                yield word, len(word)

        def reduce(key, values):
            return max(values)

        def partition(key, n):
            return len(key) % n
        """,
    )
    app = load_app(path)
    assert app.name == path
    assert list(app.map("k", "aa b")) == [("aa", 2), ("b", 1)]
    assert app.reduce("aa", iter([1, 5, 2])) == 5
    assert app.partition("abc", 2) == 1


def test_unknown_app_is_a_clear_app_error():
    name = f"no_such_app_{uuid.uuid4().hex[:8]}"
    with pytest.raises(AppError, match="unknown app") as info:
        load_app(name)
    message = str(info.value)
    assert name in message and "wordcount" in message  # lists the built-ins
    with pytest.raises(AppError, match="unknown app"):
        load_app(f"{name}.sub.module")
    assert issubclass(AppError, UsageError)


def test_missing_py_file_is_an_app_error(tmp_path):
    missing = str(tmp_path / "nope.py")
    with pytest.raises(AppError, match="does not exist") as info:
        load_app(missing)
    assert missing in str(info.value)


def test_file_missing_map(tmp_path):
    path = write_app(tmp_path, "def reduce(k, v):\n    return []\n")
    with pytest.raises(AppError, match=r"defines no map\(") as info:
        load_app(path)
    assert path in str(info.value)


def test_an_app_without_reduce_is_map_only_and_cannot_combine(tmp_path):
    assert load_app(write_app(tmp_path, "def map(k, v):\n    return []\n")).reduce is None
    body = "def map(k, v):\n    return []\ndef combine(k, v):\n    return 0\n"
    with pytest.raises(AppError, match="combine but no reduce"):
        load_app(write_app(tmp_path, body))


def test_required_name_that_is_not_a_function(tmp_path):
    path = write_app(tmp_path, "map = 3\ndef reduce(k, v):\n    return 0\n")
    with pytest.raises(AppError, match=r"defines no map\("):
        load_app(path)


def test_optional_name_that_is_not_a_function(tmp_path):
    path = write_app(tmp_path, "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\ncombine = 'sum'\n")
    with pytest.raises(AppError, match="combine is defined but is not a function"):
        load_app(path)


def test_file_raising_at_import(tmp_path):
    path = write_app(
        tmp_path,
        "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\nraise RuntimeError('broken on purpose')\n",
    )
    with pytest.raises(AppError, match="failed to import") as info:
        load_app(path)
    message = str(info.value)
    assert "RuntimeError" in message and "broken on purpose" in message and path in message
    assert not [m for m in sys.modules if m.startswith("mapreduce_app_") and m.endswith(path.rsplit("/", 1)[1][:-3])]


def test_syntax_error_in_app_file(tmp_path):
    path = write_app(tmp_path, "def map(k, v)\n    return []\n")
    with pytest.raises(AppError, match="failed to import.*SyntaxError"):
        load_app(path)


def test_app_module_with_a_missing_dependency_is_broken_not_unknown(tmp_path, monkeypatch):
    module = f"mrdep_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text("import surely_not_installed_dep_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(AppError, match="failed to import") as info:
        load_app(module)
    assert "surely_not_installed_dep_xyz" in str(info.value)
    assert "unknown app" not in str(info.value)


def test_params_for_an_app_without_init(tmp_path):
    with pytest.raises(AppError, match="takes no parameters") as info:
        load_app("wordcount", {"min": "3"})
    assert "min" in str(info.value) and "init" in str(info.value)
    path = write_app(tmp_path, "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\n")
    with pytest.raises(AppError, match="takes no parameters"):
        load_app(path, {"x": "1"})
    assert load_app(path, {}).params == {}


def test_init_rejecting_its_params_is_an_app_error():
    with pytest.raises(AppError, match="rejected its parameters") as info:
        load_app("grep")
    assert "pattern" in str(info.value)
    with pytest.raises(AppError, match="unknown parameter"):
        load_app("grep", {"pattern": "x", "colour": "red"})


# ---- partition -----------------------------------------------------------------------


@pytest.mark.parametrize("returned", ["3", "-1", "True", "'0'", "1.0", "None", "n"])
def test_out_of_range_partition_raises_app_error_when_used(tmp_path, returned):
    path = write_app(
        tmp_path,
        f"""
        def map(k, v):
            yield v, 1

        def reduce(k, vs):
            return sum(vs)

        def partition(key, n):
            return {returned}
        """,
    )
    app = load_app(path)  # loading does not call it
    with pytest.raises(AppError, match=r"partition\('word', 3\) returned") as info:
        app.partition("word", 3)
    assert "[0, 3)" in str(info.value)
    buffer = MapOutputBuffer(3, app.partition, None, tmp_path, 100)
    with pytest.raises(AppError, match="partition"):
        buffer.add_all(app.map("k", "word"), "input 'k'")


def test_in_range_partition_is_passed_through(tmp_path):
    path = write_app(
        tmp_path,
        "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\ndef partition(key, n):\n    return "
        "len(key) % n\n",
    )
    app = load_app(path)
    assert [app.partition("x" * i, 3) for i in range(6)] == [0, 1, 2, 0, 1, 2]


def test_stable_partition_is_crc32_and_in_range():
    import zlib

    for key in ["", "a", "é", "日本", "\udcff"]:
        for n in (1, 2, 7, 100):
            p = stable_partition(key, n)
            assert 0 <= p < n
            assert p == zlib.crc32(key.encode("utf-8", "surrogatepass")) % n


# ---- shipping apps by value ----------------------------------------------------------


def test_app_from_py_file_round_trips_with_its_init(tmp_path):
    path = write_app(tmp_path, GREP_LIKE)
    app = load_app(path, {"pattern": "o+"})
    text = "foo\nbar\nboo\n"
    assert list(app.map("t", text)) == [("t:1", "foo"), ("t:3", "boo")]

    # Ship a copy that will run with other parameters; the original must not change.
    blob = dataclasses.replace(app, params={"pattern": "^b"}).to_bytes()
    module_name = app.map.__module__
    original_module = sys.modules[module_name]
    copy = App.from_bytes(blob)
    assert copy.params == {"pattern": "^b"} and copy.name == path
    copy.start()
    assert list(copy.map("t", text)) == [("t:2", "bar"), ("t:3", "boo")]
    assert list(app.map("t", text)) == [("t:1", "foo"), ("t:3", "boo")]  # the original keeps its pattern
    assert original_module._pattern.pattern == "o+"
    assert copy.reduce("k", iter(["first", "second"])) == "first"


def test_app_from_py_file_runs_where_the_file_does_not_exist(tmp_path):
    path = write_app(tmp_path, GREP_LIKE)
    blob = load_app(path, {"pattern": "ar$"}).to_bytes()
    (tmp_path / path).unlink()
    script = (
        "import sys, json\n"
        "from mapreduce.job import App\n"
        "app = App.from_bytes(sys.stdin.buffer.read())\n"
        "app.start()\n"
        "print(json.dumps(list(app.map('in', 'car\\nbus\\nbar\\n'))))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], input=blob, capture_output=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    assert json.loads(result.stdout) == [["in:1", "car"], ["in:3", "bar"]]


def test_from_bytes_refuses_what_is_not_an_app():
    import cloudpickle

    with pytest.raises(AppError, match="not a mapreduce app"):
        App.from_bytes(cloudpickle.dumps({"map": None}))


# ---- wordcount's words -------------------------------------------------------------------


def reference_words(text: str) -> list[str]:
    words, current = [], []
    for ch in text:
        if ch.isalpha():
            current.append(ch)
        elif current:
            words.append("".join(current))
            current = []
    if current:
        words.append("".join(current))
    return words


POOLS = [
    "abcdefghijklmnopqrstuvwxyzABCXYZ",
    "0123456789",
    " \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f",  # whitespace, including str.split's separators
    "!\"#$%&'()*+,-./:;<=>?@[\\]^`{|}~_",
    "éèçñøßÅÉÖœæ",
    "日本語漢字かなカナ한국어",
    "\u0301\u0308\u0327\u20dd",  # combining marks (not alpha)
    "²³¹⁴₂",  # superscript / subscript digits (not alpha)
    "ªºʰǅﬁΩЖع",  # letters of unusual categories
    "ⅫⅣ٣৩\u00a0\u2028\u200b\u3000\ufeff😀",  # numerals, odd spaces, format chars, emoji
]


def test_words_matches_a_reference_on_random_text():
    rng = random.Random(77)
    for trial in range(3000):
        pools = rng.sample(POOLS, rng.randrange(1, len(POOLS) + 1))
        if trial % 4 == 0:
            pools = [POOLS[0], POOLS[1], POOLS[3], " \t\n"]  # pure ASCII: the fast path
        text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randrange(0, 40)))
        assert wordcount.words(text) == reference_words(text), repr(text)
        assert wordcount.count_words(text) == collections.Counter(reference_words(text)), repr(text)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("", []),
        ("Hello, World! hello", ["Hello", "World", "hello"]),
        ("snake_case and x2y", ["snake", "case", "and", "x", "y"]),
        ("café naïve", ["café", "naïve"]),
        ("cafe\u0301", ["cafe"]),  # a combining accent is not a letter
        ("x²y", ["x", "y"]),
        ("日本語のテキスト", ["日本語のテキスト"]),
        ("a\u200bb", ["a", "b"]),  # a zero-width space is not whitespace, but it is not a letter
        ("a\x1cb", ["a", "b"]),
    ],
)
def test_words_examples(text, expected):
    assert wordcount.words(text) == expected


def test_wordcount_map_combine_reduce():
    text = "the cat and the hat, the end"
    pairs = list(wordcount.map("f", text))
    assert dict(pairs) == Counter(reference_words(text))
    assert wordcount.combine("the", iter([1, 2])) == 3
    assert wordcount.reduce("the", iter([3, 4])) == 7


def test_count_words_across_chunk_boundaries(monkeypatch):
    monkeypatch.setattr(wordcount, "_CHUNK", 7)  # tiny chunks: every boundary case is hit
    rng = random.Random(3)
    for _ in range(500):
        text = "".join(
            rng.choice(["ab", "c", " ", "\n", "xyzxyzxyzxyz", "é", ".", "\u00a0"]) for _ in range(rng.randrange(0, 30))
        )
        assert wordcount.count_words(text) == collections.Counter(reference_words(text)), repr(text)
        assert wordcount.words(text) == reference_words(text), repr(text)


# ---- what a reduce emits ----------------------------------------------------------


def test_a_value_is_one_record_and_none_is_no_record():
    assert list(emitted("k", 3)) == [("k", 3)]
    assert list(emitted("k", [1, 2])) == [("k", [1, 2])]  # a list is one value, not many
    assert list(emitted("k", None)) == []
    assert list(emitted("k", 0)) == [("k", 0)]  # falsy values are values


def test_a_generator_emits_each_value_in_order_and_records_under_their_own_keys():
    def reduce(key, values):
        yield 2
        yield Record("other", 5)
        yield Record("bare line")
        yield 1

    assert list(emitted("k", reduce("k", iter([])))) == [("k", 2), ("other", 5), ("bare line", NO_VALUE), ("k", 1)]
    assert list(emitted("k", Record("x", 1))) == [("x", 1)]


def test_a_record_key_must_be_a_str():
    with pytest.raises(AppError, match="key must be a str"):
        list(emitted("k", Record(7, 1)))


def test_no_value_lines_have_no_tab(tmp_path):
    from mapreduce.output import format_line

    assert format_line("a b", NO_VALUE) == "a b\n"
    assert format_line("a", None) == "a\tNone\n"
    assert format_line("a", "x\ty") == "a\tx\ty\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (
            "def map(k):\n    return []\ndef reduce(k, v):\n    return 0\n",
            r"map\(k\) cannot be called as map\(key, value\)",
        ),
        ("def map(k, v):\n    return []\ndef reduce(k, v, extra):\n    return 0\n", "cannot be called as reduce"),
        ("async def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\n", "map is async"),
        ("def map(k, v):\n    return []\nasync def reduce(k, v):\n    yield 0\n", "reduce is async"),
        ("def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\ndef combine(k):\n    return 0\n", "combine"),
        ("def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\ndef init():\n    pass\n", "init"),
    ],
)
def test_shapes_that_cannot_work_are_refused_at_load_time(tmp_path, body, message):
    with pytest.raises(AppError, match=message):
        load_app(write_app(tmp_path, body))


def test_shapes_that_work_load(tmp_path):
    body = (
        "def map(k, v, *rest):\n    return []\ndef reduce(k, v=None):\n    yield 0\ndef combine(*args):\n    return 0\n"
    )
    app = load_app(write_app(tmp_path, body))
    assert app.combine is not None


def test_combine_emitting_many_values_or_none_feeds_the_shuffle(tmp_path):
    def combine(key, values):
        values = list(values)
        if key == "drop":
            return None
        yield from values

    buf = MapOutputBuffer(1, stable_partition, combine, tmp_path, 100)
    buf.add_all([("a", 1), ("a", 2), ("drop", 1), ("drop", 1)], "test input")
    runs = buf._sorted_partitions()
    assert runs == [(["a", "a"], [1, 2])]


def test_combine_must_keep_its_key(tmp_path):
    def combine(key, values):
        yield Record(key + "!", sum(values))

    buf = MapOutputBuffer(1, stable_partition, combine, tmp_path, 100)
    buf.add_all([("a", 1), ("a", 2)], "test input")
    with pytest.raises(AppError, match="must keep its key"):
        buf._sorted_partitions()


def test_a_map_may_emit_records(tmp_path):
    buf = MapOutputBuffer(1, stable_partition, None, tmp_path, 100)
    buf.add_all([Record("line"), Record("k", 2), ("k", 1)], "test input")
    assert buf._sorted_partitions() == [(["k", "k", "line"], [2, 1, None])]
    with pytest.raises(AppError, match="expected a \\(key, value\\) pair or a Record"):
        buf.add_all(["not a pair"], "test input")


def test_input_format_and_hooks_are_checked_at_load_time(tmp_path):
    base = "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\n"
    with pytest.raises(AppError, match="input_format = 'rows' is not one of 'text', 'lines'"):
        load_app(write_app(tmp_path, base + "input_format = 'rows'\n"))
    with pytest.raises(AppError, match=r"map_setup\(x\) cannot be called as map_setup\(\)"):
        load_app(write_app(tmp_path, base + "def map_setup(x):\n    pass\n"))
    with pytest.raises(AppError, match="has a reduce_teardown but no reduce"):
        load_app(write_app(tmp_path, "def map(k, v):\n    return []\ndef reduce_teardown():\n    pass\n"))


def test_run_map_calls_setup_then_map_then_teardown_in_order(tmp_path):
    calls = []
    app = App(
        "t",
        map=lambda k, v: calls.append(("map", k)) or [(k, 1)],
        reduce=None,
        map_setup=lambda: calls.append("setup"),
        map_teardown=lambda: calls.append("teardown") or [("total", 9)],
    )
    assert list(app.run_map("in.txt", "text")) == [("in.txt", 1), ("total", 9)]
    assert calls == ["setup", ("map", "in.txt"), "teardown"]
    assert app.run_map("x", "t") is not None and App("t", map=lambda k, v: None, reduce=None).run_map("x", "t") == ()


def test_run_reduce_emits_teardown_records_after_every_key():
    app = App("t", map=lambda k, v: [], reduce=lambda k, vs: sum(vs), reduce_teardown=lambda: [Record("end", 0)])
    assert list(app.run_reduce([("a", iter([1, 2])), ("b", iter([3]))])) == [("a", 3), ("b", 3), ("end", 0)]


def test_an_app_may_fix_its_number_of_reduces(tmp_path):
    base = "def map(k, v):\n    return []\ndef reduce(k, v):\n    return 0\n"
    assert load_app(write_app(tmp_path, base + "n_reduce = 1\n")).n_reduce == 1
    for bad in ("0", "'1'", "2.0"):
        with pytest.raises(AppError, match="n_reduce"):
            load_app(write_app(tmp_path, base + f"n_reduce = {bad}\n"))
    with pytest.raises(AppError, match="with a reduce"):
        load_app(write_app(tmp_path, "def map(k, v):\n    return []\nn_reduce = 1\n"))


def test_a_pipeline_is_checked_when_loaded(tmp_path):
    head = "from mapreduce import Step\ndef m(k, v):\n    return []\ndef r(k, v):\n    return 0\n"
    app = load_app(write_app(tmp_path, head + "steps = [Step(map=m, reduce=r), Step(map=m, reduce=r, n_reduce=2)]\n"))
    assert len(app.steps) == 2 and app.step(1).n_reduce == 2 and app.map is app.steps[0].map
    bad = {
        "steps = []\n": "steps must be a list of mapreduce.Step",
        "steps = [m]\n": "steps must be a list of mapreduce.Step",
        "steps = [Step(map=m, reduce=r)]\ndef map(k, v):\n    return []\n": "defines steps and also map",
        "steps = [Step(map=m, reduce=None)]\n": "every step needs a map and a reduce",
        "steps = [Step(map=m, reduce=r), Step(map=r, reduce=r, n_reduce=0)]\n": r"\(step 2\)': n_reduce = 0",
        "def bad(k):\n    return 0\nsteps = [Step(map=m, reduce=bad)]\n": r"\(step 1\).*cannot be called as reduce",
        "n_reduce = 1\nsteps = [Step(map=m, reduce=r)]\n": "a pipeline sets n_reduce",
    }
    for body, message in bad.items():
        with pytest.raises(AppError, match=message):
            load_app(write_app(tmp_path, head + body))
