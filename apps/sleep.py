"""Tasks that only wait: for measuring task overhead and scale-out.

``--param seconds=0.2`` makes each map call sleep that long (default 0: a no-op
task). Each line of input counts once under the key "lines", so the output is
still checked against `mapreduce seq`.
"""

import time

_seconds = 0.0


def init(params):
    global _seconds
    unknown = set(params) - {"seconds"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; sleep takes seconds=S")
    _seconds = float(params.get("seconds", 0))
    if _seconds < 0:
        raise ValueError("seconds must not be negative")


def map(path, text):
    if _seconds:
        time.sleep(_seconds)
    return [("lines", text.count("\n"))]


def combine(key, counts):
    return sum(counts)


def reduce(key, counts):
    return sum(counts)
