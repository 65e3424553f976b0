"""containerd 1.6 (ctr, containerd-shim-runc-v2 with ``--runc-binary``) drives pyouki and runc.

The shim calls the runtime with ``--root --log --log-format json`` on every call, ``ps
--format json`` for ``task ps``, ``kill --all`` for ``task rm -f`` and ``pause``/``resume``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.containerd import NAMESPACE, Containerd
from e2e.image import IMAGE
from e2e.proc import wait_for
from e2e.runtimes import Runtime
from e2e.session import Needs, Session

pytest_plugins = ["e2e.fixtures"]

SLEEPER = "trap 'exit 3' TERM; while :; do sleep 0.1; done"


def cid() -> str:
    """A fresh container id."""
    return f"e2e-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def task(containerd: Containerd, rt: Runtime) -> Iterator[tuple[Containerd, Runtime, str]]:
    """A detached task running a loop (``ctr run -d``), removed afterwards."""
    c = cid()
    containerd.ctr("run", "-d", "--null-io", *containerd.run_args(rt), IMAGE, c, "sh", "-c", SLEEPER).ok()
    try:
        # the shim ran this runtime, with the private --root (its state dir is <root>/<ns>/<id>)
        assert (Path(containerd.runc_root(rt)) / NAMESPACE / c).is_dir()
        yield containerd, rt, c
    finally:
        containerd.remove(c)


def task_row(ct: Containerd, c: str) -> list[str]:
    """The task's ``ctr task ls`` row (TASK PID STATUS), or [] when there is none."""
    for line in ct.ctr("task", "ls").ok().stdout.splitlines()[1:]:
        fields = line.split()
        if fields and fields[0] == c:
            return fields
    return []


def status(ct: Containerd, c: str) -> str:
    """The task's status, "MISSING" when it has none."""
    row = task_row(ct, c)
    return row[-1] if row else "MISSING"


def test_run_rm_echo_and_exit_code(containerd: Containerd, rt: Runtime) -> None:
    r = containerd.ctr("run", "--rm", "--null-io", *containerd.run_args(rt), IMAGE, cid(), "sh", "-c", "exit 42")
    assert r.returncode == 42, r
    r = containerd.ctr("run", "--rm", *containerd.run_args(rt), IMAGE, cid(), "echo", "hello-from-ctr").ok()
    assert r.stdout.strip() == "hello-from-ctr"


def test_run_tty(containerd: Containerd, rt: Runtime) -> None:
    r = containerd.ctr("run", "--rm", "-t", *containerd.run_args(rt), IMAGE, cid(), "sh", "-c", "tty; exit 6",
                       pty=True)
    assert r.returncode == 6, r
    assert "/dev/pts/0" in r.stdout, r


def test_task_exec(task: tuple[Containerd, Runtime, str], needs: Needs) -> None:
    needs("exec")
    ct, rt, c = task
    r = ct.ctr("task", "exec", *ct.fifo_args(), "--exec-id", "x1", c, "sh", "-c", "echo exec-ok; exit 7")
    assert r.returncode == 7, r
    assert r.stdout.strip() == "exec-ok"


def test_task_exec_tty(task: tuple[Containerd, Runtime, str], needs: Needs) -> None:
    needs("exec")
    ct, rt, c = task
    r = ct.ctr("task", "exec", *ct.fifo_args(), "-t", "--exec-id", "x2", c, "sh", "-c", "tty; sleep 0.5; exit 5",
               pty=True)
    assert r.returncode == 5, r
    assert "/dev/pts/" in r.stdout, r


def test_task_ps(task: tuple[Containerd, Runtime, str], needs: Needs) -> None:
    needs("ps")
    ct, rt, c = task
    r = ct.ctr("task", "ps", c).ok()
    pids = [int(line.split()[0]) for line in r.stdout.splitlines()[1:] if line.strip()]
    assert int(task_row(ct, c)[1]) in pids, r


def test_task_pause_resume(task: tuple[Containerd, Runtime, str], needs: Needs) -> None:
    needs("pause", "resume")
    ct, rt, c = task
    ct.ctr("task", "pause", c).ok()
    assert status(ct, c) == "PAUSED"
    ct.ctr("task", "resume", c).ok()
    assert status(ct, c) == "RUNNING"


def test_task_kill(task: tuple[Containerd, Runtime, str]) -> None:
    ct, rt, c = task
    ct.ctr("task", "kill", c).ok()  # SIGTERM: the trap exits 3
    assert wait_for(lambda: status(ct, c) == "STOPPED"), ct.ctr("task", "ls")
    ct.ctr("task", "rm", c).ok()
    assert status(ct, c) == "MISSING"


def test_task_rm_force(task: tuple[Containerd, Runtime, str]) -> None:
    ct, rt, c = task
    ct.ctr("task", "rm", "-f", c).ok()
    assert status(ct, c) == "MISSING"


@pytest.fixture
def exited(containerd: Containerd, rt: Runtime) -> Iterator[tuple[Containerd, Runtime, str]]:
    """A task whose process has exited (status 3), not yet deleted."""
    c = cid()
    containerd.ctr("run", "-d", "--null-io", *containerd.run_args(rt), IMAGE, c, "sh", "-c", "exit 3").ok()
    try:
        assert wait_for(lambda: status(containerd, c) == "STOPPED"), containerd.ctr("task", "ls")
        yield containerd, rt, c
    finally:
        containerd.remove(c)


def test_task_kill_of_stopped_task(exited: tuple[Containerd, Runtime, str]) -> None:
    # the shim reads the runtime's "container not running" as "process already finished" (not
    # found), where any other text is an "unknown error after kill"; `kill --all` (CRI's way to
    # end an exited task) succeeds, as with runc
    ct, rt, c = exited
    r = ct.ctr("task", "kill", c)
    assert "process already finished: not found" in r.output, r
    ct.ctr("task", "kill", "-a", "-s", "SIGKILL", c).ok()
    assert status(ct, c) == "STOPPED"
    ct.ctr("task", "rm", c).ok()
    assert status(ct, c) == "MISSING"


def test_task_rm_force_of_stopped_task(exited: tuple[Containerd, Runtime, str]) -> None:
    ct, rt, c = exited
    ct.ctr("task", "rm", "-f", c).ok()
    assert status(ct, c) == "MISSING"
    assert not (Path(ct.runc_root(rt)) / NAMESPACE / c).exists(), "the runtime's state is left"


def test_task_kill_of_paused_task(task: tuple[Containerd, Runtime, str], needs: Needs) -> None:
    # SIGKILL must reach a frozen task (runc thaws after it): ctr sees it stop, not PAUSED forever
    needs("pause")
    ct, rt, c = task
    ct.ctr("task", "pause", c).ok()
    assert status(ct, c) == "PAUSED"
    ct.ctr("task", "kill", "-s", "SIGKILL", c).ok()
    assert wait_for(lambda: status(ct, c) == "STOPPED"), ct.ctr("task", "ls")
    ct.ctr("task", "rm", c).ok()
    assert status(ct, c) == "MISSING"


def test_missing_command_shows_runtime_message(containerd: Containerd, rt: Runtime, e2e: Session) -> None:
    want = e2e.runtime_error(rt, "/no/such/cmd")
    r = containerd.ctr("run", "--rm", "--null-io", *containerd.run_args(rt), IMAGE, cid(), "/no/such/cmd")
    assert r.returncode != 0, r
    assert want in r.output, f"ctr did not show {rt.name}'s message {want!r}:\n{r}"
