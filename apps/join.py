"""A reduce-side equi-join of two inputs on a key column: ``--param left=PATH`` names the
left input (a file, or a folder: every input under it), every other input is the right
side. Lines are split on ``sep`` (a tab unless ``--param sep=,``); ``key`` is the join
column (1-based, default 1) of both sides. For every key present on both sides, each pair
of a left and a right line gives one output line ``key<TAB>left columns<TAB>right columns``
(an inner join): for each right line in input order, one line per left line in input order."""

from mapreduce import Record

input_format = "lines"
sort_values = True  # each key's values come as [side, path, offset, columns]: the left side first

_left = ""
_sep = "\t"
_column = 0


def init(params):
    global _left, _sep, _column
    unknown = set(params) - {"left", "sep", "key"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; join takes left=PATH, sep=S, key=N")
    if not params.get("left"):
        raise ValueError("join needs --param left=PATH (the left input; the others are the right side)")
    _left = params["left"].rstrip("/")
    _sep = params.get("sep", "\t").replace("\\t", "\t")
    if not _sep:
        raise ValueError("sep must not be empty")
    _column = int(params.get("key", "1")) - 1
    if _column < 0:
        raise ValueError(f"key is a 1-based column number, got {params['key']}")


def map(position, line):
    columns = line.split(_sep)
    if _column >= len(columns):
        return None  # no join column on this line: it joins nothing
    key = columns.pop(_column)
    side = 0 if position.path == _left or position.path.startswith(_left + "/") else 1
    yield key, [side, position.path, position.offset, _sep.join(columns)]


def reduce(key, values):
    left = []
    for side, _path, _offset, columns in values:
        if side == 0:
            left.append(columns)
        else:
            for row in left:
                yield Record(key, f"{row}\t{columns}")
