"""Word count of only the words a side file lists (``--file path/to/keep.txt``), opened by
its name in the task's working folder, as with Hadoop's -files."""

_keep: set[str] | None = None


def map_setup():
    global _keep
    with open("keep.txt", encoding="utf-8") as f:  # the side file, by its name
        _keep = set(f.read().split())


def map(path, text):
    for word in text.lower().split():
        if word in _keep:
            yield word, 1


def reduce(word, counts):
    return sum(counts)
