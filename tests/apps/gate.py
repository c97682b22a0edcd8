"""Word count whose maps can be held open: for tests that need a job to keep running until they are done.

Parameters: gate=PATH (a map of an input whose path contains "gated" waits until PATH
exists, at most 120 s), map_seconds (every other map sleeps this long, default 0).
Without parameters it is plain word count, so `mapreduce seq` gives the expected output.
"""

import os
import time
from collections import Counter

_settings = {"gate": "", "map_seconds": 0.0}


def init(params):
    for name, value in params.items():
        if name not in _settings:
            raise ValueError(f"unknown parameter {name!r}")
        _settings[name] = value if name == "gate" else float(value)


def map(path, text):
    if "gated" in path and _settings["gate"]:
        deadline = time.monotonic() + 120
        while not os.path.exists(_settings["gate"]) and time.monotonic() < deadline:
            time.sleep(0.02)
    elif _settings["map_seconds"]:
        time.sleep(_settings["map_seconds"])
    return Counter(text.split()).items()


def reduce(word, counts):
    return sum(counts)
