"""The phrases engines look for in a runtime's errors, the exit statuses they rely on, and the fds
they pass (socket activation, --preserve-fds), against real containers, as root and rootless.

Each phrase comes from pyouki.enginewords, where the engine matching it is named. The same
assertions hold for runc (``PYOUKI_TEST_RUNTIME=/usr/sbin/runc``): they are runc's words.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from harness import Bundle, Result, Runner, RuntimeInfo, assert_failed_cleanly, read_json_log

from pyouki.enginewords import (
    EXEC_NOT_FOUND,
    EXISTS,
    NO_SUCH_FILE,
    NOT_EXIST,
    NOT_RUNNING,
    PERMISSION_DENIED,
)

# runc's exit status for a failed exec (the command's own status is passed on otherwise)
EXEC_FAILED = 255


def stopped(runner: Runner, bundle: Bundle) -> str:
    """A container whose process has exited, kept (``run --keep``); its id."""
    bundle.sh("true")
    cid = runner.new_id()
    runner.run(cid, bundle, "--keep").ok()
    assert runner.status(cid) == "stopped"
    return cid


def sleeping(runner: Runner, bundle: Bundle) -> str:
    """A running container (``run -d`` of a long sleep); its id."""
    bundle.sh("sleep 1000")
    cid = runner.new_id()
    runner.run(cid, bundle, "-d").ok()
    return cid


def logged_error(log: Path) -> str:
    """The last error message of a --log-format json file (what containerd and podman report)."""
    msgs = [e["msg"] for e in read_json_log(log) if e.get("level") == "error"]
    assert msgs, f"no error logged in {log}"
    return str(msgs[-1])


# --- the container is gone or stopped ---------------------------------------------------------


def test_kill_of_stopped_container_says_not_running(runner: Runner, bundle: Bundle) -> None:
    # containerd's shim and CRI-O take "container not running" for "already stopped"
    cid = stopped(runner, bundle)
    r = runner.kill(cid, "KILL")
    assert r.returncode == 1, r
    assert NOT_RUNNING in r.stderr, r
    runner.delete(cid).ok()


@pytest.mark.parametrize("args", [("--all", "9"), ("--all", "KILL"), ("-a", "0")])
def test_kill_all_of_stopped_container_succeeds(runner: Runner, bundle: Bundle, args: tuple[str, ...]) -> None:
    # CRI deletes every exited task with `kill --all ID 9`: runc answers 0
    cid = stopped(runner, bundle)
    runner.kill(cid, *args).ok()
    runner.delete(cid).ok()
    assert runner.state_entries() == []


@pytest.mark.parametrize("verb", ["state", "start", "kill", "delete", "pause", "resume", "ps", "events", "update"])
def test_unknown_container_says_does_not_exist(runtime: RuntimeInfo, runner: Runner, verb: str) -> None:
    # moby's libcontainerd and containerd's shim take "container does not exist" for "not found"
    cid = runner.new_id("ghost")
    r = runner.cmd(verb, cid)
    assert r.returncode == 1, r
    assert NOT_EXIST in r.stderr, r
    assert_failed_cleanly(runtime, r, cid)


def test_create_of_existing_id_says_it_exists(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    cid = stopped(runner, bundle)
    r = runner.create(cid, bundle)
    assert r.returncode == 1, r
    assert EXISTS in r.stderr, r
    assert_failed_cleanly(runtime, r, cid)
    assert runner.status(cid) == "stopped", "the first container must be intact"
    runner.delete(cid).ok()


def test_exec_in_unknown_container_exits_255(runner: Runner) -> None:
    r = runner.cmd("exec", runner.new_id("ghost"), "true")
    assert r.returncode == EXEC_FAILED, r
    assert NOT_EXIST in r.stderr, r


def test_exec_in_stopped_container_exits_255(runner: Runner, bundle: Bundle) -> None:
    cid = stopped(runner, bundle)
    r = runner.cmd("exec", cid, "true")
    assert r.returncode == EXEC_FAILED, r
    assert "stopped" in r.stderr, r
    runner.delete(cid).ok()


def test_an_unforeseen_exec_error_still_exits_255(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Not only pyouki's own errors: an exception exec did not foresee is still runc's failed exec
    (255, `exec failed:`), not the CLI's last resort (status 1), or engines take it for the command's."""
    from pyouki.cli import handlers

    def broken(*_: object) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(handlers, "_exec", broken)
    assert handlers.cmd_exec({}, {}, {}) == EXEC_FAILED
    assert capsys.readouterr().err == "pyouki: exec failed: input/output error\n"


