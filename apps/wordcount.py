"""Word count. A word is a maximal run of characters for which ``str.isalpha()``
is true; words are case-sensitive; the value is the number of occurrences.

The tokenizer is exact for all of Unicode and fast on mostly-ASCII text: in the
UTF-8 bytes, every ASCII byte that is not a letter becomes a space (one C pass),
the bytes are split and counted (C again), and only the few distinct tokens that
hold non-ASCII characters are split again, character by character, by
``str.isalpha()``. No single C call runs long, so the worker's heartbeat thread
keeps getting the interpreter while a large split is counted.
"""

from collections import Counter

# ASCII letters and every byte of a multi-byte UTF-8 character stay; the rest become spaces.
_TABLE = bytes(b if (65 <= b <= 90 or 97 <= b <= 122 or b >= 128) else 32 for b in range(256))


def _split_exactly(token: str) -> list[str]:
    """Words of a token holding non-ASCII characters (whitespace among them, perhaps)."""
    return "".join(c if c.isalpha() else " " for c in token).split()


_CHUNK = 1 << 20


def _token_chunks(text: str):
    """The tokens of ``text``, a list per megabyte: memory stays small, and so does each C call."""
    data = text.encode("utf-8", "surrogatepass").translate(_TABLE)
    start, size = 0, len(data)
    while start < size:
        end = min(start + _CHUNK, size)
        if end < size:
            cut = data.rfind(b" ", start, end)  # every separator is a space now
            if cut <= start:  # a token longer than a chunk: end after it instead
                cut = data.find(b" ", end)
                cut = size if cut == -1 else cut
            end = cut
        yield data[start:end].split()
        start = end


def _tokens(text: str) -> list[bytes]:
    return [token for chunk in _token_chunks(text) for token in chunk]


def count_words(text: str) -> dict[str, int]:
    """Occurrences of each word in ``text``."""
    raw: Counter = Counter()
    for chunk in _token_chunks(text):
        raw.update(chunk)
    joined = b"\n".join(raw)  # no token holds a newline: it became a space
    if joined.isascii():  # the common case: decode every distinct token in one call
        return dict(zip(joined.decode("ascii").split("\n"), raw.values())) if raw else {}
    counts: Counter = Counter()
    for token, n in raw.items():
        if token.isascii():
            counts[token.decode("ascii")] += n
        else:
            for word in _split_exactly(token.decode("utf-8", "surrogatepass")):
                counts[word] += n
    return counts


def words(text: str) -> list[str]:
    """The words of ``text`` in order."""
    result = []
    for token in _tokens(text):
        if token.isascii():
            result.append(token.decode("ascii"))
        else:
            result.extend(_split_exactly(token.decode("utf-8", "surrogatepass")))
    return result


def map(path, text):
    return count_words(text).items()


def combine(word, counts):
    return sum(counts)


def reduce(word, counts):
    return sum(counts)
