"""A poison task: map kills its own worker process on any input holding the word EXIT."""

import os
from collections import Counter


def map(path, text):
    if "EXIT" in text:
        os._exit(17)
    return Counter(text.split()).items()


def reduce(word, counts):
    return sum(counts)
