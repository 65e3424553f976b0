"""Seccomp user notification in real containers: a seccomp agent written here receives the
container process state and the listener fd over linux.seccomp.listenerPath (SCM_RIGHTS) and
answers the container's mkdir itself (SECCOMP_IOCTL_NOTIF_RECV/SEND), as root and rootless."""

from __future__ import annotations

import fcntl
import json
import os
import select
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import Bundle, Runner, assert_failed_cleanly

# linux/seccomp.h: _IOWR('!', 0, struct seccomp_notif), _IOWR('!', 1, struct seccomp_notif_resp)
NOTIF_RECV = 0xC0502100
NOTIF_SEND = 0xC0182101
NOTIF_SIZE = 80  # u64 id, u32 pid, u32 flags, struct seccomp_data (int nr, u32 arch, u64 ip, u64 args[6])
RESP = "=QqiI"  # u64 id, s64 val, s32 error, u32 flags
MKDIR_NRS = {83, 258}  # x86_64 mkdir, mkdirat


class Agent:
    """A seccomp agent: accepts one connection per container process, records the state it
    received, and answers every notification with success (0) without running the syscall."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        os.chmod(path, 0o777)  # the rootless runtime connects as the test user
        self.server.listen(8)
        self.states: list[dict[str, Any]] = []
        self.notified: list[tuple[int, int]] = []  # (pid, syscall nr) per notification answered
        self.ancillary_counts: list[int] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.server], [], [], 0.1)[0]:
                continue
            conn, _ = self.server.accept()
            with conn:
                data, fds, _, _ = socket.recv_fds(conn, 65536, 4)
                while True:  # the runtime closes the connection after one state
                    more = conn.recv(65536)
                    if not more:
                        break
                    data += more
            self.ancillary_counts.append(len(fds))
            self.states.append(json.loads(data))
            t = threading.Thread(target=self._answer, args=(fds[0],), daemon=True)
            self._threads.append(t)
            t.start()

    def _answer(self, fd: int) -> None:
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        try:
            while not self._stop.is_set():
                events = poller.poll(100)
                if not events:
                    continue
                if events[0][1] & (select.POLLHUP | select.POLLERR):
                    return  # every process of the filter is gone
                buf = bytearray(NOTIF_SIZE)
                try:
                    fcntl.ioctl(fd, NOTIF_RECV, buf)
                except OSError:
                    continue  # the notifying process died meanwhile
                notif_id, pid, _flags, nr = struct.unpack_from("=QIIi", buf)
                self.notified.append((pid, nr))
                try:
                    fcntl.ioctl(fd, NOTIF_SEND, bytearray(struct.pack(RESP, notif_id, 0, 0, 0)))
                except OSError:
                    pass
        finally:
            os.close(fd)

    def close(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(5)
        self.server.close()


@pytest.fixture
def agent(workdir: Path) -> Iterator[Agent]:
    a = Agent(workdir / "agent.sock")
    yield a
    a.close()


def notify_profile(agent: Agent | None, **extra: Any) -> dict[str, Any]:
    profile: dict[str, Any] = {
        "defaultAction": "SCMP_ACT_ALLOW",
        "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_NOTIFY"}],
    }
    if agent is not None:
        profile["listenerPath"] = str(agent.path)
    profile.update(extra)
    return profile


@pytest.mark.parametrize("nnp", [False, True], ids=["caps", "no_new_privs"])
def test_agent_answers_mkdir(runner: Runner, make_bundle: Callable[..., Bundle], agent: Agent, nnp: bool) -> None:
    bundle = make_bundle()
    bundle.process["noNewPrivileges"] = nnp
    bundle.config.setdefault("annotations", {})["org.example.key"] = "value"
    bundle.linux["seccomp"] = notify_profile(agent, listenerMetadata="MKDIR=fake")
    # the agent says mkdir succeeded, but did not run it: the directory is not there
    bundle.sh("mkdir /tmp/made && echo mkdir-ok; test -d /tmp/made && echo exists || echo absent")
    cid = runner.new_id()
    out = runner.run(cid, bundle).ok().stdout.split()
    assert out == ["mkdir-ok", "absent"]
    assert any(nr in MKDIR_NRS for _, nr in agent.notified)
    assert len(agent.states) == 1 and agent.ancillary_counts == [1]
    doc = agent.states[0]
    # the container process state, exactly as runtime-spec config-linux.md has it
    assert list(doc) == ["ociVersion", "fds", "pid", "metadata", "state"]
    assert doc["fds"] == ["seccompFd"] and doc["metadata"] == "MKDIR=fake"
    assert doc["pid"] == doc["state"]["pid"] > 0
    state = doc["state"]
    assert state["id"] == cid and state["status"] == "creating"
    assert state["bundle"] == str(bundle.path)
    assert state["annotations"] == {"org.example.key": "value"}


def test_exec_hands_over_its_own_listener(runner: Runner, make_bundle: Callable[..., Bundle], agent: Agent) -> None:
    bundle = make_bundle(args=("sleep", "100"))
    bundle.linux["seccomp"] = notify_profile(agent)
    bundle.write()
    cid = runner.new_id()
    runner.create(cid, bundle).ok()
    runner.start(cid).ok()
    out = runner.cmd("exec", cid, "sh", "-c", "mkdir /tmp/e && echo ok; test -d /tmp/e || echo absent").ok()
    assert out.stdout.split() == ["ok", "absent"]
    assert len(agent.states) == 2
    init_doc, exec_doc = agent.states
    assert exec_doc["state"]["status"] == "running" and exec_doc["state"]["id"] == cid
    assert exec_doc["state"]["pid"] == init_doc["pid"] != exec_doc["pid"]
    assert "metadata" not in exec_doc


def test_unreachable_listener_fails_create(runner: Runner, make_bundle: Callable[..., Bundle],
                                           workdir: Path) -> None:
    bundle = make_bundle()
    bundle.linux["seccomp"] = notify_profile(None, listenerPath=str(workdir / "nobody-listens.sock"))
    bundle.write()
    cid = runner.new_id()
    result = runner.create(cid, bundle)
    assert_failed_cleanly(runner.runtime, result, "linux.seccomp.listenerPath", "nobody-listens.sock")
    assert cid not in runner.list_ids()


def test_profile_refusing_the_hand_over_fails_create(runner: Runner, make_bundle: Callable[..., Bundle],
                                                     agent: Agent) -> None:
    """The listener fd leaves the container's process by sendmsg: a profile refusing it is told so."""
    bundle = make_bundle()
    profile = notify_profile(agent)
    profile["syscalls"].append({"names": ["sendmsg"], "action": "SCMP_ACT_ERRNO"})
    bundle.linux["seccomp"] = profile
    bundle.write()
    cid = runner.new_id()
    result = runner.create(cid, bundle)
    assert_failed_cleanly(runner.runtime, result, "linux.seccomp", "sendmsg")
    assert cid not in runner.list_ids()


