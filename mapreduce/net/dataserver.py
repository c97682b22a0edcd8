"""The data plane: byte ranges of files, served to other hosts.

A worker serves its scratch folder (map output to reducers, reduce output to the
coordinator); the coordinator serves the job's input files to workers that
cannot see them. Requests and replies are msgpack arrays on a ROUTER socket in a
thread of its own, so serving never waits on a control loop or on user code.
Only regular files inside the served folder, or the listed files, can be read.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable
from pathlib import Path

import msgpack
import zmq

from mapreduce.errors import FetchError, ProtocolError, Unreachable
from mapreduce.net.security import Keys

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
PING = ""  # a request for no file: answered at once, to show the server is reachable
MAX_REQUEST_BYTES = 64 * 1024


class DataServer:
    def __init__(
        self,
        context: zmq.Context,
        root: Path | None = None,
        host: str = "127.0.0.1",
        files: Iterable[str] = (),
        keys: Keys | None = None,
    ):
        self.root = root.resolve() if root is not None else None
        self.files = frozenset(files)
        self.bytes_served = 0
        self._socket = context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_REQUEST_BYTES)
        if keys is not None:
            keys.serve(self._socket)
        self._socket.bind(f"tcp://{host}:*")
        self.address = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.port = int(self.address.rsplit(":", 1)[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="data-server", daemon=True)

    def start(self) -> DataServer:
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
                try:
                    answer = self._answer(request)
                except Exception as exc:  # one bad request must never stop the server
                    log.warning("data request failed: %s: %s", type(exc).__name__, exc)
                    answer = msgpack.packb([False, f"the request failed: {type(exc).__name__}"], use_bin_type=True)
                self._socket.send_multipart([identity, answer])
        finally:
            self._socket.close(0)

    def _answer(self, request: bytes) -> bytes:
        try:
            path, offset, length = _parse(request)
            if path == PING:
                return msgpack.packb([True, b""], use_bin_type=True)
            data = self._read(path, offset, length)
            self.bytes_served += len(data)
            return msgpack.packb([True, data], use_bin_type=True)
        except (ProtocolError, OSError) as exc:
            log.warning("data request refused: %s", exc)
            return msgpack.packb([False, str(exc)], use_bin_type=True)

    def _read(self, path: str, offset: int, length: int) -> bytes:
        target = Path(os.path.realpath(path))
        listed = str(target) in self.files
        inside = self.root is not None and target.is_relative_to(self.root)
        if not (listed or inside) or not target.is_file():
            raise ProtocolError(f"{path!r} is not a file this server serves")
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
    if not 0 <= offset < 2**63 or not 0 <= length <= CHUNK:
        raise ProtocolError(f"bad range {offset}+{length}")
    if "\0" in path:
        raise ProtocolError("a path with a NUL byte")
    return path, offset, length


class Fetcher:
    """Copies byte ranges from data servers; one socket per server, reused.
    Not thread-safe: each thread that fetches has a Fetcher of its own.

    With keys, each request names the public key (z85) the server must prove, or leaves
    it to ``server_key``, the default (the coordinator's, or the shared workers' key)."""

    def __init__(self, context: zmq.Context, timeout: float = 30.0, keys: Keys | None = None, server_key: bytes = b""):
        self._context = context
        self._keys, self._server_key = keys, server_key  # CURVE: who we are, whom we expect
        self._timeout_ms = int(timeout * 1000)
        self._sockets: dict[tuple[str, bytes], zmq.Socket] = {}
        self.received = 0  # bytes of file data received, for the job's network figures

    def ping(self, address: str, server_key: bytes | None = None) -> None:
        """Raise FetchError unless the data server at ``address`` answers within the timeout."""
        self._request(address, PING, 0, 0, server_key)

    def read(self, address: str, path: str, offset: int, length: int, server_key: bytes | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``path``, fewer only at the end of the file."""
        parts = []
        while length > 0:
            data = self._request(address, path, offset, min(CHUNK, length), server_key)
            parts.append(data)
            if len(data) < min(CHUNK, length):
                break
            offset += len(data)
            length -= len(data)
        return b"".join(parts)

    def copy(self, address: str, path: str, offset: int, length: int, out, server_key: bytes | None = None) -> None:
        """Write bytes ``[offset, offset+length)`` of ``path`` at ``address`` to file ``out``."""
        done = 0
        while done < length:
            size = min(CHUNK, length - done)
            data = self._request(address, path, offset + done, size, server_key)
            if len(data) != size:
                raise FetchError(f"{address} served {len(data)} of {size} bytes of {path}")
            out.write(data)
            done += size

    def _request(self, address: str, path: str, offset: int, length: int, server_key: bytes | None = None) -> bytes:
        key = (address, (server_key or self._server_key) if self._keys is not None else b"")
        socket = self._sockets.get(key)
        if socket is None:
            if self._keys is not None and not key[1]:
                raise FetchError(f"no public key is known for data server {address}: cannot authenticate it")
            socket = self._sockets[key] = self._context.socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.setsockopt(zmq.MAXMSGSIZE, CHUNK + MAX_REQUEST_BYTES)
            try:
                if self._keys is not None:
                    self._keys.connect_to(socket, key[1])
                socket.connect(address)
            except zmq.ZMQError as exc:
                socket.close(0)
                del self._sockets[key]
                raise FetchError(f"cannot connect to data server {address!r}: {exc}") from None
        socket.send(msgpack.packb([path, offset, length]))
        if not socket.poll(self._timeout_ms):
            socket.close(0)
            del self._sockets[key]
            raise Unreachable(f"data server {address} did not answer within {self._timeout_ms / 1000:.0f} s")
        try:
            ok, payload = msgpack.unpackb(socket.recv(), raw=False)
        except (ValueError, TypeError, msgpack.UnpackException):
            raise FetchError(f"data server {address} sent a malformed reply") from None
        if not ok or not isinstance(payload, bytes):
            raise FetchError(f"data server {address} refused {path}: {payload}")
        self.received += len(payload)
        return payload

    def close(self) -> None:
        for socket in self._sockets.values():
            socket.close(0)
        self._sockets.clear()


class RemoteFile:
    """A read-only file on a data server, with the few file methods splitting needs
    (``inputs.read_range``): reads go to the server in ranges, lines in pieces."""

    LINE_PIECE = 64 * 1024

    def __init__(self, fetcher: Fetcher, address: str, path: str):
        self.fetcher, self.address, self.path = fetcher, address, path
        self._position = 0

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise ValueError("a remote file seeks from its start only")
        self._position = offset
        return offset

    def tell(self) -> int:
        return self._position

    def read(self, size: int) -> bytes:
        data = self.fetcher.read(self.address, self.path, self._position, size)
        self._position += len(data)
        return data

    def readline(self) -> bytes:
        parts = []
        while True:
            piece = self.fetcher.read(self.address, self.path, self._position, self.LINE_PIECE)
            end = piece.find(b"\n")
            if end >= 0:
                piece = piece[: end + 1]
            parts.append(piece)
            self._position += len(piece)
            if end >= 0 or len(piece) < self.LINE_PIECE:
                return b"".join(parts)
