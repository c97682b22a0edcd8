"""Word count whose first map crashes its worker process with SIGSEGV, as broken C code would.

Parameter marker=PATH: the first map to find no file at PATH creates it and crashes; every
other map counts words. Without it, plain word count (the oracle's output)."""

import os
import signal
from collections import Counter

_settings = {"marker": ""}


def init(params):
    _settings["marker"] = params.get("marker", "")


def map(path, text):
    marker = _settings["marker"]
    if marker and not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGSEGV)
    return Counter(text.split()).items()


def reduce(word, counts):
    return sum(counts)
