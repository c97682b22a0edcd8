"""Word count that fails if it finds any trace leaky.py leaves in its worker's interpreter."""

import os
import threading

import mapreduce.job


def map(key, text):
    traces = [
        getattr(mapreduce.job, "LEFT_BEHIND", None),
        os.environ.get("LEFT_BEHIND"),
        [t.name for t in threading.enumerate() if t.name == "left-behind"],
    ]
    if any(traces):
        raise RuntimeError(f"the last job left traces here: {traces}")
    for word in text.split():
        yield word, 1


def reduce(key, values):
    return sum(values)
