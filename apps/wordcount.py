"""Word count. A word is a maximal run of characters for which ``str.isalpha()``
is true; words are case-sensitive; the value is the number of occurrences."""

from collections import Counter

# Every ASCII byte that is not a letter becomes a space.
_ASCII_TABLE = bytes(b if chr(b).isalpha() and b < 128 else 32 for b in range(256))


def words(text: str) -> list[str]:
    """Split text into words, exactly by ``str.isalpha()``."""
    if text.isascii():
        return text.encode("ascii").translate(_ASCII_TABLE).decode("ascii").split()
    # Map just the non-letters this text contains to spaces: exact for all of Unicode,
    # since no letter is whitespace and every non-letter becomes one.
    table = {ord(c): " " for c in set(text) if not c.isalpha()}
    return text.translate(table).split()


def map(path, text):
    return Counter(words(text)).items()


def combine(word, counts):
    return sum(counts)


def reduce(word, counts):
    return sum(counts)
