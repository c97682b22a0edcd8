"""Shared fixtures: generated corpora, the Gutenberg books, running the CLI, comparing outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import GUTENBERG, Job, job_fixture, run_cli
from mapreduce.tools.corpus import write_corpus


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> list[str]:
    """Eight generated files, about 2 MB in all, with Unicode, digits and punctuation."""
    folder = tmp_path_factory.mktemp("corpus")
    return [str(p) for p in write_corpus(folder, 2_000_000, 8, seed=7)]


@pytest.fixture(scope="session")
def gutenberg() -> list[str]:
    books = sorted(GUTENBERG.glob("*.txt"))
    if not books:
        pytest.skip(f"the Gutenberg books are not at {GUTENBERG} (set MAPREDUCE_GUTENBERG to their folder)")
    return [str(b) for b in books]


@pytest.fixture
def oracle(tmp_path):
    """oracle(app, inputs, *args) -> folder of `mapreduce seq` output."""
    count = [0]

    def make(app: str, inputs: list[str], *args: str) -> Path:
        count[0] += 1
        out = tmp_path / f"seq-{count[0]}"
        run_cli("seq", app, *inputs, "--output", str(out), *args)
        return out

    return make


make_job = job_fixture(Job)
