"""Raises in map on a line holding the word POISON; counts words otherwise."""

from collections import Counter


def map(path, text):
    for line in text.splitlines():
        if "POISON" in line:
            raise ValueError(f"poisoned line: {line!r}")
    return Counter(text.split()).items()


def reduce(word, counts):
    return sum(counts)
