"""Word count whose map sleeps on inputs whose name contains "slow": for overlap and interrupt tests."""

import os
import time

from mapreduce.apps.wordcount import combine, reduce  # noqa: F401
from mapreduce.apps.wordcount import map as count_words


def map(path, text):
    if "slow" in path:
        time.sleep(float(os.environ.get("SLOWMAP_SECONDS", "2")))
    return count_words(path, text)
