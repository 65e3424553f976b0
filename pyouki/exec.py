"""`exec`: run another process in a running container.

The caller forks an intermediate process that joins the container's namespaces (its user
namespace first, the mount namespace last) and its cgroup, then forks the new process into the
container's PID namespace. That process takes on the process object (from --process or built
from the container's config plus the flags, like runc), the container's seccomp filter, and
execs. Errors come back over a close-on-exec pipe: end-of-file without a message means the exec
happened.
"""

from __future__ import annotations

import os

from pyouki import syscalls as sc
from pyouki.channel import Channel, fork_child
from pyouki.errors import PyoukiError, reason
from pyouki.state import Container

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing
if TYPE_CHECKING:
    from pyouki.execstub import ExecStub


class ExecOptions:
    """runc's exec flags."""

    def __init__(self, args: list[str] | None = None, process_file: str | None = None, env: list[str] | None = None,
                 cwd: str | None = None, user: str | None = None, additional_gids: list[str] | None = None,
                 caps: list[str] | None = None, no_new_privs: bool = False, apparmor: str | None = None,
                 process_label: str | None = None, tty: bool = False, console_socket: str | None = None,
                 pid_file: str | None = None, detach: bool = False, preserve_fds: int = 0,
                 ignore_paused: bool = False, cgroup: list[str] | str | None = None,
                 stdio: tuple[int, int, int] | None = None, listen_fds: int | None = None) -> None:
        self.args = list(args or [])
        self.process_file = process_file
        self.env = list(env or [])
        self.cwd = cwd
        self.user = user
        self.additional_gids = list(additional_gids or [])
        self.caps = list(caps or [])
        self.no_new_privs = no_new_privs
        self.apparmor = apparmor
        self.process_label = process_label
        self.tty = tty
        self.console_socket = console_socket
        self.pid_file = pid_file
        self.detach = detach
        self.preserve_fds = preserve_fds
        self.ignore_paused = ignore_paused
        self.cgroup = cgroup
        # the process's stdin/stdout/stderr; None: the caller's own (the CLI's case)
        self.stdio = stdio
        # socket-activation fds passed on after the preserved ones; None: LISTEN_FDS of the
        # caller's environment (the CLI's contract, as runc), the API passes 0
        self.listen_fds = listen_fds


def build_process(config: dict, opts: ExecOptions) -> dict:
    """The process to run: the --process file, or the container's process with the flags applied."""
    if opts.process_file:
        import json

        try:
            with open(opts.process_file, "rb") as f:
                process = json.load(f)
        except OSError as e:
            raise PyoukiError(f"--process: failed to read {opts.process_file}: {reason(e)}") from None
        except ValueError as e:
            raise PyoukiError(f"--process: failed to parse {opts.process_file}: {e}") from None
        if not isinstance(process, dict):
            raise PyoukiError(f"--process: {opts.process_file} does not hold a process object")
        return process
    if not opts.args:
        raise PyoukiError("exec: no command given (pyouki exec ID COMMAND [ARGS...])")
    base = config.get("process") or {}
    built: dict = {
        "args": opts.args,
        "env": list(base.get("env") or []) + opts.env,
        "cwd": opts.cwd or base.get("cwd") or "/",
        "user": dict(base.get("user") or {}),
        "terminal": opts.tty,
        "noNewPrivileges": bool(base.get("noNewPrivileges")) or opts.no_new_privs,
        "rlimits": base.get("rlimits") or [],
    }
    caps = {k: list(v) for k, v in (base.get("capabilities") or {}).items()}
    for cap in opts.caps:
        # as runc's exec --cap: not inheritable nor ambient, which would pass X on across execve
        for key in ("bounding", "effective", "permitted"):
            caps.setdefault(key, [])
            if cap not in caps[key]:
                caps[key].append(cap)
    if caps:
        built["capabilities"] = caps
    if opts.user:
        uid, _, gid = opts.user.partition(":")
        try:
            built["user"] = {"uid": int(uid), "gid": int(gid) if gid else 0}
        except ValueError:
            raise PyoukiError(f"--user: {opts.user!r} is not uid[:gid]") from None
    if opts.additional_gids:
        try:
            built["user"]["additionalGids"] = [int(g) for g in opts.additional_gids]
        except ValueError:
            raise PyoukiError("--additional-gids: must be numbers") from None
    if opts.apparmor:
        built["apparmorProfile"] = opts.apparmor
    if opts.process_label:
        built["selinuxLabel"] = opts.process_label
    return built


