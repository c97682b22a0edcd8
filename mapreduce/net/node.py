"""Facts about the machine a process runs on."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path
from urllib.parse import urlsplit


def host_id() -> str:
    """Equal for processes that see the same files: same boot of the same machine
    and same mount namespace. Such processes may read each other's files directly."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        mounts = os.stat("/proc/self/ns/mnt").st_ino
        return f"{boot}/{mounts}"
    except OSError:
        return socket.gethostname()


def default_scratch() -> Path:
    """Workers on one host share this folder, so a finished map's output outlives
    the worker process that wrote it while another worker can still serve it."""
    return Path(tempfile.gettempdir()) / f"mapreduce-scratch-{os.getuid()}"


def hostname() -> str:
    return socket.gethostname()


def address_towards(endpoint: str) -> str:
    """This host's address on the interface that reaches ``endpoint`` (tcp://host:port):
    the address other hosts most likely reach it at. Loopback for anything else."""
    try:
        parts = urlsplit(endpoint)
        if parts.scheme != "tcp" or not parts.hostname or parts.hostname in ("*", "0.0.0.0"):
            return "127.0.0.1"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect((parts.hostname, parts.port or 9))  # UDP: picks a route, sends nothing
            return probe.getsockname()[0]
    except (OSError, ValueError):
        return "127.0.0.1"


def endpoint_host(endpoint: str) -> str:
    """The host part of tcp://host:port (for reaching another port on the same host)."""
    parts = urlsplit(endpoint)
    return parts.hostname if parts.scheme == "tcp" and parts.hostname else "127.0.0.1"
