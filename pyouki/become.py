"""The last steps of every container process, shared by create's init and exec's children:
join the container's namespaces, become process.* (fds, rlimits, scheduler..., seccomp, user,
capabilities, cwd, LSM labels) and exec the program through the sealed stub; ProcessPlan holds
what the parent computed for it, and report_failure carries a child's error back as one line.

Runs after os.fork(), and for init after pivot_root, where the host's Python library is out of
reach: every module used here is imported at the top of this file, in the parent, before the
fork. exec imports only this module of the forked side; create's own steps are pyouki.init.
"""

from __future__ import annotations

import fcntl  # noqa: F401  (used by pyouki.syscalls.set_link_up and pyouki.execstub in the forked child)
import os
import resource  # noqa: F401  (used after pivot_root by pyouki.process.set_rlimits)
import struct  # noqa: F401
import sys

import _prctl  # noqa: F401  (used after pivot_root by pyouki.caps)
import prctl  # noqa: F401

from pyouki import lsm, procattrs
from pyouki import syscalls as sc
from pyouki.caps import CapabilitySets
from pyouki.config import NS_FILES
from pyouki.errors import PyoukiError, reason
from pyouki.execstub import ExecStub, script_interpreter
from pyouki.process import environment, home_of, resolve_executable, set_rlimits, set_user

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

    from pyouki.channel import Channel
    from pyouki.seccomp import SeccompFilter
    from pyouki.wasm import Handler as WasmModule

NS_FLAGS = {
    "user": sc.CLONE_NEWUSER, "mount": sc.CLONE_NEWNS, "uts": sc.CLONE_NEWUTS, "ipc": sc.CLONE_NEWIPC,
    "network": sc.CLONE_NEWNET, "pid": sc.CLONE_NEWPID, "cgroup": sc.CLONE_NEWCGROUP, "time": sc.CLONE_NEWTIME,
}


JOIN_ORDER = tuple(NS_FILES)  # user first, mount last (see config.NS_FILES)


class ProcessPlan:
    """What makes a forked process the container's process, computed in the parent (fork copies
    it), for both roles: exec's process as it is, init through Plan."""

    def __init__(self, process: dict, preserve_fds: int, namespaces: dict[str, str | None]) -> None:
        self.process = process
        self.preserve_fds = preserve_fds
        self.parent_pid = os.getpid()  # the command that forks the intermediate (the plan is made there)
        self.namespaces = namespaces  # kind: the path to join, or None (create: a new one; exec: init's)
        self.caps = CapabilitySets(process.get("capabilities"))
        self.ns_fds: dict[str, int] = {}  # the namespaces the intermediate joins (join_namespaces)
        self.root_fd = -1  # exec without a mount namespace: init's root, entered last
        # the compiled filter: built by the parent before the fork (pyouki.create, pyouki.exec)
        self.seccomp: SeccompFilter | None = None
        # the container's end of the terminal socketpair, when process.terminal (pyouki.spawn)
        self.console_sock: socket.socket | None = None
        # an unprivileged gid map written by ourselves forbids setgroups: learned from the parent
        self.setgroups_allowed = True
        # run.oci.handler=wasm: wasmtime is imported before the fork (None without the annotation)
        self.wasm: WasmModule | None = None

    def own_fds(self, up: Channel, stub: ExecStub) -> list[int]:
        """The runtime's fds the process keeps until its exec (close_fds closes the others)."""
        keep = [up.write_fd, stub.fd]
        if self.console_sock is not None:
            keep.append(self.console_sock.fileno())
        if self.seccomp is not None and self.seccomp.handover is not None:
            keep.append(self.seccomp.handover.child.fileno())  # the seccomp listener's way to the runtime
        return keep


def listen_fds() -> int:
    """Socket-activation fds given to us (LISTEN_FDS for our pid) are passed on, like runc."""
    try:
        if int(os.environ.get("LISTEN_PID", "0")) == os.getpid():
            return int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        pass
    return 0