def test_pause_and_update_of_stopped_container_say_not_running(runner: Runner, bundle: Bundle,
                                                               is_pyouki: bool) -> None:
    cid = stopped(runner, bundle)
    verbs = [("pause", cid), ("update", "--pids-limit", "10", cid)]
    if is_pyouki:
        # every verb refuses a stopped container through one guard (state.Container), in the
        # same words (runc's events says "container with id X is not running")
        verbs.append(("events", "--stats", cid))
    for args in verbs:
        r = runner.cmd(*args)
        assert r.returncode == 1, r
        assert NOT_RUNNING in r.stderr, r
    runner.delete(cid).ok()


# --- a process that cannot be started -----------------------------------------------------------

# args[0] -> the phrase that makes docker and podman report 127 ("not found") or 126 (cannot run)
UNRUNNABLE = [
    ("no-such-cmd", EXEC_NOT_FOUND),
    ("/bin/no-such-cmd", NO_SUCH_FILE),
    ("/etc/passwd", PERMISSION_DENIED),
    ("/etc", PERMISSION_DENIED),
]


@pytest.mark.parametrize(("args0", "phrase"), UNRUNNABLE)
def test_create_of_unrunnable_command_names_it_in_runc_words(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                             args0: str, phrase: str) -> None:
    bundle.set_args(args0, "x")
    log = runner.rundir / "create.json"
    r = runner.cmd("--log", str(log), "--log-format", "json", "create", "--bundle", str(bundle.path), runner.new_id())
    assert r.returncode == 1, r
    # moby wants the command's name next to the phrase; podman and containerd read the log's msg
    for text in (r.stderr, logged_error(log)):
        assert phrase in text and f'exec: "{args0}"' in text, text
    assert_failed_cleanly(runtime, r, "process.args[0]")
    assert runner.state_entries() == []


@pytest.mark.parametrize(("args0", "phrase"), UNRUNNABLE)
def test_exec_of_unrunnable_command_exits_255_in_runc_words(runner: Runner, bundle: Bundle, args0: str,
                                                            phrase: str) -> None:
    cid = sleeping(runner, bundle)
    log = runner.rundir / "exec.json"
    r = runner.cmd("--log", str(log), "--log-format", "json", "exec", cid, args0)
    assert r.returncode == EXEC_FAILED, r
    for text in (r.stderr, logged_error(log)):
        assert phrase in text and f'exec: "{args0}"' in text, text
    assert runner.status(cid) == "running"
    runner.delete(cid, "--force").ok()


# --- socket activation and --preserve-fds -------------------------------------------------------


def _shared_file(workdir: Path, name: str, content: str) -> int:
    """An inheritable read fd on a new file, at a high number clear of the test's own fds."""
    path = workdir / name
    path.write_text(content)
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_RDONLY)
    high = os.dup2(fd, 60 + len(name))
    os.close(fd)
    os.set_inheritable(high, True)
    return high


def run_activated(runner: Runner, bundle: Bundle, listen: int, preserved: int | None = None,
                  env: dict[str, str] | None = None, extra: tuple[str, ...] = ()) -> Result:
    """``run`` as systemd starts a socket-activated service: fd ``listen`` at 3 and LISTEN_FDS=1,
    LISTEN_PID=<the runtime's pid>; ``preserved`` (with --preserve-fds 1) follows at 4."""
    cid = runner.new_id()
    redirs = f"3<&{listen} {listen}<&-"
    args = ["run", "--bundle", str(bundle.path), *extra]
    if preserved is not None:
        redirs += f" 4<&{preserved} {preserved}<&-"
        args += ["--preserve-fds", "1"]
    argv = ["/bin/bash", "-c", f'export LISTEN_PID=$$; exec "$@" {redirs}', "bash", *runner.argv([*args, cid])]
    fds = (listen,) if preserved is None else (listen, preserved)
    kw: dict = {"user": runner.user.uid, "group": runner.user.gid, "extra_groups": []} if runner.rootless else {}
    # files, not pipes: a detached container keeps the runtime's stdout open
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run(argv, env={**runner.env(), "LISTEN_FDS": "1", **(env or {})}, pass_fds=fds,
                           stdin=subprocess.DEVNULL, stdout=out, stderr=err, timeout=60, cwd=runner.workdir, **kw)
        out.seek(0)
        err.seek(0)
        return Result(argv, p.returncode, out.read().decode(), err.read().decode())


