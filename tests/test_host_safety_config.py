"""Config fields that must never reach the host (issue 8, items 4, 8 and 9).

- linux.sysctl: only keys of a namespace the container owns are written (runc's validator);
  every create that could write a sysctl runs, as root, inside a throw-away
  ``unshare --ipc --net --uts`` and with the value the key already has, so a regression can
  neither change this machine's namespaces nor its global settings. Rootless runtimes cannot
  write the host's sysctls at all (the kernel refuses): there the check is only the error.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly


def in_throwaway_namespaces(runner: Runner) -> Runner:
    """The runner, with its runtime started in a fresh ``unshare --ipc --net --uts`` when root.

    The wrapper keeps the runtime's name (its default state dir and message checks depend on it).
    """
    if runner.rootless:
        return runner
    wrapper_dir = runner.workdir / "throwaway-ns"
    wrapper_dir.mkdir(exist_ok=True)
    wrapper = wrapper_dir / os.path.basename(runner.runtime.path)
    wrapper.write_text(f'#!/bin/sh\nexec unshare --ipc --net --uts -- {runner.runtime.path} "$@"\n')
    wrapper.chmod(0o755)
    runtime = RuntimeInfo(path=str(wrapper), name=runner.runtime.name, is_pyouki=runner.runtime.is_pyouki)
    return dataclasses.replace(runner, runtime=runtime)


def current_sysctl(key: str) -> str:
    """The value key has now (as the container would write it: one line, no newline)."""
    return Path("/proc/sys", key.replace(".", "/")).read_text().rstrip("\n")


def drop_namespace(bundle: Bundle, kind: str) -> None:
    bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != kind]
    if kind == "uts":
        bundle.config.pop("hostname", None)
        bundle.config.pop("domainname", None)


REFUSED = [
    # (namespace removed from the config, key, what the error says)
    (None, "kernel.core_pattern", "not in a separate kernel namespace"),
    (None, "kernel/core_pattern", "not in a separate kernel namespace"),
    (None, "vm.overcommit_memory", "not in a separate kernel namespace"),
    (None, "kernel.hostname", "conflicts with the hostname field"),
    ("ipc", "kernel.shmmax", "needs the container's own ipc namespace"),
    ("ipc", "kernel.sem", "needs the container's own ipc namespace"),
    ("ipc", "fs.mqueue.queues_max", "needs the container's own ipc namespace"),
    ("network", "net.ipv4.ip_forward", "needs the container's own network namespace"),
    ("network", "net/ipv4/ip_forward", "needs the container's own network namespace"),
    ("uts", "kernel.domainname", "needs the container's own uts namespace"),
]


@pytest.mark.parametrize(("dropped", "key", "why"), REFUSED)
def test_sysctl_outside_own_namespace_refused(runner: Runner, bundle: Bundle, dropped: str | None, key: str,
                                              why: str) -> None:
    """runc 1.1.5 refuses these too; pyouki wrote them to the host (kernel.core_pattern: root
    code execution on the next crash)."""
    runner = in_throwaway_namespaces(runner)
    if dropped:
        drop_namespace(bundle, dropped)
    bundle.linux["sysctl"] = {key: current_sysctl(key.replace("/", "."))}
    bundle.set_args("true")
    cid = runner.new_id("sysctl")
    res = runner.create(cid, bundle)
    assert_failed_cleanly(runner.runtime, res, f"linux.sysctl.{key}", why)
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


def test_sysctl_in_joined_host_network_namespace_refused(runner: Runner, bundle: Bundle) -> None:
    """/proc/self/ns/net is the runtime's own network namespace: joining it is the host's."""
    runner = in_throwaway_namespaces(runner)
    if runner.rootless:
        drop_namespace(bundle, "network")
    bundle.add_namespace("network", "/proc/self/ns/net")
    bundle.linux["sysctl"] = {"net.ipv4.ip_forward": current_sysctl("net.ipv4.ip_forward")}
    bundle.set_args("true")
    res = runner.create(runner.new_id("sysctl"), bundle)
    assert_failed_cleanly(runner.runtime, res, "linux.sysctl.net.ipv4.ip_forward")
    if runner.runtime.is_pyouki:
        assert "network namespace joined at /proc/self/ns/net is the host's" in res.stderr
    assert runner.state_entries() == []


def test_sysctl_in_own_namespaces_applied(runner: Runner, bundle: Bundle) -> None:
    """Namespaced keys, dotted and slash form, land in the container's own namespaces."""
    runner = in_throwaway_namespaces(runner)
    if "network" not in bundle.namespaces():
        bundle.add_namespace("network")
    bundle.linux["sysctl"] = {"fs.mqueue.queues_max": "77", "net/ipv4/ip_forward": "1", "kernel.msgmax": "4321"}
    if not runner.rootless:
        # the uts keys' files belong to the initial user namespace's root, whatever the namespace
        bundle.linux["sysctl"]["kernel.domainname"] = "pyt.example"
    bundle.sh("cat /proc/sys/fs/mqueue/queues_max /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/msgmax "
              "/proc/sys/kernel/domainname")
    out = runner.run(runner.new_id("sysctl"), bundle).ok().stdout
    assert out.split()[:3] == ["77", "1", "4321"]
    if not runner.rootless:
        assert out.split()[3] == "pyt.example"


