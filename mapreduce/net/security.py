"""Who may talk to whom: CURVE keys on every socket, and an allow-list of clients.

The coordinator ships code that workers run, so an open port must not be an open
door. With a key folder (``mapreduce keygen DIR``) every socket uses ZeroMQ's
CURVE: traffic is encrypted, each server proves its identity to its clients, and
a server accepts only clients whose public key is a ``*.key`` file in the folder
(the "Ironhouse" pattern). The coordinator holds ``coordinator.key_secret``; the
workers share ``worker.key_secret`` and serve map output under that identity. A
peer without an allowed key gets nothing: its connection fails in the handshake,
before any message is read.

Without keys, only loopback addresses may be used, unless the user says
``--insecure`` (then a warning is printed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import threading
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from mapreduce.errors import UsageError

log = logging.getLogger(__name__)

COORDINATOR, WORKER = "coordinator", "worker"
KEY_DIR_ENV = "MAPREDUCE_KEY_DIR"


@dataclass(frozen=True)
class Keys:
    """This process's key pair, the two public keys servers prove, and the allow-list folder."""

    public: bytes
    secret: bytes
    coordinator: bytes  # the coordinator's public key: what its clients expect
    worker: bytes  # the workers' public key: what data servers' clients expect
    folder: Path  # every *.key file here is an allowed client

    def serve(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def connect_to(self, sock: zmq.Socket, server_key: bytes) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server_key


def generate(folder: Path) -> list[Path]:
    """Write the coordinator's and the workers' key pairs into ``folder`` (never over old ones)."""
    import zmq.auth  # imported only where keys are used: it costs a process tens of milliseconds

    folder.mkdir(parents=True, exist_ok=True)
    existing = [p.name for p in folder.glob("*.key*") if p.stem in (COORDINATOR, WORKER)]
    if existing:
        raise UsageError(f"{folder} already holds keys ({existing[0]}); remove them or choose another folder")
    written = []
    for role in (COORDINATOR, WORKER):
        public, secret = zmq.auth.create_certificates(str(folder), role)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


def load(folder: str | Path, role: str) -> Keys:
    """The keys a coordinator or worker needs from ``folder``, or a UsageError naming what is missing."""
    import zmq.auth

    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"key folder {str(folder)!r} does not exist (make one with `mapreduce keygen DIR`)")
    try:
        public, secret = zmq.auth.load_certificate(str(folder / f"{role}.key_secret"))
        coordinator, _ = zmq.auth.load_certificate(str(folder / f"{COORDINATOR}.key"))
        worker, _ = zmq.auth.load_certificate(str(folder / f"{WORKER}.key"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"key folder {str(folder)!r} lacks a readable key: {exc}; it needs {role}.key_secret, "
            f"{COORDINATOR}.key and {WORKER}.key (from `mapreduce keygen`)"
        ) from None
    if secret is None:
        raise UsageError(f"{folder / (role + '.key_secret')} holds no secret key")
    return Keys(public, secret, coordinator, worker, folder)


def authenticator(context: zmq.Context, keys: Keys | None) -> CurveGate | None:
    """Start the thread that admits only allowed client keys to this context's servers,
    or None without keys."""
    if keys is None:
        return None
    import zmq.auth

    allowed = {z85.decode(key) for key in zmq.auth.load_certificates(str(keys.folder))}
    gate = CurveGate(context, allowed)
    gate.start()
    return gate


class CurveGate(threading.Thread):
    """The context's ZAP handler (ZeroMQ RFC 27): libzmq asks it about every CURVE client
    in the handshake, and it admits a client only if its public key is an allowed one.
    (pyzmq's ThreadAuthenticator does this too, but loading it imports asyncio and ssl,
    tens of milliseconds at the start of every process.)"""

    ZAP_ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, context: zmq.Context, allowed: set[bytes]):
        super().__init__(name="curve-gate", daemon=True)
        self.allowed = frozenset(allowed)
        self.requests = context.socket(zmq.REP)
        self.requests.linger = 0
        self.requests.bind(self.ZAP_ENDPOINT)  # bound before any server socket: none goes unguarded
        stop = f"inproc://curve-gate-stop-{id(self)}"
        self._stop_in = context.socket(zmq.PAIR)
        self._stop_in.bind(stop)
        self._stop_out = context.socket(zmq.PAIR)
        self._stop_out.connect(stop)

    def run(self) -> None:
        poller = zmq.Poller()
        poller.register(self.requests, zmq.POLLIN)
        poller.register(self._stop_in, zmq.POLLIN)
        try:
            while self._stop_in not in dict(poller.poll()):
                self.requests.send_multipart(self.answer(self.requests.recv_multipart()))
        finally:
            self.requests.close()
            self._stop_in.close()

    def answer(self, request: list[bytes]) -> list[bytes]:
        """The reply to one ZAP request: [version, request id, status, text, user id, metadata]."""
        if len(request) < 6:
            return [b"1.0", request[1] if len(request) > 1 else b"", b"500", b"malformed ZAP request", b"", b""]
        version, request_id, _domain, _address, _identity, mechanism, *credentials = request
        if version == b"1.0" and mechanism == b"CURVE" and len(credentials) == 1 and credentials[0] in self.allowed:
            return [b"1.0", request_id, b"200", b"OK", z85.encode(credentials[0]), b""]
        log.debug("refused a %s client: its key is not allowed", mechanism.decode("ascii", "replace"))
        return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]

    def stop(self) -> None:
        """End the thread (call before closing the context)."""
        if self.is_alive():
            self._stop_out.send(b"")
            self.join()
        for sock in (self.requests, self._stop_in, self._stop_out):  # closing twice is harmless
            sock.close()


def check_exposure(what: str, host: str, keys: Keys | None, insecure: bool) -> None:
    """Refuse to use a non-loopback address in the clear unless the user asked for it."""
    if keys is not None or is_loopback(host):
        return
    if not insecure:
        raise UsageError(
            f"{what} {host} is not a loopback address and no keys were given: anyone who can reach it "
            f"could run code on the cluster. Make keys with `mapreduce keygen DIR` and pass --key-dir DIR "
            f"(or set {KEY_DIR_ENV}), or pass --insecure to accept the risk"
        )
    log.warning("%s %s is used WITHOUT authentication or encryption (--insecure)", what, host)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    if host in ("*", "0.0.0.0", "::"):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback for info in socket.getaddrinfo(host, None))
        except (OSError, ValueError):
            return False


HANDSHAKE_FAILURES = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "the coordinator does not accept this worker's key",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the coordinator and this worker disagree on security (keys on one side only?)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (is the coordinator's public key the right one?)",
}
