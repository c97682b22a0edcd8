"""A line input app with set-up and tear-down on both sides: in-mapper combining of word
counts across a whole split (emitted at map_teardown), each line's position checked, and a
reduce_teardown that writes a summary record of its task."""

from mapreduce import Record

_counts: dict[str, int] = {}
_reduced: list[int] = []
input_format = "lines"


def map_setup():
    _counts.clear()


def map(position, line):
    if not line.strip():
        return None  # nothing for blank lines
    yield f"line-start:{position.path.rsplit('/', 1)[-1]}", position.offset  # where lines begin
    for word in line.lower().split():
        _counts[word] = _counts.get(word, 0) + 1


def map_teardown():
    return list(_counts.items())


def reduce_setup():
    _reduced.clear()


def reduce(key, values):
    values = list(values)
    if key.startswith("line-start:"):
        return f"{len(values)} lines, first at {min(values)}"
    _reduced.append(sum(values))
    return sum(values)


def reduce_teardown():
    yield Record(f"~summary {len(_reduced)} words", sum(_reduced))