def listen_env(count: int) -> list[str]:
    """The socket-activation variables for count passed fds, as runc sets them (LISTEN_FDS and
    LISTEN_PID=1: the process is pid 1 of its namespace), plus the caller's LISTEN_FDNAMES, so
    sd_listen_fds() and sd_listen_fds_with_names() work inside the container."""
    env = [f"LISTEN_FDS={count}", "LISTEN_PID=1"]
    if "LISTEN_FDNAMES" in os.environ:
        env.append(f"LISTEN_FDNAMES={os.environ['LISTEN_FDNAMES']}")
    return env


def check_preserved_fds(count: int, first: int, own: int = -1) -> None:
    """--preserve-fds N: refuse a negative N and fds first..first+N-1 that are not open (runc's
    message). own is an fd pyouki opened itself (the --log file): not the caller's to pass on."""
    if count < 0:
        raise PyoukiError(f"--preserve-fds: {count} is negative")
    for i in range(count):
        fd = first + i
        try:
            if fd == own:
                raise FileNotFoundError(2, "No such file or directory")
            os.stat(f"/proc/self/fd/{fd}")
        except OSError as e:
            raise PyoukiError(f"--preserve-fds: unable to stat preserved-fd {i} (of {count}): "
                              f"stat /proc/self/fd/{fd}: {reason(e)}") from None


def die_with(parent_pid: int) -> None:
    """SIGKILL when the parent dies; exit now if it already has (before the signal was armed)."""
    sc.prctl(sc.PR_SET_PDEATHSIG, 9)
    if os.getppid() != parent_pid:
        os._exit(1)


def report_failure(up: Channel, what: str, error: BaseException) -> None:
    """A forked child's error (an intermediate's, init's, exec's process's) to the parent over up,
    as one line: a PyoukiError as it is, anything else as `WHAT failed: ...`."""
    if isinstance(error, PyoukiError):
        _report(up, str(error))
    elif isinstance(error, OSError):
        _report(up, f"{what} failed: {reason(error)}")
    else:
        _report(up, f"{what} failed: {error}")


def _report(up: Channel, message: str) -> None:
    if up.write_fd >= 0:
        up.send("error", message)
    else:  # after `ready`: the caller of create is gone; tell the container's stderr, like runc
        os.write(2, f"pyouki: {message}\n".encode())


def join_namespaces(plan: ProcessPlan) -> bool:
    """setns into plan.ns_fds, user first and mount last (JOIN_ORDER), closing each fd, then
    chroot into plan.root_fd when there is one; the same code for both roles. Returns whether
    the user namespace joined allows setgroups (True without one), read at once: once in the
    mount namespace, /proc is the container's."""
    allowed = True
    for kind in JOIN_ORDER:
        fd = plan.ns_fds.pop(kind, None)
        if fd is None:
            continue
        try:
            sc.setns(fd, NS_FLAGS[kind])
        except OSError as e:
            path = plan.namespaces.get(kind)
            where = f" at {path}" if path else ""
            raise PyoukiError(f"failed to join the {kind} namespace{where}: {reason(e)}") from None
        finally:
            os.close(fd)
        if kind == "user":
            allowed = setgroups_allowed()
    if plan.root_fd >= 0:
        os.fchdir(plan.root_fd)
        os.chroot(".")
        os.close(plan.root_fd)
        plan.root_fd = -1
    return allowed


