"""Podman 4.3 drives pyouki (and runc, the harness's self-check), rootless and rootful.

Each scenario runs once per runtime (``rt``) and once per podman set-up (``pm``: rootless as
pyouki-test with vfs storage, rootful with overlay storage); rootful-only scenarios (freezer,
cgroup limits) use ``podman_rootful``. Podman calls the runtime by the absolute path of a
link whose basename is the runtime's name (see ``e2e.runtimes``).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e.image import IMAGE
from e2e.podman import Podman
from e2e.proc import cgroup_of, wait_for
from e2e.runtimes import Runtime
from e2e.session import Needs, Session

pytest_plugins = ["e2e.fixtures"]

# A pty scenario's container stays up a moment after its output: conmon 2.1.6 drops the
# output of a tty container that exits at once (seen with runc and pyouki alike, ~1 run in 3).
TTY_LINGER = "sleep 0.5"
# busybox sh runs a trap once the foreground sleep returns: keep the sleeps short
TRAP_LOOP = "trap 'echo got-term; exit 3' TERM; echo started; while :; do sleep 0.1; done"
SLEEPER = "while :; do sleep 0.1; done"


@pytest.fixture(params=["rootless", "rootful"], scope="session")
def pm(request: pytest.FixtureRequest) -> Podman:
    """The podman set-up under test."""
    return request.getfixturevalue(f"podman_{request.param}")  # type: ignore[no-any-return]


def name() -> str:
    """A fresh container name."""
    return f"e2e-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def detached(pm: Podman, rt: Runtime) -> Iterator[tuple[Podman, Runtime, str]]:
    """A container running the TERM-trap loop, removed afterwards."""
    n = name()
    pm(rt, "run", "-d", "--name", n, IMAGE, "sh", "-c", TRAP_LOOP).ok()
    try:
        yield pm, rt, n
    finally:
        pm(rt, "rm", "-f", "-t", "0", n)


def inspect(pm: Podman, rt: Runtime, n: str, fmt: str) -> str:
    """``podman inspect -f FMT NAME``."""
    return pm(rt, "inspect", "-f", fmt, n).ok().stdout.strip()


# --- both set-ups ----------------------------------------------------------------------------


def test_run_rm_echo(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", IMAGE, "echo", "hello-from-e2e").ok()
    assert r.stdout.strip() == "hello-from-e2e"


def test_exit_code(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", IMAGE, "sh", "-c", "exit 42")
    assert r.returncode == 42, r


def test_detach_logs_stop_runs_term_trap(detached: tuple[Podman, Runtime, str]) -> None:
    pm, rt, n = detached
    assert wait_for(lambda: "started" in pm(rt, "logs", n).stdout), pm(rt, "logs", n)
    assert inspect(pm, rt, n, "{{.State.Status}}") == "running"
    pm(rt, "stop", "-t", "10", n).ok()
    assert inspect(pm, rt, n, "{{.State.ExitCode}}") == "3"
    assert "got-term" in pm(rt, "logs", n).ok().stdout


def test_exec(detached: tuple[Podman, Runtime, str], needs: Needs) -> None:
    needs("exec")
    pm, rt, n = detached
    r = pm(rt, "exec", "-e", "E2E=v", "-w", "/tmp", n, "sh", "-c", 'echo "exec:$E2E:$(pwd)"; exit 7')
    assert r.returncode == 7, r
    assert r.stdout.strip() == "exec:v:/tmp"


def test_kill(detached: tuple[Podman, Runtime, str]) -> None:
    pm, rt, n = detached
    pm(rt, "kill", n).ok()
    assert wait_for(lambda: inspect(pm, rt, n, "{{.State.Status}}") == "exited")
    assert inspect(pm, rt, n, "{{.State.ExitCode}}") == "137"


def test_exec_it_under_pty(detached: tuple[Podman, Runtime, str], needs: Needs) -> None:
    needs("exec")
    pm, rt, n = detached
    r = pm(rt, "exec", "-it", n, "sh", "-c", f"tty; test -t 0 && echo stdin-is-tty; {TTY_LINGER}; exit 5", pty=True)
    assert r.returncode == 5, r
    assert "/dev/pts/" in r.stdout and "stdin-is-tty" in r.stdout, r


def test_run_it_under_pty(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "-it", "--rm", IMAGE, "sh", "-c", f"tty; test -t 0 && echo stdin-is-tty; {TTY_LINGER}; exit 6",
           pty=True)
    assert r.returncode == 6, r
    assert "/dev/pts/0" in r.stdout and "stdin-is-tty" in r.stdout, r


def test_run_it_interactive_input(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "-it", "--rm", IMAGE, "sh", pty=True, input="echo typed-$((6*7))\nexit 4\n")
    assert r.returncode == 4, r
    assert "typed-42" in r.stdout, r


def test_personality_linux32(pm: Podman, rt: Runtime) -> None:
    """podman --personality LINUX32 (linux.personality): the container's uname says i686."""
    if os.uname().machine != "x86_64":
        pytest.skip("the LINUX32 domain of x86_64")
    r = pm(rt, "run", "--rm", "--personality", "LINUX32", IMAGE, "uname", "-m").ok()
    # runc 1.1.5 ignores the field: its container says x86_64
    assert r.stdout.strip() == ("i686" if rt.is_pyouki else "x86_64"), r


