"""Who may talk to whom: CURVE keys on every socket, and an allow-list of clients.

The coordinator ships code that workers run, so an open port must not be an open
door. With a key folder (``mapreduce keygen DIR``) every socket uses ZeroMQ's
CURVE: traffic is encrypted, each server proves its identity to its clients, and
a server accepts only clients whose public key is in its folder's allow-list
(the "Ironhouse" pattern). A peer without an allowed key gets nothing: its
connection fails in the handshake, before any message is read.

A key folder has one of two layouts, told apart by what it holds:

- shared (``keygen DIR``): ``coordinator.key(_secret)`` and ``worker.key(_secret)``,
  one pair for every worker; every ``*.key`` file in the folder is allowed.
- per host (``keygen DIR --worker NAME ...``): ``coordinator.key(_secret)`` and, in
  ``workers/``, ``NAME.key(_secret)`` for each worker host; the allowed keys are
  ``coordinator.key`` and ``workers/*.key``. A worker serves its data under its own
  key; the coordinator learns it from the handshake and tells fetchers which key
  each data server proves. Deleting ``workers/NAME.key`` revokes that host: the
  allow-list is read again at every handshake. ``clients/NAME.key(_secret)`` are
  pairs for job-submission clients (not admitted by anything yet).

Without keys, only loopback addresses may be used, unless the user says
``--insecure`` (then a warning is printed).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import zmq
from zmq.utils import z85

from mapreduce.errors import UsageError

log = logging.getLogger(__name__)

COORDINATOR, WORKER = "coordinator", "worker"
WORKERS, CLIENTS = "workers", "clients"  # per-host layout: a pair per worker host, per client
KEY_DIR_ENV = "MAPREDUCE_KEY_DIR"
KEY_NAME_ENV = "MAPREDUCE_KEY_NAME"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Keys:
    """This process's key pair, the public keys servers prove, and the allow-list folder."""

    public: bytes
    secret: bytes
    coordinator: bytes  # the coordinator's public key: what its clients expect
    worker: bytes  # shared layout: the workers' public key, what data servers prove; per host: b""
    folder: Path  # the allow-list: see allowed()
    per_host: bool = False  # the layout: a pair per worker host (workers/NAME.key) or one shared pair
    name: str = ""  # per host: this worker's name (its key files' stem)

    def serve(self, sock: zmq.Socket) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_server = True

    def connect_to(self, sock: zmq.Socket, server_key: bytes) -> None:
        sock.curve_secretkey = self.secret
        sock.curve_publickey = self.public
        sock.curve_serverkey = server_key

    def allowed(self) -> set[bytes]:
        """The public keys (z85) of the clients this process's servers admit, read now from the
        folder: a key file deleted is a client refused at its next handshake."""
        if not self.per_host:
            files = sorted(self.folder.glob("*.key"))
        else:
            files = [self.folder / f"{COORDINATOR}.key", *sorted((self.folder / WORKERS).glob("*.key"))]
        return {key for key in map(_public_key, files) if key is not None}


def _public_key(path: Path) -> bytes | None:
    """The z85 public key in a key file, or None (logged) if it cannot be read."""
    import zmq.auth

    try:
        public, _ = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        if path.exists():
            log.warning("ignored key file %s: %s", path, exc)
        return None
    return public


