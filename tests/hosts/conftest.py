"""Fixtures of the multi-host tests: real OpenSSH servers on virtual hosts.

``ssh_hosts`` builds a virtual network (mapreduce.tools.vnet) of four hosts with the
bridge address on this machine, and on each host starts an sshd of its own: the
distribution's /usr/sbin/sshd with a generated config, listening only on that host's
address, port 22, with a host key, authorized_keys and pid file in the test's temporary
folder. Logins are key-based only (root, ``prohibit-password``); nothing in /etc/ssh or
~/.ssh is read or written. The first three hosts accept the client key; the fourth
(``refusing``) lists another key, so its sshd turns the client away.

sshd runs in the host's network namespace and in a mount namespace of its own (that of
``VirtualNetwork.command``), so what it starts (a login's commands, a worker) sees the
host's network and does not see ``private``: a folder for the coordinator's files.

Skipped with the reason when this is not root, namespaces cannot be made, or
openssh-server / openssh-client are not installed (.ci/run installs them).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from mapreduce.tools import vnet

SSHD = Path("/usr/sbin/sshd")  # sshd re-executes itself, so it must be run by its absolute path
SSH_PORT = 22
# Privilege separation chroots into this folder (Debian's sshd; its service manager makes it).
PRIVSEP_DIR = Path("/run/sshd")

SSHD_CONFIG = """\
ListenAddress {address}:{port}
HostKey {folder}/ssh_host_ed25519_key
PidFile {folder}/sshd.pid
AuthorizedKeysFile {folder}/authorized_keys
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserRC no
X11Forwarding no
AllowAgentForwarding no
AllowTcpForwarding no
PrintMotd no
"""


def ssh_unavailable() -> str | None:
    """None if sshd can run on virtual hosts here, else why not."""
    if (reason := vnet.available()) is not None:
        return reason
    if not SSHD.is_file():
        return f"openssh-server is not installed (no {SSHD})"
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            return f"openssh-client is not installed (no `{tool}`)"
    return None


def keygen(path: Path) -> Path:
    """An ed25519 key pair without passphrase at path and path.pub; returns path."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )
    return path


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5):
            return True
    except OSError:
        return False


class SshHosts:
    """The network, one sshd per host, and the ssh command line that logs into them."""

    def __init__(self, net: vnet.VirtualNetwork, folder: Path):
        self.net, self.folder = net, folder
        self.private = folder / "private"  # hidden from every host
        self.private.mkdir()
        self.client_key = keygen(folder / "client_key")
        self.stranger_key = keygen(folder / "stranger_key")  # what the refusing host authorizes
        self.accepting = net.hosts[:-1]
        self.refusing = net.hosts[-1]
        options = {
            "BatchMode": "yes",  # never ask for a password or a passphrase
            "IdentitiesOnly": "yes",
            "IdentityFile": str(self.client_key),
            "StrictHostKeyChecking": "no",
            "UserKnownHostsFile": "/dev/null",
            "LogLevel": "ERROR",  # no "Permanently added ..." line in every worker's log
            "ConnectTimeout": "10",
        }
        # -F /dev/null: neither /etc/ssh/ssh_config nor ~/.ssh/config.
        self.ssh = ["ssh", "-F", "/dev/null", *(f"-o{k}={v}" for k, v in options.items())]
        self.rsh = shlex.join(self.ssh)  # for launch-workers --rsh
        self.servers: dict[str, subprocess.Popen] = {}

    def sshd_folder(self, host: vnet.Host) -> Path:
        return self.folder / f"sshd-{host.name}"

    def start(self, timeout: float = 15.0) -> None:
        PRIVSEP_DIR.mkdir(mode=0o755, exist_ok=True)
        for host in self.net.hosts:
            folder = self.sshd_folder(host)
            folder.mkdir()
            keygen(folder / "ssh_host_ed25519_key")
            key = self.stranger_key if host is self.refusing else self.client_key
            shutil.copyfile(key.with_suffix(".pub"), folder / "authorized_keys")
            config = folder / "sshd_config"
            config.write_text(SSHD_CONFIG.format(address=host.address, port=SSH_PORT, folder=folder))
            with open(folder / "sshd.log", "wb") as log:
                self.servers[host.name] = subprocess.Popen(
                    self.net.command(host, [str(SSHD), "-D", "-e", "-f", str(config)], hide=[self.private]),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
        deadline = time.monotonic() + timeout
        for host in self.net.hosts:
            server = self.servers[host.name]
            while not _listening(host.address, SSH_PORT):
                if server.poll() is not None:
                    log = (self.sshd_folder(host) / "sshd.log").read_text(errors="replace").strip()
                    raise RuntimeError(f"sshd on {host.name} exited with status {server.returncode}: {log}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd on {host.name} is not listening on {host.address}:{SSH_PORT}")
                time.sleep(0.05)

    def run(self, host: vnet.Host, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command string on the host through ssh."""
        return subprocess.run(
            [*self.ssh, host.address, command],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def kill_logins(self, timeout: float = 10.0) -> None:
        """SIGKILL whatever runs on the hosts but the sshd servers themselves (logins, workers)."""
        keep = {server.pid for server in self.servers.values()}
        deadline = time.monotonic() + timeout
        while True:
            left = [pid for host in self.net.hosts for pid in self.net.pids(host) if pid not in keep]
            if not left or time.monotonic() > deadline:
                return
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)

    def stop(self) -> None:
        for server in self.servers.values():
            if server.poll() is None:
                server.terminate()
            try:
                server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


@pytest.fixture(scope="module")
def ssh_network(tmp_path_factory):
    """The virtual hosts with their sshd servers, for a whole test module."""
    if (reason := ssh_unavailable()) is not None:
        pytest.skip(f"no OpenSSH servers on virtual hosts here: {reason}")
    folder = tmp_path_factory.mktemp("ssh-hosts")
    with vnet.VirtualNetwork(4, bridge_address=True, scratch_root=folder / "net") as net:
        hosts = SshHosts(net, folder)
        try:
            hosts.start()
            yield hosts
        finally:
            hosts.stop()  # net.down() then kills whatever is left on the hosts


@pytest.fixture
def ssh_hosts(ssh_network):
    """The module's sshd hosts; what a test left running on them is killed when it ends."""
    yield ssh_network
    ssh_network.kill_logins()
