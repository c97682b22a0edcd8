"""Word count that counts: user counters from map and reduce."""

from mapreduce import increment


def map(path, text):
    for word in text.split():
        increment("words", "seen")
        if word.isdigit():
            increment("words", "numbers")
        yield word.lower(), 1


def combine(key, values):
    return sum(values)


def reduce(key, values):
    total = sum(values)
    increment("keys", "distinct")
    if total == 1:
        increment("keys", "hapax")
    return total
