"""Filesystem set-up details where pyouki matches runc 1.1.5 (issue 9, section C), observed from
inside real containers, as root and rootless. Each was compared with runc on the same bundle."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from harness import Bundle, Runner


def _mount(bundle: Bundle, destination: str) -> dict:
    return next(m for m in bundle.config["mounts"] if m["destination"] == destination)


def _mountinfo_options(stdout: str, mountpoint: str) -> list[str]:
    """The per-mount options of the last mount at mountpoint in a mountinfo dump."""
    lines = [ln.split() for ln in stdout.splitlines() if len(ln.split()) > 5 and ln.split()[4] == mountpoint]
    assert lines, f"{mountpoint} not mounted:\n{stdout}"
    return lines[-1][5].split(",")


def test_dev_read_only_after_devices(runner: Runner, bundle: Bundle) -> None:
    """`ro` on the /dev tmpfs is applied once the default devices, links and /dev/pts are in it
    (runc's order); before, creating /dev/pts failed with a read-only file system."""
    _mount(bundle, "/dev")["options"].append("ro")
    bundle.sh("grep ' /dev ' /proc/self/mountinfo; [ -c /dev/null ] && echo NULL; "
              "[ \"$(readlink /dev/ptmx)\" = pts/ptmx ] && echo PTMX; [ -c /dev/pts/ptmx ] && echo PTS; "
              "touch /dev/x 2>/dev/null || echo READONLY")
    r = runner.run(runner.new_id(), bundle).ok()
    assert _mountinfo_options(r.stdout, "/dev")[0] == "ro", r.stdout
    for word in ("NULL", "PTMX", "PTS", "READONLY"):
        assert word in r.stdout.split(), r.stdout


def test_readonly_paths_keep_parent_flags(runner: Runner, bundle: Bundle) -> None:
    """A readonlyPaths bind keeps the parent mount's nosuid,nodev,noexec (runc reads them with
    statfs); before, the remount with ro alone dropped them."""
    _mount(bundle, "/proc")["options"] = ["nosuid", "noexec", "nodev"]
    bundle.linux["readonlyPaths"] = ["/proc/sys"]
    bundle.sh("cat /proc/self/mountinfo")
    r = runner.run(runner.new_id(), bundle).ok()
    options = _mountinfo_options(r.stdout, "/proc/sys")
    assert {"ro", "nosuid", "nodev", "noexec"} <= set(options), options


def test_tmpfs_without_mode_takes_the_mountpoint_mode(runner: Runner, bundle: Bundle) -> None:
    """A tmpfs without mode= over an existing directory keeps that directory's mode (runc chmods
    it back), also when read-only; a directory made for it gets tmpfs's own 1777."""
    for d in ("mnt", "root"):
        os.chmod(bundle.rootfs / d, 0o750)
    bundle.add_mount("/mnt", "tmpfs", "tmpfs", ["nosuid"])
    bundle.add_mount("/root", "tmpfs", "tmpfs", ["nosuid", "ro"])
    bundle.add_mount("/fresh", "tmpfs", "tmpfs", [])
    bundle.sh("stat -c '%a %n' /mnt /root /fresh; grep ' /root ' /proc/self/mountinfo")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.splitlines()[:3] == ["750 /mnt", "750 /root", "1777 /fresh"], r.stdout
    assert _mountinfo_options(r.stdout, "/root")[0] == "ro", r.stdout


def test_tmpfs_mode_option_wins(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    """mode= on a tmpfs decides its mode, over the existing directory's (the spec passes the
    option to mount(2)); runc 1.1.5 chmods the directory's mode back over it."""
    xfail_runc("1.1.5 chmods the mountpoint's mode back over mode=")
    os.chmod(bundle.rootfs / "var", 0o750)
    bundle.add_mount("/var", "tmpfs", "tmpfs", ["mode=0700"])
    bundle.sh("stat -c '%a %n' /var")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.strip() == "700 /var", r.stdout


def test_ptmx_device_entry_is_skipped_in_a_user_namespace(runner: Runner, bundle: Bundle) -> None:
    """linux.devices /dev/ptmx: in a user namespace the host's ptmx is not bound (runc skips the
    entry; binding it over the ptmx link failed with EBUSY); /dev/ptmx stays the link to pts/ptmx."""
    bundle.linux["devices"] = [{"path": "/dev/ptmx", "type": "c", "major": 5, "minor": 2, "fileMode": 0o666}]
    bundle.sh("readlink /dev/ptmx; [ -c /dev/pts/ptmx ] && echo PTS")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.split() == ["pts/ptmx", "PTS"], r.stdout


def test_device_path_with_trailing_slash(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    """A linux.devices path with a trailing slash names the device (runc cleans the path when it
    makes the node; rootless, runc 1.1.5 binds onto "/dev/fuse/" and fails with ENOTDIR)."""
    if runner.rootless:
        xfail_runc("1.1.5 fails to bind onto a device path with a trailing slash")
    if not os.path.exists("/dev/fuse"):
        pytest.skip("host has no /dev/fuse")
    bundle.linux["devices"] = [{"path": "/dev/fuse/", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666}]
    bundle.sh("stat -c '%F %t:%T' /dev/fuse")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.strip() == "character special file a:e5", r.stdout
