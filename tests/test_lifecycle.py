"""Lifecycle commands: create/start/state/kill/delete/run/list/spec, as root and rootless."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Runner, pid_alive, wait_pid_gone

# A container that runs until the test creates /tmp/go in its rootfs (no signals, no timing).
WAIT_FOR_GO = "touch /tmp/started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo done"


def wait_file(path: Path, timeout: float = 20.0) -> bool:
    """Poll for a file to appear."""
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return path.exists()


def test_run_prints_output_and_returns_exit_code(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("echo hello from inside; exit 3")
    r = runner.run(runner.new_id(), bundle)
    assert r.returncode == 3, r
    assert "hello from inside" in r.stdout
    assert runner.state_entries() == []


def test_run_exit_zero(runner: Runner, bundle: Bundle) -> None:
    r = runner.run(runner.new_id(), bundle).ok()
    assert r.stdout == ""


def test_create_start_state_kill_delete(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    bundle.sh(WAIT_FOR_GO)
    cid = runner.new_id()
    pidfile = runner.rundir / "pid"
    out = workdir / "container.out"
    runner.create(cid, bundle, "--pid-file", str(pidfile), stdout=out).ok()

    st = runner.state(cid)
    assert st["status"] == "created"
    assert st["id"] == cid
    assert st["ociVersion"]
    assert os.path.realpath(st["bundle"]) == os.path.realpath(bundle.path)
    pid = st["pid"]
    assert pid > 0 and pid_alive(pid)
    assert int(pidfile.read_text()) == pid
    # create must not run the user process
    assert not (bundle.rootfs / "tmp" / "started").exists()
    assert cid in runner.list_ids()

    runner.start(cid).ok()
    assert wait_file(bundle.rootfs / "tmp" / "started")
    assert runner.status(cid) == "running"
    assert runner.state(cid)["pid"] == pid

    assert runner.start(cid).returncode != 0, "start twice must fail"
    assert runner.delete(cid).returncode != 0, "delete of a running container needs --force"
    assert runner.status(cid) == "running"

    (bundle.rootfs / "tmp" / "go").touch()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert wait_pid_gone(pid)
    assert runner.kill(cid, "KILL").returncode != 0, "kill of a stopped container must fail"
    assert runner.start(cid).returncode != 0, "start of a stopped container must fail"

    runner.delete(cid).ok()
    assert runner.status(cid) is None
    assert runner.state_entries() == []
    assert "done" in out.read_text()
    assert runner.leftover_pids() == []


def test_delete_created_container(runner: Runner, bundle: Bundle) -> None:
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    pid = runner.state(cid)["pid"]
    runner.delete(cid).ok()
    assert wait_pid_gone(pid)
    assert runner.status(cid) is None
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


def test_delete_force_running(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    pid = runner.state(cid)["pid"]
    assert runner.status(cid) == "running"
    runner.delete(cid, "--force").ok()
    assert wait_pid_gone(pid)
    assert runner.status(cid) is None
    assert runner.state_entries() == []
    assert runner.leftover_pids() == []


@pytest.mark.parametrize("sig", ["KILL", "SIGKILL", "9"])
def test_kill_signal_spellings(runner: Runner, bundle: Bundle, sig: str) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "--detach").ok()
    pid = runner.state(cid)["pid"]
    runner.kill(cid, sig).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert wait_pid_gone(pid)
    runner.delete(cid).ok()


def test_kill_default_is_term(runner: Runner, bundle: Bundle) -> None:
    # PID 1 of a pid namespace ignores signals it has no handler for: the trap catches TERM.
    bundle.sh(
        "trap 'echo term > /tmp/got; exit 0' TERM; touch /tmp/ready; while :; do sleep 0.05; done"
    )
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    assert wait_file(bundle.rootfs / "tmp" / "ready")
    runner.kill(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert (bundle.rootfs / "tmp" / "got").read_text().strip() == "term"
    runner.delete(cid).ok()


def test_kill_numbered_user_signal(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("trap 'echo usr1 > /tmp/got; exit 0' USR1; touch /tmp/ready; while :; do sleep 0.05; done")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    assert wait_file(bundle.rootfs / "tmp" / "ready")
    runner.kill(cid, str(int(signal.SIGUSR1))).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    assert (bundle.rootfs / "tmp" / "got").read_text().strip() == "usr1"
    runner.delete(cid).ok()


def test_kill_all(runner: Runner, bundle: Bundle, xfail_runc: Callable[[str], None]) -> None:
    if runner.rootless:
        xfail_runc("kill --all needs the container's cgroup, which rootless runc cannot create on cgroup v1")
    # The shell forks a background child; --all must reach it as well.
    bundle.sh("sleep 1000 & echo $! > /tmp/child; touch /tmp/ready; wait")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    assert wait_file(bundle.rootfs / "tmp" / "ready")
    runner.kill(cid, "--all", "KILL").ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    deadline = time.monotonic() + 10
    while runner.leftover_pids() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert runner.leftover_pids() == []
    runner.delete(cid).ok()


def test_state_of_crashed_container_is_stopped(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    pid = runner.state(cid)["pid"]
    # Killed behind the runtime's back: state must derive "stopped" from the facts.
    os.kill(pid, signal.SIGKILL)
    assert wait_pid_gone(pid)
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert runner.state_entries() == []


def test_run_keep_leaves_stopped_container(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("exit 4")
    cid = runner.new_id()
    r = runner.run(cid, bundle, "--keep")
    assert r.returncode == 4, r
    assert runner.status(cid) == "stopped"
    runner.delete(cid).ok()
    assert runner.state_entries() == []


def test_run_returns_137_after_kill(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("touch /tmp/ready; exec sleep 1000")
    cid = runner.new_id()
    runner.ids.append(cid)
    proc = runner.popen("run", "--bundle", str(bundle.path), cid, stdout=subprocess.DEVNULL)
    try:
        assert wait_file(bundle.rootfs / "tmp" / "ready")
        assert runner.wait_status(cid, "running") == "running"
        runner.kill(cid, "KILL").ok()
        assert proc.wait(timeout=30) == 128 + 9
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert runner.status(cid) is None, "run without --keep deletes the container"


def test_run_forwards_sigterm(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("trap 'echo got-term; exit 7' TERM; touch /tmp/ready; while :; do sleep 0.05; done")
    cid = runner.new_id()
    proc = runner.popen("run", "--bundle", str(bundle.path), cid)
    try:
        assert wait_file(bundle.rootfs / "tmp" / "ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 7, (out, err)
        assert b"got-term" in out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert runner.state_entries() == []


def test_run_with_pid_file(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("echo $$ > /tmp/inner; sleep 1000")
    cid = runner.new_id()
    pidfile = runner.rundir / "run.pid"
    runner.run(cid, bundle, "-d", "--pid-file", str(pidfile)).ok()
    pid = int(pidfile.read_text())
    assert pid == runner.state(cid)["pid"]
    assert pid_alive(pid)
    runner.delete(cid, "-f").ok()
    assert wait_pid_gone(pid)


def test_list_formats(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    a, b = runner.new_id("la"), runner.new_id("lb")
    runner.create(a, bundle).ok()
    runner.run(b, bundle, "-d").ok()
    assert sorted(runner.list_ids()) == sorted([a, b])

    entries = json.loads(runner.cmd("list", "--format", "json").ok().stdout)
    by_id = {e["id"]: e for e in entries}
    assert by_id[a]["status"] == "created"
    assert by_id[b]["status"] == "running"
    assert by_id[a]["pid"] > 0

    table = runner.cmd("list").ok().stdout.splitlines()
    assert table[0].split()[:2] == ["ID", "PID"]
    assert any(line.split()[0] == a and "created" in line for line in table[1:])
    assert any(line.split()[0] == b and "running" in line for line in table[1:])

    runner.delete(a).ok()
    runner.delete(b, "--force").ok()
    assert runner.list_ids() == []


def test_list_empty_root(runner: Runner) -> None:
    r = runner.cmd("list", "--format", "json").ok()
    assert json.loads(r.stdout or "null") in (None, [])


def test_default_root(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("sleep 1000")
    cid = runner.new_id("dflt")
    default = Path(runner.runtime.default_root(runner.mode, str(runner.xdg)))
    r = runner.cmd("run", "-d", "--bundle", str(bundle.path), cid, root=None).ok()
    assert r.returncode == 0
    assert (default / cid).is_dir(), f"state for {cid} not in {default}"
    assert runner.status(cid, root=None) == "running"
    assert cid in runner.list_ids(root=None)
    runner.cmd("delete", "--force", cid, root=None).ok()
    assert not (default / cid).exists()
    assert runner.state_entries() == [], "--root must not have been used"


def test_spec_writes_config(runner: Runner, workdir: Path) -> None:
    d = workdir / "specdir"
    d.mkdir()
    if runner.owner:
        os.chown(d, *runner.owner)
    args = ["spec", "--rootless"] if runner.rootless else ["spec"]
    runner.cmd(*args, "--bundle", str(d), root=None).ok()
    cfg = json.loads((d / "config.json").read_text())
    assert cfg["ociVersion"].startswith("1.")
    assert cfg["root"]["path"] == "rootfs"
    assert cfg["process"]["args"]
    nss = {ns["type"] for ns in cfg["linux"]["namespaces"]}
    assert {"pid", "mount", "ipc", "uts"} <= nss
    if runner.rootless:
        assert "user" in nss
        assert cfg["linux"]["uidMappings"] == [{"containerID": 0, "hostID": runner.user.uid, "size": 1}]
        assert cfg["linux"]["gidMappings"] == [{"containerID": 0, "hostID": runner.user.gid, "size": 1}]
        assert "network" not in nss
    # spec refuses to overwrite an existing config.json
    assert runner.cmd(*args, "--bundle", str(d), root=None).returncode != 0


def _open_inheritable(workdir: Path, content: str) -> int:
    path = workdir / "shared-file"
    path.write_text(content)
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_RDONLY)
    os.set_inheritable(fd, True)
    # a high number keeps it clear of the low fds the test process already uses
    high = os.dup2(fd, 60)
    os.close(fd)
    return high


@pytest.mark.parametrize("preserve", [0, 1])
def test_preserve_fds(runner: Runner, bundle: Bundle, workdir: Path, preserve: int) -> None:
    bundle.sh("if [ -e /proc/self/fd/3 ]; then cat <&3; else echo no-fd-3; fi")
    fd = _open_inheritable(workdir, "payload-through-fd3\n")
    try:
        extra = ["--preserve-fds", str(preserve)] if preserve else []
        r = runner.run(runner.new_id(), bundle, *extra, fds={3: fd}).ok()
    finally:
        os.close(fd)
    if preserve:
        assert "payload-through-fd3" in r.stdout
    else:
        assert "no-fd-3" in r.stdout


def test_create_preserve_fds(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    bundle.sh("cat <&3")
    fd = _open_inheritable(workdir, "create-fd3\n")
    out = workdir / "c.out"
    cid = runner.new_id()
    try:
        runner.create(cid, bundle, "--preserve-fds", "1", stdout=out, fds={3: fd}).ok()
    finally:
        os.close(fd)
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert "create-fd3" in out.read_text()


def test_log_json_and_debug(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    log = runner.rundir / "log.json"
    cid = runner.new_id()
    runner.cmd("--log", str(log), "--log-format", "json", "--debug",
               "run", "--bundle", str(bundle.path), cid).ok()
    assert log.exists()
    for line in log.read_text().splitlines():
        entry = json.loads(line)
        assert {"level", "msg", "time"} <= set(entry)


def test_no_pivot(runner: Runner, bundle: Bundle) -> None:
    bundle.add_file("/only-in-rootfs", "marker\n")
    bundle.sh("cat /only-in-rootfs; [ -e /proc/self/mountinfo ] && echo proc-ok")
    r = runner.run(runner.new_id(), bundle, "--no-pivot").ok()
    assert r.stdout.split() == ["marker", "proc-ok"]


def test_no_new_keyring(runner: Runner, bundle: Bundle) -> None:
    bundle.sh("echo keyring-ok")
    cid = runner.new_id()
    out = runner.workdir / "out"
    runner.create(cid, bundle, "--no-new-keyring", stdout=out).ok()
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid).ok()
    assert "keyring-ok" in out.read_text()


def test_state_annotations(runner: Runner, bundle: Bundle) -> None:
    bundle.config["annotations"] = {"org.example.key": "value", "io.test/other": "2"}
    bundle.write()
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    st = runner.state(cid)
    assert st["annotations"] == {"org.example.key": "value", "io.test/other": "2"}
    assert set(st) >= {"ociVersion", "id", "status", "pid", "bundle"}
    runner.delete(cid).ok()


def test_version_and_help(runner: Runner) -> None:
    v = runner.cmd("--version", root=None).ok()
    assert "version" in v.stdout.lower()
    h = runner.cmd("--help", root=None).ok()
    for verb in ("create", "start", "state", "kill", "delete", "run", "list", "spec"):
        assert verb in h.stdout


def test_engine_minimal_environment(runner: Runner, bundle: Bundle) -> None:
    """Podman calls kill/delete with only XDG_RUNTIME_DIR set (empty for rootful)."""
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    pid = runner.state(cid)["pid"]
    env = {"XDG_RUNTIME_DIR": str(runner.xdg) if runner.rootless else ""}
    runner.kill(cid, "KILL", env=env).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    runner.delete(cid, env=env).ok()
    assert wait_pid_gone(pid)
    assert runner.state_entries() == []
