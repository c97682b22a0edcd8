"""The virtual network: hosts reach each other over TCP, cut and heal, hidden folders,
private scratch, and nothing left behind by down() or by a crashed owner."""

from __future__ import annotations

import json
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mapreduce.tools import vnet as vnet_module
from mapreduce.tools.vnet import VirtualNetwork, VnetError, available, cleanup_stale, run_dir

REASON = available()
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")

PORT = 7700
# Answers each connection with the address it came from.
SERVER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen()
while True:
    c, peer = s.accept()
    c.sendall(peer[0].encode())
    c.close()
"""
# Prints what the server said, or "fail ..." if it cannot be reached within a second.
CLIENT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as c:
        print(c.recv(100).decode())
except OSError as exc:
    print("fail", exc)
"""


def run_on(net: VirtualNetwork, host: str, code: str, *args: str, hide=(), timeout: float = 20) -> str:
    result = subprocess.run(
        net.command(host, [sys.executable, "-c", code, *args], hide), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def wait_for(condition, timeout: float = 10.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
    return value


def leftovers(prefix: str) -> list[str]:
    """Namespaces and links of a prefix, as `ip` lists them."""
    names = [
        line.split()[0]
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines()
    ]
    names += [
        m.group(1)
        for m in re.finditer(
            r"^\d+: ([^:@]+)", subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout, re.M
        )
    ]
    return [name for name in names if name.startswith(prefix)]


@pytest.fixture(scope="module")
def net():
    with VirtualNetwork(3) as network:
        server = subprocess.Popen(
            network.command("h2", [sys.executable, "-c", SERVER, str(PORT)]),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(
            lambda: not run_on(network, "h1", CLIENT, network.hosts[1].address, str(PORT)).startswith("fail"),
            what="the server on h2",
        )
        yield network
        server.kill()
        server.wait()


def test_hosts_have_their_own_addresses_and_reach_each_other(net):
    h1, h2, h3 = net.hosts
    assert len({h.address for h in net.hosts}) == 3 and all(h.address.startswith("10.213.0.") for h in net.hosts)
    assert run_on(net, "h1", CLIENT, h2.address, str(PORT)) == h1.address
    assert run_on(net, "h3", CLIENT, h2.address, str(PORT)) == h3.address


def test_hosts_do_not_share_this_machines_network(net):
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert run_on(net, "h1", CLIENT, "127.0.0.1", str(port)).startswith("fail")


def test_cut_and_heal(net):
    target = (net.hosts[1].address, str(PORT))
    net.cut("h2")
    try:
        wait_for(lambda: run_on(net, "h1", CLIENT, *target).startswith("fail"), what="h2 to be unreachable")
        assert run_on(net, "h3", CLIENT, *target).startswith("fail")
    finally:
        net.heal("h2")
    assert wait_for(lambda: run_on(net, "h1", CLIENT, *target), what="h2 to be back") == net.hosts[0].address


def test_command_runs_as_the_same_process(net):
    proc = subprocess.Popen(
        net.command("h1", [sys.executable, "-c", "import os; print(os.getpid())"]), stdout=subprocess.PIPE, text=True
    )
    out, _ = proc.communicate(timeout=20)
    assert int(out) == proc.pid


def test_hidden_folder_is_empty_inside_and_untouched_outside(net, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("secret")
    code = (
        "import os, sys; d = sys.argv[1]; print(sorted(os.listdir(d)));"
        "open(os.path.join(d, 'written-inside.txt'), 'w').write('x')"
    )
    assert run_on(net, "h1", code, str(data), hide=[data]) == "[]"
    assert sorted(p.name for p in data.iterdir()) == ["input.txt"]
    assert (data / "input.txt").read_text() == "secret"
    assert str(data) not in Path("/proc/self/mountinfo").read_text()
    assert run_on(net, "h1", "import os, sys; print(sorted(os.listdir(sys.argv[1])))", str(data)) == "['input.txt']"


def test_scratch_is_private_to_its_host(net):
    h1, h2, _ = net.hosts
    write = "import os; open(os.path.join(os.environ['MAPREDUCE_VNET_SCRATCH'], 'map-output'), 'w').write('x')"
    run_on(net, "h1", write)
    ls = "import os, sys; print(sorted(os.listdir(sys.argv[1])))"
    assert run_on(net, "h1", ls, str(h1.scratch)) == "['map-output']"  # and it outlives the process
    assert run_on(net, "h2", ls, str(h1.scratch)) == "[]"
    assert (h1.scratch / "map-output").exists()
    assert (
        run_on(net, "h2", "import os; print(os.environ['MAPREDUCE_VNET_HOST'], os.environ['MAPREDUCE_VNET_ADDRESS'])")
        == f"h2 {h2.address}"
    )


def test_down_removes_everything_and_kills_what_runs(tmp_path):
    net = VirtualNetwork(2).up()
    try:
        sleeper = subprocess.Popen(net.command("h1", ["sleep", "600"]))
        wait_for(lambda: sleeper.pid in net.pids("h1"), what="the sleeper to run on h1")
        assert len(leftovers(net.prefix)) == 5  # two namespaces, two bridge ports, the bridge
    finally:
        net.down()
    assert sleeper.wait(timeout=10) == -signal.SIGKILL
    assert leftovers(net.prefix) == []
    assert not net.scratch_root.exists()
    assert not (run_dir() / f"{net.prefix}.lock").exists()
    net.down()  # again: nothing to do, no error


def test_down_copes_with_a_half_removed_network():
    net = VirtualNetwork(3).up()
    subprocess.run(["ip", "netns", "delete", net.hosts[0].namespace], check=True)
    subprocess.run(["ip", "link", "delete", net.hosts[1].veth_bridge], check=True)
    net.down()
    assert leftovers(net.prefix) == []


def test_failed_up_leaves_nothing(monkeypatch):
    net = VirtualNetwork(3)
    real_run = vnet_module._run

    def failing(argv, **kwargs):
        if list(argv) == ["ip", "netns", "add", net.hosts[1].namespace]:
            raise VnetError("injected failure")
        return real_run(argv, **kwargs)

    monkeypatch.setattr(vnet_module, "_run", failing)
    with pytest.raises(VnetError, match="injected failure"):
        net.up()
    assert leftovers(net.prefix) == []
    assert not net.scratch_root.exists() and not (run_dir() / f"{net.prefix}.lock").exists()


def test_cleanup_stale_removes_a_crashed_owners_network(net):
    owner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import time; from mapreduce.tools.vnet import VirtualNetwork; "
            "n = VirtualNetwork(2).up(); print(n.prefix, n.scratch_root, flush=True); time.sleep(600)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        prefix, scratch = owner.stdout.readline().split()
        assert leftovers(prefix)
        assert cleanup_stale(re.escape(prefix)) == []  # its owner is alive
        assert leftovers(prefix)
    finally:
        owner.kill()
        owner.wait()
    assert cleanup_stale(re.escape(prefix)) == [prefix]
    assert leftovers(prefix) == [] and not Path(scratch).exists()
    assert net.prefix not in cleanup_stale()  # a live network is never stale
    assert leftovers(net.prefix)


# -- the `vnet` command, and launching workers onto its hosts ------------------------------------


def vnet(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mapreduce.tools.vnet", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def named(tmp_path):
    name = f"test-{secrets.token_hex(3)}"
    result = vnet("up", "--hosts", "2", "--name", name)
    assert result.returncode == 0, result.stderr
    yield name
    vnet("down", "--name", name)


def test_vnet_command(named, tmp_path):
    state = json.loads((run_dir() / f"{named}.json").read_text())
    prefix = state["prefix"]
    hidden = tmp_path / "hidden"
    hidden.mkdir()
    (hidden / "f").write_text("x")
    run = vnet(
        "exec",
        "--name",
        named,
        "--hide",
        str(hidden),
        "h1",
        "--",
        "sh",
        "-c",
        'echo "$MAPREDUCE_VNET_HOST"; ls -A "$1"',
        "sh",
        str(hidden),
    )
    assert (run.returncode, run.stdout) == (0, "h1\n"), run.stderr
    rsh = vnet("rsh", "--name", named, "h2", "echo", "$MAPREDUCE_VNET_ADDRESS;", "exit 3")
    assert rsh.returncode == 3 and rsh.stdout.strip().startswith(state["subnet"].rsplit(".", 1)[0])
    assert vnet("cut", "--name", named, "h2").returncode == 0
    assert "DOWN" in subprocess.run(["ip", "-br", "link", "show", f"{prefix}v2"], capture_output=True, text=True).stdout
    assert vnet("heal", "--name", named, "h2").returncode == 0
    assert prefix not in cleanup_stale()  # kept networks are not stale
    down = vnet("down", "--name", named)
    assert down.returncode == 0, down.stderr
    assert leftovers(prefix) == []


def test_vnet_command_errors(named):
    for args, message in [
        (["down", "--name", "no-such-net"], "no network named 'no-such-net'"),
        (["exec", "--name", named, "h9", "--", "true"], "no host 'h9'"),
        (["exec", "--name", named, "--hide", "/no/such/folder", "h1", "--", "true"], "cannot hide '/no/such/folder'"),
        (["up", "--name", named], "already up"),
    ]:
        result = vnet(*args)
        assert result.returncode == 2, result
        assert result.stderr.startswith("error: ") and message in result.stderr and "Traceback" not in result.stderr


def test_launch_workers_onto_hosts(named, tmp_path):
    worker = f"{shlex.quote(sys.executable)} -c " + shlex.quote(
        "import os, signal, sys; signal.signal(signal.SIGTERM, lambda *a: sys.exit(0)); "
        "print('on', os.environ['MAPREDUCE_VNET_HOST'], flush=True); signal.pause()"
    )
    hosts = tmp_path / "hosts"
    hosts.write_text("h1\nh2\n")
    logs = tmp_path / "logs"
    rsh = f"{shlex.quote(sys.executable)} -m mapreduce.tools.vnet rsh --name {named}"
    launch = [sys.executable, "-m", "mapreduce.tools.launch", "--logs", str(logs)]
    result = subprocess.run(
        [*launch, str(hosts), "tcp://10.213.0.254:5555", "--rsh", rsh, "--worker-command", worker, "--settle", "0.2"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    for host in ("h1", "h2"):
        log = logs / f"{host}-1.log"
        wait_for(lambda log=log, host=host: f"on {host}" in log.read_text(), what=f"the worker on {host}")
    stop = subprocess.run([*launch, "--stop"], capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0, stop.stderr
