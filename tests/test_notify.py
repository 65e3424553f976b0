"""NOTIFY_SOCKET passthrough: the container's READY=1 reaches the caller's socket, as with runc."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess

import pytest
from harness import Bundle, Runner

NOTIFIER_C = r"""
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
int main(void) {
    const char *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    int fd = socket(AF_UNIX, SOCK_DGRAM, 0);
    if (!path || fd < 0) return 2;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    const char msg[] = "STATUS=starting\nREADY=1\n";
    return sendto(fd, msg, sizeof msg - 1, 0, (struct sockaddr *)&addr, sizeof addr) < 0 ? 3 : 0;
}
"""


@pytest.fixture(scope="session")
def notifier(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A static sd_notify client to put in the busybox rootfs (busybox has none)."""
    if not shutil.which("gcc"):
        pytest.skip("gcc is needed to build the static notify client")
    d = tmp_path_factory.mktemp("notifier")
    (d / "n.c").write_text(NOTIFIER_C)
    subprocess.run(["gcc", "-static", "-O1", "-o", str(d / "sd-notify"), str(d / "n.c")], check=True)
    return str(d / "sd-notify")


def test_ready_is_forwarded_with_mainpid(runner: Runner, bundle: Bundle, notifier: str, xfail_runc) -> None:
    xfail_runc("binds notify.sock by its full path, longer than sun_path's 108 bytes in this test's state dir")
    path = runner.xdg / "notify.sock"  # where the runtime's user may connect
    host = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    host.bind(str(path))
    os.chmod(path, 0o777)
    host.settimeout(30)
    target = bundle.rootfs / "bin" / "sd-notify"
    shutil.copy(notifier, target)
    os.chmod(target, 0o755)
    bundle.sh('echo "$NOTIFY_SOCKET"; sd-notify; sleep 1000')
    cid = runner.new_id()
    env = dict(runner.env(), NOTIFY_SOCKET=str(path))
    out = runner.xdg / "out"
    runner.cmd("create", "--bundle", str(bundle.path), cid, env=env, stdout=out).ok()
    runner.cmd("start", cid, env=env).ok()  # returns once the container said READY
    message = host.recv(4096).decode()
    host.close()
    pid = runner.state(cid)["pid"]
    assert message.splitlines() == ["READY=1", f"MAINPID={pid}"]
    assert out.read_text().splitlines()[0] == "/run/notify/notify.sock"
    runner.delete(cid, "--force").ok()
    assert runner.state_entries() == []
