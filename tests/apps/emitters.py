"""Every shape a reduce may emit, in one app: a generator of values, records under other
keys, key-only lines, nothing at all; and a combine that emits several values for a key."""

from mapreduce import Record


def map(key, text):
    for word in text.split():
        yield word.lower(), 1
        yield Record(f"len:{len(word)}")  # a record with no value: None reaches reduce


def combine(key, values):
    values = list(values)
    if key.startswith("len:"):
        yield from values  # several values, unchanged
    else:
        yield sum(values)


def reduce(key, values):
    values = list(values)
    if key.startswith("len:"):
        yield Record(f"{key} seen {len(values)} times")  # a line with no tab, under a key of its own
        return
    total = sum(values)
    if total == 1:
        return  # words seen once: no record
    yield total  # key<TAB>total
    if total > 2:
        yield Record(f"frequent:{key}", total)  # a record under another key
