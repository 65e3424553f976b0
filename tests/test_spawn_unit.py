"""The one spawn path's logic (pyouki.spawn): the parent's loop over the channel for both roles,
the kill after an error, and the children's one-line errors (pyouki.become.report_failure). Real
forks and pipes; the children play the intermediate and the container's process, no containers."""

from __future__ import annotations

import os
import time

import pytest

from pyouki.become import ProcessPlan, report_failure
from pyouki.channel import Channel, fork_child
from pyouki.errors import PyoukiError
from pyouki.spawn import Spawn
from pyouki.state import process_start_time


class _Role(Spawn):
    """A role that records the callbacks drive() makes."""

    def __init__(self, end: str = "ready", died: str = "init died before it was ready") -> None:
        super().__init__(ProcessPlan({"args": ["true"]}, 0, {}))
        self.end = end
        self.died = died
        self.seen: list[tuple] = []

    def on_map(self) -> None:
        self.seen.append(("map", self.pid))
        self.down.send("mapped", "1")

    def on_pid(self) -> None:
        self.seen.append(("pid", self.pid))

    def on_hooks(self) -> None:
        self.seen.append(("hooks", self.pid))
        self.down.send("continue")


def _reap(role: Spawn) -> int:
    status = os.waitpid(role.intermediate, 0)[1]
    role.close()
    return os.waitstatus_to_exitcode(status)


def test_create_role_waits_for_ready_and_pid_in_any_order() -> None:
    """init's messages may come before the intermediate's pid: the hooks wait for the pid, and
    drive() returns only with both `ready` and the pid."""
    role = _Role()

    def intermediate(down: Channel, up: Channel) -> None:
        up.send("map")
        assert down.receive() == ("mapped", "1")
        up.send("hooks")
        up.send("ready")
        up.send("pid", "4242")
        assert down.receive()[0] == "continue"
        os._exit(0)

    role.fork(intermediate)
    role.drive()
    assert role.pid == 4242
    assert role.seen == [("map", 0), ("pid", 4242), ("hooks", 4242)]
    assert _reap(role) == 0


def test_a_childs_error_is_raised_as_it_was_sent() -> None:
    role = _Role()
    text = "mounts[1]: failed to mount proc on /proc: permission denied\nsecond line"
    role.fork(lambda down, up: (up.send("error", text), os._exit(1)))
    with pytest.raises(PyoukiError) as err:
        role.drive()
    assert str(err.value) == text
    assert _reap(role) == 1


@pytest.mark.parametrize("end", ["ready", "eof"])
def test_end_of_file_before_the_end_is_the_roles_error(end: str) -> None:
    role = _Role(end=end, died="the process died")
    role.fork(lambda down, up: os._exit(0))  # no pid, no ready: the process never started
    with pytest.raises(PyoukiError, match="^the process died$"):
        role.drive()
    assert _reap(role) == 0


def test_exec_role_ends_at_end_of_file_with_the_pid() -> None:
    role = _Role(end="eof")
    role.fork(lambda down, up: (up.send("pid", "77"), os._exit(0)))
    role.drive()
    assert role.pid == 77
    assert role.seen == [("pid", 77)]
    assert _reap(role) == 0


def test_kill_ends_the_process_and_the_intermediate() -> None:
    role = _Role()

    def intermediate(down: Channel, up: Channel) -> None:
        sleeper = fork_child(time.sleep, 60)
        up.send("pid", str(sleeper))
        up.send("ready")
        time.sleep(60)

    role.fork(intermediate)
    role.drive()
    sleeper = role.pid
    assert process_start_time(sleeper) == role.pid_start is not None
    role.kill()
    assert process_start_time(sleeper) is None
    with pytest.raises(ChildProcessError):
        os.waitpid(role.intermediate, 0)  # reaped by kill()


@pytest.mark.parametrize(("error", "line"), [
    (PyoukiError("process.cwd: failed to change to /x: no such file or directory"),
     "process.cwd: failed to change to /x: no such file or directory"),
    (FileNotFoundError(2, "No such file or directory"), "exec failed: no such file or directory"),
    (KeyError("args"), "exec failed: 'args'"),
])
def test_a_forked_bodys_error_is_one_line(error: BaseException, line: str) -> None:
    r, w = os.pipe()
    up = Channel(write_fd=w)

    def body() -> None:
        try:
            raise error
        except BaseException as e:  # noqa: BLE001 - as the forked bodies do
            report_failure(up, "exec", e)
        os._exit(127)

    pid = fork_child(body)
    up.close()
    reader = Channel(read_fd=r)
    assert reader.receive() == ("error", line)
    assert reader.receive() == ("eof", "")
    reader.close()
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 127
