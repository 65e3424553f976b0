"""Process primitives for the benchmark: spawn a command and measure it, reap containers.

Everything here is built so that the benchmark's own work stays out of the timed window:
a command is started with ``os.posix_spawn`` (vfork + exec, no Python in the child), its
stdio goes to file descriptors opened once, and the clock stops as soon as ``os.wait4``
returns.
"""

from __future__ import annotations

import os
import resource
import select
import threading
import time
from dataclasses import dataclass

PR_SET_CHILD_SUBREAPER = 36


@dataclass
class Result:
    """What one command cost: wall time, CPU of it and its reaped children, peak RSS."""

    wall_ns: int
    cpu_ns: int
    maxrss_kb: int
    rc: int
    err: str


def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants.

    Container processes are orphaned when ``create`` exits; as subreaper we inherit them, so we
    can wait for them (and count their CPU) instead of PID 1, which reaps slowly on this host.
    """
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"failed to become child subreaper: {os.strerror(err)}")


def children_cpu_ns() -> int:
    """User+system CPU of all terminated and reaped descendants of this process, in ns."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return round((ru.ru_utime + ru.ru_stime) * 1e9)


class Spawner:
    """Runs commands with a fixed environment, stdin/stdout on /dev/null, stderr in a file.

    With spawnd (bench/spawnd.c, compiled at start) the command is spawned and timed by that
    ~1 MB server, so its ru_maxrss is its own; without it, from this process, and the peak RSS
    is not reported (it would include this interpreter's ~18 MB, see spawnd.c).
    """

    def __init__(self, env: dict[str, str], errlog: str, spawnd: str | None = None, timeout: float = 30.0) -> None:
        self.env = env
        self.timeout = timeout
        self.inflight = 0
        self.null_fd = os.open(os.devnull, os.O_RDWR)
        self.err_fd = os.open(errlog, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        self.actions = [
            (os.POSIX_SPAWN_DUP2, self.null_fd, 0),
            (os.POSIX_SPAWN_DUP2, self.null_fd, 1),
            (os.POSIX_SPAWN_DUP2, self.err_fd, 2),
        ]
        self.server_pid = 0
        if spawnd:
            self._start_server(spawnd)

    def _start_server(self, spawnd: str) -> None:
        req_r, self.req_w = os.pipe()
        self.resp_r, resp_w = os.pipe()
        actions = [
            (os.POSIX_SPAWN_DUP2, req_r, 0),
            (os.POSIX_SPAWN_DUP2, self.null_fd, 1),
            (os.POSIX_SPAWN_DUP2, self.null_fd, 2),
            (os.POSIX_SPAWN_DUP2, resp_w, 3),
            (os.POSIX_SPAWN_DUP2, self.null_fd, 4),
            (os.POSIX_SPAWN_DUP2, self.err_fd, 5),
        ]
        self.server_pid = os.posix_spawn(spawnd, [spawnd], {}, file_actions=actions)
        os.close(req_r)
        os.close(resp_w)

    def run(self, argv: list[str], env: dict[str, str] | None = None) -> Result:
        """Run argv to completion and return its cost; argv[0] must be an absolute path."""
        os.ftruncate(self.err_fd, 0)
        env = env or self.env
        timed_out = False
        if self.server_pid:
            wall, cpu, rss, status, timed_out = self._run_server(argv, env)
        else:
            actions = self.actions
            t0 = time.perf_counter_ns()
            pid = os.posix_spawn(argv[0], argv, env, file_actions=actions)
            _, status, ru = os.wait4(pid, 0)
            wall = time.perf_counter_ns() - t0
            cpu, rss = round((ru.ru_utime + ru.ru_stime) * 1e9), -1
        rc = os.waitstatus_to_exitcode(status)
        err = ""
        if timed_out:
            rc = rc or -9
            err = f"timed out after {self.timeout:.0f}s"
        elif rc != 0:
            err = self.first_error_line() or f"exit status {rc}"
        return Result(wall_ns=wall, cpu_ns=cpu, maxrss_kb=rss, rc=rc, err=err)

    def _read(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = os.read(self.resp_r, n - len(data))
            if not chunk:
                raise OSError("spawnd exited")
            data += chunk
        return data

    def _run_server(self, argv: list[str], env: dict[str, str]) -> tuple[int, int, int, int, bool]:
        import struct

        strs = [str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
        blob = b"".join(x.encode() + b"\0" for x in strs)
        os.write(self.req_w, struct.pack("=I", len(blob)) + blob)
        (self.inflight,) = struct.unpack("=q", self._read(8))
        timed_out = False
        if self.inflight and not select.select([self.resp_r], [], [], self.timeout)[0]:
            kill_quietly(self.inflight)  # spawnd's wait4 then returns and it answers
            timed_out = True
        wall, utime, stime, rss, status, errno, _ = struct.unpack("=7q", self._read(56))
        self.inflight = 0
        if errno:
            raise OSError(errno, f"failed to spawn {argv[0]}: {os.strerror(errno)}")
        return wall, utime + stime, rss, status, timed_out

    def first_error_line(self) -> str:
        """The first line mentioning an error (else the first line) the last command wrote to stderr."""
        os.lseek(self.err_fd, 0, os.SEEK_SET)
        lines = [ln.strip() for ln in os.read(self.err_fd, 65536).decode(errors="replace").splitlines()]
        lines = [ln for ln in lines if ln]
        # prefer the line that says what went wrong over a usage banner or a traceback header
        named = [ln for ln in lines if "error" in ln.lower()]
        return (named or lines or [""])[0][:300]

    def close(self) -> None:
        """Stop the spawn server and close the descriptors opened for stdio."""
        if self.server_pid:
            if self.inflight:  # interrupted while a command ran
                kill_quietly(self.inflight)
            os.close(self.req_w)
            os.close(self.resp_r)
            try:
                os.waitpid(self.server_pid, 0)
            except ChildProcessError:  # already reaped
                pass
            self.server_pid = 0
        os.close(self.null_fd)
        os.close(self.err_fd)


def build_spawnd(src: str, dest: str) -> str | None:
    """Compile spawnd.c to dest with cc; None when no compiler works."""
    import shutil
    import subprocess

    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return None
    proc = subprocess.run([cc, "-O2", "-o", dest, src], capture_output=True)
    return dest if proc.returncode == 0 else None


class Reaper:
    """Waits for one process in a background thread and records when it ended.

    The container's init is our child only through the subreaper; reaping it promptly matters
    because some runtimes poll the process during ``delete --force``, as conmon would reap it.
    If the process is not our child, fall back to polling a pidfd.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.cpu_ns = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._wait, name=f"reap-{pid}", daemon=True)
        self.thread.start()

    def _wait(self) -> None:
        try:
            _, _, ru = os.wait4(self.pid, 0)
            self.cpu_ns = round((ru.ru_utime + ru.ru_stime) * 1e9)
        except ChildProcessError:
            self._wait_pidfd()
        finally:
            self.done.set()

    def _wait_pidfd(self) -> None:
        try:
            fd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            return
        try:
            select.select([fd], [], [])
        finally:
            os.close(fd)

    def wait(self, timeout: float) -> bool:
        """Block until the process has exited; False on timeout."""
        return self.done.wait(timeout)


def reap_exited() -> None:
    """Reap every child that has already exited, without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def child_pids() -> set[int]:
    """The pids whose parent is this process (read from /proc)."""
    me = str(os.getpid())
    out: set[int] = set()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # the comm field may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 1 and fields[1] == me:
            out.add(int(name))
    return out


def drain_children(keep: set[int], timeout: float) -> bool:
    """Wait until every child not in keep has exited and been reaped; False on timeout.

    Engines such as podman leave conmon and cleanup processes behind when the command returns;
    draining them before the next sample keeps their CPU in the sample that caused it.
    """
    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        reap_exited()
        if not (child_pids() - keep):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.02)


def kill_quietly(pid: int) -> None:
    """Send SIGKILL to pid, ignoring a process that is already gone."""
    import signal

    if pid <= 1:  # a bogus pid file must never turn into kill(0) or kill(-1)
        return
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class SmapsReader:
    """Reads Rss and Pss of a process from /proc/PID/smaps_rollup.

    The container's process is usually not dumpable, so only root can read its smaps. In
    rootless mode a helper forked before the benchmark drops privileges keeps root and answers
    over a pipe; in rootful mode the file is read directly.
    """

    def __init__(self) -> None:
        self.helper_pid = 0
        self.req_w = -1
        self.resp_r = -1

    def start_helper(self) -> int:
        """Fork the root helper; return its pid. Call before dropping privileges."""
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child: serve requests until the pipe closes
            try:
                os.close(req_w)
                os.close(resp_r)
                with os.fdopen(req_r, "r") as rin, os.fdopen(resp_w, "w") as wout:
                    for line in rin:
                        rss, pss = read_smaps(int(line))
                        wout.write(f"{rss} {pss}\n")
                        wout.flush()
            finally:
                os._exit(0)
        os.close(req_r)
        os.close(resp_w)
        self.helper_pid, self.req_w, self.resp_r = pid, req_w, resp_r
        self._resp = os.fdopen(resp_r, "r")
        return pid

    def read(self, pid: int) -> tuple[int, int]:
        """Rss and Pss of pid in kB, or (-1, -1) when unreadable."""
        if not self.helper_pid:
            return read_smaps(pid)
        os.write(self.req_w, f"{pid}\n".encode())
        rss, pss = self._resp.readline().split()
        return int(rss), int(pss)

    def stop(self) -> None:
        """Stop the helper, if any, and reap it."""
        if self.helper_pid:
            os.close(self.req_w)
            self._resp.close()
            os.waitpid(self.helper_pid, 0)
            self.helper_pid = 0


def read_smaps(pid: int) -> tuple[int, int]:
    """Rss and Pss of pid in kB from smaps_rollup, or (-1, -1) when unreadable."""
    rss = pss = -1
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss
