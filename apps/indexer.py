"""Inverted index: for each word (as in wordcount), the number of input files
containing it and their paths as given, sorted and comma-joined."""

from mapreduce.apps.wordcount import count_words


def map(path, text):
    return ((word, path) for word in count_words(text))


def reduce(word, paths):
    documents = sorted(set(paths))
    return f"{len(documents)} {','.join(documents)}"
