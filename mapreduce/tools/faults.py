"""Faults injected from outside (SIGKILL, SIGSTOP, SIGCONT): the one type the crash test
records and the report draws, and their file beside an event log (``NAME.faults.jsonl``,
one ``{"t": monotonic seconds, "kind": "kill" | "pause" | "resume", "pid": N}`` a line,
on the event log's clock)."""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mapreduce.wire.events import read_records


class FaultKind(enum.Enum):
    KILL = "kill"  # SIGKILL
    PAUSE = "pause"  # SIGSTOP
    RESUME = "resume"  # SIGCONT


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    pid: int
    time: float  # monotonic seconds, when the signal was sent


def faults_beside(log_path: Path) -> Path:
    return log_path.with_name(log_path.stem + ".faults.jsonl")


def write_faults(path: Path, faults: Iterable[Fault]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for fault in faults:
            f.write(json.dumps({"t": fault.time, "kind": fault.kind.value, "pid": fault.pid}) + "\n")


def read_faults(path: str | Path) -> list[Fault]:
    """A faults file; ValueError if a line is not a fault."""
    faults = []
    for record in read_records(path):
        try:
            faults.append(Fault(FaultKind(record["kind"]), int(record["pid"]), float(record["t"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: not a fault: {str(record)[:200]}") from exc
    return faults
