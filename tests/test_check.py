"""`pyouki check` (issue 11, point 2): each check that can be made to fail on this machine, failing.

The checks run as the real test user, or as a throw-away user made (and removed) here. What would
attack the host runs in a private mount namespace (a copy of newuidmap bound over the real one, a
throw-away /dev) or in a throw-away user namespace (user.max_user_namespaces is per namespace).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import RuntimeInfo, TestUser

from pyouki.cgroups import detect_mode

PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@pytest.fixture(autouse=True)
def _pyouki_only(runtime: RuntimeInfo) -> None:
    if not runtime.is_pyouki:
        pytest.skip("check is pyouki's own command")


def run_check(runtime: RuntimeInfo, uid: int, gid: int, *args: str, env: dict[str, str] | None = None,
              setup: str = "", wrap: str = "") -> tuple[int, str]:
    """`pyouki check ARGS` as uid:gid (root with uid 0), with a clean environment.

    setup runs first as root in a private mount namespace; wrap prefixes the command after the
    switch to the user (e.g. a user namespace of its own).
    """
    assignments = " ".join(f"{k}={shlex.quote(v)}" for k, v in {"PATH": PATH, **(env or {})}.items())
    command = f"{wrap} {shlex.quote(runtime.path)} check {' '.join(shlex.quote(a) for a in args)}"
    switch = f"setpriv --reuid={uid} --regid={gid} --clear-groups --" if uid else ""
    script = f"{setup}\nexec {switch} env -i {assignments} {command}"
    res = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                         capture_output=True, text=True, timeout=60)
    assert not res.stderr, res.stderr
    return res.returncode, res.stdout


def checks(output: str) -> dict[str, dict[str, Any]]:
    """The JSON report's checks by name."""
    doc = json.loads(output)
    return {c["name"]: c for c in doc["checks"]}


@pytest.fixture
def xdg(test_user: TestUser, workdir: Path) -> Path:
    """A proper XDG_RUNTIME_DIR for the test user."""
    d = workdir / "xdg"
    d.mkdir(mode=0o700)
    os.chown(d, test_user.uid, test_user.gid)
    return d


def user_check(runtime: RuntimeInfo, user: TestUser, xdg: Path, *args: str, **kw: Any) -> tuple[int, str]:
    env = {"XDG_RUNTIME_DIR": str(xdg), "HOME": user.home, **kw.pop("env", {})}
    return run_check(runtime, user.uid, user.gid, "--format", "json", *args, env=env, **kw)