def setgroups_allowed() -> bool:
    """False when this user namespace (new or joined) was set up with setgroups denied."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def become_and_exec(plan: ProcessPlan, stub: ExecStub,
                    until_start: Callable[[str, dict[str, str]], None] | None = None) -> None:
    """The last steps of init and of exec's process, one code for both: the terminal, process.*
    (become_process: fds, rlimits, scheduler..., seccomp, user, capabilities, cwd), the LSM
    labels, until_start(exe, env) (init: ready, the wait for `start`, startContainer hooks), then
    the program through the exec stub (exec_program). Never returns."""
    process = plan.process
    if plan.console_sock is not None:
        from pyouki import console  # already imported by the parent before the fork

        user = process.get("user") or {}
        console.setup_in_container(plan.console_sock, process.get("consoleSize"), int(user.get("uid", 0)))
    exe, env = become_process(process, plan.caps, plan.seccomp, plan.setgroups_allowed, plan.preserve_fds)
    # AppArmor profile, SELinux label: requested now (for init a failure fails create, as with runc),
    # entered at the exec; init's startContainer hooks run under them too, as with runc
    lsm.apply(process)
    if until_start is not None:
        until_start(exe, env)
    exec_program(process, exe, env, plan.seccomp, stub, plan.wasm)


def become_process(process: dict, caps: CapabilitySets, seccomp: SeccompFilter | None, setgroups_allowed: bool,
                   preserve_fds: int) -> tuple[str, dict[str, str]]:
    """Turn this process into process.* (fds, rlimits, user, capabilities, cwd, no_new_privs) and find
    its executable; shared by init and exec. Returns (executable, environment) for exec_program."""
    prepare_fds(preserve_fds)
    set_rlimits(process.get("rlimits") or [])
    procattrs.apply(process)  # personality, memory policy, scheduler, I/O priority: before seccomp and caps
    if seccomp is not None and not process.get("noNewPrivileges"):
        # without no_new_privs, loading a filter needs CAP_SYS_ADMIN: the last moment is before
        # dropping capabilities; what follows must be allowed by the profile (as with runc)
        seccomp.load()
    # entered as root first, as runc: a cwd only root can enter works; one only the user can
    # enter (a volume chowned to it, root_squash) is entered again after the switch
    entered = enter_cwd(process.get("cwd") or "/", retry_later=True)
    drop_privileges(caps, process.get("user") or {}, setgroups_allowed)
    env = environment(process.get("env") or [])
    if "HOME" not in env:
        env["HOME"] = home_of(os.getuid())  # runc fills it from the container's /etc/passwd
    if not entered:
        enter_cwd(process.get("cwd") or "/")
    exe = resolve_executable(process["args"][0], env)
    if process.get("noNewPrivileges"):
        sc.prctl(sc.PR_SET_NO_NEW_PRIVS, 1)
    return exe, env


def enter_cwd(cwd: str, retry_later: bool = False) -> bool:
    """chdir to process.cwd, which must lead somewhere inside the container's root: getcwd fails
    for a directory outside it (reached through a magic link such as /proc/self/fd/N).

    With retry_later, a permission error returns False (the caller tries again as the user)."""
    try:
        os.chdir(cwd)
    except PermissionError:
        if retry_later:
            return False
        raise PyoukiError(f"process.cwd: failed to change to {cwd}: permission denied") from None
    except OSError as e:
        raise PyoukiError(f"process.cwd: failed to change to {cwd}: {reason(e)}") from None
    try:
        inside = os.getcwd().startswith("/")  # glibc: ENOENT for the kernel's "(unreachable)/..."
    except OSError:
        inside = False
    if not inside:
        raise PyoukiError(f"process.cwd: {cwd} is outside the container's root filesystem")
    return True


def exec_program(process: dict, exe: str, env: dict[str, str], seccomp: SeccompFilter | None,
                 stub: ExecStub, wasm: WasmModule | None = None) -> None:
    """The last steps of init (after start) and of exec's child, in this order, up to the container's
    program: signal dispositions as the program expects them, the seccomp filter when
    noNewPrivileges lets it wait until now, then execve through the sealed exec stub.

    Never returns. A program that cannot be executed ends the process as runc's init does:
    `exec PATH: REASON` on its stderr and status 1 (the stub does the same for what fails in it)."""
    restore_signals()
    missing = _missing_interpreter(exe)
    if missing:
        _exec_failed(exe, f"no such file or directory (its #! interpreter {missing} does not exist)")
    if seccomp is not None and process.get("noNewPrivileges"):
        seccomp.load()
    if wasm is not None:
        wasm.run(process["args"], env)  # run.oci.handler=wasm: the module instead of execve; never returns
    try:
        stub.execute(exe, process["args"], env, filtered=seccomp is not None)
    except OSError as e:
        _exec_failed(exe, reason(e))


def restore_signals() -> None:
    """Python ignores SIGPIPE and SIGXFSZ for itself, and ignored signals survive execve: the program
    gets them back at their default (as under runc), or `yes | head -1` says "Broken pipe".

    The caller's own ignored signals (nohup's SIGHUP...) are kept; whether it had SIGPIPE or SIGXFSZ
    ignored is lost when the interpreter starts, and runc resets those two as well."""
    import _signal  # built in and loaded at start-up: no file to read (we may be past pivot_root)

    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)


def _missing_interpreter(exe: str) -> str:
    """The #! interpreter of exe when it does not exist ("" otherwise), to say so rather than the
    kernel's bare ENOENT for a file that is there."""
    try:
        with open(exe, "rb") as f:
            interpreter = script_interpreter(f.read(256))
    except OSError:
        return ""
    if interpreter and not os.path.exists(interpreter):
        return interpreter
    return ""