def test_listen_fds_reach_the_container(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    # what sd_listen_fds() checks: LISTEN_PID is the process's own pid (1), LISTEN_FDS fds from 3
    bundle.sh('[ "$LISTEN_PID" = "$$" ] && echo pid-matches; echo "fds=$LISTEN_FDS"; cat <&3')
    fd = _shared_file(workdir, "listen", "through-listen-fd\n")
    try:
        r = run_activated(runner, bundle, fd)
    finally:
        os.close(fd)
    assert r.returncode == 0, r
    assert r.stdout.split("\n")[:3] == ["pid-matches", "fds=1", "through-listen-fd"], r


def test_listen_fdnames_and_preserved_fds_follow(runner: Runner, bundle: Bundle, workdir: Path,
                                                xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("runc 1.1.5 does not pass LISTEN_FDNAMES on")
    bundle.sh('echo "names=$LISTEN_FDNAMES"; cat <&3; cat <&4')
    listen = _shared_file(workdir, "listen", "listen-fd\n")
    preserved = _shared_file(workdir, "kept", "preserved-fd\n")
    try:
        r = run_activated(runner, bundle, listen, preserved, env={"LISTEN_FDNAMES": "web"})
    finally:
        os.close(listen)
        os.close(preserved)
    assert r.returncode == 0, r
    assert r.stdout.split("\n")[:3] == ["names=web", "listen-fd", "preserved-fd"], r


def test_listen_fds_are_not_for_exec(runner: Runner, bundle: Bundle, workdir: Path) -> None:
    # runc passes them to the container's first process only: an exec'd process gets neither
    bundle.sh("touch /tmp/ready; exec sleep 1000")
    fd = _shared_file(workdir, "listen", "x\n")
    try:
        r = run_activated(runner, bundle, fd, extra=("-d",))
    finally:
        os.close(fd)
    assert r.returncode == 0, r
    cid = r.args[-1]
    out = runner.cmd("exec", cid, "sh", "-c", 'echo "fds=${LISTEN_FDS:-none}"').ok().stdout
    assert out.strip() == "fds=none"
    runner.delete(cid, "--force").ok()


def test_listen_fds_for_another_pid_are_ignored(runner: Runner, bundle: Bundle) -> None:
    bundle.sh('echo "fds=${LISTEN_FDS:-none}"; [ -e /proc/self/fd/3 ] && echo fd3-open; true')
    env = {**runner.env(), "LISTEN_FDS": "1", "LISTEN_PID": "1"}
    r = runner.cmd("run", "--bundle", str(bundle.path), runner.new_id(), env=env).ok()
    assert r.stdout.strip() == "fds=none", r


@pytest.mark.parametrize("verb", ["run", "create", "exec"])
def test_preserve_fds_refuses_fds_that_are_not_open(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                                    verb: str) -> None:
    # 10: more than runc's own open fds, so runc meets a closed one too
    if verb == "exec":
        cid = sleeping(runner, bundle)
        r = runner.cmd("exec", "--preserve-fds", "10", cid, "true")
        assert r.returncode == EXEC_FAILED, r
        runner.delete(cid, "--force").ok()
    else:
        r = runner.cmd(verb, "--bundle", str(bundle.path), "--preserve-fds", "10", runner.new_id())
        assert_failed_cleanly(runtime, r, "--preserve-fds")
    assert "unable to stat preserved-fd" in r.stderr, r
    assert runner.state_entries() == []


def test_preserve_fds_refuses_negative(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                       xfail_runc: Callable[[str], None]) -> None:
    xfail_runc("runc 1.1.5 takes a negative --preserve-fds as 0")
    r = runner.run(runner.new_id(), bundle, "--preserve-fds", "-1")
    assert_failed_cleanly(runtime, r, "--preserve-fds", "-1")
    assert runner.state_entries() == []


def test_log_file_is_not_a_preserved_fd(runtime: RuntimeInfo, runner: Runner, bundle: Bundle,
                                        xfail_runc: Callable[[str], None]) -> None:
    # the runtime's own --log file may land on fd 3: it is not the caller's fd to pass on
    xfail_runc("runc's own fds count as preserved ones")
    log = runner.rundir / "log.json"
    r = runner.cmd("--log", str(log), "--log-format", "json", "run", "--bundle", str(bundle.path),
                   "--preserve-fds", "1", runner.new_id())
    assert_failed_cleanly(runtime, r, "--preserve-fds", "preserved-fd 0 (of 1)")
    assert runner.state_entries() == []