# -- the device cgroup -------------------------------------------------------------------------
# Root only: a rootless container has no device cgroup (its user namespace already refuses
# device nodes). The nodes are made in the container's own /dev tmpfs, never the host's.

KMSG = {"path": "/dev/kmsg", "type": "c", "major": 1, "minor": 11, "fileMode": 0o644, "uid": 0, "gid": 0}


@pytest.mark.parametrize("mode", ["root"])
def test_linux_devices_entry_does_not_override_a_deny(runner: Runner, bundle: Bundle) -> None:
    """The node is created, but resources.devices alone decides: a deny keeps it unopenable."""
    bundle.linux["devices"] = [KMSG]
    bundle.linux["resources"] = {"devices": [{"allow": False, "access": "rwm"},
                                             {"allow": False, "type": "c", "major": 1, "minor": 11, "access": "rwm"}]}
    # opened for writing and closed at once: nothing is logged, and unlike reading (CAP_SYSLOG)
    # only the device cgroup can refuse it
    bundle.sh("ls -l /dev/kmsg; (exec 3>/dev/kmsg) 2>/dev/null && echo OPENED || echo DENIED")
    out = runner.run(runner.new_id("dev"), bundle).ok().stdout
    assert out.split()[0].startswith("c"), out  # the node exists
    assert out.split()[-1] == "DENIED", out


@pytest.mark.parametrize("mode", ["root"])
def test_linux_devices_entry_usable_when_allowed(runner: Runner, bundle: Bundle) -> None:
    """An allow rule in resources.devices (what engines write for --device) opens it."""
    bundle.linux["devices"] = [dict(KMSG, path="/dev/mynull", major=1, minor=3)]
    bundle.linux["resources"] = {"devices": [{"allow": False, "access": "rwm"},
                                             {"allow": True, "type": "c", "major": 1, "minor": 3, "access": "rw"}]}
    bundle.sh("echo x > /dev/mynull && echo WROTE")
    assert runner.run(runner.new_id("dev"), bundle).ok().stdout.split() == ["WROTE"]


