"""The forked side of `create`: the intermediate process and the container's init; and what
exec's children share with them (ProcessPlan, join_namespaces, become_and_exec, report_failure).

Runs after os.fork() of the parent. After pivot_root the host's Python library is out of reach,
so every module used here is imported at the top of this file, in the parent, before the fork.
"""

from __future__ import annotations

import fcntl  # noqa: F401  (used by pyouki.syscalls.set_link_up and pyouki.execstub in the forked child)
import os
import resource  # noqa: F401  (used after pivot_root by pyouki.process.set_rlimits)
import select
import struct  # noqa: F401
import sys

import _prctl  # noqa: F401  (used after pivot_root by pyouki.caps)
import prctl  # noqa: F401

from pyouki import lsm, procattrs
from pyouki import rootfs as fs
from pyouki import syscalls as sc
from pyouki.caps import CapabilitySets
from pyouki.channel import Channel, fork_child
from pyouki.config import NS_FILES, namespaces
from pyouki.errors import PyoukiError, reason
from pyouki.execstub import ExecStub, script_interpreter
from pyouki.mounts import CgroupView, cgroup_hierarchies
from pyouki.process import environment, home_of, resolve_executable, set_rlimits, set_user

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    import socket
    from collections.abc import Callable

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


class Plan(ProcessPlan):
    """Everything create's children need, computed in the parent (fork copies it)."""

    def __init__(self, config: dict, bundle: str, rootfs: str, rootless: bool, no_pivot: bool,
                 preserve_fds: int, fifo_fd: int, container_id: str = "", new_keyring: bool = True,
                 listen: int | None = None) -> None:
        listen = listen_fds() if listen is None else listen  # None: LISTEN_FDS of our environment
        process: dict = config["process"]
        if listen:
            # a copy: the config saved for exec must not hand these to exec'd processes
            process = dict(process, env=[*(process.get("env") or []), *listen_env(listen)])
        super().__init__(process, preserve_fds + listen, namespaces(config))
        self.config = config
        self.bundle = bundle
        self.rootfs = rootfs
        self.rootless = rootless
        self.no_pivot = no_pivot
        self.fifo_fd = fifo_fd
        self.container_id = container_id
        self.new_keyring = new_keyring
        self.new_userns = "user" in self.namespaces and self.namespaces["user"] is None
        self.linux: dict = config.get("linux") or {}
        self.ns_fds = self._open_namespace_paths()
        from pyouki import hooks

        # createRuntime/prestart run in the parent while init waits before pivot_root
        self.hook_sync = hooks.has(config, "prestart", "createRuntime", "createContainer")
        # linux.netDevices: the parent moves them in meanwhile (pyouki.netdev); the same wait keeps
        # linux.sysctl and the hooks from running before they are there
        self.hook_sync = self.hook_sync or bool(self.linux.get("netDevices"))
        self.start_hooks = hooks.has(config, "startContainer")
        from pyouki import wasm

        self.wasm = wasm.handler(config)
        # the host's cgroup hierarchies and our place in them, read before the cgroup namespace
        self.cgroups: CgroupView | None = None

    def _open_namespace_paths(self) -> dict[str, int]:
        fds = {}
        for i, (kind, path) in enumerate(self.namespaces.items()):
            if path:
                try:
                    fds[kind] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                except OSError as e:
                    raise PyoukiError(f"linux.namespaces[{i}].path: failed to open {path}: "
                                      f"{reason(e)}") from None
        return fds


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


