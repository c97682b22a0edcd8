"""The coordinator's transfers: work on the network that must not stall its loop.

One thread, with fetchers of its own, does two kinds of work for the coordinator:
- pull a reduce's output from a reducer on another host into the output folder
  (then the loop commits it, or runs the reduce again if the pull failed);
- check that a joining worker's data server answers (else the worker is refused
  with a message saying which address to fix).
Finished work comes back through a queue; the loop is woken by an inproc socket.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import queue
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import zmq

from mapreduce.coordinator.scheduler import Commit
from mapreduce.errors import StorageError, storage_errors
from mapreduce.net.dataserver import Fetcher, FetchError
from mapreduce.net.security import Keys
from mapreduce.wire import messages as p

PROBE_TIMEOUT = 2.0  # under the worker's re-register interval (3 heartbeats)
PULL_TIMEOUT = 10.0  # per 4 MB request


@dataclass(frozen=True)
class Pull:
    commit: Commit
    destination: Path  # a temporary name in the output folder
    error: str | None = None
    output_folder_failed: bool = False  # the error was ours to write, not the reducer's to serve


@dataclass(frozen=True)
class Probe:
    identity: bytes
    register: p.Register
    error: str | None = None
    server_key: str = ""  # the key the worker proved in its handshake: its data server must prove it too


class Transfers:
    def __init__(self, context: zmq.Context, keys: Keys | None = None):
        self._context = context
        self._keys = keys
        self._todo: queue.Queue[Pull | Probe | None] = queue.Queue()
        self._done: queue.Queue[Pull | Probe] = queue.Queue()
        self.pending = 0  # submitted and not yet collected: read by the loop only
        self.pending_pulls = 0  # of which pulls: the job is not over while one is pending
        self.pulled_bytes = 0
        address = f"inproc://transfers-{uuid.uuid4().hex}"
        self.wakeup = context.socket(zmq.PAIR)  # the loop polls this
        self.wakeup.bind(address)
        self._wake = context.socket(zmq.PAIR)  # used by the thread only
        self._wake.connect(address)
        self._thread = threading.Thread(target=self._run, name="transfers", daemon=True)
        self._thread.start()

    def submit(self, work: Pull | Probe) -> None:
        self.pending += 1
        self.pending_pulls += isinstance(work, Pull)
        self._todo.put(work)

    def collect(self) -> list[Pull | Probe]:
        """Finished work, in order; call when ``wakeup`` is readable (or any time)."""
        while self.wakeup.poll(0):
            self.wakeup.recv()
        finished = []
        while True:
            try:
                finished.append(self._done.get_nowait())
            except queue.Empty:
                self.pending -= len(finished)
                self.pending_pulls -= sum(isinstance(f, Pull) for f in finished)
                return finished

    def close(self) -> None:
        """Stop the thread (after the work in hand); safe to call twice."""
        if self._thread.is_alive():
            while not self._todo.empty():  # abandon work not yet started
                self._todo.get_nowait()
            self._todo.put(None)
            self._thread.join(timeout=PULL_TIMEOUT + 1)
        self.wakeup.close(0)

    def _run(self) -> None:
        # Both talk to workers' data servers, each proving the key its worker proved to us
        # (the shared workers' key is the default).
        server_key = self._keys.worker if self._keys else b""
        probes = Fetcher(self._context, PROBE_TIMEOUT, self._keys, server_key)
        pulls = Fetcher(self._context, PULL_TIMEOUT, self._keys, server_key)
        try:
            while (work := self._todo.get()) is not None:
                try:
                    done = self._probe(probes, work) if isinstance(work, Probe) else self._pull(pulls, work)
                except Exception as exc:  # never die: the loop waits for every pull it submitted
                    done = dataclasses.replace(work, error=f"{type(exc).__name__}: {exc}")
                self._done.put(done)
                self._wake.send(b"")
        finally:
            probes.close()
            pulls.close()
            self._wake.close(0)

    @staticmethod
    def _probe(fetcher: Fetcher, probe: Probe) -> Probe:
        try:
            fetcher.ping(probe.register.data_address, probe.server_key.encode())
            return probe
        except FetchError as exc:
            return Probe(probe.identity, probe.register, str(exc), probe.server_key)

    def _pull(self, fetcher: Fetcher, pull: Pull) -> Pull:
        c = pull.commit
        what = f"output of reduce task {c.partition}, attempt {c.attempt}"
        try:
            with storage_errors(pull.destination.parent, what, "output"), open(pull.destination, "wb") as out:
                fetcher.copy(c.data_address, c.temp, 0, c.size, out, c.server_key.encode())
                out.flush()
                os.fsync(out.fileno())
            self.pulled_bytes += c.size
            return pull
        except (StorageError, FetchError) as exc:
            with contextlib.suppress(OSError):
                pull.destination.unlink(missing_ok=True)
            if isinstance(exc, StorageError):
                return Pull(c, pull.destination, str(exc), output_folder_failed=True)
            return Pull(c, pull.destination, f"{type(exc).__name__}: {exc}")
