"""Word count that takes its time: for fault tests that need tasks to be running.

Parameters: map_seconds (sleep per map call, default 0; with only_inputs=TEXT,
only for inputs whose path contains TEXT), reduce_seconds (sleep
per reduce call, default 0), burn=1 (spin the CPU in pure Python instead of
sleeping), started=FOLDER (each map call first creates FOLDER/<input name>, so a
test can wait until a map is really running). A worker started with SLEEPY_FACTOR=10
in its environment is that many times slower: a straggler.
"""

import os
import time
from collections import Counter

_settings = {"map_seconds": 0.0, "reduce_seconds": 0.0, "burn": 0.0, "only_inputs": "", "started": ""}
_TEXT = ("only_inputs", "started")


def init(params):
    for name, value in params.items():
        if name not in _settings:
            raise ValueError(f"unknown parameter {name!r}")
        _settings[name] = value if name in _TEXT else float(value)


def _wait(seconds):
    seconds *= float(os.environ.get("SLEEPY_FACTOR", "1"))
    if not _settings["burn"]:
        time.sleep(seconds)
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # pure Python: holds the GIL between switches
        sum(i * i for i in range(1000))


def map(path, text):
    if _settings["started"]:
        open(os.path.join(_settings["started"], os.path.basename(path)), "w").close()
    if _settings["only_inputs"] in path:
        _wait(_settings["map_seconds"])
    return Counter(text.split()).items()


def reduce(word, counts):
    _wait(_settings["reduce_seconds"])
    return sum(counts)