def intermediate(plan: Plan, down: Channel, up: Channel) -> None:
    """Enter or create the namespaces, then fork init into them; never returns.

    It lives on after that, idle, until create has recorded the container and kills it: init's
    parent-death signal is tied to it, and its own to create.
    """
    try:
        die_with(plan.parent_pid)  # die with create while the set-up is under way
        oom = plan.process.get("oomScoreAdj")
        if oom is not None:
            _write_oom_score_adj(oom)
        join_namespaces(plan)
        if plan.new_userns:
            try:
                sc.unshare(sc.CLONE_NEWUSER)
            except OSError as e:
                raise PyoukiError(f"failed to create a user namespace: {reason(e)}") from None
        up.send("map")
        verb, arg = down.receive()
        if verb != "mapped":
            os._exit(1)  # the parent reports its own error
        plan.setgroups_allowed = arg == "1" and setgroups_allowed()
        if any(m.get("type") == "cgroup" for m in plan.config.get("mounts") or []):
            # in our cgroup now, and not yet in a cgroup namespace that hides where it is
            plan.cgroups = CgroupView(cgroup_hierarchies(plan.rootfs), "cgroup" in plan.namespaces)
        if plan.new_userns:
            try:
                os.setresgid(0, 0, 0)
                os.setresuid(0, 0, 0)
            except OSError:
                pass  # 0 is not mapped: stay the overflow id, with full capabilities inside
            die_with(plan.parent_pid)  # a change of credentials clears the parent-death signal
        # from here on, no process in the container may ptrace us or read our memory
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        flags = 0
        for kind, path in plan.namespaces.items():
            if path is None and kind != "user":
                flags |= NS_FLAGS[kind]
        try:
            sc.unshare(flags)
        except OSError as e:
            names = ", ".join(k for k, p in plan.namespaces.items() if p is None and k != "user")
            raise PyoukiError(f"linux.namespaces: failed to create namespaces ({names}): {reason(e)}") from None
        if "network" in plan.namespaces and plan.namespaces["network"] is None:
            try:
                sc.set_link_up("lo")  # a new network namespace starts with lo down; runc brings it up
            except PermissionError:
                # no CAP_NET_ADMIN here (e.g. under systemd-nspawn): the container still runs, with
                # lo down, rather than not at all
                from pyouki import log

                log.warning("could not bring up lo in the new network namespace: operation not permitted")
        if "time" in plan.namespaces and plan.namespaces["time"] is None:
            _write_time_offsets(plan.linux.get("timeOffsets") or {})
        pid = fork_child(container_init, plan, up, down)
        up.send("pid", str(pid))
        up.close()
        down.close()
        while True:  # until create kills us (or we die with it)
            select.select([], [], [])
    except BaseException as e:  # noqa: BLE001 - anything must still reach the caller as one line
        report_failure(up, "container set-up", e)
    os._exit(1)


def setgroups_allowed() -> bool:
    """False when this user namespace (new or joined) was set up with setgroups denied."""
    try:
        with open("/proc/self/setgroups") as f:
            return f.read().strip() != "deny"
    except OSError:
        return True


def _write_oom_score_adj(value: int) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(str(value))
    except OSError as e:
        raise PyoukiError(f"process.oomScoreAdj: failed to set {value}: {reason(e)}") from None


def _write_time_offsets(offsets: dict) -> None:
    lines = []
    for clock, name in (("monotonic", "monotonic"), ("boottime", "boottime")):
        off = offsets.get(clock)
        if off:
            lines.append(f"{name} {int(off.get('secs', 0))} {int(off.get('nanosecs', 0))}\n")
    # a non-dumpable process's /proc/self files belong to the host's root, whom a new user namespace
    # does not map (rootless: EACCES): dumpable for the write only, while no container process exists
    sc.prctl(sc.PR_SET_DUMPABLE, 1)
    try:
        for line in lines:
            with open("/proc/self/timens_offsets", "w") as f:
                f.write(line)
    except OSError as e:
        raise PyoukiError(f"linux.timeOffsets: failed to write time namespace offsets: {reason(e)}") from None
    finally:
        sc.prctl(sc.PR_SET_DUMPABLE, 0)


def container_init(plan: Plan, up: Channel, down: Channel) -> None:
    """Build the container around this process, report ready, wait for start, exec; never returns.

    Until create has recorded the container, init must not outlive it: nothing would find it.
    It dies with the intermediate (which dies with create) by a parent-death signal, and after
    `ready` waits for create's `created`; end-of-file instead means create is gone.
    """
    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        if _creator_gone(down):  # create (and so the intermediate) died before the signal was armed
            os._exit(1)
        os.setsid()
        stub = ExecStub.prepare(3 + plan.preserve_fds)  # before the container's filesystem and seccomp
        if plan.new_keyring:
            _new_session_keyring(plan.container_id)
        _setup(plan, up, down, stub)
        become_and_exec(plan, stub, lambda exe, env: _until_start(plan, up, down, exe, env))
    except BaseException as e:  # noqa: BLE001
        report_failure(up, "container init", e)
    os._exit(127)


def _until_start(plan: Plan, up: Channel, down: Channel, exe: str, env: dict[str, str]) -> None:
    """init between its set-up and its exec: ready, recorded, started, startContainer hooks."""
    if plan.wasm is not None:  # compiled before ready: a bad module fails create
        plan.wasm = plan.wasm.load(exe)
    if plan.seccomp is not None and plan.seccomp.notify:
        plan.seccomp.load()  # its listener fd reaches the agent through create, still listening (runc's order)
    up.send("ready")
    # the user switch may have cleared the parent-death signal: the channel still tells
    if down.receive()[0] != "created":
        os._exit(1)
    sc.prctl(sc.PR_SET_PDEATHSIG, 0)  # recorded: the container outlives create from now on
    down.close()
    up.close()  # create waits for this end-of-file before it ends the intermediate
    _wait_for_start(plan.fifo_fd)
    if plan.process.get("noNewPrivileges") and plan.seccomp is not None:
        plan.seccomp.load()  # before the startContainer hooks: they run under it in runc too
    if plan.start_hooks:
        from pyouki import hooks

        hooks.run(plan.config, "startContainer", _hook_state(plan, "created", 1), env=env)


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