@pytest.mark.parametrize("mode", ["root"])
def test_mknod_of_any_node_allowed_opening_denied(runner: Runner, bundle: Bundle) -> None:
    """runc's defaults allow mknod of any node (c *:* m, b *:* m) with CAP_MKNOD; opening an
    unlisted one stays denied."""
    caps = bundle.process["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = sorted(set(caps.get(key) or []) | {"CAP_MKNOD"})
    bundle.sh("mknod /dev/k c 1 11 && echo MADE-C; mknod /dev/loopx b 7 200 && echo MADE-B; "
              "(exec 3>/dev/k) 2>/dev/null && echo OPENED || echo DENIED")
    out = runner.run(runner.new_id("dev"), bundle).ok().stdout
    assert out.split() == ["MADE-C", "MADE-B", "DENIED"]


# -- the state root and the pid file -----------------------------------------------------------


def test_existing_root_keeps_its_mode(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    """`--root /tmp` used to chmod /tmp to 0700; a directory pyouki did not create keeps its mode."""
    shared = workdir / "shared-root"
    shared.mkdir()
    if runner.owner:
        os.chown(shared, *runner.owner)
    os.chmod(shared, 0o1777)
    bundle.set_args("true")
    cid = runner.new_id("root")
    runner.create(cid, bundle, root=str(shared)).ok()
    assert os.stat(shared).st_mode & 0o7777 == 0o1777
    assert os.stat(shared / cid).st_mode & 0o022 == 0  # the container's own directory stays private
    runner.delete(cid, "--force", root=str(shared)).ok()
    assert os.stat(shared).st_mode & 0o7777 == 0o1777


def test_pid_file_not_written_through_planted_symlinks(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    """The temp name was `.<name>.<pid of the runtime>`, opened without O_EXCL|O_NOFOLLOW: with
    symlinks planted for the next pids, the runtime wrote through one into another file."""
    piddir = workdir / "piddir"
    piddir.mkdir()
    victim = workdir / "victim"
    victim.write_text("precious\n")
    if runner.owner:
        os.chown(piddir, *runner.owner)
        os.chown(victim, *runner.owner)
    last = int(Path("/proc/sys/kernel/ns_last_pid").read_text())
    for pid in range(last + 1, last + 3000):
        os.symlink(victim, piddir / f".pid.{pid}")
    bundle.set_args("sleep", "100")
    cid = runner.new_id("pidfile")
    runner.create(cid, bundle, "--pid-file", str(piddir / "pid")).ok()
    assert victim.read_text() == "precious\n"
    assert not (piddir / "pid").is_symlink()
    assert int((piddir / "pid").read_text()) == int(runner.state(cid)["pid"])
    assert sorted(p.name for p in piddir.iterdir() if not p.is_symlink()) == ["pid"]  # no temp file left


# -- a deep cgroup tree made by the container --------------------------------------------------

DEPTH = 1100  # beyond Python's default recursion limit (1000)


@pytest.mark.parametrize("mode", ["root"])
def test_deep_cgroup_tree_made_by_the_container_is_removed(runner: Runner, bundle: Bundle,
                                                           runtime: RuntimeInfo) -> None:
    """The container mounts its own freezer hierarchy (cgroup namespace: rooted at its own
    cgroup) and nests DEPTH cgroups with a process in the deepest; ps, delete --force and the
    removal walked the tree recursively (RecursionError)."""
    if not Path("/sys/fs/cgroup/freezer").is_dir():
        pytest.skip("needs the cgroup v1 freezer hierarchy")
    if "cgroup" not in bundle.namespaces():
        bundle.add_namespace("cgroup")
    caps = bundle.process["capabilities"]
    for key in ("bounding", "effective", "permitted"):
        caps[key] = sorted(set(caps.get(key) or []) | {"CAP_SYS_ADMIN"})
    # refuse to go on unless the mount is rooted at the container's own cgroup, never the host's
    bundle.sh(f"""set -e
grep -q ':freezer:/$' /proc/self/cgroup
mkdir -p /cg && mount -t cgroup -o freezer cgroup /cg
cd /cg
i=0; while [ $i -lt {DEPTH} ]; do mkdir d; cd d; i=$((i+1)); done
sleep 1000 &
echo $! > cgroup.procs
touch /tmp/ready
wait""")
    cid = runner.new_id("deep")
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    ready = bundle.rootfs / "tmp" / "ready"
    deadline = time.monotonic() + 60
    while not ready.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready.exists(), "the container did not build its cgroup tree"
    cgdir = None
    if runtime.is_pyouki:
        from pyouki.state import Container

        container = Container(str(runner.state_root), cid)
        container.load()
        cgdir = Path(container.record["cgroup"]["paths"]["freezer"])
        assert (cgdir / "/".join(["d"] * DEPTH)).is_dir()
    res = runner.cmd("ps", "--format", "json", cid).ok()
    assert len(json.loads(res.stdout)) == 2  # the shell and the sleep at the bottom of the tree
    res = runner.delete(cid, "--force")
    assert res.returncode == 0, res
    assert "Recursion" not in res.stderr
    assert runner.leftover_pids() == []
    if cgdir is not None:
        assert not cgdir.exists()
