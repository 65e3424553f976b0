"""pyouki's Python API: the runtime's verbs as objects, for programs that manage containers.

    import pyouki
    rt = pyouki.Runtime()                          # the CLI's defaults: state root, rootless "auto"
    c = rt.create("web", bundle="/path/to/bundle")
    c.start()
    status = c.wait()                              # exit status, 128+N for signal N
    c.delete()

It drives the same library code as the `pyouki` command, with the same one-line error messages,
raised as typed exceptions (pyouki.errors). Unlike the command, it leaves the calling process as
it found it: no signal handler is installed, no chdir, no global log configuration, nothing waits
for any process but the ones it names (never waitpid(-1)), and the calling process is a child
subreaper only while `create` and `exec` run (see `_subreaper`), so the container's init and an
exec'd process end up as its children and `wait()` can collect their exit status. The caller's
environment contract of the command (NOTIFY_SOCKET, LISTEN_FDS) is not applied: an application's
own notify socket and socket-activation fds never reach a container. docs/api.md documents it.

Imported lazily by `pyouki/__init__.py` (`pyouki.Runtime` imports this module on first use), so
the command's hot paths never pay for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any

from pyouki.errors import (
    ConfigError,
    ContainerNotFound,
    ExitStatusUnknown,
    PyoukiError,
)
from pyouki.record import proc_stat

__all__ = ["Container", "Process", "Runtime", "State", "run", "spec"]

# an fd, or anything with fileno() (a file, a socket, sys.stdout)
Stream = int | IO[Any]

# the top-level fields of config.json: a message starting with "FIELD...: " names a config field
_CONFIG_TOP = frozenset(("ociVersion", "process", "root", "hostname", "domainname", "mounts", "hooks",
                         "annotations", "linux", "solaris", "windows", "vm", "zos"))


@dataclass(frozen=True)
class State:
    """A container's state (the OCI runtime spec's state object), read when asked for."""

    id: str
    status: str  # "created", "running", "paused" or "stopped"
    pid: int  # the container's init on the host; 0 once stopped
    bundle: str
    rootfs: str = ""
    created: str = ""  # RFC 3339, UTC
    owner: str = ""
    annotations: dict[str, str] = field(default_factory=dict)
    oci_version: str = ""

    @classmethod
    def from_oci(cls, state: Mapping[str, Any]) -> State:
        """From the state object `pyouki state` prints."""
        return cls(id=state["id"], status=state["status"], pid=int(state.get("pid") or 0),
                   bundle=state.get("bundle", ""), rootfs=state.get("rootfs", ""),
                   created=state.get("created", ""), owner=state.get("owner", ""),
                   annotations=dict(state.get("annotations") or {}), oci_version=state.get("ociVersion", ""))

    def to_oci(self) -> dict[str, Any]:
        """The state object as `pyouki state` prints it."""
        out: dict[str, Any] = {"ociVersion": self.oci_version, "id": self.id, "status": self.status,
                               "pid": self.pid, "bundle": self.bundle, "rootfs": self.rootfs,
                               "created": self.created, "owner": self.owner}
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


class Runtime:
    """The containers under one state root, with the CLI's global options.

    root: the state directory (default as the CLI: /run/pyouki for root, else
    $XDG_RUNTIME_DIR/pyouki); rootless: "auto" (unprivileged or in a user namespace), "true",
    "false" or a bool; systemd_cgroup: the systemd cgroup driver (--systemd-cgroup); cgroups:
    False runs without cgroups (crun's --cgroup-manager=disabled).
    """

    def __init__(self, root: str | os.PathLike[str] | None = None, rootless: str | bool = "auto",
                 systemd_cgroup: bool = False, cgroups: bool = True) -> None:
        from pyouki.state import default_root, is_rootless

        self.root = os.path.abspath(os.fspath(root) if root is not None else default_root())
        if isinstance(rootless, bool):
            self.rootless = rootless
        elif rootless in ("auto", "true", "false"):
            self.rootless = is_rootless(rootless)
        else:
            raise PyoukiError(f"rootless: {rootless!r} is not one of auto, true, false")
        self.systemd_cgroup = systemd_cgroup
        self.cgroups = cgroups
        # exit statuses this process collected, by (pid, start time): every handle of a container
        # gets it, and after delete too
        self._exits: dict[tuple[int, Any], int] = {}

    def __repr__(self) -> str:
        return f"Runtime(root={self.root!r}, rootless={self.rootless!r})"

    def create(self, id: str, bundle: str | os.PathLike[str] = ".", console_socket: str | None = None,  # noqa: A002
               pid_file: str | None = None, *, stdin: Stream | None = None, stdout: Stream | None = None,
               stderr: Stream | None = None, no_pivot: bool = False, no_new_keyring: bool = False) -> Container:
        """Create the container `id` from bundle (OCI `create`): its process waits for start().

        The container's init is a child of the calling process (wait() collects its status).
        stdin/stdout/stderr: the process's standard streams (fds or files; default: the caller's).
        With process.terminal and no console_socket, the terminal's master end is
        Container.console (the caller reads and writes it, and closes it).
        """
        from pyouki.create import CreateOptions, create
        from pyouki.state import ensure_root, validate_id

        with _errors():
            opts = CreateOptions(
                root=ensure_root(self.root), container_id=validate_id(id), bundle=os.fspath(bundle),
                pid_file=pid_file, console_socket=console_socket, no_pivot=no_pivot,
                no_new_keyring=no_new_keyring, rootless=self.rootless, systemd_cgroup=self.systemd_cgroup,
                cgroups=self.cgroups, stdio=_stdio(stdin, stdout, stderr), listen_fds=0, notify_socket="",
            )
            with _subreaper(), _spawn_lock:
                # foreground: a terminal without a console socket is handed to us, not refused
                made = create(opts, foreground=console_socket is None)
        return Container(self, id, record=made.record, console=made.console_master)

    def get(self, id: str) -> Container:  # noqa: A002
        """The existing container `id`; ContainerNotFound if there is none."""
        from pyouki.state import Container as Record

        with _errors():
            record = Record(self.root, id).load().record
        return Container(self, id, record=record)

    def list(self) -> list[Container]:
        """Every container under the state root, sorted by id."""
        from pyouki.state import Container as Record
        from pyouki.state import list_ids

        found = []
        for container_id in list_ids(self.root):
            try:
                found.append(Container(self, container_id, record=Record(self.root, container_id).load().record))
            except PyoukiError:
                continue  # deleted meanwhile
        return found

    def run(self, id: str, bundle: str | os.PathLike[str] = ".", *, stdin: Stream | None = None,  # noqa: A002
            stdout: Stream | None = None, stderr: Stream | None = None, timeout: float | None = None) -> int:
        """create + start + wait + delete; the exit status (128+N for signal N).

        With process.terminal, what the process writes to its terminal is copied to stdout (its
        input is empty). The container is force-deleted on any error, and on timeout
        (TimeoutError)."""
        container = self.create(id, bundle, stdin=stdin, stdout=stdout, stderr=stderr)
        try:
            container.start()
            if container.console >= 0:
                _drain(container.console, _fd(stdout, 1))
                container.console = -1
            status = container.wait(timeout)
        except BaseException:
            container.delete(force=True)
            raise
        container.delete(force=True)
        return status


class Container:
    """A handle on one container; every method reads the container's real state first."""

    def __init__(self, runtime: Runtime, id: str, record: Mapping[str, Any] | None = None,  # noqa: A002
                 console: int = -1) -> None:
        self.runtime = runtime
        self.id = id
        record = record or {}
        self._pid = int(record.get("pid") or 0)
        self._pid_start = record.get("pid_start")
        # the terminal's master end (process.terminal without a console socket), the caller's to close
        self.console = console
        self._pidfd = -1
        if self._pid > 0 and _start_time(self._pid) == self._pid_start and not self._is_child():
            # watched from now on: if init exits before wait(), its status can still be learnt
            try:
                pidfd = os.pidfd_open(self._pid)
            except OSError:
                pidfd = -1
            if pidfd >= 0 and _start_time(self._pid) != self._pid_start:
                os.close(pidfd)  # the pid was reused between the two reads
                pidfd = -1
            self._pidfd = pidfd

    def __repr__(self) -> str:
        return f"Container({self.id!r}, pid={self._pid})"

    def close(self) -> None:
        """Release the handle's file descriptors (not the container)."""
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    def __enter__(self) -> Container:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def _root(self) -> str:
        return self.runtime.root

    @property
    def pid(self) -> int:
        """The host pid of the container's init (as recorded at create)."""
        return self._pid

    def state(self) -> State:
        """The container's state now (OCI `state`)."""
        from pyouki.lifecycle import state

        with _errors():
            return State.from_oci(state(self._root, self.id))

    @property
    def status(self) -> str:
        """Shorthand for state().status."""
        return self.state().status

    def start(self) -> None:
        """Let the created container run its process (OCI `start`)."""
        from pyouki.lifecycle import start

        with _errors():
            start(self._root, self.id, notify_socket="")

    def kill(self, signal: str | int = "TERM", all: bool = False) -> None:  # noqa: A002
        """Send a signal (name, SIG-name or number) to init, or with all to every process in it."""
        from pyouki.lifecycle import kill

        with _errors():
            kill(self._root, self.id, str(int(signal)) if isinstance(signal, int) else signal, all)

    def wait(self, timeout: float | None = None) -> int:
        """Wait until init exits; its exit status (128+N when signal N killed it).

        Exact when init is this process's child (the container was created through this API
        here). Otherwise it is read from the zombie (/proc/PID/stat) or, once reaped by its
        parent, from the pidfd this handle has held since before the exit (Linux 6.15 or later);
        when neither can tell, ExitStatusUnknown. TimeoutError after timeout seconds.
        """
        key = (self._pid, self._pid_start)
        if key in self.runtime._exits:
            return self.runtime._exits[key]
        if self._pid <= 0:
            raise ContainerNotFound(f"{self.id}: container does not exist")
        if self._is_child():
            status = _wait_child(self._pid, timeout)
        else:
            status = self._wait_other(timeout)
        self.runtime._exits[key] = status
        return status

    def _is_child(self) -> bool:
        stat = proc_stat(self._pid)
        return stat is not None and stat[1] == os.getpid() and stat[2] == self._pid_start

    def _wait_other(self, timeout: float | None) -> int:
        import select
        import time

        from pyouki import syscalls

        if self._pidfd < 0:
            raise ExitStatusUnknown(f"cannot get the exit status of container {self.id}: its init is not a "
                                    "child of this process and had exited before it was watched")
        ready, _, _ = select.select([self._pidfd], [], [], timeout)
        if not ready:
            raise TimeoutError(f"container {self.id} still running after {timeout} s")
        # exited: a zombie keeps its status in /proc/PID/stat until its parent reaps it; after
        # that only the pidfd has it (Linux 6.15). Between the two it is briefly in neither.
        deadline = time.monotonic() + 5.0
        while True:
            stat = proc_stat(self._pid)
            if stat is not None and stat[2] == self._pid_start and stat[0] == "Z":
                return _exit_status(stat[3])
            status = syscalls.pidfd_exit_status(self._pidfd)
            if status is not None:
                return _exit_status(status)
            if time.monotonic() > deadline:
                raise ExitStatusUnknown(f"cannot get the exit status of container {self.id}: it was reaped by "
                                        "its parent and this kernel does not keep it (Linux 6.15 does)")
            time.sleep(0.01)

    def pause(self) -> None:
        """Freeze every process of the container (its cgroup freezer)."""
        from pyouki.pause import pause

        with _errors():
            pause(self._root, self.id)

    def resume(self) -> None:
        """Thaw a paused container."""
        from pyouki.pause import resume

        with _errors():
            resume(self._root, self.id)

    def update(self, resources: Mapping[str, Any] | None = None, intel_rdt: Mapping[str, str] | None = None) -> None:
        """Change the cgroup limits: resources is an OCI linux.resources object (as `update
        --resources`); intel_rdt holds l3CacheSchema and/or memBwSchema."""
        from pyouki.update import update

        with _errors():
            update(self._root, self.id, dict(resources or {}), dict(intel_rdt) if intel_rdt else None)

    def ps(self) -> list[int]:
        """Host pids of the container's processes (empty once stopped), as `ps --format json`."""
        from pyouki.ps import pids

        with _errors():
            return pids(self._root, self.id)

    def stats(self) -> dict[str, Any]:
        """The container's resource statistics now: the `data` of `events --stats` (runc's shape)."""
        return next(self.events(stats=True))["data"]  # type: ignore[no-any-return]

    def events(self, stats: bool = False, interval: float = 5.0) -> Iterator[dict[str, Any]]:
        """runc's events as dicts: with stats one stats event, else a stats event every interval
        seconds and {"type": "oom"} events, until the container stops."""
        from pyouki.events import event_stream

        with _errors():
            stream = event_stream(self._root, self.id, interval, stats)
        return _typed_iter(stream)

    def exec(self, args: Sequence[str], tty: bool = False, *, env: Mapping[str, str] | Sequence[str] | None = None,
             cwd: str | None = None, user: str | int | None = None, additional_gids: Sequence[int] = (),
             caps: Sequence[str] = (), no_new_privileges: bool = False, stdin: Stream | None = None,
             stdout: Stream | None = None, stderr: Stream | None = None, console_socket: str | None = None,
             ignore_paused: bool = False) -> Process:
        """Run another process in the container (OCI `exec`); returns once it has started.

        The process is built from the container's process like `pyouki exec` (env added, cwd,
        user "UID[:GID]"); it is a child of the caller: Process.wait() for its status. With tty
        and no console_socket, the terminal's master end is Process.console.
        """
        from pyouki.exec import ExecOptions, start_process

        if isinstance(env, Mapping):
            env = [f"{k}={v}" for k, v in env.items()]
        opts = ExecOptions(
            args=list(args), env=list(env or []), cwd=cwd, user=None if user is None else str(user),
            additional_gids=[str(g) for g in additional_gids], caps=list(caps), no_new_privs=no_new_privileges,
            tty=tty, console_socket=console_socket, ignore_paused=ignore_paused,
            stdio=_stdio(stdin, stdout, stderr),
        )
        with _errors(), _subreaper(), _spawn_lock:
            pid, master = start_process(self._root, self.id, opts)
        return Process(pid, master)

    def delete(self, force: bool = False) -> None:
        """Remove the container (OCI `delete`); with force, kill it first. A stopped init that is
        this process's child is reaped (its status stays available to wait())."""
        from pyouki.lifecycle import delete

        with _errors():
            delete(self._root, self.id, force)
        if self._is_child():
            try:
                _, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                status = -1
            if status >= 0 and (self._pid, self._pid_start) not in self.runtime._exits:
                self.runtime._exits[(self._pid, self._pid_start)] = _exit_status(status)
        self.close()


