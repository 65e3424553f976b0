"""linux.netDevices: host devices moved into the container's network namespace (config-linux.md).

The "host" is a throw-away network namespace made by each test (the runtime runs in it under
nsenter), holding veth and bridge devices the test creates (this kernel has no dummy driver),
so nothing here touches this machine's own interfaces. Each device is observed from inside the
container with busybox's `ip`, and on the host side afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator

import pytest
from harness import Bundle, Runner, RuntimeInfo

root_only = pytest.mark.parametrize("mode", ["root"])


class NetNS:
    """A named network namespace (`ip netns add`) that is deleted afterwards."""

    def __init__(self) -> None:
        self.name = f"pyouki-t-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.path = f"/run/netns/{self.name}"

    def ip(self, *args: str) -> str:
        """Run `ip ARGS` in the namespace; its output."""
        p = subprocess.run(["ip", "-n", self.name, *args], capture_output=True, text=True, timeout=30)
        assert p.returncode == 0, p
        return p.stdout

    def links(self) -> dict[str, dict]:
        """name -> `ip -j link` entry."""
        return {link["ifname"]: link for link in json.loads(self.ip("-j", "link", "show"))}

    def addresses(self, dev: str) -> set[str]:
        """The addresses of dev as ADDR/PREFIX."""
        out = json.loads(self.ip("-j", "addr", "show", "dev", dev))
        return {f"{a['local']}/{a['prefixlen']}" for entry in out for a in entry.get("addr_info", [])
                if a.get("scope") == "global"}

    def delete(self) -> None:
        subprocess.run(["ip", "netns", "del", self.name], check=False)


@pytest.fixture
def host() -> Iterator[NetNS]:
    """The runtime's "host" network namespace: veth v0 (peer v1, addresses, up), veth w0 (peer w1,
    an address, down) and bridge b0 (the kernel does not move bridges)."""
    ns = NetNS()
    try:
        ns.ip("link", "add", "v0", "type", "veth", "peer", "name", "v1")
        ns.ip("addr", "add", "10.9.8.7/24", "dev", "v0")
        ns.ip("addr", "add", "fd00:9::7/64", "dev", "v0")
        ns.ip("link", "set", "v0", "up")
        ns.ip("link", "add", "w0", "type", "veth", "peer", "name", "w1")
        ns.ip("addr", "add", "10.6.6.6/16", "dev", "w0")
        ns.ip("link", "add", "b0", "type", "bridge")
        yield ns
    finally:
        ns.delete()


def in_ns(runner: Runner, ns: NetNS, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the runtime inside ns (its "host" network namespace); container output goes to a file."""
    out = runner.workdir / f"out-{uuid.uuid4().hex[:8]}"
    err = runner.workdir / f"err-{uuid.uuid4().hex[:8]}"
    with open(out, "w") as f, open(err, "w") as e:  # files: a created container keeps its stdio open
        p = subprocess.run(["nsenter", f"--net={ns.path}", "--", *runner.argv(args)], stdout=f, stderr=e,
                           stdin=subprocess.DEVNULL, timeout=timeout, env=runner.env(), cwd=str(runner.workdir))
    return subprocess.CompletedProcess(p.args, p.returncode, out.read_text(), err.read_text())


def net_bundle(make_bundle: Callable[..., Bundle], devices: dict, script: str = "true") -> Bundle:
    b = make_bundle()
    if not any(ns["type"] == "network" for ns in b.linux.get("namespaces", [])):
        b.add_namespace("network")
    b.linux["netDevices"] = devices
    b.sh(script)
    return b