def test_user(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", "--user", "1000:1000", IMAGE, "sh", "-c", "id -u; id -g").ok()
    assert r.stdout.split() == ["1000", "1000"], r


def test_read_only(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", "--read-only", IMAGE, "sh", "-c", "touch /x 2>&1; echo rc=$?").ok()
    assert "Read-only file system" in r.stdout and "rc=1" in r.stdout, r


def test_cap_drop_all(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", "--cap-drop", "all", IMAGE, "grep", "^Cap", "/proc/self/status").ok()
    caps = dict(line.split(":\t") for line in r.stdout.strip().splitlines())
    assert caps["CapEff"] == caps["CapPrm"] == caps["CapBnd"] == "0000000000000000", r


def test_preserve_fds(pm: Podman, rt: Runtime) -> None:
    data = pm.base / f"fd3-{uuid.uuid4().hex[:6]}"
    data.write_text("through-fd-3\n")
    os.chmod(data, 0o644)
    r = pm(rt, "run", "--rm", "--preserve-fds", "1", IMAGE, "sh", "-c", "cat <&3", fd3=data).ok()
    assert r.stdout.strip() == "through-fd-3"


def test_pod_with_infra(pm: Podman, rt: Runtime) -> None:
    pod = f"pod-{uuid.uuid4().hex[:8]}"
    try:
        pm(rt, "pod", "create", "--name", pod).ok()
        n = name()
        pm(rt, "run", "-d", "--pod", pod, "--name", n, IMAGE, "sh", "-c", SLEEPER).ok()
        infra = pm(rt, "pod", "inspect", "-f", "{{.InfraContainerID}}", pod).ok().stdout.strip()
        assert inspect(pm, rt, infra, "{{.State.Status}}") == "running"
        assert inspect(pm, rt, infra, "{{.OCIRuntime}}") == rt.path
        # the container joined the infra container's namespaces (uts, ipc, net)
        infra_pid = int(inspect(pm, rt, infra, "{{.State.Pid}}"))
        pid = int(inspect(pm, rt, n, "{{.State.Pid}}"))
        for ns in ("uts", "ipc", "net"):
            assert os.readlink(f"/proc/{pid}/ns/{ns}") == os.readlink(f"/proc/{infra_pid}/ns/{ns}"), ns
    finally:
        pm(rt, "pod", "rm", "-f", "-t", "0", pod)


@pytest.mark.skipif(not os.path.exists("/usr/libexec/podman/catatonit"), reason="catatonit is not installed")
def test_init(pm: Podman, rt: Runtime) -> None:
    r = pm(rt, "run", "--rm", "--init", IMAGE, "sh", "-c", "cat /proc/1/cmdline | tr '\\0' ' '").ok()
    # podman bind-mounts catatonit at /run/podman-init and makes it pid 1
    assert r.stdout.startswith("/run/podman-init -- sh -c"), r


@pytest.mark.parametrize("cmd", ["/no/such/cmd", "nosuchcmd"])
def test_missing_command_shows_runtime_message(pm: Podman, rt: Runtime, e2e: Session, cmd: str) -> None:
    want = e2e.runtime_error(rt, cmd)
    r = pm(rt, "run", "--rm", IMAGE, cmd)
    assert r.returncode == 127, r
    assert want in r.stderr, f"podman did not show {rt.name}'s message {want!r}:\n{r}"


# podman maps the runtime's words (libpod getOCIRuntimeError) to exec's exit code
EXEC_FAILURES = [("nosuchcmd", 127, "executable file not found in $PATH"),
                 ("/no/such/cmd", 127, "no such file or directory"),
                 ("/etc/passwd", 126, "permission denied")]


@pytest.mark.parametrize(("cmd", "code", "phrase"), EXEC_FAILURES)
def test_exec_of_unrunnable_command(detached: tuple[Podman, Runtime, str], needs: Needs, cmd: str, code: int,
                                    phrase: str) -> None:
    needs("exec")
    pm, rt, n = detached
    r = pm(rt, "exec", n, cmd)
    assert r.returncode == code, r
    assert phrase in r.stderr, r
    assert inspect(pm, rt, n, "{{.State.Status}}") == "running"


# --- rootless only ---------------------------------------------------------------------------


def test_rootless_userns_keep_id(podman_rootless: Podman, rt: Runtime, e2e: Session) -> None:
    pm = podman_rootless
    uid = pm.user[0]  # type: ignore[index]
    r = pm(rt, "run", "--rm", "--userns=keep-id", IMAGE, "sh", "-c", "id -u; cat /proc/self/uid_map").ok()
    lines = r.stdout.split("\n")
    assert lines[0] == str(uid), r
    assert f"{uid} 0 1" in " ".join(r.stdout.split()), r


def _tun_usable() -> bool:
    return os.path.exists("/dev/net/tun") and (os.stat("/dev/net/tun").st_mode & 0o006) == 0o006


@pytest.mark.skipif(not _tun_usable(), reason="/dev/net/tun is not usable by an unprivileged user (mode is not 0666)")
def test_rootless_slirp4netns(podman_rootless: Podman, rt: Runtime) -> None:
    r = podman_rootless(rt, "run", "--rm", "--network", "slirp4netns", IMAGE, "ip", "-4", "addr", "show", "tap0").ok()
    assert "10.0.2.100" in r.stdout, r


# --- rootful only ----------------------------------------------------------------------------


@pytest.fixture
def rootful_sleeper(podman_rootful: Podman, rt: Runtime) -> Iterator[tuple[Podman, Runtime, str, int]]:
    """A rootful container running a loop, with its host pid."""
    pm, n = podman_rootful, name()
    pm(rt, "run", "-d", "--name", n, IMAGE, "sh", "-c", SLEEPER).ok()
    try:
        yield pm, rt, n, int(inspect(pm, rt, n, "{{.State.Pid}}"))
    finally:
        pm(rt, "rm", "-f", "-t", "0", n)


def _read(p: Path) -> str:
    return p.read_text().strip()


def test_rootful_pause_unpause(rootful_sleeper: tuple[Podman, Runtime, str, int], needs: Needs) -> None:
    needs("pause", "resume")
    pm, rt, n, pid = rootful_sleeper
    freezer = cgroup_of(pid, "freezer") / "freezer.state"
    pm(rt, "pause", n).ok()
    assert inspect(pm, rt, n, "{{.State.Status}}") == "paused"
    assert _read(freezer) == "FROZEN"
    pm(rt, "unpause", n).ok()
    assert inspect(pm, rt, n, "{{.State.Status}}") == "running"
    assert _read(freezer) == "THAWED"


def test_rootful_kill_of_paused_container(rootful_sleeper: tuple[Podman, Runtime, str, int], needs: Needs) -> None:
    # podman waits for conmon's exit file: a SIGKILL that leaves the container frozen ends in a
    # timeout and exit code -1; runc thaws after signalling
    needs("pause")
    pm, rt, n, pid = rootful_sleeper
    pm(rt, "pause", n).ok()
    pm(rt, "kill", n).ok()
    assert wait_for(lambda: inspect(pm, rt, n, "{{.State.Status}}") == "exited")
    assert inspect(pm, rt, n, "{{.State.ExitCode}}") == "137"


def test_rootful_update_cpu_shares(rootful_sleeper: tuple[Podman, Runtime, str, int], needs: Needs) -> None:
    needs("update")
    pm, rt, n, pid = rootful_sleeper
    pm(rt, "update", "--cpu-shares", "512", n).ok()
    assert _read(cgroup_of(pid, "cpu") / "cpu.shares") == "512"


def test_rootful_memory_and_pids_limits(podman_rootful: Podman, rt: Runtime) -> None:
    pm, n = podman_rootful, name()
    try:
        pm(rt, "run", "-d", "--name", n, "--memory", "64m", "--pids-limit", "50", IMAGE, "sh", "-c", SLEEPER).ok()
        pid = int(inspect(pm, rt, n, "{{.State.Pid}}"))
        assert _read(cgroup_of(pid, "memory") / "memory.limit_in_bytes") == str(64 << 20)
        assert _read(cgroup_of(pid, "pids") / "pids.max") == "50"
    finally:
        pm(rt, "rm", "-f", "-t", "0", n)
