"""What the benchmark scripts share: running the mapreduce command, a free loopback endpoint."""

from __future__ import annotations

import socket
import sys


def mapreduce(*args: str) -> list[str]:
    """The mapreduce command line, run by this Python (-P: never the current folder's package)."""
    return [sys.executable, "-P", "-m", "mapreduce", *args]


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"