@root_only
def test_devices_are_moved_renamed_with_their_addresses_and_up(runner: Runner, host: NetNS,
                                                               make_bundle: Callable[..., Bundle]) -> None:
    b = net_bundle(make_bundle, {"v0": {"name": "eth7"}, "w0": {}},
                   "ip addr show eth7; echo ===; ip addr show w0; echo ===; ip link show v0 2>&1 || true")
    p = in_ns(runner, host, "run", "--bundle", str(b.path), runner.new_id())
    assert p.returncode == 0, p
    eth7, w0, v0 = p.stdout.split("===\n")
    assert ": eth7@" in eth7, eth7
    assert ",UP" in eth7, eth7  # the spec: set up after the move
    assert "inet 10.9.8.7/24" in eth7 and "inet6 fd00:9::7/64" in eth7, eth7
    assert ": w0@" in w0 and "inet 10.6.6.6/16" in w0 and ",UP" in w0, w0  # it was down on the host
    assert "eth7" not in v0 and "v0:" not in v0, v0  # renamed, not copied
    # the container's namespace is gone: the kernel destroyed the virtual devices (the veth with
    # its peer), which the runtime must not move out beforehand (config-linux.md)
    # (the kernel's netns cleanup runs in a workqueue after the last process is gone: wait for it)
    deadline = time.monotonic() + 10
    while {"v0", "v1", "w0", "w1", "eth7"} & set(links := host.links()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not {"v0", "v1", "w0", "w1", "eth7"} & set(links), links


@root_only
def test_sysctls_of_a_moved_device_apply(runner: Runner, host: NetNS, make_bundle: Callable[..., Bundle]) -> None:
    """init waits for the move before writing linux.sysctl: the device's own keys exist by then."""
    b = net_bundle(make_bundle, {"v0": {"name": "eth7"}}, "cat /proc/sys/net/ipv4/conf/eth7/forwarding")
    b.linux["sysctl"] = {"net.ipv4.conf.eth7.forwarding": "1"}
    b.write()
    p = in_ns(runner, host, "run", "--bundle", str(b.path), runner.new_id())
    assert p.returncode == 0 and p.stdout == "1\n", p


@root_only
def test_a_template_name_lets_the_kernel_choose(runner: Runner, host: NetNS,
                                                make_bundle: Callable[..., Bundle]) -> None:
    b = net_bundle(make_bundle, {"v0": {"name": "net%d"}}, "ip -o addr show | grep 10.9.8.7")
    p = in_ns(runner, host, "run", "--bundle", str(b.path), runner.new_id())
    assert p.returncode == 0, p
    assert " net0 " in p.stdout and "10.9.8.7/24" in p.stdout, p.stdout


@root_only
def test_a_joined_namespace_keeps_the_devices_after_delete(runner: Runner, host: NetNS,
                                                           make_bundle: Callable[..., Bundle]) -> None:
    target = NetNS()
    try:
        b = net_bundle(make_bundle, {"v0": {"name": "ctr0"}}, "sleep 1000")
        for ns in b.linux["namespaces"]:
            if ns["type"] == "network":
                ns["path"] = target.path
        b.write()
        cid = runner.new_id()
        p = in_ns(runner, host, "create", "--bundle", str(b.path), cid)
        assert p.returncode == 0, p
        p = in_ns(runner, host, "exec", cid, "ip", "-o", "addr", "show", "ctr0")
        assert p.returncode == 0 and "10.9.8.7/24" in p.stdout, p
        assert "ctr0" in target.links() and "v0" not in host.links()
        assert in_ns(runner, host, "delete", "-f", cid).returncode == 0
        # the namespace belongs to whoever made it: the device stays there, as the spec says
        assert "ctr0" in target.links() and "v0" not in host.links()
        assert target.addresses("ctr0") == {"10.9.8.7/24", "fd00:9::7/64"}
    finally:
        target.delete()


@root_only
def test_a_failed_create_puts_the_devices_back(runner: Runner, host: NetNS,
                                               make_bundle: Callable[..., Bundle]) -> None:
    b = net_bundle(make_bundle, {"v0": {"name": "eth7"}, "w0": {"name": "eth8"}})
    # a createRuntime hook runs after the move (init waits for it): its failure fails create
    b.config["hooks"] = {"createRuntime": [{"path": "/bin/false"}]}
    b.write()
    p = in_ns(runner, host, "create", "--bundle", str(b.path), runner.new_id())
    assert p.returncode != 0, p
    links = host.links()
    assert {"v0", "v1", "w0", "w1"} <= set(links) and not {"eth7", "eth8"} & set(links), links
    assert host.addresses("v0") == {"10.9.8.7/24", "fd00:9::7/64"}
    assert host.addresses("w0") == {"10.6.6.6/16"}
    assert "UP" in links["v0"]["flags"] and "UP" not in links["w0"]["flags"], links  # as they were
    assert runner.state_entries() == [] and runner.leftover_pids() == []


@pytest.mark.parametrize("devices, message", [
    ({"nope0": {}}, "pyouki: linux.netDevices.nope0: no such network device in the runtime's network namespace"),
    ({"v0": {"name": "x0"}, "w0": {"name": "x0"}}, "pyouki: linux.netDevices.w0: 'x0' is also the container "
                                                   "name of linux.netDevices.v0"),
    # v0 moves first, then b0 cannot: v0 comes back
    ({"v0": {}, "b0": {}}, "pyouki: linux.netDevices.b0: failed to move it into the container: invalid argument "
                           "(the kernel keeps some kinds of device, e.g. bridges and lo, in their namespace)"),
    ({"v0": {"name": "lo"}}, "pyouki: linux.netDevices.v0: a device named 'lo' already exists in the "
                             "container's network namespace"),
    ({"v0": {"name": "a/b"}}, "pyouki: linux.netDevices.v0.name: 'a/b' is not a valid interface name"),
    ({"v0": {"name": "x" * 16}}, "pyouki: linux.netDevices.v0.name: 'xxxxxxxxxxxxxxxx' is longer than 15 bytes"),
])
@root_only
def test_refusals_name_the_device(runner: Runner, host: NetNS, make_bundle: Callable[..., Bundle],
                                  devices: dict, message: str) -> None:
    b = net_bundle(make_bundle, devices)
    p = in_ns(runner, host, "create", "--bundle", str(b.path), runner.new_id())
    assert p.returncode != 0 and p.stderr.strip() == message, p
    assert {"v0", "w0", "b0"} <= set(host.links())  # nothing moved, nothing lost
    assert host.addresses("v0") == {"10.9.8.7/24", "fd00:9::7/64"}
    assert runner.state_entries() == [] and runner.leftover_pids() == []


@root_only
def test_a_container_without_its_own_network_namespace_is_refused(runner: Runner, host: NetNS,
                                                                  make_bundle: Callable[..., Bundle]) -> None:
    b = net_bundle(make_bundle, {"v0": {}})
    b.linux["namespaces"] = [ns for ns in b.linux["namespaces"] if ns["type"] != "network"]
    b.write()
    p = in_ns(runner, host, "create", "--bundle", str(b.path), runner.new_id())
    assert p.returncode != 0, p
    assert p.stderr.startswith("pyouki: linux.netDevices: the container has no network namespace of its own"), p
    assert "v0" in host.links()


@pytest.mark.parametrize("mode", ["rootless"])
def test_rootless_is_refused(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    b = net_bundle(make_bundle, {"lo": {}})
    p = runner.cmd("create", "--bundle", str(b.path), runner.new_id())
    assert p.returncode != 0
    assert p.stderr.strip() == ("pyouki: linux.netDevices: moving network devices needs root (CAP_NET_ADMIN in "
                                "the host's network namespace): a rootless container cannot have them"), p


@root_only
def test_pyroute2_is_imported_only_for_net_devices(runtime: RuntimeInfo, runner: Runner, host: NetNS,
                                                   make_bundle: Callable[..., Bundle]) -> None:
    interpreter = open(runtime.path).readline()[2:].split()

    def imported(b: Bundle) -> set[str]:
        argv = ["nsenter", f"--net={host.path}", "--", *interpreter, "-X", "importtime", runtime.path,
                "--root", str(runner.state_root), "run", "--bundle", str(b.path), runner.new_id()]
        p = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=runner.env(),
                           cwd=str(runner.workdir))
        assert p.returncode == 0, p
        return {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines() if line.startswith("import time:")}

    plain = make_bundle(name="plain")
    assert not any(m.startswith("pyroute2") for m in imported(plain))
    assert "pyroute2" in imported(net_bundle(make_bundle, {"w0": {}}))  # the check sees it when it happens


@root_only
def test_features_lists_net_devices(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)
    assert doc["linux"]["netDevices"] == {"enabled": True}