def start_process(root: str, container_id: str, opts: ExecOptions) -> tuple[int, int]:
    """Start the process in the container and return (its pid, the terminal's master fd or -1).

    It is the caller's child only if the caller is a subreaper while this runs (the process is
    forked by an intermediate that exits); nothing here waits for it or touches signals."""
    container = Container(root, container_id).load()
    container.can_exec(opts.ignore_paused)
    config = container.config()
    from pyouki import lsm
    from pyouki.config import check_process

    process = lsm.inherit(build_process(config, opts), config)
    check_process(process)
    lsm.check(process)
    if opts.cgroup:
        from pyouki.cgroups.sub import parse

        parse(opts.cgroup)  # a malformed --cgroup fails before anything starts, as in runc
    if process.get("terminal") and not opts.console_socket and opts.detach:
        raise PyoukiError("process.terminal: a detached exec with a terminal needs --console-socket")
    from pyouki import procattrs  # scheduler, ioPriority (its own or the container's), personality, memoryPolicy

    procattrs.check(config, process)
    return _spawn(container, config, process, opts)


def cpu_affinity(process: dict, key: str) -> list[int]:
    """process.execCPUAffinity.<key> ("0-3,7") as CPU numbers; [] when absent or empty."""
    affinity = process.get("execCPUAffinity") or {}
    field = f"process.execCPUAffinity.{key}"
    if not isinstance(affinity, dict):
        raise PyoukiError("process.execCPUAffinity: must be an object")
    text = affinity.get(key) or ""
    if not isinstance(text, str):
        raise PyoukiError(f"{field}: must be a string such as \"0-3,7\"")
    from pyouki.cgroups.common import parse_cpu_list

    try:
        return parse_cpu_list(text)
    except ValueError as e:
        raise PyoukiError(f"{field}: {e}") from None


def set_affinity(cpus: list[int], field: str) -> None:
    """sched_setaffinity of this process, the error naming the field (a CPU that does not exist)."""
    try:
        os.sched_setaffinity(0, cpus)
    except OSError as e:
        raise PyoukiError(f"{field}: failed to run on CPUs {cpus}: {reason(e)}") from None