def _exec_failed(exe: str, reason: str) -> None:
    try:
        os.write(2, f"exec {exe}: {reason}\n".encode())
    except OSError:
        pass
    os._exit(1)


def drop_privileges(caps: CapabilitySets, user: dict, setgroups_allowed: bool) -> None:
    """Bounding set, then the user switch with capabilities kept, then the final capability sets."""
    if caps.present:
        caps.drop_bounding()
    sc.prctl(sc.PR_SET_KEEPCAPS, 1)
    set_user(user, setgroups_allowed)
    sc.prctl(sc.PR_SET_KEEPCAPS, 0)
    if not caps.present:
        # no capabilities object: the process gets none, as with runc
        caps.effective = caps.permitted = caps.inheritable = caps.ambient = []
    caps.apply()


def prepare_fds(preserve: int) -> None:
    """Only stdio and the preserved fds reach the container: mark everything else close-on-exec
    (close_range, or one by one through /proc/self/fd where a seccomp profile or the kernel
    refuses close_range)."""
    for fd in range(3, 3 + preserve):
        try:
            os.set_inheritable(fd, True)
        except OSError:
            pass
    try:
        sc.close_range(3 + preserve, sc.CLOSE_RANGE_CLOEXEC)
        return
    except OSError:
        pass
    for fd in _open_fds():
        if fd >= 3 + preserve:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass  # the listing's own fd, closed already


def close_fds(first: int, keep: list[int]) -> None:
    """Close every fd from first upwards but those in keep (the runtime's own, all close-on-exec)."""
    log = sys.modules.get("pyouki.log")
    if log is not None:
        keep = [*keep, log.fileno()]  # --log: still ours until exec
    start = first
    for fd in sorted({k for k in keep if k >= first}):
        _close_range(start, fd - 1)
        start = fd + 1
    _close_range(start, 0xFFFFFFFF)


def _close_range(first: int, last: int) -> None:
    if first > last:
        return
    try:
        sc.close_range(first, 0, last)
        return
    except OSError:
        pass  # ENOSYS (before linux 5.9), or a seccomp profile without close_range
    for fd in _open_fds():
        if first <= fd <= last:
            try:
                os.close(fd)
            except OSError:
                pass  # the listing's own fd, closed already


def _open_fds() -> list[int]:
    """The fds open in this process, from /proc/self/fd, or every number below RLIMIT_NOFILE
    where /proc is not there."""
    try:
        return [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        import resource

        return list(range(resource.getrlimit(resource.RLIMIT_NOFILE)[0]))
