"""Running engine commands and cleaning up after them: results, users, markers, cgroups.

Every engine command a test runs carries ``PYOUKI_E2E_MARK=<session mark>`` in its environment;
daemons, conmon and shims inherit it, so whatever survives a failed session can be found and
killed by pid without guessing by process name.
"""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MARK_VAR = "PYOUKI_E2E_MARK"
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Result:
    """What one engine command returned."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        """Assert the command succeeded and return self."""
        assert self.returncode == 0, f"command failed:\n{self}"
        return self

    def fails(self) -> Result:
        """Assert the command failed and return self."""
        assert self.returncode != 0, f"command unexpectedly succeeded:\n{self}"
        return self

    @property
    def output(self) -> str:
        """stdout and stderr together (engines print runtime errors on either)."""
        return self.stdout + self.stderr

    def __str__(self) -> str:
        return f"$ {' '.join(self.argv)}\nrc={self.returncode}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    user: tuple[int, int] | None = None,
    timeout: float = 60.0,
    input: str | None = None,
    cwd: str | Path | None = None,
) -> Result:
    """Run ``argv`` and wait; output goes through files, never pipes.

    Engines leave daemons behind (conmon, shims) that inherit stdio: a pipe would stay open
    after the command exits and a reader would hang until the container ends.
    """
    kw: dict[str, Any] = {}
    if user is not None:
        kw = {"user": user[0], "group": user[1], "extra_groups": []}
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as inp:
        if input is not None:
            inp.write(input.encode())
            inp.seek(0)
        proc = subprocess.Popen(
            list(argv), stdin=inp if input is not None else subprocess.DEVNULL, stdout=out, stderr=err,
            env=dict(env), cwd=str(cwd) if cwd else "/", start_new_session=True, **kw,
        )
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            raise AssertionError(f"{' '.join(argv)}: no exit within {timeout} s") from None
        out.seek(0)
        err.seek(0)
        return Result(list(argv), rc, out.read().decode(errors="replace"), err.read().decode(errors="replace"))


def under_pty(argv: Sequence[str]) -> list[str]:
    """``argv`` wrapped in ``script -qec`` so it runs with a pseudo-terminal as stdio."""
    import shlex

    return ["script", "-qec", shlex.join(argv), "/dev/null"]


def with_fd3(argv: Sequence[str], path: str | Path) -> list[str]:
    """``argv`` run with ``path`` open for reading on fd 3 (for ``--preserve-fds 1``)."""
    return ["/bin/sh", "-c", 'f=$1; shift; exec "$@" 3<"$f"', "sh", str(path), *argv]


def wait_for(check: Any, timeout: float = 20.0, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns a truthy value (returned) or ``timeout`` passes (None)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


# --------------------------------------------------------------------------------------------
# leftovers
# --------------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return False
    return data[data.rfind(b")") + 2 :][:1] not in (b"Z", b"X")


def marked_pids(mark: str, prefix: bool = False) -> list[int]:
    """Live pids whose environment holds ``PYOUKI_E2E_MARK=mark`` (or a value starting with it)."""
    needle = f"{MARK_VAR}={mark}".encode()
    me = os.getpid()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        hit = any(e.startswith(needle) for e in env) if prefix else needle in env
        if hit and _alive(int(entry)):
            found.append(int(entry))
    return found


def userns_members(pids: Iterable[int]) -> list[int]:
    """Live pids in the user namespaces of ``pids``, other than the host's."""
    def ns(pid: int | str) -> str | None:
        try:
            return os.readlink(f"/proc/{pid}/ns/user")
        except OSError:
            return None

    host = ns(1)
    wanted = {n for n in map(ns, pids) if n and n != host}
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and ns(e) in wanted and _alive(int(e))]


def kill_pids(pids: Iterable[int], sig: int = signal.SIGKILL) -> None:
    """Signal each pid, ignoring the ones already gone."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def terminate(pid: int, timeout: float = 15.0) -> None:
    """SIGTERM ``pid``, wait for it to go, SIGKILL it if it does not."""
    kill_pids([pid], signal.SIGTERM)
    if wait_for(lambda: not _alive(pid), timeout, 0.05) is None:
        kill_pids([pid])
        wait_for(lambda: not _alive(pid), 5.0, 0.05)


def v1_hierarchies(with_v2: bool = False) -> list[Path]:
    """The mounted cgroup v1 hierarchies, plus the cgroup2 mount (``unified``) if ``with_v2``."""
    types = ("cgroup", "cgroup2") if with_v2 else ("cgroup",)
    out = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        if right.split()[0] in types:
            out.append(Path(left.split()[4]))
    return out


def existing_cgroups(names: Iterable[str]) -> set[Path]:
    """Every cgroup directory at or below the top-level cgroups ``names`` (v1 and v2)."""
    found: set[Path] = set()
    for h in v1_hierarchies(with_v2=True):
        for n in names:
            found.update(Path(d) for d, _, _ in os.walk(h / n))
    return found


def sweep_cgroups(names: Iterable[str], keep: set[Path]) -> list[str]:
    """Remove the cgroups below ``names`` created since ``keep`` was taken (deepest first).

    Engines create parents (``/libpod_parent``, the ctr namespace, docker's cgroup-parent) and
    never remove them; runtimes on a hybrid host also create each cgroup in the cgroup2
    ("unified") hierarchy. A cgroup that still holds processes is left alone: after
    :func:`kill_tree` none of them is this session's, so it belongs to a concurrent run. Returns
    the empty cgroups that could not be removed.
    """
    left = []
    for h in v1_hierarchies(with_v2=True):
        for name in names:
            dirs = sorted((Path(d) for d, _, _ in os.walk(h / name)), key=lambda p: len(p.parts), reverse=True)
            for d in (d for d in dirs if d not in keep):
                if wait_for(lambda d=d: _try_rmdir(d) or _busy(d), 5.0, 0.05) is None:
                    left.append(str(d))
    return left


def _busy(d: Path) -> bool:
    """True if cgroup ``d`` has processes or child cgroups (someone else's, see sweep_cgroups)."""
    try:
        return bool((d / "cgroup.procs").read_text().split()) or any(p.is_dir() for p in d.iterdir())
    except OSError:
        return False


def descendants(pids: Iterable[int]) -> set[int]:
    """``pids`` and every live process below them (containers under conmon, shims, daemons)."""
    children: dict[int, list[int]] = {}
    for e in os.listdir("/proc"):
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as f:
                data = f.read()
        except OSError:
            continue
        ppid = int(data[data.rfind(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(e))
    out: set[int] = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid not in out:
            out.add(pid)
            todo.extend(children.get(pid, []))
    return {p for p in out if _alive(p)}


def kill_tree(mark: str) -> None:
    """SIGKILL every process marked with ``mark`` (prefix) and their descendants; wait for them."""
    for _ in range(3):
        pids = descendants(marked_pids(mark, prefix=True))
        if not pids:
            return
        kill_pids(pids)
        wait_for(lambda pids=pids: not any(_alive(p) for p in pids), 5.0, 0.05)


def _try_rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def cgroup_of(pid: int, controller: str) -> Path:
    """The host path of ``pid``'s cgroup in the v1 ``controller`` hierarchy."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        if controller in ctrls.split(","):
            for h in v1_hierarchies():
                if controller in h.name.split(","):
                    return h / path.lstrip("/")
    raise AssertionError(f"pid {pid} has no {controller} cgroup")