def test_ready_user(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    rc, out = user_check(runtime, test_user, xdg)
    doc = json.loads(out)
    assert doc["user"] == test_user.name and doc["uid"] == test_user.uid and doc["rootful"] is False
    c = checks(out)
    for name in ("user namespaces", "subordinate uids", "subordinate gids", "newuidmap", "newgidmap",
                 "XDG_RUNTIME_DIR", "kernel", "user.max_user_namespaces"):
        assert c[name]["status"] == "ok", c[name]
    start, size = test_user.subuid
    assert c["subordinate uids"]["detail"] == f"/etc/subuid: {start}-{start + size - 1} ({size} ids)"
    assert {c[n]["status"] for n in ("apparmor", "selinux")} == {"info"}
    assert doc["ready"] is (rc == 0) is all(x["status"] != "fail" for x in c.values())


@pytest.mark.skipif(detect_mode() == "unified", reason="the host has cgroup v2")
def test_cgroup_v1_host_cannot_give_rootless_limits(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    rc, out = user_check(runtime, test_user, xdg)
    c = checks(out)
    assert rc == 1
    assert c["cgroup version"]["status"] == "fail"
    assert "systemd.unified_cgroup_hierarchy=1" in c["cgroup version"]["fix"]
    assert c["cgroup v2 controllers"]["status"] == "fail"
    assert "missing cpu memory pids" in c["cgroup v2 controllers"]["detail"]
    # PID 1 is not systemd here: no user manager (a warning), and nothing delegated
    assert c["systemd user manager"]["status"] == "warn"
    assert c["systemd user manager"]["detail"].startswith("PID 1 is not systemd")
    assert c["delegated controllers"]["status"] == "fail"
    assert c["delegated controllers"]["fix"] == c["cgroup version"]["fix"]


def test_text_output(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    env = {"XDG_RUNTIME_DIR": str(xdg), "HOME": test_user.home}
    rc, out = run_check(runtime, test_user.uid, test_user.gid, env=env)
    lines = out.splitlines()
    assert lines[0] == f"pyouki check for {test_user.name} (uid {test_user.uid}), rootless"
    assert any(line.startswith("ok ") and "newuidmap" in line for line in lines)
    for i, line in enumerate(lines[1:-1], 1):  # each failed check is followed by its fix
        if line.startswith("FAIL"):
            assert lines[i + 1].split()[0] == "fix:", lines[i + 1]
    assert lines[-1].startswith("ready: " if rc == 0 else "not ready ")


def test_rootful(runtime: RuntimeInfo) -> None:
    rc, out = run_check(runtime, 0, 0, "--rootful", "--format", "json")
    doc = json.loads(out)
    c = checks(out)
    assert doc["rootful"] is True and c["root"]["status"] == "ok"
    assert c["cgroup controllers"]["status"] == "ok", c["cgroup controllers"]
    assert rc == 0 and doc["ready"] is True, out  # root gets limits on this host (cgroup v1)
    # the default for root is the rootful check
    rc2, out2 = run_check(runtime, 0, 0, "--format", "json")
    assert json.loads(out2)["rootful"] is True and rc2 == 0


def test_rootful_as_a_user_fails(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    rc, out = user_check(runtime, test_user, xdg, "--rootful")
    c = checks(out)
    assert rc == 1 and c["root"]["status"] == "fail"
    assert c["root"]["fix"] == "sudo pyouki check --rootful"


@pytest.fixture
def user_without_subids(workdir: Path) -> Iterator[TestUser]:
    """A throw-away system user (useradd gives system users no subordinate ids), removed afterwards."""
    name = f"pyck{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/bin/sh", name], check=True)
    try:
        import pwd

        pw = pwd.getpwnam(name)
        for path in ("/etc/subuid", "/etc/subgid"):
            assert not any(line.startswith(f"{name}:") for line in Path(path).read_text().splitlines())
        yield TestUser(name=name, uid=pw.pw_uid, gid=pw.pw_gid, home=str(workdir), subuid=(0, 0), subgid=(0, 0))
    finally:
        subprocess.run(["userdel", name], check=True)
        for path in ("/etc/subuid", "/etc/subgid"):
            assert not any(line.startswith(f"{name}:") for line in Path(path).read_text().splitlines())


def test_user_without_subordinate_ids(runtime: RuntimeInfo, user_without_subids: TestUser, workdir: Path) -> None:
    user = user_without_subids
    d = workdir / "xdg-throwaway"
    d.mkdir(mode=0o700)
    os.chown(d, user.uid, user.gid)
    rc, out = user_check(runtime, user, d)
    c = checks(out)
    assert rc == 1
    for name, path in (("subordinate uids", "/etc/subuid"), ("subordinate gids", "/etc/subgid")):
        assert c[name]["status"] == "fail"
        assert c[name]["detail"] == f"{path} has no entry for {user.name}"
        fix = c[name]["fix"]
        assert fix.startswith("sudo usermod --add-subuids ") and " --add-subgids " in fix and fix.endswith(user.name)
    # the fix hands out ids nobody has yet
    words = c["subordinate uids"]["fix"].split()
    first = int(words[words.index("--add-subuids") + 1].split("-")[0])
    for line in Path("/etc/subuid").read_text().splitlines():
        _, start, count = line.split(":")
        assert first >= int(start) + int(count) or first + 65536 <= int(start)


def test_small_subordinate_range_warns(runtime: RuntimeInfo, user_without_subids: TestUser, workdir: Path) -> None:
    user = user_without_subids
    subprocess.run(["usermod", "--add-subuids", "3000000000-3000000999", "--add-subgids",
                    "3000000000-3000000999", user.name], check=True)
    d = workdir / "xdg-small"
    d.mkdir(mode=0o700)
    os.chown(d, user.uid, user.gid)
    _, out = user_check(runtime, user, d)
    c = checks(out)
    assert c["subordinate uids"]["status"] == "warn"
    assert "(1000 ids; podman and most images expect 65536)" in c["subordinate uids"]["detail"]


@pytest.mark.parametrize("case", ["unset", "missing", "mode", "owner"])
def test_runtime_dir(runtime: RuntimeInfo, test_user: TestUser, workdir: Path, case: str) -> None:
    d = workdir / "xdg-bad"
    env = {"HOME": test_user.home}
    if case != "unset":
        env["XDG_RUNTIME_DIR"] = str(d)
    if case in ("mode", "owner"):
        d.mkdir(mode=0o755 if case == "mode" else 0o700)
        os.chmod(d, 0o755 if case == "mode" else 0o700)
        if case == "mode":
            os.chown(d, test_user.uid, test_user.gid)
    rc, out = run_check(runtime, test_user.uid, test_user.gid, "--format", "json", env=env)
    r = checks(out)["XDG_RUNTIME_DIR"]
    assert rc == 1 and r["status"] == "fail", r
    expected = {
        "unset": ("not set", f"install -d -m 0700 -o {test_user.name} -g {test_user.gid} /run/user/{test_user.uid}"),
        "missing": ("no such file or directory", "install -d -m 0700"),
        "mode": ("has mode 0755, not 0700", f"chmod 0700 {d}"),
        "owner": ("is owned by uid 0", f"sudo chown {test_user.name} {d}"),
    }[case]
    assert expected[0] in r["detail"] and expected[1] in r["fix"], r


def test_user_namespaces_disabled(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    """In a user namespace of its own, the user may set its (per-namespace) limit to 0."""
    rc, out = user_check(runtime, test_user, xdg,
                         wrap="unshare --user --map-root-user sh -c 'echo 0 > /proc/sys/user/max_user_namespaces "
                              "&& exec \"$0\" \"$@\"'")
    c = checks(out)
    assert rc == 1
    assert c["user.max_user_namespaces"]["status"] == "fail"
    assert c["user.max_user_namespaces"]["fix"].startswith("sudo sysctl -w user.max_user_namespaces=")
    assert c["user namespaces"]["status"] == "fail"
    assert "ENOSPC" in c["user namespaces"]["detail"]


def _newuidmap_copy(workdir: Path, caps: bytes | None) -> Path:
    copy = workdir / f"newuidmap-{uuid.uuid4().hex[:6]}"
    shutil.copy("/usr/bin/newuidmap", copy)  # copy2 would keep no setuid bit either: copies drop it
    os.chmod(copy, 0o755)
    if caps is not None:
        os.setxattr(copy, "security.capability", caps)
    return copy


def test_newuidmap_not_setuid(runtime: RuntimeInfo, test_user: TestUser, xdg: Path, workdir: Path) -> None:
    copy = _newuidmap_copy(workdir, None)
    rc, out = user_check(runtime, test_user, xdg, setup=f"mount --bind {copy} /usr/bin/newuidmap")
    r = checks(out)["newuidmap"]
    assert rc == 1 and r["status"] == "fail"
    assert r["detail"] == "/usr/bin/newuidmap is neither setuid root nor has cap_setuid"
    assert r["fix"] == "sudo chown root /usr/bin/newuidmap && sudo chmod u+s /usr/bin/newuidmap"


def test_newuidmap_with_file_capability(runtime: RuntimeInfo, test_user: TestUser, xdg: Path,
                                        workdir: Path) -> None:
    # vfs_cap_data revision 2: magic|effective, then permitted/inheritable low and high words
    caps = (0x02000001).to_bytes(4, "little") + (1 << 7).to_bytes(4, "little") + bytes(12)
    copy = _newuidmap_copy(workdir, caps)
    _, out = user_check(runtime, test_user, xdg, setup=f"mount --bind {copy} /usr/bin/newuidmap")
    r = checks(out)["newuidmap"]
    assert r["status"] == "ok" and r["detail"] == "/usr/bin/newuidmap, file capability cap_setuid", r


def test_devices_unusable(runtime: RuntimeInfo, test_user: TestUser, xdg: Path) -> None:
    """Over a throw-away /dev: /dev/fuse 0600 and no /dev/net/tun."""
    setup = ("mount -t tmpfs -o mode=755 tmpfs /dev && mknod -m 666 /dev/null c 1 3 "
             "&& mknod -m 600 /dev/fuse c 10 229")
    _, out = user_check(runtime, test_user, xdg, setup=setup)
    c = checks(out)
    assert c["/dev/fuse"]["status"] == "warn"
    assert f"mode 0600: not usable by {test_user.name}" in c["/dev/fuse"]["detail"]
    assert c["/dev/fuse"]["fix"] == "sudo chmod 0666 /dev/fuse"
    assert c["/dev/net/tun"]["status"] == "warn" and c["/dev/net/tun"]["fix"] == "sudo modprobe tun"
    assert stat.S_ISCHR(os.stat("/dev/fuse").st_mode)  # the host's is untouched
