"""A virtual network of hosts on one Linux machine, for multi-host tests and demos.

One bridge in the root network namespace, and per host a network namespace with
``lo`` and one end of a veth pair (``eth0``, with the host's IPv4 address); the
other end of the pair is a port of the bridge. ``cut`` sets a host's bridge port
down, which isolates the host from everyone until ``heal``.

Every kernel object is named from one prefix (``mr`` and four hex digits unless
given): bridge ``<prefix>br``, bridge ports ``<prefix>v<i>``, namespaces
``<prefix>h<i>``. While a network is up its owner holds an flock on
``<run dir>/<prefix>.lock``; ``cleanup_stale`` removes the objects of any prefix
whose lock is free, i.e. of a process that died without ``down()``.

``command`` runs a program on a host in a private mount namespace of its own, in
which chosen folders (and the other hosts' scratch folders) are covered by empty
tmpfs mounts. ``ip netns exec`` alone already makes a new mount namespace per
call, but with ``/`` as a *slave* of the root's mounts (so later mounts in the
root still propagate in); ``unshare --propagation private`` cuts both directions.

Needs root, iproute2 and util-linux (``unshare``, ``mount``). Where br_netfilter is
loaded and iptables drops forwarded packets (Docker sets that policy), bridged traffic
between hosts is dropped too; allow it with
``iptables -I FORWARD -i <prefix>br -o <prefix>br -j ACCEPT``.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import json
import os
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import click

from mapreduce.errors import VnetError

PREFIX_PATTERN = r"mr[0-9a-f]{4}"
DEFAULT_SUBNET = "10.213.0.0/24"
HOST_IFACE = "eth0"
_PREFIX_OK = re.compile(r"^[a-z][a-z0-9]{0,7}$")  # <= 8 chars keeps every name within IFNAMSIZ (15)
_NAME_OK = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Host:
    name: str  # "h1", "h2", ...
    namespace: str  # the network namespace, e.g. "mr3fa0h1"
    address: str  # IPv4 address on the subnet
    veth_host: str  # the veth end inside the namespace
    veth_bridge: str  # the veth end attached to the bridge, in the root namespace
    scratch: Path  # a folder of the host's own: empty to every other host's processes


def run_dir() -> Path:
    """Where lock files and `mapreduce vnet` state live (/run, else the temp dir)."""
    base = Path("/run") if os.access("/run", os.W_OK) else Path(tempfile.gettempdir())
    folder = base / "mapreduce-vnet"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder


def _run(argv: Sequence[str], check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    try:
        result = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise VnetError(f"{shlex.join(argv)}: {exc}") from None
    if check and result.returncode != 0:
        message = (result.stderr or result.stdout).strip().splitlines()
        raise VnetError(f"{shlex.join(argv)}: {message[-1] if message else f'exit status {result.returncode}'}")
    return result


def _json_list(argv: Sequence[str]) -> list[dict]:
    out = _run(argv).stdout.strip()
    return json.loads(out) if out else []  # some iproute2 versions print nothing for an empty list


class VirtualNetwork:
    """A bridge and ``n_hosts`` namespaces; ``up()`` builds it, ``down()`` removes it.

    With ``bridge_address`` the bridge gets the subnet's last usable address in the
    root namespace, so processes outside the hosts (a coordinator, say) can reach
    them; the subnet is then chosen free of the root's routes unless given.
    """

    def __init__(
        self,
        n_hosts: int,
        prefix: str | None = None,
        subnet: str | None = None,
        bridge_address: bool = False,
        scratch_root: str | Path | None = None,
    ):
        if prefix is not None and not _PREFIX_OK.match(prefix):
            raise ValueError(f"prefix {prefix!r} must be a lowercase letter and up to 7 more letters or digits")
        self._random_prefix = prefix is None
        self.prefix = prefix or _new_prefix()
        self.n_hosts = n_hosts
        self.bridge_address = bridge_address
        self.subnet = ipaddress.IPv4Network(subnet or (_free_subnet() if bridge_address else DEFAULT_SUBNET))
        usable = self.subnet.num_addresses - 2 - (1 if bridge_address else 0)
        if not 1 <= n_hosts <= usable:
            raise ValueError(f"{n_hosts} hosts do not fit in {self.subnet} (1 to {usable})")
        self._scratch_root = Path(scratch_root) if scratch_root else None
        self._lock: int | None = None
        self._name_hosts()

    def _name_hosts(self) -> None:
        self.scratch_root = self._scratch_root or Path(tempfile.gettempdir()) / f"mapreduce-vnet-{self.prefix}"
        self.bridge = f"{self.prefix}br"
        addresses = list(self.subnet.hosts())
        self.bridge_ip = str(addresses[-1]) if self.bridge_address else None
        self.hosts = [
            Host(
                f"h{i}",
                f"{self.prefix}h{i}",
                str(addresses[i - 1]),
                HOST_IFACE,
                f"{self.prefix}v{i}",
                self.scratch_root / f"h{i}",
            )
            for i in range(1, self.n_hosts + 1)
        ]

    # -- building and removing -------------------------------------------------------------

    def up(self) -> VirtualNetwork:
        self._claim()
        try:
            for host in self.hosts:
                host.scratch.mkdir(parents=True, exist_ok=True)
            _run(["ip", "link", "add", "name", self.bridge, "type", "bridge"])
            if self.bridge_ip:
                _run(["ip", "addr", "add", f"{self.bridge_ip}/{self.subnet.prefixlen}", "dev", self.bridge])
            _run(["ip", "link", "set", self.bridge, "up"])
            for host in self.hosts:
                ns = ["ip", "-n", host.namespace]
                _run(["ip", "netns", "add", host.namespace])
                _run(
                    [
                        "ip",
                        "link",
                        "add",
                        host.veth_bridge,
                        "type",
                        "veth",
                        "peer",
                        "name",
                        host.veth_host,
                        "netns",
                        host.namespace,
                    ]
                )
                _run([*ns, "addr", "add", f"{host.address}/{self.subnet.prefixlen}", "dev", host.veth_host])
                _run([*ns, "link", "set", "lo", "up"])
                _run([*ns, "link", "set", host.veth_host, "up"])
                _run(["ip", "link", "set", host.veth_bridge, "master", self.bridge, "up"])
        except BaseException:
            with contextlib.suppress(VnetError):  # report the first failure; cleanup_stale gets any rest
                self.down()
            raise
        return self

    def down(self) -> None:
        """Kill every process left on the hosts and remove all this network made; safe to repeat."""
        try:
            _remove(self.prefix, self.scratch_root)
        finally:
            self._release(unlink=True)

    def __enter__(self) -> VirtualNetwork:
        return self.up()

    def __exit__(self, *exc) -> None:
        self.down()

    def _claim(self) -> None:
        """Take the prefix: create its lock file, already locked, atomically (hard link of a temp file)."""
        folder = run_dir()
        for _ in range(20):
            fd, temp = tempfile.mkstemp(dir=folder, prefix=".claim-")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                os.write(fd, json.dumps(self.state()).encode())
                if not _objects(re.escape(self.prefix)):
                    with contextlib.suppress(FileExistsError):
                        os.link(temp, folder / f"{self.prefix}.lock")
                        self._lock, fd = fd, -1
                        return
            finally:
                os.unlink(temp)
                if fd >= 0:
                    os.close(fd)
            if not self._random_prefix:
                raise VnetError(f"prefix {self.prefix} is in use or left over (see `mapreduce vnet cleanup`)")
            self.prefix = _new_prefix()
            self._name_hosts()
        raise VnetError("no free prefix found")

    def _release(self, unlink: bool) -> None:
        if unlink:
            (run_dir() / f"{self.prefix}.lock").unlink(missing_ok=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    def keep(self, name: str) -> None:
        """Let the network outlive this process (for `mapreduce vnet up`): cleanup_stale leaves it alone."""
        state = {**self.state(), "keep": name}
        (run_dir() / f"{self.prefix}.lock").write_text(json.dumps(state))
        self._release(unlink=False)

    def state(self) -> dict:
        """What ``from_state`` needs to act on this network from another process."""
        return {
            "prefix": self.prefix,
            "n_hosts": self.n_hosts,
            "subnet": str(self.subnet),
            "bridge_address": self.bridge_address,
            "scratch_root": str(self.scratch_root),
        }

    @classmethod
    def from_state(cls, state: dict) -> VirtualNetwork:
        return cls(state["n_hosts"], state["prefix"], state["subnet"], state["bridge_address"], state["scratch_root"])

    # -- using it ------------------------------------------------------------------------

    def host(self, key: Host | str) -> Host:
        """A host by its name ("h2"), address or namespace."""
        if isinstance(key, Host):
            return key
        for host in self.hosts:
            if key in (host.name, host.address, host.namespace):
                return host
        raise VnetError(f"no host {key!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def cut(self, host: Host | str) -> None:
        """Take the host off the network (its bridge port goes down); connections stall, not reset."""
        _run(["ip", "link", "set", self.host(host).veth_bridge, "down"])

    def heal(self, host: Host | str) -> None:
        _run(["ip", "link", "set", self.host(host).veth_bridge, "up"])

    def pids(self, host: Host | str) -> list[int]:
        """The processes running on the host."""
        return [int(p) for p in _run(["ip", "netns", "pids", self.host(host).namespace]).stdout.split()]

    def command(self, host: Host | str, argv: Sequence[str], hide: Iterable[str | Path] = ()) -> list[str]:
        """The argv that runs ``argv`` on the host, with each folder in ``hide`` (and the other
        hosts' scratch folders) covered by an empty tmpfs that only this process tree sees.

        The program gets MAPREDUCE_VNET_HOST, _ADDRESS and _SCRATCH in its environment. The
        exec chain (ip, unshare, sh) keeps one pid, so the Popen pid is the program's own.
        """
        host = self.host(host)
        if not argv:
            raise ValueError("no command given")
        covers = [Path(os.path.realpath(d)) for d in hide]
        scratch = Path(os.path.realpath(host.scratch))
        for folder in covers:
            if not folder.is_dir():
                raise VnetError(f"cannot hide {str(folder)!r}: not an existing folder")
            if scratch == folder or folder in scratch.parents:
                raise VnetError(f"hiding {str(folder)!r} would hide the scratch folder of {host.name}")
        covers += [Path(os.path.realpath(other.scratch)) for other in self.hosts if other != host]
        lines = ["set -e"]
        for folder in _outermost(covers):  # a folder inside a covered one is gone already
            lines.append(f"mount -t tmpfs -o mode=0755 mapreduce-vnet-hidden {shlex.quote(str(folder))}")
        env = {
            "MAPREDUCE_VNET_HOST": host.name,
            "MAPREDUCE_VNET_ADDRESS": host.address,
            "MAPREDUCE_VNET_SCRATCH": str(host.scratch),
        }
        lines.append("export " + " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items()))
        lines.append('exec "$@"')
        return [
            "ip",
            "netns",
            "exec",
            host.namespace,
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "\n".join(lines),
            f"vnet-{host.name}",
            *argv,
        ]


def _new_prefix() -> str:
    return "mr" + secrets.token_hex(2)


def _free_subnet() -> str:
    """A 10.213.N.0/24 that no route in the root namespace touches (so bridge addresses never clash)."""
    used = []
    for route in _json_list(["ip", "-j", "-4", "route", "show", "table", "all"]):
        try:
            used.append(ipaddress.IPv4Network(route.get("dst", "default"), strict=False))
        except ValueError:  # "default", "multicast" and the like
            pass
    candidates = [ipaddress.IPv4Network(f"10.213.{n}.0/24") for n in range(256)]
    free = [net for net in candidates if not any(net.overlaps(u) for u in used)]
    if not free:
        raise VnetError("no free 10.213.N.0/24 subnet: pass one")
    return str(secrets.choice(free))


def _outermost(folders: Iterable[Path]) -> list[Path]:
    kept: list[Path] = []
    for folder in sorted(set(folders), key=lambda p: len(p.parts)):
        if not any(k == folder or k in folder.parents for k in kept):
            kept.append(folder)
    return kept


# -- finding and removing by prefix -------------------------------------------------------------


def _objects(pattern: str) -> dict[str, dict[str, list[str]]]:
    """{prefix: {"netns": [...], "links": [...]}} for the kernel objects whose prefix matches pattern."""
    found: dict[str, dict[str, list[str]]] = {}
    ns_name = re.compile(rf"^({pattern})h\d+$")
    link_name = re.compile(rf"^({pattern})(?:br|v\d+)$")
    for entry in _json_list(["ip", "-j", "netns", "list"]):
        if m := ns_name.match(entry.get("name", "")):
            found.setdefault(m.group(1), {"netns": [], "links": []})["netns"].append(entry["name"])
    for entry in _json_list(["ip", "-j", "link", "show"]):
        if m := link_name.match(entry.get("ifname", "")):
            found.setdefault(m.group(1), {"netns": [], "links": []})["links"].append(entry["ifname"])
    return found


def _kill_namespace(namespace: str, wait: float = 10.0) -> list[int]:
    """SIGKILL every process in the namespace; the pids that would not die."""
    deadline = time.monotonic() + wait
    while True:
        result = _run(["ip", "netns", "pids", namespace], check=False)
        pids = [int(p) for p in result.stdout.split()] if result.returncode == 0 else []
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)


def _remove(prefix: str, scratch_root: Path | None) -> None:
    """Remove every object of one prefix, whatever state it is in; raise if something stays."""
    objects = _objects(re.escape(prefix)).get(prefix, {"netns": [], "links": []})
    survivors = [pid for namespace in objects["netns"] for pid in _kill_namespace(namespace)]
    # Delete the veths explicitly: deleting a namespace frees its end only later, asynchronously.
    for link in sorted(objects["links"], key=lambda name: name.endswith("br")):
        _run(["ip", "link", "delete", link], check=False)
    for namespace in objects["netns"]:
        _run(["ip", "netns", "delete", namespace], check=False)
    if scratch_root is not None:
        shutil.rmtree(scratch_root, ignore_errors=True)
    left = _objects(re.escape(prefix)).get(prefix)
    if left or survivors:
        names = left["netns"] + left["links"] if left else []
        raise VnetError(
            f"could not remove {', '.join(names) or 'everything'}"
            + (f"; processes {survivors} survive SIGKILL" if survivors else "")
        )


def cleanup_stale(pattern: str = PREFIX_PATTERN, include_kept: bool = False) -> list[str]:
    """Remove networks whose prefix fully matches ``pattern`` and whose owner process is gone.

    Networks kept by `mapreduce vnet up` are left alone unless ``include_kept``. Returns
    the prefixes removed.
    """
    folder = run_dir()
    full = re.compile(rf"^(?:{pattern})$")
    prefixes = set(_objects(pattern))
    prefixes |= {p.stem for p in folder.glob("*.lock") if full.match(p.stem)}
    scratch = {p.name.removeprefix("mapreduce-vnet-"): p for p in Path(tempfile.gettempdir()).glob("mapreduce-vnet-*")}
    prefixes |= {p for p in scratch if full.match(p)}
    removed = []
    for prefix in sorted(prefixes):
        lock_path = folder / f"{prefix}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR)
        except FileNotFoundError:
            fd = None
        try:
            state: dict = {}
            if fd is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its owner is alive
                try:
                    state = json.loads(lock_path.read_text() or "{}")
                except (OSError, ValueError):
                    state = {}
                if state.get("keep") and not include_kept:
                    continue
            _remove(prefix, Path(state["scratch_root"]) if state.get("scratch_root") else scratch.get(prefix))
            if prefix in scratch:
                shutil.rmtree(scratch[prefix], ignore_errors=True)
            lock_path.unlink(missing_ok=True)
            removed.append(prefix)
        finally:
            if fd is not None:
                os.close(fd)
    return removed


def available() -> str | None:
    """None if virtual networks can be built here, else a one-line reason why not."""
    if not sys.platform.startswith("linux"):
        return "virtual networks need Linux"
    if os.geteuid() != 0:
        return "virtual networks need root"
    for tool in ("ip", "unshare", "mount"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    try:
        with VirtualNetwork(1) as net:
            _run(net.command(net.hosts[0], ["true"]), timeout=10)
    except (VnetError, OSError) as exc:
        return f"cannot build a virtual network here: {exc}"
    return None


# -- the `mapreduce vnet` command -----------------------------------------------------------------


def _state_path(name: str) -> Path:
    if not _NAME_OK.match(name):
        raise VnetError(f"bad network name {name!r} (letters, digits, '_', '.', '-')")
    return run_dir() / f"{name}.json"


def _load(name: str) -> VirtualNetwork:
    path = _state_path(name)
    try:
        return VirtualNetwork.from_state(json.loads(path.read_text()))
    except FileNotFoundError:
        raise VnetError(f"no network named {name!r} is up (start one with `mapreduce vnet up`)") from None
    except (ValueError, KeyError) as exc:
        raise VnetError(f"{path} is damaged ({exc}); remove it and run `mapreduce vnet cleanup --all`") from None


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


class _Group(click.Group):
    """Turns VnetError into one line on stderr and exit status 2."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except VnetError as exc:
            _fail(str(exc))


_name_option = click.option("--name", default="vnet", show_default=True, help="Which network.")
_hide_option = click.option(
    "--hide",
    multiple=True,
    type=click.Path(file_okay=False),
    metavar="DIR",
    help="A folder the host must not see (covered by an empty tmpfs); repeatable.",
)
_passthrough = {"ignore_unknown_options": True, "allow_interspersed_args": False}


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def vnet() -> None:
    """A virtual network of hosts on this machine (needs root): try a multi-host cluster."""


@vnet.command()
@click.option("--hosts", "n_hosts", default=3, show_default=True, help="Number of hosts.")
@_name_option
@click.option("--subnet", default=None, help="IPv4 subnet (default: a free 10.213.N.0/24).")
@click.option(
    "--bridge-address/--no-bridge-address",
    default=True,
    show_default=True,
    help="Give this machine an address on the network, to run a coordinator outside the hosts.",
)
def up(n_hosts: int, name: str, subnet: str | None, bridge_address: bool) -> None:
    """Build a network of HOSTS hosts."""
    if (reason := available()) is not None:
        raise VnetError(reason)
    path = _state_path(name)
    if path.exists():
        old = _load(name)
        if _objects(re.escape(old.prefix)):
            raise VnetError(f"network {name!r} is already up (`mapreduce vnet down --name {name}` first)")
    try:
        net = VirtualNetwork(n_hosts, subnet=subnet, bridge_address=bridge_address)
    except ValueError as exc:
        raise VnetError(str(exc)) from None
    net.up()
    net.keep(name)
    path.write_text(json.dumps(net.state()))
    where = f", this machine is {net.bridge_ip}" if net.bridge_ip else ""
    click.echo(f"network {name}: {net.subnet} on bridge {net.bridge}{where}")
    for host in net.hosts:
        click.echo(f"  {host.name:<5} {host.address:<15} namespace {host.namespace}  scratch {host.scratch}")
    flag = "" if name == "vnet" else f" --name {name}"
    click.echo(f"run a command on a host: mapreduce vnet exec{flag} h1 -- CMD...   remove: mapreduce vnet down{flag}")


@vnet.command()
@_name_option
def down(name: str) -> None:
    """Remove a network, killing whatever still runs on its hosts."""
    net = _load(name)
    net.down()
    _state_path(name).unlink(missing_ok=True)
    click.echo(f"network {name} removed")


@vnet.command("exec", context_settings=_passthrough)
@_name_option
@_hide_option
@click.argument("host")
@click.argument("argv", nargs=-1, required=True, type=click.UNPROCESSED)
def exec_(name: str, hide: tuple[str, ...], host: str, argv: tuple[str, ...]) -> None:
    """Run a command on HOST: mapreduce vnet exec h1 -- CMD ARGS..."""
    argv = argv[1:] if argv[:1] == ("--",) else argv
    if not argv:
        raise VnetError("no command given")
    _exec(_load(name).command(host, argv, hide))


@vnet.command(context_settings=_passthrough)
@_name_option
@_hide_option
@click.argument("host")
@click.argument("words", nargs=-1, required=True, type=click.UNPROCESSED)
def rsh(name: str, hide: tuple[str, ...], host: str, words: tuple[str, ...]) -> None:
    """Run a shell command string on HOST, as `ssh HOST 'cmd'` does (a remote shell for launch-workers)."""
    _exec(_load(name).command(host, ["sh", "-c", " ".join(words)], hide))


@vnet.command()
@_name_option
@click.argument("host")
def cut(name: str, host: str) -> None:
    """Disconnect HOST from the network."""
    _load(name).cut(host)


@vnet.command()
@_name_option
@click.argument("host")
def heal(name: str, host: str) -> None:
    """Reconnect HOST."""
    _load(name).heal(host)


@vnet.command()
@click.option("--all", "include_kept", is_flag=True, help="Also remove networks made by `mapreduce vnet up`.")
def cleanup(include_kept: bool) -> None:
    """Remove networks left over by processes that died without taking them down."""
    removed = cleanup_stale(include_kept=include_kept)
    if include_kept:
        for path in run_dir().glob("*.json"):
            path.unlink(missing_ok=True)
    click.echo(f"removed {', '.join(removed)}" if removed else "nothing to remove")


def _exec(argv: list[str]) -> None:
    sys.stdout.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise VnetError(f"cannot run {argv[0]}: {exc}") from None


if __name__ == "__main__":
    vnet(prog_name="mapreduce vnet")
