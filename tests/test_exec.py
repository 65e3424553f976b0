"""exec: another process in a running container, as root and rootless."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from harness import Bundle, Runner, RuntimeInfo, assert_failed_cleanly


def _running(runner: Runner, bundle: Bundle) -> str:
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    return cid


def test_exec_runs_in_the_container_and_returns_its_status(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", cid, "sh", "-c", "echo inside; hostname; cat /proc/1/cmdline | tr '\\0' ' '; exit 7")
    assert r.returncode == 7, r
    lines = r.stdout.splitlines()
    assert lines[0] == "inside"
    assert lines[1] == bundle.config.get("hostname")
    assert lines[2].startswith("sleep 1000"), "pid 1 of the exec'd process's namespace is the container's init"
    runner.delete(cid, "--force").ok()


def test_exec_flags_env_cwd_user(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", "--env", "FOO=bar", "--cwd", "/tmp", "--user", "65534:65534", cid,
                   "sh", "-c", 'echo "$FOO $(pwd) $(id -u):$(id -g)"')
    if runner.rootless:
        # a rootless container maps only the caller's id: 65534 does not exist inside
        assert r.returncode != 0
        assert "unmapped" in r.stderr or "65534" in r.stderr
    else:
        assert r.ok().stdout.strip() == "bar /tmp 65534:65534"
    r = runner.cmd("exec", "--env", "FOO=baz", "--cwd", "/tmp", cid, "sh", "-c", 'echo "$FOO $(pwd)"').ok()
    assert r.stdout.strip() == "baz /tmp"
    runner.delete(cid, "--force").ok()


def test_exec_process_file(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    process = {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["sh", "-c", "echo from-file $X; exit 3"],
               "env": ["PATH=/bin", "X=42"], "cwd": "/", "noNewPrivileges": True}
    path = runner.workdir / "process.json"
    path.write_text(json.dumps(process))
    os.chmod(path, 0o644)
    r = runner.cmd("exec", "--process", str(path), cid)
    assert r.returncode == 3, r
    assert r.stdout.strip() == "from-file 42"
    runner.delete(cid, "--force").ok()


# a --process file is checked as create checks config.json's process (config.check_process)
BAD_PROCESS = [
    ({"args": []}, "process.args: must not be empty"),
    ({"cwd": "tmp"}, "process.cwd: 'tmp' is not an absolute path"),
    ({"env": ["PATH=/bin", "NOEQUALS"]}, "process.env[1]: must be a string of the form KEY=VALUE"),
    ({"user": {"uid": 0, "gid": 0, "additionalGids": ["wheel"]}}, "process.user.additionalGids[0]: must be an integer"),
    ({"rlimits": [{"type": "RLIMIT_NOSUCH", "soft": 1, "hard": 1}]}, "process.rlimits[0].type: unknown rlimit"),
    ({"commandLine": "sh"}, "process.commandLine: windows only"),
]


@pytest.mark.parametrize(("change", "message"), BAD_PROCESS, ids=[m.split(":")[0] for _, m in BAD_PROCESS])
def test_exec_process_file_is_checked_like_config(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                  change: dict, message: str) -> None:
    if not runtime.is_pyouki:
        pytest.skip("pyouki's wording")
    cid = _running(runner, bundle)
    process = {"terminal": False, "user": {"uid": 0, "gid": 0}, "args": ["true"], "env": ["PATH=/bin"], "cwd": "/"}
    process.update(change)
    path = runner.workdir / "process.json"
    path.write_text(json.dumps(process))
    os.chmod(path, 0o644)
    r = runner.cmd("exec", "--process", str(path), cid)
    assert_failed_cleanly(runtime, r, message)
    assert runner.status(cid) == "running"
    runner.delete(cid, "--force").ok()


def test_exec_missing_command_is_a_clear_error(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    r = runner.cmd("exec", cid, "no-such-command")
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert_failed_cleanly(runtime, r, "process.args[0]", "not found")
    assert runner.status(cid) == "running"
    runner.delete(cid, "--force").ok()


def test_exec_in_stopped_container_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.sh("true")
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    assert runner.wait_status(cid, "stopped") == "stopped"
    r = runner.cmd("exec", cid, "true")
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert_failed_cleanly(runtime, r, cid)
    runner.delete(cid).ok()


def test_exec_detached_with_pid_file(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    pid_file = runner.xdg / "exec.pid"  # a directory the runtime's user may write to
    runner.cmd("exec", "--detach", "--pid-file", str(pid_file), cid, "sleep", "500").ok()
    pid = int(pid_file.read_text())
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [b"sleep", b"500"]
    init = runner.state(cid)["pid"]
    assert os.readlink(f"/proc/{pid}/ns/pid") == os.readlink(f"/proc/{init}/ns/pid")
    assert os.readlink(f"/proc/{pid}/ns/mnt") == os.readlink(f"/proc/{init}/ns/mnt")
    runner.delete(cid, "--force").ok()
    assert not os.path.exists(f"/proc/{pid}/cmdline") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"


def test_exec_does_not_leak_host_fds(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    fd = os.open("/etc/hostname", os.O_RDONLY)  # inheritable in the runtime: it must not reach the process
    os.set_inheritable(fd, True)
    try:
        r = runner.cmd("exec", cid, "ls", "/proc/self/fd", pass_fds=(fd,)).ok()
    finally:
        os.close(fd)
    assert sorted(int(x) for x in r.stdout.split()) == [0, 1, 2, 3]  # 3: ls's own directory fd
    runner.delete(cid, "--force").ok()


def test_exec_tty_under_a_pty(runner: Runner, bundle: Bundle) -> None:
    cid = _running(runner, bundle)
    argv = runner.argv(["exec", "-t", cid, "sh", "-c", "tty; exit 4"])
    inner = " ".join(f"'{a}'" for a in argv)
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True, timeout=60,
                       cwd=str(runner.workdir), env=runner.env(), stdin=subprocess.DEVNULL,
                       **runner._spawn_kwargs())
    assert r.returncode == 4, r
    assert "/dev/pts/" in r.stdout
    runner.delete(cid, "--force").ok()
