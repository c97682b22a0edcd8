"""The event log: one JSON object per line, with monotonic and wall-clock times.

Written by the coordinator (``--events FILE``); read by tests and tools. Each
line: ``{"t": monotonic seconds, "wall": unix seconds, "event": kind, ...fields}``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

from mapreduce.coordinator.scheduler import Event


class EventLog:
    def __init__(self, path: Path | None):
        self._file = open(path, "w", encoding="utf-8") if path is not None else None

    def write(self, events: list[Event]) -> None:
        if self._file is None or not events:
            return
        offset = time.time() - time.monotonic()
        for event in events:
            record = {
                "t": round(event.time, 6),
                "wall": round(event.time + offset, 6),
                "event": event.kind.value,
                **event.fields,
            }
            self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_records(path: str | Path) -> Iterator[dict]:
    """The raw JSON objects of a JSON-lines file (event log or faults file)."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


read_events = read_records