def _spawn(container: Container, config: dict, process: dict, opts: ExecOptions) -> tuple[int, int]:
    # everything the child needs is imported now: after joining the mount namespace the host's
    # Python library is out of reach
    import select  # noqa: F401

    from pyouki import init  # noqa: F401  (brings what the child uses: pyouki.process, prctl, resource)
    from pyouki.caps import CapabilitySets
    from pyouki.channel import pipe_pair
    from pyouki.config import NS_FILES, namespaces
    from pyouki.create import kill_and_reap, write_pid_file
    from pyouki.init import JOIN_ORDER, NS_FLAGS

    init_pid = container.pid
    if not os.path.exists(container.fifo_path):
        _wait_for_exec(init_pid)
    kinds = namespaces(config)
    ns_fds: list[tuple[str, int, int]] = []
    try:
        for kind in JOIN_ORDER:
            if kind in kinds:
                path = f"/proc/{init_pid}/ns/{NS_FILES[kind]}"
                if kind == "user" and os.readlink(path) == os.readlink("/proc/self/ns/user"):
                    continue  # already there (a container without its own user namespace)
                ns_fds.append((kind, os.open(path, os.O_RDONLY | os.O_CLOEXEC), NS_FLAGS[kind]))
        if "mount" not in kinds:
            # the host's mount table is shared: the container's root is init's chroot, entered last
            ns_fds.append(("root", os.open(f"/proc/{init_pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC), 0))
    except OSError as e:
        for _, fd, _ in ns_fds:
            os.close(fd)
        raise PyoukiError(f"failed to open the namespaces of container {container.id}: "
                          f"{reason(e)}") from None
    caps = CapabilitySets(process.get("capabilities"))
    seccomp = None
    seccomp_config = (config.get("linux") or {}).get("seccomp")
    if seccomp_config:
        from pyouki.seccomp import compile_filter

        seccomp = compile_filter(seccomp_config, "linux.seccomp", cache_dir=os.path.join(container.root, ".cache"))
    console_parent = console_child = None
    if process.get("terminal"):
        from pyouki import console

        console_parent, console_child = console.socketpair()
    cgroup = None
    if container.record.get("cgroup"):
        from pyouki.cgroups import manager_from_state

        cgroup = manager_from_state(container.record["cgroup"])
    if opts.cgroup:
        from pyouki.cgroups.sub import sub_cgroup

        cgroup = sub_cgroup(cgroup, opts.cgroup)  # type: ignore[assignment]
    up, down_w, down_r, up_w = pipe_pair()
    handover = None
    if seccomp is not None and seccomp.notify:
        from pyouki.seccomp_notify import Handover

        handover = seccomp.handover = Handover(up_w.write_fd)
    initial, saved = cpu_affinity(process, "initial"), None
    if initial:
        # the intermediate is born on these CPUs, before it moves into the container's cgroup
        saved = os.sched_getaffinity(0)
        set_affinity(initial, "process.execCPUAffinity.initial")

    def start_intermediate() -> None:  # in the child; fork_child ends it with os._exit whatever happens
        up.close()
        down_w.close()
        if console_parent is not None:
            console_parent.close()
        # LISTEN_FDS counted here: LISTEN_PID names this process, not its children
        listen = init.listen_fds() if opts.listen_fds is None else opts.listen_fds
        if opts.stdio is not None:
            from pyouki.process import redirect_stdio

            redirect_stdio(opts.stdio)
        _intermediate(ns_fds, process, caps, seccomp, console_child, opts.preserve_fds + listen, down_r, up_w)

    pid = fork_child(start_intermediate)
    if saved is not None:
        os.sched_setaffinity(0, saved)
    up_w.close()
    down_r.close()
    for _, fd, _ in ns_fds:
        os.close(fd)
    if console_child is not None:
        console_child.close()
    if handover is not None:
        handover.close_child_end()
    child = 0
    notify_pending = False
    try:
        if cgroup is not None:
            # the intermediate waits for this, so the process is born inside the container's cgroup
            cgroup.add_task(pid)
        if container.record.get("intel_rdt"):
            from pyouki.intelrdt import Rdt

            Rdt.from_state(container.record["intel_rdt"]).add_task(pid)  # and its RDT group, as runc
        down_w.send("go")
        while True:
            verb, arg = up.receive()
            if verb == "pid":
                child = int(arg)
            elif verb == "seccomp":  # the process loaded a filter with a listener: its fd goes to the agent
                notify_pending = True
            elif verb == "error":
                raise PyoukiError(arg)
            elif verb == "eof":
                break
            if notify_pending and child and handover is not None:
                notify_pending = False
                # the process's pid, with the container's state (as runc does)
                st = container.oci_state()
                state = {k: st[k] for k in ("ociVersion", "id", "status", "pid", "bundle")}
                handover.forward(seccomp_config or {}, child, dict(state, annotations=config.get("annotations") or {}))
        os.waitpid(pid, 0)
        pid = 0
        if not child:
            raise PyoukiError("the exec process exited before it started")
        master = -1
        if console_parent is not None:
            from pyouki.console import receive_master, send_to_console_socket

            master = receive_master(console_parent)
            if opts.console_socket:
                try:
                    send_to_console_socket(opts.console_socket, master)
                finally:
                    os.close(master)
                master = -1
        if opts.pid_file:
            write_pid_file(opts.pid_file, child)
    except BaseException:
        if pid:
            kill_and_reap(pid)
        if child:
            kill_and_reap(child)
        raise
    finally:
        up.close()
        down_w.close()
        if console_parent is not None:
            console_parent.close()
        if handover is not None:
            handover.close()
    return child, master


def _wait_for_exec(pid: int, timeout: float = 2.0) -> None:
    """Right after start, init may still be between the fifo and its execve: until then it is not
    dumpable (it holds the runtime's fds), so a caller without CAP_SYS_PTRACE over it (rootless)
    may not open its namespaces yet. Give it the moment it needs (an engine, or the API, can
    exec within a millisecond of start)."""
    import time

    deadline = time.monotonic() + timeout
    delay = 0.0005
    while True:
        try:
            os.readlink(f"/proc/{pid}/ns/user")
            return
        except PermissionError:
            if time.monotonic() > deadline:
                return  # the namespace loop reports it
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        except OSError:
            return


def _intermediate(ns_fds: list[tuple[str, int, int]], process: dict, caps: object, seccomp: object,
                  console_child: object, preserve_fds: int, down: Channel, up: Channel) -> None:
    """Join the namespaces and fork the process into them; never returns."""
    from pyouki import init
    from pyouki.execstub import ExecStub

    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 9)
        # nothing in the container may ptrace us or read our memory while we hold host fds
        sc.prctl(sc.PR_SET_DUMPABLE, 0)
        # on the host, before the container's filesystem and seccomp filter
        stub = ExecStub.prepare(3 + preserve_fds)
        if down.receive()[0] != "go":
            os._exit(1)
        down.close()
        allowed = True
        for kind, fd, flag in ns_fds:
            if kind == "root":
                os.fchdir(fd)
                os.chroot(".")
                os.close(fd)
                continue
            try:
                sc.setns(fd, flag)
            except OSError as e:
                raise PyoukiError(f"failed to join the {kind} namespace: {reason(e)}") from None
            os.close(fd)
            if kind == "user":  # read now: once in the mount namespace, /proc is the container's
                allowed = init.setgroups_allowed()
        pid = fork_child(_child, process, caps, seccomp, console_child, preserve_fds, allowed, up, stub)
        up.send("pid", str(pid))
        os._exit(0)
    except PyoukiError as e:
        up.send("error", str(e))
    except BaseException as e:  # noqa: BLE001 - must reach the caller as one line
        up.send("error", f"exec set-up failed: {e}")
    os._exit(1)


def _child(process: dict, caps, seccomp, console_child, preserve_fds: int,  # type: ignore[no-untyped-def]
           setgroups_allowed: bool, up: Channel, stub: ExecStub) -> None:
    """Become the process and exec it; errors go back over up; never returns."""
    from pyouki import init, lsm  # both loaded before the fork (pyouki.init imports pyouki.lsm)

    try:
        sc.prctl(sc.PR_SET_PDEATHSIG, 0)
        # before any path resolves in the container: no fd of the caller's but stdio and the
        # preserved ones may be reachable through /proc/self/fd/N (CVE-2024-21626)
        keep = [up.write_fd, stub.fd]
        if console_child is not None:
            keep.append(console_child.fileno())
        if seccomp is not None and seccomp.handover is not None:
            keep.append(seccomp.handover.child.fileno())  # the seccomp listener's way to the runtime
        init.close_fds(3 + preserve_fds, keep)
        final = cpu_affinity(process, "final")
        if final:  # in the container's cgroup now (a cpuset there reset what initial set)
            set_affinity(final, "process.execCPUAffinity.final")
        user = process.get("user") or {}
        os.setsid()  # its own session and process group, with or without a terminal (runc's nsexec)
        if console_child is not None:
            from pyouki import console

            console.setup_in_container(console_child, process.get("consoleSize"), int(user.get("uid", 0)))
        exe, env = init.become_process(process, caps, seccomp, setgroups_allowed, preserve_fds)
        lsm.apply(process)  # AppArmor profile, SELinux label: entered at the exec below
        init.exec_program(process, exe, env, seccomp, stub)
    except PyoukiError as e:
        up.send("error", str(e))
    except OSError as e:
        up.send("error", f"exec failed: {reason(e)}")
    except BaseException as e:  # noqa: BLE001
        up.send("error", f"exec failed: {e}")
    os._exit(127)
