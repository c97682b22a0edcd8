"""The identity reduce over every kind of value: numbers, strings with tabs, lists, and
records with no value (a key-only line), many of them under the same key."""

from mapreduce import Record, identity


def map(key, text):
    for n, word in enumerate(text.split()):
        word = word.lower()
        if n % 3 == 0:
            yield Record(word)  # reaches the reduce as None: a line of the word alone
        elif n % 3 == 1:
            yield word, len(word)
        else:
            yield word[:2], [word, "a\ttab"] if n % 2 else word


reduce = identity
