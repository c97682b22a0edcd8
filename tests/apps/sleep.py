"""Tasks that only wait: for measuring task overhead, scale-out and stragglers.

``--param seconds=0.2`` makes each map call sleep that long (default 0: a no-op
task). Each line of input counts once under the key "lines", so the output is
still checked against `mapreduce seq`. A worker started with the environment
variable ``MAPREDUCE_SLEEP_FACTOR=10`` sleeps ten times as long: it plays a slow
machine (waiting tasks do not compete for this machine's cores, so several such
workers behave like several machines).
"""

import os
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
    _seconds *= float(os.environ.get("MAPREDUCE_SLEEP_FACTOR", "1"))


def map(path, text):
    if _seconds:
        time.sleep(_seconds)
    return [("lines", text.count("\n"))]


def combine(key, counts):
    return sum(counts)


def reduce(key, counts):
    return sum(counts)