class Process:
    """A process started by Container.exec: a child of the calling process."""

    def __init__(self, pid: int, console: int = -1) -> None:
        self.pid = pid
        # the terminal's master end (tty without a console socket), the caller's to close
        self.console = console
        self.returncode: int | None = None

    def __repr__(self) -> str:
        return f"Process(pid={self.pid}, returncode={self.returncode})"

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the process to exit; its exit status (128+N when signal N killed it)."""
        if self.returncode is None:
            self.returncode = _wait_child(self.pid, timeout)
        return self.returncode

    def poll(self) -> int | None:
        """The exit status if the process has exited, else None (does not block)."""
        if self.returncode is None:
            try:
                self.returncode = _wait_child(self.pid, 0)
            except TimeoutError:
                return None
        return self.returncode

    def kill(self, signal: str | int = "TERM") -> None:
        """Send a signal to the process (until it has been waited for)."""
        from pyouki.signals import parse_signal

        if self.returncode is None:
            with _errors():
                signum = parse_signal(str(signal))
            try:
                os.kill(self.pid, signum)
            except ProcessLookupError:
                pass  # exited, a zombie until wait()


def run(bundle: str | os.PathLike[str], id: str, *, root: str | None = None,  # noqa: A002
        rootless: str | bool = "auto", stdin: Stream | None = None, stdout: Stream | None = None,
        stderr: Stream | None = None, timeout: float | None = None) -> int:
    """create + start + wait + delete the bundle as container id; its exit status."""
    return Runtime(root=root, rootless=rootless).run(id, bundle, stdin=stdin, stdout=stdout, stderr=stderr,
                                                     timeout=timeout)


def spec(rootless: bool = False) -> dict[str, Any]:
    """The config `pyouki spec` writes (`--rootless`: the caller's ids mapped to root), as a dict
    to adjust and write as the bundle's config.json."""
    from pyouki.spec import default_spec

    return default_spec(rootless)


# -- helpers ------------------------------------------------------------------------------------

_reaper_lock = threading.Lock()
# create and exec of one process fork one at a time: a forked helper inherits every fd open at
# the fork, so it would hold another thread's channel pipes, and that thread would wait for an
# end-of-file that only comes when this helper ends (two creates could wait for each other)
_spawn_lock = threading.Lock()
_reaper_users = 0
_reaper_was_set = False


@contextmanager
def _subreaper() -> Iterator[None]:
    """Make the calling process a child subreaper for the duration, then restore it.

    create and exec fork an intermediate process that forks the container's process and exits;
    the orphan goes to the nearest subreaper ancestor, so while this is on, the container's init
    (or the exec'd process) becomes our child and stays so. Counted, so concurrent calls from
    several threads keep it on until the last one ends; a process that already was a subreaper
    stays one. While it is on, any orphan of the caller's other descendants comes to the caller
    too (a daemonizing hook, another thread's double fork): those the caller must reap itself.
    """
    global _reaper_users, _reaper_was_set
    from pyouki import syscalls

    with _reaper_lock:
        if _reaper_users == 0:
            _reaper_was_set = syscalls.get_child_subreaper()
            if not _reaper_was_set:
                syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        _reaper_users += 1
    try:
        yield
    finally:
        with _reaper_lock:
            _reaper_users -= 1
            if _reaper_users == 0 and not _reaper_was_set:
                syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 0)