def check_name(name: str, what: str = "key name") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"{what} {name!r}: use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def generate(folder: Path, workers: Sequence[str] = (), clients: Sequence[str] = ()) -> list[Path]:
    """Write key pairs into ``folder``, never over old ones.

    Without names: the coordinator's pair and one shared worker pair (the shared layout).
    With names: the coordinator's pair unless the folder has one, then a pair per worker
    host in ``workers/`` (the per-host layout) and per client in ``clients/``; a folder
    that holds keys already gains the named pairs (adding a host to a cluster)."""
    import zmq.auth  # imported only where keys are used: it costs a process tens of milliseconds

    for name in (*workers, *clients):
        check_name(name, "worker name" if name in workers else "client name")
    for names in (workers, clients):
        if len(set(names)) != len(names):
            raise UsageError(f"{sorted(n for n in names if names.count(n) > 1)[0]!r} is named twice")
    has_coordinator = (folder / f"{COORDINATOR}.key").exists() or (folder / f"{COORDINATOR}.key_secret").exists()
    shared = [p.name for p in folder.glob("*.key*") if p.stem in (COORDINATOR, WORKER)] if folder.is_dir() else []
    if not workers and not clients:
        if shared:
            raise UsageError(f"{folder} already holds keys ({shared[0]}); remove them or choose another folder")
        if (folder / WORKERS).is_dir():
            raise UsageError(f"{folder} already holds per-host keys ({WORKERS}/); name the hosts to add with --worker")
        plan = [(folder, COORDINATOR), (folder, WORKER)]
    else:
        if workers and any(p.stem == WORKER for p in folder.glob(f"{WORKER}.key*")):
            raise UsageError(
                f"{folder} holds a shared worker key pair ({WORKER}.key): per-host worker keys go in a folder "
                f"without one (make a new folder, or move {WORKER}.key* away once every host has its own pair)"
            )
        plan = [] if has_coordinator else [(folder, COORDINATOR)]
        plan += [(folder / WORKERS, name) for name in workers] + [(folder / CLIENTS, name) for name in clients]
        for where, name in plan:
            taken = [p for p in (where / f"{name}.key", where / f"{name}.key_secret") if p.exists()]
            if taken:
                raise UsageError(f"{taken[0]} exists already: keys are never overwritten (delete it to replace it)")
    written = []
    for where, name in plan:
        where.mkdir(parents=True, exist_ok=True)
        public, secret = zmq.auth.create_certificates(str(where), name)
        os.chmod(secret, 0o600)
        written += [Path(public), Path(secret)]
    return written


def load(folder: str | Path, role: str, name: str | None = None) -> Keys:
    """The keys a coordinator or worker needs from ``folder``, or a UsageError naming what is missing.

    A worker in a per-host folder uses ``workers/NAME.key_secret``: ``name``, or else the
    one worker secret the folder holds (a worker host is given its own secret only)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"key folder {str(folder)!r} does not exist (make one with `mapreduce keygen DIR`)")
    per_host = (folder / WORKERS).is_dir()
    shared = (folder / f"{WORKER}.key").exists() or (folder / f"{WORKER}.key_secret").exists()
    if per_host and shared:
        raise UsageError(
            f"key folder {str(folder)!r} holds both a shared worker pair ({WORKER}.key) and per-host keys "
            f"({WORKERS}/): keep one layout"
        )
    if name is not None and not per_host:
        raise UsageError(
            f"a key name ({name!r}) was given but key folder {str(folder)!r} has no {WORKERS}/ folder of "
            "per-host keys (make them with `mapreduce keygen DIR --worker NAME`)"
        )
    if role == WORKER and per_host:
        secret_file = folder / WORKERS / f"{_worker_name(folder, name)}.key_secret"
    else:
        secret_file = folder / f"{role}.key_secret"
    needed = [secret_file, folder / f"{COORDINATOR}.key"] + ([] if per_host else [folder / f"{WORKER}.key"])
    return _read(folder, role, needed, per_host, secret_file.name.removesuffix(".key_secret") if per_host else "")


def load_client(folder: str | Path, name: str | None = None) -> Keys:
    """A standing cluster's client's keys: ``clients/NAME.key_secret`` (``name``, or the one
    client secret the folder holds) and the coordinator's public key."""
    folder = Path(folder)
    if not (folder / CLIENTS).is_dir():
        raise UsageError(
            f"key folder {str(folder)!r} has no {CLIENTS}/ folder of client keys "
            "(make one with `mapreduce keygen DIR --client NAME` and admit it on the cluster)"
        )
    secret_file = folder / CLIENTS / f"{_own_name(folder, CLIENTS, name)}.key_secret"
    return _read(folder, "client", [secret_file, folder / f"{COORDINATOR}.key"], True, secret_file.stem)


def _worker_name(folder: Path, name: str | None) -> str:
    return _own_name(folder, WORKERS, name)


