"""Word count that crashes and stalls its own workers: fault injection for crash tests.

The output is exactly wordcount's (same tokenizer, combiner and reducer), so a run
of this app on a cluster must match ``mapreduce seq crash`` byte for byte however
many workers it kills on the way.

Parameters (``--param NAME=VALUE``):
- ``crash`` (default 0.1): the probability that a map task, or a reduce task, kills
  the worker process running it, at its start: half the time with ``os._exit(1)``,
  half the time with SIGKILL to itself (no cleanup, no goodbye either way).
- ``delay`` (default 0.1): the probability that a map or reduce task first sleeps
  ``delay_seconds`` (default 1.0). Heartbeats flow meanwhile: the worker is slow,
  not dead.

Decisions are made once per task, not once per call: ``map`` is called once per map
task, but ``reduce`` once per key, so a reduce task decides on its first key only
(a per-key crash probability would kill every reduce attempt and the job would never
finish). A new reduce task is recognised by its first key: keys reach reduce in
ascending order within a task, so a key that does not sort after the previous one
starts a new task. (A task whose first key sorts after the previous task's last key
in the same process goes unnoticed and makes no decision: that only makes crashes
a little rarer.) Randomness is seeded from ``os.urandom`` in every process, so each
attempt of a task decides afresh and the job converges.

Crashes and delays happen only inside a worker process, that is a process started as
``mapreduce worker`` (by hand, or by ``mapreduce run``'s local cluster): the check is
on the process's command line (``sys.argv``: the ``mapreduce`` program or
``python -m mapreduce``, with ``worker`` as its command), made in ``init``, which
every process runs before any task (``init`` also seeds the randomness, so both hold
when the app is shipped by value, as an app given by path is). Everywhere else
(``mapreduce seq``, the coordinator checking the app's parameters, a test importing
the module) the app is plain word count.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields

from mapreduce.apps.wordcount import combine  # noqa: F401
from mapreduce.apps.wordcount import map as count_words
from mapreduce.apps.wordcount import reduce as sum_counts

log = logging.getLogger(__name__)

CRASH_EXIT_STATUS = 1


@dataclass(frozen=True)
class Settings:
    crash: float = 0.1
    delay: float = 0.1
    delay_seconds: float = 1.0


def started_as_worker(argv: Sequence[str]) -> bool:
    """Whether a command line is ``mapreduce [options] worker ...`` (either spelling)."""
    if not argv:
        return False
    program = os.path.normpath(argv[0])
    is_mapreduce = os.path.basename(program) == "mapreduce" or program.endswith(
        os.path.join("mapreduce", "__main__.py")
    )
    command = next((arg for arg in argv[1:] if not arg.startswith("-")), None)
    return is_mapreduce and command == "worker"


_settings = Settings()
_armed = False  # set by init: True only in a worker process
_random = random.Random()
_last_reduce_key: str | None = None


def init(params):
    global _settings, _armed, _random
    names = {f.name for f in fields(Settings)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; crash takes crash=P, delay=P and delay_seconds=S")
    _settings = Settings(**{name: _number(name, text) for name, text in params.items()})
    _armed = started_as_worker(sys.argv)
    _random = random.Random(os.urandom(32))


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if name == "delay_seconds":
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"delay_seconds must be a number of seconds >= 0, got {text!r}")
    elif not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability from 0 to 1, got {text!r}")
    return value


def _misbehave(what: str) -> None:
    """At the start of a task: maybe kill this process, maybe sleep, maybe neither."""
    if not _armed:
        return
    if _random.random() < _settings.crash:
        how = _random.choice(("exit", "kill"))
        log.warning(
            "crash app: %s kills this worker (pid %d) with %s",
            what,
            os.getpid(),
            "os._exit" if how == "exit" else "SIGKILL",
        )
        if how == "exit":
            os._exit(CRASH_EXIT_STATUS)
        os.kill(os.getpid(), signal.SIGKILL)
    if _random.random() < _settings.delay:
        log.warning("crash app: %s sleeps %.1f s", what, _settings.delay_seconds)
        time.sleep(_settings.delay_seconds)


def map(path, text):
    global _last_reduce_key
    _last_reduce_key = None  # whatever reduce comes next is a new task
    _misbehave(f"map of {path!r}")
    return count_words(path, text)


def reduce(word, counts):
    global _last_reduce_key
    if _last_reduce_key is None or word <= _last_reduce_key:
        _misbehave(f"reduce starting at key {word!r}")
    _last_reduce_key = word
    return sum_counts(word, counts)
