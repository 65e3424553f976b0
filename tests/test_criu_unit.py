"""Unit tests of pyouki/criu.py: pure logic, and restore's mountpoints made in a private mount
namespace; checkpoint/restore itself runs in the VM tier (tests/test_vm_enforcement.py: criu
cannot dump on this host's kernel)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pyouki.criu import Mountpoint, _bind_mounts, restore_mountpoints
from pyouki.errors import PyoukiError


def test_bind_mount_keys_are_the_container_paths_criu_sees() -> None:
    """criu matches `--external mnt[KEY]` against the mount's path in the container's
    mountinfo: one leading slash. normpath("/" + "/etc/hostname") is "//etc/hostname" (POSIX
    keeps two), which matched no mount, and criu failed on podman's file binds."""
    config = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/hostname", "type": "bind", "source": "/u/hostname", "options": ["bind", "rprivate"]},
        {"destination": "/run/.containerenv", "type": "none", "source": "/u/env", "options": ["rbind"]},
        {"destination": "data//sub/", "source": "rel", "options": ["bind"]},
        {"destination": "//twice/../x", "type": "bind", "source": "/s"},
    ]}
    assert _bind_mounts(config) == [("/etc/hostname", "/u/hostname"), ("/run/.containerenv", "/u/env"),
                                    ("/data/sub", "rel"), ("/x", "/s")]


def test_restore_mountpoints_are_planned_as_runc_makes_them(tmp_path: Path) -> None:
    """runc's makeCriuRestoreMountpoints: every mount outside a tmpfs gets its mountpoint, a file
    for a bind of a file; a bind's source relative to the bundle; none for cgroup mounts."""
    bundle = tmp_path / "bundle"
    (bundle / "data").mkdir(parents=True)
    (tmp_path / "env").write_text("x")
    config = {"mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
        {"destination": "/devices", "type": "sysfs", "source": "sysfs"},  # /dev's prefix, not beneath it
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
        {"destination": "//run/.containerenv", "type": "bind", "source": str(tmp_path / "env")},
        {"destination": "/data", "source": "data", "options": ["rbind"]},
    ]}
    assert restore_mountpoints(config, str(bundle)) == [
        Mountpoint("mounts[0]", "/proc", "dir"),
        Mountpoint("mounts[1]", "/dev", "dir"),
        Mountpoint("mounts[3]", "/devices", "dir"),
        Mountpoint("mounts[5]", "/run/.containerenv", "file", str(tmp_path / "env")),
        Mountpoint("mounts[6]", "/data", "dir", str(bundle / "data")),
    ]


def test_restore_refuses_a_missing_bind_source_by_its_field(tmp_path: Path) -> None:
    config = {"mounts": [{"destination": "/x", "type": "bind", "source": "gone"}]}
    with pytest.raises(PyoukiError, match=r"^mounts\[0\]\.source: bind source .*/gone does not exist$"):
        restore_mountpoints(config, str(tmp_path))


# make_mountpoints in a private mount namespace; prints what each destination's fd reached
_MAKE = """
import os, sys
from pyouki.criu import Mountpoint, make_mountpoints
root, source = sys.argv[1], sys.argv[2]
points = [Mountpoint("mounts[0]", "/run/.containerenv", "file"),
          Mountpoint("mounts[1]", "/etc/hostname", "file"),
          Mountpoint("mounts[2]", "/data", "dir", source),
          Mountpoint("mounts[3]", "/data/inner/deeper", "dir")]
make_mountpoints(root, points)
print(open("/proc/self/mountinfo").read().count(" " + root + "/data "))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_restore_mountpoints_stay_inside_a_hostile_rootfs(tmp_path: Path) -> None:
    """An image's symlinks (absolute, and "..") cannot make restore create anything outside its
    rootfs; a mount inside a bind gets its mountpoint in the bind's source, as at create; the
    binds live only in restore's own mount namespace."""
    root, outside, source = tmp_path / "root", tmp_path / "outside", tmp_path / "source"
    for d in (root, outside, source):
        d.mkdir()
    os.symlink(str(outside), root / "run")
    os.symlink("../../../../" + outside.name, root / "etc")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _MAKE,
                          str(root), str(source)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1"  # the bind was there while criu would run
    assert list(outside.iterdir()) == []
    assert (root / str(outside).lstrip("/") / ".containerenv").is_file()
    assert (root / outside.name / "hostname").is_file()
    assert (source / "inner" / "deeper").is_dir() and not (root / "data" / "inner").exists()
    with open("/proc/self/mountinfo") as f:
        assert str(root) not in f.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="mounts need root")
def test_restore_mountpoint_error_names_the_field(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "run").write_text("a file where a directory must be")
    code = ("import sys\nfrom pyouki.criu import Mountpoint, make_mountpoints\nfrom pyouki.errors import PyoukiError\n"
            "try:\n    make_mountpoints(sys.argv[1], [Mountpoint('mounts[4]', '/run/x', 'file')])\n"
            "except PyoukiError as e:\n    print(e)\n")
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", sys.executable, "-c", code, str(root)],
                         capture_output=True, text=True, timeout=60)
    assert res.stdout.strip() == ("mounts[4].destination: failed to create /run/x in the rootfs: "
                                  "not a directory"), res.stderr