def _creator_gone(down: Channel) -> bool:
    """True when create has died: it alone holds the writing end of down."""
    poller = select.poll()
    poller.register(down.read_fd, select.POLLIN)
    return any(events & (select.POLLHUP | select.POLLERR) for _, events in poller.poll(0))


def _new_session_keyring(container_id: str) -> None:
    """Keep the host's session keyring (and its keys) out of the container, like runc."""
    try:
        sc.join_session_keyring(f"_ses.{container_id}")
    except OSError as e:
        if e.errno not in (1, 13, 38):  # EPERM/EACCES/ENOSYS: keyrings unavailable here; runc goes on too
            raise PyoukiError(f"failed to create a session keyring: {reason(e)}") from None


def _report(up: Channel, message: str) -> None:
    if up.write_fd >= 0:
        up.send("error", message)
    else:  # after `ready`: the caller of create is gone; tell the container's stderr, like runc
        os.write(2, f"pyouki: {message}\n".encode())


def _hook_state(plan: Plan, status: str, pid: int) -> dict:
    from pyouki import OCI_VERSION

    return {"ociVersion": OCI_VERSION, "id": plan.container_id, "status": status, "pid": pid,
            "bundle": plan.bundle, "annotations": plan.config.get("annotations") or {}}


def _setup(plan: Plan, up: Channel, down: Channel, stub: ExecStub) -> None:
    config, process, linux = plan.config, plan.process, plan.linux
    in_userns = plan.rootless or "user" in plan.namespaces
    # without a mount namespace of its own the container shares the host's mount table: nothing is
    # mounted (config.validate refuses the fields that would need it) and the rootfs is a chroot
    own_mounts = "mount" in plan.namespaces
    if own_mounts:
        rootfd = fs.prepare(plan.rootfs, linux.get("rootfsPropagation"))
        os.chdir(plan.bundle)  # relative bind sources are relative to the bundle
        specs = fs.do_mounts(config, rootfd, plan.rootless, plan.cgroups)
        fs.create_devices(config, rootfd, specs, in_userns)
    else:
        rootfd = fs.open_rootfs(plan.rootfs)
    if plan.hook_sync:
        # the parent runs prestart and createRuntime hooks now, in the runtime's namespaces
        up.send("hooks")
        if down.receive()[0] != "continue":
            os._exit(1)  # the parent reports the hook's failure
        from pyouki import hooks

        # as runc: in the rootfs (not yet the root), with process.env as given (no HOME added yet)
        hook_env = dict(item.partition("=")[::2] for item in process.get("env") or [])
        hooks.run(config, "createContainer", _hook_state(plan, "creating", os.getpid()), cwd=plan.rootfs, env=hook_env)
    # nothing of the caller's but stdio and the preserved fds may be open once paths resolve in the
    # container: a leaked directory fd would be a way out through /proc/self/fd/N (CVE-2024-21626)
    close_fds(3 + plan.preserve_fds, [*plan.own_fds(up, stub), down.read_fd, plan.fifo_fd, rootfd])
    if own_mounts:
        fs.pivot(rootfd, plan.rootfs, plan.no_pivot)
        fs.reopen_dev_null()
    else:
        fs.write_sysctls(linux.get("sysctl") or {})  # through the host's /proc: the rootfs may have none
        fs.chroot(rootfd, plan.rootfs)
    os.close(rootfd)
    # like runc, a missing process.cwd is created (as the container's root, before root.readonly)
    fs.make_cwd(process.get("cwd") or "/")
    fs.set_root_propagation(linux.get("rootfsPropagation"))
    if config.get("hostname"):
        _set_name(sc.sethostname, config["hostname"], "hostname")
    if config.get("domainname"):
        _set_name(sc.setdomainname, config["domainname"], "domainname")
    if own_mounts:
        fs.write_sysctls(linux.get("sysctl") or {})
    fs.readonly_paths(linux.get("readonlyPaths") or [])
    fs.mask_paths(linux.get("maskedPaths") or [])
    if (config.get("root") or {}).get("readonly"):
        fs.readonly_root()


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


def _set_name(setter, value: str, field: str) -> None:  # type: ignore[no-untyped-def]
    try:
        setter(value)
    except OSError as e:
        raise PyoukiError(f"{field}: failed to set {value!r}: {reason(e)}") from None


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


def _wait_for_start(fifo_fd: int) -> None:
    """Block until `start` writes to exec.fifo."""
    poller = select.poll()
    poller.register(fifo_fd, select.POLLIN)
    while True:
        poller.poll()
        try:
            if os.read(fifo_fd, 1):
                break
        except BlockingIOError:
            continue
    os.close(fifo_fd)
