"""A secondary sort: each first letter's words reach reduce in sorted order (sort_values),
with a combine that emits several values per key (duplicates dropped map-side)."""

sort_values = True


def map(path, text):
    for word in text.lower().split():
        if word.isalpha():
            yield word[0], word


def combine(letter, words):
    yield from dict.fromkeys(words)  # each word once per map task, in the order seen


def reduce(letter, words):
    words = list(words)
    assert words == sorted(words), f"values of {letter!r} arrived unsorted"
    words = list(dict.fromkeys(words))  # the same whether combine ran or not
    return f"{len(words)} {words[0]} .. {words[-1]} {' '.join(words[:3])}"
