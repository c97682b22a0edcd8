"""What the benchmark scripts share: running the mapreduce command, a free loopback endpoint."""

from __future__ import annotations

import socket
import sys
from pathlib import Path

# The benchmarks' sleep app: not a built-in (it is a test and benchmark app).
SLEEP_APP = str(Path(__file__).resolve().parents[1] / "tests" / "apps" / "sleep.py")


def mapreduce(*args: str) -> list[str]:
    """The mapreduce command line, run by this Python (-P: never the current folder's package)."""
    return [sys.executable, "-P", "-m", "mapreduce", *args]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
