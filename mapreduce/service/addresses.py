"""Where a standing cluster listens: workers on its address, clients beside it.

Workers connect to the address the cluster was started with (`--bind`, what
`launch-workers` is given); clients give that same address (`--cluster`) and reach the
service on the next port, with their own keys. On the cluster's host, clients of the
cluster's own user reach it without keys through a socket in its private state folder.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from mapreduce.errors import UsageError

STATE_DIR_ENV = "MAPREDUCE_STATE_DIR"
_TCP = re.compile(r"tcp://(.+):([0-9]{1,5})")


def default_state_dir() -> Path:
    if os.environ.get(STATE_DIR_ENV):
        return Path(os.environ[STATE_DIR_ENV])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "mapreduce" / "cluster"


def clients_endpoint(cluster: str) -> str:
    """The clients' endpoint of the cluster whose workers connect to ``cluster`` (tcp://HOST:PORT)."""
    match = _TCP.fullmatch(cluster)
    if match is None or not 0 < int(match.group(2)) < 65535:
        raise UsageError(f"the cluster's address {cluster!r} must be tcp://HOST:PORT (clients use PORT+1)")
    return f"tcp://{match.group(1)}:{int(match.group(2)) + 1}"


def private_endpoint(state_dir: Path) -> str:
    """The keyless endpoint in the state folder (mode 0700: the cluster's own user only)."""
    path = str(Path(state_dir).resolve() / "control")
    if len(path.encode()) > 100:
        raise UsageError(f"the state folder {str(state_dir)!r} is too deep for a socket path; choose a shorter one")
    return f"ipc://{path}"
