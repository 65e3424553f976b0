"""Paths runc reaches with the runtime's privileges, before the container's user takes over."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from harness import Bundle, Runner


def test_cwd_only_root_can_enter(runner: Runner, bundle: Bundle) -> None:
    """runc chdirs to process.cwd before the user switch too: a 0700 root directory works for uid 1000."""
    if runner.rootless:
        pytest.skip("a rootless container maps one uid: there is no other user to switch to")
    d = bundle.add_dir("/secret")
    os.chmod(d, 0o700)
    bundle.process["cwd"] = "/secret"
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh("pwd; id -u; ls . 2>&1 >/dev/null | head -1")
    cid = runner.new_id()
    r = runner.run(cid, bundle)
    lines = r.ok().stdout.splitlines()
    assert lines[:2] == ["/secret", "1000"], r
    assert "Permission denied" in lines[2], "the user itself still cannot read the directory"


def test_cwd_only_the_user_can_enter(runner: Runner, bundle: Bundle) -> None:
    """The user's own 0700 cwd still works: entered as root first, or again as the user."""
    if runner.rootless:
        pytest.skip("a rootless container maps one uid: there is no other user to switch to")
    d = bundle.add_dir("/mine")
    os.chown(d, 1000, 1000)
    os.chmod(d, 0o700)
    bundle.process["cwd"] = "/mine"
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh("pwd")
    cid = runner.new_id()
    r = runner.run(cid, bundle)
    assert r.ok().stdout.strip() == "/mine"


def test_bind_source_only_host_root_can_reach(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    """runc opens bind sources before entering the user namespace: a source under a 0700 root
    directory works for a container whose root is a subordinate id (which cannot search it)."""
    if runner.rootless:
        pytest.skip("the runtime and the container's root are the same user: nothing more to reach")
    u = runner.user
    bundle.add_namespace("user")
    bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": u.subuid[0], "size": u.subuid[1]}]
    bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": u.subgid[0], "size": u.subgid[1]}]
    secret = workdir / "secret"
    (secret / "dir").mkdir(parents=True)
    os.chmod(secret, 0o700)
    os.chmod(secret / "dir", 0o755)
    (secret / "dir" / "f").write_text("dir reached\n")
    (secret / "file").write_text("file reached\n")
    for f in (secret / "dir" / "f", secret / "file"):
        os.chmod(f, 0o644)
    bundle.add_dir("/data")  # the container's root cannot create them in the root-owned rootfs
    bundle.add_file("/file", "")
    bundle.add_mount("/data", "bind", str(secret / "dir"), ["rbind", "ro"])
    bundle.add_mount("/file", "bind", str(secret / "file"), ["bind"])
    bundle.sh("cat /data/f /file; grep ' /data ' /proc/self/mountinfo")
    # the source a shared mount of its own (this host's are private): its clone must not be a peer
    subprocess.run(["mount", "--bind", str(secret / "dir"), str(secret / "dir")], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(secret / "dir")], check=True)
        r = runner.run(runner.new_id(), bundle)
    finally:
        subprocess.run(["umount", "-l", str(secret / "dir")], check=True)
    lines = r.ok().stdout.splitlines()
    assert lines[:2] == ["dir reached", "file reached"], r
    # a slave of the host's mount, never its peer: nothing mounted under it reaches the host
    optional = lines[2].split(" - ")[0].split()[6:]
    assert not any(o.startswith("shared:") for o in optional), lines[2]


def test_idmapped_bind_of_a_shared_source_is_not_its_peer(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    """The detached clone behind an idmapped mount is made a slave too: as a peer of a shared host
    mount, what the container mounts under it would appear on the host."""
    if runner.rootless:
        pytest.skip("idmapped mounts of host directories need root")
    src = workdir / "shared-src"
    src.mkdir()
    os.chmod(src, 0o755)
    i = bundle.add_mount("/data", "bind", str(src), ["rbind", "idmap"])
    maps = [{"containerID": 0, "hostID": 0, "size": 65536}]
    bundle.config["mounts"][i]["uidMappings"] = maps
    bundle.config["mounts"][i]["gidMappings"] = maps
    bundle.sh("grep ' /data ' /proc/self/mountinfo")
    subprocess.run(["mount", "--bind", str(src), str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        r = runner.run(runner.new_id(), bundle)
    finally:
        subprocess.run(["umount", "-l", str(src)], check=True)
    optional = r.ok().stdout.split(" - ")[0].split()[6:]
    assert not any(o.startswith("shared:") for o in optional), r.stdout
