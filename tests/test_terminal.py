"""process.terminal: a pty inside the container, handed over --console-socket or relayed by `run`."""

from __future__ import annotations

import array
import os
import socket
import subprocess
import threading

import pytest
from harness import Bundle, Runner, RuntimeInfo


def _receive_master(listener: socket.socket, box: dict) -> None:
    conn, _ = listener.accept()
    with conn:
        fds = array.array("i")
        msg, ancdata, _, _ = conn.recvmsg(1024, socket.CMSG_LEN(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - (len(data) % fds.itemsize)])
        box["name"] = msg
        box["fd"] = fds[0] if fds else -1


def test_console_socket_receives_a_working_pty(runner: Runner, bundle: Bundle) -> None:
    """create --console-socket sends the pty master with SCM_RIGHTS, as conmon and the shim expect."""
    sock_path = runner.workdir / "console.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(sock_path))
    os.chmod(sock_path, 0o777)
    listener.listen(1)
    box: dict = {}
    thread = threading.Thread(target=_receive_master, args=(listener, box))
    thread.start()
    bundle.config["process"]["terminal"] = True
    bundle.config["process"]["consoleSize"] = {"height": 33, "width": 77}
    bundle.sh("tty; stty size; echo terminal-ok")
    cid = runner.new_id()
    runner.cmd("create", "--bundle", str(bundle.path), "--console-socket", str(sock_path), cid).ok()
    thread.join(10)
    listener.close()
    master = box["fd"]
    assert master >= 0, "no pty master was received"
    assert box["name"] == b"/dev/ptmx"
    runner.start(cid).ok()
    out = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    text = out.decode()
    assert "/dev/pts/0" in text
    assert "33 77" in text
    assert "terminal-ok" in text
    runner.cmd("delete", "--force", cid).ok()


def test_run_with_terminal_relays_to_the_callers_tty(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    """A foreground run with terminal: true and no socket uses the caller's terminal (under script)."""
    bundle.config["process"]["terminal"] = True
    bundle.sh("tty; echo relayed; exit 6")
    cid = runner.new_id()
    argv = runner.argv(["run", "--bundle", str(bundle.path), cid])
    inner = " ".join(f"'{a}'" for a in argv)
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True, timeout=60,
                       cwd=str(runner.workdir), env=runner.env(), stdin=subprocess.DEVNULL,
                       **runner._spawn_kwargs())
    assert "relayed" in r.stdout
    assert "/dev/pts/0" in r.stdout
    assert r.returncode == 6
    assert runner.state_entries() == []


def test_detached_terminal_without_socket_is_refused(runtime: RuntimeInfo, runner: Runner, bundle: Bundle) -> None:
    bundle.config["process"]["terminal"] = True
    bundle.sh("true")
    r = runner.cmd("create", "--bundle", str(bundle.path), runner.new_id())
    assert r.returncode != 0
    if runtime.is_pyouki:
        assert "process.terminal" in r.stderr
    assert runner.state_entries() == []



@pytest.mark.parametrize("mode", ["root"])  # a rootless config maps no user but root
def test_pty_slave_belongs_to_the_user_and_keeps_the_devpts_group(runner: Runner, bundle: Bundle) -> None:
    """Like runc: the slave is chowned to process.user.uid only; its group stays devpts's gid=5
    (tty), so the user's own gid does not get to write to it."""
    bundle.config["process"]["terminal"] = True
    bundle.config["process"]["user"] = {"uid": 1000, "gid": 1000}
    bundle.sh('stat -c "owner=%u:%g" "$(tty)"')
    cid = runner.new_id()
    argv = runner.argv(["run", "--bundle", str(bundle.path), cid])
    inner = " ".join(f"'{a}'" for a in argv)
    r = subprocess.run(["script", "-qec", inner, "/dev/null"], capture_output=True, text=True, timeout=60,
                       cwd=str(runner.workdir), env=runner.env(), stdin=subprocess.DEVNULL)
    assert "owner=1000:5" in r.stdout, r