def _own_name(folder: Path, kind: str, name: str | None) -> str:
    if name is not None:
        return check_name(name)
    names = sorted(p.name.removesuffix(".key_secret") for p in (folder / kind).glob("*.key_secret"))
    if len(names) == 1:
        return names[0]
    where = f"{folder / kind}"
    if not names:
        raise UsageError(f"{where} holds no {kind[:-1]} secret key (NAME.key_secret): give this host its own pair")
    raise UsageError(
        f"{where} holds {len(names)} {kind[:-1]} secret keys ({', '.join(names[:5])}"
        f"{', ...' if len(names) > 5 else ''}): say which is this {kind[:-1]}'s with --key-name NAME "
        f"(or ${KEY_NAME_ENV})"
    )


def _read(folder: Path, role: str, needed: list[Path], per_host: bool, name: str) -> Keys:
    import zmq.auth

    try:
        loaded = [zmq.auth.load_certificate(str(path)) for path in needed]
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"key folder {str(folder)!r} lacks a readable key: {exc}; it needs "
            f"{', '.join(str(p.relative_to(folder)) for p in needed)} (from `mapreduce keygen`)"
        ) from None
    (public, secret), (coordinator, _) = loaded[:2]
    if secret is None:
        raise UsageError(f"{needed[0]} holds no secret key")
    worker = loaded[2][0] if not per_host else b""
    return Keys(public, secret, coordinator, worker, folder, per_host, name)


def authenticator(context: zmq.Context, keys: Keys | None) -> CurveGate | None:
    """Start the thread that admits only allowed client keys to this context's servers,
    or None without keys. It reads the allow-list again at every handshake."""
    if keys is None:
        return None
    return _gate(context, keys.allowed)


def clients_authenticator(context: zmq.Context, keys: Keys) -> CurveGate:
    """As ``authenticator``, for a standing cluster's clients: the public keys in ``clients/``."""
    folder = keys.folder / CLIENTS
    return _gate(context, lambda: {key for key in map(_public_key, sorted(folder.glob("*.key"))) if key is not None})


def _gate(context: zmq.Context, allowed: Callable[[], set[bytes]]) -> CurveGate:
    gate = CurveGate(context, lambda: {z85.decode(key) for key in allowed()})
    gate.start()
    return gate


class CurveGate(threading.Thread):
    """The context's ZAP handler (ZeroMQ RFC 27): libzmq asks it about every CURVE client
    in the handshake, and it admits a client only if its public key is an allowed one.
    (pyzmq's ThreadAuthenticator does this too, but loading it imports asyncio and ssl,
    tens of milliseconds at the start of every process.)"""

    ZAP_ENDPOINT = "inproc://zeromq.zap.01"

    def __init__(self, context: zmq.Context, allowed: set[bytes] | Callable[[], set[bytes]]):
        """``allowed``: the raw client keys admitted, or a function giving them (called at every
        handshake, so a key removed from the allow-list is refused from then on)."""
        super().__init__(name="curve-gate", daemon=True)
        self.allowed = allowed if callable(allowed) else (lambda fixed=frozenset(allowed): fixed)
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
        if version == b"1.0" and mechanism == b"CURVE" and len(credentials) == 1 and self._admits(credentials[0]):
            return [b"1.0", request_id, b"200", b"OK", z85.encode(credentials[0]), b""]
        log.debug("refused a %s client: its key is not allowed", mechanism.decode("ascii", "replace"))
        return [b"1.0", request_id, b"400", b"key not allowed", b"", b""]

    def _admits(self, key: bytes) -> bool:
        try:
            return key in self.allowed()
        except Exception as exc:  # an unreadable folder admits nobody, and never stops the gate
            log.warning("could not read the allowed keys: %s: %s", type(exc).__name__, exc)
            return False

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
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: (
        "the coordinator does not accept this worker's key (is its public key in the coordinator's key folder, "
        "or was it revoked?)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: (
        "the coordinator and this worker disagree on security (keys on one side only?)"
    ),
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "the handshake failed (is the coordinator's public key the right one?)",
}
