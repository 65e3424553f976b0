"""Docker 20.10 (dockerd from the extracted docker.io package) drives pyouki and runc.

dockerd talks to the private containerd; its shim calls the runtime registered in
daemon.json (``pyouki``, or ``e2e-runc`` since ``runc`` is a reserved name), with
``--root <exec-root>/runtime-<name>/moby``. Containers run with ``--network none``: the
daemon has no bridge.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from e2e.docker import Docker, runtime_name
from e2e.image import IMAGE
from e2e.proc import cgroup_of, wait_for
from e2e.runtimes import Runtime
from e2e.session import Needs, Session

pytest_plugins = ["e2e.fixtures"]

TRAP_LOOP = "trap 'echo got-term; exit 3' TERM; echo started; while :; do sleep 0.1; done"


def name() -> str:
    """A fresh container name."""
    return f"e2e-{uuid.uuid4().hex[:10]}"


def run_args(rt: Runtime) -> list[str]:
    """``docker run`` flags selecting ``rt`` without a network."""
    return ["--runtime", runtime_name(rt), "--network", "none"]


@pytest.fixture
def detached(docker: Docker, rt: Runtime) -> Iterator[tuple[Docker, Runtime, str, int]]:
    """A running container with a TERM trap, its host pid; removed afterwards."""
    n = name()
    docker.docker("run", "-d", "--name", n, *run_args(rt), IMAGE, "sh", "-c", TRAP_LOOP).ok()
    try:
        assert docker.docker("inspect", "-f", "{{.HostConfig.Runtime}}", n).ok().stdout.strip() == runtime_name(rt)
        yield docker, rt, n, int(docker.docker("inspect", "-f", "{{.State.Pid}}", n).ok().stdout)
    finally:
        docker.docker("rm", "-f", n)


def state(d: Docker, n: str, field: str) -> str:
    """``docker inspect -f {{.State.FIELD}}``."""
    return d.docker("inspect", "-f", f"{{{{.State.{field}}}}}", n).ok().stdout.strip()


def test_run_echo_and_exit_code(docker: Docker, rt: Runtime) -> None:
    r = docker.docker("run", "--rm", *run_args(rt), IMAGE, "echo", "hello-from-docker").ok()
    assert r.stdout.strip() == "hello-from-docker"
    r = docker.docker("run", "--rm", *run_args(rt), IMAGE, "sh", "-c", "exit 42")
    assert r.returncode == 42, r


def test_run_it_under_pty(docker: Docker, rt: Runtime) -> None:
    r = docker.docker("run", "--rm", "-it", *run_args(rt), IMAGE, "sh", "-c", "tty; sleep 0.5; exit 6", pty=True)
    assert r.returncode == 6, r
    assert "/dev/pts/0" in r.stdout, r


def test_exec_it_under_pty(detached: tuple[Docker, Runtime, str, int], needs: Needs) -> None:
    needs("exec")
    d, rt, n, _ = detached
    r = d.docker("exec", "-it", n, "sh", "-c", "tty; test -t 0 && echo stdin-is-tty; sleep 0.5; exit 5", pty=True)
    assert r.returncode == 5, r
    assert "/dev/pts/" in r.stdout and "stdin-is-tty" in r.stdout, r


def test_top(detached: tuple[Docker, Runtime, str, int], needs: Needs) -> None:
    needs("ps")
    d, rt, n, pid = detached
    r = d.docker("top", n, "-o", "pid,args").ok()
    pids = [int(line.split()[0]) for line in r.stdout.splitlines()[1:] if line.strip()]
    assert pid in pids, r


def test_pause_unpause(detached: tuple[Docker, Runtime, str, int], needs: Needs) -> None:
    needs("pause", "resume")
    d, rt, n, pid = detached
    freezer = cgroup_of(pid, "freezer") / "freezer.state"
    d.docker("pause", n).ok()
    assert state(d, n, "Status") == "paused"
    assert freezer.read_text().strip() == "FROZEN"
    d.docker("unpause", n).ok()
    assert state(d, n, "Status") == "running"
    assert freezer.read_text().strip() == "THAWED"


def test_update_memory(detached: tuple[Docker, Runtime, str, int], needs: Needs) -> None:
    needs("update")
    d, rt, n, pid = detached
    d.docker("update", "--memory", "64m", "--memory-swap", "128m", n).ok()
    assert (cgroup_of(pid, "memory") / "memory.limit_in_bytes").read_text().strip() == str(64 << 20)


def test_stop_runs_term_trap(detached: tuple[Docker, Runtime, str, int]) -> None:
    d, rt, n, _ = detached
    assert wait_for(lambda: "started" in d.docker("logs", n).stdout)
    d.docker("stop", "-t", "10", n).ok()
    assert state(d, n, "ExitCode") == "3"
    assert "got-term" in d.docker("logs", n).ok().stdout


@pytest.mark.parametrize("cmd", ["/no/such/cmd", "nosuchcmd"])
def test_missing_command_shows_runtime_message(docker: Docker, rt: Runtime, e2e: Session, cmd: str) -> None:
    # moby and the docker CLI turn the runtime's words into 127 (not found) or 125 (anything else)
    want = e2e.runtime_error(rt, cmd)
    r = docker.docker("run", "--rm", *run_args(rt), IMAGE, cmd)
    assert r.returncode == 127, r
    assert want in r.stderr, f"docker did not show {rt.name}'s message {want!r}:\n{r}"


@pytest.mark.parametrize(("cmd", "phrase"), [("nosuchcmd", "executable file not found in $PATH"),
                                             ("/no/such/cmd", "no such file or directory"),
                                             ("/etc/passwd", "permission denied")])
def test_exec_of_unrunnable_command(detached: tuple[Docker, Runtime, str, int], needs: Needs, cmd: str,
                                    phrase: str) -> None:
    # dockerd 20.10 gives every exec that fails to start 126 (runc alike); the runtime's words are shown
    needs("exec")
    d, rt, n, _ = detached
    r = d.docker("exec", n, cmd)
    assert r.returncode == 126, r
    assert phrase in r.output and cmd in r.output, r
    assert state(d, n, "Status") == "running"
