"""The N most frequent words (``--param n=10`` by default): one part file, ``part-00000``, of
N lines ``word<TAB>count``, most frequent first, ties by word in ascending order. Words are
wordcount's. Two steps: the first counts words (as wordcount does); the second's one reduce
gets every (count, word) and keeps only the best N in a heap as they stream past (memory
bounded by N however many words there are). The counts never leave the workers."""

import heapq

from mapreduce import Record, Step
from mapreduce.apps.wordcount import combine as add_counts
from mapreduce.apps.wordcount import count_words

_n = 10


def init(params):
    global _n
    unknown = set(params) - {"n"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; topwords takes n=N")
    _n = int(params.get("n", "10"))
    if _n < 1:
        raise ValueError(f"n must be at least 1, got {_n}")


def count(path, text):
    return count_words(text).items()


def total(word, counts):
    return sum(counts)


def to_ranking(word, count):
    yield "", [count, word]  # one key: every word reaches the one reduce of the ranking step


def best(_, entries):
    # The N smallest by (-count, word): most frequent first, ties by word; nsmallest keeps
    # only N entries in its heap as the rest stream past.
    for count, word in heapq.nsmallest(_n, entries, key=lambda entry: (-entry[0], entry[1])):
        yield Record(word, count)


steps = [
    Step(map=count, combine=add_counts, reduce=total),
    Step(map=to_ranking, reduce=best, n_reduce=1),
]