@contextmanager
def _errors() -> Iterator[None]:
    """Raise pyouki's errors with their most precise type: a plain error whose message starts
    with a config field's JSON path (most of them come from the container's init as text) is a
    ConfigError, its .path the field."""
    try:
        yield
    except PyoukiError as e:
        typed = _typed(e)
        if typed is e:
            raise
        raise typed.with_traceback(e.__traceback__) from None


def _typed(e: PyoukiError) -> PyoukiError:
    if type(e) is not PyoukiError:
        return e
    message = str(e)
    path, sep, rest = message.partition(": ")
    top = path.split(".", 1)[0].split("[", 1)[0]
    if sep and top in _CONFIG_TOP and " " not in path:
        return ConfigError(path, rest)
    return e


def _typed_iter(stream: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    with _errors():
        yield from stream


def _stdio(stdin: Stream | None, stdout: Stream | None, stderr: Stream | None) -> tuple[int, int, int] | None:
    """The three fds for the process, or None to inherit the caller's (all three unset)."""
    if stdin is None and stdout is None and stderr is None:
        return None
    return (_fd(stdin, 0), _fd(stdout, 1), _fd(stderr, 2))


def _fd(stream: Stream | None, default: int) -> int:
    if stream is None:
        return default
    if isinstance(stream, int):
        return stream
    return stream.fileno()


def _drain(master: int, out: int) -> None:
    """Copy a terminal's output to out until the process closes it (EIO), then close master."""
    try:
        os.write(master, b"\x04")  # end of input: nothing will be typed
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every slave fd is closed
                break
            if not data:
                break
            os.write(out, data)
    finally:
        os.close(master)


def _start_time(pid: int) -> int | None:
    from pyouki.state import process_start_time

    return process_start_time(pid)


def _exit_status(wait_status: int) -> int:
    """The shell's exit status of a wait status: the code, or 128+N for signal N."""
    if os.WIFSIGNALED(wait_status):
        return 128 + os.WTERMSIG(wait_status)
    return os.waitstatus_to_exitcode(wait_status)


def _wait_child(pid: int, timeout: float | None) -> int:
    """waitpid for exactly pid (never -1: the caller's other children are not ours to reap)."""
    if timeout is not None:
        import select

        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            try:
                if not select.select([pidfd], [], [], timeout)[0]:
                    raise TimeoutError(f"process {pid} still running after {timeout} s")
            finally:
                os.close(pidfd)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            return _exit_status(status)
        except InterruptedError:
            continue
        except ChildProcessError:
            raise ExitStatusUnknown(f"cannot get the exit status of process {pid}: it is not a child of this "
                                    "process any more (reaped elsewhere, or SIGCHLD is ignored)") from None

