"""The N most frequent words (``--param n=10`` by default): one part file, ``part-00000``, of
N lines ``word<TAB>count``, most frequent first, ties by word in ascending order. Words are
wordcount's. One step: the maps count and combine, the one reduce task sums each word's
counts as the keys stream by and keeps only the best N in a heap (bounded memory however
many words there are), and writes them at its tear-down."""

import heapq

from mapreduce import Record
from mapreduce.apps.wordcount import combine, count_words  # noqa: F401 (combine: the same combiner)

n_reduce = 1  # one ranking of every word: the app needs exactly one reduce task

_n = 10
_best: list[tuple[int, str]] = []  # a min-heap of (count, inverted word): its root is the worst kept


class _Inverted(str):
    """A word that sorts the other way round: among equal counts, the heap drops the larger word."""

    def __lt__(self, other: str) -> bool:
        return str.__gt__(self, other)

    def __gt__(self, other: str) -> bool:
        return str.__lt__(self, other)

    def __le__(self, other: str) -> bool:
        return str.__ge__(self, other)

    def __ge__(self, other: str) -> bool:
        return str.__le__(self, other)


def init(params):
    global _n
    unknown = set(params) - {"n"}
    if unknown:
        raise ValueError(f"unknown parameter(s) {sorted(unknown)}; topwords takes n=N")
    _n = int(params.get("n", "10"))
    if _n < 1:
        raise ValueError(f"n must be at least 1, got {_n}")


def map(path, text):
    return count_words(text).items()


def reduce_setup():
    _best.clear()


def reduce(word, counts):
    entry = (sum(counts), _Inverted(word))
    if len(_best) < _n:
        heapq.heappush(_best, entry)
    elif entry > _best[0]:
        heapq.heapreplace(_best, entry)
    return None  # nothing per word: the ranking comes at the end


def reduce_teardown():
    for count, word in sorted(_best, reverse=True):  # most frequent first, then words ascending
        yield Record(str(word), count)
