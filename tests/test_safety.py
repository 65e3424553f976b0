"""Safety: fds do not leak in, symlinks cannot redirect mounts, ids are validated, state is
private, and the waiting init is not dumpable."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly, mounts_under, proc_status_field

LIST_FDS = "ls -l /proc/self/fd"


def fds_with_targets(ls_output: str) -> dict[int, str]:
    """Parse ``ls -l /proc/self/fd``: fd -> link target (the listing's own dir fd has none)."""
    found = {}
    for line in ls_output.splitlines():
        if " -> " not in line:
            continue
        left, target = line.split(" -> ", 1)
        found[int(left.split()[-1])] = target
    return found


def leaked_fd(workdir: Path) -> int:
    """An inheritable (no CLOEXEC) fd on a test file, at a high number."""
    path = workdir / "secret-host-file"
    path.write_text("host secret\n")
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, True)
    high = os.dup2(fd, 71)
    os.close(fd)
    return high


def test_inherited_fd_not_visible_with_run(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    fd = leaked_fd(workdir)
    bundle.sh(f"{LIST_FDS}; [ -e /proc/self/fd/{fd} ] && echo LEAKED; true")
    try:
        r = runner.run(runner.new_id(), bundle, pass_fds=(fd,)).ok()
    finally:
        os.close(fd)
    assert "LEAKED" not in r.stdout
    fds = fds_with_targets(r.stdout)
    assert set(fds) == {0, 1, 2}, r.stdout
    assert "secret-host-file" not in r.stdout


def test_inherited_fd_not_visible_with_create_start(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    fd = leaked_fd(workdir)
    bundle.sh(f"{LIST_FDS}; true")
    out = workdir / "out"
    cid = runner.new_id()
    try:
        runner.create(cid, bundle, stdout=out, pass_fds=(fd,)).ok()
    finally:
        os.close(fd)
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    text = out.read_text()
    assert set(fds_with_targets(text)) == {0, 1, 2}, text
    assert "secret-host-file" not in text


@pytest.mark.parametrize("kind", ["absolute", "relative", "parent-dir"])
def test_symlinked_mount_destination_stays_in_rootfs(
    runner: Runner, bundle: Bundle, workdir: Path, kind: str
) -> None:
    hostdir = workdir / "hostdir"
    hostdir.mkdir()
    (hostdir / "orig").write_text("host\n")
    os.chmod(hostdir, 0o777)
    link = bundle.rootfs / "evil"
    if kind == "absolute":
        os.symlink(str(hostdir), link)
        dest = "/evil"
    elif kind == "relative":
        os.symlink("../" * 12 + str(hostdir).lstrip("/"), link)
        dest = "/evil"
    else:
        os.symlink(str(hostdir), link)
        dest = "/evil/sub"
    if runner.owner:
        os.lchown(link, *runner.owner)
    bundle.add_mount(dest, "tmpfs", "tmpfs", ["mode=777"])
    bundle.sh(f"echo inside > {dest}/x && echo write-ok; touch /tmp/ready; "
              "while [ ! -e /tmp/go ]; do sleep 0.05; done")
    cid = runner.new_id()
    out = workdir / "out"
    runner.create(cid, bundle, stdout=out).ok()
    runner.start(cid).ok()
    deadline = time.monotonic() + 20
    while not (bundle.rootfs / "tmp" / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        # while the container runs and holds its mount: nothing on the host path
        assert mounts_under([hostdir]) == []
        assert sorted(os.listdir(hostdir)) == ["orig"]
    finally:
        (bundle.rootfs / "tmp" / "go").touch()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert "write-ok" in out.read_text()
    assert sorted(os.listdir(hostdir)) == ["orig"]
    assert mounts_under([workdir]) == []


def test_symlinked_bind_source_is_host_path(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    # The source of a bind mount is a host path (resolved on the host); only the
    # destination is confined to the rootfs.
    src = workdir / "src"
    src.mkdir()
    (src / "f").write_text("bound\n")
    os.chmod(src, 0o755)
    os.chmod(src / "f", 0o644)
    os.symlink(src, workdir / "src-link")
    bundle.add_mount("/mnt/b", "bind", str(workdir / "src-link"), ["bind", "ro"])
    bundle.sh("cat /mnt/b/f")
    assert runner.run(runner.new_id(), bundle).ok().stdout.strip() == "bound"


BAD_IDS = ["..", ".", "a/b", "../x", "", "x" * 1025, "/abs", "a b", "a\nb", "-dash-first", "_under"]


@pytest.mark.parametrize("cid", BAD_IDS, ids=lambda c: repr(c)[:20])
def test_bad_ids_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle, cid: str) -> None:
    # "--" so that "-dash-first" reaches the id check instead of the option parser
    r = runner.cmd("create", "--bundle", str(bundle.path), "--", cid)
    if cid in ("_under", "-dash-first") and not runtime.is_pyouki:
        # runc's id rule is [\w+-.]+, which allows a leading "_" or "-"
        runner.ids.append(cid)
        if r.returncode == 0:
            runner.ids.append(cid)
            return
    assert_failed_cleanly(runtime, r)
    assert runner.state_entries() == []
    assert not (runner.rundir / "x").exists(), "../x escaped the state dir"
    assert runner.leftover_pids() == []


@pytest.mark.parametrize("verb", ["state", "delete", "kill", "start"])
def test_traversal_id_does_not_reach_a_real_container(
    runtime: RuntimeInfo, runner: Runner, bundle: Bundle, verb: str
) -> None:
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    # "../state/ID" names the same directory as "ID": it must be refused, not followed
    extra = ["--force"] if verb == "delete" else []
    r = runner.cmd(verb, *extra, f"../{runner.state_root.name}/{cid}")
    assert_failed_cleanly(runtime, r)
    assert runner.status(cid) == "created", "the real container must be untouched"
    assert runner.state_entries() == [cid]
    runner.delete(cid).ok()


@pytest.mark.parametrize("cid", ["a.b+c_d-1", "Z9", "x" * 200])
def test_unusual_good_ids_accepted(runner: Runner, bundle: Bundle, cid: str) -> None:
    runner.ids.append(cid)
    runner.create(cid, bundle).ok()
    assert runner.state(cid)["id"] == cid
    runner.delete(cid).ok()
    assert runner.state_entries() == []


def test_state_dir_private_and_owned(runner: Runner, bundle: Bundle) -> None:
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    caller = runner.user.uid if runner.rootless else 0
    root_st = os.stat(runner.state_root)
    assert root_st.st_uid == caller
    assert root_st.st_mode & 0o777 == 0o700, oct(root_st.st_mode)
    cst = os.stat(runner.state_root / cid)
    assert cst.st_uid == caller
    assert cst.st_mode & 0o022 == 0, oct(cst.st_mode)
    for entry in os.listdir(runner.state_root / cid):
        est = os.lstat(runner.state_root / cid / entry)
        assert est.st_uid == caller, entry
    runner.delete(cid).ok()


def test_default_root_private(runner: Runner, bundle: Bundle) -> None:
    cid = runner.new_id("priv")
    runner.cmd("create", "--bundle", str(bundle.path), cid, root=None).ok()
    default = Path(runner.runtime.default_root(runner.mode, str(runner.xdg)))
    st = os.stat(default)
    assert st.st_uid == (runner.user.uid if runner.rootless else 0)
    assert st.st_mode & 0o077 == 0, oct(st.st_mode)
    runner.cmd("delete", cid, root=None).ok()


def test_init_not_dumpable_before_exec(runner: Runner, bundle: Bundle,
                                      xfail_runc: Callable[[str], None]) -> None:
    """A non-dumpable process's /proc files belong to root; after exec they are the user's.

    Observable when the container's init runs as a non-root host uid: the test user
    (rootless) or a subordinate uid (root with a user namespace).
    """
    if runner.rootless:
        xfail_runc("rootless runc init stays dumpable while it waits on exec.fifo")
        host_uid = runner.user.uid
    else:
        host_uid = runner.user.subuid[0]
        bundle.add_namespace("user")
        bundle.linux["uidMappings"] = [{"containerID": 0, "hostID": host_uid, "size": 65536}]
        bundle.linux["gidMappings"] = [{"containerID": 0, "hostID": runner.user.subgid[0], "size": 65536}]
    bundle.sh("touch /tmp/ready; while [ ! -e /tmp/go ]; do sleep 0.05; done")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    pid = runner.state(cid)["pid"]
    uid_line = proc_status_field(pid, "Uid")
    assert uid_line is not None and uid_line.split()[1] == str(host_uid), uid_line
    assert os.stat(f"/proc/{pid}/status").st_uid == 0, "waiting init must not be dumpable"
    runner.start(cid).ok()
    deadline = time.monotonic() + 20
    while not (bundle.rootfs / "tmp" / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.stat(f"/proc/{pid}/status").st_uid == host_uid, "after exec the process is dumpable again"
    (bundle.rootfs / "tmp" / "go").touch()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()


def test_container_cannot_see_state_dir(runner: Runner, bundle: Bundle) -> None:
    # the state dir (with exec.fifo) lives on the host; the container's view must not reach it
    state = runner.state_root
    bundle.sh(f"ls {state} 2>&1; ls /proc/1/fd 2>&1 | wc -l")
    out = runner.run(runner.new_id(), bundle).ok().stdout
    assert "exec.fifo" not in out
    assert "state.json" not in out
