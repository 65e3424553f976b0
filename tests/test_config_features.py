"""Each config feature of the bundle, observed from inside the container, as root and rootless."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, mounts_under

CAP_NUMBERS = {"CAP_CHOWN": 0, "CAP_KILL": 5, "CAP_NET_BIND_SERVICE": 10, "CAP_SYS_CHROOT": 18}


def run_sh(runner: Runner, bundle: Bundle, script: str) -> str:
    """Run ``script`` in the container (foreground ``run``) and return its stdout."""
    bundle.sh(script)
    return runner.run(runner.new_id(), bundle).ok().stdout


def use_full_mappings(runner: Runner, bundle: Bundle) -> None:
    """Map container ids 0..65536: root via subordinate ids (newuidmap), rootless likewise.

    Rootless: the caller's own id is container root and the subuid range follows, which only
    newuidmap/newgidmap can write; for root, a user namespace over the subordinate range.
    """
    u = runner.user
    if runner.rootless:
        uids = [{"containerID": 0, "hostID": u.uid, "size": 1},
                {"containerID": 1, "hostID": u.subuid[0], "size": u.subuid[1]}]
        gids = [{"containerID": 0, "hostID": u.gid, "size": 1},
                {"containerID": 1, "hostID": u.subgid[0], "size": u.subgid[1]}]
    else:
        uids = [{"containerID": 0, "hostID": u.subuid[0], "size": u.subuid[1]}]
        gids = [{"containerID": 0, "hostID": u.subgid[0], "size": u.subgid[1]}]
        bundle.add_namespace("user")
        # The subordinate root must be able to read the rootfs (it is root-owned 0755 here).
    bundle.linux["uidMappings"] = uids
    bundle.linux["gidMappings"] = gids
    bundle.write()


def test_uid_gid_map(runner: Runner, bundle: Bundle) -> None:
    if runner.rootless:
        expect_uid = f"0 {runner.user.uid} 1"
        expect_gid = f"0 {runner.user.gid} 1"
    else:
        use_full_mappings(runner, bundle)
        expect_uid = f"0 {runner.user.subuid[0]} {runner.user.subuid[1]}"
        expect_gid = f"0 {runner.user.subgid[0]} {runner.user.subgid[1]}"
    out = run_sh(runner, bundle, "cat /proc/self/uid_map; echo --; cat /proc/self/gid_map; id -u")
    uid_part, gid_part = out.split("--")
    assert " ".join(uid_part.split()) == expect_uid
    gid_lines = gid_part.strip().splitlines()
    assert " ".join(gid_lines[0].split()) == expect_gid
    assert gid_lines[1].strip() == "0"


def test_multi_range_mapping(runner: Runner, bundle: Bundle) -> None:
    use_full_mappings(runner, bundle)
    out = run_sh(runner, bundle, "cat /proc/self/uid_map /proc/self/gid_map")
    lines = [" ".join(ln.split()) for ln in out.strip().splitlines()]
    u = runner.user
    if runner.rootless:
        assert lines == [f"0 {u.uid} 1", f"1 {u.subuid[0]} {u.subuid[1]}",
                         f"0 {u.gid} 1", f"1 {u.subgid[0]} {u.subgid[1]}"]
    else:
        assert lines == [f"0 {u.subuid[0]} {u.subuid[1]}", f"0 {u.subgid[0]} {u.subgid[1]}"]


def test_hostname(runner: Runner, bundle: Bundle) -> None:
    bundle.config["hostname"] = "pyouki-host"
    out = run_sh(runner, bundle, "hostname; cat /proc/sys/kernel/hostname")
    assert out.split() == ["pyouki-host", "pyouki-host"]


def test_domainname(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("runc 1.1.5 ignores the domainname field")
    bundle.config["domainname"] = "example.test"
    out = run_sh(runner, bundle, "cat /proc/sys/kernel/domainname")
    assert out.split() == ["example.test"]


def test_process_user(runner: Runner, bundle: Bundle) -> None:
    use_full_mappings(runner, bundle)
    bundle.process["user"] = {"uid": 1000, "gid": 1001}
    out = run_sh(runner, bundle, "id -u; id -g; id -G")
    uid, gid, groups = out.strip().splitlines()
    assert (uid, gid) == ("1000", "1001")
    assert groups.split() == ["1001"]


def test_process_user_additional_gids(runner: Runner, bundle: Bundle,
                                      xfail_runc: Callable[[str], None]) -> None:
    if runner.rootless:
        # setgroups is allowed once newgidmap wrote the map; runc refuses anyway
        xfail_runc("refuses additionalGids in any rootless container")
    use_full_mappings(runner, bundle)
    bundle.process["user"] = {"uid": 1000, "gid": 1001, "additionalGids": [10, 20]}
    out = run_sh(runner, bundle, "id -u; id -g; id -G")
    uid, gid, groups = out.strip().splitlines()
    assert (uid, gid) == ("1000", "1001")
    assert {"10", "20"} <= set(groups.split())


def test_umask(runner: Runner, bundle: Bundle) -> None:
    bundle.process["user"]["umask"] = 0o027
    out = run_sh(runner, bundle, "umask; touch /tmp/f; stat -c %a /tmp/f")
    assert out.split() == ["0027", "640"]


def test_capabilities_all_five_sets(runner: Runner, bundle: Bundle) -> None:
    caps = ["CAP_CHOWN", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    bundle.process["capabilities"] = {
        "bounding": caps + ["CAP_SYS_CHROOT"],
        "effective": caps,
        "permitted": caps,
        "inheritable": caps,
        "ambient": ["CAP_NET_BIND_SERVICE"],
    }
    out = run_sh(runner, bundle, "grep Cap /proc/self/status")
    got = {ln.split(":")[0]: int(ln.split()[1], 16) for ln in out.strip().splitlines()}

    def mask(names: list[str]) -> int:
        return sum(1 << CAP_NUMBERS[n] for n in names)

    assert got == {
        "CapInh": mask(caps),
        "CapPrm": mask(caps),
        "CapEff": mask(caps),
        "CapBnd": mask(caps + ["CAP_SYS_CHROOT"]),
        "CapAmb": mask(["CAP_NET_BIND_SERVICE"]),
    }


def test_capabilities_ambient_survive_non_root_user(runner: Runner, bundle: Bundle) -> None:
    use_full_mappings(runner, bundle)
    bundle.process["user"] = {"uid": 1000, "gid": 1000}
    caps = ["CAP_NET_BIND_SERVICE"]
    bundle.process["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted",
                                                          "inheritable", "ambient")}
    out = run_sh(runner, bundle, "grep -E 'Cap(Eff|Amb)' /proc/self/status")
    assert [int(ln.split()[1], 16) for ln in out.strip().splitlines()] == [1 << 10, 1 << 10]


def test_rlimits(runner: Runner, bundle: Bundle) -> None:
    bundle.process["rlimits"] = [
        {"type": "RLIMIT_NOFILE", "soft": 256, "hard": 512},
        {"type": "RLIMIT_CORE", "soft": 0, "hard": 0},
    ]
    out = run_sh(runner, bundle, "ulimit -n; ulimit -Hn; ulimit -c")
    assert out.split() == ["256", "512", "0"]


@pytest.mark.parametrize("nnp", [True, False])
def test_no_new_privileges(runner: Runner, bundle: Bundle, nnp: bool) -> None:
    bundle.process["noNewPrivileges"] = nnp
    out = run_sh(runner, bundle, "grep NoNewPrivs /proc/self/status")
    assert out.split() == ["NoNewPrivs:", "1" if nnp else "0"]


def test_oom_score_adj(runner: Runner, bundle: Bundle) -> None:
    bundle.process["oomScoreAdj"] = 123
    assert run_sh(runner, bundle, "cat /proc/self/oom_score_adj").strip() == "123"


@pytest.mark.parametrize(
    ("ns", "key", "value"),
    [("network", "net.ipv4.ip_forward", "1"), ("ipc", "kernel.shmmax", "12345678")],
)
def test_sysctl(runner: Runner, bundle: Bundle, ns: str, key: str, value: str) -> None:
    bundle.add_namespace(ns)
    bundle.linux["sysctl"] = {key: value}
    out = run_sh(runner, bundle, f"cat /proc/sys/{key.replace('.', '/')}")
    assert out.strip() == value


def test_masked_paths(runner: Runner, bundle: Bundle) -> None:
    bundle.add_file("/etc/secret", "s3cret\n")
    bundle.add_file("/etc/secretdir/inner", "hidden\n")
    bundle.linux["maskedPaths"] = ["/etc/secret", "/etc/secretdir", "/proc/kcore", "/does/not/exist"]
    out = run_sh(runner, bundle, "echo [$(cat /etc/secret)]; echo [$(ls -A /etc/secretdir)]; "
                                 "echo [$(head -c 4 /proc/kcore | wc -c)]")
    assert out.split() == ["[]", "[]", "[0]"]


def test_readonly_paths(runner: Runner, bundle: Bundle) -> None:
    bundle.add_file("/etc/rodir/file", "x\n")
    bundle.linux["readonlyPaths"] = ["/etc/rodir", "/does/not/exist"]
    out = run_sh(runner, bundle, "touch /etc/rodir/new 2>&1 && echo wrote; cat /etc/rodir/file; "
                                 "touch /etc/rw-ok && echo rw-ok")
    assert "Read-only file system" in out
    assert "wrote" not in out
    assert "x" in out.split()
    assert "rw-ok" in out


def test_root_readonly(runner: Runner, bundle: Bundle) -> None:
    bundle.config["root"]["readonly"] = True
    bundle.add_mount("/tmp", "tmpfs", "tmpfs", ["nosuid", "nodev", "mode=1777"])
    out = run_sh(runner, bundle, "touch /x 2>&1 || echo ro-ok; touch /tmp/y && echo tmp-ok")
    assert "Read-only file system" in out and "ro-ok" in out
    assert "tmp-ok" in out
    assert not (bundle.rootfs / "x").exists()


def test_tmpfs_bind_and_ro_bind(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    rw = workdir / "rw-src"
    ro = workdir / "ro-src"
    for d in (rw, ro):
        d.mkdir()
        (d / "hello").write_text(f"from {d.name}\n")
        os.chmod(d / "hello", 0o666)
        os.chmod(d, 0o777)
    single = workdir / "single-file"
    single.write_text("single\n")
    os.chmod(single, 0o644)
    bundle.add_mount("/mnt/t", "tmpfs", "tmpfs", ["nosuid", "size=1m", "mode=700"])
    bundle.add_mount("/mnt/rw", "bind", str(rw), ["rbind", "rw"])
    bundle.add_mount("/mnt/ro", "bind", str(ro), ["bind", "ro"])
    bundle.add_mount("/etc/single", "none", str(single), ["bind", "ro"])
    script = (
        "grep ' /mnt/t ' /proc/mounts; stat -c %a /mnt/t; "
        "cat /mnt/rw/hello; echo written > /mnt/rw/new; "
        "cat /mnt/ro/hello; touch /mnt/ro/nope 2>&1 || echo ro-refused; cat /etc/single"
    )
    out = run_sh(runner, bundle, script)
    lines = out.strip().splitlines()
    assert lines[0].split()[2] == "tmpfs" and "size=1024k" in lines[0]
    assert lines[1] == "700"
    assert "from rw-src" in out and "from ro-src" in out
    assert "ro-refused" in out and "single" in lines
    assert (rw / "new").read_text() == "written\n"
    assert not (ro / "nope").exists()
    assert mounts_under([workdir]) == []


def test_mount_propagation_rslave(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    # A shared tmpfs on the host; the container binds it rslave and must see a mount made on
    # the host after the container started.
    src = workdir / "shared"
    src.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src)], check=True)
    try:
        subprocess.run(["mount", "--make-shared", str(src)], check=True)
        (src / "sub").mkdir()
        os.chmod(src, 0o777)
        bundle.add_mount("/mnt/p", "bind", str(src), ["rbind", "rslave"])
        bundle.sh("touch /tmp/ready; while [ ! -e /mnt/p/sub/marker ]; do sleep 0.05; done; "
                  "grep ' /mnt/p/sub ' /proc/self/mountinfo")
        cid = runner.new_id()
        out = workdir / "prop.out"
        runner.create(cid, bundle, stdout=out).ok()
        runner.start(cid).ok()
        deadline = time.monotonic() + 20
        while not (bundle.rootfs / "tmp" / "ready").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(src / "sub")], check=True)
        (src / "sub" / "marker").write_text("m")
        assert runner.wait_status(cid, "stopped") == "stopped"
        runner.delete(cid).ok()
        assert " /mnt/p/sub " in out.read_text()
    finally:
        subprocess.run(["umount", "-l", str(src / "sub")], check=False, capture_output=True)
        subprocess.run(["umount", "-l", str(src)], check=False, capture_output=True)


@pytest.mark.parametrize("prop", ["shared", "slave", "private"])
def test_rootfs_propagation(runner: Runner, bundle: Bundle, prop: str,
                            xfail_runc: Callable[[str], None]) -> None:
    bundle.linux["rootfsPropagation"] = prop
    out = run_sh(runner, bundle, "awk '$5 == \"/\"' /proc/self/mountinfo")
    fields = out.split(" - ")[0].split()[6:]
    tags = [f.split(":")[0] for f in fields]
    if prop == "shared":
        xfail_runc("runc 1.1.5 leaves the container's / without a peer group")
        assert "shared" in tags, out
    elif prop == "private":
        assert tags == [], out
    else:
        # the host's / is private here, so a slave root has no master to show: not shared
        assert "shared" not in tags, out


def test_default_devices_and_fd_links(runner: Runner, bundle: Bundle) -> None:
    out = run_sh(
        runner, bundle,
        "for d in null zero full random urandom tty; do [ -c /dev/$d ] && echo $d; done; "
        "for l in fd stdin stdout stderr; do readlink /dev/$l; done; [ -e /dev/ptmx ] && echo ptmx; "
        "echo x > /dev/null && head -c 3 /dev/zero | wc -c",
    )
    lines = out.split()
    assert lines[:6] == ["null", "zero", "full", "random", "urandom", "tty"]
    assert lines[6:10] == ["/proc/self/fd", "/proc/self/fd/0", "/proc/self/fd/1", "/proc/self/fd/2"]
    assert lines[10:] == ["ptmx", "3"]


def test_linux_devices(runner: Runner, bundle: Bundle) -> None:
    # /dev/fuse exists on the host: root mknods it, a rootless runtime bind-mounts it
    if not os.path.exists("/dev/fuse"):
        pytest.skip("host has no /dev/fuse")
    bundle.linux["devices"] = [
        {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o666, "uid": 0, "gid": 0}
    ]
    bundle.linux.setdefault("resources", {})["devices"] = [{"allow": True, "access": "rwm"}]
    out = run_sh(runner, bundle, "stat -c '%F %t %T' /dev/fuse")
    assert out.strip() == "character special file a e5"


def test_env_and_cwd(runner: Runner, bundle: Bundle) -> None:
    bundle.add_dir("/work/here")
    bundle.process["env"] += ["FOO=bar baz", "EMPTY="]
    bundle.process["cwd"] = "/work/here"
    out = run_sh(runner, bundle, 'pwd; echo "[$FOO]"; echo "[${EMPTY-unset}]"')
    assert out.splitlines() == ["/work/here", "[bar baz]", "[]"]


def test_args0_resolved_in_container_path(runner: Runner, bundle: Bundle) -> None:
    bundle.add_file("/opt/tools/hello-tool", "#!/bin/sh\necho hello-from-path \"$@\"\n", mode=0o755)
    bundle.process["env"] = [e for e in bundle.process["env"] if not e.startswith("PATH=")]
    bundle.process["env"].append("PATH=/nonexistent:/opt/tools:/bin")
    bundle.set_args("hello-tool", "arg1")
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout.strip() == "hello-from-path arg1"


def test_join_namespaces_of_another_container(runner: Runner, make_bundle: Callable[..., Bundle]) -> None:
    first = make_bundle("first")
    first.config["hostname"] = "first-host"
    first.add_namespace("network")
    first.sh("sleep 1000")
    a = runner.new_id("nsa")
    runner.run(a, first, "-d").ok()
    pid = runner.state(a)["pid"]

    second = make_bundle("second")
    second.config.pop("hostname", None)  # setting it would rename the joined uts namespace
    second.add_namespace("uts", f"/proc/{pid}/ns/uts")
    second.add_namespace("network", f"/proc/{pid}/ns/net")
    if runner.rootless:
        # namespaces owned by the first container's user namespace: join that one too
        second.add_namespace("user", f"/proc/{pid}/ns/user")
    second.sh("hostname; readlink /proc/self/ns/net")
    out = runner.run(runner.new_id("nsb"), second).ok().stdout.split()
    assert out[0] == "first-host"
    assert out[1] == os.readlink(f"/proc/{pid}/ns/net")
    runner.delete(a, "--force").ok()


def test_join_named_netns(runner: Runner, bundle: Bundle) -> None:
    if runner.rootless:
        pytest.skip("an unprivileged user cannot join a netns owned by the host's user namespace")
    name = f"pyouki-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        bundle.add_namespace("network", f"/run/netns/{name}")
        out = run_sh(runner, bundle, "readlink /proc/self/ns/net")
        assert out.strip() == f"net:[{os.stat(f'/run/netns/{name}').st_ino}]"
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


def test_seccomp_errno(runner: Runner, bundle: Bundle) -> None:
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1}],
    }
    out = run_sh(runner, bundle, "mkdir /tmp/blocked 2>&1; touch /tmp/file && echo touch-ok")
    assert "Operation not permitted" in out
    assert "touch-ok" in out
    assert not (bundle.rootfs / "tmp" / "blocked").exists()


def test_seccomp_argument_condition(runner: Runner, bundle: Bundle) -> None:
    # kill(pid, SIGUSR1) is refused with EPERM; kill(pid, 0) passes the condition
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{
            "names": ["kill"],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1,
            "args": [{"index": 1, "value": 10, "op": "SCMP_CMP_EQ"}],
        }],
    }
    script = "trap 'echo caught' USR1; kill -0 $$ && echo zero-ok; kill -USR1 $$ 2>&1; true"
    out = run_sh(runner, bundle, script)
    assert "zero-ok" in out
    assert "caught" not in out
    assert "Operation not permitted" in out or "not permitted" in out.lower()


def test_seccomp_kill_process(runner: Runner, bundle: Bundle) -> None:
    bundle.linux["seccomp"] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["ioprio_get"], "action": "SCMP_ACT_KILL_PROCESS"}],
    }
    bundle.sh("echo before; exec ionice")
    r = runner.run(runner.new_id(), bundle)
    assert "before" in r.stdout
    assert r.returncode == 128 + 31, r  # SIGSYS
