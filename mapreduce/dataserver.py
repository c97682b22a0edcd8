"""The data plane: a worker serves byte ranges of its scratch files to reducers.

Requests and replies are msgpack arrays on a ROUTER socket in a thread of its
own, so serving never waits on the worker's control loop or on user code.
Only regular files inside the served folder can be read.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

import msgpack
import zmq

from .errors import ProtocolError

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
MAX_REQUEST_BYTES = 64 * 1024


class FetchError(Exception):
    """A map output could not be read from the worker that serves it."""


class DataServer:
    def __init__(self, context: zmq.Context, root: Path, host: str = "127.0.0.1"):
        self.root = root.resolve()
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        self._socket.bind(f"tcp://{host}:*")
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="data-server", daemon=True)

    def start(self) -> "DataServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        try:
            while not self._stop.is_set():
                if not self._socket.poll(25):  # short: stop() waits for this loop
                    continue
                frames = self._socket.recv_multipart()
                if len(frames) != 2:
                    continue
                identity, request = frames
                self._socket.send_multipart([identity, self._answer(request)])
        finally:
            self._socket.close(0)

    def _answer(self, request: bytes) -> bytes:
        try:
            path, offset, length = _parse(request)
            return msgpack.packb([True, self._read(path, offset, length)], use_bin_type=True)
        except (ProtocolError, OSError) as exc:
            log.warning("data request refused: %s", exc)
            return msgpack.packb([False, str(exc)], use_bin_type=True)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        target = Path(os.path.realpath(path))
        if not target.is_relative_to(self.root) or not target.is_file():
            raise ProtocolError(f"{path!r} is not a file this worker serves")
        with open(target, "rb") as f:
            f.seek(offset)
            return f.read(length)


def _parse(request: bytes) -> tuple[str, int, int]:
    try:
        path, offset, length = msgpack.unpackb(request, raw=False)
    except Exception:
        raise ProtocolError("malformed data request") from None
    if not isinstance(path, str) or type(offset) is not int or type(length) is not int:
        raise ProtocolError("malformed data request")
    if offset < 0 or not 0 <= length <= CHUNK:
        raise ProtocolError(f"bad range {offset}+{length}")
    return path, offset, length


class Fetcher:
    """Copies byte ranges from data servers; one socket per server, reused."""

    def __init__(self, context: zmq.Context, timeout: float = 30.0):
        self._context = context
        self._timeout_ms = int(timeout * 1000)
        self._sockets: dict[str, zmq.Socket] = {}

    def copy(self, address: str, path: str, offset: int, length: int, out) -> None:
        """Write bytes ``[offset, offset+length)`` of ``path`` at ``address`` to file ``out``."""
        done = 0
        while done < length:
            size = min(CHUNK, length - done)
            data = self._request(address, path, offset + done, size)
            if len(data) != size:
                raise FetchError(f"{address} served {len(data)} of {size} bytes of {path}")
            out.write(data)
            done += size

    def _request(self, address: str, path: str, offset: int, length: int) -> bytes:
        socket = self._sockets.get(address)
        if socket is None:
            socket = self._sockets[address] = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(address)
        socket.send(msgpack.packb([path, offset, length]))
        if not socket.poll(self._timeout_ms):
            socket.close(0)
            del self._sockets[address]
            raise FetchError(f"data server {address} did not answer within {self._timeout_ms / 1000:.0f} s")
        try:
            ok, payload = msgpack.unpackb(socket.recv(), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise FetchError(f"data server {address} sent a malformed reply") from None
        if not ok or not isinstance(payload, bytes):
            raise FetchError(f"data server {address} refused {path}: {payload}")
        return payload

    def close(self) -> None:
        for socket in self._sockets.values():
            socket.close(0)
        self._sockets.clear()
