"""Namespaces linux.namespaces does not list are the runtime's (runtime-spec config-linux.md: the
container MUST inherit them). Without a mount namespace the rootfs is a chroot and nothing is
mounted: the fields that would need mounts are refused, naming them, as runc refuses masked paths."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly


def _host_mounts(runner: Runner) -> list[tuple[str, ...]]:
    """The host's mounts a container without a mount namespace could change: / (with its propagation)
    and those under the test's directory (other tests' engines mount elsewhere meanwhile)."""
    out = []
    under = str(runner.workdir).rstrip("/") + "/"
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if fields[4] == "/" or fields[4].startswith(under):
            out.append((fields[4], fields[5], " ".join(fields[6:]), right.split()[0]))
    return sorted(out)


def _without_mount_namespace(bundle: Bundle) -> None:
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "mount"]
    bundle.config["mounts"] = []
    for key in ("maskedPaths", "readonlyPaths"):
        bundle.linux.pop(key, None)
    bundle.add_file("/marker", "in the rootfs\n")


def test_no_mount_namespace_shares_the_hosts_and_chroots(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                         xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("1.1.5 chroots too but then needs /proc in the rootfs (closing fds); rootless, it makes / rslave: EPERM")
    _without_mount_namespace(bundle)
    bundle.sh("cat /marker; sleep 1000")
    before = _host_mounts(runner)
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    pid = runner.state(cid)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt"), "the host's mount namespace"
    assert os.path.realpath(f"/proc/{pid}/root") == str(bundle.rootfs), "the rootfs is its root"
    runner.start(cid).ok()
    r = runner.cmd("exec", cid, "cat", "/marker").ok()
    assert r.stdout == "in the rootfs\n", "exec enters the same root"
    runner.delete(cid, "--force").ok()
    if runtime.is_pyouki:
        assert _host_mounts(runner) == before, "the host's mount table is untouched"


@pytest.mark.parametrize("field", ["mounts", "linux.maskedPaths", "linux.readonlyPaths", "root.readonly",
                                   "linux.rootfsPropagation", "linux.devices"])
def test_no_mount_namespace_refuses_what_needs_mounts(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                      field: str) -> None:
    _without_mount_namespace(bundle)
    if field == "mounts":
        bundle.add_mount("/tmp", "tmpfs", "tmpfs", ["nosuid"])
    elif field == "root.readonly":
        bundle.config["root"]["readonly"] = True
    elif field == "linux.rootfsPropagation":
        bundle.linux["rootfsPropagation"] = "rprivate"
    elif field == "linux.devices":
        bundle.linux["devices"] = [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]
    else:
        bundle.linux[field.split(".")[1]] = ["/proc/kcore"]
    bundle.write()
    before = _host_mounts(runner)
    cid = runner.new_id()
    r = runner.create(cid, bundle)
    if not runtime.is_pyouki and field in ("mounts", "root.readonly", "linux.rootfsPropagation", "linux.devices"):
        runner.delete(cid, "--force")
        pytest.xfail("runc 1.1.5 ignores this without a mount namespace")
    assert_failed_cleanly(runtime, r, field, "mount namespace")
    assert cid not in runner.list_ids()
    assert _host_mounts(runner) == before


def test_no_uts_namespace_is_the_hosts(runner: Runner, bundle: Bundle) -> None:
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "uts"]
    bundle.config.pop("hostname", None)
    bundle.sh("hostname")
    r = runner.run(runner.new_id(), bundle)
    assert r.ok().stdout.strip() == os.uname().nodename