@pytest.mark.parametrize("profile, field", [
    # a notify rule and nobody to answer it
    (notify_profile(None), "linux.seccomp.listenerPath: is required"),
    # a listener that would never hear from the container
    ({"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/agent.sock"},
     "linux.seccomp.listenerPath: is set but no rule"),
    ({"defaultAction": "SCMP_ACT_NOTIFY", "listenerPath": "/run/agent.sock"}, "linux.seccomp.defaultAction"),
    (notify_profile(None, listenerPath="/run/a.sock", syscalls=[{"names": ["write"], "action": "SCMP_ACT_NOTIFY"}]),
     "linux.seccomp.syscalls[0].names[0]"),
    ({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV"]},
     "linux.seccomp.flags[0]"),
])
def test_notify_config_errors(runner: Runner, make_bundle: Callable[..., Bundle], profile: dict, field: str) -> None:
    bundle = make_bundle()
    bundle.linux["seccomp"] = profile
    bundle.write()
    result = runner.create(runner.new_id(), bundle)
    assert_failed_cleanly(runner.runtime, result, field)


def test_wait_killable_recv_with_a_listener(runner: Runner, make_bundle: Callable[..., Bundle], agent: Agent) -> None:
    bundle = make_bundle()
    bundle.linux["seccomp"] = notify_profile(agent, flags=["SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV",
                                                           "SECCOMP_FILTER_FLAG_TSYNC"])
    bundle.sh("mkdir /tmp/k && echo ok; grep Seccomp: /proc/self/status")
    out = runner.run(runner.new_id(), bundle).ok().stdout.split()
    assert out == ["ok", "Seccomp:", "2"]
    assert agent.notified


def test_features_list_notify(runner: Runner) -> None:
    doc = json.loads(runner.cmd("features", root=None).ok().stdout)["linux"]["seccomp"]
    assert "SCMP_ACT_NOTIFY" in doc["actions"]
    assert "SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV" in doc["supportedFlags"]
    assert set(doc["supportedFlags"]) <= set(doc["knownFlags"])


def test_load_without_a_hand_over_is_an_error() -> None:
    """A filter with a listener loaded where no runtime waits for the fd says so (no silent drop)."""
    from test_seccomp import run_child

    from pyouki.seccomp import compile_filter

    f = compile_filter(notify_profile(None, listenerPath="/run/agent.sock"))
    assert f.notify

    def body(report: Callable[[str], None]) -> None:
        try:
            f.load()
        except Exception as e:  # noqa: BLE001 - the message is what is checked
            report(str(e))

    child = run_child(body, user="nobody")
    assert child.output.strip() == "linux.seccomp: no runtime to hand the seccomp listener fd to"
