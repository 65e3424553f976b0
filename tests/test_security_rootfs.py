"""Security of the filesystem set-up: a hostile image can never steer it to the host (issue 8,
items 3, 5 and 7).

Every container that attacks the host's /dev runs in a private mount namespace over a throw-away
/dev (a tmpfs holding copies of the usual nodes, a dummy ptmx and a canary), so a regression can
only damage that tmpfs; the test then asserts the tmpfs is exactly as it was.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Result, Runner, RuntimeInfo, assert_failed_cleanly

from pyouki.cgroups import detect_mode

EVIL_DEV = "../../../../../../../../../../usr/lib/../../dev"

# runs "$@" (the runtime) with a throw-away /dev, then records what that /dev holds
PRIVATE_DEV = r"""
out=$1; shift
mount -t tmpfs -o mode=755 tmpfs /dev || exit 99
for n in "null 1 3" "zero 1 5" "full 1 7" "random 1 8" "urandom 1 9" "tty 5 0"; do
    set -- $n "$@"; mknod -m 666 "/dev/$1" c "$2" "$3"; shift 3
done
printf dummy > /dev/ptmx; printf canary > /dev/canary; mkdir /dev/pts /dev/shm /dev/mqueue
"$@"; rc=$?
for f in /dev/*; do stat -c '%n|%F' "$f"; done > "$out"
printf 'content|%s|%s\n' "$(cat /dev/ptmx)" "$(cat /dev/canary)" >> "$out"
exit $rc
"""
DEV_BEFORE = {
    "/dev/canary": "regular file", "/dev/full": "character special file", "/dev/mqueue": "directory",
    "/dev/null": "character special file", "/dev/ptmx": "regular file", "/dev/pts": "directory",
    "/dev/random": "character special file", "/dev/shm": "directory", "/dev/tty": "character special file",
    "/dev/urandom": "character special file", "/dev/zero": "character special file",
}


def run_over_private_dev(runner: Runner, *args: str) -> tuple[Result, dict[str, str]]:
    """Run the runtime (as the runner's user) in a private mount namespace over a throw-away /dev;
    return its result and {path: file type} of that /dev afterwards (plus "content")."""
    out = runner.workdir / f"dev-after-{os.urandom(4).hex()}"
    inner = runner.argv(args)
    if runner.rootless:
        inner = ["setpriv", f"--reuid={runner.user.uid}", f"--regid={runner.user.gid}", "--clear-groups",
                 "--", *inner]
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", PRIVATE_DEV, "sh", str(out), *inner]
    proc = subprocess.run(argv, env=runner.env(), cwd=runner.workdir, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 99, f"could not set up the throw-away /dev: {proc.stderr}"
    after = dict(line.split("|", 1) for line in out.read_text().splitlines())
    return Result(argv, proc.returncode, proc.stdout, proc.stderr), after


def plant_symlink(bundle: Bundle, rel: str, target: str) -> None:
    """Replace rootfs/rel with a symlink to target (owned like the rest of the bundle)."""
    path = bundle.rootfs / rel
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        import shutil

        shutil.rmtree(path)
    os.symlink(target, path)
    if bundle.owner is not None:
        os.lchown(path, *bundle.owner)


def assert_dev_untouched(after: dict[str, str]) -> None:
    content = after.pop("content")
    assert after == DEV_BEFORE, f"the host's /dev changed: {after}"
    assert content == "dummy|canary", content


# --------------------------------------------------------------------------------------------
# item 3: a planted /dev symlink
# --------------------------------------------------------------------------------------------


def test_planted_dev_symlink_cannot_unlink_host_ptmx(runner: Runner, bundle: Bundle,
                                                     xfail_runc: Callable[[str], None]) -> None:
    """usr -> /opt/a/b and dev -> ../../../usr/lib/../../dev: resolved inside the rootfs, /dev is
    /opt/a/dev; resolved by the kernel from the host, it is the host's /dev. The ptmx fix-up
    unlinked the host's /dev/ptmx. runc 1.1.5 is also vulnerable: it replaces the host's
    /dev/ptmx with a symlink and adds its fd/stdin/stdout/stderr links to the host's /dev."""
    xfail_runc("1.1.5 replaces the host's /dev/ptmx with a symlink")
    plant_symlink(bundle, "usr", "/opt/a/b")
    plant_symlink(bundle, "dev", EVIL_DEV)
    bundle.sh("[ -L /dev/ptmx ] && [ -c /dev/null ] && echo inside-ok")
    result, after = run_over_private_dev(runner, "run", "--bundle", str(bundle.path), runner.new_id())
    assert_dev_untouched(after)
    result.ok()
    assert "inside-ok" in result.stdout
    # the container's /dev went where the rootfs says, not to the host
    assert (bundle.rootfs / "opt/a/dev").is_dir()


def test_planted_dev_symlink_devices_stay_in_rootfs(runner: Runner, bundle: Bundle,
                                                    xfail_runc: Callable[[str], None]) -> None:
    """linux.devices nodes (mknod, chown, unlink of what was there) through the same planted /dev
    are made inside the rootfs. runc 1.1.5 is vulnerable here too (host /dev/ptmx replaced)."""
    xfail_runc("1.1.5 replaces the host's /dev/ptmx with a symlink")
    if runner.rootless:
        pytest.skip("rootless binds the host's nodes instead of making them")
    plant_symlink(bundle, "usr", "/opt/a/b")
    plant_symlink(bundle, "dev", EVIL_DEV)
    bundle.linux["devices"] = [
        {"path": "/dev/canary", "type": "c", "major": 1, "minor": 3, "fileMode": 0o600, "uid": 0, "gid": 0},
        {"path": "/dev/ptmx/", "type": "c", "major": 1, "minor": 3},
    ]
    bundle.sh("[ -c /dev/canary ] && echo inside-ok")
    result, after = run_over_private_dev(runner, "run", "--bundle", str(bundle.path), runner.new_id())
    assert_dev_untouched(after)
    result.ok()
    assert "inside-ok" in result.stdout


# --------------------------------------------------------------------------------------------
# item 5: cgroup namespace on cgroup v1
# --------------------------------------------------------------------------------------------


def test_cgroup_namespace_shows_only_own_cgroup(runner: Runner, bundle: Bundle) -> None:
    """With a cgroup namespace each hierarchy under /sys/fs/cgroup is rooted at the container's
    own cgroup (a fresh cgroup mount, as runc), read-only: not the whole host tree, whose root
    holds release_agent and every other container's group. Same mounts as runc 1.1.5."""
    if detect_mode() == "unified":
        pytest.skip("host has no cgroup v1 hierarchies")
    bundle.add_namespace("cgroup")
    limit = 64 << 20
    if not runner.rootless:
        bundle.linux.setdefault("resources", {})["memory"] = {"limit": limit}
    bundle.sh("grep ' /sys/fs/cgroup' /proc/self/mountinfo; "
              "echo LIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); "
              "[ -e /sys/fs/cgroup/memory/release_agent ] && echo RELEASE_AGENT; true")
    r = runner.run(runner.new_id(), bundle).ok()
    lines = [ln.split() for ln in r.stdout.splitlines() if " /sys/fs/cgroup" in ln]
    # the visible ones: children of the topmost /sys/fs/cgroup (rootless, the host's rbind /sys
    # brings the host's cgroup mounts along, covered by it)
    top = [m for m in lines if m[4] == "/sys/fs/cgroup"][-1]
    mounts = [m for m in lines if m[1] == top[0]]
    assert {m[4] for m in mounts} >= {"/sys/fs/cgroup/memory", "/sys/fs/cgroup/cpu", "/sys/fs/cgroup/pids"}, r.stdout
    for m in mounts:
        assert m[3] == "/", f"{m[4]} shows a cgroup outside the container's own: {' '.join(m)}"
        assert m[5].split(",")[0] == "ro", f"{m[4]} is writable: {' '.join(m)}"
    if not runner.rootless:  # rootless v1 has no cgroup of its own here: its namespace root is the host's
        assert f"LIMIT {limit}" in r.stdout, r.stdout
        assert "RELEASE_AGENT" not in r.stdout


def test_cgroup_namespace_not_owned_binds_only_own_cgroup(runner: Runner, bundle: Bundle,
                                                           xfail_runc: Callable[[str], None]) -> None:
    """Where the kernel refuses a fresh cgroup mount (a user namespace that does not own the
    joined cgroup namespace), the container's own cgroup directory is bound, never the whole
    hierarchy. runc 1.1.5 fails to start this config (EPERM on the cgroup mount)."""
    if detect_mode() == "unified":
        pytest.skip("host has no cgroup v1 hierarchies")
    if runner.rootless:
        pytest.skip("an unprivileged user cannot join the host's cgroup namespace")
    xfail_runc("1.1.5 fails: mount cgroup: operation not permitted")
    holder = subprocess.Popen(["sleep", "60"])
    try:
        u = runner.user
        bundle.add_namespace("user")
        bundle.add_namespace("cgroup", f"/proc/{holder.pid}/ns/cgroup")
        bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": u.subuid[0], "size": u.subuid[1]}]
        bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": u.subgid[0], "size": u.subgid[1]}]
        bundle.linux.setdefault("resources", {})["memory"] = {"limit": 64 << 20}
        bundle.sh("grep ' /sys/fs/cgroup/' /proc/self/mountinfo; "
                  "echo LIMIT $(cat /sys/fs/cgroup/memory/memory.limit_in_bytes)")
        cid = runner.new_id()
        r = runner.run(cid, bundle).ok()
    finally:
        holder.kill()
        holder.wait()
    mounts = [ln.split() for ln in r.stdout.splitlines() if " /sys/fs/cgroup/" in ln]
    assert mounts, r.stdout
    for m in mounts:
        assert m[3] != "/" and m[3].rstrip("/").endswith(cid), f"{m[4]} is not the container's cgroup: {' '.join(m)}"
        assert m[5].split(",")[0] == "ro", " ".join(m)
    assert f"LIMIT {64 << 20}" in r.stdout, r.stdout


# --------------------------------------------------------------------------------------------
# item 7: proc and sysfs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["proc", "sys"])
def test_proc_and_sysfs_refuse_a_symlinked_destination(runner: Runner, runtime: RuntimeInfo, bundle: Bundle,
                                                       where: str) -> None:
    """An image whose /proc (or /sys) is a symlink is refused, as runc does ("must be mounted on
    ordinary directory"), instead of mounting procfs wherever the link points."""
    bundle.add_dir("/mnt/elsewhere")
    plant_symlink(bundle, where, "/mnt/elsewhere")
    index, mount = next((i, m) for i, m in enumerate(bundle.config["mounts"]) if m["destination"] == f"/{where}")
    if mount["type"] not in ("proc", "sysfs"):
        pytest.skip(f"/{where} is a {mount['type']} mount here (rootless binds the host's /sys): runc follows it too")
    result, after = run_over_private_dev(runner, "run", "--bundle", str(bundle.path), runner.new_id())
    assert_dev_untouched(after)
    assert_failed_cleanly(runtime, result, f"mounts[{index}].destination", "ordinary directory")
    assert not any((bundle.rootfs / "mnt/elsewhere").iterdir())


_LSMT_ROOT = 0xFFFFFFFFFFFFFFFF
_NS_GET_MNTNS_ID = 0x8008B705
_STATMOUNT_SB_BASIC = 0x1


def namespace_filesystems(pid: int) -> set[int]:
    """st_dev of the filesystem behind every mount in pid's mount namespace, reachable or not
    (listmount/statmount, Linux 6.8+): a mount hidden under the moved rootfs is listed too."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    try:
        ns_id = struct.unpack("Q", fcntl.ioctl(fd, _NS_GET_MNTNS_ID, bytes(8)))[0]
    except OSError as e:
        pytest.skip(f"NS_GET_MNTNS_ID: {e}")
    finally:
        os.close(fd)
    req = ctypes.create_string_buffer(struct.pack("IIQQQ", 32, 0, _LSMT_ROOT, 0, ns_id))
    ids = (ctypes.c_uint64 * 4096)()
    n = libc.syscall(458, req, ids, 4096, 0)  # listmount (x86_64 and aarch64)
    if n < 0:
        pytest.skip(f"listmount: {os.strerror(ctypes.get_errno())}")
    devs = set()
    for mnt_id in ids[:n]:
        req = ctypes.create_string_buffer(struct.pack("IIQQQ", 32, 0, mnt_id, _STATMOUNT_SB_BASIC, ns_id))
        buf = ctypes.create_string_buffer(4096)
        assert libc.syscall(457, req, buf, 4096, 0) >= 0, os.strerror(ctypes.get_errno())  # statmount
        major, minor = struct.unpack_from("II", buf.raw, 16)
        devs.add(os.makedev(major, minor))
    return devs


def test_no_pivot_detaches_host_proc_and_sys(runner: Runner, bundle: Bundle) -> None:
    """Without pivot_root the host's mounts stay in the container's mount namespace under the
    moved rootfs; the host's procfs and sysfs must not be among them (runc detaches them, so a
    full unmasked procfs cannot license a fresh proc mount in the container)."""
    if runner.rootless:
        pytest.skip("rootless cannot detach the host's locked mounts; runc covers them with a tmpfs too")
    bundle.set_args("sleep", "60")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d", "--no-pivot").ok()
    pid = int(runner.state(cid)["pid"])
    devs = namespace_filesystems(pid)
    assert Path(f"/proc/{pid}/root/proc/1").exists()  # the container's own proc is there
    runner.kill(cid, "KILL")
    assert os.stat("/proc").st_dev not in devs, "the host's /proc is still mounted in the container's namespace"
    assert os.stat("/sys").st_dev not in devs, "the host's /sys is still mounted in the container's namespace"


# --------------------------------------------------------------------------------------------
# after pivot_root: no magic link leads out
# --------------------------------------------------------------------------------------------


def test_missing_cwd_is_not_made_through_a_magic_link(runner: Runner, bundle: Bundle, workdir: Path,
                                                      xfail_runc: Callable[[str], None]) -> None:
    """Without a pid namespace /proc/<host pid>/root is the host's root: an image symlink through
    it must not make the missing process.cwd on the host (it is created inside the rootfs).
    runc 1.1.5 is also vulnerable: it makes the directory on the host."""
    if runner.rootless:
        pytest.skip("an unprivileged user cannot follow a root process's /proc/<pid>/root")
    xfail_runc("1.1.5 creates the missing cwd on the host through the magic link")
    hostside = workdir / "hostside"
    hostside.mkdir()
    holder = subprocess.Popen(["sleep", "60"])
    try:
        bundle.linux["namespaces"] = [ns for ns in bundle.linux["namespaces"] if ns["type"] != "pid"]
        plant_symlink(bundle, "work", f"/proc/{holder.pid}/root{hostside}")
        bundle.process["cwd"] = "/work/made"
        bundle.set_args("true")
        result, after = run_over_private_dev(runner, "run", "--bundle", str(bundle.path), runner.new_id())
    finally:
        holder.kill()
        holder.wait()
    assert_dev_untouched(after)
    assert not (hostside / "made").exists(), "process.cwd was created on the host"
