"""Generated text corpora for demos, tests and benchmarks (the project ships no text).

Words are made from syllables, drawn with Zipf-like frequencies, with some
capitalised, some accented or in other scripts, and with digits, underscores and
punctuation in between, so a tokenizer's edge cases all occur.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

_SYLLABLES = [
    "ka",
    "lo",
    "mi",
    "ter",
    "an",
    "sol",
    "ve",
    "ri",
    "ul",
    "den",
    "por",
    "is",
    "ma",
    "ne",
    "qua",
    "th",
    "ber",
    "ox",
]
_FOREIGN = [
    "café",
    "naïve",
    "Straße",
    "smörgåsbord",
    "λόγος",
    "мир",
    "東京",
    "façade",
    "ñandú",
    "İstanbul",
    "ǅemal",
    "Ωmega",
]
_JOINERS = [
    " ",
    " ",
    " ",
    " ",
    " ",
    ", ",
    ". ",
    "; ",
    " - ",
    "'s ",
    " 42 ",
    "_",
    " (",
    ") ",
    "² ",
    " n0 ",
    "\u00a0",
    "\t",
]


def vocabulary(size: int, rng: random.Random) -> list[str]:
    words = set()
    while len(words) < size:
        word = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.1:
            word = word.capitalize()
        words.add(word)
    return sorted(words) + _FOREIGN


def generate_text(size: int, seed: int = 0, vocabulary_size: int = 5000) -> str:
    """About ``size`` characters of text, the same for the same seed."""
    rng = random.Random(seed)
    vocab = vocabulary(vocabulary_size, rng)
    weights = [1.0 / (rank + 1) for rank in range(len(vocab))]
    rng.shuffle(weights)
    cumulative = list(itertools.accumulate(weights))
    chunks, length = [], 0
    while length < size:
        # A block of words at a time: drawing word by word would dominate the cost.
        words = rng.choices(vocab, cum_weights=cumulative, k=4096)
        joiners = rng.choices(_JOINERS, k=4096)
        for i in range(0, 4096, 8):
            joiners[i + rng.randint(0, 7)] = "\n"
        block = "".join(w + j for w, j in zip(words, joiners))
        chunks.append(block)
        length += len(block)
    text = "".join(chunks)[:size]
    return text[: text.rfind("\n") + 1] or text + "\n"


def write_corpus(folder: str | Path, total_bytes: int, files: int, seed: int = 0) -> list[Path]:
    """Write ``files`` text files of together about ``total_bytes`` into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(files):
        path = folder / f"text-{i:03d}.txt"
        path.write_text(generate_text(max(1, total_bytes // files), seed=seed * 1000 + i), encoding="utf-8")
        paths.append(path)
    return paths
